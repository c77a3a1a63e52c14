#include "core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

/* The wheel: WHEEL_SLOTS slots of WHEEL_TICK_MS each. A timer lands in the
 * slot of its expiry; timers further away than one turn wait in their slot
 * for later turns (their expiry is checked when the slot is swept). */
#define WHEEL_BITS    12
#define WHEEL_SLOTS   (1u << WHEEL_BITS)
#define WHEEL_TICK_MS 4
#define MAX_EVENTS    256

struct wheel_slot {
    struct timer head; /* sentinel */
};

struct loop {
    int epfd;
    int wakefd;
    struct io wake_io;
    void (*wake_cb)(struct loop *l, void *data);
    void *wake_data;
    bool stop;
    uint64_t now_ms;
    uint64_t skew_ms;    /* loop_advance(): how far this clock runs ahead */
    uint64_t swept_tick; /* ticks below this one have been swept */
    size_t ntimers;
    /* posted callbacks: `queue` for the next batch, `running` for the batch
     * being run (both circular with a sentinel, so cancel is O(1) in either) */
    struct posted queue, running;
    /* one bit per non-empty slot: finding the next timer is a few ctz */
    uint64_t used[WHEEL_SLOTS / 64];
    struct wheel_slot slots[WHEEL_SLOTS];
};

static __thread struct loop *current_loop;

struct loop *loop_current(void)
{
    return current_loop;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void loop_update_time(struct loop *l)
{
    l->now_ms = mono_ms() + l->skew_ms;
}

uint64_t loop_now_ms(const struct loop *l)
{
    return l->now_ms;
}

static void wake_read(struct io *io, uint32_t events)
{
    (void)events;
    struct loop *l = io->data;
    uint64_t v;
    while (read(io->fd, &v, sizeof(v)) == sizeof(v))
        ;
    io->readable = false;
    if (l->wake_cb)
        l->wake_cb(l, l->wake_data);
}

struct loop *loop_new(void)
{
    struct loop *l = calloc(1, sizeof(*l));
    if (!l)
        goto fail;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0)
        goto fail_mem;
    l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wakefd < 0)
        goto fail_ep;
    for (size_t i = 0; i < WHEEL_SLOTS; i++) {
        l->slots[i].head.next = &l->slots[i].head;
        l->slots[i].head.prev = &l->slots[i].head;
    }
    l->queue.next = l->queue.prev = &l->queue;
    l->running.next = l->running.prev = &l->running;
    loop_update_time(l);
    l->swept_tick = l->now_ms / WHEEL_TICK_MS;
    l->wake_io = (struct io){.fd = l->wakefd, .cb = wake_read, .data = l};
    if (loop_io_add(l, &l->wake_io) < 0)
        goto fail_wake;
    return l;
fail_wake:
    close(l->wakefd);
fail_ep:
    close(l->epfd);
fail_mem:
    free(l);
fail:
    return NULL;
}

void loop_free(struct loop *l)
{
    if (!l)
        return;
    close(l->wakefd);
    close(l->epfd);
    free(l);
}

int loop_io_add(struct loop *l, struct io *io)
{
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        .data.ptr = io,
    };
    io->readable = io->writable = io->hup = io->rdhup = false;
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev);
}

void loop_io_del(struct loop *l, struct io *io)
{
    if (io->fd >= 0)
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
}

void loop_io_noop(struct io *io, uint32_t events)
{
    (void)io;
    (void)events;
}

void loop_set_wake(struct loop *l, void (*cb)(struct loop *l, void *data), void *data)
{
    l->wake_cb = cb;
    l->wake_data = data;
}

void loop_wake(struct loop *l)
{
    uint64_t one = 1;
    ssize_t w = write(l->wakefd, &one, sizeof(one));
    (void)w;
}

void loop_stop(struct loop *l)
{
    l->stop = true;
}

/* ---- timers ---- */

void timer_init(struct timer *t, timer_cb *cb, void *data)
{
    t->next = t->prev = NULL;
    t->expire_ms = 0;
    t->cb = cb;
    t->data = data;
}

/* Unlink from a slot; when that empties a wheel slot (the neighbours are
 * the slot's sentinel), clear its bit. */
static void timer_unlink_l(struct loop *l, struct timer *t)
{
    t->prev->next = t->next;
    t->next->prev = t->prev;
    if (l && t->next == t->prev && t->next == &l->slots[t->slot].head)
        l->used[t->slot / 64] &= ~(1ull << (t->slot % 64));
    t->next = t->prev = NULL;
}

static void timer_unlink(struct timer *t)
{
    timer_unlink_l(NULL, t);
}

void timer_cancel(struct timer *t)
{
    if (t->prev)
        timer_unlink_l(current_loop, t);
}

void timer_set(struct loop *l, struct timer *t, uint64_t ms)
{
    if (t->prev)
        timer_unlink_l(l, t);
    t->expire_ms = l->now_ms + ms;
    uint64_t tick = (t->expire_ms + WHEEL_TICK_MS - 1) / WHEEL_TICK_MS;
    if (tick < l->swept_tick)
        tick = l->swept_tick;
    t->slot = (uint32_t)(tick & (WHEEL_SLOTS - 1));
    l->used[t->slot / 64] |= 1ull << (t->slot % 64);
    struct timer *head = &l->slots[t->slot].head;
    t->prev = head->prev;
    t->next = head;
    head->prev->next = t;
    head->prev = t;
}

/* Fire every timer due by now. */
static void timers_sweep(struct loop *l)
{
    uint64_t now_tick = l->now_ms / WHEEL_TICK_MS;
    uint64_t from = l->swept_tick;
    if (from > now_tick)
        return; /* this tick was swept already */
    if (now_tick - from >= WHEEL_SLOTS)
        from = now_tick - WHEEL_SLOTS + 1; /* a whole turn covers every slot */
    for (uint64_t tick = from; tick <= now_tick; tick++) {
        struct timer *head = &l->slots[tick & (WHEEL_SLOTS - 1)].head;
        /* Detach the due ones first: callbacks may re-arm into this slot. */
        struct timer due = {.next = &due, .prev = &due};
        for (struct timer *t = head->next, *next; t != head; t = next) {
            next = t->next;
            if (t->expire_ms <= l->now_ms) {
                timer_unlink(t);
                t->prev = due.prev;
                t->next = &due;
                due.prev->next = t;
                due.prev = t;
            }
        }
        if (head->next == head)
            l->used[(tick & (WHEEL_SLOTS - 1)) / 64] &= ~(1ull << (tick % 64));
        /* timers the callbacks set for "now" go to the next tick, not into
         * this slot, which would not be looked at again for a whole turn */
        l->swept_tick = tick + 1;
        while (due.next != &due) {
            struct timer *t = due.next;
            timer_unlink(t);
            t->cb(t);
        }
    }
    l->swept_tick = now_tick + 1;
}

void loop_advance(struct loop *l, uint64_t ms)
{
    l->skew_ms += ms;
    loop_update_time(l);
    timers_sweep(l);
}

/* How long epoll may sleep: until the next slot holding a timer is due (a
 * timer of a later turn costs one early wake-up per turn at most). */
static int next_timeout(struct loop *l)
{
    if (l->queue.next != &l->queue)
        return 0;
    uint64_t now_tick = l->now_ms / WHEEL_TICK_MS;
    uint32_t start = (uint32_t)((now_tick + 1) & (WHEEL_SLOTS - 1));
    for (uint32_t i = 0; i <= WHEEL_SLOTS / 64; i++) {
        uint32_t w = (start / 64 + i) % (WHEEL_SLOTS / 64);
        uint64_t bits = l->used[w];
        if (i == 0)
            bits &= ~0ull << (start % 64);
        else if (i == WHEEL_SLOTS / 64)
            bits &= (start % 64) ? ~(~0ull << (start % 64)) : 0;
        if (!bits)
            continue;
        uint32_t slot = w * 64 + (uint32_t)__builtin_ctzll(bits);
        uint64_t dist = (slot - start) & (WHEEL_SLOTS - 1);
        uint64_t at = (now_tick + 1 + dist) * WHEEL_TICK_MS;
        uint64_t wait = at > l->now_ms ? at - l->now_ms : 0;
        return wait > 60000 ? 60000 : (int)wait;
    }
    return 60000;
}

/* ---- posted ---- */

void posted_init(struct posted *p, posted_cb *cb, void *data)
{
    p->next = p->prev = NULL;
    p->queued = false;
    p->cb = cb;
    p->data = data;
}

void loop_post(struct loop *l, struct posted *p)
{
    if (p->queued)
        return;
    p->queued = true;
    p->prev = l->queue.prev;
    p->next = &l->queue;
    l->queue.prev->next = p;
    l->queue.prev = p;
}

void posted_cancel(struct loop *l, struct posted *p)
{
    (void)l;
    if (!p->queued)
        return;
    p->prev->next = p->next;
    p->next->prev = p->prev;
    p->next = p->prev = NULL;
    p->queued = false;
}

/* Run what is queued now; what these callbacks post runs next round. A
 * callback may cancel (or free, after cancelling) any other posted item. */
static void run_posted(struct loop *l)
{
    if (l->queue.next == &l->queue)
        return;
    /* move the queue to `running` */
    l->running.next = l->queue.next;
    l->running.prev = l->queue.prev;
    l->running.next->prev = &l->running;
    l->running.prev->next = &l->running;
    l->queue.next = l->queue.prev = &l->queue;
    while (l->running.next != &l->running) {
        struct posted *p = l->running.next;
        posted_cancel(l, p);
        p->cb(p);
    }
}

void loop_drain_posted(struct loop *l)
{
    for (int i = 0; i < 100 && l->queue.next != &l->queue; i++)
        run_posted(l);
}

void loop_run(struct loop *l)
{
    struct epoll_event evs[MAX_EVENTS];
    current_loop = l;
    while (!l->stop) {
        int timeout = next_timeout(l);
        int n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout);
        loop_update_time(l);
        if (n < 0) {
            if (errno != EINTR)
                log_write(LOG_ALERT, "epoll_wait() failed: %s", strerror(errno));
            n = 0;
        }
        for (int i = 0; i < n; i++) {
            struct io *io = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                io->readable = true;
            if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                io->writable = true;
            if (e & (EPOLLHUP | EPOLLERR))
                io->hup = true;
            if (e & EPOLLRDHUP)
                io->rdhup = true;
            io->cb(io, e);
        }
        run_posted(l);
        timers_sweep(l);
    }
    l->stop = false;
    current_loop = NULL;
}
