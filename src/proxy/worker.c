#include "proxy/worker.h"
#include "proxy/ofcache.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/log.h"
#include "proxy/accesslog.h"
#include "proxy/exchange.h"
#include "proxy/pcache.h"
#include "proxy/session.h"
#include "router/router.h"
#include "tls/tls.h"
#include "http2/h2.h"

_Atomic(struct snapshot *) current_snapshot;

/* The main thread's orders, read by workers when woken. */
static _Atomic int stop_requested;
static _Atomic int reopen_requested;
static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;

#define ACCEPT_BATCH 64

/* Spare per-request memory (buffers, arena chunks, request blocks) that sat
 * unused in its cache for a whole TRIM_INTERVAL_MS goes back to malloc, and
 * to the system when that is at least TRIM_RELEASE_BYTES: a burst's memory
 * is returned within half a second of its end, not held by idle workers
 * (10,000 idle keep-alive connections after one GET each). */
#define TRIM_INTERVAL_MS   250
#define TRIM_RELEASE_BYTES (1024 * 1024)
#define TRIM_KEEP_SEGMENTS 64
#define TRIM_KEEP_BLOCKS   32

struct snapshot *worker_snapshot(struct worker *w)
{
    return w->snap;
}

/* Take a reference on the current snapshot (the main thread may drop its own
 * at any time after a swap, so read and ref under the lock). */
static struct snapshot *grab_current(void)
{
    pthread_mutex_lock(&snap_lock);
    struct snapshot *s = atomic_load(&current_snapshot);
    if (s)
        snapshot_ref(s);
    pthread_mutex_unlock(&snap_lock);
    return s;
}

static void accept_cb(struct io *io, uint32_t events)
{
    (void)events;
    struct listener *l = io->data;
    struct worker *w = l->w;
    /* multi_accept on: everything waiting now; off: a batch, then the
     * connections already open get their turn */
    int batch = w->snap->main.multi_accept ? INT_MAX : ACCEPT_BATCH;
    for (int i = 0; i < batch; i++) {
        struct net_addr peer;
        int fd = net_accept(io->fd, &peer);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                io->readable = false;
                return;
            }
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            LOG(LOG_ALERT, "accept() failed on %s: %s", "listener", strerror(errno));
            /* EMFILE and friends: leave it readable; we come back next round */
            return;
        }
        STAT_ADD(w->stats.accepted, 1);
        if ((size_t)w->snap->main.worker_connections <= w->nsessions) {
            LOG(LOG_WARN, "%d worker_connections are not enough", w->snap->main.worker_connections);
            close(fd);
            continue;
        }
        /* the local address is the listener's unless it is a wildcard one */
        struct net_addr local = l->addr;
        if (l->wildcard) {
            local.len = sizeof(local.in6);
            if (getsockname(fd, (struct sockaddr *)&local.in6, &local.len) < 0)
                local = l->addr;
        }
        STAT_ADD(w->stats.handled, 1);
        h1_session_start(w, fd, &peer, &local);
    }
    /* more may be waiting: finish the batch next loop round */
    loop_post(w->loop, &l->more);
}

static void accept_more(struct posted *p)
{
    struct listener *l = p->data;
    if (l->io.fd >= 0)
        accept_cb(&l->io, 0);
}

static int open_listener(struct worker *w, const struct listen_set *ls)
{
    if (w->nlisteners == WORKER_MAX_LISTENERS) {
        errno = ENOSPC;
        return -1;
    }
    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return -1;
    int fd = net_listen(&ls->addr, ls->backlog ? ls->backlog : 511, true);
    if (fd < 0) {
        int e = errno;
        free(l);
        errno = e;
        return -1;
    }
    /* HTTP, TLS and h2c clients all speak first: be woken once, when the
     * request is there, and accept and read it in the same turn */
    net_defer_accept(fd);
    l->io.fd = fd;
    l->io.cb = accept_cb;
    l->io.data = l;
    l->addr = ls->addr;
    l->wildcard = net_addr_is_any(&ls->addr);
    l->w = w;
    posted_init(&l->more, accept_more, l);
    if (loop_io_add(w->loop, &l->io) < 0) {
        int e = errno;
        close(fd);
        free(l);
        errno = e;
        return -1;
    }
    w->listeners[w->nlisteners++] = l;
    return 0;
}

static void listener_free(struct posted *p)
{
    free(p->data);
}

/* Freed after the current batch of events: one may be pending for it. */
static void close_listener(struct worker *w, size_t i)
{
    struct listener *l = w->listeners[i];
    loop_io_del(w->loop, &l->io);
    close(l->io.fd);
    l->io.fd = -1;
    l->io.cb = loop_io_noop;
    posted_cancel(w->loop, &l->more);
    posted_init(&l->more, listener_free, l);
    loop_post(w->loop, &l->more);
    w->listeners[i] = w->listeners[--w->nlisteners];
}

/* Make this worker's listening sockets match snapshot s. */
static void reconcile_listeners(struct worker *w, const struct snapshot *s)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        w->listeners[i]->keep = false;
    for (size_t j = 0; j < s->nlistens; j++) {
        bool have = false;
        for (size_t i = 0; i < w->nlisteners; i++)
            if (net_addr_equal(&w->listeners[i]->addr, &s->listens[j].addr)) {
                w->listeners[i]->keep = true;
                have = true;
            }
        if (!have) {
            if (open_listener(w, &s->listens[j]) < 0)
                log_write(LOG_EMERG, "worker %d: bind() to %s failed (%d: %s)", w->index,
                          s->listens[j].text, errno, strerror(errno));
            else
                w->listeners[w->nlisteners - 1]->keep = true;
        }
    }
    for (size_t i = 0; i < w->nlisteners;) {
        if (!w->listeners[i]->keep)
            close_listener(w, i);
        else
            i++;
    }
}

static void stop_check(struct worker *w)
{
    if (w->nsessions == 0 && pcache_background_count() == 0) {
        loop_stop(w->loop);
        return;
    }
    if (loop_now_ms(w->loop) >= w->stop_deadline_ms) {
        log_write(LOG_NOTICE, "worker %d: shutdown timeout, closing %zu connection(s)", w->index,
                  w->nsessions);
        while (w->sessions)
            h1_session_kill(w->sessions);
        h2_sessions_kill(w);
        pcache_background_kill();
        loop_stop(w->loop);
        return;
    }
    timer_set(w->loop, &w->stop_timer, 50);
}

static void stop_timer_cb(struct timer *t)
{
    stop_check(t->data);
}

static void stop_post_cb(struct posted *p)
{
    stop_check(p->data);
}

static void begin_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    while (w->nlisteners)
        close_listener(w, 0);
    ups_pool_clear(w->pool);
    w->stop_deadline_ms = loop_now_ms(w->loop) + w->snap->main.worker_shutdown_timeout_ms;
    for (struct h1_session *s = w->sessions, *next; s; s = next) {
        next = h1_session_next(s);
        h1_session_shutdown(s);
    }
    h2_sessions_shutdown(w);
    stop_check(w);
}

static void wake_cb(struct loop *l, void *data)
{
    (void)l;
    struct worker *w = data;
    struct snapshot *cur = atomic_load(&current_snapshot);
    if (cur && cur->generation != w->seen_generation && !w->stopping) {
        struct snapshot *s = grab_current();
        if (s) {
            snapshot_unref(w->snap);
            w->snap = s;
            w->seen_generation = s->generation;
            reconcile_listeners(w, s);
            /* idle upstream connections belong to the old groups */
            ups_pool_clear(w->pool);
            /* HTTP/2 clients get a GOAWAY and reconnect to the new settings */
            h2_sessions_reload(w);
        }
    }
    if (atomic_load(&reopen_requested))
        accesslog_flush_thread();
    if (atomic_load(&stop_requested))
        begin_stop(w);
}

static void flush_timer_cb(struct timer *t)
{
    struct worker *w = t->data;
    accesslog_flush_thread();
    timer_set(w->loop, t, 1000);
}

static void trim_timer_cb(struct timer *t)
{
    struct worker *w = t->data;
    size_t freed = buf_trim_unused(TRIM_KEEP_SEGMENTS) + arena_trim_unused(TRIM_KEEP_BLOCKS) +
                   h1_session_trim_unused(TRIM_KEEP_BLOCKS);
    if (freed >= TRIM_RELEASE_BYTES)
        malloc_trim(0);
    timer_set(w->loop, t, TRIM_INTERVAL_MS);
}

/* Workers listen, then wait for workers_go() before serving: the main
 * thread drops privileges (`user`) in between, so no request is ever served
 * as root. Connections meanwhile wait in the listen backlog. */
static pthread_mutex_t go_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go_cond = PTHREAD_COND_INITIALIZER;
static bool go;

void workers_go(void)
{
    pthread_mutex_lock(&go_lock);
    go = true;
    pthread_cond_broadcast(&go_cond);
    pthread_mutex_unlock(&go_lock);
}

static void wait_go(void)
{
    pthread_mutex_lock(&go_lock);
    while (!go && !atomic_load(&stop_requested))
        pthread_cond_wait(&go_cond, &go_lock);
    pthread_mutex_unlock(&go_lock);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    reconcile_listeners(w, w->snap);
    if (w->nlisteners < w->snap->nlistens) {
        atomic_store(&w->start_error, errno ? errno : EADDRINUSE);
        atomic_store(&w->started, true);
        return NULL;
    }
    timer_init(&w->stop_timer, stop_timer_cb, w);
    posted_init(&w->stop_post, stop_post_cb, w);
    timer_init(&w->flush_timer, flush_timer_cb, w);
    timer_set(w->loop, &w->flush_timer, 1000);
    timer_init(&w->trim_timer, trim_timer_cb, w);
    timer_set(w->loop, &w->trim_timer, TRIM_INTERVAL_MS);
    atomic_store(&w->started, true);
    wait_go();
    loop_run(w->loop);
    timer_cancel(&w->flush_timer);
    timer_cancel(&w->trim_timer);
    timer_cancel(&w->stop_timer);
    while (w->sessions)
        h1_session_kill(w->sessions);
    h2_sessions_kill(w);
    pcache_background_kill();
    ofc_thread_flush();
    while (w->nlisteners)
        close_listener(w, 0);
    ups_pool_clear(w->pool);
    loop_drain_posted(w->loop);
    accesslog_thread_deinit();
    router_thread_deinit();
    tls_thread_deinit();
    buf_trim_cache();
    arena_trim_cache(0);
    h1_session_trim_cache(0);
    return NULL;
}

/* For stats_total: the workers, from start to exit. */
static struct worker *all_workers;
static int nall_workers;

void stats_exchange_end(struct exchange *ex)
{
    if (ex->cache_background || !ex->worker)
        return;
    struct worker_stats *st = &ex->worker->stats;
    int s = ex->status;
    STAT_ADD(st->responses[s >= 100 && s < 600 ? s / 100 - 1 : 5], 1);
    STAT_ADD(st->bytes_in, ex->request_length);
    STAT_ADD(st->bytes_out, ex->bytes_sent);
    if (ex->stat_counted)
        STAT_ADD(st->ended, 1);
}

void stats_total(struct stats_total *t)
{
    memset(t, 0, sizeof(*t));
    uint64_t closed = 0, ended = 0;
    for (int i = 0; i < nall_workers; i++) {
        const struct worker_stats *st = &all_workers[i].stats;
#define SUM(x) atomic_load_explicit(&st->x, memory_order_relaxed)
        t->accepted += SUM(accepted);
        t->handled += SUM(handled);
        closed += SUM(closed);
        t->requests += SUM(requests);
        ended += SUM(ended);
        t->reading += SUM(reading);
        for (int k = 0; k < 6; k++)
            t->responses[k] += SUM(responses[k]);
        t->bytes_in += SUM(bytes_in);
        t->bytes_out += SUM(bytes_out);
#undef SUM
    }
    /* counters read one after the other: keep the differences sane */
    t->active = t->handled > closed ? t->handled - closed : 0;
    t->writing = t->requests > ended ? t->requests - ended : 0;
    if (t->reading > t->active)
        t->reading = t->active;
    if (t->writing > t->active)
        t->writing = t->active; /* HTTP/2 streams: more requests than connections */
    t->waiting = t->active - t->reading -
                 (t->writing < t->active - t->reading ? t->writing : t->active - t->reading);
}

int workers_start(struct worker **out, int n, struct snapshot *s)
{
    struct worker *ws = calloc((size_t)n, sizeof(*ws));
    if (!ws)
        return -1;
    atomic_store(&current_snapshot, s);
    for (int i = 0; i < n; i++) {
        struct worker *w = &ws[i];
        w->index = i;
        w->loop = loop_new();
        w->pool = w->loop ? ups_pool_new(w->loop) : NULL;
        if (!w->pool) {
            log_write(LOG_EMERG, "cannot create worker %d: %s", i, strerror(errno));
            return -1;
        }
        w->snap = snapshot_ref(s);
        w->seen_generation = s->generation;
        loop_set_wake(w->loop, wake_cb, w);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            log_write(LOG_EMERG, "cannot start worker %d", i);
            return -1;
        }
        /* wait until it listens (or failed to), so startup errors are known */
        while (!atomic_load(&w->started))
            usleep(1000);
        int e = atomic_load(&w->start_error);
        if (e) {
            log_write(LOG_EMERG, "worker %d could not listen: %s", i, strerror(e));
            *out = ws;
            return -1;
        }
    }
    *out = ws;
    all_workers = ws;
    nall_workers = n;
    return 0;
}

void workers_reload(struct worker *ws, int n)
{
    for (int i = 0; i < n; i++)
        loop_wake(ws[i].loop);
}

void workers_stop(struct worker *ws, int n)
{
    atomic_store(&stop_requested, 1);
    pthread_mutex_lock(&go_lock); /* a worker still waiting to start: let it see the stop */
    pthread_cond_broadcast(&go_cond);
    pthread_mutex_unlock(&go_lock);
    for (int i = 0; i < n; i++)
        if (ws[i].loop)
            loop_wake(ws[i].loop);
    for (int i = 0; i < n; i++) {
        if (ws[i].thread)
            pthread_join(ws[i].thread, NULL);
        ups_pool_free(ws[i].pool);
        snapshot_unref(ws[i].snap);
        loop_free(ws[i].loop);
    }
    all_workers = NULL; /* the workers have exited: nobody reads them now */
    nall_workers = 0;
    free(ws);
}

void workers_reopen(struct worker *ws, int n)
{
    atomic_store(&reopen_requested, 1);
    for (int i = 0; i < n; i++)
        loop_wake(ws[i].loop);
}

int workers_probe_listens(struct worker *ws, int n, struct snapshot *s, char *err, size_t errlen)
{
    (void)n;
    for (size_t j = 0; j < s->nlistens; j++) {
        bool have = false;
        const struct snapshot *cur = ws ? ws[0].snap : NULL;
        for (size_t k = 0; cur && k < cur->nlistens; k++)
            have |= net_addr_equal(&cur->listens[k].addr, &s->listens[j].addr);
        if (have)
            continue;
        /* without SO_REUSEPORT, so a port another process holds is refused
         * instead of silently shared */
        int fd = net_listen(&s->listens[j].addr, 1, false);
        if (fd < 0) {
            snprintf(err, errlen, "bind() to %s failed (%d: %s)", s->listens[j].text, errno,
                     strerror(errno));
            return -1;
        }
        close(fd);
    }
    return 0;
}

void worker_session_closed(struct worker *w, struct h1_session *s)
{
    (void)s;
    if (w->stopping && w->nsessions <= 1)
        loop_post(w->loop, &w->stop_post);
}

/* Swap the current snapshot; the caller drops its reference to the old. */
struct snapshot *workers_swap_snapshot(struct snapshot *s)
{
    pthread_mutex_lock(&snap_lock);
    struct snapshot *old = atomic_exchange(&current_snapshot, s);
    pthread_mutex_unlock(&snap_lock);
    return old;
}
