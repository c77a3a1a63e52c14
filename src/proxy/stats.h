/* Traffic counters of each worker (connections, requests, responses by
 * class, bytes), written by the worker's own thread without locked
 * instructions and summed by readers in any thread (stub_status, the api,
 * the Prometheus metrics). */
#ifndef PORTICO_PROXY_STATS_H
#define PORTICO_PROXY_STATS_H

#include <stdatomic.h>
#include <stdint.h>

struct exchange;

struct worker_stats {
    _Atomic uint64_t accepted;     /* connections accepted */
    _Atomic uint64_t handled;      /* ... and given a session (not over worker_connections) */
    _Atomic uint64_t closed;       /* client connections closed */
    _Atomic uint64_t requests;     /* requests started */
    _Atomic uint64_t ended;        /* ... and finished (logged) */
    _Atomic uint64_t reading;      /* sessions with part of a request head (gauge, +/-) */
    _Atomic uint64_t responses[6]; /* by status class: 1xx..5xx, then others (444, 499) */
    _Atomic uint64_t bytes_in, bytes_out;
};

/* Owner-thread increments: a plain load and store, no lock prefix. */
#define STAT_ADD(field, n)                                                                         \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),    \
                          memory_order_relaxed)

/* The sum over every worker (any thread). */
struct stats_total {
    uint64_t accepted, handled, active, requests, reading, writing, waiting;
    uint64_t responses[6];
    uint64_t bytes_in, bytes_out;
};
void stats_total(struct stats_total *t);

/* The log phase of an exchange: its response counted. */
void stats_exchange_end(struct exchange *ex);

#endif
