/* Upstream groups: servers, the balancer interface, passive failure
 * accounting and the per-worker idle connection pool. Knows addresses and
 * sockets, not HTTP messages. */
#ifndef PORTICO_UPSTREAM_H
#define PORTICO_UPSTREAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "core/loop.h"
#include "core/str.h"
#include "net/dns.h"
#include "net/net.h"

/* Active health check state of one server (upstream/check.c). Written by the
 * checker thread only, read by every worker and the status API. */
struct ups_hc {
    _Atomic int down;           /* checks now failing it (mandatory: until its first pass) */
    _Atomic bool checking;      /* mandatory and not checked yet */
    _Atomic uint32_t checks;    /* checks made */
    _Atomic uint32_t fails;     /* checks failed */
    _Atomic uint32_t unhealthy; /* times it turned unhealthy */
    _Atomic int last_status;    /* HTTP status of the last check; 0: none (TCP, or no answer) */
    _Atomic bool last_ok;
    _Atomic uint64_t last_ms; /* wall clock of the last check, ms since the epoch; 0 never */
};

/* An address found by re-resolving a `resolve` server (upstream/resolve.c).
 * Immutable once published and kept until the group is released, so a
 * reader may keep the pointer (or addr_text) for the exchange's life. */
struct ups_addr {
    struct net_addr addr;
    char text[64];
    struct ups_addr *older; /* the ones it replaced, freed with the group */
};

struct ups_server {
    char *name;           /* as written: "127.0.0.1:8081" */
    struct net_addr addr; /* at load; a `resolve` server: see ups_server_addr() */
    char addr_text[64];   /* for $upstream_addr and logs */
    char sticky_id[17];   /* stable id for `sticky cookie`: hash of addr_text, hex */
    int weight;
    int max_fails; /* 0 = never marked failed */
    uint32_t fail_timeout_ms;
    int max_conns;          /* 0 = no limit */
    uint32_t slow_start_ms; /* 0 = full weight at once after recovery */
    bool backup;
    bool down;
    bool resolve;                        /* re-resolve the name in the background */
    _Atomic(struct ups_addr *) resolved; /* resolve: the newest address; NULL: addr */
    /* shared by every worker */
    _Atomic int fails;                /* failures in the current window */
    _Atomic uint64_t failed_until_ms; /* unavailable until this time (0 = available) */
    _Atomic uint64_t window_start_ms;
    _Atomic int active;             /* connections in use (all workers) */
    _Atomic uint64_t ramp_start_ms; /* slow start: when it became usable again */
    _Atomic int consecutive;        /* outlier detection: failures in a row */
    _Atomic int ejections;          /* times ejected (the ejection grows with it) */
    _Atomic uint64_t ejected_until_ms;
    _Atomic uint32_t ewma_header_x16;    /* least_time: EWMA of header time, ms * 16 */
    _Atomic uint32_t ewma_last_byte_x16; /* least_time: EWMA of whole response time */
    _Atomic uint64_t requests;           /* tries sent to it (all workers) */
    struct ups_hc hc;                    /* active health checks: down while hc.down > 0 */
};

/* The address to connect to now, and its text: safe from any thread while
 * the resolver publishes new ones. */
static inline const struct net_addr *ups_server_addr(const struct ups_server *s)
{
    struct ups_addr *a =
        atomic_load_explicit((_Atomic(struct ups_addr *) *)&s->resolved, memory_order_acquire);
    return a ? &a->addr : &s->addr;
}
static inline const char *ups_server_addr_text(const struct ups_server *s)
{
    struct ups_addr *a =
        atomic_load_explicit((_Atomic(struct ups_addr *) *)&s->resolved, memory_order_acquire);
    return a ? a->text : s->addr_text;
}

struct ups_group;

/* The servers a request has tried already: a bit per server index. */
#define UPS_MAX_SERVERS 1024
struct ups_tried {
    uint64_t w[UPS_MAX_SERVERS / 64];
};

static inline bool ups_tried_has(const struct ups_tried *t, size_t i)
{
    return t && (t->w[i / 64] >> (i % 64)) & 1;
}

static inline void ups_tried_set(struct ups_tried *t, size_t i)
{
    t->w[i / 64] |= 1ull << (i % 64);
}

static inline void ups_tried_clear(struct ups_tried *t, size_t i)
{
    t->w[i / 64] &= ~(1ull << (i % 64));
}

static inline bool ups_tried_any(const struct ups_tried *t)
{
    for (size_t i = 0; t && i < UPS_MAX_SERVERS / 64; i++)
        if (t->w[i])
            return true;
    return false;
}

/* What a pick may depend on besides the group's own state. */
struct ups_pick_ctx {
    const struct ups_tried *tried; /* not these (NULL: none) */
    uint64_t now_ms;
    const struct net_addr *client; /* ip_hash; NULL hashes as empty */
    struct slice key;              /* hash: the evaluated key */
};

/* One balancer: how a group picks its next server. Every algorithm has the
 * same shape so groups choose theirs from the config. `backup` selects the
 * tier. A pick returns a server that is not tried, not down, not failed or
 * ejected and below max_conns, or NULL. It must be safe to call from every
 * worker at once. */
struct ups_balancer {
    const char *name;
    struct ups_server *(*pick)(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup);
};

extern const struct ups_balancer ups_round_robin, ups_least_conn, ups_ip_hash, ups_hash,
    ups_hash_consistent, ups_random, ups_random_two, ups_least_time;

/* One point of the consistent-hash ring. */
struct ups_ring_point {
    uint32_t hash;
    uint32_t server;
};

enum ups_time_kind { UPS_TIME_HEADER, UPS_TIME_LAST_BYTE };

enum ups_samesite {
    UPS_SAMESITE_NONE_SET,
    UPS_SAMESITE_STRICT,
    UPS_SAMESITE_LAX,
    UPS_SAMESITE_NONE
};

struct ups_sticky {
    char *cookie; /* NULL: no sticky sessions */
    char *attrs;  /* "; Max-Age=...; Path=/..." appended to the value */
};

struct ups_group {
    char *name;
    struct ups_server *servers;
    size_t cap_servers;
    size_t nservers;
    const struct ups_balancer *balancer;
    /* keep-alive pool settings */
    int keepalive; /* idle connections kept per worker; 0 = none */
    uint32_t keepalive_timeout_ms;
    int keepalive_requests;
    const char *file;
    int line;
    bool implicit; /* made for a proxy_pass host:port */
    /* round-robin state (smooth weighted), shared: guarded by a spin flag */
    _Atomic int rr_lock;
    int *rr_current;
    size_t id; /* index among groups: per-worker pools use it */
    /* hash KEY [consistent]: the proxy compiles hash_key into hash_tmpl */
    char *hash_key;
    void *hash_tmpl;
    struct ups_ring_point *ring;
    size_t nring;
    enum ups_time_kind least_time;
    _Atomic uint32_t lc_start; /* least_conn/least_time: rotating start for ties */
    struct ups_sticky sticky;
    /* outlier_detection (consecutive = 0: off) */
    int od_consecutive;
    uint32_t od_interval_ms;
    uint32_t od_max_ejection_ms;
    int od_max_ejected_percent;
    _Atomic int od_lock;
    /* retry_budget (percent = 0: off) */
    int rb_percent;
    uint32_t rb_interval_ms;
    _Atomic uint64_t rb_window_start_ms;
    _Atomic uint32_t rb_requests[2], rb_retries[2]; /* [0] current window, [1] previous */
    struct ups_check *checks; /* active health checks (upstream/check.h), a list */
    /* queue N [timeout=T]: requests waiting per worker when every server is at
     * max_conns (queue_max = 0: no queue, 502 at once) */
    int queue_max;
    uint32_t queue_timeout_ms;
    /* resolver ADDRESS... [valid=T] [ipv6=]: for `resolve` servers (none here
     * or at http level: getaddrinfo); resolver_timeout per server */
    struct net_resolver resolver;
    uint32_t resolver_valid_ms;
};

/* Parse `resolver address ... [valid=time] [ipv6=on|off]` into r (also the
 * http-level directive's parser). */
int ups_parse_resolver(struct cf_ctx *cx, const struct cf_node *n, struct net_resolver *r);

/* A group without its own resolver takes the http level's (at load). */
void ups_group_inherit_resolver(struct ups_group *g, const struct net_resolver *http,
                                uint32_t http_timeout_ms);

/* The `upstream {}` directives and the `server` line parser. */
extern const struct cf_module ups_cf_module;

/* cx->confs[CONF_UPS] of an upstream block. */
enum { UPS_CONF_GROUP = 3 };

/* Parse and fill an `upstream name { ... }` block into g (allocated in
 * cx->arena). Returns 0 or -1 with cx->err. */
int ups_group_parse(struct cf_ctx *cx, const struct cf_node *n, struct ups_group *g);
/* A one-server group for `proxy_pass http://127.0.0.1:8080`. */
int ups_group_implicit(struct arena *a, const char *hostport, struct ups_group *g,
                       const char **errmsg);
/* Fill defaults after parsing. */
void ups_group_finalize(struct ups_group *g);

/* Pick the next server by the group's balancer, skipping `tried` ones and
 * failed ones (all failed: nginx resets and tries them anyway), then the
 * backup tier. */
struct ups_server *ups_select(struct ups_group *g, const struct ups_pick_ctx *cx);
/* ups_select with only tried and now (round-robin-like groups, tests). */
/* `tried64` marks the first 64 servers only (tests, micro-benchmarks). */
struct ups_server *ups_pick(struct ups_group *g, uint64_t tried64, uint64_t now_ms);
/* Would ups_select find a server not in `tried`? Changes no state. */
bool ups_has_candidate(const struct ups_group *g, const struct ups_tried *tried, uint64_t now_ms);
/* Index of s in its group. */
static inline size_t ups_server_index(const struct ups_group *g, const struct ups_server *s)
{
    return (size_t)(s - g->servers);
}
/* Is s usable now (not down, failed, ejected, unhealthy by an active check or
 * at max_conns)? */
bool ups_server_usable(const struct ups_server *s, uint64_t now_ms);
/* Weight now, scaled by UPS_WEIGHT_SCALE: ramps up during slow start. */
#define UPS_WEIGHT_SCALE 16
int ups_server_weight(const struct ups_server *s, uint64_t now_ms);
/* The server of a sticky cookie value if it is usable and not tried, else
 * NULL (the caller falls back to ups_select and re-issues the cookie). */
struct ups_server *ups_sticky_find(struct ups_group *g, struct slice id,
                                   const struct ups_tried *tried, uint64_t now_ms);

/* Passive health (nginx max_fails/fail_timeout). */
void ups_server_failed(struct ups_server *s, uint64_t now_ms);
void ups_server_ok(struct ups_server *s);
/* Outlier detection: one result of a try (failed: connect error, timeout,
 * invalid header or a 5xx). Ejects after od_consecutive failures in a row,
 * for od_interval * times ejected (capped), unless max_ejected_percent of the
 * group is already ejected. */
void ups_outlier_report(struct ups_group *g, struct ups_server *s, bool failed, uint64_t now_ms);
/* least_time: one measured time (ms) of a try on s. */
void ups_server_time(struct ups_server *s, enum ups_time_kind kind, uint64_t ms);
/* retry_budget: count a request (first try), and ask for a retry (counted
 * when granted). Without a budget every retry is granted. */
void ups_budget_request(struct ups_group *g, uint64_t now_ms);
bool ups_budget_retry(struct ups_group *g, uint64_t now_ms);

/* Build the consistent-hash ring (hash ... consistent); 0 or -1 (memory). */
int ups_ring_build(struct arena *a, struct ups_group *g);
/* The 32-bit hash the balancers use (stable across runs and builds). */
uint32_t ups_hash32(const void *p, size_t len);

/* ---- re-resolution of `resolve` servers (upstream/resolve.c) ---- */

/* One background thread for the process re-resolves the names of `resolve`
 * servers every resolver_valid_ms (the system resolver, or a DNS query to
 * g->resolver) and publishes changed addresses in s->resolved. Workers never
 * block on a lookup. reload returns once the thread no longer touches the
 * old groups. */
int ups_resolve_start(struct ups_group *const *groups, size_t ngroups);
void ups_resolve_reload(struct ups_group *const *groups, size_t ngroups);
void ups_resolve_stop(void);
/* Look `s` up once now (blocking) and publish the address if it changed;
 * 1 changed, 0 same, -1 failed. For the thread and tests. */
int ups_resolve_server(const struct ups_group *g, struct ups_server *s);
/* Publish `a` as s's address (the old one is kept until release). */
void ups_server_publish(struct ups_server *s, const struct net_addr *a);
/* Free what the resolver published for g (when its snapshot goes). */
void ups_group_release(struct ups_group *g);

/* ---- connections and the per-worker idle pool ---- */

/* A connection to one upstream server. While idle it belongs to the pool
 * (which watches it for a close by the server); while in use, to whoever
 * took it, which sets io.cb/io.data. Its `io` stays registered with the loop
 * all along, so reuse costs no epoll_ctl. Freed only through ups_conn_close
 * (deferred to the end of the loop iteration: events already fetched for it
 * may still be dispatched). */
struct ups_conn {
    struct io io;
    struct net_addr addr;
    const void *group_key; /* the group it was opened for */
    size_t group_id;
    int requests;                 /* requests made on it so far */
    int keep_cap;                 /* while idle: its group's `keepalive` */
    unsigned char nodelay;        /* net_nodelay_before_write, by its user */
    struct ups_conn *next, *prev; /* pool list */
    struct timer idle_timer;
    struct posted release;
    struct ups_pool *pool;
    struct ups_server *srv; /* while in use: counted in srv->active */
    /* A TLS session over io.fd (upstream TLS), owned by the connection and
     * reused with it: the pool only frees it, with tls_free, on close;
     * tls_key tells which client context made it. */
    void *tls;
    void (*tls_free)(void *tls);
    const void *tls_key;
    struct net_addr local; /* proxy_bind's address (family 0: none) */
};

struct ups_pool;

struct ups_pool *ups_pool_new(struct loop *l);
/* Close every idle connection and free the pool. */
void ups_pool_free(struct ups_pool *p);

/* Open a new connection to `s` (connect in progress). NULL with errno. A
 * connection in use (opened, or taken from the pool) counts in s->active
 * (least_conn, max_conns) until it is put back or closed. */
struct ups_conn *ups_conn_open(struct ups_pool *p, const struct ups_group *g, struct ups_server *s);
/* The same from a local address (proxy_bind; NULL: the kernel's choice) and
 * with NET_CONNECT_* options; the connection remembers `local` so a reuse
 * can tell (ups_conn_local_is). */
struct ups_conn *ups_conn_open_from(struct ups_pool *p, const struct ups_group *g,
                                    struct ups_server *s, const struct net_addr *local,
                                    unsigned opts);

/* A request that waits a moment for a connection to `s` to come back to the
 * pool holds a place in s->active meanwhile, so balancers and max_conns count
 * it; it lets go just before ups_pool_get or ups_conn_open (or when it ends). */
void ups_server_hold(struct ups_server *s);
void ups_server_unhold(struct ups_server *s);
/* Take an idle connection to `s` for group `g`, or NULL. */
struct ups_conn *ups_pool_get(struct ups_pool *p, const struct ups_group *g, struct ups_server *s);
/* Park a connection whose last response was read whole. Closes it instead if
 * the group keeps none or it served keepalive_requests. Over the group's
 * `keepalive`, its oldest idle ones are closed after the current batch of
 * events (a request later in the same batch may still take one). */
void ups_pool_put(struct ups_pool *p, const struct ups_group *g, struct ups_conn *c);
/* Close (and later free) a connection not in the pool. */
void ups_conn_close(struct ups_conn *c);
/* Close every idle connection (reload, shutdown). */
void ups_pool_clear(struct ups_pool *p);
size_t ups_pool_idle_count(const struct ups_pool *p);

/* ---- the per-worker queue of `queue N` ---- */

/* A request waiting for a connection slot of `group` in one worker's FIFO.
 * Lives in its owner's state; the owner fills `cb`/`data` and must call
 * ups_queue_cancel before the memory goes. */
struct ups_waiter;
typedef void ups_waiter_fn(struct ups_waiter *w, bool expired);

struct ups_waiter {
    struct ups_waiter *next, *prev; /* in the pool's FIFO while queued */
    const struct ups_group *group;
    uint64_t deadline_ms; /* 0: not waiting yet (the next wait is a new one) */
    struct timer timer;
    struct posted wake;
    struct ups_pool *pool;
    ups_waiter_fn *cb;
    void *data;
};

/* Would a server of g not in `tried` be usable but for max_conns? */
bool ups_group_saturated(const struct ups_group *g, const struct ups_tried *tried, uint64_t now_ms);
/* Wait for a slot of g: cb(w, false) runs (posted) when a connection of g on
 * this worker is released, or when a poll finds a slot freed by another
 * worker; cb(w, true) at the deadline. A new wait (deadline_ms == 0) goes
 * last and fails with -1 when this worker already queues queue_max requests
 * for g; a wait again after a wake keeps its place (first) and deadline.
 * The waiter is out of the queue when cb runs. */
int ups_queue_wait(struct ups_pool *p, const struct ups_group *g, struct ups_waiter *w);
/* Leave the queue (no-op when not queued). */
void ups_queue_cancel(struct ups_waiter *w);

/* Was `c` opened from `local` (NULL: from no particular address)? */
static inline bool ups_conn_local_is(const struct ups_conn *c, const struct net_addr *local)
{
    if (!local)
        return c->local.sa.ss_family == 0;
    return net_addr_equal(&c->local, local);
}

#endif
