/* The cache in the corridor (see pcache.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/rules.h"
#include "cache/store.h"
#include "core/log.h"
#include "proxy/pcache.h"
#include "proxy/proxy.h"
#include "proxy/vars.h"
#include "proxy/worker.h"

#define LOCK_POLL_MS 10
#define SEND_HIGH    (64 * 1024)
#define SMALL_COPY   4096        /* memory bodies up to this are copied, larger ones referenced */
#define FILE_MIN     (64 * 1024) /* bodies from this size go out with sendfile when possible */

struct pcache {
    struct exchange *ex;
    const struct cache_loc_conf *cc;
    struct cache_zone *zone;
    struct slice key;      /* primary key */
    struct slice var_key;  /* the variant's key (== key when nothing varies) */
    struct slice lock_key; /* the key whose update lock we hold */
    bool locked;
    struct cache_obj *obj; /* what the cache had (fresh, stale), referenced */
    struct cc req_cc;
    bool pragma_no_cache;
    bool no_store;
    bool revalidating;
    bool head_as_get;
    bool strip;
    bool background; /* this exchange is a background update */
    int64_t request_ms;
    struct cache_writer *w;
    struct cache_obj *answer; /* what answers instead of the origin's response */
    const char *answer_status;
    struct http_field extra[2];
    size_t nextra;
    /* lock wait */
    struct timer timer;
    int64_t wait_deadline_ms;
    bool waiting;
    /* serving from the cache */
    struct cache_obj *serving; /* referenced */
    int fd;
    uint64_t pos, end; /* body bytes still to send */
    bool sending;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_status(struct exchange *ex, const char *s)
{
    ex->cache_status = s;
}

/* ---- keys ---- */

static bool flag_value(struct exchange *ex, struct tmpl *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct slice s = tmpl_eval(ex, v[i], ESC_NONE);
        if (s.len && !(s.len == 1 && s.p[0] == '0'))
            return true;
    }
    return false;
}

/* The request's values of the fields a response varies on, joined: the
 * secondary key (RFC 9111 4.1). Values are compared after trimming and
 * collapsing whitespace; several fields of a name join with ", ". */
static struct slice variant_key(struct exchange *ex, struct slice key, const char *vary,
                                size_t vary_len)
{
    size_t cap = key.len + vary_len + 16;
    for (size_t i = 0; i < ex->nreq_fields; i++)
        cap += ex->req_fields[i].value.len + 2;
    char *out = arena_alloc(&ex->arena, cap);
    if (!out)
        return SLICE_NULL;
    char *d = mem_put(out, key.p, key.len);
    *d++ = '\n';
    size_t i = 0;
    while (i < vary_len) {
        const char *nl = memchr(vary + i, '\n', vary_len - i);
        size_t e = nl ? (size_t)(nl - vary) : vary_len;
        struct slice name = slice_make(vary + i, e - i);
        d = mem_put(d, name.p, name.len);
        *d++ = ':';
        bool first = true;
        for (size_t k = 0; k < ex->nreq_fields; k++) {
            if (!slice_eq_ci(ex->req_fields[k].name, name))
                continue;
            if (!first) {
                *d++ = ',';
                *d++ = ' ';
            }
            first = false;
            struct slice v = slice_trim_ows(ex->req_fields[k].value);
            bool sp = false;
            for (size_t j = 0; j < v.len; j++) {
                char c = v.p[j];
                if (c == ' ' || c == '\t') {
                    sp = true;
                    continue;
                }
                if (sp)
                    *d++ = ' ';
                sp = false;
                *d++ = c;
            }
        }
        *d++ = '\n';
        i = e + 1;
    }
    return slice_make(out, (size_t)(d - out));
}

/* Vary of a response: lower-case names, '\n' separated, in arena. */
static struct slice vary_names(struct exchange *ex, const struct http_field *f, size_t n)
{
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        if (slice_eq_lit_ci(f[i].name, "vary"))
            cap += f[i].value.len + 1;
    if (!cap)
        return SLICE_NULL;
    char *out = arena_alloc(&ex->arena, cap);
    if (!out)
        return SLICE_NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (!slice_eq_lit_ci(f[i].name, "vary"))
            continue;
        struct slice v = f[i].value;
        size_t k = 0;
        while (k < v.len) {
            while (k < v.len && (v.p[k] == ' ' || v.p[k] == '\t' || v.p[k] == ','))
                k++;
            size_t s = k;
            while (k < v.len && v.p[k] != ',' && v.p[k] != ' ' && v.p[k] != '\t')
                k++;
            if (k > s) {
                if (o)
                    out[o++] = '\n';
                for (size_t j = s; j < k; j++)
                    out[o++] = ascii_lower(v.p[j]);
            }
        }
    }
    return slice_make(out, o);
}

/* ---- serving from the cache ---- */

static bool not_modified(struct exchange *ex, const struct cache_obj *o)
{
    if (o->status != 200 || (ex->method_id != HTTP_M_GET && ex->method_id != HTTP_M_HEAD))
        return false;
    bool found;
    struct slice inm = cache_field(ex->req_fields, ex->nreq_fields, "if-none-match", &found);
    if (found) {
        struct slice etag = cache_field(o->fields, o->nfields, "etag", NULL);
        return etag.len && cache_etag_match(inm, etag);
    }
    struct slice ims = cache_field(ex->req_fields, ex->nreq_fields, "if-modified-since", &found);
    if (!found)
        return false;
    int64_t since = http_date_parse(ims);
    struct slice lm_v = cache_field(o->fields, o->nfields, "last-modified", &found);
    int64_t lm = found ? http_date_parse(lm_v) : -1;
    return since >= 0 && lm >= 0 && conf_ims_matches(ex->lc->if_modified_since, lm, since);
}

/* If-Range: a strong entity tag equal to ours, or our Last-Modified date. */
static bool if_range_ok(struct exchange *ex, const struct cache_obj *o)
{
    bool found;
    struct slice ir =
        slice_trim_ows(cache_field(ex->req_fields, ex->nreq_fields, "if-range", &found));
    if (!found)
        return true;
    if (ir.len && (ir.p[0] == '"' || (ir.len > 2 && ir.p[0] == 'W' && ir.p[1] == '/'))) {
        struct slice etag = slice_trim_ows(cache_field(o->fields, o->nfields, "etag", NULL));
        return ir.p[0] == '"' && etag.len && etag.p[0] == '"' && slice_eq(ir, etag);
    }
    struct slice lm = cache_field(o->fields, o->nfields, "last-modified", &found);
    return found && slice_eq(slice_trim_ows(lm), ir);
}

static const char *const not_modified_keep[] = {
    "etag", "cache-control", "expires", "last-modified", "vary", "content-location", NULL,
};

static bool keep_in_304(struct slice name)
{
    for (size_t i = 0; not_modified_keep[i]; i++)
        if (slice_eq_lit_ci(name, not_modified_keep[i]))
            return true;
    return false;
}

static void send_more(struct pcache *pc);

static void serve(struct pcache *pc, struct cache_obj *o, const char *status_text)
{
    struct exchange *ex = pc->ex;
    set_status(ex, status_text);
    pc->serving = o; /* the caller's reference moves here */
    pc->fd = -1;
    if (!o->body && o->body_len && ex->method_id != HTTP_M_HEAD && cache_fits_memory(o)) {
        /* a hit on a disk-only object small enough: promote it to memory */
        struct cache_obj *m = cache_obj_in_memory(o);
        if (m) {
            cache_obj_unref(o);
            pc->serving = o = m;
        }
    }
    int status = o->status;
    uint64_t first = 0, last = o->body_len ? o->body_len - 1 : 0;
    bool partial = false, unsatisfiable = false;
    if (not_modified(ex, o)) {
        status = 304;
    } else if (o->status == 200 && ex->method_id == HTTP_M_GET && ex->lc->max_ranges != 0) {
        bool found;
        struct slice range = cache_field(ex->req_fields, ex->nreq_fields, "range", &found);
        if (found && if_range_ok(ex, o)) {
            int r = cache_range(range, o->body_len, &first, &last);
            if (r == 1) {
                status = 206;
                partial = true;
            } else if (r == 0) {
                status = 416;
                unsatisfiable = true;
            }
        }
    }
    size_t cap = o->nfields + LOC_EXTRA_FIELDS(ex->lc) + 6;
    struct http_field *in = arena_alloc(&ex->arena, cap * sizeof(*in));
    struct http_field *out = arena_alloc(&ex->arena, cap * sizeof(*out));
    char *age = arena_alloc(&ex->arena, 24);
    char *crange = arena_alloc(&ex->arena, 80);
    if (!in || !out || !age || !crange) {
        proxy_respond_error(ex, 500);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < o->nfields; i++) {
        struct slice name = o->fields[i].name;
        if (slice_eq_lit_ci(name, "age"))
            continue;
        if (status == 304 && !keep_in_304(name))
            continue;
        if (unsatisfiable && !slice_eq_lit_ci(name, "etag") &&
            !slice_eq_lit_ci(name, "last-modified"))
            continue;
        in[n++] = o->fields[i];
    }
    int64_t a = cache_age_ms(&o->fresh, now_ms()) / 1000;
    in[n++] = (struct http_field){SLICE_LIT("Age"),
                                  slice_make(age, u64_to_dec((uint64_t)(a < 0 ? 0 : a), age))};
    if (partial || unsatisfiable) {
        int len = partial ? snprintf(crange, 80, "bytes %llu-%llu/%llu", (unsigned long long)first,
                                     (unsigned long long)last, (unsigned long long)o->body_len)
                          : snprintf(crange, 80, "bytes */%llu", (unsigned long long)o->body_len);
        in[n++] = (struct http_field){SLICE_LIT("Content-Range"), slice_make(crange, (size_t)len)};
    }
    n = proxy_response_fields(ex, status, in, n, out, cap - 1);
    /* the stored Date stays: it is when the origin made the response */
    bool has_date;
    struct slice date = cache_field(o->fields, o->nfields, "date", &has_date);
    if (has_date)
        out[n++] = (struct http_field){SLICE_LIT("Date"), date};
    struct resp_head h = {.status = status, .fields = out, .nfields = n, .content_length = -1};
    if (status == 304) {
        h.no_body = true;
    } else if (unsatisfiable) {
        h.content_length = 0;
        pc->pos = pc->end = 0;
    } else {
        h.content_length = (int64_t)(last - first + 1);
        if (o->body_len == 0)
            h.content_length = 0;
        pc->pos = first;
        pc->end = o->body_len ? last + 1 : 0;
        if (ex->method_id == HTTP_M_HEAD || o->status == 204) {
            h.no_body = ex->method_id == HTTP_M_HEAD;
            if (o->status == 204)
                h.content_length = -1, h.no_body = true;
            pc->end = pc->pos;
        }
    }
    if (h.no_body)
        pc->end = pc->pos;
    if (pc->end > pc->pos && !o->body) {
        /* a large body only on disk goes out with sendfile from the file the
         * object keeps open; otherwise it is read here piece by piece */
        bool by_file = ex->client->send_file && ex->lc->st.sendfile &&
                       pc->end - pc->pos >= FILE_MIN && cache_obj_fd(o) >= 0;
        if (!by_file)
            pc->fd = cache_open_body(o);
        if (!by_file && pc->fd < 0) {
            /* the file went away under us (purge, eviction): the origin then */
            set_status(ex, "MISS");
            pc->serving = NULL;
            cache_obj_unref(o);
            proxy_fetch(ex);
            return;
        }
    }
    if (ex->client->send_head(ex, &h) < 0)
        return;
    pc->sending = true;
    send_more(pc);
}

static void obj_release(void *ctx)
{
    cache_obj_unref(ctx);
}

/* A large body that is only on disk goes out, on a plain HTTP/1
 * connection, with sendfile from the cache file the object keeps open (page
 * cache to socket) instead of pread + writev. Bodies in the memory tier do
 * not: measured on 100 KiB hits (bench/instr.py --cache --tool perf, three
 * runs each), one writev from memory costs 17.6-17.9 us and 2.1-2.2
 * syscalls per hit, sendmsg(MSG_MORE) + sendfile 18.4-19.1 us and 3.1.
 * 1 sent, 0 not possible (the caller sends it another way), -1 the client
 * is gone. */
static int send_by_file(struct pcache *pc)
{
    struct exchange *ex = pc->ex;
    struct cache_obj *o = pc->serving;
    if (o->body || !ex->client->send_file || !ex->lc->st.sendfile || pc->end - pc->pos < FILE_MIN)
        return 0;
    int fd = cache_obj_fd(o);
    if (fd < 0)
        return 0;
    cache_obj_ref(o); /* the token keeps the object, and so its fd, until written */
    struct buf *tok = buf_wrap(obj_release, o);
    if (!tok) {
        cache_obj_unref(o);
        return 0;
    }
    int r =
        ex->client->send_file(ex, tok, fd, o->file_hdr_len + pc->pos, (size_t)(pc->end - pc->pos));
    buf_unref(tok);
    if (r == 0)
        pc->pos = pc->end;
    return r == 0 ? 1 : r < 0 ? -1 : 0;
}

static void send_more(struct pcache *pc)
{
    struct exchange *ex = pc->ex;
    struct cache_obj *o = pc->serving;
    int f = send_by_file(pc);
    if (f < 0)
        return;
    if (o->body && pc->end - pc->pos > SMALL_COPY) {
        /* in memory: the whole range goes out by reference, no copy; the
         * token segment keeps the object alive until it is written */
        cache_obj_ref(o);
        struct buf *tok = buf_wrap(obj_release, o);
        if (!tok) {
            cache_obj_unref(o);
            pc->sending = false;
            ex->client->done(ex, true);
            return;
        }
        struct body_piece piece = {tok, o->body + pc->pos, (size_t)(pc->end - pc->pos)};
        pc->pos = pc->end;
        int r = ex->client->send_body(ex, &piece);
        buf_unref(tok);
        if (r < 0)
            return;
    }
    while (pc->pos < pc->end) {
        if (ex->client->pending(ex) >= SEND_HIGH)
            return; /* proxy_client_drained() brings us back */
        uint64_t left = pc->end - pc->pos;
        size_t n = left < BUF_SEG_SIZE ? (size_t)left : BUF_SEG_SIZE;
        struct buf *seg = buf_new(BUF_SEG_SIZE);
        if (!seg) {
            pc->sending = false;
            ex->client->done(ex, true);
            return;
        }
        if (o->body) {
            memcpy(seg->data, o->body + pc->pos, n); /* small: a copy is cheaper */
        } else {
            /* sendfile was planned but the client side said no (TLS, HTTP/2,
             * a compressing filter): read the file after all */
            if (pc->fd < 0)
                pc->fd = cache_open_body(o);
            ssize_t r =
                pc->fd < 0 ? -1 : pread(pc->fd, seg->data, n, (off_t)(o->file_hdr_len + pc->pos));
            if (r <= 0) {
                log_write(LOG_CRIT, "*%llu cache file read failed (%s)", (unsigned long long)ex->id,
                          r < 0 ? strerror(errno) : "short file");
                buf_unref(seg);
                pc->sending = false;
                ex->client->done(ex, true);
                return;
            }
            n = (size_t)r;
        }
        struct body_piece piece = {seg, seg->data, n};
        pc->pos += n;
        int r = ex->client->send_body(ex, &piece);
        buf_unref(seg);
        if (r < 0)
            return;
    }
    pc->sending = false;
    ex->client->send_end(ex, SLICE_NULL);
    ex->client->done(ex, false);
}

void pcache_drained(struct pcache *pc)
{
    if (pc && pc->sending)
        send_more(pc);
}

/* ---- background updates ---- */

struct bg {
    struct exchange ex;
    struct net_addr peer, local;
    struct net_addr realip_orig, pp_src, pp_dst; /* copies: the session may close first */
    struct posted free_post;
    struct bg *prev, *next;
};

static __thread struct bg *bg_list;
static __thread size_t bg_count;

static int bg_send_head(struct exchange *ex, const struct resp_head *h)
{
    ex->status = h->status;
    return 0;
}
static int bg_send_interim(struct exchange *ex, int status, struct http_field *f, size_t n)
{
    (void)ex, (void)status, (void)f, (void)n;
    return 0;
}
static int bg_send_body(struct exchange *ex, const struct body_piece *piece)
{
    (void)ex, (void)piece;
    return 0;
}
static int bg_send_end(struct exchange *ex, struct slice trailers)
{
    (void)ex, (void)trailers;
    return 0;
}
static size_t bg_pending(struct exchange *ex)
{
    (void)ex;
    return 0;
}
static enum body_status bg_body_read(struct exchange *ex, struct body_piece *piece)
{
    (void)ex, (void)piece;
    return BODY_END;
}
static void bg_continue(struct exchange *ex)
{
    (void)ex;
}

static void bg_free(struct bg *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        bg_list = b->next;
    if (b->next)
        b->next->prev = b->prev;
    bg_count--;
    posted_cancel(b->ex.loop, &b->free_post);
    proxy_release(&b->ex);
    arena_deinit(&b->ex.arena);
    snapshot_unref(b->ex.snap);
    free(b);
}

static void bg_free_post(struct posted *p)
{
    struct bg *b = p->data;
    bg_free(b);
}

static void bg_done(struct exchange *ex, bool broken)
{
    (void)broken;
    struct bg *b = (struct bg *)ex;
    /* the corridor is still on the stack: free from the loop */
    loop_post(ex->loop, &b->free_post);
}

static const struct client_ops bg_ops = {
    .send_head = bg_send_head,
    .send_interim = bg_send_interim,
    .send_body = bg_send_body,
    .send_end = bg_send_end,
    .pending = bg_pending,
    .body_read = bg_body_read,
    .continue_100 = bg_continue,
    .done = bg_done,
};

size_t pcache_background_count(void)
{
    return bg_count;
}

void pcache_background_kill(void)
{
    while (bg_list) {
        proxy_abort(&bg_list->ex);
        bg_free(bg_list);
    }
}

static struct slice sdup(struct arena *a, struct slice s)
{
    return s.len ? arena_slice_dup(a, s) : s;
}

/* Captures whose subject lives in the copy's arena: the original request
 * may be gone long before the update evaluates a $1. */
static struct route_captures own_captures(struct arena *a, struct route_captures c)
{
    if (!c.subject || c.n <= 0)
        return c;
    size_t end = 0;
    for (int i = 0; i < 2 * c.n && i < 2 * ROUTER_MAX_CAPTURES; i++)
        if (c.ov[i] != PCRE2_UNSET && c.ov[i] > end)
            end = c.ov[i];
    char *copy = arena_strndup(a, c.subject, end);
    if (!copy) {
        c.n = 0;
        c.subject = NULL;
        return c;
    }
    c.subject = copy;
    return c;
}

/* A detached copy of the request that refreshes the key while the client
 * is answered from the stale response. */
static void background_update(struct exchange *ex)
{
    struct bg *b = calloc(1, sizeof(*b));
    if (!b)
        return;
    struct exchange *n = &b->ex;
    posted_init(&b->free_post, bg_free_post, b);
    arena_init(&n->arena, 4096, 0);
    n->snap = snapshot_ref(ex->snap);
    n->worker = ex->worker;
    n->client = &bg_ops;
    n->loop = ex->loop;
    n->id = ex->id;
    memcpy(n->request_id, ex->request_id, sizeof(n->request_id));
    b->peer = *ex->peer;
    b->local = *ex->local;
    n->peer = &b->peer;
    n->local = &b->local;
    if (ex->realip_orig) {
        b->realip_orig = *ex->realip_orig;
        n->realip_orig = &b->realip_orig;
    }
    if (ex->pp_src && ex->pp_dst) {
        b->pp_src = *ex->pp_src;
        b->pp_dst = *ex->pp_dst;
        n->pp_src = &b->pp_src;
        n->pp_dst = &b->pp_dst;
    }
    n->listen = ex->listen;
    n->is_tls = ex->is_tls;
    n->method = SLICE_LIT("GET");
    n->method_id = HTTP_M_GET;
    struct arena *a = &n->arena;
    n->request_uri = sdup(a, ex->request_uri);
    n->uri = sdup(a, ex->uri);
    n->args = sdup(a, ex->args);
    n->has_args = ex->has_args;
    n->host = sdup(a, ex->host);
    n->request_line = sdup(a, ex->request_line);
    n->minor_version = 1;
    n->req_fields = arena_alloc(a, (ex->nreq_fields + 1) * sizeof(*n->req_fields));
    for (size_t i = 0; n->req_fields && i < ex->nreq_fields; i++) {
        if (http_is_conditional(ex->req_fields[i].name))
            continue;
        n->req_fields[n->nreq_fields++] =
            (struct http_field){sdup(a, ex->req_fields[i].name), sdup(a, ex->req_fields[i].value)};
    }
    n->req_content_length = -1;
    n->srv = ex->srv;
    n->loc = ex->loc;
    n->lc = ex->lc;
    n->caps = own_captures(a, ex->caps);
    n->host_caps = own_captures(a, ex->host_caps);
    /* what the rewrite phases decided stands: the copy does not run them
     * again (a second `rewrite ^/(.*) /app/$1` would fetch /app/app/...) */
    n->uri_rewritten = ex->uri_rewritten;
    n->uri_rewritten_here = ex->uri_rewritten_here;
    n->redirected = ex->redirected;
    n->args_set = ex->args_set;
    size_t nuser = ex->snap->nuser_vars, nmaps = ex->snap->nmaps;
    if (ex->user_vals && (n->user_vals = arena_calloc(a, nuser * sizeof(*n->user_vals))))
        for (size_t i = 0; i < nuser; i++)
            n->user_vals[i] = sdup(a, ex->user_vals[i]);
    if (ex->map_vals && (n->map_vals = arena_calloc(a, nmaps * sizeof(*n->map_vals))) &&
        (n->map_state = arena_alloc(a, nmaps))) {
        memcpy(n->map_state, ex->map_state, nmaps);
        for (size_t i = 0; i < nmaps; i++)
            n->map_vals[i] = sdup(a, ex->map_vals[i]);
    } else {
        n->map_vals = NULL;
    }
    n->start_ms = ex->start_ms;
    n->start_real_us = ex->start_real_us;
    n->cache_background = true;
    if (!n->req_fields) {
        arena_deinit(a);
        snapshot_unref(n->snap);
        free(b);
        return;
    }
    b->next = bg_list;
    if (bg_list)
        bg_list->prev = b;
    bg_list = b;
    bg_count++;
    proxy_start_located(n);
}

/* ---- the request side ---- */

static void lock_wait_cb(struct timer *t);

static void unlock(struct pcache *pc)
{
    if (pc->locked) {
        cache_unlock(pc->zone, pc->lock_key.p, pc->lock_key.len);
        pc->locked = false;
    }
}

static enum pc_verdict decide(struct pcache *pc);

static bool pragma_no_cache(struct exchange *ex)
{
    bool has_cc;
    cache_field(ex->req_fields, ex->nreq_fields, "cache-control", &has_cc);
    if (has_cc)
        return false; /* Cache-Control wins over Pragma (RFC 9111 5.4) */
    for (size_t i = 0; i < ex->nreq_fields; i++)
        if (slice_eq_lit_ci(ex->req_fields[i].name, "pragma")) {
            struct slice v = ex->req_fields[i].value;
            for (size_t k = 0; k + 8 <= v.len; k++)
                if (slice_eq_ci(slice_make(v.p + k, 8), SLICE_LIT("no-cache")))
                    return true;
        }
    return false;
}

enum pc_verdict pcache_request(struct exchange *ex, struct pcache **out)
{
    const struct cache_loc_conf *cc = &ex->lc->cache;
    *out = NULL;
    if (!cc->zone || ex->method_id >= 32 || !(cc->methods & (1u << ex->method_id)))
        return PC_PASS;
    struct pcache *pc = arena_calloc(&ex->arena, sizeof(*pc));
    if (!pc)
        return PC_PASS;
    pc->ex = ex;
    pc->cc = cc;
    pc->zone = cc->zone;
    pc->fd = -1;
    pc->background = ex->cache_background;
    timer_init(&pc->timer, lock_wait_cb, pc);
    pc->key = tmpl_eval(ex, cc->key, ESC_NONE);
    pc->var_key = pc->key;
    cc_parse(ex->req_fields, ex->nreq_fields, &pc->req_cc);
    pc->pragma_no_cache = pragma_no_cache(ex);
    pc->head_as_get = ex->method_id == HTTP_M_HEAD && cc->convert_head;
    pc->strip = true;
    *out = pc;
    if (cc->nno_cache && flag_value(ex, cc->no_cache, cc->nno_cache))
        pc->no_store = true;
    if (cc->nbypass && flag_value(ex, cc->bypass, cc->nbypass)) {
        set_status(ex, "BYPASS");
        pc->request_ms = now_ms();
        return PC_FETCH;
    }
    return decide(pc);
}

static bool take_lock(struct pcache *pc)
{
    if (pc->locked)
        return true;
    pc->locked =
        cache_lock(pc->zone, pc->var_key.p, pc->var_key.len, now_ms(), pc->cc->lock_age_ms);
    if (pc->locked)
        pc->lock_key = pc->var_key;
    return pc->locked;
}

static void add_validators(struct pcache *pc)
{
    const struct cache_obj *o = pc->obj;
    bool found;
    struct slice etag = cache_field(o->fields, o->nfields, "etag", &found);
    if (found && etag.len)
        pc->extra[pc->nextra++] = (struct http_field){SLICE_LIT("If-None-Match"), etag};
    struct slice lm = cache_field(o->fields, o->nfields, "last-modified", &found);
    if (found && lm.len)
        pc->extra[pc->nextra++] = (struct http_field){SLICE_LIT("If-Modified-Since"), lm};
    pc->revalidating = pc->nextra > 0;
}

static enum pc_verdict start_wait(struct pcache *pc)
{
    if (!pc->waiting) {
        pc->waiting = true;
        pc->wait_deadline_ms = now_ms() + pc->cc->lock_timeout_ms;
    }
    timer_set(pc->ex->loop, &pc->timer, LOCK_POLL_MS);
    return PC_DONE;
}

static enum pc_verdict decide(struct pcache *pc)
{
    struct exchange *ex = pc->ex;
    const struct cache_loc_conf *cc = pc->cc;
    int64_t now = now_ms();
    struct cache_found found;
    if (pc->obj) {
        cache_obj_unref(pc->obj);
        pc->obj = NULL;
    }
    pc->var_key = pc->key;
    cache_lookup(pc->zone, pc->key.p, pc->key.len, &ex->arena, now, &found);
    if (found.vary && !found.obj) {
        pc->var_key = variant_key(ex, pc->key, found.vary, found.vary_len);
        cache_lookup(pc->zone, pc->var_key.p, pc->var_key.len, NULL, now, &found);
    }
    if (cc->min_uses > 1 && found.uses < (uint32_t)cc->min_uses)
        pc->no_store = true;
    pc->obj = found.obj;
    if (pc->background) {
        /* refresh whatever is there; give up if someone else already is */
        if (!take_lock(pc)) {
            ex->client->done(ex, false);
            return PC_DONE;
        }
        if (pc->obj && cc->revalidate)
            add_validators(pc);
        set_status(ex, "EXPIRED");
        pc->request_ms = now;
        return PC_FETCH;
    }
    if (pc->obj) {
        enum cache_use use = cache_usable(&pc->obj->fresh, &pc->req_cc, pc->pragma_no_cache, now);
        if (use != CACHE_USE_REVALIDATE) {
            struct cache_obj *o = pc->obj;
            pc->obj = NULL;
            serve(pc, o, use == CACHE_USE_FRESH ? "HIT" : "STALE");
            return PC_DONE;
        }
        bool stale_ok = !pc->obj->fresh.no_cache && !pc->req_cc.no_cache && !pc->pragma_no_cache;
        bool updating = found.updating && !pc->locked;
        if (stale_ok && updating && (cc->use_stale & STALE_UPDATING) &&
            !pc->obj->fresh.must_revalidate) {
            struct cache_obj *o = pc->obj;
            pc->obj = NULL;
            serve(pc, o, "UPDATING");
            return PC_DONE;
        }
        if (stale_ok && (cc->background_update || pc->obj->fresh.swr_ms >= 0) &&
            cache_stale_within(&pc->obj->fresh,
                               (cc->use_stale & STALE_UPDATING) && cc->background_update
                                   ? INT64_MAX / 2
                                   : pc->obj->fresh.swr_ms,
                               now)) {
            struct cache_obj *o = pc->obj;
            pc->obj = NULL;
            if (!updating)
                background_update(ex);
            serve(pc, o, updating ? "UPDATING" : "STALE");
            return PC_DONE;
        }
    }
    if (pc->req_cc.only_if_cached) {
        set_status(ex, "MISS");
        proxy_respond_error(ex, 504);
        return PC_DONE;
    }
    if (cc->lock && !take_lock(pc)) {
        if (now < pc->wait_deadline_ms || !pc->waiting)
            return start_wait(pc);
        /* waited long enough: go, but leave storing to the lock holder */
        pc->no_store = true;
    }
    if (pc->obj && cc->revalidate)
        add_validators(pc);
    set_status(ex, pc->obj ? "EXPIRED" : "MISS");
    pc->request_ms = now;
    return PC_FETCH;
}

static void lock_wait_cb(struct timer *t)
{
    struct pcache *pc = t->data;
    enum pc_verdict v = decide(pc);
    if (v == PC_FETCH)
        proxy_fetch(pc->ex);
}

struct slice pcache_fetch_method(const struct pcache *pc)
{
    return pc && pc->head_as_get ? SLICE_LIT("GET") : pc->ex->method;
}

bool pcache_head_as_get(const struct pcache *pc)
{
    return pc && pc->head_as_get;
}

bool pcache_strip_conditionals(const struct pcache *pc)
{
    return pc && pc->strip;
}

size_t pcache_fetch_fields(const struct pcache *pc, const struct http_field **out)
{
    *out = pc ? pc->extra : NULL;
    return pc ? pc->nextra : 0;
}

/* ---- the response side ---- */

static int64_t valid_for(const void *ctx, int status)
{
    const struct cache_loc_conf *cc = ctx;
    for (size_t i = 0; i < cc->nvalid; i++) {
        const struct cache_valid *v = &cc->valid[i];
        for (size_t k = 0; k < v->ncodes; k++)
            if (v->codes[k] == status)
                return v->ms;
    }
    for (size_t i = 0; i < cc->nvalid; i++)
        if (cc->valid[i].any)
            return cc->valid[i].ms;
    return -1;
}

static void policy(const struct cache_loc_conf *cc, struct cache_policy *p)
{
    *p = (struct cache_policy){
        .ignore_cache_control = cc->ignore & IGNORE_CACHE_CONTROL,
        .ignore_expires = cc->ignore & IGNORE_EXPIRES,
        .ignore_set_cookie = cc->ignore & IGNORE_SET_COOKIE,
        .ignore_vary = cc->ignore & IGNORE_VARY,
        .ignore_x_accel_expires = cc->ignore & IGNORE_X_ACCEL_EXPIRES,
        .valid_for = cc->nvalid ? valid_for : NULL,
        .valid_ctx = cc,
    };
}

/* The fields worth keeping: not hop-by-hop, not framing. */
static size_t storable_fields(const struct http_field *f, size_t n, struct http_field *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        struct slice name = f[i].name;
        if (http_is_hop_by_hop(name) || slice_eq_lit_ci(name, "content-length") ||
            http_connection_names(f, n, name))
            continue;
        out[k++] = f[i];
    }
    return k;
}

static bool stale_for_status(const struct pcache *pc, int status)
{
    uint32_t bit = 0;
    switch (status) {
    case 500:
        bit = STALE_500;
        break;
    case 502:
        bit = STALE_502;
        break;
    case 503:
        bit = STALE_503;
        break;
    case 504:
        bit = STALE_504;
        break;
    case 403:
        bit = STALE_403;
        break;
    case 404:
        bit = STALE_404;
        break;
    case 429:
        bit = STALE_429;
        break;
    default:
        break;
    }
    return bit && (pc->cc->use_stale & bit);
}

/* May the stale object answer for an origin that failed? */
static bool stale_on_error(const struct pcache *pc, bool by_config)
{
    const struct cache_obj *o = pc->obj;
    if (!o || pc->background)
        return false;
    if (o->fresh.must_revalidate || o->fresh.no_cache)
        return false;
    if (by_config)
        return true;
    int64_t window = o->fresh.sie_ms;
    if (pc->req_cc.stale_if_error != CC_UNSET && pc->req_cc.stale_if_error * 1000 > window)
        window = pc->req_cc.stale_if_error * 1000;
    return cache_stale_within(&o->fresh, window, now_ms());
}

static void serve_stale(struct pcache *pc)
{
    struct cache_obj *o = pc->obj;
    pc->obj = NULL;
    serve(pc, o, "STALE");
}

/* Merge a 304's fields into the stored ones (RFC 9111 4.3.4). */
static size_t merge_304(struct exchange *ex, const struct cache_obj *o, const struct http_field *f,
                        size_t n, struct http_field **out)
{
    struct http_field *m = arena_alloc(&ex->arena, (o->nfields + n + 1) * sizeof(*m));
    if (!m)
        return 0;
    size_t k = 0;
    for (size_t i = 0; i < o->nfields; i++) {
        bool replaced = false;
        for (size_t j = 0; j < n && !replaced; j++)
            replaced = slice_eq_ci(f[j].name, o->fields[i].name);
        if (!replaced)
            m[k++] = o->fields[i];
    }
    for (size_t j = 0; j < n; j++) {
        struct slice name = f[j].name;
        if (http_is_hop_by_hop(name) || slice_eq_lit_ci(name, "content-length") ||
            slice_eq_lit_ci(name, "content-range") || http_connection_names(f, n, name))
            continue;
        m[k++] = f[j];
    }
    *out = m;
    return k;
}

int pcache_response_head(struct pcache *pc, int status, const struct http_field *f, size_t n)
{
    if (!pc)
        return 0;
    struct exchange *ex = pc->ex;
    int64_t now = now_ms();
    struct cache_policy pol;
    policy(pc->cc, &pol);
    if (status == 304 && pc->revalidating && pc->obj) {
        struct http_field *merged;
        size_t nm = merge_304(ex, pc->obj, f, n, &merged);
        struct cache_fresh fresh;
        struct cache_obj *o = NULL;
        if (nm && !pc->no_store &&
            cache_storable(pc->obj->status, merged, nm, ex->req_fields, ex->nreq_fields, &pol,
                           pc->request_ms, now, &fresh) == CACHE_STORE_OK)
            o = cache_refresh(pc->obj, &fresh, merged, nm);
        if (!o) {
            o = pc->obj;
            pc->obj = NULL;
        }
        pc->answer = o;
        pc->answer_status = "REVALIDATED";
        return 1;
    }
    if (status >= 500 || stale_for_status(pc, status)) {
        if (stale_on_error(pc, stale_for_status(pc, status))) {
            pc->answer = pc->obj;
            pc->answer_status = "STALE";
            pc->obj = NULL;
            return 1;
        }
    }
    if (pc->no_store || (ex->method_id == HTTP_M_HEAD && !pc->head_as_get))
        return 0; /* a HEAD answer has no body to serve GETs with */
    struct cache_fresh fresh;
    enum cache_store_verdict v = cache_storable(status, f, n, ex->req_fields, ex->nreq_fields, &pol,
                                                pc->request_ms, now, &fresh);
    if (v != CACHE_STORE_OK)
        return 0;
    struct http_field *keep = arena_alloc(&ex->arena, (n + 1) * sizeof(*keep));
    if (!keep)
        return 0;
    size_t nk = storable_fields(f, n, keep);
    struct slice vary = pol.ignore_vary ? SLICE_NULL : vary_names(ex, f, n);
    struct slice key = pc->key, primary = SLICE_NULL;
    if (vary.len) {
        primary = pc->key;
        key = variant_key(ex, pc->key, vary.p, vary.len);
    }
    pc->w = cache_write_begin(pc->zone, key.p, key.len, primary.p, primary.len, vary.p, vary.len,
                              status, &fresh, keep, nk);
    return 0;
}

void pcache_answer(struct pcache *pc)
{
    struct cache_obj *o = pc->answer;
    pc->answer = NULL;
    unlock(pc);
    if (pc->background) {
        set_status(pc->ex, pc->answer_status);
        cache_obj_unref(o);
        pc->ex->client->send_end(pc->ex, SLICE_NULL);
        pc->ex->client->done(pc->ex, false);
        return;
    }
    serve(pc, o, pc->answer_status);
}

void pcache_response_body(struct pcache *pc, const char *p, size_t len)
{
    if (pc && pc->w && cache_write_body(pc->w, p, len) < 0)
        pc->w = NULL;
}

void pcache_response_done(struct pcache *pc)
{
    if (!pc)
        return;
    if (pc->w) {
        struct cache_obj *o = cache_write_end(pc->w);
        pc->w = NULL;
        cache_obj_unref(o);
    }
    unlock(pc);
}

void pcache_response_broken(struct pcache *pc)
{
    if (!pc)
        return;
    cache_write_abort(pc->w);
    pc->w = NULL;
    unlock(pc);
}

bool pcache_upstream_failed(struct pcache *pc, enum ending_code code)
{
    if (!pc)
        return false;
    uint32_t bit = 0;
    switch (code) {
    case END_CONNECT_TIMEOUT:
    case END_SEND_TIMEOUT:
    case END_READ_TIMEOUT:
        bit = STALE_TIMEOUT;
        break;
    case END_UPSTREAM_BAD_HEAD:
        bit = STALE_INVALID_HEADER;
        break;
    case END_CLIENT_CLOSED:
    case END_CLIENT_TIMEOUT:
    case END_CLIENT_BAD_BODY:
    case END_BODY_TOO_LARGE:
        return false;
    default:
        bit = STALE_ERROR;
        break;
    }
    unlock(pc);
    if (!stale_on_error(pc, (pc->cc->use_stale & bit) != 0))
        return false;
    serve_stale(pc);
    return true;
}

void pcache_release(struct pcache *pc)
{
    if (!pc)
        return;
    timer_cancel(&pc->timer);
    cache_write_abort(pc->w);
    pc->w = NULL;
    unlock(pc);
    cache_obj_unref(pc->obj);
    pc->obj = NULL;
    cache_obj_unref(pc->serving);
    pc->serving = NULL;
    cache_obj_unref(pc->answer);
    pc->answer = NULL;
    if (pc->fd >= 0)
        close(pc->fd);
    pc->fd = -1;
    pc->sending = false;
}

/* ---- invalidation and purge ---- */

static int purge_uri(struct exchange *ex, struct slice uri, bool prefix)
{
    const struct cache_loc_conf *cc = &ex->lc->cache;
    struct slice saved = ex->request_uri;
    ex->request_uri = uri;
    struct slice key = tmpl_eval(ex, cc->key, ESC_NONE);
    ex->request_uri = saved;
    if (!key.len)
        return 0;
    return prefix ? cache_purge_prefix(cc->zone, key.p, key.len)
                  : cache_purge(cc->zone, key.p, key.len);
}

/* Location / Content-Location on the same host: its path. */
static bool same_origin_path(struct exchange *ex, struct slice v, struct slice *path)
{
    v = slice_trim_ows(v);
    if (v.len && v.p[0] == '/' && !(v.len > 1 && v.p[1] == '/')) {
        *path = v;
        return true;
    }
    const char *sep = v.len > 8 ? memchr(v.p, ':', 6) : NULL;
    if (!sep || (size_t)(sep - v.p) + 3 > v.len || sep[1] != '/' || sep[2] != '/')
        return false;
    const char *host = sep + 3;
    const char *end = v.p + v.len;
    const char *slash = memchr(host, '/', (size_t)(end - host));
    struct slice h = slice_make(host, (size_t)((slash ? slash : end) - host));
    const char *colon = memchr(h.p, ':', h.len);
    if (colon)
        h.len = (size_t)(colon - h.p);
    if (!slice_eq_ci(h, ex->host))
        return false;
    *path = slash ? slice_make(slash, (size_t)(end - slash)) : SLICE_LIT("/");
    return true;
}

void pcache_invalidate(struct exchange *ex, int status, const struct http_field *f, size_t n)
{
    const struct cache_loc_conf *cc = &ex->lc->cache;
    if (!cc->zone || status < 200 || status >= 400)
        return;
    switch (ex->method_id) {
    case HTTP_M_GET:
    case HTTP_M_HEAD:
    case HTTP_M_OPTIONS:
    case HTTP_M_TRACE:
        return;
    default:
        break;
    }
    purge_uri(ex, ex->request_uri, false);
    for (size_t i = 0; i < n; i++) {
        struct slice path;
        if ((slice_eq_lit_ci(f[i].name, "location") ||
             slice_eq_lit_ci(f[i].name, "content-location")) &&
            same_origin_path(ex, f[i].value, &path) && !slice_eq(path, ex->request_uri))
            purge_uri(ex, path, false);
    }
}

bool pcache_is_purge(struct exchange *ex)
{
    const struct cache_purge_acl *p = ex->lc->cache.purge;
    return p && slice_eq(ex->method, slice_cstr(p->method));
}

void pcache_purge(struct exchange *ex)
{
    const struct cache_loc_conf *cc = &ex->lc->cache;
    const struct cache_purge_acl *p = cc->purge;
    bool allowed = p->nfrom == 0;
    for (size_t i = 0; i < p->nfrom && !allowed; i++)
        allowed = net_cidr_match(&p->from[i], ex->peer);
    if (!allowed) {
        char ip[64];
        net_addr_ip(ex->peer, ip, sizeof(ip));
        log_write(LOG_ERR, "*%llu purge forbidden for client %s", (unsigned long long)ex->id, ip);
        proxy_respond_error(ex, 403);
        return;
    }
    if (!cc->zone) {
        proxy_respond_error(ex, 404);
        return;
    }
    struct slice uri = ex->request_uri;
    bool prefix = uri.len && uri.p[uri.len - 1] == '*';
    if (prefix)
        uri.len--;
    int n = purge_uri(ex, uri, prefix);
    char *body = arena_printf(&ex->arena, "{\"purged\":%d}\n", n);
    set_status(ex, "PURGED");
    proxy_answer(ex, n ? 200 : 404, SLICE_LIT("application/json"),
                 body ? slice_cstr(body) : SLICE_NULL);
}
