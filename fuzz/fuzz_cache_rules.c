/* libFuzzer target: the cache's RFC 9111 rules. The input is field lines
 * ("Name: value\n"); a line "--" splits request fields from response fields.
 * Every parser runs on them (Cache-Control, CDN-Cache-Control, dates,
 * ranges, entity tags) and the decisions must keep their invariants. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/rules.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

#define MAXF 32

static size_t split(const char *p, size_t len, struct http_field *req, size_t *nreq,
                    struct http_field *resp)
{
    size_t n = 0, i = 0;
    bool in_resp = false;
    *nreq = 0;
    while (i < len) {
        const char *nl = memchr(p + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - p) : len;
        struct slice line = slice_make(p + i, e - i);
        i = e + 1;
        if (line.len == 2 && memcmp(line.p, "--", 2) == 0) {
            in_resp = true;
            continue;
        }
        const char *colon = memchr(line.p, ':', line.len);
        if (!colon)
            continue;
        struct http_field f = {
            slice_make(line.p, (size_t)(colon - line.p)),
            slice_trim_ows(slice_make(colon + 1, line.len - (size_t)(colon + 1 - line.p)))};
        if (in_resp && n < MAXF)
            resp[n++] = f;
        else if (!in_resp && *nreq < MAXF)
            req[(*nreq)++] = f;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int status = 100 + data[0] * 2;
    uint64_t len = data[1] * 97u;
    const char *p = (const char *)data + 2;
    size -= 2;
    struct http_field req[MAXF], resp[MAXF];
    size_t nreq;
    size_t nresp = split(p, size, req, &nreq, resp);

    struct cc c;
    cc_parse(resp, nresp, &c);
    CHECK(c.max_age == CC_UNSET || (c.max_age >= 0 && c.max_age <= 2147483648LL));
    cc_parse_targeted(resp, nresp, "cdn-cache-control", &c);

    for (size_t i = 0; i < nresp; i++) {
        int64_t t = http_date_parse(resp[i].value);
        if (t >= 0 && t < 253402300800LL) {
            char buf[30];
            http_date_format((time_t)t, buf);
            CHECK(http_date_parse(slice_make(buf, 29)) == t);
        }
        uint64_t a, b;
        int r = cache_range(resp[i].value, len, &a, &b);
        if (r == 1)
            CHECK(a <= b && b < len);
        (void)cache_etag_match(resp[i].value, SLICE_LIT("\"x\""));
    }

    struct cache_policy pol = {0};
    struct cache_fresh fr;
    int64_t now = 1700000000000LL;
    if (cache_storable(status, resp, nresp, req, nreq, &pol, now - 5, now, &fr) == CACHE_STORE_OK) {
        CHECK(fr.lifetime_ms >= 0);
        CHECK(fr.initial_age_ms >= 0);
        struct cc q;
        cc_parse(req, nreq, &q);
        enum cache_use u = cache_usable(&fr, &q, false, now + data[0] * 1000);
        CHECK(u == CACHE_USE_FRESH || u == CACHE_USE_STALE_OK || u == CACHE_USE_REVALIDATE);
        if (fr.no_cache)
            CHECK(u == CACHE_USE_REVALIDATE);
    }
    return 0;
}
