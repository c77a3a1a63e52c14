/* Active health checks: match evaluation, the state of each server under
 * its checks, and the one checker thread that probes them all. The thread
 * has its own loop; a probe is a non-blocking connect, one GET with
 * Connection: close, and the response read up to PROBE_BUF bytes, all
 * bounded by the check's interval. Workers only ever read the verdict
 * (ups_server.hc.down). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "upstream/check.h"

#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "http1/h1.h"
#include "net/net.h"

/* ---- match ---- */

static void *arena_malloc_cb(PCRE2_SIZE n, void *data)
{
    return arena_alloc(data, n);
}

static void arena_free_cb(void *p, void *data)
{
    (void)p;
    (void)data; /* freed with the snapshot's arena */
}

void *check_regex_compile(struct arena *a, const char *pattern, char *err, size_t errlen)
{
    /* the pattern's memory comes from the snapshot arena, so nothing has to
     * free it when the snapshot goes (no JIT: its memory is not ours) */
    pcre2_general_context *gc = pcre2_general_context_create(arena_malloc_cb, arena_free_cb, a);
    pcre2_compile_context *cc = gc ? pcre2_compile_context_create(gc) : NULL;
    if (!cc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &code, &off, cc);
    if (!re) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof(msg)) < 0)
            strcpy((char *)msg, "unknown error");
        snprintf(err, errlen, "pcre2_compile() failed: %s in \"%s\" at offset %zu",
                 (const char *)msg, pattern, (size_t)off);
    }
    return re;
}

static bool re_match(const void *re, struct slice subject)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md)
        return false;
    int rc = pcre2_match(re, (PCRE2_SPTR)(subject.p ? subject.p : ""), subject.len, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

int check_parse_status(struct check_cond *c, char *const *args, size_t nargs)
{
    size_t i = 0;
    c->kind = CHECK_STATUS;
    if (nargs && strcmp(args[0], "!") == 0) {
        c->negate = true;
        i++;
    }
    if (i == nargs)
        return -1;
    for (; i < nargs; i++) {
        const char *a = args[i];
        char *end;
        long lo = strtol(a, &end, 10), hi = lo;
        if (end == a)
            return -1;
        if (*end == '-') {
            const char *b = end + 1;
            hi = strtol(b, &end, 10);
            if (end == b)
                return -1;
        }
        if (*end || lo < 100 || hi > 599 || lo > hi || c->nranges == CHECK_MAX_RANGES)
            return -1;
        c->ranges[c->nranges].lo = (int)lo;
        c->ranges[c->nranges].hi = (int)hi;
        c->nranges++;
    }
    return 0;
}

static bool status_holds(const struct check_cond *c, int status)
{
    bool in = false;
    for (size_t i = 0; i < c->nranges && !in; i++)
        in = status >= c->ranges[i].lo && status <= c->ranges[i].hi;
    return in != c->negate;
}

/* nginx: `header N = v` / `~ re` hold if a field N has such a value; `!=` /
 * `!~` need the field present with no value that matches; `header N` needs
 * it present, `header ! N` absent. */
static bool header_holds(const struct check_cond *c, const struct http_field *f, size_t n)
{
    bool present = false, matched = false;
    for (size_t i = 0; i < n; i++) {
        if (!slice_eq_ci(f[i].name, c->name))
            continue;
        present = true;
        if (c->op == CHECK_OP_EQ)
            matched |= slice_eq(f[i].value, c->value);
        else if (c->op == CHECK_OP_REGEX)
            matched |= re_match(c->re, f[i].value);
    }
    if (c->op == CHECK_OP_EXISTS)
        return present != c->negate;
    return present && matched != c->negate;
}

bool check_match_eval(const struct check_match *m, int status, const struct http_field *fields,
                      size_t nfields, struct slice body)
{
    if (!m)
        return status >= 200 && status < 400;
    for (size_t i = 0; i < m->nconds; i++) {
        const struct check_cond *c = &m->conds[i];
        bool ok;
        switch (c->kind) {
        case CHECK_STATUS:
            ok = status_holds(c, status);
            break;
        case CHECK_HEADER:
            ok = header_holds(c, fields, nfields);
            break;
        default:
            ok = re_match(c->re, body) != c->negate;
            break;
        }
        if (!ok)
            return false;
    }
    return true;
}

/* ---- state ---- */

int check_group_add(struct arena *a, struct ups_group *g, struct ups_check *c)
{
    c->group = g;
    c->peers = arena_calloc(a, (g->nservers ? g->nservers : 1) * sizeof(*c->peers));
    if (!c->peers)
        return -1;
    if (c->mandatory) {
        for (size_t i = 0; i < g->nservers; i++) {
            struct ups_server *s = &g->servers[i];
            c->peers[i].unhealthy = c->peers[i].checking = true;
            atomic_fetch_add(&s->hc.down, 1);
            atomic_store(&s->hc.checking, true);
        }
    }
    struct ups_check **tail = &g->checks;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
    return 0;
}

/* Is server i still waiting for a first result from a mandatory check? */
static bool any_checking(const struct ups_group *g, size_t i)
{
    for (const struct ups_check *c = g->checks; c; c = c->next)
        if (c->peers[i].checking)
            return true;
    return false;
}

bool check_peer_result(struct ups_check *c, size_t i, bool ok, int status, uint64_t now_ms,
                       uint64_t wall_ms)
{
    struct ups_server *s = &c->group->servers[i];
    struct check_peer *p = &c->peers[i];
    atomic_fetch_add_explicit(&s->hc.checks, 1, memory_order_relaxed);
    if (!ok)
        atomic_fetch_add_explicit(&s->hc.fails, 1, memory_order_relaxed);
    atomic_store_explicit(&s->hc.last_status, status, memory_order_relaxed);
    atomic_store_explicit(&s->hc.last_ok, ok, memory_order_relaxed);
    atomic_store_explicit(&s->hc.last_ms, wall_ms, memory_order_relaxed);
    bool was_checking = p->checking;
    bool changed = false;
    p->checking = false;
    if (ok) {
        p->fail_run = 0;
        p->ok_run++;
        /* a mandatory check's first pass is enough to start */
        if (p->unhealthy && (was_checking || p->ok_run >= c->passes)) {
            p->unhealthy = false;
            changed = true;
            if (atomic_fetch_sub(&s->hc.down, 1) == 1 && s->slow_start_ms)
                atomic_store_explicit(&s->ramp_start_ms, now_ms, memory_order_relaxed);
        }
    } else {
        p->ok_run = 0;
        p->fail_run++;
        if (!p->unhealthy && p->fail_run >= c->fails) {
            p->unhealthy = true;
            changed = true;
            atomic_fetch_add(&s->hc.down, 1);
            atomic_fetch_add_explicit(&s->hc.unhealthy, 1, memory_order_relaxed);
        }
    }
    if (was_checking && !any_checking(c->group, i))
        atomic_store(&s->hc.checking, false);
    return changed;
}

/* ---- the checker thread ---- */

#define PROBE_BUF    (64 * 1024)
#define PROBE_FIELDS 100

enum probe_phase { PR_IDLE, PR_CONNECTING, PR_SENDING, PR_READING };

struct probe {
    struct ups_check *check;
    size_t idx;
    struct net_addr addr;
    struct io io;       /* fd -1 while idle */
    struct timer timer; /* next check while idle, the deadline while running */
    enum probe_phase phase;
    char *req;
    size_t req_len, sent;
    char *buf; /* PROBE_BUF bytes, while running */
    size_t len;
    bool eof;
};

/* The probes of one config generation. Freed after the loop turn that
 * drops it: an event of this turn may still name one of its io. */
struct probe_set {
    struct posted release;
    size_t n;
    struct probe p[];
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool running;
    struct loop *loop;
    /* asked by the main thread, under mu */
    struct ups_group *const *groups;
    size_t ngroups;
    uint64_t asked, done;
    bool stop;
    /* the checker thread's own */
    struct probe_set *set;
    uint64_t rng;
} ck = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t jitter(uint32_t max_ms)
{
    if (!max_ms)
        return 0;
    ck.rng ^= ck.rng << 13;
    ck.rng ^= ck.rng >> 7;
    ck.rng ^= ck.rng << 17;
    return (uint32_t)(ck.rng % ((uint64_t)max_ms + 1));
}

static void probe_start(struct timer *t);

static void probe_close(struct probe *p)
{
    if (p->io.fd >= 0) {
        loop_io_del(ck.loop, &p->io);
        close(p->io.fd);
        p->io.fd = -1;
    }
    timer_cancel(&p->timer);
    free(p->buf);
    p->buf = NULL;
    p->phase = PR_IDLE;
}

static void probe_finish(struct probe *p, bool ok, int status, const char *why)
{
    probe_close(p);
    struct ups_check *c = p->check;
    struct ups_server *s = &c->group->servers[p->idx];
    loop_update_time(ck.loop);
    if (check_peer_result(c, p->idx, ok, status, loop_now_ms(ck.loop), wall_ms())) {
        if (ok)
            LOG(LOG_NOTICE, "upstream server %s of \"%s\" is healthy: health check passed",
                s->addr_text, c->group->name);
        else
            LOG(LOG_WARN, "upstream server %s of \"%s\" is unhealthy: %s", s->addr_text,
                c->group->name, why);
    }
    p->timer.cb = probe_start;
    timer_set(ck.loop, &p->timer, c->interval_ms + jitter(c->jitter_ms));
}

static void probe_timeout(struct timer *t)
{
    struct probe *p = t->data;
    probe_finish(p, false, 0,
                 p->phase == PR_CONNECTING ? "connect timed out" : "response timed out");
}

/* Is the body of the response in p->buf complete (or as much as we keep)?
 * Sets *body. 1 ready, 0 wait, -1 broken framing. `scratch` holds a
 * de-chunked body. */
static int probe_body(struct probe *p, const struct h1_response *r, char *scratch,
                      struct slice *body)
{
    const char *b = p->buf + r->head_len;
    size_t have = p->len - r->head_len;
    bool full = p->len == PROBE_BUF;
    switch (h1_response_body_kind(r, HTTP_M_GET)) {
    case H1_BODY_NONE:
        *body = SLICE_NULL;
        return 1;
    case H1_BODY_LENGTH:
        if (have >= (uint64_t)r->content_length || full) {
            *body = slice_make(b, have < (uint64_t)r->content_length ? have
                                                                     : (size_t)r->content_length);
            return 1;
        }
        return p->eof ? -1 : 0;
    case H1_BODY_UNTIL_CLOSE:
        *body = slice_make(b, have);
        return p->eof || full ? 1 : 0;
    default: {
        struct h1_chunked d;
        h1_chunked_init(&d, 4096);
        size_t off = 0, out = 0;
        for (;;) {
            size_t used;
            struct slice data;
            enum h1_error e;
            enum h1_result res = h1_chunked_decode(&d, b + off, have - off, &used, &data, NULL, &e);
            memcpy(scratch + out, data.p, data.len);
            out += data.len;
            off += used;
            *body = slice_make(scratch, out);
            if (res == H1_DONE)
                return 1;
            if (res == H1_ERROR)
                return -1;
            if (used == 0)
                return full ? 1 : p->eof ? -1 : 0;
        }
    }
    }
}

static void probe_evaluate(struct probe *p)
{
    struct http_field fields[PROBE_FIELDS];
    struct h1_response r;
    enum h1_error e = H1E_NONE;
    struct h1_limits lim = {
        .max_request_line = 8192, .max_head = PROBE_BUF, .max_fields = PROBE_FIELDS};
    for (;;) {
        enum h1_result res = h1_parse_response(p->buf, p->len, &lim, fields, PROBE_FIELDS, &r, &e);
        if (res == H1_ERROR) {
            probe_finish(p, false, 0, "invalid response");
            return;
        }
        if (res == H1_INCOMPLETE) {
            if (p->eof || p->len == PROBE_BUF)
                probe_finish(p, false, 0, p->eof ? "closed before a response" : "head too large");
            return;
        }
        if (r.status >= 200)
            break;
        /* an interim response (103): the final one follows */
        memmove(p->buf, p->buf + r.head_len, p->len - r.head_len);
        p->len -= r.head_len;
    }
    const struct check_match *m = p->check->match;
    struct slice body = SLICE_NULL;
    char *scratch = NULL;
    if (m && m->needs_body) {
        scratch = malloc(PROBE_BUF);
        int rc = scratch ? probe_body(p, &r, scratch, &body) : -1;
        if (rc <= 0) {
            free(scratch);
            if (rc < 0)
                probe_finish(p, false, r.status, "invalid response body");
            return;
        }
    }
    bool ok = check_match_eval(m, r.status, fields, r.nfields, body);
    free(scratch);
    char why[96];
    snprintf(why, sizeof(why), "status %d does not match%s%s", r.status, m ? " " : "",
             m ? m->name : " 2xx/3xx");
    probe_finish(p, ok, r.status, ok ? "" : m && m->nconds ? "response does not match" : why);
}

static void probe_event(struct io *io, uint32_t events)
{
    (void)events;
    struct probe *p = io->data;
    if (p->phase == PR_CONNECTING) {
        if (!io->writable && !io->hup)
            return;
        int err = net_connect_result(io->fd);
        if (err) {
            char why[96];
            snprintf(why, sizeof(why), "connect() failed (%d: %s)", err, strerror(err));
            probe_finish(p, false, 0, why);
            return;
        }
        if (p->check->tcp) {
            probe_finish(p, true, 0, "");
            return;
        }
        p->phase = PR_SENDING;
    }
    if (p->phase == PR_SENDING) {
        while (p->sent < p->req_len) {
            ssize_t n = write(io->fd, p->req + p->sent, p->req_len - p->sent);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN) {
                io->writable = false;
                return;
            }
            if (n <= 0) {
                probe_finish(p, false, 0, "send() failed");
                return;
            }
            p->sent += (size_t)n;
        }
        p->phase = PR_READING;
        p->buf = malloc(PROBE_BUF);
        if (!p->buf) {
            probe_finish(p, false, 0, "out of memory");
            return;
        }
        p->len = 0;
        p->eof = false;
        io->readable = true; /* the answer may already be there */
    }
    if (p->phase != PR_READING || !io->readable)
        return;
    while (p->len < PROBE_BUF && !p->eof) {
        ssize_t n = read(io->fd, p->buf + p->len, PROBE_BUF - p->len);
        if (n > 0) {
            p->len += (size_t)n;
        } else if (n == 0) {
            p->eof = true;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN) {
            io->readable = false;
            break;
        } else {
            p->eof = true; /* reset: judge what arrived */
        }
    }
    probe_evaluate(p);
}

static void probe_start(struct timer *t)
{
    struct probe *p = t->data;
    struct ups_check *c = p->check;
    const struct ups_server *srv = &c->group->servers[p->idx];
    if (srv->resolve) {
        /* re-resolved since the probe set was built: follow it */
        in_port_t port =
            p->addr.sa.ss_family == AF_INET6 ? p->addr.in6.sin6_port : p->addr.in4.sin_port;
        p->addr = *ups_server_addr(srv);
        if (p->addr.sa.ss_family == AF_INET6)
            p->addr.in6.sin6_port = port;
        else
            p->addr.in4.sin_port = port;
    }
    int fd = net_connect(&p->addr);
    if (fd < 0) {
        char why[96];
        snprintf(why, sizeof(why), "connect() failed (%d: %s)", errno, strerror(errno));
        probe_finish(p, false, 0, why);
        return;
    }
    p->io = (struct io){.fd = fd, .cb = probe_event, .data = p};
    if (loop_io_add(ck.loop, &p->io) < 0) {
        close(fd);
        p->io.fd = -1;
        probe_finish(p, false, 0, "epoll_ctl() failed");
        return;
    }
    p->phase = PR_CONNECTING;
    p->sent = 0;
    p->timer.cb = probe_timeout;
    timer_set(ck.loop, &p->timer, c->interval_ms);
}

static void dropped_event(struct io *io, uint32_t events)
{
    (void)io;
    (void)events;
}

static void set_release(struct posted *po)
{
    struct probe_set *set = po->data;
    for (size_t i = 0; i < set->n; i++)
        free(set->p[i].req);
    free(set);
}

static void set_drop(struct probe_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++) {
        probe_close(&set->p[i]);
        set->p[i].io.cb = dropped_event;
    }
    posted_init(&set->release, set_release, set);
    loop_post(ck.loop, &set->release);
}

/* The old probe of the same group name, position among its checks and
 * server address, if any. */
static struct probe *old_probe(const struct ups_check *c, size_t pos, const struct ups_server *s)
{
    if (!ck.set)
        return NULL;
    for (size_t i = 0; i < ck.set->n; i++) {
        struct probe *o = &ck.set->p[i];
        const struct ups_check *oc = o->check;
        if (strcmp(oc->group->name, c->group->name) != 0 ||
            !net_addr_equal(&oc->group->servers[o->idx].addr, &s->addr))
            continue;
        size_t opos = 0;
        for (const struct ups_check *x = oc->group->checks; x && x != oc; x = x->next)
            opos++;
        if (opos == pos)
            return o;
    }
    return NULL;
}

static void hc_copy(struct ups_hc *d, const struct ups_hc *s)
{
    atomic_store(&d->checks, atomic_load(&s->checks));
    atomic_store(&d->fails, atomic_load(&s->fails));
    atomic_store(&d->unhealthy, atomic_load(&s->unhealthy));
    atomic_store(&d->last_status, atomic_load(&s->last_status));
    atomic_store(&d->last_ok, atomic_load(&s->last_ok));
    atomic_store(&d->last_ms, atomic_load(&s->last_ms));
}

static void switch_to(struct ups_group *const *groups, size_t ngroups)
{
    size_t n = 0;
    for (size_t g = 0; g < ngroups; g++)
        for (struct ups_check *c = groups[g]->checks; c; c = c->next)
            n += groups[g]->nservers;
    struct probe_set *set = calloc(1, sizeof(*set) + n * sizeof(set->p[0]));
    if (!set) {
        LOG(LOG_ALERT, "health checks: out of memory, checks stopped");
        set_drop(ck.set);
        ck.set = NULL;
        return;
    }
    loop_update_time(ck.loop);
    for (size_t gi = 0; gi < ngroups; gi++) {
        struct ups_group *g = groups[gi];
        size_t pos = 0;
        for (struct ups_check *c = g->checks; c; c = c->next, pos++) {
            for (size_t i = 0; i < g->nservers; i++) {
                struct ups_server *s = &g->servers[i];
                struct probe *p = &set->p[set->n++];
                p->check = c;
                p->idx = i;
                p->io.fd = -1;
                p->addr = *ups_server_addr(s);
                if (c->port) {
                    if (p->addr.sa.ss_family == AF_INET6)
                        p->addr.in6.sin6_port = htons((uint16_t)c->port);
                    else
                        p->addr.in4.sin_port = htons((uint16_t)c->port);
                }
                timer_init(&p->timer, probe_start, p);
                struct probe *o = old_probe(c, pos, s);
                if (o) {
                    /* same server, same check: keep its verdict and counts */
                    struct check_peer *np = &c->peers[i];
                    bool was = np->unhealthy;
                    *np = o->check->peers[o->idx];
                    if (was != np->unhealthy)
                        atomic_fetch_add(&s->hc.down, np->unhealthy ? 1 : -1);
                    if (pos == 0)
                        hc_copy(&s->hc, &o->check->group->servers[o->idx].hc);
                }
                if (!c->tcp) {
                    p->req = NULL;
                    int len = asprintf(&p->req,
                                       "GET %s HTTP/1.1\r\nHost: %s\r\n"
                                       "User-Agent: portico-health-check\r\n"
                                       "Accept: */*\r\nConnection: close\r\n\r\n",
                                       c->uri, g->name);
                    if (len < 0) {
                        p->req = NULL;
                        p->req_len = 0;
                    } else {
                        p->req_len = (size_t)len;
                    }
                }
                if (s->down)
                    continue; /* `down` in the config: never checked */
                /* a server already known keeps its rhythm; a new one is
                 * checked at once, spread by the jitter */
                timer_set(ck.loop, &p->timer,
                          o ? c->interval_ms / 2 + jitter(c->jitter_ms) : jitter(c->jitter_ms));
            }
        }
        for (size_t i = 0; i < g->nservers; i++)
            if (g->checks && !any_checking(g, i))
                atomic_store(&g->servers[i].hc.checking, false);
    }
    set_drop(ck.set);
    ck.set = set;
    if (n)
        LOG(LOG_INFO, "health checks: %zu probe(s)", n);
}

static void on_wake(struct loop *l, void *data)
{
    (void)data;
    pthread_mutex_lock(&ck.mu);
    bool stop = ck.stop;
    uint64_t asked = ck.asked;
    struct ups_group *const *groups = ck.groups;
    size_t ngroups = ck.ngroups;
    bool sw = asked != ck.done;
    pthread_mutex_unlock(&ck.mu);
    if (stop) {
        set_drop(ck.set);
        ck.set = NULL;
        loop_stop(l);
    } else if (sw) {
        switch_to(groups, ngroups);
    }
    pthread_mutex_lock(&ck.mu);
    ck.done = asked;
    pthread_cond_broadcast(&ck.cv);
    pthread_mutex_unlock(&ck.mu);
}

static void *checker_main(void *arg)
{
    (void)arg;
    loop_run(ck.loop);
    loop_drain_posted(ck.loop);
    return NULL;
}

/* Ask the thread to switch (or stop) and wait until it did. */
static void ask(struct ups_group *const *groups, size_t ngroups, bool stop)
{
    pthread_mutex_lock(&ck.mu);
    ck.groups = groups;
    ck.ngroups = ngroups;
    ck.stop = stop;
    uint64_t want = ++ck.asked;
    pthread_mutex_unlock(&ck.mu);
    loop_wake(ck.loop);
    pthread_mutex_lock(&ck.mu);
    while (ck.done < want)
        pthread_cond_wait(&ck.cv, &ck.mu);
    pthread_mutex_unlock(&ck.mu);
}

int check_start(struct ups_group *const *groups, size_t ngroups)
{
    if (ck.running)
        return 0;
    ck.loop = loop_new();
    if (!ck.loop)
        return -1;
    loop_update_time(ck.loop);
    ck.rng = loop_now_ms(ck.loop) * 0x9e3779b97f4a7c15ull | 1;
    ck.asked = ck.done = 0;
    ck.stop = false;
    loop_set_wake(ck.loop, on_wake, NULL);
    if (pthread_create(&ck.thread, NULL, checker_main, NULL) != 0) {
        loop_free(ck.loop);
        ck.loop = NULL;
        return -1;
    }
    ck.running = true;
    ask(groups, ngroups, false);
    return 0;
}

void check_reload(struct ups_group *const *groups, size_t ngroups)
{
    if (ck.running)
        ask(groups, ngroups, false);
}

void check_stop(void)
{
    if (!ck.running)
        return;
    ask(NULL, 0, true);
    pthread_join(ck.thread, NULL);
    loop_free(ck.loop);
    ck.loop = NULL;
    ck.running = false;
}
