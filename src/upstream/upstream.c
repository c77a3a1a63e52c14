#include "upstream/upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"

/* ---- config ---- */

/* addr_text, and the sticky id: 64-bit FNV-1a of it in hex, so a cookie
 * stays valid across reloads and server reorderings */
static void server_names(struct ups_server *s)
{
    net_addr_format(&s->addr, s->addr_text, sizeof(s->addr_text));
    uint64_t h = 14695981039346656037ull;
    for (const char *p = s->addr_text; *p; p++) {
        h ^= (unsigned char)*p;
        h *= 1099511628211ull;
    }
    snprintf(s->sticky_id, sizeof(s->sticky_id), "%016llx", (unsigned long long)h);
}

static int set_server(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (g->nservers >= UPS_MAX_SERVERS)
        return cf_error(cx, n, "too many servers in upstream \"%s\" (at most %d)", g->name,
                        UPS_MAX_SERVERS);
    if (g->nservers == g->cap_servers) {
        /* grow in the config arena; nothing points into the array yet */
        size_t cap = g->cap_servers ? g->cap_servers * 2 : 8;
        struct ups_server *ns = arena_calloc(cx->arena, cap * sizeof(*ns));
        if (!ns)
            return cf_error(cx, n, "out of memory");
        if (g->nservers)
            memcpy(ns, g->servers, g->nservers * sizeof(*ns));
        g->servers = ns;
        g->cap_servers = cap;
    }
    struct ups_server *s = &g->servers[g->nservers];
    memset(s, 0, sizeof(*s));
    s->weight = 1;
    s->max_fails = 1;
    s->fail_timeout_ms = 10000;
    const char *msg = NULL;
    if (net_addr_parse(n->args[0], 80, true, &s->addr, &msg) < 0)
        return cf_error(cx, n, "invalid server address \"%s\": %s", n->args[0], msg);
    s->name = n->args[0];
    server_names(s);
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        int v;
        uint32_t ms;
        if (strncmp(a, "weight=", 7) == 0) {
            if (cf_parse_int(a + 7, &v) < 0 || v < 1 || v > 1000)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            s->weight = v;
        } else if (strncmp(a, "max_fails=", 10) == 0) {
            if (cf_parse_int(a + 10, &v) < 0)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            s->max_fails = v;
        } else if (strncmp(a, "fail_timeout=", 13) == 0) {
            if (cf_parse_msec(a + 13, &ms) < 0)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            s->fail_timeout_ms = ms;
        } else if (strncmp(a, "max_conns=", 10) == 0) {
            if (cf_parse_int(a + 10, &v) < 0)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            s->max_conns = v;
        } else if (strncmp(a, "slow_start=", 11) == 0) {
            if (cf_parse_msec(a + 11, &ms) < 0)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            s->slow_start_ms = ms;
        } else if (strcmp(a, "backup") == 0) {
            s->backup = true;
        } else if (strcmp(a, "down") == 0) {
            s->down = true;
        } else if (strcmp(a, "resolve") == 0) {
            s->resolve = true;
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    g->nservers++;
    return 0;
}

static int set_keepalive(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    int v;
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1)
        return cf_error(cx, n, "invalid value \"%s\" in \"keepalive\" directive", n->args[0]);
    g->keepalive = v;
    return 0;
}

static int set_method(struct cf_ctx *cx, const struct cf_node *n, struct ups_group *g,
                      const struct ups_balancer *b)
{
    if (g->balancer != &ups_round_robin)
        return cf_error(cx, n, "load balancing method redefined");
    g->balancer = b;
    return 0;
}

static int set_least_conn(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    return set_method(cx, n, conf, &ups_least_conn);
}

static int set_ip_hash(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    (void)d;
    return set_method(cx, n, conf, &ups_ip_hash);
}

static int set_hash(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    bool consistent = false;
    if (n->nargs == 2) {
        if (strcmp(n->args[1], "consistent") != 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
        consistent = true;
    }
    if (set_method(cx, n, g, consistent ? &ups_hash_consistent : &ups_hash) < 0)
        return -1;
    g->hash_key = n->args[0];
    return 0;
}

static int set_random(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    const struct ups_balancer *b = &ups_random;
    if (n->nargs >= 1) {
        if (strcmp(n->args[0], "two") != 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[0]);
        b = &ups_random_two;
    }
    if (n->nargs == 2 && strcmp(n->args[1], "least_conn") != 0)
        return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
    return set_method(cx, n, conf, b);
}

static int set_least_time(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (strcmp(n->args[0], "header") == 0)
        g->least_time = UPS_TIME_HEADER;
    else if (strcmp(n->args[0], "last_byte") == 0)
        g->least_time = UPS_TIME_LAST_BYTE;
    else
        return cf_error(cx, n, "invalid parameter \"%s\"", n->args[0]);
    return set_method(cx, n, g, &ups_least_time);
}

static int set_sticky(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (g->sticky.cookie)
        return cf_error(cx, n, "\"sticky\" directive is duplicate");
    if (strcmp(n->args[0], "cookie") != 0)
        return cf_error(cx, n, "invalid sticky method \"%s\" (only \"cookie\")", n->args[0]);
    if (n->nargs < 2 || !n->args[1][0] || strpbrk(n->args[1], "=;, \t\""))
        return cf_error(cx, n, "invalid sticky cookie name");
    char attrs[512];
    size_t o = 0;
    attrs[0] = '\0';
#define ADD(...)                                                                                   \
    o += (size_t)snprintf(attrs + o, o < sizeof(attrs) ? sizeof(attrs) - o : 0, __VA_ARGS__)
    for (size_t i = 2; i < n->nargs; i++) {
        const char *a = n->args[i];
        uint32_t ms;
        if (strncmp(a, "expires=", 8) == 0) {
            if (strcmp(a + 8, "max") == 0)
                ADD("; Max-Age=315360000");
            else if (cf_parse_msec(a + 8, &ms) < 0)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            else
                ADD("; Max-Age=%u", ms / 1000);
        } else if (strncmp(a, "domain=", 7) == 0 && a[7] && !strpbrk(a + 7, ";, \t")) {
            ADD("; Domain=%s", a + 7);
        } else if (strncmp(a, "path=", 5) == 0 && a[5] && !strpbrk(a + 5, "; \t")) {
            ADD("; Path=%s", a + 5);
        } else if (strcmp(a, "httponly") == 0) {
            ADD("; HttpOnly");
        } else if (strcmp(a, "secure") == 0) {
            ADD("; Secure");
        } else if (strcmp(a, "samesite=strict") == 0) {
            ADD("; SameSite=Strict");
        } else if (strcmp(a, "samesite=lax") == 0) {
            ADD("; SameSite=Lax");
        } else if (strcmp(a, "samesite=none") == 0) {
            ADD("; SameSite=None");
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
#undef ADD
    if (o >= sizeof(attrs))
        return cf_error(cx, n, "sticky cookie attributes are too long");
    if (!strstr(attrs, "; Path="))
        strcat(attrs, "; Path=/");
    g->sticky.cookie = n->args[1];
    g->sticky.attrs = arena_strdup(cx->arena, attrs);
    return g->sticky.attrs ? 0 : cf_error(cx, n, "out of memory");
}

static int set_outlier(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (g->od_consecutive)
        return cf_error(cx, n, "\"outlier_detection\" directive is duplicate");
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        int v;
        uint32_t ms;
        if (strncmp(a, "consecutive=", 12) == 0 && cf_parse_int(a + 12, &v) == 0 && v >= 1) {
            g->od_consecutive = v;
        } else if (strncmp(a, "interval=", 9) == 0 && cf_parse_msec(a + 9, &ms) == 0 && ms) {
            g->od_interval_ms = ms;
        } else if (strncmp(a, "max_ejection=", 13) == 0 && cf_parse_msec(a + 13, &ms) == 0) {
            g->od_max_ejection_ms = ms;
        } else if (strncmp(a, "max_ejected_percent=", 20) == 0 && cf_parse_int(a + 20, &v) == 0 &&
                   v <= 100) {
            g->od_max_ejected_percent = v;
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (!g->od_consecutive)
        return cf_error(cx, n, "\"outlier_detection\" needs consecutive=number");
    if (g->od_max_ejection_ms < g->od_interval_ms)
        g->od_max_ejection_ms = g->od_interval_ms;
    return 0;
}

static int set_queue(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    int v;
    if (g->queue_max)
        return cf_error(cx, n, "\"queue\" directive is duplicate");
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1)
        return cf_error(cx, n, "invalid value \"%s\" in \"queue\" directive", n->args[0]);
    g->queue_max = v;
    if (n->nargs == 2) {
        uint32_t ms;
        if (strncmp(n->args[1], "timeout=", 8) != 0 || cf_parse_msec(n->args[1] + 8, &ms) < 0 ||
            ms == 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
        g->queue_timeout_ms = ms;
    }
    return 0;
}

int ups_parse_resolver(struct cf_ctx *cx, const struct cf_node *n, struct net_resolver *r)
{
    if (r->n)
        return cf_error(cx, n, "\"resolver\" directive is duplicate");
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (!strncmp(a, "valid=", 6)) {
            if (cf_parse_msec(a + 6, &r->valid_ms) < 0 || r->valid_ms == 0)
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
        } else if (!strcmp(a, "ipv6=on") || !strcmp(a, "ipv6=off")) {
            r->ipv6 = a[6] == 'n';
            r->ipv6_set = true;
        } else if (!strncmp(a, "ipv4=", 5)) {
            if (strcmp(a, "ipv4=on") != 0)
                return cf_error(cx, n, "\"%s\" is not supported: A records are always asked", a);
        } else {
            const char *msg = NULL;
            if (r->n == DNS_MAX_SERVERS)
                return cf_error(cx, n, "too many resolver addresses (at most %d)", DNS_MAX_SERVERS);
            if (net_addr_parse(a, 53, false, &r->addr[r->n], &msg) < 0)
                return cf_error(cx, n, "invalid resolver address \"%s\": %s", a, msg);
            r->n++;
        }
    }
    if (!r->n)
        return cf_error(cx, n, "no resolver address in \"resolver\"");
    return 0;
}

void ups_group_inherit_resolver(struct ups_group *g, const struct net_resolver *http,
                                uint32_t http_timeout_ms)
{
    uint32_t timeout = g->resolver.timeout_ms;
    if (!g->resolver.n && http && http->n)
        g->resolver = *http;
    if (timeout)
        g->resolver.timeout_ms = timeout; /* the group's own resolver_timeout wins */
    else if (!g->resolver.timeout_ms)
        g->resolver.timeout_ms = http_timeout_ms;
    if (!g->resolver.ipv6_set)
        g->resolver.ipv6 = true; /* nginx's default */
    if (g->resolver.valid_ms)
        g->resolver_valid_ms = g->resolver.valid_ms;
}

static int set_resolver(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (ups_parse_resolver(cx, n, &g->resolver) < 0)
        return -1;
    if (g->resolver.valid_ms)
        g->resolver_valid_ms = g->resolver.valid_ms;
    return 0;
}

static int set_resolver_timeout(struct cf_ctx *cx, const struct cf_node *n,
                                const struct cf_directive *d, void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (cf_parse_msec(n->args[0], &g->resolver.timeout_ms) < 0 || !g->resolver.timeout_ms)
        return cf_error(cx, n, "invalid value \"%s\"", n->args[0]);
    return 0;
}

static int set_retry_budget(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    int v;
    const char *a = n->args[0];
    size_t len = strlen(a);
    char num[16];
    if (len && a[len - 1] == '%')
        len--;
    if (len == 0 || len >= sizeof(num))
        return cf_error(cx, n, "invalid value \"%s\" in \"retry_budget\" directive", a);
    memcpy(num, a, len);
    num[len] = '\0';
    if (cf_parse_int(num, &v) < 0 || v < 1 || v > 100)
        return cf_error(cx, n, "invalid value \"%s\" in \"retry_budget\" directive", a);
    g->rb_percent = v;
    if (n->nargs == 2) {
        uint32_t ms;
        if (strncmp(n->args[1], "interval=", 9) != 0 || cf_parse_msec(n->args[1] + 9, &ms) < 0 ||
            ms == 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
        g->rb_interval_ms = ms;
    }
    return 0;
}

static const struct cf_directive ups_directives[] = {
    {"server", CF_UPSTREAM, 1, CF_ARGS_ANY, false, set_server, UPS_CONF_GROUP, 0,
     "address [weight=number] [max_fails=number] [fail_timeout=time] [max_conns=number] "
     "[slow_start=time] [backup] [down] [resolve]",
     "-",
     "a server of the group; max_conns caps its connections in use (all workers), slow_start "
     "ramps its weight up linearly after it recovers from failed or ejected; a name is "
     "resolved at load, and again in the background every resolver valid time with "
     "resolve"},
    {"least_conn", CF_UPSTREAM, 0, 0, false, set_least_conn, UPS_CONF_GROUP, 0, "", "-",
     "balance to the server with the fewest active connections per weight"},
    {"ip_hash", CF_UPSTREAM, 0, 0, false, set_ip_hash, UPS_CONF_GROUP, 0, "", "-",
     "balance by client address (first three octets of IPv4, whole IPv6)"},
    {"hash", CF_UPSTREAM, 1, 2, false, set_hash, UPS_CONF_GROUP, 0, "key [consistent]", "-",
     "balance by a key with variables; consistent: ketama ring, 160 points per weight"},
    {"random", CF_UPSTREAM, 0, 2, false, set_random, UPS_CONF_GROUP, 0, "[two [least_conn]]", "-",
     "balance at random by weight; two: of two random servers, the less loaded"},
    {"least_time", CF_UPSTREAM, 1, 1, false, set_least_time, UPS_CONF_GROUP, 0,
     "header | last_byte", "-",
     "balance by moving average of response header (or whole response) time times active "
     "connections, per weight"},
    {"sticky", CF_UPSTREAM, 2, CF_ARGS_ANY, false, set_sticky, UPS_CONF_GROUP, 0,
     "cookie name [expires=time|max] [domain=domain] [path=path] [httponly] [secure] "
     "[samesite=strict|lax|none]",
     "-",
     "keep a client on one server with a cookie naming it; the proxy sets it when missing or "
     "when its server is unusable"},
    {"outlier_detection", CF_UPSTREAM, 1, 4, false, set_outlier, UPS_CONF_GROUP, 0,
     "consecutive=number [interval=time] [max_ejection=time] [max_ejected_percent=number]", "-",
     "eject a server after that many connect failures, timeouts or 5xx in a row, for interval "
     "(10s) times its ejection count, at most max_ejection (300s); never more than "
     "max_ejected_percent (50) of the group, but at least one server"},
    {"retry_budget", CF_UPSTREAM, 1, 2, false, set_retry_budget, UPS_CONF_GROUP, 0,
     "percent [interval=time]", "-",
     "retries allowed while retries stay under this percentage of requests over a sliding "
     "window (10s); at least one retry per window"},
    {"queue", CF_UPSTREAM, 1, 2, false, set_queue, UPS_CONF_GROUP, 0, "number [timeout=time]", "-",
     "when every server is at max_conns, up to number requests per worker wait in a FIFO for "
     "a connection to be released, at most timeout (60s); past either: 502"},
    {"resolver_timeout", CF_UPSTREAM, 1, 1, false, set_resolver_timeout, UPS_CONF_GROUP, 0, "time",
     "30s",
     "how long each resolver address is waited for before the next is asked (default: the "
     "http level's)"},
    {"resolver", CF_UPSTREAM, 1, CF_ARGS_ANY, false, set_resolver, UPS_CONF_GROUP, 0,
     "address ... [valid=time] [ipv6=on|off]", "-",
     "DNS servers, asked in turn (UDP; A records, AAAA when there is none and ipv6=on), for "
     "the group's resolve servers every valid (30s); without one here or at http level they "
     "are looked up with the system resolver, off the workers"},
    {"keepalive", CF_UPSTREAM, 1, 1, false, set_keepalive, UPS_CONF_GROUP, 0, "connections", "-",
     "idle keep-alive connections to the servers kept by each worker"},
    {"keepalive_timeout", CF_UPSTREAM, 1, 1, false, cf_set_msec, UPS_CONF_GROUP,
     offsetof(struct ups_group, keepalive_timeout_ms), "time", "60s",
     "how long an idle upstream connection is kept"},
    {"keepalive_requests", CF_UPSTREAM, 1, 1, false, cf_set_int, UPS_CONF_GROUP,
     offsetof(struct ups_group, keepalive_requests), "number", "1000",
     "requests served over one upstream connection before it is closed"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module ups_cf_module = {"upstream", ups_directives};

static void group_defaults(struct ups_group *g)
{
    g->keepalive_timeout_ms = CF_UNSET_MSEC;
    g->keepalive_requests = CF_UNSET_INT;
    g->balancer = &ups_round_robin;
    g->od_interval_ms = 10000;
    g->od_max_ejection_ms = 300000;
    g->od_max_ejected_percent = 50;
    g->rb_interval_ms = 10000;
    g->queue_timeout_ms = 60000;
    g->resolver_valid_ms = 30000;
}

int ups_group_parse(struct cf_ctx *cx, const struct cf_node *n, struct ups_group *g)
{
    g->name = n->args[0];
    g->file = n->file;
    g->line = n->line;
    g->servers = NULL; /* grown by each `server` line */
    g->cap_servers = 0;
    group_defaults(g);
    struct cf_ctx sub = *cx;
    sub.context = CF_UPSTREAM;
    sub.confs[UPS_CONF_GROUP] = g;
    if (cf_apply_block(&sub, n) < 0)
        return -1;
    if (g->nservers == 0)
        return cf_error(cx, n, "no servers are inside upstream \"%s\"", g->name);
    ups_group_finalize(g);
    g->rr_current = arena_calloc(cx->arena, sizeof(int) * g->nservers);
    if (!g->rr_current)
        return cf_error(cx, n, "out of memory");
    if (g->balancer == &ups_hash_consistent && ups_ring_build(cx->arena, g) < 0)
        return cf_error(cx, n, "out of memory");
    return 0;
}

int ups_group_implicit(struct arena *a, const char *hostport, struct ups_group *g,
                       const char **errmsg)
{
    memset(g, 0, sizeof(*g));
    group_defaults(g);
    g->implicit = true;
    g->name = arena_strdup(a, hostport);
    g->servers = arena_calloc(a, sizeof(*g->servers));
    g->rr_current = arena_calloc(a, sizeof(int));
    if (!g->name || !g->servers || !g->rr_current) {
        *errmsg = "out of memory";
        return -1;
    }
    struct ups_server *s = &g->servers[0];
    if (net_addr_parse(hostport, 80, true, &s->addr, errmsg) < 0)
        return -1;
    s->name = g->name;
    s->weight = 1;
    s->max_fails = 1;
    s->fail_timeout_ms = 10000;
    server_names(s);
    g->nservers = 1;
    ups_group_finalize(g);
    return 0;
}

void ups_group_finalize(struct ups_group *g)
{
    if (g->keepalive_timeout_ms == CF_UNSET_MSEC)
        g->keepalive_timeout_ms = 60000;
    if (g->keepalive_requests == CF_UNSET_INT)
        g->keepalive_requests = 1000;
}

/* ---- connections and pool ---- */

#define POOL_MAX_IDLE 1024

#define POOL_GROUP_SLOTS 256

struct ups_pool {
    struct loop *loop;
    struct ups_conn head; /* sentinel of the idle list, newest first */
    size_t idle;
    /* idle connections per group, by group id modulo the slots: a shared
     * slot only makes two groups share their keepalive budget */
    uint32_t group_idle[POOL_GROUP_SLOTS];
    struct ups_waiter waiters; /* sentinel of the queue (`queue N`), oldest first */
    size_t nwaiting;
    struct posted trim; /* closes what is over a group's keepalive, after the batch */
};

static void idle_unlink(struct ups_pool *p, struct ups_conn *c);

/* Bring every group back to its `keepalive`, closing its oldest idle
 * connections. Run after a batch of events rather than in ups_pool_put: in a
 * batch that holds both finished responses and new requests (the common case
 * under load, when 400 clients share a pool of 64) closing at once and then
 * connecting again for a request a few events later is pure waste. Measured
 * on bench scenario a400 (400 clients, keepalive 64): 330 -> 215-236 origin
 * connects per 1,000 requests (nginx, which closes at once: 240-450). */
static void pool_trim(struct posted *po)
{
    struct ups_pool *p = po->data;
    for (struct ups_conn *c = p->head.prev, *prev; c != &p->head; c = prev) {
        prev = c->prev;
        if (p->group_idle[c->group_id % POOL_GROUP_SLOTS] > (uint32_t)c->keep_cap) {
            idle_unlink(p, c);
            ups_conn_close(c);
        }
    }
}

struct ups_pool *ups_pool_new(struct loop *l)
{
    struct ups_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->loop = l;
    p->head.next = p->head.prev = &p->head;
    p->waiters.next = p->waiters.prev = &p->waiters;
    posted_init(&p->trim, pool_trim, p);
    return p;
}

static void queue_wake_first(struct ups_pool *p, const void *group);

static void conn_release(struct posted *po)
{
    free(po->data);
}

static void conn_unbind(struct ups_conn *c)
{
    if (c->srv) {
        atomic_fetch_sub_explicit(&c->srv->active, 1, memory_order_relaxed);
        c->srv = NULL;
        if (c->pool->nwaiting)
            queue_wake_first(c->pool, c->group_key);
    }
}

static void conn_bind(struct ups_conn *c, struct ups_server *s)
{
    c->srv = s;
    atomic_fetch_add_explicit(&s->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
}

void ups_server_hold(struct ups_server *s)
{
    atomic_fetch_add_explicit(&s->active, 1, memory_order_relaxed);
}

void ups_server_unhold(struct ups_server *s)
{
    atomic_fetch_sub_explicit(&s->active, 1, memory_order_relaxed);
}

void ups_conn_close(struct ups_conn *c)
{
    conn_unbind(c);
    /* an event for it may already be fetched in this loop turn: make it a
     * no-op (its owner's state may be gone by then) */
    c->io.cb = loop_io_noop;
    c->io.data = c;
    if (c->tls) {
        c->tls_free(c->tls);
        c->tls = NULL;
    }
    if (c->io.fd >= 0) {
        /* closing the only descriptor removes it from epoll: no CTL_DEL */
        close(c->io.fd);
        c->io.fd = -1;
    }
    timer_cancel(&c->idle_timer);
    posted_init(&c->release, conn_release, c);
    loop_post(c->pool->loop, &c->release);
}

static void idle_unlink(struct ups_pool *p, struct ups_conn *c)
{
    p->group_idle[c->group_id % POOL_GROUP_SLOTS]--;
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = NULL;
    timer_cancel(&c->idle_timer);
    p->idle--;
}

static void idle_event(struct io *io, uint32_t events)
{
    struct ups_conn *c = io->data;
    /* writable-only edges (a late connect completion) say nothing bad */
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;
    /* An idle connection has nothing to say: data or EOF both end it. */
    idle_unlink(c->pool, c);
    ups_conn_close(c);
}

static void idle_expire(struct timer *t)
{
    struct ups_conn *c = t->data;
    idle_unlink(c->pool, c);
    ups_conn_close(c);
}

struct ups_conn *ups_conn_open(struct ups_pool *p, const struct ups_group *g, struct ups_server *s)
{
    return ups_conn_open_from(p, g, s, NULL, 0);
}

struct ups_conn *ups_conn_open_from(struct ups_pool *p, const struct ups_group *g,
                                    struct ups_server *s, const struct net_addr *local,
                                    unsigned opts)
{
    struct ups_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    const struct net_addr *sa = ups_server_addr(s);
    int fd = net_connect_from(sa, local, opts);
    if (fd < 0) {
        int e = errno;
        free(c);
        errno = e;
        return NULL;
    }
    c->io.fd = fd;
    c->addr = *sa;
    if (local)
        c->local = *local;
    c->group_key = g;
    c->pool = p;
    timer_init(&c->idle_timer, idle_expire, c);
    if (loop_io_add(p->loop, &c->io) < 0) {
        int e = errno;
        close(fd);
        free(c);
        errno = e;
        return NULL;
    }
    conn_bind(c, s);
    return c;
}

/* An idle connection must have nothing to read: a stale readiness flag is
 * checked with a peek (the last response may have ended without EAGAIN). */
static bool conn_alive(struct ups_conn *c)
{
    if (c->io.hup || c->io.rdhup)
        return false;
    if (!c->io.readable)
        return true;
    char b;
    ssize_t n = recv(c->io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->io.readable = false;
        return true;
    }
    return false;
}

struct ups_conn *ups_pool_get(struct ups_pool *p, const struct ups_group *g, struct ups_server *s)
{
    for (struct ups_conn *c = p->head.next; c != &p->head; c = c->next) {
        if (c->group_key == g && net_addr_equal(&c->addr, ups_server_addr(s))) {
            idle_unlink(p, c);
            if (!conn_alive(c)) {
                /* the server closed it (or sent junk) while idle */
                ups_conn_close(c);
                return ups_pool_get(p, g, s);
            }
            conn_bind(c, s);
            return c;
        }
    }
    return NULL;
}

void ups_pool_put(struct ups_pool *p, const struct ups_group *g, struct ups_conn *c)
{
    conn_unbind(c);
    if (g->keepalive <= 0 || c->requests >= g->keepalive_requests || c->io.hup) {
        ups_conn_close(c);
        return;
    }
    if (p->group_idle[g->id % POOL_GROUP_SLOTS] >= (uint32_t)g->keepalive && !p->trim.queued)
        loop_post(p->loop, &p->trim);
    if (p->idle >= POOL_MAX_IDLE) {
        struct ups_conn *o = p->head.prev;
        idle_unlink(p, o);
        ups_conn_close(o);
    }
    c->io.cb = idle_event;
    c->io.data = c;
    c->group_id = g->id;
    c->keep_cap = g->keepalive;
    p->group_idle[g->id % POOL_GROUP_SLOTS]++;
    c->next = p->head.next;
    c->prev = &p->head;
    p->head.next->prev = c;
    p->head.next = c;
    p->idle++;
    timer_set(p->loop, &c->idle_timer, g->keepalive_timeout_ms);
}

void ups_pool_clear(struct ups_pool *p)
{
    while (p->head.next != &p->head) {
        struct ups_conn *c = p->head.next;
        idle_unlink(p, c);
        ups_conn_close(c);
    }
}

size_t ups_pool_idle_count(const struct ups_pool *p)
{
    return p->idle;
}

void ups_pool_free(struct ups_pool *p)
{
    if (!p)
        return;
    ups_pool_clear(p);
    if (p->trim.queued)
        posted_cancel(p->loop, &p->trim);
    free(p);
}

/* ---- the queue ---- */

/* How often the first waiter of a group looks for a slot freed on another
 * worker (a release wakes only the waiters of its own worker). */
#define QUEUE_POLL_MS 20

static void waiter_unlink(struct ups_waiter *w)
{
    w->prev->next = w->next;
    w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->pool->nwaiting--;
}

static void waiter_run(struct posted *po)
{
    struct ups_waiter *w = po->data;
    w->cb(w, false);
}

static void queue_wake(struct ups_waiter *w)
{
    waiter_unlink(w);
    timer_cancel(&w->timer);
    loop_post(w->pool->loop, &w->wake);
}

static void queue_wake_first(struct ups_pool *p, const void *group)
{
    for (struct ups_waiter *w = p->waiters.next; w != &p->waiters; w = w->next)
        if (w->group == group) {
            queue_wake(w);
            return;
        }
}

static bool first_of_group(const struct ups_waiter *w)
{
    for (const struct ups_waiter *i = w->pool->waiters.next; i != w; i = i->next)
        if (i->group == w->group)
            return false;
    return true;
}

static void arm(struct ups_waiter *w, uint64_t now_ms)
{
    uint64_t left = w->deadline_ms > now_ms ? w->deadline_ms - now_ms : 0;
    timer_set(w->pool->loop, &w->timer, left < QUEUE_POLL_MS ? left : QUEUE_POLL_MS);
}

static void waiter_tick(struct timer *t)
{
    struct ups_waiter *w = t->data;
    uint64_t now = loop_now_ms(w->pool->loop);
    if (now >= w->deadline_ms) {
        waiter_unlink(w);
        w->cb(w, true);
        return;
    }
    if (first_of_group(w) &&
        (ups_has_candidate(w->group, 0, now) || !ups_group_saturated(w->group, 0, now))) {
        queue_wake(w);
        return;
    }
    arm(w, now);
}

bool ups_group_saturated(const struct ups_group *g, const struct ups_tried *tried, uint64_t now_ms)
{
    (void)now_ms;
    for (size_t i = 0; i < g->nservers; i++) {
        const struct ups_server *s = &g->servers[i];
        if (ups_tried_has(tried, i) || s->down || !s->max_conns ||
            atomic_load_explicit(&s->hc.down, memory_order_relaxed))
            continue;
        if (atomic_load_explicit(&s->active, memory_order_relaxed) >= s->max_conns)
            return true;
    }
    return false;
}

int ups_queue_wait(struct ups_pool *p, const struct ups_group *g, struct ups_waiter *w)
{
    uint64_t now = loop_now_ms(p->loop);
    w->pool = p;
    w->group = g;
    timer_init(&w->timer, waiter_tick, w);
    posted_init(&w->wake, waiter_run, w);
    if (!w->deadline_ms) {
        size_t n = 0;
        for (struct ups_waiter *i = p->waiters.next; i != &p->waiters; i = i->next)
            n += i->group == g;
        if (n >= (size_t)g->queue_max)
            return -1;
        w->deadline_ms = now + g->queue_timeout_ms;
        w->prev = p->waiters.prev;
        w->next = &p->waiters;
    } else {
        /* woken but beaten to the slot: back to the front, same deadline */
        w->prev = &p->waiters;
        w->next = p->waiters.next;
    }
    w->prev->next = w;
    w->next->prev = w;
    p->nwaiting++;
    arm(w, now);
    return 0;
}

void ups_queue_cancel(struct ups_waiter *w)
{
    if (!w->pool)
        return;
    if (w->next)
        waiter_unlink(w);
    timer_cancel(&w->timer);
    posted_cancel(w->pool->loop, &w->wake);
}
