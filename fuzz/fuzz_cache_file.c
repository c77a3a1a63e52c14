/* libFuzzer target: a cache file's header as the loader reads it after a
 * restart (cache_obj_read). The disk is not trusted: a truncated, corrupted
 * or foreign file must be refused, and an accepted one must be consistent
 * (its fields inside its head, its freshness usable by the rules). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cache/rules.h"
#include "cache/store.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("cache-file", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    uint64_t fsize = 0;
    struct cache_obj *o = cache_obj_read(fd, &fsize);
    close(fd);
    if (!o)
        return 0;
    CHECK(fsize == size);
    CHECK(o->key_len > 0 && o->file_hdr_len + o->body_len == size);
    for (size_t i = 0; i < o->nfields; i++) {
        const struct http_field *f = &o->fields[i];
        CHECK(f->name.p >= o->head && f->name.p + f->name.len <= o->head + o->head_len);
        CHECK(f->value.len == 0 ||
              (f->value.p >= o->head && f->value.p + f->value.len <= o->head + o->head_len));
    }
    struct cc none;
    cc_parse(NULL, 0, &none);
    (void)cache_usable(&o->fresh, &none, false, o->fresh.response_time_ms + 1000);
    (void)cache_field(o->fields, o->nfields, "etag", NULL);
    cache_obj_unref(o);
    return 0;
}
