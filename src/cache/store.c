/* Cache zones: index, memory tier, disk tier (see store.h).
 *
 * One mutex per zone guards the index and the LRU list, as nginx's keys
 * zone does: a hit holds it for a hash lookup and a list move. File I/O on
 * the request path happens outside it (open, pread, write); only unlink on
 * eviction runs under it. */
#include "cache/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/fdio.h"
#include "core/log.h"

#define DISK_MAGIC     "PORTICO1"
#define KEY_COST       128 /* bytes of keys_zone one entry counts for */
#define MAX_FIELDS     128
#define MEM_OBJ_MAX    (8u << 20)
#define SWEEP_EVERY_MS 1000

struct disk_hdr {
    char magic[8];
    uint32_t hdr_len;
    int32_t status;
    int64_t lifetime_ms, initial_age_ms, response_time_ms, swr_ms, sie_ms;
    uint8_t no_cache, must_revalidate, heuristic, pad;
    uint32_t key_len, primary_len, vary_len, head_len;
    uint64_t body_len;
};

struct entry {
    struct entry *hnext;
    struct entry *prev, *next; /* LRU, most recent first */
    uint64_t hash;
    char *key;
    size_t key_len;
    struct cache_obj *obj; /* NULL: placeholder (uses, lock) or vary marker */
    char *vary;            /* marker: the key's responses vary on these fields */
    size_t vary_len;
    uint32_t uses;
    bool locked;
    int64_t locked_ms;
    int64_t access_ms;
    uint64_t disk_bytes;
    uint64_t mem_bytes;
};

struct purge_rec {
    struct purge_rec *next;
    bool prefix;
    size_t len;
    char key[];
};

struct cache_zone {
    struct cache_zone *next;
    int refs;                    /* configuration snapshots using it (under zones_mu) */
    struct cache_zone_conf conf; /* strings owned */
    pthread_mutex_t mu;
    struct entry **table;
    size_t nbuckets;
    struct entry *lru_head, *lru_tail;
    uint64_t nentries, disk_bytes, mem_bytes;
    uint64_t hits, misses, stores, evictions;
    int64_t last_sweep_ms;
    _Atomic uint64_t tmp_counter;
    /* background index rebuild */
    pthread_t loader;
    bool loader_started;
    _Atomic bool loading, stop;
    struct purge_rec *purged_while_loading;
};

static pthread_mutex_t zones_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cache_zone *zones;

uint64_t cache_hash(const char *p, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

const char *cache_zone_name(const struct cache_zone *z)
{
    return z->conf.name;
}

static size_t mem_obj_max(const struct cache_zone *z)
{
    size_t m = z->conf.mem_size / 8;
    return m > MEM_OBJ_MAX ? MEM_OBJ_MAX : m;
}

/* ---- objects ---- */

void cache_obj_ref(struct cache_obj *o)
{
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

/* Files kept open for sendfile, over every zone (bounded: each is an fd). */
#define OPEN_FILES_MAX 256
static _Atomic int open_files;

void cache_obj_unref(struct cache_obj *o)
{
    if (!o || atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) != 1)
        return;
    int fd = atomic_load(&o->fd);
    if (fd >= 0) {
        close(fd);
        atomic_fetch_sub(&open_files, 1);
    }
    free((void *)o->body);
    free(o); /* key, vary, head and fields live in the same block */
}

static size_t parse_head(const char *head, size_t len, struct http_field *out, size_t max)
{
    size_t n = 0, i = 0;
    while (i < len && n < max) {
        const char *eol = memchr(head + i, '\n', len - i);
        size_t end = eol ? (size_t)(eol - head) : len;
        size_t line_end = end > i && head[end - 1] == '\r' ? end - 1 : end;
        const char *colon = memchr(head + i, ':', line_end - i);
        if (colon) {
            struct slice name = slice_make(head + i, (size_t)(colon - (head + i)));
            struct slice value =
                slice_trim_ows(slice_make(colon + 1, line_end - (size_t)(colon + 1 - head)));
            out[n++] = (struct http_field){name, value};
        }
        i = end + 1;
    }
    return n;
}

static size_t head_size(const struct http_field *f, size_t n)
{
    size_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += f[i].name.len + f[i].value.len + 4;
    return s;
}

/* One block: struct, fields, key, primary, vary, head. */
static struct cache_obj *obj_new(const char *key, size_t key_len, const char *primary,
                                 size_t primary_len, const char *vary, size_t vary_len,
                                 const char *head, size_t head_len, const struct http_field *fields,
                                 size_t nfields)
{
    size_t nf = fields ? nfields : MAX_FIELDS;
    if (!fields) {
        /* count lines to size the array */
        nf = 0;
        for (size_t i = 0; i < head_len; i++)
            nf += head[i] == '\n';
        nf++;
    }
    if (!head)
        head_len = head_size(fields, nfields);
    size_t sz = sizeof(struct cache_obj) + nf * sizeof(struct http_field) + key_len + 1 +
                primary_len + 1 + vary_len + 1 + head_len + 1;
    char *m = calloc(1, sz);
    if (!m)
        return NULL;
    struct cache_obj *o = (struct cache_obj *)m;
    atomic_init(&o->refs, 1);
    atomic_init(&o->fd, -1);
    o->fields = (struct http_field *)(m + sizeof(*o));
    char *p = (char *)(o->fields + nf);
    memcpy(p, key, key_len);
    o->key = p;
    o->key_len = key_len;
    p += key_len + 1;
    if (primary) {
        memcpy(p, primary, primary_len);
        o->primary = p;
        o->primary_len = primary_len;
    }
    p += primary_len + 1;
    if (vary_len)
        memcpy(p, vary, vary_len);
    o->vary = p;
    o->vary_len = vary_len;
    p += vary_len + 1;
    char *h = p;
    if (head) {
        memcpy(h, head, head_len);
    } else {
        char *w = h;
        for (size_t i = 0; i < nfields; i++) {
            w = mem_put(w, fields[i].name.p, fields[i].name.len);
            w = mem_put(w, ": ", 2);
            w = mem_put(w, fields[i].value.p, fields[i].value.len);
            w = mem_put(w, "\r\n", 2);
        }
    }
    o->head = h;
    o->head_len = head_len;
    o->nfields = parse_head(h, head_len, o->fields, nf);
    o->hash = cache_hash(key, key_len);
    return o;
}

static struct cache_obj *obj_clone(const struct cache_obj *src, const char *body)
{
    struct cache_obj *o = obj_new(src->key, src->key_len, src->primary, src->primary_len, src->vary,
                                  src->vary_len, src->head, src->head_len, NULL, 0);
    if (!o)
        return NULL;
    o->status = src->status;
    o->fresh = src->fresh;
    o->body_len = src->body_len;
    o->file_hdr_len = src->file_hdr_len;
    o->zone = src->zone;
    o->body = body;
    return o;
}

/* ---- paths ---- */

static void obj_path(const struct cache_zone *z, uint64_t hash, char *out, size_t cap)
{
    char hex[17];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hash);
    int n = snprintf(out, cap, "%s", z->conf.path);
    size_t end = 16;
    for (int i = 0; i < z->conf.nlevels && n > 0 && (size_t)n < cap; i++) {
        int l = z->conf.levels[i];
        end -= (size_t)l;
        n += snprintf(out + n, cap - (size_t)n, "/%.*s", l, hex + end);
    }
    if (n > 0 && (size_t)n < cap)
        snprintf(out + n, cap - (size_t)n, "/%s", hex);
}

static int make_dirs_for(char *path)
{
    /* create each parent directory of `path` below the zone directory */
    for (char *s = strchr(path + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        int r = mkdir(path, 0700);
        *s = '/';
        if (r < 0 && errno != EEXIST)
            return -1;
    }
    return 0;
}

/* ---- index (zone lock held) ---- */

static struct entry *find(struct cache_zone *z, uint64_t h, const char *key, size_t len)
{
    for (struct entry *e = z->table[h % z->nbuckets]; e; e = e->hnext)
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

static void lru_unlink(struct cache_zone *z, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        z->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        z->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(struct cache_zone *z, struct entry *e)
{
    if (z->lru_head == e)
        return;
    if (e->prev || e->next || z->lru_tail == e)
        lru_unlink(z, e);
    e->next = z->lru_head;
    if (z->lru_head)
        z->lru_head->prev = e;
    z->lru_head = e;
    if (!z->lru_tail)
        z->lru_tail = e;
}

static struct entry *insert(struct cache_zone *z, uint64_t h, const char *key, size_t len)
{
    struct entry *e = calloc(1, sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    e->key = (char *)(e + 1);
    memcpy(e->key, key, len);
    e->key_len = len;
    e->hash = h;
    size_t b = h % z->nbuckets;
    e->hnext = z->table[b];
    z->table[b] = e;
    lru_front(z, e);
    z->nentries++;
    return e;
}

static void drop_obj(struct cache_zone *z, struct entry *e, bool unlink_file)
{
    if (!e->obj)
        return;
    if (unlink_file && e->disk_bytes) {
        char path[4096];
        obj_path(z, e->hash, path, sizeof(path));
        unlink(path);
    }
    z->disk_bytes -= e->disk_bytes;
    z->mem_bytes -= e->mem_bytes;
    e->disk_bytes = e->mem_bytes = 0;
    cache_obj_unref(e->obj);
    e->obj = NULL;
}

static void remove_entry(struct cache_zone *z, struct entry *e, bool unlink_file)
{
    drop_obj(z, e, unlink_file);
    struct entry **pp = &z->table[e->hash % z->nbuckets];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(z, e);
    free(e->vary);
    free(e);
    z->nentries--;
}

/* Keep the zone inside its limits: entries, disk bytes, memory bytes,
 * inactivity, free disk space. Least recently used go first; a locked
 * entry (being fetched) stays. */
static void enforce_limits(struct cache_zone *z, int64_t now_ms, bool sweep)
{
    uint64_t max_entries = z->conf.keys_size / KEY_COST;
    if (max_entries < 64)
        max_entries = 64;
    bool low_space = false;
    if (sweep && z->conf.min_free) {
        struct statvfs sv;
        if (statvfs(z->conf.path, &sv) == 0 &&
            (uint64_t)sv.f_bavail * sv.f_frsize < z->conf.min_free)
            low_space = true;
    }
    int freed_for_space = 0;
    struct entry *e = z->lru_tail;
    while (e) {
        struct entry *prev = e->prev;
        bool over = z->nentries > max_entries ||
                    (z->conf.max_size && z->disk_bytes > z->conf.max_size) ||
                    (low_space && freed_for_space < 16);
        bool idle = sweep && now_ms - e->access_ms > (int64_t)z->conf.inactive_ms;
        if (!over && !idle)
            break;
        if (!e->locked) {
            if (e->obj)
                z->evictions++;
            freed_for_space++;
            remove_entry(z, e, true);
        }
        e = prev;
    }
    /* memory tier: drop bodies from the coldest objects */
    for (e = z->lru_tail; e && z->mem_bytes > z->conf.mem_size; e = e->prev) {
        if (!e->obj || !e->obj->body)
            continue;
        struct cache_obj *lean = obj_clone(e->obj, NULL);
        if (!lean)
            break;
        z->mem_bytes -= e->mem_bytes;
        e->mem_bytes = 0;
        cache_obj_unref(e->obj);
        e->obj = lean;
    }
}

static void maybe_sweep(struct cache_zone *z, int64_t now_ms)
{
    if (now_ms - z->last_sweep_ms < SWEEP_EVERY_MS)
        return;
    z->last_sweep_ms = now_ms;
    enforce_limits(z, now_ms, true);
}

/* ---- lookups and locks ---- */

void cache_lookup(struct cache_zone *z, const char *key, size_t len, struct arena *a,
                  int64_t now_ms, struct cache_found *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t h = cache_hash(key, len);
    pthread_mutex_lock(&z->mu);
    maybe_sweep(z, now_ms);
    struct entry *e = find(z, h, key, len);
    if (!e) {
        /* a placeholder counts uses for proxy_cache_min_uses */
        e = insert(z, h, key, len);
        if (!e) {
            pthread_mutex_unlock(&z->mu);
            return;
        }
    }
    e->uses++;
    e->access_ms = now_ms;
    lru_front(z, e);
    out->uses = e->uses;
    out->updating = e->locked;
    if (e->obj) {
        cache_obj_ref(e->obj);
        out->obj = e->obj;
        z->hits++;
    } else {
        z->misses++;
    }
    if (e->vary && a) {
        out->vary = arena_strndup(a, e->vary, e->vary_len);
        out->vary_len = out->vary ? e->vary_len : 0;
    }
    pthread_mutex_unlock(&z->mu);
}

bool cache_lock(struct cache_zone *z, const char *key, size_t len, int64_t now_ms,
                int64_t max_age_ms)
{
    uint64_t h = cache_hash(key, len);
    bool ok = false;
    pthread_mutex_lock(&z->mu);
    struct entry *e = find(z, h, key, len);
    if (!e)
        e = insert(z, h, key, len);
    if (e && (!e->locked || now_ms - e->locked_ms > max_age_ms)) {
        e->locked = true;
        e->locked_ms = now_ms;
        e->access_ms = now_ms;
        ok = true;
    }
    pthread_mutex_unlock(&z->mu);
    return ok;
}

void cache_unlock(struct cache_zone *z, const char *key, size_t len)
{
    uint64_t h = cache_hash(key, len);
    pthread_mutex_lock(&z->mu);
    struct entry *e = find(z, h, key, len);
    if (e)
        e->locked = false;
    pthread_mutex_unlock(&z->mu);
}

static bool variant_of(const struct entry *e, const char *key, size_t len)
{
    return e->obj && e->obj->primary && e->obj->primary_len == len &&
           memcmp(e->obj->primary, key, len) == 0;
}

static void remember_purge(struct cache_zone *z, const char *key, size_t len, bool prefix)
{
    if (!atomic_load(&z->loading))
        return;
    struct purge_rec *r = malloc(sizeof(*r) + len);
    if (!r)
        return;
    r->prefix = prefix;
    r->len = len;
    memcpy(r->key, key, len);
    r->next = z->purged_while_loading;
    z->purged_while_loading = r;
}

static int purge_where(struct cache_zone *z, const char *key, size_t len, bool prefix)
{
    int n = 0;
    pthread_mutex_lock(&z->mu);
    remember_purge(z, key, len, prefix);
    struct entry *e = z->lru_head;
    while (e) {
        struct entry *next = e->next;
        bool hit;
        if (prefix) {
            const char *k = e->obj && e->obj->primary ? e->obj->primary : e->key;
            size_t kl = e->obj && e->obj->primary ? e->obj->primary_len : e->key_len;
            hit = kl >= len && memcmp(k, key, len) == 0;
        } else {
            hit = (e->key_len == len && memcmp(e->key, key, len) == 0) || variant_of(e, key, len);
        }
        if (hit) {
            n += e->obj != NULL;
            if (e->locked) {
                drop_obj(z, e, true);
                free(e->vary);
                e->vary = NULL;
            } else {
                remove_entry(z, e, true);
            }
        }
        e = next;
    }
    pthread_mutex_unlock(&z->mu);
    return n;
}

int cache_purge(struct cache_zone *z, const char *key, size_t len)
{
    uint64_t h = cache_hash(key, len);
    pthread_mutex_lock(&z->mu);
    struct entry *e = find(z, h, key, len);
    bool varies = e && e->vary;
    int n = 0;
    if (e && !varies && !atomic_load(&z->loading)) {
        n = e->obj != NULL;
        if (e->locked)
            drop_obj(z, e, true);
        else
            remove_entry(z, e, true);
        pthread_mutex_unlock(&z->mu);
        return n;
    }
    pthread_mutex_unlock(&z->mu);
    if (!e && !atomic_load(&z->loading))
        return 0;
    /* variants are entries of their own: find them all */
    return purge_where(z, key, len, false);
}

int cache_purge_prefix(struct cache_zone *z, const char *prefix, size_t len)
{
    return purge_where(z, prefix, len, true);
}

/* Put `o` (referenced, taken over) under its key; `disk` bytes on disk. */
static void publish(struct cache_zone *z, struct cache_obj *o, uint64_t disk, int64_t now_ms)
{
    pthread_mutex_lock(&z->mu);
    struct entry *e = find(z, o->hash, o->key, o->key_len);
    if (!e) {
        /* another key with the same hash owns the file name: replace it */
        for (struct entry *c = z->table[o->hash % z->nbuckets]; c; c = c->hnext)
            if (c->hash == o->hash) {
                remove_entry(z, c, false);
                break;
            }
        e = insert(z, o->hash, o->key, o->key_len);
    }
    if (!e) {
        pthread_mutex_unlock(&z->mu);
        cache_obj_unref(o);
        return;
    }
    drop_obj(z, e, false); /* the file was replaced by rename */
    e->obj = o;
    e->disk_bytes = disk;
    e->mem_bytes = o->body ? o->body_len : 0;
    e->access_ms = now_ms;
    z->disk_bytes += disk;
    z->mem_bytes += e->mem_bytes;
    z->stores++;
    lru_front(z, e);
    if (o->primary) {
        /* the primary key says which fields select a variant */
        uint64_t ph = cache_hash(o->primary, o->primary_len);
        struct entry *p = find(z, ph, o->primary, o->primary_len);
        if (!p)
            p = insert(z, ph, o->primary, o->primary_len);
        if (p) {
            drop_obj(z, p, true);
            if (!p->vary || p->vary_len != o->vary_len || memcmp(p->vary, o->vary, o->vary_len)) {
                char *v = malloc(o->vary_len + 1);
                if (v) {
                    memcpy(v, o->vary, o->vary_len);
                    v[o->vary_len] = 0;
                    free(p->vary);
                    p->vary = v;
                    p->vary_len = o->vary_len;
                }
            }
            p->access_ms = now_ms;
            lru_front(z, p);
        }
    } else if (e->vary) {
        /* the response no longer varies */
        free(e->vary);
        e->vary = NULL;
    }
    enforce_limits(z, now_ms, false);
    pthread_mutex_unlock(&z->mu);
}

/* ---- writing ---- */

struct cache_writer {
    struct cache_zone *z;
    struct cache_obj *obj; /* metadata and head; body filled at the end */
    int fd;
    char tmp[4096];
    uint64_t written;
    char *mem;
    size_t mem_len, mem_cap, mem_cap_used;
    bool keep_mem;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fill_hdr(struct disk_hdr *h, const struct cache_obj *o)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, DISK_MAGIC, 8);
    h->hdr_len = (uint32_t)(sizeof(*h) + o->key_len + o->primary_len + o->vary_len + o->head_len);
    h->status = o->status;
    h->lifetime_ms = o->fresh.lifetime_ms;
    h->initial_age_ms = o->fresh.initial_age_ms;
    h->response_time_ms = o->fresh.response_time_ms;
    h->swr_ms = o->fresh.swr_ms;
    h->sie_ms = o->fresh.sie_ms;
    h->no_cache = o->fresh.no_cache;
    h->must_revalidate = o->fresh.must_revalidate;
    h->heuristic = o->fresh.heuristic;
    h->key_len = (uint32_t)o->key_len;
    h->primary_len = (uint32_t)o->primary_len;
    h->vary_len = (uint32_t)o->vary_len;
    h->head_len = (uint32_t)o->head_len;
    h->body_len = o->body_len;
}

static struct cache_writer *writer_open(struct cache_zone *z, struct cache_obj *o)
{
    struct cache_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        cache_obj_unref(o);
        return NULL;
    }
    w->z = z;
    w->obj = o;
    o->zone = z;
    snprintf(w->tmp, sizeof(w->tmp), "%s/tmp.%d.%llu", z->conf.path, (int)getpid(),
             (unsigned long long)atomic_fetch_add(&z->tmp_counter, 1));
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        log_write(LOG_CRIT, "cache \"%s\": open() \"%s\" failed (%s)", z->conf.name, w->tmp,
                  strerror(errno));
        cache_obj_unref(o);
        free(w);
        return NULL;
    }
    struct disk_hdr h;
    fill_hdr(&h, o);
    o->file_hdr_len = h.hdr_len;
    if (fd_write_all(w->fd, (const char *)&h, sizeof(h)) < 0 ||
        fd_write_all(w->fd, o->key, o->key_len) < 0 ||
        fd_write_all(w->fd, o->primary ? o->primary : "", o->primary_len) < 0 ||
        fd_write_all(w->fd, o->vary, o->vary_len) < 0 ||
        fd_write_all(w->fd, o->head, o->head_len) < 0) {
        cache_write_abort(w);
        return NULL;
    }
    w->mem_cap = mem_obj_max(z);
    w->keep_mem = w->mem_cap > 0;
    return w;
}

struct cache_writer *cache_write_begin(struct cache_zone *z, const char *key, size_t key_len,
                                       const char *primary, size_t primary_len, const char *vary,
                                       size_t vary_len, int status, const struct cache_fresh *fresh,
                                       const struct http_field *fields, size_t nfields)
{
    struct cache_obj *o =
        obj_new(key, key_len, primary, primary_len, vary, vary_len, NULL, 0, fields, nfields);
    if (!o)
        return NULL;
    o->status = status;
    o->fresh = *fresh;
    return writer_open(z, o);
}

int cache_write_body(struct cache_writer *w, const char *p, size_t len)
{
    if (fd_write_all(w->fd, p, len) < 0) {
        log_write(LOG_CRIT, "cache \"%s\": write() \"%s\" failed (%s)", w->z->conf.name, w->tmp,
                  strerror(errno));
        cache_write_abort(w);
        return -1;
    }
    w->written += len;
    if (w->keep_mem) {
        if (w->mem_len + len > w->mem_cap) {
            free(w->mem);
            w->mem = NULL;
            w->mem_len = 0;
            w->keep_mem = false;
        } else {
            if (!w->mem) {
                size_t first = len < 16384 ? 16384 : len;
                w->mem = malloc(first < w->mem_cap ? first : w->mem_cap);
                w->mem_len = 0;
                if (!w->mem) {
                    w->keep_mem = false;
                    return 0;
                }
                w->mem_cap_used = first < w->mem_cap ? first : w->mem_cap;
            }
            if (w->mem_len + len > w->mem_cap_used) {
                size_t nc = w->mem_cap_used * 2;
                while (nc < w->mem_len + len)
                    nc *= 2;
                if (nc > w->mem_cap)
                    nc = w->mem_cap;
                char *nm = realloc(w->mem, nc);
                if (!nm) {
                    free(w->mem);
                    w->mem = NULL;
                    w->keep_mem = false;
                    return 0;
                }
                w->mem = nm;
                w->mem_cap_used = nc;
            }
            memcpy(w->mem + w->mem_len, p, len);
            w->mem_len += len;
        }
    }
    return 0;
}

void cache_write_abort(struct cache_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    free(w->mem);
    cache_obj_unref(w->obj);
    free(w);
}

struct cache_obj *cache_write_end(struct cache_writer *w)
{
    struct cache_obj *o = w->obj;
    struct cache_zone *z = w->z;
    o->body_len = w->written;
    uint64_t body_len = w->written;
    char path[4096];
    obj_path(z, o->hash, path, sizeof(path));
    if (pwrite(w->fd, &body_len, sizeof(body_len), offsetof(struct disk_hdr, body_len)) !=
            (ssize_t)sizeof(body_len) ||
        close(w->fd) < 0) {
        w->fd = -1;
        unlink(w->tmp);
        log_write(LOG_CRIT, "cache \"%s\": finishing \"%s\" failed (%s)", z->conf.name, w->tmp,
                  strerror(errno));
        cache_write_abort(w);
        return NULL;
    }
    w->fd = -1;
    if (rename(w->tmp, path) < 0 &&
        (errno != ENOENT || make_dirs_for(path) < 0 || rename(w->tmp, path) < 0)) {
        log_write(LOG_CRIT, "cache \"%s\": rename() \"%s\" to \"%s\" failed (%s)", z->conf.name,
                  w->tmp, path, strerror(errno));
        unlink(w->tmp);
        cache_write_abort(w);
        return NULL;
    }
    if (w->keep_mem && w->mem_len == body_len) {
        o->body = w->mem ? w->mem : calloc(1, 1);
        w->mem = NULL;
    }
    w->obj = NULL;
    free(w->mem);
    free(w);
    cache_obj_ref(o);
    publish(z, o, o->file_hdr_len + body_len, wall_ms());
    return o;
}

/* ---- reading ---- */

static int open_checked(const struct cache_obj *o)
{
    char path[4096];
    obj_path(o->zone, o->hash, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct disk_hdr h;
    if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || memcmp(h.magic, DISK_MAGIC, 8) ||
        h.body_len != o->body_len || h.response_time_ms != o->fresh.response_time_ms ||
        h.hdr_len != o->file_hdr_len) {
        close(fd);
        return -1;
    }
    return fd;
}

int cache_open_body(struct cache_obj *o)
{
    return open_checked(o);
}

int cache_obj_fd(struct cache_obj *o)
{
    int fd = atomic_load_explicit(&o->fd, memory_order_acquire);
    if (fd >= 0)
        return fd;
    if (atomic_fetch_add(&open_files, 1) >= OPEN_FILES_MAX) {
        atomic_fetch_sub(&open_files, 1);
        return -1;
    }
    fd = open_checked(o);
    int none = -1;
    if (fd < 0 || !atomic_compare_exchange_strong(&o->fd, &none, fd)) {
        /* no file, or another thread kept one first */
        if (fd >= 0)
            close(fd);
        atomic_fetch_sub(&open_files, 1);
        return fd < 0 ? -1 : atomic_load(&o->fd);
    }
    return fd;
}

static int read_full(int fd, char *p, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

bool cache_fits_memory(const struct cache_obj *o)
{
    return o->zone && o->body_len <= mem_obj_max(o->zone);
}

struct cache_obj *cache_obj_in_memory(struct cache_obj *o)
{
    if (o->body) {
        cache_obj_ref(o);
        return o;
    }
    int fd = open_checked(o);
    if (fd < 0)
        return NULL;
    char *body = malloc(o->body_len ? o->body_len : 1);
    if (!body || read_full(fd, body, o->body_len, o->file_hdr_len) < 0) {
        free(body);
        close(fd);
        return NULL;
    }
    close(fd);
    struct cache_obj *m = obj_clone(o, body);
    if (!m) {
        free(body);
        return NULL;
    }
    struct cache_zone *z = o->zone;
    if (o->body_len <= mem_obj_max(z)) {
        /* promote: the entry serves from memory from now on */
        pthread_mutex_lock(&z->mu);
        struct entry *e = find(z, o->hash, o->key, o->key_len);
        if (e && e->obj == o) {
            cache_obj_ref(m);
            e->obj = m;
            e->mem_bytes = m->body_len;
            z->mem_bytes += m->body_len;
            cache_obj_unref(o);
            enforce_limits(z, wall_ms(), false);
        }
        pthread_mutex_unlock(&z->mu);
    }
    return m;
}

struct cache_obj *cache_refresh(struct cache_obj *old, const struct cache_fresh *fresh,
                                const struct http_field *fields, size_t nfields)
{
    struct cache_zone *z = old->zone;
    struct cache_obj *full = cache_obj_in_memory(old);
    if (!full)
        return NULL;
    struct cache_writer *w =
        cache_write_begin(z, old->key, old->key_len, old->primary, old->primary_len, old->vary,
                          old->vary_len, old->status, fresh, fields, nfields);
    if (!w) {
        cache_obj_unref(full);
        return NULL;
    }
    if (cache_write_body(w, full->body, full->body_len) < 0) {
        cache_obj_unref(full);
        return NULL;
    }
    cache_obj_unref(full);
    return cache_write_end(w);
}

/* ---- the background loader ---- */

static bool purged_during_load(struct cache_zone *z, const char *key, size_t len,
                               const char *primary, size_t plen)
{
    for (struct purge_rec *r = z->purged_while_loading; r; r = r->next) {
        if (r->prefix) {
            const char *k = primary ? primary : key;
            size_t kl = primary ? plen : len;
            if (kl >= r->len && memcmp(k, r->key, r->len) == 0)
                return true;
        } else if ((r->len == len && memcmp(r->key, key, len) == 0) ||
                   (primary && r->len == plen && memcmp(r->key, primary, plen) == 0)) {
            return true;
        }
    }
    return false;
}

/* Times as the rules can produce them (delta-seconds cap 2^31 s, dates
 * before year 10000): a file with others is corrupt, and its numbers would
 * overflow the age arithmetic. */
static bool times_sane(const struct disk_hdr *h)
{
    const int64_t delta_max = 2147483648LL * 1000 * 2, date_max = 253402300800LL * 1000;
    return h->lifetime_ms >= 0 && h->lifetime_ms <= delta_max && h->initial_age_ms >= 0 &&
           h->initial_age_ms <= delta_max && h->response_time_ms >= 0 &&
           h->response_time_ms <= date_max && h->swr_ms >= -1 && h->swr_ms <= delta_max &&
           h->sie_ms >= -1 && h->sie_ms <= delta_max;
}

struct cache_obj *cache_obj_read(int fd, uint64_t *file_size)
{
    struct disk_hdr h;
    struct stat st;
    if (fstat(fd, &st) < 0 || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        memcmp(h.magic, DISK_MAGIC, 8) || h.hdr_len < sizeof(h) || h.hdr_len > (1u << 20) ||
        h.body_len > (uint64_t)st.st_size || (uint64_t)st.st_size != h.hdr_len + h.body_len ||
        (uint64_t)h.key_len + h.primary_len + h.vary_len + h.head_len + sizeof(h) != h.hdr_len ||
        h.key_len == 0 || !times_sane(&h))
        return NULL;
    char *meta = malloc(h.hdr_len - sizeof(h) + 1);
    if (!meta || read_full(fd, meta, h.hdr_len - sizeof(h), sizeof(h)) < 0) {
        free(meta);
        return NULL;
    }
    const char *key = meta, *primary = meta + h.key_len;
    const char *vary = primary + h.primary_len, *head = vary + h.vary_len;
    struct cache_obj *o = obj_new(key, h.key_len, h.primary_len ? primary : NULL, h.primary_len,
                                  vary, h.vary_len, head, h.head_len, NULL, 0);
    free(meta);
    if (!o)
        return NULL;
    o->status = h.status;
    o->fresh = (struct cache_fresh){.lifetime_ms = h.lifetime_ms,
                                    .initial_age_ms = h.initial_age_ms,
                                    .response_time_ms = h.response_time_ms,
                                    .swr_ms = h.swr_ms,
                                    .sie_ms = h.sie_ms,
                                    .no_cache = h.no_cache,
                                    .must_revalidate = h.must_revalidate,
                                    .heuristic = h.heuristic};
    o->body_len = h.body_len;
    o->file_hdr_len = h.hdr_len;
    *file_size = (uint64_t)st.st_size;
    return o;
}

static void load_file(struct cache_zone *z, const char *path, const char *name)
{
    if (strncmp(name, "tmp.", 4) == 0) {
        /* a response a previous process never finished; ours (tmp.PID.N)
         * are being written right now */
        char own[32];
        int n = snprintf(own, sizeof(own), "tmp.%d.", (int)getpid());
        if (strncmp(name, own, (size_t)n) != 0)
            unlink(path);
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    uint64_t size = 0;
    struct cache_obj *o = cache_obj_read(fd, &size);
    close(fd);
    if (!o) {
        log_write(LOG_WARN, "cache \"%s\": removing unreadable file \"%s\"", z->conf.name, path);
        unlink(path);
        return;
    }
    char want[4096];
    o->zone = z;
    obj_path(z, o->hash, want, sizeof(want));
    if (strcmp(want, path) != 0) {
        cache_obj_unref(o); /* not where its key says: not ours */
        return;
    }
    pthread_mutex_lock(&z->mu);
    bool skip = purged_during_load(z, o->key, o->key_len, o->primary, o->primary_len);
    struct entry *e = skip ? NULL : find(z, o->hash, o->key, o->key_len);
    pthread_mutex_unlock(&z->mu);
    if (skip) {
        unlink(path);
        cache_obj_unref(o);
        return;
    }
    if (e && e->obj) {
        cache_obj_unref(o); /* stored again since the start: that one wins */
        return;
    }
    publish(z, o, size, wall_ms()); /* as if just used, as nginx does */
}

static void load_dir(struct cache_zone *z, const char *dir, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while (!atomic_load(&z->stop) && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= sizeof(path))
            continue;
        struct stat st;
        if (lstat(path, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode) && depth < z->conf.nlevels)
            load_dir(z, path, depth + 1);
        else if (S_ISREG(st.st_mode))
            load_file(z, path, de->d_name);
    }
    closedir(d);
}

static void *loader_main(void *arg)
{
    struct cache_zone *z = arg;
    load_dir(z, z->conf.path, 0);
    pthread_mutex_lock(&z->mu);
    atomic_store(&z->loading, false);
    while (z->purged_while_loading) {
        struct purge_rec *r = z->purged_while_loading;
        z->purged_while_loading = r->next;
        free(r);
    }
    pthread_mutex_unlock(&z->mu);
    log_write(LOG_INFO, "cache \"%s\": %llu entries loaded", z->conf.name,
              (unsigned long long)z->nentries);
    return NULL;
}

/* ---- zones ---- */

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

struct cache_zone *cache_zone_get(const struct cache_zone_conf *c, char *err, size_t errlen)
{
    pthread_mutex_lock(&zones_mu);
    for (struct cache_zone *z = zones; z; z = z->next)
        if (strcmp(z->conf.name, c->name) == 0 && strcmp(z->conf.path, c->path) == 0 &&
            z->conf.nlevels == c->nlevels &&
            memcmp(z->conf.levels, c->levels, sizeof(c->levels)) == 0) {
            pthread_mutex_lock(&z->mu);
            z->conf.keys_size = c->keys_size;
            z->conf.max_size = c->max_size;
            z->conf.mem_size = c->mem_size;
            z->conf.min_free = c->min_free;
            z->conf.inactive_ms = c->inactive_ms;
            pthread_mutex_unlock(&z->mu);
            z->refs++;
            pthread_mutex_unlock(&zones_mu);
            return z;
        }
    struct cache_zone *z = calloc(1, sizeof(*z));
    if (!z)
        goto oom;
    z->conf = *c;
    z->conf.name = dup_str(c->name);
    z->conf.path = dup_str(c->path);
    z->conf.file = NULL;
    z->nbuckets = 4096;
    while (z->nbuckets < c->keys_size / KEY_COST && z->nbuckets < (1u << 22))
        z->nbuckets *= 2;
    z->table = calloc(z->nbuckets, sizeof(*z->table));
    if (!z->conf.name || !z->conf.path || !z->table)
        goto oom;
    if (mkdir(c->path, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s:%d: mkdir() \"%s\" failed (%s)", c->file, c->line, c->path,
                 strerror(errno));
        goto fail;
    }
    if (access(c->path, W_OK | X_OK) < 0) {
        snprintf(err, errlen, "%s:%d: cache directory \"%s\" is not writable (%s)", c->file,
                 c->line, c->path, strerror(errno));
        goto fail;
    }
    pthread_mutex_init(&z->mu, NULL);
    /* lookups miss until cache_start_loaders() has read the files back */
    atomic_store(&z->loading, true);
    z->refs = 1;
    z->next = zones;
    zones = z;
    pthread_mutex_unlock(&zones_mu);
    return z;
oom:
    snprintf(err, errlen, "%s:%d: out of memory", c->file, c->line);
fail:
    if (z) {
        free((void *)z->conf.name);
        free((void *)z->conf.path);
        free(z->table);
        free(z);
    }
    pthread_mutex_unlock(&zones_mu);
    return NULL;
}

void cache_start_loaders(void)
{
    pthread_mutex_lock(&zones_mu);
    for (struct cache_zone *z = zones; z; z = z->next) {
        if (z->loader_started || !atomic_load(&z->loading))
            continue;
        if (pthread_create(&z->loader, NULL, loader_main, z) == 0)
            z->loader_started = true;
        else
            atomic_store(&z->loading, false);
    }
    pthread_mutex_unlock(&zones_mu);
}

void cache_wait_loaded(void)
{
    cache_start_loaders();
    pthread_mutex_lock(&zones_mu);
    for (struct cache_zone *z = zones; z; z = z->next)
        if (z->loader_started) {
            pthread_join(z->loader, NULL);
            z->loader_started = false;
        }
    pthread_mutex_unlock(&zones_mu);
}

/* Stop the loader and free a zone that is no longer listed. */
static void zone_free(struct cache_zone *z)
{
    atomic_store(&z->stop, true);
    if (z->loader_started)
        pthread_join(z->loader, NULL);
    while (z->lru_head)
        remove_entry(z, z->lru_head, false);
    while (z->purged_while_loading) {
        struct purge_rec *r = z->purged_while_loading;
        z->purged_while_loading = r->next;
        free(r);
    }
    pthread_mutex_destroy(&z->mu);
    free(z->table);
    free((void *)z->conf.name);
    free((void *)z->conf.path);
    free(z);
}

void cache_zone_release(struct cache_zone *z)
{
    pthread_mutex_lock(&zones_mu);
    bool last = --z->refs == 0;
    if (last) {
        struct cache_zone **pp = &zones;
        while (*pp != z)
            pp = &(*pp)->next;
        *pp = z->next;
    }
    pthread_mutex_unlock(&zones_mu);
    if (last)
        zone_free(z); /* files stay: a later configuration may use them again */
}

void cache_shutdown(void)
{
    pthread_mutex_lock(&zones_mu);
    struct cache_zone *list = zones;
    zones = NULL;
    pthread_mutex_unlock(&zones_mu);
    while (list) {
        struct cache_zone *z = list;
        list = z->next;
        zone_free(z);
    }
}

void cache_zone_stats(struct cache_zone *z, struct cache_stats *out)
{
    pthread_mutex_lock(&z->mu);
    uint64_t objs = 0;
    for (struct entry *e = z->lru_head; e; e = e->next)
        objs += e->obj != NULL;
    *out = (struct cache_stats){.entries = objs,
                                .disk_bytes = z->disk_bytes,
                                .mem_bytes = z->mem_bytes,
                                .hits = z->hits,
                                .misses = z->misses,
                                .stores = z->stores,
                                .evictions = z->evictions,
                                .loading = atomic_load(&z->loading)};
    pthread_mutex_unlock(&z->mu);
}
