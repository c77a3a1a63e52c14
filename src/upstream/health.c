/* Passive health: nginx's max_fails/fail_timeout, outlier ejection, slow
 * start after recovery, response-time averages for least_time, and the
 * retry budget. All of it is per-server or per-group atomics written by
 * every worker; a lost update costs one sample, never correctness. */
#include "upstream/upstream.h"

#include "core/log.h"

static void start_ramp(struct ups_server *s, uint64_t usable_at_ms)
{
    if (s->slow_start_ms)
        atomic_store_explicit(&s->ramp_start_ms, usable_at_ms, memory_order_relaxed);
}

void ups_server_failed(struct ups_server *s, uint64_t now_ms)
{
    if (s->max_fails == 0)
        return;
    uint64_t start = atomic_load_explicit(&s->window_start_ms, memory_order_relaxed);
    if (now_ms - start > s->fail_timeout_ms) {
        atomic_store_explicit(&s->window_start_ms, now_ms, memory_order_relaxed);
        atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
    }
    int fails = atomic_fetch_add_explicit(&s->fails, 1, memory_order_relaxed) + 1;
    if (fails >= s->max_fails) {
        atomic_store_explicit(&s->failed_until_ms, now_ms + s->fail_timeout_ms,
                              memory_order_relaxed);
        start_ramp(s, now_ms + s->fail_timeout_ms);
        LOG(LOG_WARN, "upstream server %s temporarily disabled for %ums after %d failure(s)",
            s->addr_text, s->fail_timeout_ms, fails);
    }
}

void ups_server_ok(struct ups_server *s)
{
    if (atomic_load_explicit(&s->fails, memory_order_relaxed) != 0)
        atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
    if (atomic_load_explicit(&s->failed_until_ms, memory_order_relaxed) != 0)
        atomic_store_explicit(&s->failed_until_ms, 0, memory_order_relaxed);
}

static size_t ejected_now(const struct ups_group *g, uint64_t now_ms)
{
    size_t n = 0;
    for (size_t i = 0; i < g->nservers; i++)
        if (atomic_load_explicit(&g->servers[i].ejected_until_ms, memory_order_relaxed) > now_ms)
            n++;
    return n;
}

void ups_outlier_report(struct ups_group *g, struct ups_server *s, bool failed, uint64_t now_ms)
{
    if (!g->od_consecutive)
        return;
    if (!failed) {
        if (atomic_load_explicit(&s->consecutive, memory_order_relaxed))
            atomic_store_explicit(&s->consecutive, 0, memory_order_relaxed);
        /* healthy for max_ejection since the last ejection: forgiven */
        if (atomic_load_explicit(&s->ejections, memory_order_relaxed) &&
            now_ms >= atomic_load_explicit(&s->ejected_until_ms, memory_order_relaxed) +
                          g->od_max_ejection_ms)
            atomic_store_explicit(&s->ejections, 0, memory_order_relaxed);
        return;
    }
    int c = atomic_fetch_add_explicit(&s->consecutive, 1, memory_order_relaxed) + 1;
    if (c < g->od_consecutive ||
        atomic_load_explicit(&s->ejected_until_ms, memory_order_relaxed) > now_ms)
        return;
    /* the count-then-eject must be one step across workers, or two of them
     * could each take the last slot of max_ejected_percent; rare path */
    while (atomic_exchange_explicit(&g->od_lock, 1, memory_order_acquire))
        ;
    size_t limit = g->nservers * (size_t)g->od_max_ejected_percent / 100;
    if (limit < 1)
        limit = 1;
    bool eject = ejected_now(g, now_ms) < limit &&
                 atomic_load_explicit(&s->ejected_until_ms, memory_order_relaxed) <= now_ms;
    uint64_t ms = 0;
    int k = 0;
    if (eject) {
        k = atomic_fetch_add_explicit(&s->ejections, 1, memory_order_relaxed) + 1;
        ms = (uint64_t)g->od_interval_ms * (uint64_t)k;
        if (ms > g->od_max_ejection_ms)
            ms = g->od_max_ejection_ms;
        atomic_store_explicit(&s->ejected_until_ms, now_ms + ms, memory_order_relaxed);
        atomic_store_explicit(&s->consecutive, 0, memory_order_relaxed);
        start_ramp(s, now_ms + ms);
    }
    atomic_store_explicit(&g->od_lock, 0, memory_order_release);
    if (eject)
        LOG(LOG_WARN,
            "upstream server %s ejected for %llums after %d consecutive failures "
            "(ejection %d)",
            s->addr_text, (unsigned long long)ms, c, k);
}

void ups_server_time(struct ups_server *s, enum ups_time_kind kind, uint64_t ms)
{
    _Atomic uint32_t *e = kind == UPS_TIME_HEADER ? &s->ewma_header_x16 : &s->ewma_last_byte_x16;
    uint64_t sample = (ms > 100000000 ? 100000000 : ms) * 16;
    uint64_t old = atomic_load_explicit(e, memory_order_relaxed);
    /* weight 1/8 for the new sample; 0 means "not measured yet" */
    uint64_t v = old ? old - old / 8 + sample / 8 : sample;
    atomic_store_explicit(e, (uint32_t)(v ? v : 1), memory_order_relaxed);
}

/* ---- retry budget: a sliding window of two buckets ---- */

static void budget_rotate(struct ups_group *g, uint64_t now_ms)
{
    uint64_t ws = atomic_load_explicit(&g->rb_window_start_ms, memory_order_relaxed);
    if (now_ms - ws < g->rb_interval_ms)
        return;
    if (!atomic_compare_exchange_strong(&g->rb_window_start_ms, &ws, now_ms))
        return; /* another worker rotates */
    uint32_t r = atomic_exchange(&g->rb_requests[0], 0);
    uint32_t t = atomic_exchange(&g->rb_retries[0], 0);
    if (now_ms - ws >= 2ull * g->rb_interval_ms)
        r = t = 0;
    atomic_store(&g->rb_requests[1], r);
    atomic_store(&g->rb_retries[1], t);
}

void ups_budget_request(struct ups_group *g, uint64_t now_ms)
{
    if (!g->rb_percent)
        return;
    budget_rotate(g, now_ms);
    atomic_fetch_add_explicit(&g->rb_requests[0], 1, memory_order_relaxed);
}

bool ups_budget_retry(struct ups_group *g, uint64_t now_ms)
{
    if (!g->rb_percent)
        return true;
    budget_rotate(g, now_ms);
    uint64_t ws = atomic_load_explicit(&g->rb_window_start_ms, memory_order_relaxed);
    double left = 1.0 - (double)(now_ms - ws) / g->rb_interval_ms;
    if (left < 0)
        left = 0;
    double reqs = atomic_load(&g->rb_requests[0]) + left * atomic_load(&g->rb_requests[1]);
    double rets = atomic_load(&g->rb_retries[0]) + left * atomic_load(&g->rb_retries[1]);
    /* at least one retry per interval, so a quiet group can still fail over */
    if (rets >= 1 && rets * 100 >= reqs * g->rb_percent)
        return false;
    atomic_fetch_add_explicit(&g->rb_retries[0], 1, memory_order_relaxed);
    return true;
}
