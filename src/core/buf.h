/* Reference-counted byte segments from per-thread free lists. A segment
 * read from one socket can be queued on another without a copy: whoever
 * keeps a slice of it keeps a reference. Segments are used by one thread
 * at a time (a connection never changes threads), so counts are plain. */
#ifndef PORTICO_CORE_BUF_H
#define PORTICO_CORE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define BUF_SEG_SIZE 16384

struct buf {
    uint32_t refs;
    uint32_t cap; /* bytes of data[] */
    struct buf *next_free;
    char data[];
};

/* A segment of BUF_SEG_SIZE bytes (or `cap` if larger, not pooled). NULL on
 * allocation failure. The caller holds one reference. */
struct buf *buf_new(size_t cap);

static inline struct buf *buf_ref(struct buf *b)
{
    b->refs++;
    return b;
}

void buf_unref(struct buf *b);

/* A segment that owns no bytes of its own: a reference token for memory
 * kept alive elsewhere (a cached object). Pieces point into that memory and
 * hold this segment; when the last reference goes, release(ctx) runs (on
 * whichever thread drops it). cap is 0. NULL on allocation failure. */
struct buf *buf_wrap(void (*release)(void *ctx), void *ctx);

/* Free this thread's cached segments (at worker exit). */
void buf_trim_cache(void);

/* Free the cached segments that no buf_new needed since the last call (the
 * cache never ran lower than that), keeping at least `keep`: a burst's
 * segments go back to malloc once it is over. Returns the bytes freed. */
size_t buf_trim_unused(size_t keep);

/* Number of segments allocated and not freed, summed over this thread (for
 * the memory tests and the status page). */
size_t buf_live_count(void);

/* A byte queue of slices of segments (or of static memory), written out with
 * writev. Holds a reference on every segment it points into. */
struct outq_item {
    struct buf *seg; /* NULL for static or arena memory owned elsewhere */
    union {
        const char *p; /* memory item */
        uint64_t off;  /* file item: where the next byte is read */
    };
    uint32_t len; /* items are at most OUTQ_ITEM_MAX bytes: the struct stays 24 bytes */
    int32_t fd;   /* -1: memory; else a file whose bytes go out with sendfile(2) */
};

#define OUTQ_ITEM_MAX (1u << 30)

#define OUTQ_MAX 32

struct outq {
    struct outq_item items[OUTQ_MAX];
    unsigned head, count;
    size_t bytes; /* bytes queued */
};

void outq_init(struct outq *q);
/* Drop everything queued (references released). */
void outq_clear(struct outq *q);
/* Queue `len` bytes at `p`; `seg` (if not NULL) gets a reference. Returns 0
 * or -1 if the queue has no free slot (the caller backs off until it drains). */
int outq_push(struct outq *q, struct buf *seg, const char *p, size_t len);
/* Free slots left. */
static inline unsigned outq_room(const struct outq *q)
{
    return OUTQ_MAX - q->count;
}
/* Queue `len` bytes of file `fd` from `off`, sent with sendfile(2) by
 * outq_write (plain sockets only: outq_write_with fails with EINVAL on such
 * an item). `token` (referenced) keeps the fd open until written. */
int outq_push_file(struct outq *q, struct buf *token, int fd, uint64_t off, size_t len);

/* Copy `len` small bytes (framing text) into a scratch segment and queue
 * them; `scratch` and `used` track the segment being filled (a new one is taken
 * when it is full; the queue holds references to the old ones). */
int outq_push_copy(struct outq *q, struct buf **scratch, size_t *used, const char *p, size_t len);

/* writev as much as the socket takes. Returns bytes written (>= 0), or -1
 * with errno (EAGAIN when the socket is full). */
ssize_t outq_write(struct outq *q, int fd);
/* At most `max` bytes (a rate limit); stops without EAGAIN when it took them. */
ssize_t outq_write_max(struct outq *q, int fd, size_t max);

/* The same through another writer (TLS): `wv` behaves like writev(2),
 * returning bytes taken or -1 with errno. */
typedef ssize_t outq_writev_fn(void *ctx, const struct iovec *iov, int iovcnt);
ssize_t outq_write_with(struct outq *q, outq_writev_fn *wv, void *ctx);
ssize_t outq_write_with_max(struct outq *q, outq_writev_fn *wv, void *ctx, size_t max);

#endif
