#include "proxy/vars.h"

#include "proxy/jwt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "proxy/exchange.h"
#include "proxy/limit.h"
#include "proxy/map.h"
#include "proxy/referer.h"
#include "proxy/securelink.h"
#include "proxy/rewrite.h"
#include "proxy/proxy.h"
#include "tls/tls.h"

enum var_id {
    V_HOST,
    V_HTTP_,
    V_COOKIE_,
    V_ARG_,
    V_JWT_CLAIM_,
    V_JWT_HEADER_,
    V_SENT_HTTP_,
    V_UPSTREAM_HTTP_,
    V_ARGS,
    V_IS_ARGS,
    V_URI,
    V_REQUEST_URI,
    V_REQUEST_METHOD,
    V_REQUEST,
    V_SCHEME,
    V_SERVER_NAME,
    V_SERVER_PORT,
    V_SERVER_ADDR,
    V_SERVER_PROTOCOL,
    V_REMOTE_ADDR,
    V_REMOTE_PORT,
    V_PROXY_ADD_XFF,
    V_PROXY_HOST,
    V_REQUEST_ID,
    V_STATUS,
    V_BODY_BYTES_SENT,
    V_BYTES_SENT,
    V_LIMIT_RATE,
    V_LIMIT_REQ_STATUS,
    V_LIMIT_CONN_STATUS,
    V_INVALID_REFERER,
    V_SECURE_LINK,
    V_SECURE_LINK_EXPIRES,
    V_REQUEST_LENGTH,
    V_REQUEST_TIME,
    V_UPSTREAM_ADDR,
    V_UPSTREAM_STATUS,
    V_UPSTREAM_CONNECT_TIME,
    V_UPSTREAM_HEADER_TIME,
    V_UPSTREAM_RESPONSE_TIME,
    V_TIME_LOCAL,
    V_TIME_ISO8601,
    V_MSEC,
    V_CONNECTION,
    V_CONNECTION_REQUESTS,
    V_PID,
    V_HOSTNAME,
    V_CONTENT_LENGTH,
    V_CONTENT_TYPE,
    V_HTTP2,
    V_UPSTREAM_CACHE_STATUS,
    V_REMOTE_USER,
    V_HTTPS,
    V_SSL_PROTOCOL,
    V_SSL_CIPHER,
    V_SSL_SESSION_REUSED,
    V_SSL_SERVER_NAME,
    V_SSL_CLIENT_VERIFY,
    V_SSL_CLIENT_S_DN,
    V_SSL_CLIENT_FINGERPRINT,
    V_SSL_ALPN_PROTOCOL,
    V_REALIP_REMOTE_ADDR,
    V_REALIP_REMOTE_PORT,
    V_PP_ADDR,
    V_PP_PORT,
    V_PP_SERVER_ADDR,
    V_PP_SERVER_PORT,
    V_CAPTURE,          /* $1..$9 (arg: the digit) */
    V_NAMED_CAPTURE,    /* (?<name>...) */
    V_MAP_BASE = 1000,  /* + index: a `map` variable */
    V_USER_BASE = 3000, /* + index: a `set` variable */
};

struct var_def {
    const char *name;
    int id;
    bool prefix;
};

static const struct var_def var_defs[] = {
    {"host", V_HOST, false},
    {"http_", V_HTTP_, true},
    {"cookie_", V_COOKIE_, true},
    {"arg_", V_ARG_, true},
    {"jwt_claim_", V_JWT_CLAIM_, true},
    {"jwt_header_", V_JWT_HEADER_, true},
    {"sent_http_", V_SENT_HTTP_, true},
    {"upstream_http_", V_UPSTREAM_HTTP_, true},
    {"args", V_ARGS, false},
    {"query_string", V_ARGS, false},
    {"is_args", V_IS_ARGS, false},
    {"uri", V_URI, false},
    {"document_uri", V_URI, false},
    {"request_uri", V_REQUEST_URI, false},
    {"request_method", V_REQUEST_METHOD, false},
    {"request", V_REQUEST, false},
    {"scheme", V_SCHEME, false},
    {"server_name", V_SERVER_NAME, false},
    {"server_port", V_SERVER_PORT, false},
    {"server_addr", V_SERVER_ADDR, false},
    {"server_protocol", V_SERVER_PROTOCOL, false},
    {"remote_addr", V_REMOTE_ADDR, false},
    {"binary_remote_addr", V_REMOTE_ADDR, false},
    {"remote_port", V_REMOTE_PORT, false},
    {"proxy_add_x_forwarded_for", V_PROXY_ADD_XFF, false},
    {"proxy_host", V_PROXY_HOST, false},
    {"request_id", V_REQUEST_ID, false},
    {"status", V_STATUS, false},
    {"body_bytes_sent", V_BODY_BYTES_SENT, false},
    {"bytes_sent", V_BYTES_SENT, false},
    {"limit_rate", V_LIMIT_RATE, false},
    {"limit_req_status", V_LIMIT_REQ_STATUS, false},
    {"limit_conn_status", V_LIMIT_CONN_STATUS, false},
    {"invalid_referer", V_INVALID_REFERER, false},
    {"secure_link", V_SECURE_LINK, false},
    {"secure_link_expires", V_SECURE_LINK_EXPIRES, false},
    {"request_length", V_REQUEST_LENGTH, false},
    {"request_time", V_REQUEST_TIME, false},
    {"upstream_addr", V_UPSTREAM_ADDR, false},
    {"upstream_status", V_UPSTREAM_STATUS, false},
    {"upstream_connect_time", V_UPSTREAM_CONNECT_TIME, false},
    {"upstream_header_time", V_UPSTREAM_HEADER_TIME, false},
    {"upstream_response_time", V_UPSTREAM_RESPONSE_TIME, false},
    {"time_local", V_TIME_LOCAL, false},
    {"time_iso8601", V_TIME_ISO8601, false},
    {"msec", V_MSEC, false},
    {"connection", V_CONNECTION, false},
    {"connection_requests", V_CONNECTION_REQUESTS, false},
    {"pid", V_PID, false},
    {"hostname", V_HOSTNAME, false},
    {"content_length", V_CONTENT_LENGTH, false},
    {"content_type", V_CONTENT_TYPE, false},
    {"http2", V_HTTP2, false},
    {"upstream_cache_status", V_UPSTREAM_CACHE_STATUS, false},
    {"remote_user", V_REMOTE_USER, false},
    {"https", V_HTTPS, false},
    {"ssl_protocol", V_SSL_PROTOCOL, false},
    {"ssl_cipher", V_SSL_CIPHER, false},
    {"ssl_session_reused", V_SSL_SESSION_REUSED, false},
    {"ssl_server_name", V_SSL_SERVER_NAME, false},
    {"ssl_client_verify", V_SSL_CLIENT_VERIFY, false},
    {"ssl_client_s_dn", V_SSL_CLIENT_S_DN, false},
    {"ssl_client_fingerprint", V_SSL_CLIENT_FINGERPRINT, false},
    {"ssl_alpn_protocol", V_SSL_ALPN_PROTOCOL, false},
    {"realip_remote_addr", V_REALIP_REMOTE_ADDR, false},
    {"realip_remote_port", V_REALIP_REMOTE_PORT, false},
    {"proxy_protocol_addr", V_PP_ADDR, false},
    {"proxy_protocol_port", V_PP_PORT, false},
    {"proxy_protocol_server_addr", V_PP_SERVER_ADDR, false},
    {"proxy_protocol_server_port", V_PP_SERVER_PORT, false},
};

static bool var_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* The `map` variables of the configuration being loaded (conf_load sets
 * them around applying the directives; config loads run on one thread). */
static const char *const *map_names;
static const char *const *user_names; /* `set` variables */

void vars_set_map_names(const char *const *names)
{
    map_names = names;
}

void vars_set_user_names(const char *const *names)
{
    user_names = names;
}

int vars_user_index(const char *name)
{
    for (size_t i = 0; user_names && user_names[i]; i++)
        if (strcmp(user_names[i], name) == 0)
            return (int)i;
    return -1;
}

static int lookup_var(const char *name, size_t len, struct slice *arg,
                      const char *const *extra_names)
{
    for (size_t i = 0; map_names && map_names[i]; i++)
        if (strlen(map_names[i]) == len && memcmp(map_names[i], name, len) == 0) {
            *arg = SLICE_NULL;
            return V_MAP_BASE + (int)i;
        }
    for (size_t i = 0; user_names && user_names[i]; i++)
        if (strlen(user_names[i]) == len && memcmp(user_names[i], name, len) == 0) {
            *arg = SLICE_NULL;
            return V_USER_BASE + (int)i;
        }
    if (len == 1 && name[0] >= '0' && name[0] <= '9') {
        *arg = slice_make(name, 1);
        return V_CAPTURE;
    }
    for (size_t i = 0; i < sizeof(var_defs) / sizeof(var_defs[0]); i++) {
        const struct var_def *d = &var_defs[i];
        size_t dl = strlen(d->name);
        if (d->prefix) {
            if (len > dl && memcmp(name, d->name, dl) == 0) {
                *arg = slice_make(name + dl, len - dl);
                return d->id;
            }
        } else if (len == dl && memcmp(name, d->name, dl) == 0) {
            *arg = SLICE_NULL;
            return d->id;
        }
    }
    for (size_t i = 0; extra_names && extra_names[i]; i++)
        if (strlen(extra_names[i]) == len && memcmp(extra_names[i], name, len) == 0) {
            *arg = slice_make(name, len);
            return V_NAMED_CAPTURE;
        }
    return -1;
}

bool vars_is_builtin(const char *name)
{
    struct slice arg;
    const char *const *saved = map_names, *const *saved_user = user_names;
    map_names = user_names = NULL;
    int id = lookup_var(name, strlen(name), &arg, NULL);
    map_names = saved;
    user_names = saved_user;
    return id >= 0;
}

struct tmpl *tmpl_compile(struct arena *a, const char *src, const char *const *extra_names,
                          char *err, size_t errlen)
{
    size_t len = strlen(src), cap = 4, n = 0;
    struct tmpl *t = arena_calloc(a, sizeof(*t));
    if (!t)
        goto oom;
    t->src = src;
    /* count parts first: at most one per '$' plus one literal around each */
    for (size_t i = 0; i < len; i++)
        if (src[i] == '$')
            cap += 2;
    t->parts = arena_calloc(a, cap * sizeof(*t->parts));
    if (!t->parts)
        goto oom;
    size_t lit_start = 0;
    for (size_t i = 0; i < len;) {
        if (src[i] != '$') {
            i++;
            continue;
        }
        size_t name_start, name_len, end;
        if (i + 1 < len && src[i + 1] == '{') {
            const char *close = memchr(src + i + 2, '}', len - i - 2);
            if (!close) {
                snprintf(err, errlen, "the closing bracket in \"%s\" variable is missing", src);
                return NULL;
            }
            name_start = i + 2;
            name_len = (size_t)(close - (src + name_start));
            end = (size_t)(close - src) + 1;
        } else {
            name_start = i + 1;
            name_len = 0;
            while (name_start + name_len < len && var_char(src[name_start + name_len]))
                name_len++;
            /* $1abc is $1 followed by "abc", as nginx */
            if (name_len > 1 && src[name_start] >= '0' && src[name_start] <= '9')
                name_len = 1;
            end = name_start + name_len;
        }
        if (name_len == 0) {
            snprintf(err, errlen, "invalid variable name in \"%s\"", src);
            return NULL;
        }
        if (i > lit_start)
            t->parts[n++] =
                (struct tmpl_part){false, slice_make(src + lit_start, i - lit_start), 0};
        struct slice arg;
        int id = lookup_var(src + name_start, name_len, &arg, extra_names);
        if (id < 0) {
            snprintf(err, errlen, "unknown \"%.*s\" variable", (int)name_len, src + name_start);
            return NULL;
        }
        /* header-style arguments are matched case-insensitively, '_' as '-' */
        if (id == V_HTTP_ || id == V_SENT_HTTP_ || id == V_UPSTREAM_HTTP_) {
            char *lower = arena_strndup(a, arg.p, arg.len);
            if (!lower)
                goto oom;
            for (size_t k = 0; k < arg.len; k++)
                lower[k] = lower[k] == '_' ? '-' : ascii_lower(lower[k]);
            arg = slice_make(lower, arg.len);
        }
        t->parts[n++] = (struct tmpl_part){true, arg, id};
        i = end;
        lit_start = end;
    }
    if (len > lit_start || n == 0)
        t->parts[n++] = (struct tmpl_part){false, slice_make(src + lit_start, len - lit_start), 0};
    t->nparts = n;
    t->is_const = (n == 1 && !t->parts[0].is_var);
    return t;
oom:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

/* ---- time caches (per thread, refreshed once a second) ---- */

static __thread time_t cached_sec = -1;
static __thread char cached_date[30];
static __thread char cached_local[32];
static __thread char cached_iso[32];

void vars_time_update(void)
{
    time_t now = time(NULL);
    if (now == cached_sec)
        return;
    cached_sec = now;
    http_date_format(now, cached_date);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(cached_local, sizeof(cached_local), "%d/%b/%Y:%H:%M:%S %z", &tm);
    strftime(cached_iso, sizeof(cached_iso), "%Y-%m-%dT%H:%M:%S%z", &tm);
    /* ISO 8601 wants +00:00, strftime gives +0000 */
    size_t l = strlen(cached_iso);
    if (l >= 5 && l + 1 < sizeof(cached_iso)) {
        cached_iso[l + 1] = '\0';
        cached_iso[l] = cached_iso[l - 1];
        cached_iso[l - 1] = cached_iso[l - 2];
        cached_iso[l - 2] = ':';
    }
}

struct slice vars_http_date(void)
{
    vars_time_update();
    return slice_make(cached_date, 29);
}

/* ---- request ids: xorshift128+ per thread, seeded from the kernel ---- */

static __thread uint64_t rid_s[2];

static uint64_t rid_next(void)
{
    if (rid_s[0] == 0 && rid_s[1] == 0) {
        if (getrandom(rid_s, sizeof(rid_s), 0) != sizeof(rid_s)) {
            rid_s[0] = (uint64_t)time(NULL) ^ (uint64_t)getpid();
            rid_s[1] = (uint64_t)(uintptr_t)&rid_s;
        }
        rid_s[0] |= 1;
    }
    uint64_t s1 = rid_s[0];
    const uint64_t s0 = rid_s[1];
    rid_s[0] = s0;
    s1 ^= s1 << 23;
    rid_s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rid_s[1] + s0;
}

void vars_new_request_id(struct exchange *ex)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = rid_next(), b = rid_next();
    for (int i = 0; i < 16; i++) {
        ex->request_id[i] = hex[(a >> (i * 4)) & 15];
        ex->request_id[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    ex->request_id[32] = '\0';
}

/* ---- values ---- */

struct slice fields_get(const struct http_field *f, size_t n, struct slice name, bool *found)
{
    return http_field_get(f, n, name, found);
}

/* $http_x: several fields of one name are joined with ", " (cookies with "; "). */
static struct slice field_joined(struct exchange *ex, const struct http_field *f, size_t n,
                                 struct slice name)
{
    size_t count = 0, total = 0;
    struct slice first = SLICE_NULL;
    bool cookie = slice_eq_lit_ci(name, "cookie");
    for (size_t i = 0; i < n; i++)
        if (slice_eq_ci(f[i].name, name)) {
            if (count++ == 0)
                first = f[i].value;
            total += f[i].value.len + 2;
        }
    if (count <= 1)
        return first;
    char *p = arena_alloc(&ex->arena, total);
    if (!p)
        return first;
    size_t off = 0;
    for (size_t i = 0; i < n; i++)
        if (slice_eq_ci(f[i].name, name)) {
            if (off) {
                p[off++] = cookie ? ';' : ',';
                p[off++] = ' ';
            }
            memcpy(p + off, f[i].value.p, f[i].value.len);
            off += f[i].value.len;
        }
    return slice_make(p, off);
}

/* name=value pairs separated by `sep` ("&" for args, ";" for cookies). */
static struct slice pair_value(struct slice list, struct slice name, char sep, bool ci)
{
    const char *p = list.p, *end = list.p + list.len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == sep))
            p++;
        const char *item_end = memchr(p, sep, (size_t)(end - p));
        if (!item_end)
            item_end = end;
        const char *eq = memchr(p, '=', (size_t)(item_end - p));
        struct slice k = slice_make(p, (size_t)((eq ? eq : item_end) - p));
        if (ci ? slice_eq_ci(k, name) : slice_eq(k, name))
            return eq ? slice_make(eq + 1, (size_t)(item_end - eq - 1)) : SLICE_LIT("");
        p = item_end;
    }
    return SLICE_NULL;
}

static struct slice limit_status_name(uint8_t st)
{
    switch (st) {
    case LIMIT_ST_PASSED:
        return SLICE_LIT("PASSED");
    case LIMIT_ST_DELAYED:
        return SLICE_LIT("DELAYED");
    case LIMIT_ST_REJECTED:
        return SLICE_LIT("REJECTED");
    case LIMIT_ST_DELAYED_DRY_RUN:
        return SLICE_LIT("DELAYED_DRY_RUN");
    case LIMIT_ST_REJECTED_DRY_RUN:
        return SLICE_LIT("REJECTED_DRY_RUN");
    default:
        return SLICE_NULL;
    }
}

static struct slice fmt(struct exchange *ex, const char *f, ...)
    __attribute__((format(printf, 2, 3)));
static struct slice fmt(struct exchange *ex, const char *f, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(tmp, sizeof(tmp), f, ap);
    va_end(ap);
    if (n < 0)
        return SLICE_NULL;
    if ((size_t)n >= sizeof(tmp))
        n = sizeof(tmp) - 1;
    return arena_slice_dup(&ex->arena, slice_make(tmp, (size_t)n));
}

static struct slice secs(struct exchange *ex, uint64_t ms)
{
    return fmt(ex, "%llu.%03llu", (unsigned long long)(ms / 1000), (unsigned long long)(ms % 1000));
}

enum try_field { TRY_ADDR, TRY_STATUS, TRY_CONNECT, TRY_HEADER, TRY_RESPONSE };

static struct slice tries_list(struct exchange *ex, enum try_field which)
{
    if (ex->ntries == 0)
        return SLICE_NULL;
    char buf[EX_MAX_TRIES * 72];
    size_t off = 0;
    for (int i = 0; i < ex->ntries; i++) {
        const struct ups_try *t = &ex->tries[i];
        if (i)
            off += (size_t)snprintf(buf + off, sizeof(buf) - off, ", ");
        switch (which) {
        case TRY_ADDR:
            off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s", t->addr);
            break;
        case TRY_STATUS:
            if (t->status)
                off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%d", t->status);
            else
                off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%d",
                                        ending_status(ex->ending.code));
            break;
        default: {
            uint64_t v = which == TRY_CONNECT  ? t->connect_ms
                         : which == TRY_HEADER ? t->header_ms
                                               : t->response_ms;
            if (v == UINT64_MAX)
                off += (size_t)snprintf(buf + off, sizeof(buf) - off, "-");
            else
                off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%llu.%03llu",
                                        (unsigned long long)(v / 1000),
                                        (unsigned long long)(v % 1000));
        }
        }
        if (off >= sizeof(buf))
            off = sizeof(buf) - 1;
    }
    return arena_slice_dup(&ex->arena, slice_make(buf, off));
}

static struct slice capture(const struct route_captures *c, int idx)
{
    if (!c->subject || idx >= c->n)
        return SLICE_NULL;
    size_t s = c->ov[idx * 2], e = c->ov[idx * 2 + 1];
    if (s == PCRE2_UNSET || e < s)
        return SLICE_NULL;
    return slice_make(c->subject + s, e - s);
}

static struct slice named_capture(const struct route_captures *c, struct slice name)
{
    if (!c->re || !c->subject)
        return SLICE_NULL;
    char nm[64];
    if (name.len >= sizeof(nm))
        return SLICE_NULL;
    memcpy(nm, name.p, name.len);
    nm[name.len] = '\0';
    int idx = pcre2_substring_number_from_name(c->re, (PCRE2_SPTR)nm);
    return idx < 0 ? SLICE_NULL : capture(c, idx);
}

/* The user name of Basic credentials (RFC 7617), for $remote_user. */
static struct slice basic_user(struct exchange *ex)
{
    bool found;
    struct slice a =
        fields_get(ex->req_fields, ex->nreq_fields, SLICE_LIT("authorization"), &found);
    if (!found || a.len < 7 || !slice_eq_ci(slice_make(a.p, 6), SLICE_LIT("basic ")))
        return SLICE_NULL;
    struct slice b64 = slice_trim_ows(slice_make(a.p + 6, a.len - 6));
    char *out = arena_alloc(&ex->arena, b64.len);
    if (!out)
        return SLICE_NULL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < b64.len; i++) {
        char c = b64.p[i];
        int v = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '+'             ? 62
                : c == '/'             ? 63
                : c == '='             ? -2
                                       : -1;
        if (v == -2)
            break;
        if (v < 0)
            return SLICE_NULL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    const char *colon = memchr(out, ':', o);
    return colon ? slice_make(out, (size_t)(colon - out)) : SLICE_NULL;
}

struct slice vars_arg(struct exchange *ex, struct slice name)
{
    return pair_value(ex->args, name, '&', true);
}

struct slice vars_cookie(struct exchange *ex, struct slice name)
{
    struct slice cookies = field_joined(ex, ex->req_fields, ex->nreq_fields, SLICE_LIT("cookie"));
    return pair_value(cookies, name, ';', false);
}

static char hostname_buf[256];

struct slice var_value(struct exchange *ex, int var, struct slice arg)
{
    bool found;
    if (var >= V_USER_BASE)
        return rw_user_value(ex, var - V_USER_BASE);
    if (var >= V_MAP_BASE)
        return map_value(ex, var - V_MAP_BASE);
    switch ((enum var_id)var) {
    case V_HOST:
        if (ex->host.len)
            return ex->host;
        if (ex->srv && ex->srv->nnames)
            return slice_cstr(ex->srv->names[0]);
        return SLICE_NULL;
    case V_HTTP_:
        return field_joined(ex, ex->req_fields, ex->nreq_fields, arg);
    case V_COOKIE_:
        return vars_cookie(ex, arg);
    case V_ARG_:
        return pair_value(ex->args, arg, '&', true);
    case V_JWT_CLAIM_:
        jwt_lazy(ex);
        return jwt_json_member(&ex->arena, ex->jwt_payload, arg);
    case V_JWT_HEADER_:
        jwt_lazy(ex);
        return jwt_json_member(&ex->arena, ex->jwt_header, arg);
    case V_SENT_HTTP_:
        return field_joined(ex, ex->resp_fields, ex->nresp_fields, arg);
    case V_UPSTREAM_HTTP_:
        return field_joined(ex, ex->ups_fields, ex->nups_fields, arg);
    case V_ARGS:
        return ex->args;
    case V_IS_ARGS:
        return ex->has_args ? SLICE_LIT("?") : SLICE_NULL;
    case V_URI:
        return ex->uri;
    case V_REQUEST_URI:
        return ex->request_uri;
    case V_REQUEST_METHOD:
        return ex->method;
    case V_REQUEST:
        return ex->request_line;
    case V_SCHEME:
        return ex->is_tls ? SLICE_LIT("https") : SLICE_LIT("http");
    case V_SERVER_NAME:
        if (ex->srv && ex->srv->nnames)
            return slice_cstr(ex->srv->names[0]);
        return SLICE_NULL;
    case V_SERVER_PORT:
        return fmt(ex, "%d", net_addr_port(ex->local));
    case V_SERVER_ADDR: {
        char ip[64];
        return arena_slice_dup(&ex->arena, slice_make(ip, net_addr_ip(ex->local, ip, sizeof(ip))));
    }
    case V_SERVER_PROTOCOL:
        return ex->minor_version == 2   ? SLICE_LIT("HTTP/2.0")
               : ex->minor_version == 0 ? SLICE_LIT("HTTP/1.0")
                                        : SLICE_LIT("HTTP/1.1");
    case V_REMOTE_ADDR: {
        char ip[64];
        return arena_slice_dup(&ex->arena, slice_make(ip, net_addr_ip(ex->peer, ip, sizeof(ip))));
    }
    case V_REMOTE_PORT: /* empty when realip gave an address without a port, as nginx */
        return net_addr_port(ex->peer) ? fmt(ex, "%d", net_addr_port(ex->peer)) : SLICE_NULL;
    case V_REALIP_REMOTE_ADDR: {
        char ip[64];
        const struct net_addr *a = ex->realip_orig ? ex->realip_orig : ex->peer;
        return arena_slice_dup(&ex->arena, slice_make(ip, net_addr_ip(a, ip, sizeof(ip))));
    }
    case V_REALIP_REMOTE_PORT:
        return fmt(ex, "%d", net_addr_port(ex->realip_orig ? ex->realip_orig : ex->peer));
    case V_PP_ADDR:
    case V_PP_SERVER_ADDR: {
        const struct net_addr *a = var == V_PP_ADDR ? ex->pp_src : ex->pp_dst;
        char ip[64];
        return a ? arena_slice_dup(&ex->arena, slice_make(ip, net_addr_ip(a, ip, sizeof(ip))))
                 : SLICE_NULL;
    }
    case V_PP_PORT:
    case V_PP_SERVER_PORT: {
        const struct net_addr *a = var == V_PP_PORT ? ex->pp_src : ex->pp_dst;
        return a ? fmt(ex, "%d", net_addr_port(a)) : SLICE_NULL;
    }
    case V_PROXY_ADD_XFF: {
        char ip[64];
        size_t ipl = net_addr_ip(ex->peer, ip, sizeof(ip));
        struct slice xff =
            field_joined(ex, ex->req_fields, ex->nreq_fields, SLICE_LIT("x-forwarded-for"));
        if (!xff.len)
            return arena_slice_dup(&ex->arena, slice_make(ip, ipl));
        /* never truncated: the address we append is the one hop we vouch for */
        char *out = arena_alloc(&ex->arena, xff.len + 2 + ipl);
        if (!out)
            return SLICE_NULL;
        memcpy(out, xff.p, xff.len);
        memcpy(out + xff.len, ", ", 2);
        memcpy(out + xff.len + 2, ip, ipl);
        return slice_make(out, xff.len + 2 + ipl);
    }
    case V_PROXY_HOST:
        if (ex->lc && ex->lc->pass)
            return proxy_current_host(ex);
        return SLICE_NULL;
    case V_REQUEST_ID:
        /* made on first use: most requests never ask */
        if (!ex->request_id[0])
            vars_new_request_id(ex);
        return slice_make(ex->request_id, 32);
    case V_STATUS:
        return fmt(ex, "%03d", ex->status);
    case V_BODY_BYTES_SENT:
        return fmt(ex, "%llu", (unsigned long long)ex->body_bytes_sent);
    case V_BYTES_SENT:
        return fmt(ex, "%llu", (unsigned long long)ex->bytes_sent);
    case V_LIMIT_RATE:
        return fmt(ex, "%llu", (unsigned long long)limit_rate_current(ex));
    case V_LIMIT_REQ_STATUS:
        return limit_status_name(ex->limit_req_st);
    case V_LIMIT_CONN_STATUS:
        return limit_status_name(ex->limit_conn_st);
    case V_INVALID_REFERER:
        return referer_invalid(ex);
    case V_SECURE_LINK:
        return securelink_value(ex);
    case V_SECURE_LINK_EXPIRES:
        return securelink_expires(ex);
    case V_REQUEST_LENGTH:
        return fmt(ex, "%zu", ex->request_length);
    case V_REQUEST_TIME:
        return secs(ex, loop_now_ms(ex->loop) - ex->start_ms);
    case V_UPSTREAM_ADDR:
        return tries_list(ex, TRY_ADDR);
    case V_UPSTREAM_STATUS:
        return tries_list(ex, TRY_STATUS);
    case V_UPSTREAM_CONNECT_TIME:
        return tries_list(ex, TRY_CONNECT);
    case V_UPSTREAM_HEADER_TIME:
        return tries_list(ex, TRY_HEADER);
    case V_UPSTREAM_RESPONSE_TIME:
        return tries_list(ex, TRY_RESPONSE);
    case V_TIME_LOCAL:
        vars_time_update();
        return slice_cstr(cached_local);
    case V_TIME_ISO8601:
        vars_time_update();
        return slice_cstr(cached_iso);
    case V_MSEC: {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        return fmt(ex, "%lld.%03d", (long long)tv.tv_sec, (int)(tv.tv_usec / 1000));
    }
    case V_CONNECTION:
        return fmt(ex, "%llu", (unsigned long long)ex->conn_number);
    case V_CONNECTION_REQUESTS:
        return fmt(ex, "%d", ex->conn_requests);
    case V_PID:
        return fmt(ex, "%d", (int)getpid());
    case V_HOSTNAME:
        if (!hostname_buf[0])
            gethostname(hostname_buf, sizeof(hostname_buf) - 1);
        return slice_cstr(hostname_buf);
    case V_CONTENT_LENGTH:
        return fields_get(ex->req_fields, ex->nreq_fields, SLICE_LIT("content-length"), &found);
    case V_CONTENT_TYPE:
        return fields_get(ex->req_fields, ex->nreq_fields, SLICE_LIT("content-type"), &found);
    case V_HTTP2:
        return ex->minor_version == 2 ? (ex->is_tls ? SLICE_LIT("h2") : SLICE_LIT("h2c"))
                                      : SLICE_NULL;
    case V_UPSTREAM_CACHE_STATUS:
        return slice_cstr(ex->cache_status);
    case V_REMOTE_USER:
        return basic_user(ex);
    case V_HTTPS:
        return ex->tls ? SLICE_LIT("on") : SLICE_NULL;
    case V_SSL_PROTOCOL:
        return ex->tls ? slice_cstr(tls_conn_protocol(ex->tls)) : SLICE_NULL;
    case V_SSL_CIPHER:
        return ex->tls ? slice_cstr(tls_conn_cipher(ex->tls)) : SLICE_NULL;
    case V_SSL_SESSION_REUSED:
        return !ex->tls ? SLICE_NULL : tls_conn_reused(ex->tls) ? SLICE_LIT("r") : SLICE_LIT(".");
    case V_SSL_SERVER_NAME:
        return ex->tls ? slice_cstr(tls_conn_server_name(ex->tls)) : SLICE_NULL;
    case V_SSL_CLIENT_VERIFY:
        return ex->tls ? slice_cstr(tls_conn_client_verify(ex->tls)) : SLICE_NULL;
    case V_SSL_ALPN_PROTOCOL:
        return ex->tls ? tls_conn_alpn(ex->tls) : SLICE_NULL;
    case V_SSL_CLIENT_S_DN:
    case V_SSL_CLIENT_FINGERPRINT: {
        if (!ex->tls)
            return SLICE_NULL;
        char buf[1024];
        size_t n = var == V_SSL_CLIENT_S_DN
                       ? tls_conn_client_s_dn(ex->tls, buf, sizeof(buf))
                       : tls_conn_client_fingerprint(ex->tls, buf, sizeof(buf));
        return arena_slice_dup(&ex->arena, slice_make(buf, n < sizeof(buf) ? n : 0));
    }
    case V_CAPTURE: {
        int idx = arg.p[0] - '0';
        if (ex->caps.n)
            return capture(&ex->caps, idx);
        return capture(&ex->host_caps, idx);
    }
    case V_NAMED_CAPTURE: {
        struct slice v = named_capture(&ex->caps, arg);
        return v.p ? v : named_capture(&ex->host_caps, arg);
    }
    case V_MAP_BASE: /* handled above */
    case V_USER_BASE:
        break;
    }
    return SLICE_NULL;
}

/* Bytes a capture may not carry raw into a URI path (args: also & + ;
 * would change the arguments' meaning), as nginx's NGX_ESCAPE_URI/ARGS. */
static bool pct_escaped(unsigned char c, bool args)
{
    if (c <= 0x20 || c >= 0x7f)
        return true;
    switch (c) {
    case '"':
    case '#':
    case '%':
    case '<':
    case '>':
    case '?':
    case '\\':
    case '^':
    case '`':
    case '{':
    case '|':
    case '}':
        return true;
    case '&':
    case '+':
    case ';':
        return args;
    default:
        return false;
    }
}

static size_t escaped_len(struct slice v, enum tmpl_escape esc)
{
    size_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (esc == ESC_CAPTURE_URI || esc == ESC_CAPTURE_ARGS)
            n += pct_escaped(c, esc == ESC_CAPTURE_ARGS) ? 3 : 1;
        else if (esc == ESC_DEFAULT)
            n += (c == '"' || c == '\\' || c < 0x20 || c > 0x7e) ? 4 : 1;
        else
            n += (c == '"' || c == '\\') ? 2 : c < 0x20 ? 6 : 1;
    }
    return n;
}

static size_t escape_into(char *out, struct slice v, enum tmpl_escape esc)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (esc == ESC_CAPTURE_URI || esc == ESC_CAPTURE_ARGS) {
            if (pct_escaped(c, esc == ESC_CAPTURE_ARGS)) {
                out[o++] = '%';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            } else {
                out[o++] = (char)c;
            }
        } else if (esc == ESC_DEFAULT) {
            if (c == '"' || c == '\\' || c < 0x20 || c > 0x7e) {
                out[o++] = '\\';
                out[o++] = 'x';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            } else {
                out[o++] = (char)c;
            }
        } else if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

struct slice tmpl_eval(struct exchange *ex, const struct tmpl *t, enum tmpl_escape esc)
{
    if (t->is_const)
        return t->parts[0].lit;
    struct slice stack_vals[64], *vals = stack_vals;
    size_t n = t->nparts, total = 0;
    if (n > 64 && !(vals = arena_alloc(&ex->arena, n * sizeof(*vals))))
        return SLICE_NULL;
    bool captures_only = esc == ESC_CAPTURE_URI || esc == ESC_CAPTURE_ARGS;
    bool any_escaped = false;
    for (size_t i = 0; i < n; i++) {
        const struct tmpl_part *p = &t->parts[i];
        if (!p->is_var) {
            vals[i] = p->lit;
            total += p->lit.len;
            continue;
        }
        vals[i] = var_value(ex, p->var, p->lit);
        if (esc == ESC_DEFAULT && vals[i].len == 0)
            vals[i] = SLICE_LIT("-"); /* nginx logs an empty value as "-" */
        bool escaped =
            esc != ESC_NONE && (!captures_only || p->var == V_CAPTURE || p->var == V_NAMED_CAPTURE);
        any_escaped |= escaped;
        total += escaped ? escaped_len(vals[i], esc) : vals[i].len;
    }
    if (n == 1 && !any_escaped)
        return vals[0];
    char *out = arena_alloc(&ex->arena, total + 1);
    if (!out)
        return SLICE_NULL;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const struct tmpl_part *p = &t->parts[i];
        bool escaped = p->is_var && esc != ESC_NONE &&
                       (!captures_only || p->var == V_CAPTURE || p->var == V_NAMED_CAPTURE);
        if (!escaped) {
            if (vals[i].len)
                memcpy(out + off, vals[i].p, vals[i].len);
            off += vals[i].len;
        } else {
            off += escape_into(out + off, vals[i], esc);
        }
    }
    out[off] = '\0';
    return slice_make(out, off);
}
