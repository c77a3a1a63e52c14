/* HTTP/2 client sessions: nghttp2 does framing, HPACK, flow control and the
 * RFC 9113 message checks; this file moves bytes between the socket (or
 * TLS) and nghttp2, turns streams into exchanges, and guards against the
 * known floods. nghttp2 is only ever driven from the top of a loop event
 * (read, posted flush, timer): callbacks never call back into it except to
 * submit frames, so a stream is freed only in on_stream_close or when the
 * whole session closes. */
#include "http2/h2.h"
#include "net/proxy_protocol.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "proxy/accesslog.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/limit.h"
#include "proxy/proxy.h"
#include "proxy/vars.h"
#include "proxy/worker.h"
#include "tls/tls.h"

#define WQ_HIGH          (64 * 1024)  /* bytes queued toward the socket before nghttp2 waits */
#define WQ_READ_PAUSE    (256 * 1024) /* stop reading while the peer does not read us */
#define BODY_COPY_BELOW  4096         /* smaller DATA chunks are copied, not pinned */
#define STREAM_OUT_SLOTS 256          /* pieces a stream may queue before it says "full" */
#define IOV_BATCH        64
#define LINGER_MS        2000

/* Flood limits, per one-second window (GOAWAY ENHANCE_YOUR_CALM above). */
#define FLOOD_PING          100
#define FLOOD_SETTINGS      100
#define FLOOD_PRIORITY      500
#define FLOOD_WINDOW_UPDATE 1000
#define FLOOD_EMPTY_DATA    100
#define FLOOD_INVALID       100
#define FLOOD_BIG_HEADERS   10
#define RESET_RATE          33 /* RST_STREAM tokens regained per second (nghttp2) */

/* ---- queues of byte slices ---- */

struct piece {
    struct buf *seg; /* referenced; NULL for memory owned elsewhere */
    const char *p;
    size_t len;
};

struct pq {
    struct piece *v;
    uint32_t cap, head, count;
    size_t bytes;
};

static int pq_push(struct pq *q, struct buf *seg, const char *p, size_t len)
{
    if (q->count == q->cap) {
        uint32_t cap = q->cap ? q->cap * 2 : 8;
        struct piece *v = malloc(cap * sizeof(*v));
        if (!v)
            return -1;
        for (uint32_t i = 0; i < q->count; i++)
            v[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = v;
        q->cap = cap;
        q->head = 0;
    }
    q->v[(q->head + q->count) % q->cap] = (struct piece){seg ? buf_ref(seg) : NULL, p, len};
    q->count++;
    q->bytes += len;
    return 0;
}

static struct piece *pq_front(struct pq *q)
{
    return q->count ? &q->v[q->head] : NULL;
}

static struct piece *pq_back(struct pq *q)
{
    return q->count ? &q->v[(q->head + q->count - 1) % q->cap] : NULL;
}

static void pq_pop(struct pq *q)
{
    struct piece *f = &q->v[q->head];
    q->bytes -= f->len;
    if (f->seg)
        buf_unref(f->seg);
    q->head = (q->head + 1) % q->cap;
    q->count--;
}

/* Drop `n` bytes from the front. */
static void pq_advance(struct pq *q, size_t n)
{
    while (n && q->count) {
        struct piece *f = pq_front(q);
        if (n < f->len) {
            f->p += n;
            f->len -= n;
            q->bytes -= n;
            return;
        }
        n -= f->len;
        pq_pop(q);
    }
}

static void pq_clear(struct pq *q)
{
    while (q->count)
        pq_pop(q);
    free(q->v);
    *q = (struct pq){0};
}

/* ---- sessions and streams ---- */

struct h2_session;

struct h2_stream {
    struct exchange ex; /* first: client ops get &ex */
    struct h2_session *s;
    int32_t id;
    struct h2_stream *next, *prev;

    /* the request head as it is decoded */
    struct http_field *fields;
    size_t nfields, cap_fields;
    size_t hdr_bytes; /* RFC 9113 6.5.2 accounting: name + value + 32 */
    struct slice method, path, authority, scheme;
    bool hdr_too_large;
    bool started; /* proxy_start() was called */

    /* the request body */
    struct pq body;     /* DATA received, not yet taken by the corridor */
    struct buf *handed; /* segment of the last piece handed out */
    uint64_t body_total;
    bool req_eof;
    bool rb_error;
    bool sent_continue;
    struct timer rtimer; /* client_body_timeout */

    /* the response */
    struct pq out; /* body bytes not yet framed by nghttp2 */
    struct http_field *trailers;
    size_t ntrailers;
    bool head_submitted;
    bool resp_no_body;
    bool resp_end;
    bool deferred;      /* the data provider said DEFERRED */
    bool waiting_drain; /* the corridor waits for proxy_client_drained() */
    bool drained;       /* bytes left `out` since the last notice */
    bool ex_done;
    struct timer wtimer;    /* send_timeout: no byte of this stream could leave */
    struct timer ratetimer; /* limit_rate: the data provider resumes */
};

struct flood {
    uint64_t start_ms;
    uint32_t ping, settings, priority, window_update, empty_data, invalid, big_headers, reset;
    uint32_t data_sent; /* DATA frames we sent: each may earn two WINDOW_UPDATEs */
};

struct h2_session {
    struct io io; /* fd -1 for a detached session */
    struct tls_conn *tls;
    h2_sink_fn *sink; /* detached: where the bytes go instead of a socket */
    void *sink_ctx;
    struct worker *w;
    struct net_addr peer, local;
    struct pp_header pp; /* from a PROXY protocol header, if any (has_addr) */
    struct h2_session *next, *prev;
    nghttp2_session *ng;
    struct h2_conf conf;
    uint32_t send_timeout_ms;

    struct buf *rseg; /* read buffer; DATA pieces may pin it */
    size_t rend;
    struct buf *bcopy; /* small DATA chunks are copied here */
    size_t bcopy_used;
    struct pq wq;        /* frames toward the client */
    struct buf *scratch; /* copies of what nghttp2 serialises */
    size_t scratch_used;

    struct h2_stream *streams;
    size_t nstreams;
    uint64_t conn_number;
    int requests;
    uint64_t last_data_ms; /* when a DATA byte last left */
    struct flood fl;

    struct timer idle_timer;
    uint32_t header_timeout_ms; /* client_header_timeout: until the first request */
    struct timer wtimer;        /* the socket takes nothing */
    struct posted flush_post;
    struct posted release_post;
    bool closed;
    bool calm;             /* terminated for abuse: read nothing more */
    int32_t max_opened_id; /* highest client stream id opened here */
    bool going_away;
    bool lingering; /* GOAWAY sent, write side shut, draining */
};

static _Thread_local struct h2_session *tl_sessions;

static void sess_close(struct h2_session *s);
static void sess_flush(struct h2_session *s);
static void stream_free(struct h2_stream *st);

static void queue_flush(struct h2_session *s)
{
    if (!s->closed)
        loop_post(s->w->loop, &s->flush_post);
}

static struct h2_stream *stream_of(struct h2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s->ng, id);
}

static void calm_down(struct h2_session *s, const char *why)
{
    if (s->calm)
        return;
    char peer[64];
    net_addr_format(&s->peer, peer, sizeof(peer));
    LOG(LOG_INFO, "client %s: HTTP/2 %s, sending GOAWAY(ENHANCE_YOUR_CALM)", peer, why);
    s->calm = true;
    nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    queue_flush(s);
}

/* Count one event of a kind; true when the window's budget is spent. */
static bool flood(struct h2_session *s, uint32_t *counter, uint32_t limit, const char *what)
{
    uint64_t now = loop_now_ms(s->w->loop);
    if (now - s->fl.start_ms >= 1000) {
        s->fl = (struct flood){.start_ms = now};
    }
    if (++*counter <= limit)
        return false;
    calm_down(s, what);
    return true;
}

/* ---- the socket, plain or TLS ---- */

static ssize_t sess_recv(struct h2_session *s, void *buf, size_t want)
{
    return tls_io_read(&s->io, s->tls, buf, want);
}

static ssize_t sess_writev(struct h2_session *s, const struct iovec *iov, int n)
{
    if (s->sink)
        return s->sink(s->sink_ctx, iov, n);
    return tls_io_writev(s->io.fd, s->tls, iov, n);
}

/* Copy bytes nghttp2 serialised (or a DATA frame header) into scratch
 * segments; contiguous copies extend the last queued slice. */
static int wq_copy(struct h2_session *s, const void *p, size_t len)
{
    if (len > BUF_SEG_SIZE / 2) {
        struct buf *b = buf_new(len);
        if (!b)
            return -1;
        memcpy(b->data, p, len);
        int rc = pq_push(&s->wq, b, b->data, len);
        buf_unref(b);
        return rc;
    }
    if (!s->scratch || s->scratch_used + len > s->scratch->cap) {
        if (s->scratch)
            buf_unref(s->scratch);
        s->scratch = buf_new(BUF_SEG_SIZE);
        s->scratch_used = 0;
        if (!s->scratch)
            return -1;
    }
    char *d = s->scratch->data + s->scratch_used;
    memcpy(d, p, len);
    s->scratch_used += len;
    struct piece *last = pq_back(&s->wq);
    if (last && last->seg == s->scratch && last->p + last->len == d) {
        last->len += len;
        s->wq.bytes += len;
        return 0;
    }
    return pq_push(&s->wq, s->scratch, d, len);
}

/* Write what the socket takes. 0, or -1 when the connection is broken. */
static int wq_write(struct h2_session *s)
{
    while (s->wq.count && s->io.writable) {
        struct iovec iov[IOV_BATCH];
        int n = 0;
        for (uint32_t i = 0; i < s->wq.count && n < IOV_BATCH; i++) {
            struct piece *p = &s->wq.v[(s->wq.head + i) % s->wq.cap];
            iov[n++] = (struct iovec){(void *)p->p, p->len};
        }
        ssize_t w = sess_writev(s, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                s->io.writable = false;
                break;
            }
            return -1;
        }
        pq_advance(&s->wq, (size_t)w);
        timer_cancel(&s->wtimer);
    }
    if (s->wq.count && !timer_armed(&s->wtimer))
        timer_set(s->w->loop, &s->wtimer, s->send_timeout_ms);
    if (!s->wq.count && s->scratch && s->scratch->refs == 1)
        s->scratch_used = 0; /* reuse the scratch segment from its start */
    return 0;
}

/* ---- nghttp2 callbacks: output ---- */

static ssize_t cb_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)ng;
    (void)flags;
    struct h2_session *s = ud;
    if (s->wq.bytes >= WQ_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    if (wq_copy(s, data, len) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

static void stream_wtimer_update(struct h2_stream *st)
{
    if (st->out.bytes)
        timer_set(st->s->w->loop, &st->wtimer, st->s->send_timeout_ms);
    else
        timer_cancel(&st->wtimer);
}

/* A DATA frame of `len` bytes from the stream's queue (NO_COPY): the frame
 * header is copied, the body slices are queued by reference. */
static int cb_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t len, nghttp2_data_source *src, void *ud)
{
    (void)ng;
    struct h2_session *s = ud;
    struct h2_stream *st = src->ptr;
    if (s->wq.bytes >= WQ_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    if (wq_copy(s, framehd, 9) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    size_t left = len;
    while (left) {
        struct piece *p = pq_front(&st->out);
        size_t n = p->len < left ? p->len : left;
        /* memory the exchange owns (local answers) dies with it: copy */
        int rc = p->seg ? pq_push(&s->wq, p->seg, p->p, n) : wq_copy(s, p->p, n);
        if (rc < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        pq_advance(&st->out, n);
        left -= n;
    }
    (void)frame;
    st->ex.bytes_sent += 9 + len;
    s->fl.data_sent++;
    st->drained = true;
    s->last_data_ms = loop_now_ms(s->w->loop);
    stream_wtimer_update(st);
    return 0;
}

static ssize_t cb_read_data(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)buf;
    (void)ud;
    struct h2_stream *st = src->ptr;
    size_t n = st->out.bytes < length ? st->out.bytes : length;
    struct exchange *ex = &st->ex;
    if (n && (ex->limit_rate || (!ex->limit_rate_set && ex->lc && ex->lc->limits.rate))) {
        /* limit_rate: a frame of what the rate allows now (9 bytes of frame
         * header count too, as they do in bytes_sent) */
        uint32_t wait_ms = 0;
        uint64_t room = limit_rate_budget(ex, loop_now_ms(st->s->w->loop), n + 9, &wait_ms);
        if (room < n + 9) {
            n = room > 9 ? (size_t)(room - 9) : 0;
            timer_set(st->s->w->loop, &st->ratetimer, wait_ms);
        }
        if (n == 0) {
            st->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    if (n == 0 && !st->resp_end) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == st->out.bytes && st->resp_end) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->ntrailers) {
            nghttp2_nv nva[64];
            size_t k = 0;
            for (size_t i = 0; i < st->ntrailers && k < 64; i++, k++)
                nva[k] = (nghttp2_nv){(uint8_t *)st->trailers[i].name.p,
                                      (uint8_t *)st->trailers[i].value.p, st->trailers[i].name.len,
                                      st->trailers[i].value.len, NGHTTP2_NV_FLAG_NONE};
            if (nghttp2_submit_trailer(ng, id, nva, k) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
    }
    return (ssize_t)n;
}

/* ---- request heads ---- */

/* RFC 9113 5.1.1: a new stream's id must be larger than every earlier one.
 * nghttp2 ignores a HEADERS frame on a lower id it knows nothing of (it
 * cannot tell an idle stream from one closed long ago); a lower id that was
 * never opened here is an idle stream, so this is a connection error. */
static int cb_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud)
{
    struct h2_session *s = ud;
    if (hd->type != NGHTTP2_HEADERS || !(hd->stream_id & 1) || s->calm)
        return 0;
    if (hd->stream_id <= s->max_opened_id && !nghttp2_session_find_stream(ng, hd->stream_id) &&
        hd->stream_id < nghttp2_session_get_last_proc_stream_id(ng)) {
        s->calm = true;
        nghttp2_session_terminate_session(ng, NGHTTP2_PROTOCOL_ERROR);
        queue_flush(s);
    }
    return 0;
}

static int cb_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_session *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2_stream *st = calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->s = s;
    st->id = frame->hd.stream_id;
    if (st->id > s->max_opened_id)
        s->max_opened_id = st->id;
    arena_init(&st->ex.arena, 4096, 0);
    timer_init(&st->rtimer, NULL, st);
    timer_init(&st->wtimer, NULL, st);
    timer_init(&st->ratetimer, NULL, st);
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->nstreams++;
    timer_cancel(&s->idle_timer);
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    return 0;
}

static int add_field(struct h2_stream *st, struct slice name, struct slice value)
{
    if (st->nfields == st->cap_fields) {
        size_t cap = st->cap_fields ? st->cap_fields * 2 : 16;
        struct http_field *v = arena_alloc(&st->ex.arena, cap * sizeof(*v));
        if (!v)
            return -1;
        if (st->nfields)
            memcpy(v, st->fields, st->nfields * sizeof(*v));
        st->fields = v;
        st->cap_fields = cap;
    }
    st->fields[st->nfields++] = (struct http_field){name, value};
    return 0;
}

static int cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    struct h2_session *s = ud;
    if (s->calm)
        return 0;
    struct h2_stream *st = stream_of(s, frame->hd.stream_id);
    if (!st)
        return 0;
    st->hdr_bytes += namelen + valuelen + 32;
    if (st->hdr_bytes > s->conf.max_header_size) {
        /* keep decoding (HPACK state is shared) but keep nothing; a block
         * that goes on far past the limit is a bomb */
        if (!st->hdr_too_large) {
            st->hdr_too_large = true;
            if (flood(s, &s->fl.big_headers, FLOOD_BIG_HEADERS, "oversized header lists"))
                return 0;
        }
        if (st->hdr_bytes > 4 * (size_t)s->conf.max_header_size + 65536)
            calm_down(s, "header list far over http2_max_header_size (HPACK bomb?)");
        return 0;
    }
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST || st->started) {
        /* request trailers: kept as HTTP/1 field lines for an upstream that
         * gets the body chunked (bounded; pseudo and connection fields out) */
        struct slice n = slice_make((const char *)name, namelen);
        struct slice old = st->ex.req_trailers;
        size_t add = namelen + valuelen + 4;
        if (!namelen || name[0] == ':' || h2_field_is_connection_specific(n) ||
            old.len + add > 16384)
            return 0;
        char *p = arena_alloc(&st->ex.arena, old.len + add);
        if (!p)
            return 0;
        if (old.len)
            memcpy(p, old.p, old.len);
        char *d = p + old.len;
        d = mem_put(d, name, namelen);
        d = MEM_PUT_LIT(d, ": ");
        d = mem_put(d, value, valuelen);
        d = MEM_PUT_LIT(d, "\r\n");
        st->ex.req_trailers = slice_make(p, (size_t)(d - p));
        return 0;
    }
    struct slice n = arena_slice_dup(&st->ex.arena, slice_make((const char *)name, namelen));
    struct slice v = arena_slice_dup(&st->ex.arena, slice_make((const char *)value, valuelen));
    if ((namelen && !n.p) || (valuelen && !v.p))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (namelen && name[0] == ':') {
        if (slice_eq(n, SLICE_LIT(":method")))
            st->method = v;
        else if (slice_eq(n, SLICE_LIT(":path")))
            st->path = v;
        else if (slice_eq(n, SLICE_LIT(":authority")))
            st->authority = v;
        else if (slice_eq(n, SLICE_LIT(":scheme")))
            st->scheme = v;
        return 0;
    }
    /* nghttp2 refuses connection-specific fields before we see them
     * (RST_STREAM PROTOCOL_ERROR); this is a second line */
    if (h2_field_is_connection_specific(n) && !slice_eq(n, SLICE_LIT("te")))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (add_field(st, n, v) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

/* RFC 9113 8.2.3: cookie crumbs are joined with "; " for HTTP/1.1; :authority
 * becomes Host (and wins over a Host field). Fills ex->req_fields. */
static int translate_fields(struct h2_stream *st)
{
    struct exchange *ex = &st->ex;
    size_t ncookie = 0, clen = 0;
    for (size_t i = 0; i < st->nfields; i++)
        if (slice_eq(st->fields[i].name, SLICE_LIT("cookie"))) {
            ncookie++;
            clen += st->fields[i].value.len + 2;
        }
    ex->req_fields = arena_alloc(&ex->arena, (st->nfields + 2) * sizeof(*ex->req_fields));
    char *cookie = ncookie ? arena_alloc(&ex->arena, clen) : NULL;
    if (!ex->req_fields || (ncookie && !cookie))
        return -1;
    size_t n = 0, co = 0;
    struct slice host = st->authority;
    if (host.len)
        ex->req_fields[n++] = (struct http_field){SLICE_LIT("host"), host};
    for (size_t i = 0; i < st->nfields; i++) {
        struct http_field *f = &st->fields[i];
        if (slice_eq(f->name, SLICE_LIT("cookie"))) {
            if (co) {
                cookie[co++] = ';';
                cookie[co++] = ' ';
            }
            memcpy(cookie + co, f->value.p, f->value.len);
            co += f->value.len;
            continue;
        }
        if (slice_eq(f->name, SLICE_LIT("host"))) {
            if (st->authority.len)
                continue;
            host = f->value;
        } else if (slice_eq(f->name, SLICE_LIT("content-length"))) {
            int64_t v = 0;
            for (size_t k = 0; k < f->value.len; k++)
                v = v * 10 + (f->value.p[k] - '0'); /* nghttp2 checked the digits */
            ex->req_content_length = v;
        } else if (slice_eq(f->name, SLICE_LIT("expect"))) {
            ex->expect_continue = slice_eq_lit_ci(f->value, "100-continue");
        }
        if (memchr(f->name.p, '_', f->name.len))
            ex->req_underscore = true; /* (underscores_in_headers) */
        ex->req_fields[n++] = *f;
    }
    if (ncookie)
        ex->req_fields[n++] = (struct http_field){SLICE_LIT("cookie"), slice_make(cookie, co)};
    ex->nreq_fields = n;
    ex->host = http_host_normalize(&ex->arena, host);
    return 0;
}

static int set_target(struct h2_stream *st)
{
    struct exchange *ex = &st->ex;
    if (ex->method_id == HTTP_M_CONNECT) {
        ex->request_uri = st->authority;
        ex->uri = st->authority;
        return 0;
    }
    struct slice path = st->path;
    ex->request_uri = path;
    if (slice_eq(path, SLICE_LIT("*"))) {
        ex->uri = path;
        return 0;
    }
    const char *q = memchr(path.p, '?', path.len);
    struct slice raw = path;
    if (q) {
        raw = slice_make(path.p, (size_t)(q - path.p));
        ex->args = slice_make(q + 1, path.len - raw.len - 1);
        ex->has_args = true;
    }
    char *norm = arena_alloc(&ex->arena, raw.len + 1);
    if (!norm)
        return -1;
    long nl = http_path_normalize(raw, norm, ex->listen->dflt->merge_slashes);
    if (nl < 0)
        return 400;
    norm[nl] = '\0';
    ex->uri = slice_make(norm, (size_t)nl);
    return 0;
}

static const struct client_ops h2_ops;

static void body_timeout_cb(struct timer *t);
static void stream_wtimer_cb(struct timer *t);
static void stream_ratetimer_cb(struct timer *t);

/* The request head is complete: fill the exchange and start the corridor. */
static void stream_start(struct h2_stream *st, bool end_stream)
{
    struct h2_session *s = st->s;
    struct exchange *ex = &st->ex;
    struct snapshot *snap = worker_snapshot(s->w);
    const struct listen_set *ls = snapshot_find_listen(snap, &s->local);
    if (!ls) {
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
        return;
    }
    st->started = true;
    st->req_eof = end_stream;
    timer_init(&st->rtimer, body_timeout_cb, st);
    timer_init(&st->wtimer, stream_wtimer_cb, st);
    timer_init(&st->ratetimer, stream_ratetimer_cb, st);
    ex->snap = snapshot_ref(snap);
    ex->worker = s->w;
    ex->client = &h2_ops;
    ex->session = s;
    ex->loop = s->w->loop;
    ex->id = ++s->w->next_exchange_id;
    STAT_ADD(s->w->stats.requests, 1);
    ex->stat_counted = true;
    ex->peer = &s->peer;
    ex->local = &s->local;
    if (s->pp.has_addr) {
        ex->pp_src = &s->pp.src;
        ex->pp_dst = &s->pp.dst;
    }
    ex->listen = ls;
    ex->is_tls = s->tls != NULL;
    ex->conn_number = s->conn_number;
    ex->conn_requests = ++s->requests;
    ex->start_ms = loop_now_ms(s->w->loop);
    ex->minor_version = 2;
    ex->method = st->method;
    ex->method_id = http_method_id(st->method);
    ex->req_content_length = -1;
    ex->req_has_body = !end_stream;
    ex->request_length = st->hdr_bytes;
    s->w->nactive++;
    if (st->hdr_too_large) {
        ex->request_line = SLICE_LIT("-");
        proxy_respond_error(ex, 431);
        return;
    }
    int rc = translate_fields(st);
    if (rc == 0)
        rc = set_target(st);
    ex->request_line.p = arena_printf(&ex->arena, "%.*s %.*s HTTP/2.0", (int)st->method.len,
                                      st->method.p, (int)ex->request_uri.len, ex->request_uri.p);
    ex->request_line.len = ex->request_line.p ? strlen(ex->request_line.p) : 0;
    if (rc != 0) {
        proxy_respond_error(ex, rc < 0 ? 500 : rc);
        return;
    }
    if (ex->req_content_length == 0 && !end_stream)
        ex->req_has_body = true; /* DATA may still come, empty, with END_STREAM */
    proxy_start(ex);
}

/* ---- request bodies ---- */

static void body_notify(struct h2_stream *st)
{
    if (st->started && !st->ex_done)
        proxy_request_body_ready(&st->ex);
}

static int cb_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    struct h2_session *s = ud;
    struct h2_stream *st = stream_of(s, id);
    if (!st || !st->started || st->ex_done || st->rb_error) {
        nghttp2_session_consume(ng, id, len); /* nobody reads it: reopen the window */
        return 0;
    }
    const char *p = (const char *)data;
    struct buf *seg = NULL;
    if (len >= BODY_COPY_BELOW && s->rseg && p >= s->rseg->data &&
        p + len <= s->rseg->data + s->rseg->cap) {
        seg = s->rseg;
    } else {
        /* a small chunk would pin a whole read segment: copy it */
        if (!s->bcopy || s->bcopy_used + len > s->bcopy->cap) {
            if (s->bcopy)
                buf_unref(s->bcopy);
            s->bcopy = buf_new(len > BUF_SEG_SIZE ? len : BUF_SEG_SIZE);
            s->bcopy_used = 0;
            if (!s->bcopy)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        seg = s->bcopy;
        memcpy(seg->data + s->bcopy_used, p, len);
        p = seg->data + s->bcopy_used;
        s->bcopy_used += len;
    }
    if (pq_push(&st->body, seg, p, len) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

/* ---- frames received ---- */

static void on_request_frame(struct h2_session *s, const nghttp2_frame *frame)
{
    struct h2_stream *st = stream_of(s, frame->hd.stream_id);
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (!st)
        return;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        stream_start(st, end);
        return;
    }
    if (frame->hd.type == NGHTTP2_DATA && frame->hd.length == 0 && !end &&
        flood(s, &s->fl.empty_data, FLOOD_EMPTY_DATA, "empty DATA frame flood"))
        return;
    if (end)
        st->req_eof = true;
    if (st->body.bytes || end)
        body_notify(st);
}

static int cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    (void)ng;
    struct h2_session *s = ud;
    if (s->calm)
        return 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        on_request_frame(s, frame);
        break;
    case NGHTTP2_PING:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
            flood(s, &s->fl.ping, FLOOD_PING, "PING flood");
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
            flood(s, &s->fl.settings, FLOOD_SETTINGS, "SETTINGS flood");
        break;
    case NGHTTP2_RST_STREAM: {
        /* CVE-2023-44487: streams opened and reset faster than served.
         * nghttp2's token bucket (INTERNAL_ERROR) is the slower backstop */
        uint32_t limit =
            s->conf.max_concurrent_streams < 100 ? 100 : s->conf.max_concurrent_streams;
        flood(s, &s->fl.reset, limit, "rapid reset (RST_STREAM flood)");
        break;
    }
    case NGHTTP2_PRIORITY:
        flood(s, &s->fl.priority, FLOOD_PRIORITY, "PRIORITY flood");
        break;
    case NGHTTP2_WINDOW_UPDATE:
        flood(s, &s->fl.window_update, FLOOD_WINDOW_UPDATE + 4 * s->fl.data_sent,
              "WINDOW_UPDATE flood");
        /* a window opened: deferred streams may go on */
        break;
    default:
        break;
    }
    return 0;
}

static int cb_invalid_frame(nghttp2_session *ng, const nghttp2_frame *frame, int err, void *ud)
{
    (void)ng;
    (void)frame;
    (void)err;
    struct h2_session *s = ud;
    flood(s, &s->fl.invalid, FLOOD_INVALID, "stream errors flood");
    return 0;
}

/* Our END_STREAM left while the client still sends its body: tell it to
 * stop (RFC 9113 8.1), which closes the stream. */
static int cb_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_session *s = ud;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct h2_stream *st = stream_of(s, frame->hd.stream_id);
        if (st && !st->req_eof)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
    if (frame->hd.type == NGHTTP2_HEADERS && frame->hd.stream_id) {
        struct h2_stream *st = stream_of(s, frame->hd.stream_id);
        if (st)
            st->ex.bytes_sent += 9 + frame->hd.length;
    }
    return 0;
}

static int cb_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    struct h2_session *s = ud;
    struct h2_stream *st = stream_of(s, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    if (st->started && !st->ex_done && !st->ex.ending.code)
        st->ex.ending = (struct ending){
            .code = END_CLIENT_CLOSED,
            .why = code == NGHTTP2_NO_ERROR ? "client closed the stream" : "stream reset",
        };
    /* what the corridor did not take still counts against the connection window */
    if (st->body.bytes)
        nghttp2_session_consume_connection(ng, st->body.bytes);
    stream_free(st);
    return 0;
}

/* Log, release and free a stream; its exchange is aborted if still running. */
static void stream_free(struct h2_stream *st)
{
    struct h2_session *s = st->s;
    struct exchange *ex = &st->ex;
    timer_cancel(&st->rtimer);
    timer_cancel(&st->wtimer);
    timer_cancel(&st->ratetimer);
    if (st->started) {
        if (!st->ex_done) {
            if (!ex->ending.code)
                ex->ending = (struct ending){.code = END_CLIENT_CLOSED,
                                             .why = "client closed the connection"};
            proxy_abort(ex);
            if (!ex->head_sent)
                ex->status = 499;
        }
        accesslog_write(ex);
        proxy_release(ex);
        snapshot_unref(ex->snap);
        s->w->nactive--;
    }
    pq_clear(&st->out);
    pq_clear(&st->body);
    if (st->handed)
        buf_unref(st->handed);
    arena_deinit(&ex->arena);
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    s->nstreams--;
    if (!s->nstreams && !s->closed)
        timer_set(s->w->loop, &s->idle_timer, s->conf.idle_timeout_ms);
    free(st);
}

/* ---- client_ops ---- */

static struct h2_stream *ST(struct exchange *ex)
{
    return (struct h2_stream *)ex;
}

static nghttp2_nv nv_make(struct slice n, struct slice v)
{
    return (nghttp2_nv){(uint8_t *)n.p, (uint8_t *)v.p, n.len, v.len, NGHTTP2_NV_FLAG_NONE};
}

/* Response fields for HTTP/2: lower-case names, nothing connection-specific. */
static size_t response_nva(struct exchange *ex, const struct http_field *f, size_t nf,
                           nghttp2_nv *nva, size_t at)
{
    for (size_t i = 0; i < nf; i++) {
        if (h2_field_is_connection_specific(f[i].name) || !f[i].name.len)
            continue;
        char *low = arena_alloc(&ex->arena, f[i].name.len);
        if (!low)
            continue;
        for (size_t k = 0; k < f[i].name.len; k++)
            low[k] = ascii_lower(f[i].name.p[k]);
        nva[at++] = nv_make(slice_make(low, f[i].name.len), f[i].value);
    }
    return at;
}

static int op_send_head(struct exchange *ex, const struct resp_head *h)
{
    struct h2_stream *st = ST(ex);
    struct h2_session *s = st->s;
    const struct loc_conf *lc = ex->lc ? ex->lc : ex->srv ? ex->srv->lc : ex->snap->http_lc;
    nghttp2_nv *nva = arena_alloc(&ex->arena, (h->nfields + 4) * sizeof(*nva));
    char *status = arena_alloc(&ex->arena, 4);
    char *cl = arena_alloc(&ex->arena, 24);
    if (!nva || !status || !cl)
        return -1;
    snprintf(status, 4, "%03d", h->status);
    size_t n = 0;
    nva[n++] = nv_make(SLICE_LIT(":status"), slice_make(status, 3));
    bool has_server = false, has_date = false;
    for (size_t i = 0; i < h->nfields; i++) {
        has_server |= slice_eq_lit_ci(h->fields[i].name, "server");
        has_date |= slice_eq_lit_ci(h->fields[i].name, "date");
    }
    if (!has_server)
        nva[n++] = nv_make(SLICE_LIT("server"),
                           lc->server_tokens ? SLICE_LIT(PORTICO_SERVER) : SLICE_LIT("portico"));
    if (!has_date)
        nva[n++] = nv_make(SLICE_LIT("date"), vars_http_date());
    n = response_nva(ex, h->fields, h->nfields, nva, n);
    bool no_body = h->no_body || ex->method_id == HTTP_M_HEAD;
    if (h->content_length >= 0 && h->status != 204 && h->status >= 200)
        nva[n++] = nv_make(SLICE_LIT("content-length"),
                           slice_make(cl, u64_to_dec((uint64_t)h->content_length, cl)));
    st->resp_no_body = no_body || h->content_length == 0;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = cb_read_data};
    if (nghttp2_submit_response(s->ng, st->id, nva, n, st->resp_no_body ? NULL : &prd) != 0)
        return -1;
    st->head_submitted = true;
    ex->status = h->status;
    ex->resp_fields = h->fields;
    ex->nresp_fields = h->nfields;
    ex->head_sent = true;
    queue_flush(s);
    return 0;
}

static int op_send_interim(struct exchange *ex, int status, struct http_field *f, size_t nf)
{
    struct h2_stream *st = ST(ex);
    if (status == 101 || st->head_submitted)
        return 0; /* no Upgrade in HTTP/2 (RFC 9113 8.6) */
    nghttp2_nv *nva = arena_alloc(&ex->arena, (nf + 1) * sizeof(*nva));
    char *code = arena_alloc(&ex->arena, 4);
    if (!nva || !code)
        return -1;
    snprintf(code, 4, "%03d", status);
    nva[0] = nv_make(SLICE_LIT(":status"), slice_make(code, 3));
    size_t n = response_nva(ex, f, nf, nva, 1);
    if (status == 100) {
        if (st->sent_continue)
            return 0;
        st->sent_continue = true;
    }
    if (nghttp2_submit_headers(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NULL, nva, n, NULL) < 0)
        return -1;
    queue_flush(st->s);
    return 0;
}

static void resume(struct h2_stream *st)
{
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->s->ng, st->id);
    }
    queue_flush(st->s);
}

static int op_send_body(struct exchange *ex, const struct body_piece *piece)
{
    struct h2_stream *st = ST(ex);
    if (st->resp_no_body || piece->len == 0)
        return 0;
    if (pq_push(&st->out, piece->seg, piece->p, piece->len) < 0)
        return -1;
    ex->body_bytes_sent += piece->len;
    if (!timer_armed(&st->wtimer))
        stream_wtimer_update(st);
    resume(st);
    return 0;
}

static int op_send_end(struct exchange *ex, struct slice trailers)
{
    struct h2_stream *st = ST(ex);
    if (st->resp_end)
        return 0;
    st->resp_end = true;
    if (trailers.len && !st->resp_no_body) {
        char *lower = arena_alloc(&ex->arena, trailers.len);
        size_t max = trailers.len / 3 + 1;
        st->trailers = arena_alloc(&ex->arena, max * sizeof(*st->trailers));
        if (lower && st->trailers)
            st->ntrailers = h2_parse_trailers(trailers, lower, st->trailers, max);
    }
    resume(st);
    return 0;
}

static size_t op_pending(struct exchange *ex)
{
    struct h2_stream *st = ST(ex);
    size_t full = st->out.count >= STREAM_OUT_SLOTS ? (size_t)1 << 30 : 0;
    if (st->out.bytes || full)
        st->waiting_drain = true;
    return st->out.bytes + full;
}

static void op_continue_100(struct exchange *ex)
{
    struct h2_stream *st = ST(ex);
    if (!ex->expect_continue || st->sent_continue || st->req_eof || st->body.count)
        return;
    op_send_interim(ex, 100, NULL, 0);
}

static enum body_status body_fail(struct h2_stream *st, enum ending_code code, const char *why)
{
    st->ex.ending = (struct ending){.code = code, .why = why};
    st->rb_error = true;
    timer_cancel(&st->rtimer);
    return BODY_ERROR;
}

static enum body_status op_body_read(struct exchange *ex, struct body_piece *piece)
{
    struct h2_stream *st = ST(ex);
    struct h2_session *s = st->s;
    if (st->rb_error)
        return BODY_ERROR;
    struct piece *p = pq_front(&st->body);
    if (!p) {
        if (st->req_eof) {
            timer_cancel(&st->rtimer);
            return BODY_END;
        }
        const struct loc_conf *lc = ex->lc ? ex->lc : ex->snap->http_lc;
        timer_set(s->w->loop, &st->rtimer, lc->client_body_timeout_ms);
        return BODY_AGAIN;
    }
    timer_cancel(&st->rtimer);
    if (st->handed)
        buf_unref(st->handed);
    st->handed = p->seg ? buf_ref(p->seg) : NULL;
    *piece = (struct body_piece){p->seg, p->p, p->len};
    size_t len = p->len;
    pq_pop(&st->body);
    st->body_total += len;
    ex->request_length += len;
    /* the window reopens as the corridor takes the bytes, not before */
    nghttp2_session_consume(s->ng, st->id, len);
    queue_flush(s);
    const struct loc_conf *lc = ex->lc;
    if (lc && lc->client_max_body_size && st->body_total > lc->client_max_body_size)
        return body_fail(st, END_BODY_TOO_LARGE, "request body too large");
    return BODY_DATA;
}

static void op_done(struct exchange *ex, bool broken)
{
    struct h2_stream *st = ST(ex);
    st->ex_done = true;
    timer_cancel(&st->rtimer);
    if (broken || !st->head_submitted) {
        /* the response cannot be completed: reset the stream only */
        nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id,
                                  ex->status == 444 ? NGHTTP2_NO_ERROR : NGHTTP2_INTERNAL_ERROR);
        queue_flush(st->s);
        return;
    }
    if (!st->resp_end)
        op_send_end(ex, SLICE_NULL);
    queue_flush(st->s);
}

static const struct client_ops h2_ops = {
    .send_head = op_send_head,
    .send_interim = op_send_interim,
    .send_body = op_send_body,
    .send_end = op_send_end,
    .pending = op_pending,
    .body_read = op_body_read,
    .continue_100 = op_continue_100,
    .done = op_done,
};

/* ---- timers ---- */

static void body_timeout_cb(struct timer *t)
{
    struct h2_stream *st = t->data;
    if (st->req_eof || st->ex_done)
        return;
    body_fail(st, END_CLIENT_TIMEOUT, "client_body_timeout");
    proxy_request_body_ready(&st->ex);
    queue_flush(st->s);
}

/* No byte of this stream could leave for send_timeout: the client keeps its
 * window shut. If nothing at all left the connection meanwhile, the whole
 * connection is stalled (zero-window attack): GOAWAY. */
static void stream_ratetimer_cb(struct timer *t)
{
    resume(t->data);
}

static void stream_wtimer_cb(struct timer *t)
{
    struct h2_stream *st = t->data;
    struct h2_session *s = st->s;
    char peer[64];
    net_addr_format(&s->peer, peer, sizeof(peer));
    LOG(LOG_INFO, "client %s timed out (send_timeout) while sending the response on stream %d",
        peer, st->id);
    if (!st->ex_done) {
        st->ex.ending = (struct ending){.code = END_CLIENT_TIMEOUT, .why = "send_timeout"};
        proxy_abort(&st->ex);
        st->ex_done = true;
    }
    if (loop_now_ms(s->w->loop) - s->last_data_ms >= s->send_timeout_ms)
        calm_down(s, "flow-control window stalled (send_timeout)");
    else
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    queue_flush(s);
}

static void idle_timer_cb(struct timer *t)
{
    struct h2_session *s = t->data;
    if (s->lingering) {
        sess_close(s);
        return;
    }
    if (s->nstreams)
        return;
    nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
    s->going_away = true;
    sess_flush(s);
}

static void sess_wtimer_cb(struct timer *t)
{
    struct h2_session *s = t->data;
    char peer[64];
    net_addr_format(&s->peer, peer, sizeof(peer));
    LOG(LOG_INFO, "client %s timed out (send_timeout) on an HTTP/2 connection", peer);
    sess_close(s);
}

/* ---- events ---- */

static void linger_read(struct h2_session *s)
{
    char sink[4096];
    for (;;) {
        ssize_t n = sess_recv(s, sink, sizeof(sink));
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            s->io.readable = false;
            return;
        }
        sess_close(s);
        return;
    }
}

/* Tell the corridor about streams whose queue went down. */
static void notify_drained(struct h2_session *s)
{
    for (struct h2_stream *st = s->streams; st && !s->closed; st = st->next) {
        if (!st->drained)
            continue;
        st->drained = false;
        if (st->waiting_drain && st->started && !st->ex_done) {
            st->waiting_drain = false;
            proxy_client_drained(&st->ex);
        }
    }
}

static void sess_read(struct h2_session *s);

/* The GOAWAY went out: stop writing, and read (and drop) what the client
 * still sends for a moment, so that closing does not reset the connection
 * before the client has read our last frames. */
static void sess_linger(struct h2_session *s)
{
    if (s->lingering)
        return;
    s->lingering = true;
    if (s->sink) {
        sess_close(s); /* no socket: nothing to drain */
        return;
    }
    /* TLS: close_notify, then the TCP FIN, so the client sees the end */
    if (s->tls)
        tls_shutdown(s->tls);
    shutdown(s->io.fd, SHUT_WR);
    timer_set(s->w->loop, &s->idle_timer, LINGER_MS);
    linger_read(s);
}

static void sess_flush(struct h2_session *s)
{
    if (s->closed)
        return;
    posted_cancel(s->w->loop, &s->flush_post);
    for (int round = 0; round < 64; round++) {
        if (s->wq.bytes < WQ_HIGH) {
            int rv = nghttp2_session_send(s->ng);
            if (rv < 0) {
                LOG(LOG_INFO, "HTTP/2 session send failed: %s", nghttp2_strerror(rv));
                sess_close(s);
                return;
            }
        }
        notify_drained(s);
        if (s->closed)
            return;
        if (!s->wq.count)
            break;
        size_t before = s->wq.bytes;
        if (wq_write(s) < 0) {
            sess_close(s);
            return;
        }
        if (s->wq.bytes == before)
            break; /* the socket is full: wait for writable */
    }
    if (!s->wq.count && !nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng)) {
        sess_linger(s);
        return;
    }
    if (s->wq.count && s->io.writable)
        queue_flush(s);
    if (s->io.readable && !s->calm && s->wq.bytes < WQ_READ_PAUSE) {
        /* reading paused while the client did not read us */
        sess_read(s);
        if (!s->closed)
            queue_flush(s);
    }
}

static int rseg_room(struct h2_session *s)
{
    if (s->rseg && s->rseg->refs == 1)
        s->rend = 0; /* nothing points into it any more */
    if (s->rseg && s->rend < s->rseg->cap)
        return 0;
    if (s->rseg)
        buf_unref(s->rseg);
    s->rseg = buf_new(BUF_SEG_SIZE);
    s->rend = 0;
    return s->rseg ? 0 : -1;
}

static int feed(struct h2_session *s, size_t n)
{
    ssize_t rv = nghttp2_session_mem_recv(s->ng, (const uint8_t *)s->rseg->data + s->rend, n);
    s->rend += n;
    if (rv < 0) {
        char peer[64];
        net_addr_format(&s->peer, peer, sizeof(peer));
        LOG(LOG_INFO, "client %s: HTTP/2 error: %s", peer, nghttp2_strerror((int)rv));
        return (int)rv;
    }
    return 0;
}

/* nghttp2 gave up without a GOAWAY of its own: say why, then close. */
static void feed_failed(struct h2_session *s, int rv)
{
    bool abuse = rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;
    s->calm = true;
    if (nghttp2_session_terminate_session(s->ng, abuse ? NGHTTP2_ENHANCE_YOUR_CALM
                                                       : NGHTTP2_PROTOCOL_ERROR) != 0)
        sess_close(s);
}

static void sess_read(struct h2_session *s)
{
    while (s->io.readable && !s->closed && !s->calm && s->wq.bytes < WQ_READ_PAUSE &&
           nghttp2_session_want_read(s->ng)) {
        if (rseg_room(s) < 0) {
            sess_close(s);
            return;
        }
        ssize_t n = sess_recv(s, s->rseg->data + s->rend, s->rseg->cap - s->rend);
        if (n > 0) {
            int rv = feed(s, (size_t)n);
            if (rv < 0) {
                feed_failed(s, rv);
                return;
            }
            continue;
        }
        if (n == 0) {
            sess_close(s);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            s->io.readable = false;
            break;
        }
        sess_close(s);
        return;
    }
}

static void sess_io(struct io *io, uint32_t events)
{
    (void)events;
    struct h2_session *s = io->data;
    if (s->closed)
        return;
    if (s->lingering) {
        linger_read(s);
        return;
    }
    sess_read(s);
    if (s->closed)
        return;
    if (io->hup && !io->readable && !s->wq.count) {
        sess_close(s);
        return;
    }
    queue_flush(s);
}

static void flush_post_cb(struct posted *p)
{
    struct h2_session *s = p->data;
    sess_flush(s);
}

static void release_post_cb(struct posted *p)
{
    free(p->data);
}

static void sess_close(struct h2_session *s)
{
    if (s->closed)
        return;
    s->closed = true;
    struct loop *l = s->w->loop;
    loop_io_del(l, &s->io);
    timer_cancel(&s->idle_timer);
    timer_cancel(&s->wtimer);
    posted_cancel(l, &s->flush_post);
    while (s->streams) {
        struct h2_stream *st = s->streams;
        nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        stream_free(st);
    }
    nghttp2_session_del(s->ng);
    s->ng = NULL;
    if (s->tls) {
        tls_shutdown(s->tls);
        tls_conn_free(s->tls);
    }
    if (s->io.fd >= 0) {
        close(s->io.fd);
        STAT_ADD(s->w->stats.closed, 1);
    }
    s->io.fd = -1;
    pq_clear(&s->wq);
    if (s->rseg)
        buf_unref(s->rseg);
    if (s->bcopy)
        buf_unref(s->bcopy);
    if (s->scratch)
        buf_unref(s->scratch);
    if (s->prev)
        s->prev->next = s->next;
    else
        tl_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    worker_session_closed(s->w, NULL);
    s->w->nsessions--;
    posted_init(&s->release_post, release_post_cb, s);
    loop_post(l, &s->release_post);
}

/* ---- start ---- */

static nghttp2_session_callbacks *callbacks;
static pthread_once_t callbacks_once = PTHREAD_ONCE_INIT;

static void callbacks_init(void)
{
    if (nghttp2_session_callbacks_new(&callbacks) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(callbacks, cb_send);
    nghttp2_session_callbacks_set_send_data_callback(callbacks, cb_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, cb_begin_headers);
    nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, cb_begin_frame);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, cb_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, cb_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, cb_frame_send);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, cb_invalid_frame);
}

static int ng_new(struct h2_session *s)
{
    pthread_once(&callbacks_once, callbacks_init);
    nghttp2_option *opt;
    if (!callbacks || nghttp2_option_new(&opt) != 0)
        return -1;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    uint32_t burst = s->conf.max_concurrent_streams * 2;
    nghttp2_option_set_stream_reset_rate_limit(opt, burst < 200 ? 200 : burst, RESET_RATE);
    int rv = nghttp2_session_server_new2(&s->ng, callbacks, s, opt);
    nghttp2_option_del(opt);
    if (rv != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->conf.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, s->conf.initial_window_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->conf.max_header_size},
    };
    if (nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)s->conf.body_preread) != 0) {
        nghttp2_session_del(s->ng);
        return -1;
    }
    return 0;
}

/* What every session starts with: not yet in the loop nor in the list. */
static struct h2_session *sess_new(struct worker *w, int fd, const struct net_addr *peer,
                                   const struct net_addr *local)
{
    const struct listen_set *ls = snapshot_find_listen(worker_snapshot(w), local);
    struct h2_session *s = ls ? calloc(1, sizeof(*s)) : NULL;
    if (!s)
        return NULL;
    s->io = (struct io){.fd = fd, .cb = sess_io, .data = s};
    s->w = w;
    s->peer = *peer;
    s->local = *local;
    s->conf = ls->dflt->h2;
    s->send_timeout_ms = ls->dflt->lc->send_timeout_client_ms;
    s->header_timeout_ms = ls->dflt->client_header_timeout_ms;
    s->conn_number = ++w->next_conn_number;
    s->last_data_ms = loop_now_ms(w->loop);
    timer_init(&s->idle_timer, idle_timer_cb, s);
    timer_init(&s->wtimer, sess_wtimer_cb, s);
    posted_init(&s->flush_post, flush_post_cb, s);
    if (ng_new(s) < 0) {
        free(s);
        return NULL;
    }
    return s;
}

static void sess_link(struct h2_session *s)
{
    s->next = tl_sessions;
    if (tl_sessions)
        tl_sessions->prev = s;
    tl_sessions = s;
    s->w->nsessions++;
    /* a connection that never sends a request goes after
     * client_header_timeout, as an HTTP/1 one does (nginx: the same); after
     * its first stream the idle timeout rules */
    uint32_t first = s->conf.idle_timeout_ms;
    if (s->header_timeout_ms && s->header_timeout_ms < first)
        first = s->header_timeout_ms;
    timer_set(s->w->loop, &s->idle_timer, first);
}

void h2_session_start(struct worker *w, int fd, const struct net_addr *peer,
                      const struct net_addr *local, struct tls_conn *tls, const char *preread,
                      size_t npreread, const struct pp_header *pp)
{
    struct h2_session *s = npreread <= BUF_SEG_SIZE ? sess_new(w, fd, peer, local) : NULL;
    if (!s)
        goto fail;
    if (pp)
        s->pp = *pp;
    s->tls = tls;
    if (loop_io_add(w->loop, &s->io) < 0) {
        nghttp2_session_del(s->ng);
        free(s);
        goto fail;
    }
    /* loop_io_add() cleared these; with TLS, OpenSSL's read-ahead may hold
     * the client's first records already, and no epoll edge would come */
    s->io.readable = true;
    s->io.writable = true;
    sess_link(s);
    if (npreread) {
        if (rseg_room(s) < 0) {
            sess_close(s);
            return;
        }
        memcpy(s->rseg->data, preread, npreread);
        int rv = feed(s, npreread);
        if (rv < 0) {
            feed_failed(s, rv);
            if (!s->closed)
                queue_flush(s);
            return;
        }
    }
    sess_io(&s->io, 0);
    return;
fail:
    if (tls)
        tls_conn_free(tls);
    close(fd);
}

/* ---- without a socket ---- */

struct h2_session *h2_session_detached(struct worker *w, const struct net_addr *peer,
                                       const struct net_addr *local, h2_sink_fn *sink,
                                       void *sink_ctx)
{
    struct h2_session *s = sess_new(w, -1, peer, local);
    if (!s)
        return NULL;
    s->sink = sink;
    s->sink_ctx = sink_ctx;
    s->io.writable = true; /* never readable: bytes come by h2_session_input() */
    sess_link(s);
    queue_flush(s); /* the server preface */
    return s;
}

size_t h2_session_input(struct h2_session *s, const char *p, size_t len)
{
    size_t taken = 0;
    /* the same conditions as sess_read(): what it would leave in the socket
     * is left to the caller */
    while (taken < len && !s->closed && !s->calm && s->wq.bytes < WQ_READ_PAUSE &&
           nghttp2_session_want_read(s->ng)) {
        if (rseg_room(s) < 0) {
            sess_close(s);
            break;
        }
        size_t n = s->rseg->cap - s->rend;
        if (n > len - taken)
            n = len - taken;
        memcpy(s->rseg->data + s->rend, p + taken, n);
        taken += n;
        int rv = feed(s, n);
        if (rv < 0) {
            feed_failed(s, rv);
            break;
        }
    }
    if (!s->closed)
        queue_flush(s);
    return taken;
}

/* ---- the worker's hooks ---- */

static void go_away(struct h2_session *s)
{
    if (s->closed || s->going_away)
        return;
    s->going_away = true;
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    queue_flush(s);
}

void h2_sessions_shutdown(struct worker *w)
{
    for (struct h2_session *s = tl_sessions; s; s = s->next)
        if (s->w == w)
            go_away(s);
}

void h2_sessions_reload(struct worker *w)
{
    h2_sessions_shutdown(w);
}

void h2_sessions_kill(struct worker *w)
{
    for (struct h2_session *s = tl_sessions, *next; s; s = next) {
        next = s->next;
        if (s->w == w)
            sess_close(s);
    }
}

size_t h2_sessions_count(const struct worker *w)
{
    size_t n = 0;
    for (struct h2_session *s = tl_sessions; s; s = s->next)
        n += s->w == w;
    return n;
}
