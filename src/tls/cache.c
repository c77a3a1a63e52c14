/* ssl_session_cache shared:NAME:SIZE. Workers are threads of one process,
 * so the cache is plain memory: sessions serialized (DER) in 16 shards,
 * each with its own mutex, hash chains keyed by session id and an LRU list;
 * SIZE bytes are split evenly between shards. Caches are registered by name
 * so every server block (and the next config after a reload) naming the
 * same zone shares it. */
#include <stdlib.h>
#include <string.h>

#include "tls/tls_int.h"

#define NSHARDS         16
#define MAX_SESSION_DER 4096 /* as NGX_SSL_MAX_SESSION_SIZE */

struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* LRU, head = most recent */
    time_t expire;
    unsigned char id_len;
    unsigned char id[SSL_MAX_SSL_SESSION_ID_LENGTH];
    size_t der_len;
    unsigned char der[];
};

struct shard {
    pthread_mutex_t lock;
    struct entry **buckets;
    size_t nbuckets; /* power of two */
    struct entry *head, *tail;
    size_t used, budget;
};

struct tls_cache {
    struct tls_cache *next; /* registry */
    char *name;
    int refs; /* under registry_lock */
    struct shard shards[NSHARDS];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_cache *registry;

static uint64_t id_hash(const unsigned char *id, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ id[i]) * 1099511628211ull;
    return h;
}

static void lru_unlink(struct shard *s, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(struct shard *s, struct entry *e)
{
    e->prev = NULL;
    e->next = s->head;
    if (s->head)
        s->head->prev = e;
    s->head = e;
    if (!s->tail)
        s->tail = e;
}

static struct entry **find_slot(struct shard *s, uint64_t h, const unsigned char *id, size_t len)
{
    struct entry **pp = &s->buckets[(h >> 8) & (s->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->hnext)
        if ((*pp)->id_len == len && memcmp((*pp)->id, id, len) == 0)
            break;
    return pp;
}

static void remove_entry(struct shard *s, struct entry *e)
{
    struct entry **pp = find_slot(s, id_hash(e->id, e->id_len), e->id, e->id_len);
    if (*pp == e)
        *pp = e->hnext;
    lru_unlink(s, e);
    s->used -= sizeof(*e) + e->der_len;
    free(e);
}

static struct shard *shard_of(struct tls_cache *c, uint64_t h)
{
    return &c->shards[h & (NSHARDS - 1)];
}

/* ---- OpenSSL callbacks ---- */

/* OpenSSL calls these on the session_ctx (the listener's default context,
 * which the SSL was made from), not on the one SNI switched to. */
static struct tls_cache *cache_of(SSL *ssl)
{
    struct tls_ctx *c = tls_session_ctx_of(ssl);
    return c ? c->cache : NULL;
}

static int new_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_cache *c = cache_of(ssl);
    unsigned int id_len;
    const unsigned char *id = SSL_SESSION_get_id(sess, &id_len);
    int der_len = i2d_SSL_SESSION(sess, NULL);
    if (!c || id_len == 0 || der_len <= 0 || der_len > MAX_SESSION_DER)
        return 0;
    struct entry *e = malloc(sizeof(*e) + (size_t)der_len);
    if (!e)
        return 0;
    unsigned char *p = e->der;
    e->der_len = (size_t)i2d_SSL_SESSION(sess, &p);
    e->id_len = (unsigned char)id_len;
    memcpy(e->id, id, id_len);
    e->expire = (time_t)SSL_SESSION_get_time(sess) + (time_t)SSL_SESSION_get_timeout(sess);
    e->hnext = NULL;

    uint64_t h = id_hash(id, id_len);
    struct shard *s = shard_of(c, h);
    size_t need = sizeof(*e) + e->der_len;
    pthread_mutex_lock(&s->lock);
    struct entry **pp = find_slot(s, h, id, id_len);
    if (*pp)
        remove_entry(s, *pp);
    while (s->tail && s->used + need > s->budget)
        remove_entry(s, s->tail);
    if (need <= s->budget) {
        pp = find_slot(s, h, id, id_len);
        *pp = e;
        lru_push(s, e);
        s->used += need;
        e = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    free(e);
    return 0; /* we keep a copy, not OpenSSL's reference */
}

static SSL_SESSION *get_cb(SSL *ssl, const unsigned char *id, int id_len, int *copy)
{
    struct tls_cache *c = cache_of(ssl);
    *copy = 0;
    if (!c || id_len <= 0 || id_len > SSL_MAX_SSL_SESSION_ID_LENGTH)
        return NULL;
    uint64_t h = id_hash(id, (size_t)id_len);
    struct shard *s = shard_of(c, h);
    SSL_SESSION *sess = NULL;
    time_t now = time(NULL);
    pthread_mutex_lock(&s->lock);
    struct entry *e = *find_slot(s, h, id, (size_t)id_len);
    if (e && e->expire <= now) {
        remove_entry(s, e);
        e = NULL;
    }
    if (e) {
        const unsigned char *p = e->der;
        sess = d2i_SSL_SESSION(NULL, &p, (long)e->der_len);
        lru_unlink(s, e);
        lru_push(s, e);
    }
    pthread_mutex_unlock(&s->lock);
    return sess;
}

static void remove_cb(SSL_CTX *ctx, SSL_SESSION *sess)
{
    struct tls_ctx *tc = tls_ctx_of(ctx);
    struct tls_cache *c = tc ? tc->cache : NULL;
    unsigned int id_len;
    const unsigned char *id = SSL_SESSION_get_id(sess, &id_len);
    if (!c || id_len == 0)
        return;
    uint64_t h = id_hash(id, id_len);
    struct shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->lock);
    struct entry *e = *find_slot(s, h, id, id_len);
    if (e)
        remove_entry(s, e);
    pthread_mutex_unlock(&s->lock);
}

/* ---- registry ---- */

static struct tls_cache *cache_new(const char *name, size_t size)
{
    struct tls_cache *c = calloc(1, sizeof(*c));
    if (!c || !(c->name = strdup(name)))
        goto fail;
    if (size < NSHARDS * 8192)
        size = NSHARDS * 8192;
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &c->shards[i];
        s->budget = size / NSHARDS;
        s->nbuckets = 64;
        while (s->nbuckets * 512 < s->budget) /* ~2 sessions per chain when full */
            s->nbuckets <<= 1;
        if (!(s->buckets = calloc(s->nbuckets, sizeof(*s->buckets))))
            goto fail;
        pthread_mutex_init(&s->lock, NULL);
    }
    return c;
fail:
    if (c) {
        for (int i = 0; i < NSHARDS; i++)
            free(c->shards[i].buckets);
        free(c->name);
        free(c);
    }
    return NULL;
}

struct tls_cache *tls_cache_get(const char *name, size_t size_bytes)
{
    pthread_mutex_lock(&registry_lock);
    struct tls_cache *c = registry;
    while (c && strcmp(c->name, name) != 0)
        c = c->next;
    if (!c && (c = cache_new(name, size_bytes))) {
        c->next = registry;
        registry = c;
    }
    if (c)
        c->refs++;
    pthread_mutex_unlock(&registry_lock);
    return c;
}

void tls_cache_put(struct tls_cache *c)
{
    pthread_mutex_lock(&registry_lock);
    bool last = --c->refs == 0;
    if (last) {
        struct tls_cache **pp = &registry;
        while (*pp != c)
            pp = &(*pp)->next;
        *pp = c->next;
    }
    pthread_mutex_unlock(&registry_lock);
    if (!last)
        return;
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &c->shards[i];
        while (s->head) {
            struct entry *e = s->head;
            s->head = e->next;
            free(e);
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    free(c->name);
    free(c);
}

void tls_cache_attach(struct tls_cache *c, SSL_CTX *ssl)
{
    SSL_CTX_sess_set_new_cb(ssl, new_cb);
    SSL_CTX_sess_set_get_cb(ssl, get_cb);
    SSL_CTX_sess_set_remove_cb(ssl, remove_cb);
}
