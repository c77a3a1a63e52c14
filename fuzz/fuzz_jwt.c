/* libFuzzer target: auth_jwt's reading of client tokens (src/proxy/jwt.c):
 * base64url, the JSON reader, the JWS checks. The input is used twice: as a
 * compact token verified against a fixed key set (an HS256 key, an EC P-256
 * key), and as a JSON object whose "sub" member is read.
 * Invariants: no crash; a token accepted twice is accepted the same way; a
 * member read is no longer than its object. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/jwt.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const char jwks[] =
    "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T"
    "-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"},{\"kty\":\"EC\",\"kid\":\"e\",\"crv\":\"P-256\","
    "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"x_FEzRu9m36HLN_"
    "tue659LNpXW6pCyStikY"
    "jKIWI5a0\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    struct slice in = slice_make(copy, size);
    int a = jwt_verify_text(jwks, sizeof(jwks) - 1, in, 1300819000, 0);
    CHECK(a == jwt_verify_text(jwks, sizeof(jwks) - 1, in, 1300819000, 0));
    struct arena ar;
    arena_init(&ar, 4096, 0);
    struct slice v = jwt_json_member(&ar, in, SLICE_LIT("sub"));
    CHECK(v.len <= size);
    arena_deinit(&ar);
    free(copy);
    return 0;
}
