/* libFuzzer target: the htpasswd password forms of auth_basic
 * (src/proxy/auth.c): a stored hash comes from a file an operator may have
 * pasted from anywhere, the password from any client. Input: hash, NUL,
 * password. Invariants: no crash; a {PLAIN} entry matches exactly its own
 * text; the answer does not change when asked twice. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/auth.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul || size > 4096)
        return 0;
    size_t hl = (size_t)(nul - data);
    /* bcrypt with a high cost would only measure the CPU: keep the cost low */
    if (hl > 4 && data[0] == '$' && data[1] == '2' && !(data[4] == '0' && data[5] <= '6'))
        return 0;
    if (hl > 2 && data[0] == '$' && (data[1] == 'y' || data[1] == '7' || data[1] == 'g'))
        return 0; /* yescrypt / scrypt: the same, memory-hard by design */
    char *hash = malloc(hl + 1);
    if (!hash)
        return 0;
    memcpy(hash, data, hl);
    hash[hl] = '\0';
    struct slice pw = slice_make((const char *)nul + 1, size - hl - 1);
    bool ok = auth_password_ok(pw, hash);
    CHECK(ok == auth_password_ok(pw, hash));
    if (!strncmp(hash, "{PLAIN}", 7))
        CHECK(ok == (strlen(hash + 7) == pw.len && !memcmp(hash + 7, pw.p, pw.len)));
    free(hash);
    return 0;
}
