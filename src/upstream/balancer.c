/* Balancing algorithms behind struct ups_balancer, and the selection that
 * chains them: primary tier, backup tier, then nginx's "all failed: try them
 * anyway". Every worker picks from the same group at once: shared state is
 * atomics, plus the smooth round-robin's tiny per-group spin flag (its
 * update of every server's current weight must be one step). */
#include "upstream/upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint32_t ups_hash32(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    /* murmur3's finalizer: FNV alone leaves the low bits weak for % n */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static uint32_t rehash(uint32_t h, uint32_t n)
{
    uint32_t v[2] = {h, n};
    return ups_hash32(v, sizeof(v));
}

static uint64_t rand64(void)
{
    static _Thread_local uint64_t state;
    if (!state) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        state = ((uint64_t)(uintptr_t)&state * 0x9e3779b97f4a7c15ull) ^ (uint64_t)ts.tv_nsec ^
                ((uint64_t)ts.tv_sec << 32) ^ 1;
    }
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
}

bool ups_server_usable(const struct ups_server *s, uint64_t now_ms)
{
    if (s->down || atomic_load_explicit(&s->hc.down, memory_order_relaxed))
        return false;
    uint64_t until = atomic_load_explicit(&s->failed_until_ms, memory_order_relaxed);
    if (until && now_ms < until)
        return false;
    until = atomic_load_explicit(&s->ejected_until_ms, memory_order_relaxed);
    if (until && now_ms < until)
        return false;
    return !s->max_conns || atomic_load_explicit(&s->active, memory_order_relaxed) < s->max_conns;
}

int ups_server_weight(const struct ups_server *s, uint64_t now_ms)
{
    int w = s->weight * UPS_WEIGHT_SCALE;
    if (!s->slow_start_ms)
        return w;
    uint64_t rs = atomic_load_explicit(&s->ramp_start_ms, memory_order_relaxed);
    if (!rs)
        return w;
    if (now_ms < rs)
        return 1;
    uint64_t el = now_ms - rs;
    if (el >= s->slow_start_ms)
        return w;
    return 1 + (int)((uint64_t)(w - 1) * el / s->slow_start_ms);
}

static bool eligible(const struct ups_group *g, size_t i, const struct ups_pick_ctx *cx,
                     bool backup)
{
    const struct ups_server *s = &g->servers[i];
    return s->backup == backup && !ups_tried_has(cx->tried, i) && ups_server_usable(s, cx->now_ms);
}

/* ---- smooth weighted round-robin ---- */

/* As nginx: every pick adds each candidate's weight to its current value,
 * takes the largest, and subtracts the total from it. Weights 5,1,1 give
 * a a b a c a a, not a a a a a b c. */
static struct ups_server *rr_tier(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup,
                                  bool ignore_fails)
{
    struct ups_server *best = NULL;
    int total = 0;
    size_t best_i = 0;
    while (atomic_exchange_explicit(&g->rr_lock, 1, memory_order_acquire))
        ;
    for (size_t i = 0; i < g->nservers; i++) {
        struct ups_server *s = &g->servers[i];
        if (ignore_fails) {
            /* an active check's verdict stands even then (NGINX Plus) */
            if (s->backup != backup || ups_tried_has(cx->tried, i) || s->down ||
                atomic_load_explicit(&s->hc.down, memory_order_relaxed) ||
                (s->max_conns &&
                 atomic_load_explicit(&s->active, memory_order_relaxed) >= s->max_conns))
                continue;
        } else if (!eligible(g, i, cx, backup)) {
            continue;
        }
        int w = ups_server_weight(s, cx->now_ms);
        g->rr_current[i] += w;
        total += w;
        if (!best || g->rr_current[i] > g->rr_current[best_i]) {
            best = s;
            best_i = i;
        }
    }
    if (best)
        g->rr_current[best_i] -= total;
    atomic_store_explicit(&g->rr_lock, 0, memory_order_release);
    return best;
}

static struct ups_server *rr_pick(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup)
{
    return rr_tier(g, cx, backup, false);
}

/* ---- least_conn, least_time: fewest active connections per weight ---- */

/* Lower score wins; `cost` is 1 for least_conn, the EWMA time for
 * least_time. Ties go round a rotating start so equal servers share. */
static struct ups_server *least_pick(struct ups_group *g, const struct ups_pick_ctx *cx,
                                     bool backup, bool timed)
{
    size_t n = g->nservers;
    size_t start = atomic_fetch_add_explicit(&g->lc_start, 1, memory_order_relaxed) % n;
    struct ups_server *best = NULL;
    double best_score = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (!eligible(g, i, cx, backup))
            continue;
        struct ups_server *s = &g->servers[i];
        double active = atomic_load_explicit(&s->active, memory_order_relaxed);
        double score;
        if (timed) {
            _Atomic uint32_t *e =
                g->least_time == UPS_TIME_HEADER ? &s->ewma_header_x16 : &s->ewma_last_byte_x16;
            double t = atomic_load_explicit(e, memory_order_relaxed);
            score = (t + 16) * (active + 1) / ups_server_weight(s, cx->now_ms);
        } else {
            score = active / ups_server_weight(s, cx->now_ms);
        }
        if (!best || score < best_score) {
            best = s;
            best_score = score;
        }
    }
    return best;
}

static struct ups_server *lc_pick(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup)
{
    return least_pick(g, cx, backup, false);
}

static struct ups_server *lt_pick(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup)
{
    return least_pick(g, cx, backup, true);
}

/* ---- hash, ip_hash ---- */

/* nginx's scheme: hash % total weight over the primary servers (all of
 * them, so the mapping does not move when one is down), rehash up to 20
 * times while the server found is not usable, then round-robin. */
static struct ups_server *hash_key_pick(struct ups_group *g, const struct ups_pick_ctx *cx,
                                        const void *key, size_t len)
{
    uint32_t total = 0;
    for (size_t i = 0; i < g->nservers; i++)
        if (!g->servers[i].backup)
            total += (uint32_t)g->servers[i].weight;
    if (!total)
        return NULL;
    uint32_t h = ups_hash32(key, len);
    for (uint32_t t = 0; t < 20; t++) {
        uint32_t w = h % total;
        for (size_t i = 0; i < g->nservers; i++) {
            const struct ups_server *s = &g->servers[i];
            if (s->backup)
                continue;
            if (w < (uint32_t)s->weight) {
                if (eligible(g, i, cx, false))
                    return &g->servers[i];
                break;
            }
            w -= (uint32_t)s->weight;
        }
        h = rehash(h, t);
    }
    return rr_tier(g, cx, false, false);
}

static struct ups_server *hash_pick(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup)
{
    if (backup)
        return rr_tier(g, cx, true, false);
    return hash_key_pick(g, cx, cx->key.p ? cx->key.p : "", cx->key.len);
}

static struct ups_server *ip_hash_pick(struct ups_group *g, const struct ups_pick_ctx *cx,
                                       bool backup)
{
    if (backup)
        return rr_tier(g, cx, true, false);
    const struct net_addr *a = cx->client;
    if (a && a->sa.ss_family == AF_INET)
        return hash_key_pick(g, cx, &a->in4.sin_addr, 3); /* the /24, as nginx */
    if (a && a->sa.ss_family == AF_INET6)
        return hash_key_pick(g, cx, &a->in6.sin6_addr, 16);
    return hash_key_pick(g, cx, "", 0);
}

/* ---- consistent hash (ketama) ---- */

static int point_cmp(const void *a, const void *b)
{
    const struct ups_ring_point *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash ? 1 : (int)x->server - (int)y->server;
}

int ups_ring_build(struct arena *a, struct ups_group *g)
{
    /* 160 points per weight unit as nginx, scaled down past 1000 units so a
     * big group stays under 160,000 points */
    uint64_t total = 0;
    for (size_t i = 0; i < g->nservers; i++)
        if (!g->servers[i].backup)
            total += (uint64_t)g->servers[i].weight;
    double scale = total > 1000 ? 1000.0 / (double)total : 1.0;
    size_t n = 0;
    for (size_t i = 0; i < g->nservers; i++)
        if (!g->servers[i].backup)
            n += (size_t)(160 * g->servers[i].weight * scale) + 1;
    g->ring = arena_alloc(a, n * sizeof(*g->ring) + 1);
    if (!g->ring)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < g->nservers; i++) {
        const struct ups_server *s = &g->servers[i];
        if (s->backup)
            continue;
        size_t pts = (size_t)(160 * s->weight * scale) + 1;
        for (size_t j = 0; j < pts; j++) {
            char buf[96];
            int len = snprintf(buf, sizeof(buf), "%s-%zu", s->addr_text, j);
            g->ring[k].hash = ups_hash32(buf, (size_t)len);
            g->ring[k].server = (uint32_t)i;
            k++;
        }
    }
    qsort(g->ring, k, sizeof(*g->ring), point_cmp);
    g->nring = k;
    return 0;
}

static struct ups_server *chash_pick(struct ups_group *g, const struct ups_pick_ctx *cx,
                                     bool backup)
{
    if (backup || !g->nring)
        return rr_tier(g, cx, backup, false);
    uint32_t h = ups_hash32(cx->key.p ? cx->key.p : "", cx->key.len);
    size_t lo = 0, hi = g->nring;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->ring[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* walk clockwise to the first usable server */
    uint64_t seen = 0;
    for (size_t k = 0; k < g->nring; k++) {
        uint32_t i = g->ring[(lo + k) % g->nring].server;
        if (seen & (1ull << i))
            continue;
        seen |= 1ull << i;
        if (eligible(g, i, cx, false))
            return &g->servers[i];
        if (__builtin_popcountll(seen) >= 20)
            break;
    }
    return rr_tier(g, cx, false, false);
}

/* ---- random, random two (power of two choices, least_conn) ---- */

static struct ups_server *random_one(struct ups_group *g, const struct ups_pick_ctx *cx,
                                     bool backup, uint64_t total)
{
    uint64_t r = rand64() % total;
    for (size_t i = 0; i < g->nservers; i++) {
        if (!eligible(g, i, cx, backup))
            continue;
        uint64_t w = (uint64_t)ups_server_weight(&g->servers[i], cx->now_ms);
        if (r < w)
            return &g->servers[i];
        r -= w;
    }
    return NULL; /* the set changed under us */
}

static uint64_t eligible_weight(struct ups_group *g, const struct ups_pick_ctx *cx, bool backup)
{
    uint64_t total = 0;
    for (size_t i = 0; i < g->nservers; i++)
        if (eligible(g, i, cx, backup))
            total += (uint64_t)ups_server_weight(&g->servers[i], cx->now_ms);
    return total;
}

static struct ups_server *random_pick(struct ups_group *g, const struct ups_pick_ctx *cx,
                                      bool backup)
{
    uint64_t total = eligible_weight(g, cx, backup);
    return total ? random_one(g, cx, backup, total) : NULL;
}

static struct ups_server *random_two_pick(struct ups_group *g, const struct ups_pick_ctx *cx,
                                          bool backup)
{
    uint64_t total = eligible_weight(g, cx, backup);
    if (!total)
        return NULL;
    struct ups_server *a = random_one(g, cx, backup, total);
    struct ups_server *b = random_one(g, cx, backup, total);
    if (!a || !b)
        return a ? a : b;
    /* active/weight, compared without division */
    int64_t la = atomic_load_explicit(&a->active, memory_order_relaxed);
    int64_t lb = atomic_load_explicit(&b->active, memory_order_relaxed);
    return lb * a->weight < la * b->weight ? b : a;
}

const struct ups_balancer ups_round_robin = {"round_robin", rr_pick};
const struct ups_balancer ups_least_conn = {"least_conn", lc_pick};
const struct ups_balancer ups_least_time = {"least_time", lt_pick};
const struct ups_balancer ups_ip_hash = {"ip_hash", ip_hash_pick};
const struct ups_balancer ups_hash = {"hash", hash_pick};
const struct ups_balancer ups_hash_consistent = {"hash_consistent", chash_pick};
const struct ups_balancer ups_random = {"random", random_pick};
const struct ups_balancer ups_random_two = {"random_two", random_two_pick};

/* ---- selection ---- */

struct ups_server *ups_select(struct ups_group *g, const struct ups_pick_ctx *cx)
{
    struct ups_server *s = g->balancer->pick(g, cx, false);
    if (!s)
        s = g->balancer->pick(g, cx, true);
    if (s || ups_tried_any(cx->tried))
        return s;
    /* Every server is marked failed: like nginx, try the primary ones anyway
     * rather than fail every request until fail_timeout ends. */
    return rr_tier(g, cx, false, true);
}

struct ups_server *ups_pick(struct ups_group *g, uint64_t tried64, uint64_t now_ms)
{
    struct ups_tried t = {.w = {tried64}};
    struct ups_pick_ctx cx = {.tried = &t, .now_ms = now_ms};
    return ups_select(g, &cx);
}

bool ups_has_candidate(const struct ups_group *g, const struct ups_tried *tried, uint64_t now_ms)
{
    for (size_t i = 0; i < g->nservers; i++)
        if (!ups_tried_has(tried, i) && ups_server_usable(&g->servers[i], now_ms))
            return true;
    return false;
}

struct ups_server *ups_sticky_find(struct ups_group *g, struct slice id,
                                   const struct ups_tried *tried, uint64_t now_ms)
{
    if (id.len != sizeof(g->servers[0].sticky_id) - 1)
        return NULL;
    for (size_t i = 0; i < g->nservers; i++) {
        struct ups_server *s = &g->servers[i];
        if (memcmp(s->sticky_id, id.p, id.len) == 0)
            return !ups_tried_has(tried, i) && ups_server_usable(s, now_ms) ? s : NULL;
    }
    return NULL;
}
