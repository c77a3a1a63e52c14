/* Cache storage: zones (proxy_cache_path), their key index, the memory tier
 * and the disk tier. A zone belongs to the process, is shared by every
 * worker thread and outlives configuration reloads (the same name and path
 * keep the running zone). Stored responses are immutable objects with a
 * reference count: a reader keeps serving what it found even if the entry
 * is replaced, purged or evicted meanwhile.
 *
 * On disk each response is one file, PATH/<levels>/<16 hex digits of the key
 * hash>, written to PATH/tmp.* and renamed into place when complete (a
 * crash never leaves a half object under a real name). The file starts with
 * a header (key, times, head fields) so a restart rebuilds the index by
 * reading headers in a background thread while the zone already serves.
 *
 * Everything here is HTTP-agnostic except that heads are field lists. */
#ifndef PORTICO_CACHE_STORE_H
#define PORTICO_CACHE_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/rules.h"
#include "core/arena.h"

struct cache_zone_conf {
    const char *name;
    const char *path;
    int levels[3]; /* directory name lengths, 1 or 2 each */
    int nlevels;
    size_t keys_size;     /* keys_zone=NAME:SIZE: about 128 bytes a key */
    size_t max_size;      /* disk bytes, 0 = no limit */
    size_t mem_size;      /* memory tier bytes (memory=), 0 = no memory tier */
    size_t min_free;      /* keep this much free on the file system */
    uint32_t inactive_ms; /* entries not used for this long are dropped */
    const char *file;     /* where proxy_cache_path was written */
    int line;
};

struct cache_zone;

/* A stored response. Read-only once published. */
struct cache_obj {
    _Atomic int refs;
    uint64_t hash;
    const char *key; /* full key (with the variant part) */
    size_t key_len;
    const char *primary; /* the key without the variant, or NULL */
    size_t primary_len;
    const char *vary; /* lower-case field names the variant depends on, '\n' separated */
    size_t vary_len;
    int status;
    struct cache_fresh fresh;
    const char *head; /* "Name: value\r\n" lines */
    size_t head_len;
    struct http_field *fields; /* parsed from head */
    size_t nfields;
    uint64_t body_len;
    const char *body;      /* memory tier copy, or NULL: read it from the file */
    uint32_t file_hdr_len; /* offset of the body in the file */
    struct cache_zone *zone;
    _Atomic int fd; /* the file kept open for sendfile (cache_obj_fd), -1 none */
};

/* Find or create the zone for `c` and take a reference (one per snapshot).
 * A zone of the same name and path keeps running (its limits are updated);
 * the directory is created if missing. Returns NULL with a message in err. */
struct cache_zone *cache_zone_get(const struct cache_zone_conf *c, char *err, size_t errlen);

/* A snapshot that used the zone is gone; the last one frees it (its files
 * stay on disk). */
void cache_zone_release(struct cache_zone *z);

/* Stop the loaders and free every zone (at exit). */
void cache_shutdown(void);

const char *cache_zone_name(const struct cache_zone *z);

uint64_t cache_hash(const char *p, size_t len);

void cache_obj_ref(struct cache_obj *o);
void cache_obj_unref(struct cache_obj *o);

struct cache_found {
    struct cache_obj *obj; /* referenced, or NULL */
    char *vary;            /* the key's responses vary on these fields: look up the variant */
    size_t vary_len;
    bool updating; /* another request is fetching this key */
    uint32_t uses; /* lookups of this key (proxy_cache_min_uses) */
};

/* Look up `key`. `vary` (if set) is allocated in `a`. Counts a use and
 * refreshes the LRU position. */
void cache_lookup(struct cache_zone *z, const char *key, size_t len, struct arena *a,
                  int64_t now_ms, struct cache_found *out);

/* Take the key's update lock (proxy_cache_lock, background updates). false
 * when another holder has it and it is younger than `max_age_ms`. */
bool cache_lock(struct cache_zone *z, const char *key, size_t len, int64_t now_ms,
                int64_t max_age_ms);
void cache_unlock(struct cache_zone *z, const char *key, size_t len);

/* Remove a key, with all its variants. Returns the number of objects removed. */
int cache_purge(struct cache_zone *z, const char *key, size_t len);
/* Remove every key starting with `prefix`. */
int cache_purge_prefix(struct cache_zone *z, const char *prefix, size_t len);

/* Writing a response into the zone as it streams. */
struct cache_writer;

struct cache_writer *cache_write_begin(struct cache_zone *z, const char *key, size_t key_len,
                                       const char *primary, size_t primary_len, const char *vary,
                                       size_t vary_len, int status, const struct cache_fresh *fresh,
                                       const struct http_field *fields, size_t nfields);
/* Append body bytes. -1: the writer gave up (disk error, too large) and is
 * already aborted; the caller forgets it. */
int cache_write_body(struct cache_writer *w, const char *p, size_t len);
/* Publish. Returns the new object (referenced) or NULL if it failed. */
struct cache_obj *cache_write_end(struct cache_writer *w);
void cache_write_abort(struct cache_writer *w);

/* Rewrite a stored response with a new head and freshness (a 304 from the
 * origin), keeping its body. Returns the new object (referenced) or NULL. */
struct cache_obj *cache_refresh(struct cache_obj *old, const struct cache_fresh *fresh,
                                const struct http_field *fields, size_t nfields);

/* Reading a body that is not in memory: the file opened and checked
 * against the object (-1 if it is gone or was replaced). */
int cache_open_body(struct cache_obj *o);
/* The body fully in memory: `o` itself if it has one, else a copy with the
 * body read from the file (promoted to the memory tier when it fits). NULL
 * if the file cannot be read. Referenced. */
struct cache_obj *cache_obj_in_memory(struct cache_obj *o);
/* The object's file, opened once and kept with the object (closed when it
 * is freed), for sendfile of large bodies; -1 when the file is gone or the
 * zone already keeps its share of open files. Not to be closed by the
 * caller; valid while the caller holds a reference. */
int cache_obj_fd(struct cache_obj *o);

/* Is the object small enough for the zone's memory tier? */
bool cache_fits_memory(const struct cache_obj *o);

/* Read a cache file's header (as the loader does after a restart): the
 * object without its zone, or NULL when the file is not a complete,
 * consistent cache file. *file_size gets the file's size. */
struct cache_obj *cache_obj_read(int fd, uint64_t *file_size);

/* Statistics for the API. */
struct cache_stats {
    uint64_t entries, disk_bytes, mem_bytes, hits, misses, stores, evictions;
    bool loading;
};
void cache_zone_stats(struct cache_zone *z, struct cache_stats *out);

/* Start the background index rebuild of zones that have not had one: called
 * once the process serves (after start-up and after each reload), so `-t`
 * reads no cache directory and the loader logs to the error log. */
void cache_start_loaders(void);

/* Start the loaders, then wait until every one is done (tests). */
void cache_wait_loaded(void);

#endif
