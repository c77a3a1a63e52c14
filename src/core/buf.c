#include "core/buf.h"

#include <stddef.h>

#include "core/freelist.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

/* Free segments kept per thread; beyond this many, they go back to malloc. */
#define BUF_CACHE_MAX 512

static __thread struct freelist segs = FREELIST_INIT(BUF_CACHE_MAX, offsetof(struct buf, next_free),
                                                     sizeof(struct buf) + BUF_SEG_SIZE);
static __thread size_t live_count;

struct buf *buf_new(size_t cap)
{
    struct buf *b = cap <= BUF_SEG_SIZE ? freelist_pop(&segs) : NULL; /* cap BUF_SEG_SIZE */
    if (!b) {
        size_t c = cap < BUF_SEG_SIZE ? BUF_SEG_SIZE : cap;
        b = malloc(sizeof(*b) + c);
        if (!b)
            return NULL;
        b->cap = (uint32_t)c;
    }
    b->refs = 1;
    b->next_free = NULL;
    live_count++;
    return b;
}

struct buf_ext {
    void (*release)(void *ctx);
    void *ctx;
};

struct buf *buf_wrap(void (*release)(void *ctx), void *ctx)
{
    struct buf *b = malloc(sizeof(*b) + sizeof(struct buf_ext));
    if (!b)
        return NULL;
    b->refs = 1;
    b->cap = 0;
    b->next_free = NULL;
    struct buf_ext ext = {release, ctx};
    memcpy(b->data, &ext, sizeof(ext));
    return b;
}

void buf_unref(struct buf *b)
{
    if (--b->refs > 0)
        return;
    if (b->cap == 0) {
        struct buf_ext ext;
        memcpy(&ext, b->data, sizeof(ext));
        free(b);
        ext.release(ext.ctx);
        return;
    }
    live_count--;
    if (b->cap != BUF_SEG_SIZE || !freelist_push(&segs, b))
        free(b);
}

void buf_trim_cache(void)
{
    freelist_trim(&segs, 0);
}

size_t buf_trim_unused(size_t keep)
{
    return freelist_trim_unused(&segs, keep);
}

size_t buf_live_count(void)
{
    return live_count;
}

void outq_init(struct outq *q)
{
    q->head = q->count = 0;
    q->bytes = 0;
}

void outq_clear(struct outq *q)
{
    while (q->count) {
        struct outq_item *it = &q->items[q->head];
        if (it->seg)
            buf_unref(it->seg);
        q->head = (q->head + 1) % OUTQ_MAX;
        q->count--;
    }
    q->head = 0;
    q->bytes = 0;
}

/* Queue `len` bytes as items of at most OUTQ_ITEM_MAX (memory from `p`, or
 * file `fd` from `off`), each holding a reference on `seg`. */
static int push_items(struct outq *q, struct buf *seg, const char *p, uint64_t off, int fd,
                      size_t len)
{
    if (len == 0)
        return 0;
    size_t need = (len + OUTQ_ITEM_MAX - 1) / OUTQ_ITEM_MAX;
    if (q->count + need > OUTQ_MAX)
        return -1;
    q->bytes += len;
    while (len) {
        uint32_t n = len > OUTQ_ITEM_MAX ? OUTQ_ITEM_MAX : (uint32_t)len;
        struct outq_item *it = &q->items[(q->head + q->count) % OUTQ_MAX];
        it->seg = seg ? buf_ref(seg) : NULL;
        if (fd >= 0) {
            it->off = off;
            off += n;
        } else {
            it->p = p;
            p += n;
        }
        it->len = n;
        it->fd = fd;
        q->count++;
        len -= n;
    }
    return 0;
}

int outq_push(struct outq *q, struct buf *seg, const char *p, size_t len)
{
    return push_items(q, seg, p, 0, -1, len);
}

int outq_push_file(struct outq *q, struct buf *token, int fd, uint64_t off, size_t len)
{
    return push_items(q, token, NULL, off, fd, len);
}

/* Drop `left` written bytes from the head of the queue. */
static void outq_consume(struct outq *q, size_t left)
{
    q->bytes -= left;
    while (left && q->count) {
        struct outq_item *it = &q->items[q->head];
        if (left < it->len) {
            if (it->fd >= 0)
                it->off += left;
            else
                it->p += left;
            it->len -= left;
            return;
        }
        left -= it->len;
        if (it->seg)
            buf_unref(it->seg);
        q->head = (q->head + 1) % OUTQ_MAX;
        q->count--;
    }
}

/* One body for both: `capped` is a constant in each caller, so the plain
 * outq_write (every response) carries none of the limit's arithmetic. */
static inline __attribute__((always_inline)) ssize_t write_q(struct outq *q, int fd, size_t max,
                                                             bool capped)
{
    size_t total = 0;
    while (q->count && (!capped || total < max)) {
        struct outq_item *first = &q->items[q->head];
        size_t left = capped ? max - total : 0;
        ssize_t w;
        size_t want = 0;
        if (first->fd >= 0) {
            off_t off = (off_t)first->off;
            want = capped && left < first->len ? left : first->len;
            w = sendfile(fd, first->fd, &off, want);
            if (w == 0) {
                errno = EIO; /* the file is shorter than promised */
                w = -1;
            }
        } else {
            struct iovec iov[OUTQ_MAX];
            int n = 0;
            bool file_next = false;
            for (unsigned i = 0; i < q->count && (!capped || want < left); i++) {
                struct outq_item *it = &q->items[(q->head + i) % OUTQ_MAX];
                if (it->fd >= 0) {
                    file_next = true; /* memory up to the next file item */
                    break;
                }
                size_t len = capped && left - want < it->len ? left - want : it->len;
                iov[n].iov_base = (void *)it->p;
                iov[n].iov_len = len;
                want += len;
                n++;
            }
            if (file_next) {
                /* a head before a file: MSG_MORE lets both share a packet */
                struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
                w = sendmsg(fd, &m, MSG_MORE | MSG_NOSIGNAL);
                if (w < 0 && errno == ENOTSOCK)
                    w = writev(fd, iov, n);
            } else {
                w = writev(fd, iov, n);
            }
        }
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return total ? (ssize_t)total : -1;
        }
        total += (size_t)w;
        outq_consume(q, (size_t)w);
        if ((size_t)w < want) {
            /* a short write means the socket is full */
            errno = EAGAIN;
            return (ssize_t)total;
        }
    }
    return (ssize_t)total;
}

ssize_t outq_write(struct outq *q, int fd)
{
    return write_q(q, fd, 0, false);
}

ssize_t outq_write_max(struct outq *q, int fd, size_t max)
{
    return write_q(q, fd, max, true);
}

ssize_t outq_write_with(struct outq *q, outq_writev_fn *wv, void *ctx)
{
    return outq_write_with_max(q, wv, ctx, SIZE_MAX);
}

ssize_t outq_write_with_max(struct outq *q, outq_writev_fn *wv, void *ctx, size_t max)
{
    size_t total = 0;
    while (q->count && total < max) {
        struct iovec iov[OUTQ_MAX];
        unsigned n = 0;
        size_t left = max - total, want = 0;
        for (unsigned i = 0; i < q->count && n < OUTQ_MAX && want < left; i++) {
            struct outq_item *it = &q->items[(q->head + i) % OUTQ_MAX];
            if (it->fd >= 0) {
                errno = EINVAL; /* file items are for plain sockets */
                return total ? (ssize_t)total : -1;
            }
            size_t len = it->len < left - want ? it->len : left - want;
            iov[n].iov_base = (void *)it->p;
            iov[n].iov_len = len;
            want += len;
            n++;
        }
        ssize_t w = wv(ctx, iov, (int)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (total)
                return (ssize_t)total;
            return -1;
        }
        total += (size_t)w;
        outq_consume(q, (size_t)w);
        if ((size_t)w < want) {
            /* a short write means the socket is full */
            errno = EAGAIN;
            return (ssize_t)total;
        }
    }
    return (ssize_t)total;
}

int outq_push_copy(struct outq *q, struct buf **scratch, size_t *used, const char *p, size_t len)
{
    if (!*scratch || *used + len > (*scratch)->cap) {
        if (*scratch)
            buf_unref(*scratch);
        *scratch = buf_new(len > BUF_SEG_SIZE ? len : BUF_SEG_SIZE);
        *used = 0;
        if (!*scratch)
            return -1;
    }
    char *dst = (*scratch)->data + *used;
    memcpy(dst, p, len);
    *used += len;
    return outq_push(q, *scratch, dst, len);
}
