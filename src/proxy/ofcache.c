#include "proxy/ofcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/conf.h"

void ofc_conf_merge(struct ofc_conf *c, const struct ofc_conf *p)
{
    if (!c->set) {
        c->max = p->max;
        c->inactive_ms = p->inactive_ms;
        c->set = p->set;
    }
    if (c->valid_ms == CF_UNSET_MSEC)
        c->valid_ms = p->valid_ms;
    if (!c->min_uses)
        c->min_uses = p->min_uses;
    if (c->errors == CF_UNSET_FLAG)
        c->errors = p->errors;
}

static struct ofc_conf *OC(void *conf)
{
    return &((struct loc_conf *)conf)->ofc;
}

static int set_cache(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct ofc_conf *c = OC(conf);
    if (c->set)
        return cf_error(cx, n, "\"open_file_cache\" directive is duplicate");
    c->set = true;
    c->max = 0;
    c->inactive_ms = 60000;
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (!strcmp(a, "off") && n->nargs == 1)
            return 0;
        if (!strncmp(a, "max=", 4)) {
            char *end;
            long v = strtol(a + 4, &end, 10);
            if (*end || v <= 0 || v > 1000000)
                return cf_error(cx, n, "invalid \"max\" value \"%s\"", a);
            c->max = (uint32_t)v;
        } else if (!strncmp(a, "inactive=", 9)) {
            if (cf_parse_msec(a + 9, &c->inactive_ms) < 0)
                return cf_error(cx, n, "invalid \"inactive\" value \"%s\"", a);
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (!c->max)
        return cf_error(cx, n, "\"open_file_cache\" must have the \"max\" parameter");
    return 0;
}

static int set_uses(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    char *end;
    long v = strtol(n->args[0], &end, 10);
    if (*end || v <= 0 || v > 1000000)
        return cf_error(cx, n, "invalid value \"%s\"", n->args[0]);
    OC(conf)->min_uses = (uint32_t)v;
    return 0;
}

#define LOC_ANY   (CF_HTTP | CF_SERVER | CF_LOCATION)
#define OFF_OC(f) (offsetof(struct loc_conf, ofc) + offsetof(struct ofc_conf, f))

static const struct cf_directive ofcache_directives[] = {
    {"open_file_cache", LOC_ANY, 1, 2, false, set_cache, CONF_LOC, 0, "off | max=N [inactive=time]",
     "off",
     "keep up to N open files (each worker thread) that static files are served from; one not "
     "used for inactive (60s) is closed"},
    {"open_file_cache_valid", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC, OFF_OC(valid_ms), "time",
     "60s", "how long a cached file is trusted before it is checked again"},
    {"open_file_cache_min_uses", LOC_ANY, 1, 1, false, set_uses, CONF_LOC, 0, "number", "1",
     "uses within inactive before a file is kept open"},
    {"open_file_cache_errors", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_OC(errors),
     "on | off", "off", "remember failed lookups (no such file, no permission) too"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module ofcache_cf_module = {"open_file_cache", ofcache_directives};

/* ---- the cache: a hash table with a use-ordered list, per thread ---- */

struct ofe {
    struct ofe *hnext;       /* hash chain */
    struct ofe *prev, *next; /* use order, most recent first */
    uint64_t hash;
    char *path;
    int fd;  /* -1: an error entry (err) or not kept open yet */
    int err; /* errno of a failed lookup */
    struct stat st;
    uint64_t checked_ms, used_ms;
    uint32_t uses;
};

#define BUCKETS 1024

static __thread struct {
    struct ofe *b[BUCKETS];
    struct ofe *head, *tail;
    uint32_t n;
} T;

static uint64_t hash_path(const char *p)
{
    uint64_t h = 1469598103934665603ull;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

static void unlink_use(struct ofe *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        T.head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        T.tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(struct ofe *e)
{
    e->prev = NULL;
    e->next = T.head;
    if (T.head)
        T.head->prev = e;
    T.head = e;
    if (!T.tail)
        T.tail = e;
}

static void drop(struct ofe *e)
{
    struct ofe **pp = &T.b[e->hash % BUCKETS];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    unlink_use(e);
    if (e->fd >= 0)
        close(e->fd);
    free(e->path);
    free(e);
    T.n--;
}

void ofc_thread_flush(void)
{
    while (T.head)
        drop(T.head);
}

/* The file as the file system has it now: fd (owned) and stat, or -1. */
static int open_fresh(const char *path, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtime == b->st_mtime && a->st_mode == b->st_mode;
}

int ofc_open(const struct ofc_conf *c, uint64_t now_ms, const char *path, struct stat *st)
{
    if (!c->max)
        return open_fresh(path, st);
    /* the inactive ones at the end of the use list go first */
    while (T.tail && now_ms - T.tail->used_ms > c->inactive_ms)
        drop(T.tail);
    uint64_t h = hash_path(path);
    struct ofe *e = T.b[h % BUCKETS];
    while (e && (e->hash != h || strcmp(e->path, path) != 0))
        e = e->hnext;
    if (e) {
        unlink_use(e);
        push_front(e);
        e->used_ms = now_ms;
        e->uses++;
        if (now_ms - e->checked_ms < c->valid_ms) {
            if (e->fd < 0 && e->err && c->errors) {
                errno = e->err;
                return -1;
            }
            if (e->fd >= 0) {
                int fd = fcntl(e->fd, F_DUPFD_CLOEXEC, 0);
                if (fd >= 0) {
                    *st = e->st;
                    return fd;
                }
            }
        }
        /* stale, or not kept yet: look at the file system again */
        int fd = open_fresh(path, st);
        e->checked_ms = now_ms;
        if (fd < 0) {
            int err = errno;
            if (e->fd >= 0)
                close(e->fd);
            e->fd = -1;
            e->err = err;
            errno = err;
            return -1;
        }
        e->err = 0;
        if (e->fd >= 0 && same_file(&e->st, st)) {
            close(fd); /* unchanged: keep the old descriptor */
            fd = fcntl(e->fd, F_DUPFD_CLOEXEC, 0);
            return fd;
        }
        if (e->fd >= 0)
            close(e->fd);
        e->fd = -1;
        e->st = *st;
        if (e->uses >= c->min_uses && S_ISREG(st->st_mode)) {
            int keep = fcntl(fd, F_DUPFD_CLOEXEC, 0);
            if (keep >= 0)
                e->fd = keep;
        }
        return fd;
    }
    int fd = open_fresh(path, st);
    int err = fd < 0 ? errno : 0;
    if (fd < 0 && !c->errors) {
        errno = err;
        return -1;
    }
    e = calloc(1, sizeof(*e));
    char *p = e ? strdup(path) : NULL;
    if (!p) {
        free(e);
        errno = err;
        return fd;
    }
    while (T.n >= c->max && T.tail)
        drop(T.tail);
    e->path = p;
    e->hash = h;
    e->fd = -1;
    e->err = err;
    e->uses = 1;
    e->checked_ms = e->used_ms = now_ms;
    if (fd >= 0) {
        e->st = *st;
        if (c->min_uses <= 1 && S_ISREG(st->st_mode)) {
            int keep = fcntl(fd, F_DUPFD_CLOEXEC, 0);
            if (keep >= 0)
                e->fd = keep;
        }
    }
    e->hnext = T.b[h % BUCKETS];
    T.b[h % BUCKETS] = e;
    push_front(e);
    T.n++;
    errno = err;
    return fd;
}
