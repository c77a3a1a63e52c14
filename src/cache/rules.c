/* RFC 9111 rules for a shared cache (see rules.h). */
#include "cache/rules.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define DELTA_MAX 2147483648LL /* RFC 9111 1.2.2: larger values become this */

static bool tchar(char c)
{
    return http_tchar[(unsigned char)c] != 0;
}

struct slice cache_field(const struct http_field *f, size_t n, const char *name, bool *found)
{
    return http_field_get(f, n, slice_cstr(name), found);
}

/* delta-seconds, optionally quoted; -1 if not a number */
static int64_t parse_delta(struct slice v)
{
    if (v.len >= 2 && v.p[0] == '"' && v.p[v.len - 1] == '"') {
        v.p++;
        v.len -= 2;
    }
    if (!v.len)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        if (x < DELTA_MAX)
            x = x * 10 + (v.p[i] - '0');
    }
    return x > DELTA_MAX ? DELTA_MAX : x;
}

static void cc_directive(struct cc *c, struct slice name, struct slice val, bool has_val)
{
#define IS(lit) slice_eq_lit_ci(name, lit)
#define SET_DELTA(field)                                                                           \
    do {                                                                                           \
        int64_t d = parse_delta(val);                                                              \
        if (c->field == CC_UNSET && d >= 0)                                                        \
            c->field = d;                                                                          \
    } while (0)
    if (IS("max-age")) {
        int64_t d = has_val ? parse_delta(val) : -1;
        if (d < 0)
            c->bad_max_age = true;
        else if (c->max_age == CC_UNSET)
            c->max_age = d;
    } else if (IS("s-maxage")) {
        SET_DELTA(s_maxage);
    } else if (IS("max-stale")) {
        if (!has_val)
            c->max_stale = CC_ANY;
        else
            SET_DELTA(max_stale);
    } else if (IS("min-fresh")) {
        SET_DELTA(min_fresh);
    } else if (IS("stale-while-revalidate")) {
        SET_DELTA(stale_while_revalidate);
    } else if (IS("stale-if-error")) {
        SET_DELTA(stale_if_error);
    } else if (IS("no-store")) {
        c->no_store = true;
    } else if (IS("no-cache")) {
        /* the qualified form (no-cache="field") is taken as unqualified:
         * RFC 9111 5.2.2.4 lets a cache do so */
        c->no_cache = true;
    } else if (IS("private")) {
        c->private_ = true;
    } else if (IS("public")) {
        c->public_ = true;
    } else if (IS("must-revalidate")) {
        c->must_revalidate = true;
    } else if (IS("proxy-revalidate")) {
        c->proxy_revalidate = true;
    } else if (IS("only-if-cached")) {
        c->only_if_cached = true;
    } else if (IS("immutable")) {
        c->immutable = true;
    } else if (IS("must-understand")) {
        c->must_understand = true;
    }
#undef IS
#undef SET_DELTA
}

static void cc_parse_value(struct cc *c, struct slice v)
{
    size_t i = 0;
    while (i < v.len) {
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        size_t ns = i;
        while (i < v.len && tchar(v.p[i]))
            i++;
        struct slice name = slice_make(v.p + ns, i - ns);
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
        struct slice val = SLICE_NULL;
        bool has_val = false;
        if (i < v.len && v.p[i] == '=') {
            i++;
            while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t'))
                i++;
            has_val = true;
            size_t vs = i;
            if (i < v.len && v.p[i] == '"') {
                i++;
                while (i < v.len && v.p[i] != '"') {
                    if (v.p[i] == '\\' && i + 1 < v.len)
                        i++;
                    i++;
                }
                if (i < v.len)
                    i++;
            } else {
                while (i < v.len && v.p[i] != ',' && v.p[i] != ' ' && v.p[i] != '\t')
                    i++;
            }
            val = slice_make(v.p + vs, i - vs);
        }
        if (name.len)
            cc_directive(c, name, val, has_val);
        /* anything up to the next comma is junk and ignored */
        while (i < v.len && v.p[i] != ',')
            i++;
    }
}

void cc_parse(const struct http_field *f, size_t n, struct cc *out)
{
    memset(out, 0, sizeof(*out));
    out->max_age = out->s_maxage = out->max_stale = out->min_fresh = CC_UNSET;
    out->stale_while_revalidate = out->stale_if_error = CC_UNSET;
    for (size_t i = 0; i < n; i++)
        if (slice_eq_lit_ci(f[i].name, "cache-control"))
            cc_parse_value(out, f[i].value);
}

/* A targeted field (RFC 9213: CDN-Cache-Control) is a Structured Field
 * dictionary: parse it strictly. false (and the field ignored) when absent
 * or invalid. */
static bool sf_key_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || c == '*' ||
           (!first && ((c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'));
}

static size_t sf_bare_item(struct slice v, size_t i, bool *is_int, int64_t *ival)
{
    *is_int = false;
    if (i >= v.len)
        return 0;
    char c = v.p[i];
    if (c == '-' || (c >= '0' && c <= '9')) {
        size_t s = i;
        if (c == '-')
            i++;
        int64_t x = 0;
        size_t digits = 0;
        while (i < v.len && v.p[i] >= '0' && v.p[i] <= '9' && digits < 16) {
            x = x * 10 + (v.p[i++] - '0');
            digits++;
        }
        if (!digits || digits > 15)
            return 0;
        if (i < v.len && v.p[i] == '.') { /* decimal */
            i++;
            size_t f = 0;
            while (i < v.len && v.p[i] >= '0' && v.p[i] <= '9' && f < 4)
                i++, f++;
            return f ? i - s : 0;
        }
        *is_int = c != '-';
        *ival = x;
        return i - s;
    }
    if (c == '"') {
        size_t s = i++;
        while (i < v.len && v.p[i] != '"') {
            if (v.p[i] == '\\')
                i++;
            else if ((unsigned char)v.p[i] < 0x20 || (unsigned char)v.p[i] > 0x7e)
                return 0;
            i++;
        }
        return i < v.len ? i + 1 - s : 0;
    }
    if (c == '?')
        return i + 1 < v.len && (v.p[i + 1] == '0' || v.p[i + 1] == '1') ? 2 : 0;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '*') {
        size_t s = i++;
        while (i < v.len && (tchar(v.p[i]) || v.p[i] == ':' || v.p[i] == '/'))
            i++;
        return i - s;
    }
    if (c == ':') {
        size_t s = i++;
        while (i < v.len && v.p[i] != ':')
            i++;
        return i < v.len ? i + 1 - s : 0;
    }
    return 0;
}

static bool sf_parse_cc(struct slice v, struct cc *c)
{
    size_t i = 0;
    v = slice_trim_ows(v);
    while (i < v.len) {
        size_t ks = i;
        if (!sf_key_char(v.p[i], true))
            return false;
        while (i < v.len && sf_key_char(v.p[i], false))
            i++;
        struct slice key = slice_make(v.p + ks, i - ks);
        bool is_int = false, has_val = false;
        int64_t ival = 0;
        if (i < v.len && v.p[i] == '=') {
            i++;
            size_t n = sf_bare_item(v, i, &is_int, &ival);
            if (!n)
                return false;
            i += n;
            has_val = true;
        }
        while (i < v.len && v.p[i] == ';') { /* parameters: checked, ignored */
            i++;
            size_t ps = i;
            while (i < v.len && sf_key_char(v.p[i], i == ps))
                i++;
            if (i == ps)
                return false;
            if (i < v.len && v.p[i] == '=') {
                bool pi;
                int64_t pv;
                size_t n = sf_bare_item(v, i + 1, &pi, &pv);
                if (!n)
                    return false;
                i += 1 + n;
            }
        }
        bool delta = slice_eq(key, SLICE_LIT("max-age")) || slice_eq(key, SLICE_LIT("s-maxage")) ||
                     slice_eq(key, SLICE_LIT("stale-while-revalidate")) ||
                     slice_eq(key, SLICE_LIT("stale-if-error"));
        if (delta && (!has_val || !is_int))
            return false; /* a directive of the wrong type: the field is ignored */
        char num[24];
        int nl = snprintf(num, sizeof(num), "%lld", (long long)ival);
        cc_directive(c, key, delta ? slice_make(num, (size_t)nl) : SLICE_NULL, delta);
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
        if (i == v.len)
            break;
        if (v.p[i] != ',')
            return false;
        i++;
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
        if (i == v.len)
            return false; /* a trailing comma */
    }
    return true;
}

bool cc_parse_targeted(const struct http_field *f, size_t n, const char *name, struct cc *out)
{
    cc_parse(NULL, 0, out);
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (!slice_eq_lit_ci(f[i].name, name))
            continue;
        any = true;
        if (!sf_parse_cc(f[i].value, out)) {
            cc_parse(NULL, 0, out);
            return false;
        }
    }
    return any;
}

/* ---- dates ---- */

static int month_of(const char *p)
{
    static const char m[] = "janfebmaraprmayjunjulaugsepoctnovdec";
    char l[3] = {ascii_lower(p[0]), ascii_lower(p[1]), ascii_lower(p[2])};
    for (int i = 0; i < 12; i++)
        if (memcmp(m + 3 * i, l, 3) == 0)
            return i;
    return -1;
}

static int num(const char **p, const char *end, int min_digits, int max_digits)
{
    int v = 0, d = 0;
    while (*p < end && **p >= '0' && **p <= '9' && d < max_digits) {
        v = v * 10 + (**p - '0');
        (*p)++;
        d++;
    }
    return d >= min_digits ? v : -1;
}

static bool skip(const char **p, const char *end, char c)
{
    if (*p < end && **p == c) {
        (*p)++;
        return true;
    }
    return false;
}

static bool hms(const char **p, const char *end, struct tm *tm)
{
    tm->tm_hour = num(p, end, 2, 2);
    if (!skip(p, end, ':'))
        return false;
    tm->tm_min = num(p, end, 2, 2);
    if (!skip(p, end, ':'))
        return false;
    tm->tm_sec = num(p, end, 2, 2);
    return tm->tm_hour >= 0 && tm->tm_hour < 24 && tm->tm_min >= 0 && tm->tm_min < 60 &&
           tm->tm_sec >= 0 && tm->tm_sec <= 60;
}

int64_t http_date_parse(struct slice s)
{
    s = slice_trim_ows(s);
    if (!s.len)
        return -1;
    const char *p = s.p, *end = s.p + s.len;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    /* day name */
    const char *q = p;
    while (q < end && ((*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z')))
        q++;
    size_t day_len = (size_t)(q - p);
    if (day_len < 3)
        return -1;
    p = q;
    if (skip(&p, end, ',')) {
        if (!skip(&p, end, ' '))
            return -1;
        tm.tm_mday = num(&p, end, 1, 2);
        if (tm.tm_mday < 0)
            return -1;
        if (p < end && *p == ' ') {
            /* IMF-fixdate: 06 Nov 1994 08:49:37 GMT */
            if (day_len != 3)
                return -1;
            p++;
            if (end - p < 3 || (tm.tm_mon = month_of(p)) < 0)
                return -1;
            p += 3;
            if (!skip(&p, end, ' '))
                return -1;
            int y = num(&p, end, 4, 4);
            if (y < 0)
                return -1;
            tm.tm_year = y - 1900;
        } else if (skip(&p, end, '-')) {
            /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
            if (day_len < 6 || end - p < 3 || (tm.tm_mon = month_of(p)) < 0)
                return -1;
            p += 3;
            if (!skip(&p, end, '-'))
                return -1;
            int y = num(&p, end, 2, 2);
            if (y < 0)
                return -1;
            y += y < 70 ? 2000 : 1900;
            tm.tm_year = y - 1900;
        } else {
            return -1;
        }
        if (!skip(&p, end, ' ') || !hms(&p, end, &tm) || !skip(&p, end, ' '))
            return -1;
        if (end - p != 3 || memcmp(p, "GMT", 3) != 0)
            return -1;
    } else {
        /* asctime: Sun Nov  6 08:49:37 1994 */
        if (day_len != 3 || !skip(&p, end, ' ') || end - p < 3 || (tm.tm_mon = month_of(p)) < 0)
            return -1;
        p += 3;
        if (!skip(&p, end, ' '))
            return -1;
        skip(&p, end, ' ');
        tm.tm_mday = num(&p, end, 1, 2);
        if (tm.tm_mday < 0 || !skip(&p, end, ' ') || !hms(&p, end, &tm) || !skip(&p, end, ' '))
            return -1;
        int y = num(&p, end, 4, 4);
        if (y < 0 || p != end)
            return -1;
        tm.tm_year = y - 1900;
    }
    if (tm.tm_mday < 1 || tm.tm_mday > 31)
        return -1;
    return (int64_t)timegm(&tm);
}

/* ---- storing ---- */

bool cache_status_heuristic(int status)
{
    switch (status) {
    case 200:
    case 203:
    case 204:
    case 206:
    case 300:
    case 301:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501:
        return true;
    default:
        return false;
    }
}

static bool has_field(const struct http_field *f, size_t n, const char *name)
{
    bool found;
    cache_field(f, n, name, &found);
    return found;
}

static bool vary_star(const struct http_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!slice_eq_lit_ci(f[i].name, "vary"))
            continue;
        struct slice v = f[i].value;
        for (size_t k = 0; k < v.len; k++)
            if (v.p[k] == '*')
                return true;
    }
    return false;
}

enum cache_store_verdict cache_storable(int status, const struct http_field *resp, size_t nresp,
                                        const struct http_field *req, size_t nreq,
                                        const struct cache_policy *pol, int64_t request_time_ms,
                                        int64_t now_ms, struct cache_fresh *out)
{
    memset(out, 0, sizeof(*out));
    out->swr_ms = out->sie_ms = -1;
    out->response_time_ms = now_ms;
    if (status < 200 || status == 206 || status == 304 || status > 599)
        return CACHE_STORE_STATUS;
    struct cc rc, qc;
    cc_parse(req, nreq, &qc);
    bool targeted = false;
    if (pol->ignore_cache_control)
        cc_parse(NULL, 0, &rc);
    else if (!(targeted = cc_parse_targeted(resp, nresp, "cdn-cache-control", &rc)))
        cc_parse(resp, nresp, &rc);
    if (rc.no_store || qc.no_store)
        return CACHE_STORE_NO_STORE;
    if (rc.private_)
        return CACHE_STORE_PRIVATE;
    if (has_field(req, nreq, "authorization") && !rc.public_ && rc.s_maxage == CC_UNSET &&
        !rc.must_revalidate)
        return CACHE_STORE_AUTH;
    if (!pol->ignore_set_cookie && has_field(resp, nresp, "set-cookie"))
        return CACHE_STORE_COOKIE;
    if (!pol->ignore_vary && vary_star(resp, nresp))
        return CACHE_STORE_VARY_STAR;

    bool found;
    int64_t date = http_date_parse(cache_field(resp, nresp, "date", &found));
    int64_t resp_s = now_ms / 1000;
    if (date < 0)
        date = resp_s;

    /* age (RFC 9111 4.2.3) */
    struct slice age_v = cache_field(resp, nresp, "age", &found);
    const char *comma = found ? memchr(age_v.p, ',', age_v.len) : NULL;
    if (comma)
        age_v.len = (size_t)(comma - age_v.p); /* a list: the first value counts */
    int64_t age_value = found ? parse_delta(slice_trim_ows(age_v)) : 0;
    if (age_value < 0)
        age_value = 0;
    int64_t apparent = (resp_s - date) * 1000;
    if (apparent < 0)
        apparent = 0;
    int64_t delay = now_ms - request_time_ms;
    if (delay < 0)
        delay = 0;
    int64_t corrected = age_value * 1000 + delay;
    out->initial_age_ms = apparent > corrected ? apparent : corrected;

    /* freshness lifetime (RFC 9111 4.2.1), with nginx's X-Accel-Expires first */
    int64_t life = -1;
    if (!pol->ignore_x_accel_expires) {
        struct slice xa = slice_trim_ows(cache_field(resp, nresp, "x-accel-expires", &found));
        if (found) {
            int64_t v;
            if (xa.len && xa.p[0] == '@') {
                v = parse_delta(slice_make(xa.p + 1, xa.len - 1));
                if (v >= 0)
                    life = (v - resp_s) * 1000;
            } else {
                v = parse_delta(xa);
                if (v == 0)
                    return CACHE_STORE_ZERO;
                if (v > 0)
                    life = v * 1000;
            }
            if (life >= 0)
                out->initial_age_ms = 0; /* nginx: the value is counted from now */
        }
    }
    if (life < 0 && rc.s_maxage != CC_UNSET)
        life = rc.s_maxage * 1000;
    if (life < 0 && rc.max_age != CC_UNSET)
        life = rc.max_age * 1000;
    if (life < 0 && rc.bad_max_age)
        life = 0; /* an invalid max-age makes the response stale */
    if (life < 0 && !pol->ignore_expires && !targeted) {
        struct slice ex = cache_field(resp, nresp, "expires", &found);
        if (found) {
            int64_t e = http_date_parse(ex);
            life = e < 0 ? 0 : (e - date) * 1000;
            if (life < 0)
                life = 0;
        }
    }
    if (life < 0 && pol->valid_for) {
        int64_t v = pol->valid_for(pol->valid_ctx, status);
        if (v >= 0) {
            life = v;
            out->initial_age_ms = 0;
        }
    }
    if (life < 0 && (cache_status_heuristic(status) || rc.public_)) {
        struct slice lm = cache_field(resp, nresp, "last-modified", &found);
        int64_t l = found ? http_date_parse(lm) : -1;
        if (l >= 0 && l < date) {
            life = (date - l) * 100; /* 10% of the time since the last change */
            if (life > 86400000)
                life = 86400000;
            out->heuristic = true;
        }
    }
    bool validators = has_field(resp, nresp, "etag") || has_field(resp, nresp, "last-modified");
    out->no_cache = rc.no_cache;
    out->must_revalidate = rc.must_revalidate || rc.proxy_revalidate || rc.s_maxage != CC_UNSET;
    if (rc.stale_while_revalidate != CC_UNSET)
        out->swr_ms = rc.stale_while_revalidate * 1000;
    if (rc.stale_if_error != CC_UNSET)
        out->sie_ms = rc.stale_if_error * 1000;
    if (life < 0) {
        if (!(rc.no_cache && validators))
            return CACHE_STORE_NO_LIFETIME;
        life = 0;
    }
    if (life == 0 && !validators && out->sie_ms < 0 && out->swr_ms < 0)
        return CACHE_STORE_NO_LIFETIME; /* stale at once and nothing to revalidate with */
    out->lifetime_ms = life;
    return CACHE_STORE_OK;
}

/* ---- reusing ---- */

enum cache_use cache_usable(const struct cache_fresh *f, const struct cc *req, bool pragma_no_cache,
                            int64_t now_ms)
{
    if (f->no_cache || req->no_cache || pragma_no_cache)
        return CACHE_USE_REVALIDATE;
    int64_t age = cache_age_ms(f, now_ms);
    int64_t left = f->lifetime_ms - age;
    if (req->max_age != CC_UNSET && (req->max_age == 0 || age > req->max_age * 1000))
        return CACHE_USE_REVALIDATE;
    if (req->min_fresh != CC_UNSET && left < req->min_fresh * 1000)
        return CACHE_USE_REVALIDATE;
    if (left > 0)
        return CACHE_USE_FRESH;
    if (req->max_stale != CC_UNSET && !f->must_revalidate &&
        (req->max_stale == CC_ANY || -left <= req->max_stale * 1000))
        return CACHE_USE_STALE_OK;
    return CACHE_USE_REVALIDATE;
}

bool cache_stale_within(const struct cache_fresh *f, int64_t window_ms, int64_t now_ms)
{
    if (window_ms < 0 || f->must_revalidate)
        return false;
    int64_t stale_for = cache_age_ms(f, now_ms) - f->lifetime_ms;
    return stale_for <= window_ms;
}

/* ---- conditionals and ranges ---- */

static struct slice opaque_tag(struct slice t)
{
    t = slice_trim_ows(t);
    if (t.len >= 2 && t.p[0] == 'W' && t.p[1] == '/') {
        t.p += 2;
        t.len -= 2;
    }
    return t;
}

bool cache_etag_match(struct slice list, struct slice etag)
{
    if (!etag.len)
        return slice_eq(slice_trim_ows(list), SLICE_LIT("*"));
    struct slice want = opaque_tag(etag);
    size_t i = 0;
    while (i < list.len) {
        size_t s = i;
        bool quoted = false;
        while (i < list.len && (quoted || list.p[i] != ',')) {
            if (list.p[i] == '"')
                quoted = !quoted;
            i++;
        }
        struct slice one = slice_trim_ows(slice_make(list.p + s, i - s));
        if (slice_eq(one, SLICE_LIT("*")) || slice_eq(opaque_tag(one), want))
            return true;
        i++;
    }
    return false;
}

static bool parse_u64(struct slice s, uint64_t *out)
{
    if (!s.len || s.len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s.p[i] - '0');
    }
    *out = v;
    return true;
}

int cache_range(struct slice range, uint64_t len, uint64_t *first, uint64_t *last)
{
    range = slice_trim_ows(range);
    if (range.len < 6 || !slice_eq_ci(slice_make(range.p, 6), SLICE_LIT("bytes=")))
        return -1;
    struct slice spec = slice_trim_ows(slice_make(range.p + 6, range.len - 6));
    if (memchr(spec.p, ',', spec.len))
        return -1; /* several ranges: answered whole */
    const char *dash = memchr(spec.p, '-', spec.len);
    if (!dash)
        return -1;
    struct slice a = slice_trim_ows(slice_make(spec.p, (size_t)(dash - spec.p)));
    struct slice b = slice_trim_ows(slice_make(dash + 1, spec.len - (size_t)(dash - spec.p) - 1));
    uint64_t x, y;
    if (!a.len) {
        if (!parse_u64(b, &y))
            return -1;
        if (y == 0 || len == 0)
            return 0;
        *first = y >= len ? 0 : len - y;
        *last = len - 1;
        return 1;
    }
    if (!parse_u64(a, &x))
        return -1;
    if (b.len) {
        if (!parse_u64(b, &y) || y < x)
            return -1;
    } else {
        y = UINT64_MAX;
    }
    if (x >= len)
        return 0;
    *first = x;
    *last = y >= len ? len - 1 : y;
    return 1;
}
