/* Arenas: bump allocation for objects that all die together (an exchange, a
 * connection, a config snapshot). Nothing is freed individually. */
#ifndef PORTICO_CORE_ARENA_H
#define PORTICO_CORE_ARENA_H

#include <stddef.h>

#include "core/str.h"

struct arena_chunk;

struct arena {
    struct arena_chunk *head; /* current chunk, newest first */
    size_t chunk_size;        /* default size of a new chunk */
    size_t cap;               /* maximum bytes held; 0 = unlimited */
    size_t held;              /* bytes held in chunks */
};

/* Initialise an empty arena; no memory is taken until the first allocation.
 * `cap` bounds the total held (0 = no bound): allocations past it fail. */
void arena_init(struct arena *a, size_t chunk_size, size_t cap);

/* Free every chunk. The arena may be used again afterwards. */
void arena_deinit(struct arena *a);

/* Free this thread's cached chunks beyond `keep` (thread exit). */
void arena_trim_cache(size_t keep);
/* Free the cached chunks that no arena needed since the last call, keeping at
 * least `keep` (see buf_trim_unused). Returns the bytes freed. */
size_t arena_trim_unused(size_t keep);

/* Forget every allocation but keep the first chunk for reuse. */
void arena_reset(struct arena *a);

/* Allocate `n` bytes aligned for any type. Returns NULL on failure or cap. */
void *arena_alloc(struct arena *a, size_t n);

/* Same, zero-filled. */
void *arena_calloc(struct arena *a, size_t n);

/* Copy `s` into the arena with a terminating NUL. */
char *arena_strndup(struct arena *a, const char *s, size_t n);
char *arena_strdup(struct arena *a, const char *s);
struct slice arena_slice_dup(struct arena *a, struct slice s);

/* Append one element of `elem` bytes to the array *arr (n used, cap room),
 * doubling it in the arena when full. Returns the new element, or NULL. */
void *arena_push(struct arena *a, void **arr, size_t *n, size_t *cap, size_t elem);

/* printf into the arena. Returns NULL on failure. */
char *arena_printf(struct arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
