/* limit_req and limit_conn (limit.h). A zone is a fixed array of nodes
 * (its size / sizeof(node)), a hash table over them and an LRU list, under
 * one mutex: a lookup and an update per rule per request. When the array is
 * full the least recently used node that holds nothing goes, as nginx's
 * zones drop their oldest entries. */
#include "proxy/limit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

#define LKEY 64 /* key bytes compared; longer keys also by their 64-bit hash */
#define NIL  UINT32_MAX

struct lnode {
    uint64_t hash;
    uint64_t last_ms;
    int64_t excess; /* milli-requests over the rate */
    uint32_t conns;
    uint32_t chain;
    uint32_t lru_prev, lru_next;
    uint8_t klen;
    bool used;
    char key[LKEY];
};

struct limit_zone {
    char *name;
    enum limit_kind kind;
    size_t size;
    pthread_mutex_t lock;
    struct lnode *nodes;
    uint32_t cap;
    uint32_t *buckets;
    uint32_t nbuckets;
    uint32_t free_head;
    uint32_t lru_head, lru_tail; /* head: most recently used */
    int refs;                    /* snapshots using it (under registry_lock) */
    struct limit_zone *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct limit_zone *registry;

static void zone_free(struct limit_zone *z)
{
    pthread_mutex_destroy(&z->lock);
    free(z->nodes);
    free(z->buckets);
    free(z->name);
    free(z);
}

/* The zone named so, of this kind and size, shared with the running
 * configuration if it has one; referenced. */
static struct limit_zone *zone_get(const char *name, enum limit_kind kind, size_t size)
{
    pthread_mutex_lock(&registry_lock);
    for (struct limit_zone *z = registry; z; z = z->next)
        if (z->kind == kind && z->size == size && !strcmp(z->name, name)) {
            z->refs++;
            pthread_mutex_unlock(&registry_lock);
            return z;
        }
    struct limit_zone *z = calloc(1, sizeof(*z));
    uint32_t cap = (uint32_t)(size / sizeof(struct lnode));
    uint32_t nb = 1;
    while (nb < cap)
        nb <<= 1;
    if (z) {
        z->name = strdup(name);
        z->nodes = calloc(cap, sizeof(*z->nodes));
        z->buckets = malloc(nb * sizeof(*z->buckets));
    }
    if (!z || !z->name || !z->nodes || !z->buckets) {
        if (z) {
            free(z->name);
            free(z->nodes);
            free(z->buckets);
            free(z);
        }
        pthread_mutex_unlock(&registry_lock);
        return NULL;
    }
    pthread_mutex_init(&z->lock, NULL);
    z->kind = kind;
    z->size = size;
    z->cap = cap;
    z->nbuckets = nb;
    for (uint32_t i = 0; i < nb; i++)
        z->buckets[i] = NIL;
    for (uint32_t i = 0; i < cap; i++)
        z->nodes[i].chain = i + 1 < cap ? i + 1 : NIL; /* the free list */
    z->free_head = 0;
    z->lru_head = z->lru_tail = NIL;
    z->refs = 1;
    z->next = registry;
    registry = z;
    pthread_mutex_unlock(&registry_lock);
    return z;
}

static void zone_put(struct limit_zone *z)
{
    if (!z)
        return;
    pthread_mutex_lock(&registry_lock);
    if (--z->refs == 0) {
        for (struct limit_zone **pp = &registry; *pp; pp = &(*pp)->next)
            if (*pp == z) {
                *pp = z->next;
                break;
            }
        zone_free(z);
    }
    pthread_mutex_unlock(&registry_lock);
}

static uint64_t key_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void lru_unlink(struct limit_zone *z, uint32_t i)
{
    struct lnode *n = &z->nodes[i];
    if (n->lru_prev != NIL)
        z->nodes[n->lru_prev].lru_next = n->lru_next;
    else
        z->lru_head = n->lru_next;
    if (n->lru_next != NIL)
        z->nodes[n->lru_next].lru_prev = n->lru_prev;
    else
        z->lru_tail = n->lru_prev;
}

static void lru_push(struct limit_zone *z, uint32_t i)
{
    struct lnode *n = &z->nodes[i];
    n->lru_prev = NIL;
    n->lru_next = z->lru_head;
    if (z->lru_head != NIL)
        z->nodes[z->lru_head].lru_prev = i;
    z->lru_head = i;
    if (z->lru_tail == NIL)
        z->lru_tail = i;
}

static void evict(struct limit_zone *z, uint32_t i)
{
    struct lnode *n = &z->nodes[i];
    uint32_t *pp = &z->buckets[n->hash & (z->nbuckets - 1)];
    while (*pp != i)
        pp = &z->nodes[*pp].chain;
    *pp = n->chain;
    lru_unlink(z, i);
    n->used = false;
    n->chain = z->free_head;
    z->free_head = i;
}

/* The node for `key` (under z->lock), made if new (*fresh); NULL when the
 * zone is full of nodes that hold connections. */
static struct lnode *node_get(struct limit_zone *z, struct slice key, uint64_t now, bool *fresh)
{
    *fresh = false;
    uint64_t h = key_hash(key.p, key.len);
    size_t kl = key.len < LKEY ? key.len : LKEY;
    for (uint32_t i = z->buckets[h & (z->nbuckets - 1)]; i != NIL; i = z->nodes[i].chain) {
        struct lnode *n = &z->nodes[i];
        if (n->hash == h && n->klen == kl && !memcmp(n->key, key.p, kl)) {
            lru_unlink(z, i);
            lru_push(z, i);
            return n;
        }
    }
    if (z->free_head == NIL) {
        /* the least recently used that holds no connection */
        uint32_t i = z->lru_tail;
        for (int tries = 0; i != NIL && z->nodes[i].conns && tries < 64; tries++)
            i = z->nodes[i].lru_prev;
        if (i == NIL || z->nodes[i].conns)
            return NULL;
        evict(z, i);
    }
    uint32_t i = z->free_head;
    struct lnode *n = &z->nodes[i];
    z->free_head = n->chain;
    memset(n, 0, sizeof(*n));
    n->used = true;
    n->hash = h;
    n->klen = (uint8_t)kl;
    memcpy(n->key, key.p, kl);
    n->last_ms = now;
    *fresh = true;
    uint32_t *b = &z->buckets[h & (z->nbuckets - 1)];
    n->chain = *b;
    *b = i;
    lru_push(z, i);
    return n;
}

/* ---- configuration ---- */

void limit_conf_init(struct limit_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->req_status = c->conn_status = CF_UNSET_INT;
    c->req_log_level = c->conn_log_level = CF_UNSET_INT;
    c->req_dry_run = c->conn_dry_run = CF_UNSET_FLAG;
}

void limit_conf_merge(struct limit_conf *c, const struct limit_conf *p)
{
    if (!c->req_set) {
        c->req = p->req;
        c->nreq = p->nreq;
        c->req_set = p->req_set;
    }
    if (!c->conn_set) {
        c->conn = p->conn;
        c->nconn = p->nconn;
        c->conn_set = p->conn_set;
    }
#define LMERGE(f)                                                                                  \
    if (c->f == CF_UNSET_INT)                                                                      \
    c->f = p->f
    LMERGE(req_status);
    LMERGE(conn_status);
    LMERGE(req_log_level);
    LMERGE(conn_log_level);
    LMERGE(req_dry_run);
    LMERGE(conn_dry_run);
#undef LMERGE
    if (!c->rate)
        c->rate = p->rate;
    if (!c->rate_after)
        c->rate_after = p->rate_after;
}

void limit_conf_defaults(struct limit_conf *c)
{
    c->req_status = c->conn_status = 503;
    c->req_log_level = c->conn_log_level = LOG_ERR;
    c->req_dry_run = c->conn_dry_run = 0;
}

static struct limit_zone_decl *find_decl(struct snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->nlimit_zones; i++)
        if (!strcmp(s->limit_zones[i]->name, name))
            return s->limit_zones[i];
    return NULL;
}

/* A zone named before (or without) its declaration gets a placeholder the
 * declaration fills; limits_finish refuses one never declared. */
static struct limit_zone_decl *decl_for(struct cf_ctx *cx, const struct cf_node *n,
                                        const char *name, enum limit_kind kind)
{
    struct snapshot *s = conf_snapshot(cx);
    struct limit_zone_decl *d = find_decl(s, name);
    if (d) {
        if (d->kind != kind) {
            cf_error(cx, n, "zone \"%s\" is a %s zone", name,
                     d->kind == LIMIT_REQ ? "limit_req" : "limit_conn");
            return NULL;
        }
        return d;
    }
    d = arena_calloc(cx->arena, sizeof(*d));
    struct limit_zone_decl **slot =
        d ? arena_push(cx->arena, (void **)&s->limit_zones, &s->nlimit_zones, &s->cap_limit_zones,
                       sizeof(*slot))
          : NULL;
    if (!slot) {
        cf_error(cx, n, "out of memory");
        return NULL;
    }
    d->name = arena_strdup(cx->arena, name);
    d->kind = kind;
    d->file = n->file;
    d->line = n->line;
    *slot = d;
    return d;
}

/* limit_req_zone key zone=name:size rate=Nr/s|Nr/m
 * limit_conn_zone key zone=name:size */
static int set_zone(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *dir,
                    void *conf)
{
    (void)conf;
    enum limit_kind kind = strncmp(dir->name, "limit_req", 9) ? LIMIT_CONN : LIMIT_REQ;
    const char *zname = NULL, *zsize = NULL;
    uint64_t rate = 0;
    char namebuf[128];
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (!strncmp(a, "zone=", 5)) {
            const char *colon = strrchr(a + 5, ':');
            if (!colon || colon == a + 5 || (size_t)(colon - a - 5) >= sizeof(namebuf))
                return cf_error(cx, n, "invalid zone size \"%s\"", a);
            memcpy(namebuf, a + 5, (size_t)(colon - a - 5));
            namebuf[colon - a - 5] = '\0';
            zname = namebuf;
            zsize = colon + 1;
        } else if (kind == LIMIT_REQ && !strncmp(a, "rate=", 5)) {
            char *end;
            unsigned long long r = strtoull(a + 5, &end, 10);
            if (end == a + 5 || r == 0 || r > 1000000)
                return cf_error(cx, n, "invalid rate \"%s\"", a);
            if (!strcmp(end, "r/s"))
                rate = r * 1000;
            else if (!strcmp(end, "r/m"))
                rate = r * 1000 / 60;
            else
                return cf_error(cx, n, "invalid rate \"%s\"", a);
            if (!rate)
                rate = 1;
        } else if (!strcmp(a, "sync")) {
            return cf_error(cx, n,
                            "\"sync\" (zone synchronisation between servers) is not "
                            "supported");
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (!zname)
        return cf_error(cx, n, "\"%s\" must have \"zone\" parameter", dir->name);
    if (kind == LIMIT_REQ && !rate)
        return cf_error(cx, n, "\"%s\" must have \"rate\" parameter", dir->name);
    struct cf_node sn = *n;
    char *sz = (char *)zsize;
    sn.args = &sz;
    sn.nargs = 1;
    struct cf_directive sd = *dir;
    sd.offset = 0;
    size_t size = CF_UNSET_SIZE;
    if (cf_set_size(cx, &sn, &sd, &size) < 0)
        return -1;
    if (size < 8 * sizeof(struct lnode))
        return cf_error(cx, n, "zone \"%s\" is too small", zname);
    struct limit_zone_decl *d = decl_for(cx, n, zname, kind);
    if (!d)
        return -1;
    if (d->size)
        return cf_error(cx, n, "duplicate zone \"%s\"", zname);
    d->size = size;
    d->rate_milli = rate;
    d->file = n->file;
    d->line = n->line;
    if (!(d->key = conf_tmpl(cx, n, n->args[0])))
        return -1;
    d->zone = zone_get(zname, kind, size);
    if (!d->zone)
        return cf_error(cx, n, "out of memory for zone \"%s\"", zname);
    return 0;
}

static struct limit_conf *LC(void *conf)
{
    return &((struct loc_conf *)conf)->limits;
}

static int parse_count(const char *v, uint64_t *out)
{
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || x > 1000000)
        return -1;
    *out = x;
    return 0;
}

static int set_limit_req(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d;
    struct limit_conf *c = LC(conf);
    if (!c->req_set) {
        c->req_set = true;
        c->req = NULL;
        c->nreq = 0;
    }
    struct limit_req_rule r = {0};
    bool nodelay = false, delay_set = false;
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        uint64_t v;
        if (!strncmp(a, "zone=", 5)) {
            if (!(r.decl = decl_for(cx, n, a + 5, LIMIT_REQ)))
                return -1;
        } else if (!strncmp(a, "burst=", 6)) {
            if (parse_count(a + 6, &v) < 0)
                return cf_error(cx, n, "invalid burst value \"%s\"", a);
            r.burst_milli = v * 1000;
        } else if (!strncmp(a, "delay=", 6)) {
            if (parse_count(a + 6, &v) < 0)
                return cf_error(cx, n, "invalid delay value \"%s\"", a);
            r.delay_milli = v * 1000;
            delay_set = true;
        } else if (!strcmp(a, "nodelay")) {
            nodelay = true;
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (!r.decl)
        return cf_error(cx, n, "\"limit_req\" must have \"zone\" parameter");
    if (nodelay && delay_set)
        return cf_error(cx, n, "\"nodelay\" and \"delay\" cannot be used together");
    if (nodelay)
        r.delay_milli = UINT64_MAX;
    for (size_t i = 0; i < c->nreq; i++)
        if (c->req[i].decl == r.decl)
            return cf_error(cx, n, "duplicate limit_req \"%s\"", r.decl->name);
    struct limit_req_rule *slot =
        arena_push(cx->arena, (void **)&c->req, &c->nreq, &c->cap_req, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    *slot = r;
    return 0;
}

static int set_limit_conn(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct limit_conf *c = LC(conf);
    if (!c->conn_set) {
        c->conn_set = true;
        c->conn = NULL;
        c->nconn = 0;
    }
    struct limit_conn_rule r = {0};
    uint64_t v;
    if (parse_count(n->args[1], &v) < 0 || v == 0 || v > 65535)
        return cf_error(cx, n, "invalid number of connections \"%s\"", n->args[1]);
    r.max = (uint32_t)v;
    if (!(r.decl = decl_for(cx, n, n->args[0], LIMIT_CONN)))
        return -1;
    for (size_t i = 0; i < c->nconn; i++)
        if (c->conn[i].decl == r.decl)
            return cf_error(cx, n, "same zone \"%s\" in two limit_conn", r.decl->name);
    struct limit_conn_rule *slot =
        arena_push(cx->arena, (void **)&c->conn, &c->nconn, &c->cap_conn, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    *slot = r;
    return 0;
}

static int set_status(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    struct limit_conf *c = LC(conf);
    int *f = strncmp(d->name, "limit_req", 9) ? &c->conn_status : &c->req_status;
    if (*f != CF_UNSET_INT)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    char *end;
    long v = strtol(n->args[0], &end, 10);
    if (*end || v < 400 || v > 599)
        return cf_error(cx, n, "value must be between 400 and 599");
    *f = (int)v;
    return 0;
}

static int set_log_level(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    static const struct {
        const char *name;
        int level;
    } lv[] = {{"info", LOG_INFO}, {"notice", LOG_NOTICE}, {"warn", LOG_WARN}, {"error", LOG_ERR}};
    struct limit_conf *c = LC(conf);
    int *f = strncmp(d->name, "limit_req", 9) ? &c->conn_log_level : &c->req_log_level;
    if (*f != CF_UNSET_INT)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    for (size_t i = 0; i < sizeof(lv) / sizeof(lv[0]); i++)
        if (!strcmp(n->args[0], lv[i].name)) {
            *f = lv[i].level;
            return 0;
        }
    return cf_error(cx, n, "invalid value \"%s\" (info, notice, warn or error)", n->args[0]);
}

/* ---- limit_rate ---- */

int limit_rate_parse(struct slice v, uint64_t *out)
{
    char tmp[32];
    size_t n;
    if (v.len == 0 || v.len >= sizeof(tmp))
        return -1;
    memcpy(tmp, v.p, v.len);
    tmp[v.len] = '\0';
    if (cf_parse_size(tmp, &n) < 0)
        return -1;
    *out = n;
    return 0;
}

static uint64_t rate_value(struct exchange *ex, const struct tmpl *t, const char *what)
{
    struct slice v = tmpl_eval(ex, t, ESC_NONE);
    uint64_t r;
    if (limit_rate_parse(v, &r) == 0)
        return r;
    if (v.len) /* nginx: an invalid value counts as 0 (no limit), said once */
        LOG(LOG_ERR, "*%llu invalid %s \"%.*s\"", (unsigned long long)ex->id, what, (int)v.len,
            v.p);
    return 0;
}

uint64_t limit_rate_current(struct exchange *ex)
{
    if (!ex->limit_rate_set && ex->lc) {
        ex->limit_rate_set = true;
        const struct limit_conf *c = &ex->lc->limits;
        if (c->rate)
            ex->limit_rate = rate_value(ex, c->rate, "limit_rate");
    }
    return ex->limit_rate;
}

uint64_t limit_rate_budget(struct exchange *ex, uint64_t now_ms, uint64_t queued, uint32_t *wait_ms)
{
    if (!limit_rate_current(ex))
        return UINT64_MAX;
    if (!ex->limit_rate_after && ex->lc->limits.rate_after) {
        ex->limit_rate_after = rate_value(ex, ex->lc->limits.rate_after, "limit_rate_after");
        if (!ex->limit_rate_after)
            ex->limit_rate_after = 1; /* evaluated (a byte is no difference) */
    }
    uint64_t rate = ex->limit_rate;
    uint64_t elapsed = now_ms > ex->start_ms ? now_ms - ex->start_ms : 0;
    /* what may have gone by now: a second's worth from the start, then the
     * rate (nginx counts whole seconds; milliseconds make it smoother) */
    unsigned __int128 allowed = (unsigned __int128)rate * (elapsed + 1000) / 1000;
    allowed += ex->limit_rate_after;
    if (allowed > ex->bytes_sent) {
        unsigned __int128 room = allowed - ex->bytes_sent;
        if (room >= queued)
            return room > UINT64_MAX - 1 ? UINT64_MAX - 1 : (uint64_t)room;
        /* a partial write now; the rest when a useful amount more is due */
    }
    uint64_t behind = allowed >= ex->bytes_sent ? 0 : ex->bytes_sent - (uint64_t)allowed;
    uint64_t have = allowed > ex->bytes_sent ? (uint64_t)(allowed - ex->bytes_sent) : 0;
    uint64_t chunk = queued - have;
    uint64_t step = rate / 8 + 1; /* about 8 writes a second at most */
    if (chunk > step)
        chunk = step;
    unsigned __int128 ms = ((unsigned __int128)(behind + chunk) * 1000 + rate - 1) / rate;
    *wait_ms = ms < 1 ? 1 : ms > 60000 ? 60000 : (uint32_t)ms;
    return have;
}

static int set_rate(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    struct limit_conf *c = &((struct loc_conf *)conf)->limits;
    bool after = !strcmp(d->name, "limit_rate_after");
    struct tmpl **slot = after ? &c->rate_after : &c->rate;
    if (*slot)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    const char *a = n->args[0];
    uint64_t v;
    if (!strchr(a, '$') && limit_rate_parse(slice_cstr(a), &v) < 0)
        return cf_error(cx, n, "invalid value \"%s\"", a);
    *slot = conf_tmpl(cx, n, a);
    return *slot ? 0 : -1;
}

#define LOC_ANY (CF_HTTP | CF_SERVER | CF_LOCATION)
#define OFF_LIM offsetof(struct loc_conf, limits)

static const struct cf_directive limit_directives[] = {
    {"limit_req_zone", CF_HTTP, 2, 4, false, set_zone, CONF_LOC, 0, "key zone=name:size rate=rate",
     "-",
     "a zone of request rates per key (empty key: not counted); rate in r/s or r/m; one node "
     "of about 112 bytes per key, the least recently used go when it is full"},
    {"limit_req", LOC_ANY, 1, 4, false, set_limit_req, CONF_LOC, 0,
     "zone=name [burst=number] [nodelay | delay=number]", "-",
     "at most the zone's rate per key: requests over it wait to fit it (up to burst of them; "
     "nodelay: answered at once; delay=N: the first N at once), beyond burst "
     "limit_req_status; several rules: all apply"},
    {"limit_req_status", LOC_ANY, 1, 1, false, set_status, CONF_LOC, OFF_LIM, "code", "503",
     "the status of rejected requests"},
    {"limit_req_log_level", LOC_ANY, 1, 1, false, set_log_level, CONF_LOC, OFF_LIM,
     "info | notice | warn | error", "error",
     "level of the \"limiting requests\" line (delays: one level lower)"},
    {"limit_req_dry_run", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LIM + offsetof(struct limit_conf, req_dry_run), "on | off", "off",
     "count and log, but neither delay nor reject"},
    {"limit_conn_zone", CF_HTTP, 2, 2, false, set_zone, CONF_LOC, 0, "key zone=name:size", "-",
     "a zone of requests in progress per key"},
    {"limit_conn", LOC_ANY, 2, 2, false, set_limit_conn, CONF_LOC, 0, "zone number", "-",
     "at most number requests in progress per key at once (HTTP/2 streams count one each); "
     "more get limit_conn_status"},
    {"limit_conn_status", LOC_ANY, 1, 1, false, set_status, CONF_LOC, OFF_LIM, "code", "503",
     "the status of rejected requests"},
    {"limit_conn_log_level", LOC_ANY, 1, 1, false, set_log_level, CONF_LOC, OFF_LIM,
     "info | notice | warn | error", "error", "level of the \"limiting connections\" line"},
    {"limit_conn_dry_run", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LIM + offsetof(struct limit_conf, conn_dry_run), "on | off", "off",
     "count and log, but do not reject"},
    {"limit_rate", LOC_ANY, 1, 1, false, set_rate, CONF_LOC, 0, "rate", "0",
     "response bytes per second to a client, per request (0: no limit); variables allowed; "
     "set $limit_rate chooses it per request"},
    {"limit_rate_after", LOC_ANY, 1, 1, false, set_rate, CONF_LOC, 0, "size", "0",
     "this much of a response goes at full speed before limit_rate applies"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module limit_cf_module = {"limits", limit_directives};

int limits_finish(struct snapshot *s, char *err, size_t errlen)
{
    for (size_t i = 0; i < s->nlimit_zones; i++) {
        struct limit_zone_decl *d = s->limit_zones[i];
        if (!d->size) {
            snprintf(err, errlen, "%s:%d: zero size shared memory zone \"%s\"", d->file, d->line,
                     d->name);
            return -1;
        }
    }
    return 0;
}

void limits_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->nlimit_zones; i++) {
        zone_put(s->limit_zones[i]->zone);
        s->limit_zones[i]->zone = NULL;
    }
    s->nlimit_zones = 0;
}

/* ---- requests ---- */

static void limit_log(struct exchange *ex, int level, const char *what, const char *zone,
                      int64_t excess, bool show_excess, bool dry)
{
    if (!log_enabled((enum log_level)level))
        return;
    char peer[64];
    net_addr_ip(ex->peer, peer, sizeof(peer));
    if (show_excess)
        log_write((enum log_level)level,
                  "*%llu %s%s, excess: %lld.%03lld by zone \"%s\", client: %s, request: \"%.*s\"",
                  (unsigned long long)ex->id, what, dry ? ", dry run" : "",
                  (long long)(excess / 1000), (long long)(excess % 1000), zone, peer,
                  (int)ex->request_line.len, ex->request_line.p);
    else
        log_write((enum log_level)level, "*%llu %s%s by zone \"%s\", client: %s, request: \"%.*s\"",
                  (unsigned long long)ex->id, what, dry ? ", dry run" : "", zone, peer,
                  (int)ex->request_line.len, ex->request_line.p);
}

/* What a rule changed, to put back when a later rule rejects (nginx counts a
 * request only where every rule let it through). */
struct req_undo {
    struct limit_zone *zone;
    uint32_t node;
    uint64_t hash, last_ms;
    int64_t excess;
    bool fresh;
};

static void undo_rules(struct req_undo *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct limit_zone *z = u[i].zone;
        pthread_mutex_lock(&z->lock);
        struct lnode *nd = &z->nodes[u[i].node];
        if (nd->used && nd->hash == u[i].hash) { /* (not evicted meanwhile) */
            if (u[i].fresh && !nd->conns) {
                evict(z, u[i].node);
            } else {
                nd->excess = u[i].excess;
                nd->last_ms = u[i].last_ms;
            }
        }
        pthread_mutex_unlock(&z->lock);
    }
}

enum limit_verdict limit_req_check(struct exchange *ex, uint64_t *delay_ms)
{
    const struct limit_conf *c = &ex->lc->limits;
    uint64_t now = loop_now_ms(ex->loop);
    uint64_t delay = 0;
    *delay_ms = 0;
    struct req_undo undo[16];
    size_t nundo = 0;
    bool dry_delay = false;
    if (c->nreq)
        ex->limit_req_st = LIMIT_ST_PASSED;
    for (size_t i = 0; i < c->nreq; i++) {
        const struct limit_req_rule *r = &c->req[i];
        const struct limit_zone_decl *d = r->decl;
        struct slice key = tmpl_eval(ex, d->key, ESC_NONE);
        if (!key.len)
            continue; /* not counted, as nginx */
        struct limit_zone *z = d->zone;
        pthread_mutex_lock(&z->lock);
        bool fresh;
        struct lnode *n = node_get(z, key, now, &fresh);
        if (n && nundo < sizeof(undo) / sizeof(undo[0]))
            undo[nundo++] = (struct req_undo){z,
                                              (uint32_t)(n - z->nodes),
                                              n->hash,
                                              fresh ? now : n->last_ms,
                                              fresh ? 0 : n->excess,
                                              fresh};
        if (!n || fresh) { /* a key's first request starts its bucket empty, as nginx */
            pthread_mutex_unlock(&z->lock);
            continue;
        }
        int64_t ms = now > n->last_ms ? (int64_t)(now - n->last_ms) : 0;
        int64_t excess = n->excess - (int64_t)(d->rate_milli * (uint64_t)ms / 1000) + 1000;
        if (excess < 0)
            excess = 0;
        if ((uint64_t)excess > r->burst_milli) {
            pthread_mutex_unlock(&z->lock);
            limit_log(ex, c->req_log_level, "limiting requests", d->name, excess, true,
                      c->req_dry_run);
            if (c->req_dry_run) {
                ex->limit_req_st = LIMIT_ST_REJECTED_DRY_RUN;
                continue;
            }
            undo_rules(undo, nundo - 1); /* the earlier rules do not count it */
            ex->limit_req_st = LIMIT_ST_REJECTED;
            return LIMIT_REJECT;
        }
        n->excess = excess;
        n->last_ms = now;
        pthread_mutex_unlock(&z->lock);
        if ((uint64_t)excess > r->delay_milli) {
            uint64_t w = ((uint64_t)excess - r->delay_milli) * 1000 / d->rate_milli;
            limit_log(ex, c->req_log_level < LOG_INFO ? c->req_log_level + 1 : LOG_INFO,
                      "delaying request", d->name, excess, true, c->req_dry_run);
            if (!c->req_dry_run && w > delay)
                delay = w;
            dry_delay |= c->req_dry_run;
        }
    }
    if (delay)
        ex->limit_req_st = LIMIT_ST_DELAYED;
    else if (dry_delay && ex->limit_req_st == LIMIT_ST_PASSED)
        ex->limit_req_st = LIMIT_ST_DELAYED_DRY_RUN;
    *delay_ms = delay;
    return delay ? LIMIT_DELAY : LIMIT_PASS;
}

struct limit_hold {
    struct limit_zone *zone; /* referenced while held */
    uint32_t node;
};

enum limit_verdict limit_conn_take(struct exchange *ex)
{
    const struct limit_conf *c = &ex->lc->limits;
    if (ex->limit_holds)
        return LIMIT_PASS; /* taken before an internal redirect: counted once */
    struct limit_hold *h = arena_alloc(&ex->arena, c->nconn * sizeof(*h));
    if (!h)
        return LIMIT_REJECT;
    size_t k = 0;
    uint64_t now = loop_now_ms(ex->loop);
    if (c->nconn)
        ex->limit_conn_st = LIMIT_ST_PASSED;
    for (size_t i = 0; i < c->nconn; i++) {
        const struct limit_conn_rule *r = &c->conn[i];
        struct slice key = tmpl_eval(ex, r->decl->key, ESC_NONE);
        if (!key.len)
            continue;
        struct limit_zone *z = r->decl->zone;
        pthread_mutex_lock(&z->lock);
        bool fresh;
        struct lnode *n = node_get(z, key, now, &fresh);
        bool over = !n || n->conns >= r->max;
        if (!over)
            n->conns++;
        pthread_mutex_unlock(&z->lock);
        if (over) {
            limit_log(ex, c->conn_log_level, "limiting connections", r->decl->name, 0, false,
                      c->conn_dry_run);
            if (c->conn_dry_run) {
                ex->limit_conn_st = LIMIT_ST_REJECTED_DRY_RUN;
                continue;
            }
            ex->limit_conn_st = LIMIT_ST_REJECTED;
            ex->limit_holds = h;
            ex->nlimit_holds = k;
            limit_conn_release(ex);
            return LIMIT_REJECT;
        }
        pthread_mutex_lock(&registry_lock);
        z->refs++;
        pthread_mutex_unlock(&registry_lock);
        h[k++] = (struct limit_hold){z, (uint32_t)(n - z->nodes)};
    }
    ex->limit_holds = h;
    ex->nlimit_holds = k;
    return LIMIT_PASS;
}

void limit_conn_release(struct exchange *ex)
{
    struct limit_hold *h = ex->limit_holds;
    for (size_t i = 0; i < ex->nlimit_holds; i++) {
        struct limit_zone *z = h[i].zone;
        pthread_mutex_lock(&z->lock);
        if (z->nodes[h[i].node].conns)
            z->nodes[h[i].node].conns--;
        pthread_mutex_unlock(&z->lock);
        zone_put(z);
    }
    ex->nlimit_holds = 0;
}
