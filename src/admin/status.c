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
#include "proxy/stats.h"
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

/* src/admin/dashboard.html, embedded by the build (scripts/embed.py) */
extern const char admin_dashboard_html[];
extern const unsigned long admin_dashboard_html_len;

static int set_stub_status(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->stub_status)
        return cf_error(cx, n, "\"stub_status\" directive is duplicate");
    if (lc->pass || lc->api)
        return cf_error(cx, n, "\"stub_status\" cannot be used with \"proxy_pass\" or \"api\"");
    lc->stub_status = 1;
    return 0;
}

static const struct cf_directive admin_directives[] = {
    {"stub_status", CF_LOCATION, 0, 1, false, set_stub_status, CONF_LOC, 0, "", "-",
     "this location answers with nginx's basic status page (active connections, accepts, "
     "handled, requests, reading, writing, waiting), which monitoring agents read as they "
     "read nginx's"},
    {"api", CF_LOCATION, 0, 1, false, set_api, CONF_LOC, 0, "[write=off]", "-",
     "this location answers itself with the JSON state of the proxy: GET <location> "
     "(connections, requests, responses by class, bytes, upstreams, caches), "
     "<location>/upstreams, <location>/upstreams/NAME, <location>/caches, and "
     "<location>/metrics in the Prometheus text format; read-only (write=off)"},
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

static void json_traffic(struct jbuf *j, const struct stats_total *t)
{
    jf(j,
       "\"connections\":{\"active\":%llu,\"reading\":%llu,\"writing\":%llu,\"waiting\":%llu,"
       "\"accepted\":%llu,\"handled\":%llu},\"requests\":{\"total\":%llu,\"current\":%llu},",
       (unsigned long long)t->active, (unsigned long long)t->reading,
       (unsigned long long)t->writing, (unsigned long long)t->waiting,
       (unsigned long long)t->accepted, (unsigned long long)t->handled,
       (unsigned long long)t->requests, (unsigned long long)t->writing);
    jf(j,
       "\"responses\":{\"1xx\":%llu,\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu,"
       "\"other\":%llu},\"bytes\":{\"received\":%llu,\"sent\":%llu},",
       (unsigned long long)t->responses[0], (unsigned long long)t->responses[1],
       (unsigned long long)t->responses[2], (unsigned long long)t->responses[3],
       (unsigned long long)t->responses[4], (unsigned long long)t->responses[5],
       (unsigned long long)t->bytes_in, (unsigned long long)t->bytes_out);
}

/* ---- Prometheus text format ---- */

static void plabel(struct jbuf *j, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '"')
            jf(j, "\\%c", *p);
        else if (*p == '\n')
            jraw(j, "\\n", 2);
        else
            jraw(j, p, 1);
    }
}

static void phead(struct jbuf *j, const char *name, const char *type, const char *help)
{
    jf(j, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prometheus(struct jbuf *j, const struct snapshot *s, uint64_t now_ms)
{
    struct stats_total t;
    stats_total(&t);
    phead(j, "portico_info", "gauge", "Portico's version (the value is 1).");
    jf(j, "portico_info{version=\"%s\"} 1\n", PORTICO_VERSION);
    phead(j, "portico_config_generation", "gauge", "Configuration loads since start.");
    jf(j, "portico_config_generation %llu\n", (unsigned long long)s->generation);
    phead(j, "portico_connections_accepted_total", "counter", "Client connections accepted.");
    jf(j, "portico_connections_accepted_total %llu\n", (unsigned long long)t.accepted);
    phead(j, "portico_connections_handled_total", "counter",
          "Client connections served (accepted and within worker_connections).");
    jf(j, "portico_connections_handled_total %llu\n", (unsigned long long)t.handled);
    phead(j, "portico_connections", "gauge", "Client connections now, by state.");
    jf(j,
       "portico_connections{state=\"active\"} %llu\nportico_connections{state=\"reading\"} "
       "%llu\nportico_connections{state=\"writing\"} %llu\nportico_connections{state="
       "\"waiting\"} %llu\n",
       (unsigned long long)t.active, (unsigned long long)t.reading, (unsigned long long)t.writing,
       (unsigned long long)t.waiting);
    phead(j, "portico_http_requests_total", "counter", "Requests started.");
    jf(j, "portico_http_requests_total %llu\n", (unsigned long long)t.requests);
    phead(j, "portico_http_responses_total", "counter", "Responses by status class.");
    static const char *const cls[6] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
    for (int i = 0; i < 6; i++)
        jf(j, "portico_http_responses_total{code=\"%s\"} %llu\n", cls[i],
           (unsigned long long)t.responses[i]);
    phead(j, "portico_http_received_bytes_total", "counter", "Request bytes (heads and bodies).");
    jf(j, "portico_http_received_bytes_total %llu\n", (unsigned long long)t.bytes_in);
    phead(j, "portico_http_sent_bytes_total", "counter", "Response bytes sent to clients.");
    jf(j, "portico_http_sent_bytes_total %llu\n", (unsigned long long)t.bytes_out);

    static const struct {
        const char *name, *type, *help;
    } peer[] = {
        {"portico_upstream_peer_up", "gauge", "1 when the peer takes requests (state up)."},
        {"portico_upstream_peer_active", "gauge", "Requests in progress on the peer."},
        {"portico_upstream_peer_requests_total", "counter", "Requests sent to the peer."},
        {"portico_upstream_peer_fails", "gauge", "Failures counted toward max_fails now."},
        {"portico_upstream_peer_health_checks_total", "counter", "Active health checks run."},
        {"portico_upstream_peer_health_check_fails_total", "counter",
         "Active health checks failed."},
    };
    for (size_t m = 0; m < sizeof(peer) / sizeof(peer[0]); m++) {
        phead(j, peer[m].name, peer[m].type, peer[m].help);
        for (size_t gi = 0; gi < s->ngroups; gi++) {
            const struct ups_group *g = s->groups[gi];
            if (g->implicit)
                continue;
            for (size_t i = 0; i < g->nservers; i++) {
                const struct ups_server *sv = &g->servers[i];
                unsigned long long v = 0;
                switch (m) {
                case 0:
                    v = strcmp(server_state(sv, now_ms), "up") == 0;
                    break;
                case 1:
                    v = (unsigned long long)atomic_load(&sv->active);
                    break;
                case 2:
                    v = (unsigned long long)atomic_load(&sv->requests);
                    break;
                case 3:
                    v = (unsigned long long)atomic_load(&sv->fails);
                    break;
                case 4:
                    v = atomic_load(&sv->hc.checks);
                    break;
                default:
                    v = atomic_load(&sv->hc.fails);
                    break;
                }
                jf(j, "%s{upstream=\"", peer[m].name);
                plabel(j, g->name);
                jraw(j, "\",peer=\"", 8);
                plabel(j, sv->addr_text);
                jf(j, "\"} %llu\n", v);
            }
        }
    }
    static const struct {
        const char *name, *type, *help;
    } cm[] = {
        {"portico_cache_hits_total", "counter", "Cache hits."},
        {"portico_cache_misses_total", "counter", "Cache misses."},
        {"portico_cache_stores_total", "counter", "Responses stored."},
        {"portico_cache_evictions_total", "counter", "Entries evicted."},
        {"portico_cache_entries", "gauge", "Entries in the zone."},
        {"portico_cache_disk_bytes", "gauge", "Bytes on disk."},
        {"portico_cache_memory_bytes", "gauge", "Bytes in the memory tier."},
    };
    for (size_t m = 0; m < sizeof(cm) / sizeof(cm[0]); m++) {
        phead(j, cm[m].name, cm[m].type, cm[m].help);
        for (const struct cache_path_decl *d = s->http_lc->cache.paths; d; d = d->next) {
            if (!d->zone)
                continue;
            struct cache_stats st;
            cache_zone_stats(d->zone, &st);
            uint64_t v[] = {st.hits,    st.misses,     st.stores,   st.evictions,
                            st.entries, st.disk_bytes, st.mem_bytes};
            jf(j, "%s{zone=\"", cm[m].name);
            plabel(j, d->zc.name);
            jf(j, "\"} %llu\n", (unsigned long long)v[m]);
        }
    }
}

void admin_stub_status(struct exchange *ex)
{
    struct stats_total t;
    stats_total(&t);
    struct jbuf j = {.a = &ex->arena};
    jf(&j,
       "Active connections: %llu \nserver accepts handled requests\n %llu %llu %llu \nReading: "
       "%llu Writing: %llu Waiting: %llu \n",
       (unsigned long long)t.active, (unsigned long long)t.accepted, (unsigned long long)t.handled,
       (unsigned long long)t.requests, (unsigned long long)t.reading, (unsigned long long)t.writing,
       (unsigned long long)t.waiting);
    if (j.oom) {
        proxy_answer(ex, 500, SLICE_NULL, SLICE_NULL);
        return;
    }
    proxy_answer(ex, 200, SLICE_LIT("text/plain"), slice_make(j.p, j.len));
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
    if (slice_eq(rest, SLICE_LIT("dashboard"))) {
        proxy_answer(ex, 200, SLICE_LIT("text/html; charset=utf-8"),
                     slice_make(admin_dashboard_html, admin_dashboard_html_len));
        return;
    }
    if (slice_eq(rest, SLICE_LIT("metrics"))) {
        prometheus(&j, s, now_ms);
        if (j.oom) {
            proxy_answer(ex, 500, SLICE_NULL, SLICE_NULL);
            return;
        }
        proxy_answer(ex, 200, SLICE_LIT("text/plain; version=0.0.4"), slice_make(j.p, j.len));
        return;
    }
    if (rest.len == 0) {
        struct stats_total t;
        stats_total(&t);
        jraw(&j, "{\"portico\":", 11);
        jstr(&j, PORTICO_VERSION);
        jf(&j, ",\"generation\":%llu,", (unsigned long long)s->generation);
        json_traffic(&j, &t);
        jraw(&j, "\"upstreams\":", 12);
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
