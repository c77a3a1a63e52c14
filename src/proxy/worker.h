/* Worker threads: each has its own loop, listening sockets (SO_REUSEPORT),
 * upstream pool and client sessions. The main thread starts them, and
 * tells them about reloads and stops through loop_wake(). */
#ifndef PORTICO_PROXY_WORKER_H
#define PORTICO_PROXY_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/loop.h"
#include "net/net.h"
#include "proxy/conf.h"
#include "proxy/stats.h"
#include "upstream/upstream.h"

struct h1_session;

struct listener {
    struct io io;
    struct net_addr addr;
    struct worker *w;
    struct posted more; /* continue a long accept batch next round */
    bool keep;          /* still wanted after a reload */
    bool wildcard;      /* bound to 0.0.0.0 or [::]: ask each socket its address */
};

#define WORKER_MAX_LISTENERS 64

struct worker {
    int index;
    pthread_t thread;
    struct loop *loop;
    struct ups_pool *pool;
    struct listener *listeners[WORKER_MAX_LISTENERS];
    size_t nlisteners;
    struct snapshot *snap; /* this worker's reference to the current snapshot */
    uint64_t seen_generation;
    struct h1_session *sessions; /* every open client connection */
    size_t nsessions;
    size_t nactive; /* sessions with an exchange in flight */
    uint64_t next_conn_number;
    uint64_t next_exchange_id;
    bool stopping;
    uint64_t stop_deadline_ms;
    struct timer stop_timer;
    struct posted stop_post;
    struct timer flush_timer;
    struct timer trim_timer; /* spare memory back to malloc (worker.c) */
    _Atomic bool started;
    _Atomic int start_error; /* errno of a failed start */
    struct worker_stats stats;
};

/* The snapshot every new request uses; swapped by the main thread. */
extern _Atomic(struct snapshot *) current_snapshot;

/* Start `n` workers on snapshot `s`. Returns 0 or -1 (logged). */
int workers_start(struct worker **out, int n, struct snapshot *s);
/* Let the started workers serve (after the privileges are dropped). */
void workers_go(void);
/* A new snapshot is current: workers adopt it and reconcile listeners. */
void workers_reload(struct worker *ws, int n);
/* Graceful stop: stop accepting, finish in-flight exchanges up to the
 * shutdown timeout, then return when every worker has exited. */
void workers_stop(struct worker *ws, int n);
/* SIGUSR1: reopen log files. */
void workers_reopen(struct worker *ws, int n);

/* Bind-test every listen address of `s` that no worker holds yet, so a
 * reload that cannot listen fails before anything changes. */
int workers_probe_listens(struct worker *ws, int n, struct snapshot *s, char *err, size_t errlen);

/* Make `s` the current snapshot; returns the previous one (the caller
 * drops its reference). Then workers_reload() tells the workers. */
struct snapshot *workers_swap_snapshot(struct snapshot *s);

/* Session bookkeeping, used by the session code. */
void worker_session_closed(struct worker *w, struct h1_session *s);
/* The worker's snapshot (refreshed when the generation changed). */
struct snapshot *worker_snapshot(struct worker *w);

#endif
