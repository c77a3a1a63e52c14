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
#include "net/net.h"

struct ups_server {
    char *name;              /* as written: "127.0.0.1:8081" */
    struct net_addr addr;
    char addr_text[64];      /* for $upstream_addr and logs */
    int weight;
    int max_fails;           /* 0 = never marked failed */
    uint32_t fail_timeout_ms;
    bool backup;
    bool down;
    /* shared by every worker */
    _Atomic int fails;               /* failures in the current window */
    _Atomic uint64_t failed_until_ms;/* unavailable until this time (0 = available) */
    _Atomic uint64_t window_start_ms;
};

struct ups_group;

/* One balancer: how a group picks its next server. Every algorithm has the
 * same shape so groups choose theirs from the config. */
struct ups_balancer {
    const char *name;
    /* Pick a server not in `tried` (a bit per server index), or NULL. */
    struct ups_server *(*pick)(struct ups_group *g, uint64_t tried, uint64_t now_ms);
};

struct ups_group {
    char *name;
    struct ups_server *servers;
    size_t nservers;
    const struct ups_balancer *balancer;
    /* keep-alive pool settings */
    int keepalive;               /* idle connections kept per worker; 0 = none */
    uint32_t keepalive_timeout_ms;
    int keepalive_requests;
    const char *file;
    int line;
    bool implicit;               /* made for a proxy_pass host:port */
    /* round-robin state (smooth weighted), shared: guarded by a spin flag */
    _Atomic int rr_lock;
    int *rr_current;
    size_t id;                   /* index among groups: per-worker pools use it */
};

#define UPS_MAX_SERVERS 64

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
 * failed ones (all failed: nginx resets and tries them anyway). */
struct ups_server *ups_pick(struct ups_group *g, uint64_t tried, uint64_t now_ms);
/* Index of s in its group. */
static inline size_t ups_server_index(const struct ups_group *g, const struct ups_server *s)
{
    return (size_t)(s - g->servers);
}

/* Passive health (nginx max_fails/fail_timeout). */
void ups_server_failed(struct ups_server *s, uint64_t now_ms);
void ups_server_ok(struct ups_server *s);

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
    const void *group_key;       /* the group it was opened for */
    size_t group_id;
    int requests;                /* requests made on it so far */
    struct ups_conn *next, *prev;/* pool list */
    struct timer idle_timer;
    struct posted release;
    struct ups_pool *pool;
};

struct ups_pool;

struct ups_pool *ups_pool_new(struct loop *l);
/* Close every idle connection and free the pool. */
void ups_pool_free(struct ups_pool *p);

/* Open a new connection to `s` (connect in progress). NULL with errno. */
struct ups_conn *ups_conn_open(struct ups_pool *p, const struct ups_group *g,
                               const struct ups_server *s);
/* Take an idle connection to `s` for group `g`, or NULL. */
struct ups_conn *ups_pool_get(struct ups_pool *p, const struct ups_group *g,
                              const struct ups_server *s);
/* Park a connection whose last response was read whole. Closes it instead if
 * the group keeps none, it served keepalive_requests, or the pool is full
 * (then the oldest idle one goes). */
void ups_pool_put(struct ups_pool *p, const struct ups_group *g, struct ups_conn *c);
/* Close (and later free) a connection not in the pool. */
void ups_conn_close(struct ups_conn *c);
/* Close every idle connection (reload, shutdown). */
void ups_pool_clear(struct ups_pool *p);
size_t ups_pool_idle_count(const struct ups_pool *p);

#endif
