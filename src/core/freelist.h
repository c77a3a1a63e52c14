/* A per-thread stack of freed blocks of one size, reused without malloc.
 * `low` is the fewest blocks cached since the last freelist_trim_unused():
 * that many sat unused the whole interval and can go back to malloc. Used
 * for buffer segments, arena chunks and the sessions' per-request blocks. */
#ifndef PORTICO_CORE_FREELIST_H
#define PORTICO_CORE_FREELIST_H

#include <stdbool.h>
#include <stddef.h>

struct freelist {
    void *head;
    size_t count, low;
    size_t max;   /* beyond this many, a freed block goes back to malloc */
    size_t link;  /* offset of the next pointer inside a free block */
    size_t bytes; /* size of one block, for what the trims report */
};

#define FREELIST_INIT(max_, link_, bytes_)                                                         \
    {                                                                                              \
        .max = (max_), .link = (link_), .bytes = (bytes_)                                          \
    }

static inline void **freelist_next(const struct freelist *f, void *b)
{
    return (void **)((char *)b + f->link);
}

/* A cached block, or NULL when there is none. */
static inline void *freelist_pop(struct freelist *f)
{
    void *b = f->head;
    if (!b)
        return NULL;
    f->head = *freelist_next(f, b);
    if (--f->count < f->low)
        f->low = f->count;
    return b;
}

/* Keep `b` for reuse; false when the list is full (the caller frees it). */
static inline bool freelist_push(struct freelist *f, void *b)
{
    if (f->count >= f->max)
        return false;
    *freelist_next(f, b) = f->head;
    f->head = b;
    f->count++;
    return true;
}

/* Free all but `keep` cached blocks (at thread exit, in tests). */
void freelist_trim(struct freelist *f, size_t keep);

/* Free the blocks that sat unused since the last call, keeping at least
 * `keep`. Returns the bytes freed. */
size_t freelist_trim_unused(struct freelist *f, size_t keep);

#endif
