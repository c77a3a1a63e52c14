/* One event loop per worker thread: epoll (edge-triggered), a timing wheel
 * for timeouts, and posted callbacks that run after the current batch of
 * I/O. Nothing here is shared between threads except loop_wake(). */
#ifndef PORTICO_CORE_LOOP_H
#define PORTICO_CORE_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct loop;
struct io;

typedef void io_cb(struct io *io, uint32_t events);

/* A file descriptor watched by a loop. Registered once, edge-triggered for
 * both directions: the owner keeps `readable`/`writable` and clears them
 * when a call returns EAGAIN. */
struct io {
    int fd;
    bool readable;
    bool writable;
    bool hup;   /* peer closed or error reported */
    bool rdhup; /* the peer shut its writing side: EOF follows the data */
    io_cb *cb;
    void *data;
};

/* Timers: set and cancelled far more often than they fire. */
struct timer;
typedef void timer_cb(struct timer *t);

struct timer {
    struct timer *next, *prev; /* in a wheel slot; prev == NULL when unarmed */
    uint64_t expire_ms;
    uint32_t slot; /* wheel slot it is linked in */
    timer_cb *cb;
    void *data;
};

/* A deferred call: runs once after the current I/O batch. */
struct posted;
typedef void posted_cb(struct posted *p);

struct posted {
    struct posted *next, *prev; /* in the loop's queue while queued */
    bool queued;
    posted_cb *cb;
    void *data;
};

struct loop *loop_new(void);
void loop_free(struct loop *l);

/* Run until loop_stop() is called from a callback on this loop. */
void loop_run(struct loop *l);
void loop_stop(struct loop *l);

/* Milliseconds of CLOCK_MONOTONIC, refreshed once per loop iteration. */
uint64_t loop_now_ms(const struct loop *l);
/* Refresh the cached clock (rarely needed inside callbacks). */
void loop_update_time(struct loop *l);

/* Watch io->fd (which must be non-blocking). Returns 0 or -1 (errno). */
int loop_io_add(struct loop *l, struct io *io);
/* Stop watching (before close). */
void loop_io_del(struct loop *l, struct io *io);

/* A callback that does nothing: give it to an io whose owner is closed while
 * an event for it may still be pending in the current batch. */
io_cb loop_io_noop;

/* Tests and fuzzing: move this loop's clock `ms` ahead (for good) and fire
 * the timers now due, without waiting. */
void loop_advance(struct loop *l, uint64_t ms);

void timer_init(struct timer *t, timer_cb *cb, void *data);
/* (Re)arm `t` to fire after `ms` milliseconds. */
void timer_set(struct loop *l, struct timer *t, uint64_t ms);
void timer_cancel(struct timer *t);
static inline bool timer_armed(const struct timer *t)
{
    return t->prev != 0;
}

void posted_init(struct posted *p, posted_cb *cb, void *data);
/* Run what is posted until nothing is (after loop_run returned, so deferred
 * frees still happen). */
void loop_drain_posted(struct loop *l);
void loop_post(struct loop *l, struct posted *p);
void posted_cancel(struct loop *l, struct posted *p);

/* Thread-safe: make loop_run() call `cb` on the loop's thread soon. Only one
 * wake callback per loop (set with loop_set_wake). */
void loop_set_wake(struct loop *l, void (*cb)(struct loop *l, void *data), void *data);
void loop_wake(struct loop *l);

/* The loop of the calling thread (set by loop_run), or NULL. */
struct loop *loop_current(void);

#endif
