#include "upstream/upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"

/* ---- config ---- */

static int set_server(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    struct ups_group *g = conf;
    if (g->nservers >= UPS_MAX_SERVERS)
        return cf_error(cx, n, "too many servers in upstream \"%s\" (at most %d)", g->name,
                        UPS_MAX_SERVERS);
    struct ups_server *s = &g->servers[g->nservers];
    memset(s, 0, sizeof(*s));
    s->weight = 1;
    s->max_fails = 1;
    s->fail_timeout_ms = 10000;
    const char *msg = NULL;
    if (net_addr_parse(n->args[0], 80, true, &s->addr, &msg) < 0)
        return cf_error(cx, n, "invalid server address \"%s\": %s", n->args[0], msg);
    s->name = n->args[0];
    net_addr_format(&s->addr, s->addr_text, sizeof(s->addr_text));
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
        } else if (strcmp(a, "backup") == 0) {
            s->backup = true;
        } else if (strcmp(a, "down") == 0) {
            s->down = true;
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

static const struct cf_directive ups_directives[] = {
    { "server", CF_UPSTREAM, 1, CF_ARGS_ANY, false, set_server, UPS_CONF_GROUP, 0,
      "address [weight=number] [max_fails=number] [fail_timeout=time] [backup] [down]", "-",
      "a server of the group" },
    { "keepalive", CF_UPSTREAM, 1, 1, false, set_keepalive, UPS_CONF_GROUP, 0, "connections",
      "-", "idle keep-alive connections to the servers kept by each worker" },
    { "keepalive_timeout", CF_UPSTREAM, 1, 1, false, cf_set_msec, UPS_CONF_GROUP,
      offsetof(struct ups_group, keepalive_timeout_ms), "time", "60s",
      "how long an idle upstream connection is kept" },
    { "keepalive_requests", CF_UPSTREAM, 1, 1, false, cf_set_int, UPS_CONF_GROUP,
      offsetof(struct ups_group, keepalive_requests), "number", "1000",
      "requests served over one upstream connection before it is closed" },
    { NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL },
};

const struct cf_module ups_cf_module = { "upstream", ups_directives };

static struct ups_server *rr_pick(struct ups_group *g, uint64_t tried, uint64_t now_ms);
static const struct ups_balancer rr_balancer = { "round_robin", rr_pick };

static void group_defaults(struct ups_group *g)
{
    g->keepalive_timeout_ms = CF_UNSET_MSEC;
    g->keepalive_requests = CF_UNSET_INT;
    g->balancer = &rr_balancer;
}

int ups_group_parse(struct cf_ctx *cx, const struct cf_node *n, struct ups_group *g)
{
    g->name = n->args[0];
    g->file = n->file;
    g->line = n->line;
    g->servers = arena_calloc(cx->arena, sizeof(*g->servers) * UPS_MAX_SERVERS);
    if (!g->servers)
        return cf_error(cx, n, "out of memory");
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
    return g->rr_current ? 0 : cf_error(cx, n, "out of memory");
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
    net_addr_format(&s->addr, s->addr_text, sizeof(s->addr_text));
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

/* ---- balancing ---- */

static bool server_usable(const struct ups_server *s, uint64_t now_ms)
{
    if (s->down)
        return false;
    uint64_t until = atomic_load_explicit(&s->failed_until_ms, memory_order_relaxed);
    return until == 0 || now_ms >= until;
}

/* Smooth weighted round-robin (as nginx): every pick adds each candidate's
 * weight to its current value, takes the largest, and subtracts the total
 * from it. Weights 5,1,1 give a a b a c a a, not a a a a a b c. */
static struct ups_server *rr_pick_tier(struct ups_group *g, uint64_t tried, uint64_t now_ms,
                                       bool backup, bool ignore_fails)
{
    struct ups_server *best = NULL;
    int total = 0;
    size_t best_i = 0;
    while (atomic_exchange_explicit(&g->rr_lock, 1, memory_order_acquire))
        ;
    for (size_t i = 0; i < g->nservers; i++) {
        struct ups_server *s = &g->servers[i];
        if (s->backup != backup || (tried & (1ull << i)) || s->down)
            continue;
        if (!ignore_fails && !server_usable(s, now_ms))
            continue;
        g->rr_current[i] += s->weight;
        total += s->weight;
        if (!best || g->rr_current[i] > g->rr_current[best_i]) {
            best = s;
            best_i = i;
        }
    }
    if (best)
        g->rr_current[best_i] -= total;
    atomic_store_explicit(&g->rr_lock, 0, memory_order_release);
    return best;
}

static struct ups_server *rr_pick(struct ups_group *g, uint64_t tried, uint64_t now_ms)
{
    struct ups_server *s = rr_pick_tier(g, tried, now_ms, false, false);
    if (!s)
        s = rr_pick_tier(g, tried, now_ms, true, false);
    return s;
}

struct ups_server *ups_pick(struct ups_group *g, uint64_t tried, uint64_t now_ms)
{
    struct ups_server *s = g->balancer->pick(g, tried, now_ms);
    if (s || tried)
        return s;
    /* Every server is marked failed: like nginx, try the primary ones anyway
     * rather than fail every request until fail_timeout ends. */
    return rr_pick_tier(g, tried, now_ms, false, true);
}

void ups_server_failed(struct ups_server *s, uint64_t now_ms)
{
    if (s->max_fails == 0)
        return;
    uint64_t start = atomic_load_explicit(&s->window_start_ms, memory_order_relaxed);
    if (now_ms - start > s->fail_timeout_ms) {
        atomic_store_explicit(&s->window_start_ms, now_ms, memory_order_relaxed);
        atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
    }
    int fails = atomic_fetch_add_explicit(&s->fails, 1, memory_order_relaxed) + 1;
    if (fails >= s->max_fails) {
        atomic_store_explicit(&s->failed_until_ms, now_ms + s->fail_timeout_ms,
                              memory_order_relaxed);
        LOG(LOG_WARN, "upstream server %s temporarily disabled for %ums after %d failure(s)",
            s->addr_text, s->fail_timeout_ms, fails);
    }
}

void ups_server_ok(struct ups_server *s)
{
    if (atomic_load_explicit(&s->fails, memory_order_relaxed) != 0)
        atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
    if (atomic_load_explicit(&s->failed_until_ms, memory_order_relaxed) != 0)
        atomic_store_explicit(&s->failed_until_ms, 0, memory_order_relaxed);
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
};

struct ups_pool *ups_pool_new(struct loop *l)
{
    struct ups_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->loop = l;
    p->head.next = p->head.prev = &p->head;
    return p;
}

static void conn_release(struct posted *po)
{
    free(po->data);
}

static void closed_event(struct io *io, uint32_t events)
{
    (void)io;
    (void)events;
}

void ups_conn_close(struct ups_conn *c)
{
    /* an event for it may already be fetched in this loop turn: make it a
     * no-op (its owner's state may be gone by then) */
    c->io.cb = closed_event;
    c->io.data = c;
    if (c->io.fd >= 0) {
        loop_io_del(c->pool->loop, &c->io);
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

struct ups_conn *ups_conn_open(struct ups_pool *p, const struct ups_group *g,
                               const struct ups_server *s)
{
    struct ups_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    int fd = net_connect(&s->addr);
    if (fd < 0) {
        int e = errno;
        free(c);
        errno = e;
        return NULL;
    }
    c->io.fd = fd;
    c->addr = s->addr;
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

struct ups_conn *ups_pool_get(struct ups_pool *p, const struct ups_group *g,
                              const struct ups_server *s)
{
    for (struct ups_conn *c = p->head.next; c != &p->head; c = c->next) {
        if (c->group_key == g && net_addr_equal(&c->addr, &s->addr)) {
            idle_unlink(p, c);
            if (!conn_alive(c)) {
                /* the server closed it (or sent junk) while idle */
                ups_conn_close(c);
                return ups_pool_get(p, g, s);
            }
            return c;
        }
    }
    return NULL;
}

void ups_pool_put(struct ups_pool *p, const struct ups_group *g, struct ups_conn *c)
{
    if (g->keepalive <= 0 || c->requests >= g->keepalive_requests || c->io.hup) {
        ups_conn_close(c);
        return;
    }
    if (p->group_idle[g->id % POOL_GROUP_SLOTS] >= (uint32_t)g->keepalive) {
        /* over this group's share: drop the group's oldest idle one */
        for (struct ups_conn *i = p->head.prev; i != &p->head; i = i->prev)
            if (i->group_key == g) {
                idle_unlink(p, i);
                ups_conn_close(i);
                break;
            }
    }
    if (p->idle >= POOL_MAX_IDLE) {
        struct ups_conn *o = p->head.prev;
        idle_unlink(p, o);
        ups_conn_close(o);
    }
    c->io.cb = idle_event;
    c->io.data = c;
    c->group_id = g->id;
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
    free(p);
}
