/* RFC 9111 as a shared cache sees it: Cache-Control parsing, dates,
 * whether a response may be stored, how long it stays fresh, how old it is,
 * and whether a stored response may answer a request. Pure functions over
 * field lists and times: no storage, no I/O (unit-tested alone). */
#ifndef PORTICO_CACHE_RULES_H
#define PORTICO_CACHE_RULES_H

#include <stdbool.h>
#include <stdint.h>

#include "http/http.h"

#define CC_UNSET (-1)
#define CC_ANY   INT64_MAX /* max-stale without a value */

/* Cache-Control directives (response and request share the parser). Delta
 * seconds are CC_UNSET when absent; a malformed value counts as absent
 * except where RFC 9111 says otherwise (max-age=junk on a response: stale). */
struct cc {
    int64_t max_age, s_maxage, max_stale, min_fresh;
    int64_t stale_while_revalidate, stale_if_error;
    bool no_store, no_cache, private_, public_, must_revalidate, proxy_revalidate;
    bool only_if_cached, immutable, must_understand;
    bool bad_max_age; /* max-age present but not a number */
};

void cc_parse(const struct http_field *f, size_t n, struct cc *out);

/* A targeted cache-control field (RFC 9213, "cdn-cache-control"): true when
 * present and a valid Structured Field dictionary; then it replaces
 * Cache-Control and Expires for this cache. */
bool cc_parse_targeted(const struct http_field *f, size_t n, const char *name, struct cc *out);

/* HTTP-date (IMF-fixdate, RFC 850, asctime) to seconds since the epoch, or
 * -1 when it does not parse. */
int64_t http_date_parse(struct slice s);

/* The first value of a field, with *found. */
struct slice cache_field(const struct http_field *f, size_t n, const char *name, bool *found);

/* Response statuses RFC 9110 15.1 calls heuristically cacheable. */
bool cache_status_heuristic(int status);

/* What the cache learns from a response when it stores it. Times in ms
 * since the epoch, ages and lifetimes in ms. */
struct cache_fresh {
    int64_t lifetime_ms;    /* freshness lifetime; 0: stale at once */
    int64_t initial_age_ms; /* corrected_initial_age (RFC 9111 4.2.3) */
    int64_t response_time_ms;
    int64_t swr_ms, sie_ms; /* stale-while-revalidate, stale-if-error; -1 none */
    bool no_cache;          /* must revalidate every time */
    bool must_revalidate;   /* must-revalidate, proxy-revalidate or s-maxage */
    bool heuristic;         /* lifetime is a heuristic */
};

/* Knobs from the configuration that bend the rules the way nginx does. */
struct cache_policy {
    bool ignore_cache_control, ignore_expires, ignore_set_cookie, ignore_vary;
    bool ignore_x_accel_expires;
    /* proxy_cache_valid: lifetime in ms for a status, -1 if none applies */
    int64_t (*valid_for)(const void *ctx, int status);
    const void *valid_ctx;
};

enum cache_store_verdict {
    CACHE_STORE_OK = 0,
    CACHE_STORE_NO_STORE, /* no-store in the request or response */
    CACHE_STORE_PRIVATE,
    CACHE_STORE_AUTH,   /* Authorization without public/s-maxage/must-revalidate */
    CACHE_STORE_COOKIE, /* Set-Cookie (unless ignored) */
    CACHE_STORE_VARY_STAR,
    CACHE_STORE_STATUS,      /* not a status we keep */
    CACHE_STORE_NO_LIFETIME, /* nothing says how long: not kept */
    CACHE_STORE_ZERO,        /* X-Accel-Expires: 0 */
};

/* May this response be stored, and with which freshness? `req` are the
 * request fields (Authorization, Cache-Control), `request_time_ms` when the
 * request went out, `now_ms` when the response head arrived. */
enum cache_store_verdict cache_storable(int status, const struct http_field *resp, size_t nresp,
                                        const struct http_field *req, size_t nreq,
                                        const struct cache_policy *pol, int64_t request_time_ms,
                                        int64_t now_ms, struct cache_fresh *out);

/* Current age of a stored response, in ms. */
static inline int64_t cache_age_ms(const struct cache_fresh *f, int64_t now_ms)
{
    int64_t resident = now_ms - f->response_time_ms;
    return f->initial_age_ms + (resident > 0 ? resident : 0);
}

enum cache_use {
    CACHE_USE_FRESH,      /* answer from the cache */
    CACHE_USE_STALE_OK,   /* stale but the request accepts it (max-stale) */
    CACHE_USE_REVALIDATE, /* must go to the origin (conditional if possible) */
};

/* May the stored response answer this request without the origin? Applies
 * the request's Cache-Control (no-cache, max-age, min-fresh, max-stale) and
 * Pragma: no-cache. */
enum cache_use cache_usable(const struct cache_fresh *f, const struct cc *req, bool pragma_no_cache,
                            int64_t now_ms);

/* May a stale response be served when the origin failed (stale-if-error)
 * or while it is being refreshed (stale-while-revalidate)? Only for the
 * window the response itself grants; configuration may grant more. */
bool cache_stale_within(const struct cache_fresh *f, int64_t window_ms, int64_t now_ms);

/* Weak comparison of an entity tag against an If-None-Match list. */
bool cache_etag_match(struct slice list, struct slice etag);

/* A single byte range "bytes=a-b" / "a-" / "-n" against a length: 1 and
 * [*first, *last] when satisfiable, 0 when not (416), -1 when the header is
 * to be ignored (multiple ranges, another unit, malformed). */
int cache_range(struct slice range, uint64_t len, uint64_t *first, uint64_t *last);

#endif
