#include "core/arena.h"

#include <stddef.h>

#include "core/freelist.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

struct arena_chunk {
    struct arena_chunk *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(16) char data[];
};

#define ARENA_ALIGN 16

void arena_init(struct arena *a, size_t chunk_size, size_t cap)
{
    a->head = NULL;
    a->chunk_size = chunk_size ? chunk_size : 4096;
    a->cap = cap;
    a->held = 0;
}

/* Chunks of the common size (4 KiB, every exchange's first) are kept per
 * thread for the next arena: an exchange then costs no malloc. */
#define CHUNK_CACHE_SIZE 4096
#define CHUNK_CACHE_MAX  256
static __thread struct freelist chunks =
    FREELIST_INIT(CHUNK_CACHE_MAX, offsetof(struct arena_chunk, next),
                  sizeof(struct arena_chunk) + CHUNK_CACHE_SIZE);

static void chunk_free(struct arena_chunk *c)
{
    if (c->size != CHUNK_CACHE_SIZE || !freelist_push(&chunks, c))
        free(c);
}

void arena_trim_cache(size_t keep)
{
    freelist_trim(&chunks, keep);
}

size_t arena_trim_unused(size_t keep)
{
    return freelist_trim_unused(&chunks, keep);
}

void arena_deinit(struct arena *a)
{
    struct arena_chunk *c = a->head, *next;
    for (; c; c = next) {
        next = c->next;
        chunk_free(c);
    }
    a->head = NULL;
    a->held = 0;
}

void arena_reset(struct arena *a)
{
    struct arena_chunk *c = a->head;
    if (!c)
        return;
    /* keep the oldest chunk: it has the default size */
    while (c->next) {
        struct arena_chunk *next = c->next;
        a->held -= c->size;
        chunk_free(c);
        c = next;
    }
    c->used = 0;
    a->head = c;
}

void *arena_alloc(struct arena *a, size_t n)
{
    struct arena_chunk *c = a->head;
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need < n)
        return NULL;
    if (c && c->size - c->used >= need) {
        void *p = c->data + c->used;
        c->used += need;
        return p;
    }
    size_t size = need > a->chunk_size ? need : a->chunk_size;
    if (a->cap && a->held + size > a->cap)
        return NULL;
    c = size == CHUNK_CACHE_SIZE ? freelist_pop(&chunks) : NULL;
    if (!c) {
        c = malloc(sizeof(*c) + size);
        if (!c)
            return NULL;
    }
    c->size = size;
    c->used = need;
    a->held += size;
    if (a->head && need > a->chunk_size) {
        /* a large one-off: slot it behind the current chunk so the space
         * left in the current one stays usable */
        c->next = a->head->next;
        a->head->next = c;
    } else {
        c->next = a->head;
        a->head = c;
    }
    return c->data;
}

void *arena_calloc(struct arena *a, size_t n)
{
    void *p = arena_alloc(a, n);
    if (p)
        memset(p, 0, n);
    return p;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_strdup(struct arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

struct slice arena_slice_dup(struct arena *a, struct slice s)
{
    char *p = arena_strndup(a, s.p, s.len);
    return p ? slice_make(p, s.len) : SLICE_NULL;
}

char *arena_printf(struct arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = arena_alloc(a, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void *arena_push(struct arena *a, void **arr, size_t *n, size_t *cap, size_t elem)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        void *na = arena_alloc(a, nc * elem);
        if (!na)
            return NULL;
        if (*n)
            memcpy(na, *arr, *n * elem);
        *arr = na;
        *cap = nc;
    }
    return (char *)*arr + (*n)++ * elem;
}
