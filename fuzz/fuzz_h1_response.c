/* libFuzzer target: h1_parse_response and h1_response_body_kind. */
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
    struct h1_response r, r2;
    enum h1_error e, e2;
    enum h1_result rc = h1_parse_response(b, size, &lim, f, 32, &r, &e);

    if (rc == H1_DONE) {
        size_t n = r.head_len;
        CHECK(n <= size && n <= lim.max_head);
        CHECK(r.status >= 100 && r.status <= 599);
        CHECK(r.nfields <= 32);
        inside(r.reason, b, n);
        for (size_t i = 0; i < r.nfields; i++) {
            CHECK(f[i].name.len > 0);
            inside(f[i].name, b, n);
            inside(f[i].value, b, n);
        }
        CHECK(!r.chunked || r.content_length == -1);
        static const enum http_method ms[] = {HTTP_M_GET, HTTP_M_HEAD, HTTP_M_CONNECT};
        for (size_t i = 0; i < 3; i++) {
            enum h1_body_kind k = h1_response_body_kind(&r, ms[i]);
            CHECK(k != H1_BODY_LENGTH || r.content_length > 0);
            CHECK(k != H1_BODY_CHUNKED || r.chunked);
            CHECK(ms[i] != HTTP_M_HEAD || k == H1_BODY_NONE);
        }
    } else if (rc == H1_ERROR) {
        CHECK(e != H1E_NONE);
    }

    size_t cut = size ? (size_t)data[size - 1] * size / 256 : 0;
    size_t ends = rc == H1_DONE ? r.head_len : size;
    if (cut < ends) {
        enum h1_result prc = h1_parse_response(b, cut, &lim, f2, 32, &r2, &e2);
        CHECK(prc == H1_INCOMPLETE || (prc == H1_ERROR && rc == H1_ERROR && e2 == e));
    }
    if (rc == H1_DONE)
        CHECK(h1_parse_response(b, r.head_len - 1, &lim, f2, 32, &r2, &e2) == H1_INCOMPLETE);
    return 0;
}
