/* libFuzzer target: h1_parse_request. Invariants: slices lie inside the
 * head; a prefix of the input is incomplete or ends the same way. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http1/h1.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const struct h1_limits lim = {.max_request_line = 512, .max_head = 2048, .max_fields = 32};

static void inside(struct slice s, const char *b, size_t n)
{
    CHECK(s.len <= n);
    if (s.len)
        CHECK(s.p >= b && s.p + s.len <= b + n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *b = (const char *)data;
    struct http_field f[32], f2[32];
    struct h1_request r, r2;
    enum h1_error e, e2;
    enum h1_result rc = h1_parse_request(b, size, &lim, f, 32, &r, &e);

    if (rc == H1_DONE) {
        size_t n = r.head_len;
        CHECK(n <= size && n <= lim.max_head);
        CHECK(e == H1E_NONE);
        CHECK(r.nfields <= 32);
        inside(r.method, b, n);
        inside(r.target, b, n);
        inside(r.authority, b, n);
        inside(r.host, b, n);
        if (r.target_form != H1_TARGET_ABSOLUTE || r.path.len != 1)
            inside(r.path, b, n);
        for (size_t i = 0; i < r.nfields; i++) {
            CHECK(f[i].name.len > 0);
            inside(f[i].name, b, n);
            inside(f[i].value, b, n);
        }
        CHECK(r.minor_version == 0 || r.minor_version == 1);
        CHECK(r.content_length >= -1);
        CHECK(!r.chunked || (r.content_length == -1 && r.minor_version == 1));
        CHECK(r.target.len > 0 && r.method.len > 0);
    } else if (rc == H1_ERROR) {
        CHECK(e != H1E_NONE);
        int st = h1_error_status(e);
        CHECK(st == 400 || st == 414 || st == 431 || st == 501 || st == 505);
    } else {
        CHECK(rc == H1_INCOMPLETE);
    }

    /* Same bytes in two calls (the first a prefix) end the same way. */
    size_t cut = size ? (size_t)data[0] * size / 256 : 0;
    size_t ends = rc == H1_DONE ? r.head_len : size;
    if (cut < ends) {
        enum h1_result prc = h1_parse_request(b, cut, &lim, f2, 32, &r2, &e2);
        CHECK(prc == H1_INCOMPLETE || (prc == H1_ERROR && rc == H1_ERROR && e2 == e));
    }
    if (rc == H1_DONE) {
        enum h1_result prc = h1_parse_request(b, r.head_len - 1, &lim, f2, 32, &r2, &e2);
        CHECK(prc == H1_INCOMPLETE);
        prc = h1_parse_request(b, r.head_len, &lim, f2, 32, &r2, &e2);
        CHECK(prc == H1_DONE && r2.nfields == r.nfields && r2.content_length == r.content_length);
    }
    return 0;
}
