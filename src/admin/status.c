/* The `api` location: upstream groups, their servers and what the balancers,
 * passive health, outlier ejection and active checks think of them, as JSON
 * built in the exchange's arena. */
#include "admin/admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "proxy/exchange.h"
#include "proxy/proxy.h"
#include "upstream/check.h"

static int set_api(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                   void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->api)
        return cf_error(cx, n, "\"api\" directive is duplicate");
    if (n->nargs == 1 && strcmp(n->args[0], "write=off") != 0)
        return cf_error(cx, n, "%s: the api is read-only (only \"write=off\")",
                        strcmp(n->args[0], "write=on") == 0 ? "\"write=on\" is not supported"
                                                            : "invalid parameter");
    if (lc->pass || lc->has_return)
        return cf_error(cx, n, "\"api\" cannot be used with \"proxy_pass\" or \"return\"");
    lc->api = 1;
    return 0;
}

static const struct cf_directive admin_directives[] = {
    {"api", CF_LOCATION, 0, 1, false, set_api, CONF_LOC, 0, "[write=off]", "-",
     "this location answers itself with the JSON state of the upstream groups: GET "
     "<location>, <location>/upstreams, <location>/upstreams/NAME, <location>/caches; read-only "
     "(write=off)"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module admin_cf_module = {"api", admin_directives};

/* ---- JSON in the exchange arena ---- */

struct jbuf {
    struct arena *a;
    char *p;
    size_t len, cap;
    bool oom;
};

static void jreserve(struct jbuf *j, size_t n)
{
    if (j->oom || j->len + n <= j->cap)
        return;
    size_t cap = j->cap ? j->cap * 2 : 4096;
    while (cap < j->len + n)
        cap *= 2;
    char *np = arena_alloc(j->a, cap);
    if (!np) {
        j->oom = true;
        return;
    }
    if (j->len)
        memcpy(np, j->p, j->len);
    j->p = np;
    j->cap = cap;
}

static void jraw(struct jbuf *j, const char *s, size_t n)
{
    jreserve(j, n);
    if (j->oom)
        return;
    memcpy(j->p + j->len, s, n);
    j->len += n;
}

static void jf(struct jbuf *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jf(struct jbuf *j, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        jraw(j, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void jstr(struct jbuf *j, const char *s)
{
    jraw(j, "\"", 1);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            jf(j, "\\%c", c);
        else if (c < 0x20)
            jf(j, "\\u%04x", c);
        else
            jraw(j, (const char *)&c, 1);
    }
    jraw(j, "\"", 1);
}

static const char *server_state(const struct ups_server *s, uint64_t now_ms)
{
    if (s->down)
        return "down";
    if (atomic_load(&s->hc.down))
        return atomic_load(&s->hc.checking) ? "checking" : "unhealthy";
    if (atomic_load(&s->failed_until_ms) > now_ms)
        return "unavail";
    if (atomic_load(&s->ejected_until_ms) > now_ms)
        return "ejected";
    return "up";
}

static void jtime(struct jbuf *j, uint64_t wall_ms)
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    char b[40];
    gmtime_r(&t, &tm);
    size_t n = strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
    jf(j, "\"%.*s.%03uZ\"", (int)n, b, (unsigned)(wall_ms % 1000));
}

static void json_server(struct jbuf *j, const struct ups_server *s, size_t id, uint64_t now_ms)
{
    jf(j, "{\"id\":%zu,\"server\":", id);
    jstr(j, s->addr_text);
    jraw(j, ",\"name\":", 8);
    jstr(j, s->name);
    jf(j, ",\"backup\":%s,\"weight\":%d,\"effective_weight\":%.2f,\"state\":\"%s\"",
       s->backup ? "true" : "false", s->weight,
       (double)ups_server_weight(s, now_ms) / UPS_WEIGHT_SCALE, server_state(s, now_ms));
    jf(j, ",\"active\":%d,\"requests\":%llu,\"max_conns\":%d,\"fails\":%d", atomic_load(&s->active),
       (unsigned long long)atomic_load(&s->requests), s->max_conns, atomic_load(&s->fails));
    jf(j, ",\"max_fails\":%d,\"fail_timeout_ms\":%u,\"slow_start_ms\":%u,\"ejections\":%d",
       s->max_fails, s->fail_timeout_ms, s->slow_start_ms, atomic_load(&s->ejections));
    const struct ups_hc *hc = &s->hc;
    uint64_t last = atomic_load(&hc->last_ms);
    jf(j, ",\"health_checks\":{\"checks\":%u,\"fails\":%u,\"unhealthy\":%u",
       atomic_load(&hc->checks), atomic_load(&hc->fails), atomic_load(&hc->unhealthy));
    if (last) {
        jf(j, ",\"last_passed\":%s,\"last_status\":%d,\"last_check\":",
           atomic_load(&hc->last_ok) ? "true" : "false", atomic_load(&hc->last_status));
        jtime(j, last);
    }
    jraw(j, "}}", 2);
}

static void json_group(struct jbuf *j, const struct ups_group *g, uint64_t now_ms)
{
    jraw(j, "{\"name\":", 8);
    jstr(j, g->name);
    jraw(j, ",\"algorithm\":", 13);
    jstr(j, g->balancer->name);
    jf(j, ",\"keepalive\":%d,\"health_checks\":[", g->keepalive);
    for (const struct ups_check *c = g->checks; c; c = c->next) {
        jf(j, "%s{\"type\":\"%s\",\"uri\":", c == g->checks ? "" : ",", c->tcp ? "tcp" : "http");
        jstr(j, c->tcp ? "" : c->uri);
        jf(j,
           ",\"interval_ms\":%u,\"jitter_ms\":%u,\"fails\":%d,\"passes\":%d,\"port\":%d,"
           "\"mandatory\":%s,\"match\":",
           c->interval_ms, c->jitter_ms, c->fails, c->passes, c->port,
           c->mandatory ? "true" : "false");
        if (c->match)
            jstr(j, c->match->name);
        else
            jraw(j, "null", 4);
        jraw(j, "}", 1);
    }
    jraw(j, "],\"peers\":[", 11);
    for (size_t i = 0; i < g->nservers; i++) {
        if (i)
            jraw(j, ",", 1);
        json_server(j, &g->servers[i], i, now_ms);
    }
    jraw(j, "]}", 2);
}

static void json_groups(struct jbuf *j, const struct snapshot *s, uint64_t now_ms)
{
    jraw(j, "{", 1);
    bool first = true;
    for (size_t i = 0; i < s->ngroups; i++) {
        const struct ups_group *g = s->groups[i];
        if (g->implicit)
            continue; /* proxy_pass host:port: not a configured group */
        if (!first)
            jraw(j, ",", 1);
        first = false;
        jstr(j, g->name);
        jraw(j, ":", 1);
        json_group(j, g, now_ms);
    }
    jraw(j, "}", 1);
}

static void json_caches(struct jbuf *j, const struct snapshot *s)
{
    jraw(j, "{", 1);
    bool first = true;
    for (const struct cache_path_decl *d = s->http_lc->cache.paths; d; d = d->next) {
        if (!d->zone)
            continue; /* declared, used by no location */
        struct cache_stats st;
        cache_zone_stats(d->zone, &st);
        if (!first)
            jraw(j, ",", 1);
        first = false;
        jstr(j, d->zc.name);
        jraw(j, ":{\"path\":", 9);
        jstr(j, d->zc.path);
        jf(j,
           ",\"entries\":%llu,\"disk_bytes\":%llu,\"max_size\":%llu,\"memory_bytes\":%llu,"
           "\"memory_size\":%llu,\"hits\":%llu,\"misses\":%llu,\"stores\":%llu,"
           "\"evictions\":%llu,\"loading\":%s}",
           (unsigned long long)st.entries, (unsigned long long)st.disk_bytes,
           (unsigned long long)d->zc.max_size, (unsigned long long)st.mem_bytes,
           (unsigned long long)d->zc.mem_size, (unsigned long long)st.hits,
           (unsigned long long)st.misses, (unsigned long long)st.stores,
           (unsigned long long)st.evictions, st.loading ? "true" : "false");
    }
    jraw(j, "}", 1);
}

static void answer_error(struct exchange *ex, int status, const char *text)
{
    struct jbuf j = {.a = &ex->arena};
    jf(&j, "{\"error\":{\"status\":%d,\"text\":", status);
    jstr(&j, text);
    jraw(&j, "}}\n", 3);
    proxy_answer(ex, status, SLICE_LIT("application/json"),
                 j.oom ? SLICE_NULL : slice_make(j.p, j.len));
}

void admin_answer(struct exchange *ex)
{
    if (ex->method_id != HTTP_M_GET && ex->method_id != HTTP_M_HEAD) {
        answer_error(ex, 405, "method not allowed: the api is read-only");
        return;
    }
    /* the path below the location: "", "upstreams", "upstreams/NAME", "caches" */
    struct slice rest = ex->uri;
    const struct location *loc = ex->loc;
    if (loc &&
        (loc->match == LOC_PREFIX || loc->match == LOC_PREFIX_NOREGEX || loc->match == LOC_EXACT) &&
        slice_starts_with(rest, slice_make(loc->pattern, loc->pattern_len))) {
        rest.p += loc->pattern_len;
        rest.len -= loc->pattern_len;
    }
    while (rest.len && rest.p[0] == '/')
        rest.p++, rest.len--;
    while (rest.len && rest.p[rest.len - 1] == '/')
        rest.len--;
    const struct snapshot *s = ex->snap;
    uint64_t now_ms = loop_now_ms(ex->loop);
    struct jbuf j = {.a = &ex->arena};
    struct slice up = SLICE_LIT("upstreams");
    if (rest.len == 0) {
        jraw(&j, "{\"portico\":", 11);
        jstr(&j, PORTICO_VERSION);
        jf(&j, ",\"generation\":%llu,\"upstreams\":", (unsigned long long)s->generation);
        json_groups(&j, s, now_ms);
        jraw(&j, ",\"caches\":", 10);
        json_caches(&j, s);
        jraw(&j, "}", 1);
    } else if (slice_eq(rest, SLICE_LIT("caches"))) {
        json_caches(&j, s);
    } else if (slice_eq(rest, up)) {
        json_groups(&j, s, now_ms);
    } else if (rest.len > up.len + 1 && slice_starts_with(rest, up) && rest.p[up.len] == '/') {
        struct slice name = slice_make(rest.p + up.len + 1, rest.len - up.len - 1);
        const struct ups_group *g = NULL;
        for (size_t i = 0; i < s->ngroups && !g; i++)
            if (!s->groups[i]->implicit && slice_eq(slice_cstr(s->groups[i]->name), name))
                g = s->groups[i];
        if (!g) {
            answer_error(ex, 404, "upstream not found");
            return;
        }
        json_group(&j, g, now_ms);
    } else {
        answer_error(ex, 404, "unknown api path");
        return;
    }
    jraw(&j, "\n", 1);
    if (j.oom) {
        proxy_answer(ex, 500, SLICE_NULL, SLICE_NULL);
        return;
    }
    proxy_answer(ex, 200, SLICE_LIT("application/json"), slice_make(j.p, j.len));
}
