/* libFuzzer target: h1_chunked_decode. The first byte picks how the input
 * is cut into deliveries; the outcome must not depend on the cuts, and the
 * data never exceeds the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http1/h1.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

struct run {
    enum h1_result rc;
    enum h1_error err;
    size_t used, dlen;
    uint64_t sum;
    struct slice trailers;
};

static void run(const char *in, size_t len, size_t step, struct run *o)
{
    struct h1_chunked d;
    size_t off = 0, avail = 0;

    h1_chunked_init(&d, 64);
    memset(o, 0, sizeof(*o));
    o->rc = H1_INCOMPLETE;
    while (avail < len) {
        avail = len - avail > step ? avail + step : len;
        for (;;) {
            size_t used;
            struct slice data, tr = SLICE_NULL;
            enum h1_error e;
            enum h1_result rc = h1_chunked_decode(&d, in + off, avail - off, &used, &data, &tr, &e);
            CHECK(used <= avail - off);
            if (data.len)
                CHECK(data.p >= in + off && data.p + data.len <= in + off + used);
            for (size_t i = 0; i < data.len; i++)
                o->sum = o->sum * 31 + (uint8_t)data.p[i];
            o->dlen += data.len;
            CHECK(o->dlen <= len);
            off += used;
            o->rc = rc;
            o->used = off;
            if (rc == H1_ERROR) {
                CHECK(e != H1E_NONE);
                o->err = e;
                return;
            }
            if (rc == H1_DONE) {
                CHECK(h1_chunked_in_trailer(&d));
                CHECK(tr.len <= 64);
                if (tr.len)
                    CHECK(tr.p >= in && tr.p + tr.len <= in + off);
                o->trailers = tr;
                return;
            }
            if (used == 0 && data.len == 0)
                break;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t step = (size_t)(data[0] % 16) + 1;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    struct run a, b;

    run(in, n, n ? n : 1, &a);
    run(in, n, step, &b);
    CHECK(a.rc == b.rc && a.err == b.err);
    CHECK(a.rc == H1_ERROR || a.used == b.used);
    CHECK(a.dlen == b.dlen && a.sum == b.sum);
    CHECK(a.trailers.len == b.trailers.len);
    CHECK(a.dlen <= n);
    if (a.rc == H1_DONE)
        CHECK(a.trailers.len == 0 || memcmp(a.trailers.p, b.trailers.p, a.trailers.len) == 0);
    return 0;
}
