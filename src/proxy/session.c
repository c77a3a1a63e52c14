/* HTTP/1.x client sessions. Requests are read and answered one at a time,
 * in order: a pipelined request waits in the read buffer until the one
 * before it has been written out. */
#include "proxy/session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/freelist.h"
#include "core/log.h"
#include "http1/h1.h"
#include "proxy/accesslog.h"
#include "proxy/exchange.h"
#include "proxy/limit.h"
#include "proxy/proxy.h"
#include "proxy/vars.h"
#include "net/proxy_protocol.h"
#include "proxy/worker.h"
#include "tls/tls.h"
#include "http2/h2.h"

#define MAX_FIELDS 100

enum sess_state {
    S_PROXY,     /* listen ... proxy_protocol: waiting for the PROXY header */
    S_HANDSHAKE, /* TLS handshake in progress */
    S_HEAD,      /* waiting for (the rest of) a request head */
    S_EXCHANGE,  /* a request is being served */
    S_LINGER,    /* response sent, write side shut, draining the client's bytes */
    S_CLOSED,
};

enum rb_kind { RB_NONE, RB_LENGTH, RB_CHUNKED, RB_RAW /* after a 101: tunnel bytes */ };

/* Every open connection holds one of these, idle keep-alive ones included
 * (10,000 idle connections: 10,000 of them), so what only a request or
 * output in flight needs lives in struct h1_busy. */
struct h1_session {
    struct io io;
    struct tls_conn *tls; /* NULL on plain connections */
    struct worker *w;
    struct net_addr peer, local;
    struct pp_header pp; /* from the PROXY protocol header (listen ... proxy_protocol) */
    struct h1_session *next, *prev;
    struct snapshot *snap; /* for the head being read */
    const struct listen_set *lset;

    struct buf *rseg; /* read buffer: unconsumed bytes are [rstart, rend) */
    size_t rstart, rend;
    size_t scanned; /* head bytes already searched for the blank line */

    struct h1_busy *b; /* exchange and output queue; NULL while idle */

    struct timer rtimer; /* header, keep-alive, body, linger */
    /* runs what post_flush / post_resume ask for after the loop round; once
     * the session is closed, it carries the free */
    struct posted post;
    uint64_t linger_deadline;
    uint8_t lg_mode;        /* lingering_close of the last request (lingering_of) */
    uint32_t lg_timeout_ms; /* lingering_timeout */
    uint32_t lg_time_ms;    /* lingering_time */

    uint64_t conn_number;
    int requests;
    unsigned char state;   /* enum sess_state */
    unsigned char nodelay; /* net_nodelay_before_write */
    bool reset_close;      /* reset_timedout_connection: the close sends RST */
    bool rate_limited;     /* limit_rate may apply to this response (op_send_head) */
    bool post_flush;       /* write what is queued */
    bool post_resume;      /* read the next (pipelined) head */
    bool head_started;     /* bytes of the next head have arrived */
    bool stat_reading;     /* counted as reading a head (stats.h) */
    bool checked_line_limit;
    bool close_after; /* close once the output is written */
    bool linger;      /* ... after draining what the client may still send */
    bool shutting_down;

    /* the exchange in flight */
    bool active;
    bool ex_done;
    bool ex_broken;
    bool waiting_drain;
    bool rb_done;
    bool rb_error; /* the body broke or timed out: ex->ending says how */
    bool sent_continue;
    bool resp_chunked;
    bool resp_no_body;
    bool resp_ended;
};

/* What a connection needs only while it has a request or output in flight:
 * an idle keep-alive connection holds none of it (nor any buffer). */
struct h1_busy {
    struct exchange ex;
    struct outq out;
    struct h1_chunked rb_dec; /* the request body's chunked decoder */
    struct buf *head_seg;     /* holds the request head the exchange points into */
    struct buf *scratch;      /* small framing strings (chunk sizes) */
    size_t scratch_used;
    struct timer wtimer;    /* send_timeout */
    struct timer ratetimer; /* limit_rate: the next write */
    enum rb_kind rb_kind;
    uint64_t rb_left;
    uint64_t rb_total;
};

static const struct client_ops h1_ops;

/* Per-thread spare blocks: a keep-alive request costs no malloc for them. */
#define BUSY_CACHE_MAX 256
/* a free block's first word links it to the next */
static __thread struct freelist busy_blocks =
    FREELIST_INIT(BUSY_CACHE_MAX, 0, sizeof(struct h1_busy));

static void busy_release(struct h1_busy *b)
{
    if (!freelist_push(&busy_blocks, b))
        free(b);
}

void h1_session_trim_cache(size_t keep)
{
    freelist_trim(&busy_blocks, keep);
}

size_t h1_session_trim_unused(size_t keep)
{
    return freelist_trim_unused(&busy_blocks, keep);
}

static void wtimer_cb(struct timer *t);
static void ratetimer_cb(struct timer *t);

static int busy_get(struct h1_session *s)
{
    if (s->b)
        return 0;
    s->b = freelist_pop(&busy_blocks);
    if (!s->b) {
        s->b = malloc(sizeof(*s->b));
        if (!s->b)
            return -1;
        /* once per block: a block comes back with it disarmed (rate_stop) */
        timer_init(&s->b->ratetimer, ratetimer_cb, NULL);
    }
    memset(&s->b->ex, 0, sizeof(s->b->ex));
    outq_init(&s->b->out);
    s->b->head_seg = s->b->scratch = NULL;
    s->b->scratch_used = 0;
    timer_init(&s->b->wtimer, wtimer_cb, s);
    return 0;
}

/* Give the block back (its output queue is empty or cleared). */
static void busy_drop(struct h1_session *s)
{
    struct h1_busy *b = s->b;
    timer_cancel(&b->wtimer);
    if (b->head_seg)
        buf_unref(b->head_seg);
    if (b->scratch)
        buf_unref(b->scratch);
    busy_release(b);
    s->b = NULL;
}

static size_t out_count(const struct h1_session *s)
{
    return s->b ? s->b->out.count : 0;
}

static void busy_put(struct h1_session *s)
{
    if (s->b && !s->active && s->b->out.count == 0)
        busy_drop(s);
}

static void sess_io(struct io *io, uint32_t events);
static void sess_close(struct h1_session *s);

/* ---- the connection's bytes: plain or through TLS ---- */

static ssize_t sess_recv(struct h1_session *s, void *buf, size_t want)
{
    return tls_io_read(&s->io, s->tls, buf, want);
}

static ssize_t sess_send(struct h1_session *s, size_t max)
{
    net_nodelay_before_write(s->io.fd, &s->nodelay);
    if (!s->tls)
        return max == SIZE_MAX ? outq_write(&s->b->out, s->io.fd)
                               : outq_write_max(&s->b->out, s->io.fd, max);
    return outq_write_with_max(&s->b->out, tls_outq_writev, s->tls, max);
}
static void read_head(struct h1_session *s);
static void sess_flush(struct h1_session *s);

static uint32_t hdr_timeout(const struct h1_session *s)
{
    return s->lset && s->lset->dflt ? s->lset->dflt->client_header_timeout_ms : 60000;
}

static const struct loc_conf *dflt_lc(const struct h1_session *s)
{
    return s->lset && s->lset->dflt ? s->lset->dflt->lc : s->snap->http_lc;
}

/* Take the newest snapshot for the next request on this connection. */
static void refresh_snapshot(struct h1_session *s)
{
    struct snapshot *cur = worker_snapshot(s->w);
    if (s->snap != cur) {
        snapshot_unref(s->snap);
        s->snap = snapshot_ref(cur);
        s->lset = snapshot_find_listen(cur, &s->local);
    }
}

static void release_post_cb(struct posted *p)
{
    free(p->data);
}

static void post_cb(struct posted *p)
{
    struct h1_session *s = p->data;
    bool flush = s->post_flush, resume = s->post_resume;
    s->post_flush = s->post_resume = false;
    if (flush)
        sess_flush(s);
    /* a pipelined request may be waiting in the buffer or the socket */
    if (resume && s->state == S_HEAD)
        read_head(s);
}

static void rtimer_cb(struct timer *t);
static void do_handshake(struct h1_session *s);
static void after_proxy_header(struct h1_session *s);
static void read_proxy_header(struct h1_session *s);
static void handoff_h2(struct h1_session *s);
static void answer_bad_request(struct h1_session *s, int status, const char *why,
                               const char *detail);

void h1_session_start(struct worker *w, int fd, const struct net_addr *peer,
                      const struct net_addr *local)
{
    const struct listen_set *ls = snapshot_find_listen(worker_snapshot(w), local);
    if (ls && ls->h2c_only && !ls->ssl && !ls->proxy_protocol) {
        /* HTTP/2 from the first byte: nghttp2 checks the preface itself and
         * answers anything else (HTTP/1 too) with GOAWAY(PROTOCOL_ERROR) */
        h2_session_start(w, fd, peer, local, NULL, NULL, 0, NULL);
        return;
    }
    struct h1_session *s = calloc(1, sizeof(*s));
    if (!s) {
        close(fd);
        return;
    }
    s->io.fd = fd;
    s->io.cb = sess_io;
    s->io.data = s;
    s->w = w;
    s->peer = *peer;
    s->local = *local;
    s->conn_number = ++w->next_conn_number;
    timer_init(&s->rtimer, rtimer_cb, s);
    posted_init(&s->post, post_cb, s);
    s->snap = snapshot_ref(worker_snapshot(w));
    s->lset = snapshot_find_listen(s->snap, local);
    if (loop_io_add(w->loop, &s->io) < 0) {
        snapshot_unref(s->snap);
        close(fd);
        free(s);
        return;
    }
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    w->nsessions++;
    /* the first bytes usually arrived with the connection */
    s->io.readable = true;
    if (s->lset && !s->lset->dflt->lc->tcp_nodelay)
        s->nodelay = 2; /* tcp_nodelay off: never set it (TLS and HTTP/2 still do) */
    if (s->lset && s->lset->proxy_protocol) {
        s->state = S_PROXY;
        timer_set(w->loop, &s->rtimer, hdr_timeout(s));
        read_proxy_header(s);
        return;
    }
    after_proxy_header(s);
}

/* What the connection is, once a PROXY header (if any) is behind us. */
static void after_proxy_header(struct h1_session *s)
{
    struct worker *w = s->w;
    int fd = s->io.fd;
    if (s->lset && s->lset->h2c_only && !s->lset->ssl) {
        handoff_h2(s);
        return;
    }
    if (s->lset && s->lset->ssl) {
        /* the handshake writes more than once, inside OpenSSL */
        net_set_nodelay(fd);
        s->nodelay = 2;
        s->tls = tls_conn_server(s->lset->dflt->tls_ctx, fd);
        if (!s->tls) {
            sess_close(s);
            return;
        }
        s->state = S_HANDSHAKE;
        timer_set(w->loop, &s->rtimer, s->lset->dflt->ssl.handshake_timeout_ms);
        do_handshake(s);
        return;
    }
    s->state = S_HEAD;
    timer_set(w->loop, &s->rtimer, hdr_timeout(s));
    s->head_started = true; /* the first request's wait counts as its head */
    read_head(s);
}

/* The PROXY header, peeked so that not one byte behind it is taken from the
 * socket (TLS and HTTP/2 read the connection from its next byte on). */
static void read_proxy_header(struct h1_session *s)
{
    unsigned char buf[PP_MAX_HEADER];
    for (;;) {
        ssize_t n = recv(s->io.fd, buf, sizeof(buf), MSG_PEEK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            s->io.readable = false;
            return;
        }
        int r = n > 0 ? pp_parse(buf, (size_t)n, &s->pp) : -1;
        if (r == 0 && (size_t)n < sizeof(buf)) {
            s->io.readable = false; /* the rest comes with a new edge */
            return;
        }
        if (r <= 0) {
            if (n > 0) {
                char peer[64];
                net_addr_format(&s->peer, peer, sizeof(peer));
                LOG(LOG_ERR, "broken PROXY protocol header from %s: closing", peer);
            }
            sess_close(s);
            return;
        }
        ssize_t got;
        do
            got = recv(s->io.fd, buf, (size_t)r, 0);
        while (got < 0 && errno == EINTR);
        if (got != r) {
            sess_close(s);
            return;
        }
        timer_cancel(&s->rtimer);
        after_proxy_header(s);
        return;
    }
}

static void do_handshake(struct h1_session *s)
{
    int r = tls_handshake(s->tls);
    if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
        if (r == TLS_WANT_READ)
            s->io.readable = false;
        else
            s->io.writable = false;
        return;
    }
    char peer[64];
    net_addr_format(&s->peer, peer, sizeof(peer));
    if (r == TLS_PLAINTEXT) {
        /* nginx's answer; the bytes are read and answered in the clear */
        tls_conn_free(s->tls);
        s->tls = NULL;
        LOG(LOG_INFO, "client %s sent plain HTTP to a TLS port", peer);
        answer_bad_request(s, 400, "plain HTTP request sent to HTTPS port",
                           "The plain HTTP request was sent to HTTPS port");
        return;
    }
    if (r != TLS_OK) {
        LOG(LOG_INFO, "SSL handshake with client %s failed: %s", peer, tls_conn_error(s->tls));
        sess_close(s);
        return;
    }
    if (slice_eq(tls_conn_alpn(s->tls), SLICE_LIT("h2"))) {
        handoff_h2(s);
        return;
    }
    s->state = S_HEAD;
    timer_set(s->w->loop, &s->rtimer, hdr_timeout(s));
    s->head_started = true;
    s->io.readable = true; /* the request may have come with the last flight */
    read_head(s);
}

/* ---- output ---- */

static void queue_flush(struct h1_session *s)
{
    s->post_flush = true;
    loop_post(s->w->loop, &s->post);
}

static int queue_small(struct h1_session *s, const char *p, size_t len)
{
    return outq_push_copy(&s->b->out, &s->b->scratch, &s->b->scratch_used, p, len);
}

static void finish_exchange(struct h1_session *s);

/* The lingering close follows the settings of the request that ends the
 * connection (copied: its snapshot may go before the close). */
static void lingering_of(struct h1_session *s, const struct loc_conf *lc)
{
    s->lg_mode = (uint8_t)lc->lingering_close;
    s->lg_time_ms = lc->lingering_time_ms ? lc->lingering_time_ms : 1;
    s->lg_timeout_ms = lc->lingering_timeout_ms ? lc->lingering_timeout_ms : 1;
}

/* The block's limit_rate timer is disarmed before it serves anything else. */
static inline void rate_stop(struct h1_session *s)
{
    if (s->rate_limited && timer_armed(&s->b->ratetimer))
        timer_cancel(&s->b->ratetimer);
}

static void sess_flush(struct h1_session *s)
{
    if (s->state == S_CLOSED)
        return;
    s->post_flush = false;
    if (!s->post_resume)
        posted_cancel(s->w->loop, &s->post);
    if (out_count(s)) {
        size_t before = s->b->out.bytes;
        size_t max = SIZE_MAX;
        uint32_t wait_ms = 0;
        struct exchange *ex = &s->b->ex;
        if (s->rate_limited && s->active) {
            uint64_t m = limit_rate_budget(ex, loop_now_ms(s->w->loop), before, &wait_ms);
            max = m < SIZE_MAX ? (size_t)m : SIZE_MAX;
            if (max < before) {
                s->b->ratetimer.data = s;
                timer_set(s->w->loop, &s->b->ratetimer, wait_ms);
            }
            if (max == 0)
                return; /* (not writable-blocked: the timer brings us back) */
        }
        ssize_t w = sess_send(s, max);
        if (w < 0 && errno != EAGAIN) {
            LOG(LOG_INFO, "client %s: write failed: %s", "connection", strerror(errno));
            sess_close(s);
            return;
        }
        if (s->active)
            ex->bytes_sent += before - s->b->out.bytes;
        if (s->b->out.count && max < SIZE_MAX && (size_t)w == max)
            return; /* the rate's share is out: the rest at ratetimer */
        if (s->b->out.count) {
            s->io.writable = false;
            const struct loc_conf *lc = s->active && s->b->ex.lc ? s->b->ex.lc : dflt_lc(s);
            if (!timer_armed(&s->b->wtimer) || w > 0)
                timer_set(s->w->loop, &s->b->wtimer, lc->send_timeout_client_ms);
            return;
        }
    }
    if (s->b)
        timer_cancel(&s->b->wtimer);
    if (s->active) {
        if (s->ex_done) {
            finish_exchange(s);
            return;
        }
        if (s->waiting_drain) {
            s->waiting_drain = false;
            proxy_client_drained(&s->b->ex);
        }
        return;
    }
    if (s->close_after && s->state != S_LINGER) {
        if (!s->lg_time_ms)
            lingering_of(s, dflt_lc(s)); /* no request got as far as a location */
        if (s->reset_close || s->lg_mode == LINGERING_OFF ||
            (s->lg_mode == LINGERING_ON && !s->linger && (!s->rseg || s->rstart == s->rend))) {
            /* (a reset client gets no lingering: freeing it is the point) */
            /* nothing unread on our side (nginx's heuristic): just close */
            sess_close(s);
            return;
        }
        /* lingering close: let the client read the answer before a reset.
         * TLS says close_notify first: without it clients treat the close
         * as a truncation and will not resume the session. */
        if (s->tls)
            tls_shutdown(s->tls);
        shutdown(s->io.fd, SHUT_WR);
        s->state = S_LINGER;
        s->linger_deadline = loop_now_ms(s->w->loop) + s->lg_time_ms;
        timer_set(s->w->loop, &s->rtimer, s->lg_timeout_ms);
        s->io.readable = true;
        sess_io(&s->io, 0);
    }
}

/* ---- local error answers (before an exchange exists) ---- */

/* Answer a request we could not parse: the framing is lost, so close after. */
static void answer_bad_request(struct h1_session *s, int status, const char *why,
                               const char *detail)
{
    char body[640], head[512];
    const struct loc_conf *lc = dflt_lc(s);
    size_t bl = proxy_error_html(status, detail, lc->server_tokens, body, sizeof(body));
    struct slice date = vars_http_date();
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %.*s\r\nContent-Type: "
                      "text/html\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      status, http_status_text(status),
                      lc->server_tokens ? PORTICO_SERVER : "portico", (int)date.len, date.p, bl);
    char peer[64];
    net_addr_format(&s->peer, peer, sizeof(peer));
    LOG(LOG_INFO, "client %s sent an invalid request (%d): %s", peer, status, why);
    /* log it like nginx does, with what we know */
    if (busy_get(s) < 0) {
        sess_close(s);
        return;
    }
    struct exchange *ex = &s->b->ex;
    memset(ex, 0, sizeof(*ex));
    arena_init(&ex->arena, 1024, 64 * 1024);
    ex->snap = s->snap;
    ex->loop = s->w->loop;
    ex->peer = &s->peer;
    ex->local = &s->local;
    if (s->pp.has_addr) {
        ex->pp_src = &s->pp.src;
        ex->pp_dst = &s->pp.dst;
    }
    ex->srv = s->lset ? s->lset->dflt : NULL;
    ex->lc = lc;
    ex->status = status;
    ex->start_ms = loop_now_ms(s->w->loop);
    ex->conn_number = s->conn_number;
    ex->conn_requests = s->requests + 1;
    ex->bytes_sent = (uint64_t)hl + bl;
    ex->body_bytes_sent = bl;
    queue_small(s, head, (size_t)hl);
    queue_small(s, body, bl);
    accesslog_write(ex);
    arena_deinit(&ex->arena);
    s->close_after = true;
    s->linger = true;
    s->rstart = s->rend; /* nothing more of this connection is parsed */
    timer_cancel(&s->rtimer);
    sess_flush(s);
}

/* ---- request heads ---- */

static int ensure_room(struct h1_session *s, size_t max_head)
{
    if (!s->rseg) {
        s->rseg = buf_new(BUF_SEG_SIZE);
        s->rstart = s->rend = s->scanned = 0;
        return s->rseg ? 0 : -1;
    }
    if (s->rend < s->rseg->cap)
        return 0;
    size_t have = s->rend - s->rstart;
    if (s->rstart > 0 && s->rseg->refs == 1) {
        memmove(s->rseg->data, s->rseg->data + s->rstart, have);
    } else {
        /* shared with an exchange (take a fresh segment), or a head that has
         * outgrown one (take room for the largest head allowed) */
        size_t cap = BUF_SEG_SIZE;
        if (have >= BUF_SEG_SIZE / 2 && max_head + 1024 > cap)
            cap = max_head + 1024;
        if (have + 1024 > cap)
            cap = have + 1024;
        struct buf *nb = buf_new(cap);
        if (!nb)
            return -1;
        memcpy(nb->data, s->rseg->data + s->rstart, have);
        buf_unref(s->rseg);
        s->rseg = nb;
    }
    s->scanned -= s->scanned > s->rstart ? s->rstart : s->scanned;
    s->rstart = 0;
    s->rend = have;
    return 0;
}

static void release_idle_buffer(struct h1_session *s)
{
    if (s->rseg && s->rstart == s->rend) {
        buf_unref(s->rseg);
        s->rseg = NULL;
        s->rstart = s->rend = s->scanned = 0;
    }
    busy_put(s);
}

static void start_exchange(struct h1_session *s, struct h1_request *req);

/* Has the blank line ending the head arrived? Searches only new bytes. */
static bool head_complete(struct h1_session *s)
{
    const char *base = s->rseg->data + s->rstart;
    size_t len = s->rend - s->rstart;
    size_t from = s->scanned > s->rstart + 3 ? s->scanned - s->rstart - 3 : 0;
    /* leading empty lines before a request are skipped by the parser */
    for (size_t i = from; i + 1 < len; i++) {
        const char *nl = memchr(base + i, '\n', len - i);
        if (!nl)
            break;
        size_t at = (size_t)(nl - base);
        if (at + 2 < len + 0 && nl[1] == '\r' && at + 2 < len && nl[2] == '\n')
            return true;
        if (at + 1 < len && nl[1] == '\n')
            return true;
        i = at;
    }
    s->scanned = s->rend;
    return false;
}

/* The connection speaks HTTP/2: give the socket (and its TLS) to an HTTP/2
 * session with the bytes read so far, and end this one without closing. */
static void handoff_h2(struct h1_session *s)
{
    int fd = s->io.fd;
    struct tls_conn *tls = s->tls;
    if (s->nodelay < 2)
        net_set_nodelay(fd); /* HTTP/2 writes frames as they come */
    loop_io_del(s->w->loop, &s->io);
    s->io.fd = -1;
    s->tls = NULL;
    const char *pre = s->rseg ? s->rseg->data + s->rstart : NULL;
    size_t npre = s->rseg ? s->rend - s->rstart : 0;
    h2_session_start(s->w, fd, &s->peer, &s->local, tls, pre, npre, s->pp.has_addr ? &s->pp : NULL);
    s->rstart = s->rend;
    sess_close(s);
}

/* On an HTTP/2 listener, a plain connection whose first bytes are the client
 * preface is h2c with prior knowledge. 1: handed off; 0: HTTP/1; -1: wait. */
static int detect_h2c(struct h1_session *s)
{
    if (s->tls || s->requests > 0 || !h2_listen_enabled(s->lset))
        return 0;
    /* "PRI " is no HTTP/1 method anyone uses: from there on it is HTTP/2,
     * and a broken preface gets HTTP/2's answer (GOAWAY), not a 400 */
    size_t have = s->rend - s->rstart;
    size_t n = have < 4 ? have : 4;
    if (memcmp(s->rseg->data + s->rstart, H2_PREFACE, n) != 0)
        return 0;
    if (have < H2_PREFACE_LEN && memcmp(s->rseg->data + s->rstart, H2_PREFACE, have) == 0)
        return -1;
    handoff_h2(s);
    return 1;
}

static void read_head(struct h1_session *s)
{
    if (s->state != S_HEAD)
        return;
    refresh_snapshot(s);
    if (!s->lset) {
        /* the listener went away in a reload */
        sess_close(s);
        return;
    }
    const struct srv_conf *sc = s->lset->dflt;
    struct h1_limits lim = {
        .max_request_line = sc->large_header_buffers_size,
        .max_head = sc->large_header_buffers_size * (size_t)sc->large_header_buffers_num,
        .max_fields = MAX_FIELDS,
    };
    for (;;) {
        if (s->rseg && s->rend > s->rstart) {
            int h2 = detect_h2c(s);
            if (h2 > 0)
                return;
            size_t have = s->rend - s->rstart;
            /* the first bytes of a head usually hold all of it: parse them
             * straight away; after that, parse again only once the blank line
             * has arrived (head_complete scans the new bytes alone), so a
             * trickled head costs linear time */
            bool first = s->scanned <= s->rstart;
            bool try_parse = h2 == 0 && (first || head_complete(s));
            if (!try_parse && !s->checked_line_limit && have > lim.max_request_line) {
                s->checked_line_limit = true;
                try_parse = true;
            }
            if (!try_parse && have > lim.max_head) {
                answer_bad_request(s, 431, "request head too large", NULL);
                return;
            }
            if (try_parse) {
                struct http_field fields[MAX_FIELDS];
                struct h1_request req;
                enum h1_error err = H1E_NONE;
                enum h1_result r = h1_parse_request(s->rseg->data + s->rstart, have, &lim, fields,
                                                    MAX_FIELDS, &req, &err);
                if (r == H1_DONE) {
                    start_exchange(s, &req);
                    return;
                }
                if (r == H1_ERROR) {
                    answer_bad_request(s, h1_error_status(err), h1_error_str(err), NULL);
                    return;
                }
                if (first)
                    s->scanned = s->rend;
            }
            /* client_header_timeout bounds the whole head, as in nginx: armed
             * when its first bytes arrive (the keep-alive timer ran before),
             * not pushed back by every trickle of bytes */
            if (!s->stat_reading && !s->active) { /* part of a head: "Reading" */
                s->stat_reading = true;
                STAT_ADD(s->w->stats.reading, 1);
            }
            if (!s->head_started) {
                s->head_started = true;
                timer_set(s->w->loop, &s->rtimer, hdr_timeout(s));
            }
        }
        if (!s->io.readable) {
            if (!s->rseg || s->rend == s->rstart) {
                release_idle_buffer(s);
                if (s->shutting_down) {
                    sess_close(s);
                    return;
                }
            }
            return;
        }
        if (ensure_room(s, lim.max_head) < 0) {
            sess_close(s);
            return;
        }
        ssize_t n = sess_recv(s, s->rseg->data + s->rend, s->rseg->cap - s->rend);
        if (n > 0) {
            s->rend += (size_t)n;
            continue;
        }
        if (n == 0) {
            /* closed between requests, or in the middle of a head: no answer */
            sess_close(s);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            s->io.readable = false;
            continue;
        }
        sess_close(s);
        return;
    }
}

static void start_exchange(struct h1_session *s, struct h1_request *req)
{
    if (busy_get(s) < 0) {
        sess_close(s);
        return;
    }
    struct exchange *ex = &s->b->ex;
    timer_cancel(&s->rtimer);
    memset(ex, 0, sizeof(*ex));
    arena_init(&ex->arena, 4096, 0);
    ex->snap = snapshot_ref(s->snap);
    ex->worker = s->w;
    ex->client = &h1_ops;
    ex->session = s;
    ex->loop = s->w->loop;
    ex->id = ++s->w->next_exchange_id;
    ex->peer = &s->peer;
    ex->local = &s->local;
    if (s->pp.has_addr) {
        ex->pp_src = &s->pp.src;
        ex->pp_dst = &s->pp.dst;
    }
    ex->listen = s->lset;
    ex->tls = s->tls;
    ex->is_tls = s->tls != NULL;
    ex->conn_number = s->conn_number;
    ex->conn_requests = ++s->requests;
    ex->start_ms = loop_now_ms(s->w->loop);

    s->active = true;
    s->ex_done = s->ex_broken = s->waiting_drain = false;
    s->sent_continue = s->resp_chunked = s->resp_no_body = s->resp_ended = false;
    s->rate_limited = false;
    s->checked_line_limit = false;
    s->head_started = false;
    s->state = S_EXCHANGE;
    s->w->nactive++;
    STAT_ADD(s->w->stats.requests, 1);
    ex->stat_counted = true;
    if (s->stat_reading) {
        s->stat_reading = false;
        STAT_ADD(s->w->stats.reading, -1);
    }
    s->b->head_seg = buf_ref(s->rseg);

    const char *base = s->rseg->data + s->rstart;
    ex->method = req->method;
    ex->method_id = req->method_id;
    ex->request_uri = req->target;
    ex->minor_version = req->minor_version;
    ex->request_length = req->head_len;
    ex->req_content_length = req->content_length;
    ex->req_chunked = req->chunked;
    ex->expect_continue = req->expect_continue;
    /* the request line, for $request */
    const char *crlf = memchr(req->method.p, '\r', req->head_len - (size_t)(req->method.p - base));
    ex->request_line = slice_make(req->method.p, crlf ? (size_t)(crlf - req->method.p) : 0);
    ex->nreq_fields = req->nfields;
    ex->req_fields =
        arena_alloc(&ex->arena, (req->nfields ? req->nfields : 1) * sizeof(*ex->req_fields));
    if (!ex->req_fields)
        goto oom;
    memcpy(ex->req_fields, req->fields, req->nfields * sizeof(*ex->req_fields));
    ex->req_underscore = req->underscore;
    ex->host = http_host_normalize(&ex->arena, req->host);
    if (req->upgrade && !req->upgrade_h2c) {
        bool found;
        ex->upgrade = fields_get(ex->req_fields, ex->nreq_fields, SLICE_LIT("upgrade"), &found);
    }

    s->rstart += req->head_len;
    s->scanned = s->rstart;
    if (req->chunked) {
        s->b->rb_kind = RB_CHUNKED;
        h1_chunked_init(&s->b->rb_dec, 16384);
        s->rb_done = false;
    } else if (req->content_length > 0) {
        s->b->rb_kind = RB_LENGTH;
        s->b->rb_left = (uint64_t)req->content_length;
        s->rb_done = false;
    } else {
        s->b->rb_kind = RB_NONE;
        s->rb_done = true;
    }
    s->b->rb_total = 0;
    s->rb_error = false;
    ex->req_has_body = !s->rb_done;
    if (!req->keep_alive)
        s->close_after = true;

    /* path and query */
    struct slice path = req->path;
    const char *q = memchr(path.p, '?', path.len);
    struct slice raw_path = path;
    if (q) {
        raw_path = slice_make(path.p, (size_t)(q - path.p));
        ex->args = slice_make(q + 1, path.len - raw_path.len - 1);
        ex->has_args = true;
    }
    if (req->target_form == H1_TARGET_ASTERISK || req->target_form == H1_TARGET_AUTHORITY) {
        ex->uri = req->target;
    } else {
        char *norm = arena_alloc(&ex->arena, raw_path.len + 1);
        if (!norm)
            goto oom;
        long nl = http_path_normalize(raw_path, norm, s->lset->dflt->merge_slashes);
        if (nl < 0) {
            s->close_after = true;
            proxy_respond_error(ex, 400);
            return;
        }
        norm[nl] = '\0';
        ex->uri = slice_make(norm, (size_t)nl);
    }
    if (s->tls && (ex->error_detail = tls_conn_verify_refusal(s->tls))) {
        /* ssl_verify_client on: nginx answers 400 with the reason */
        ex->close_conn = true;
        proxy_respond_error(ex, 400);
        return;
    }
    proxy_start(ex);
    return;
oom:
    s->close_after = true;
    proxy_respond_error(ex, 500);
}

static void finish_exchange(struct h1_session *s)
{
    struct exchange *ex = &s->b->ex;
    rate_stop(s);
    accesslog_write(ex);
    proxy_release(ex);
    if (ex->close_conn)
        s->close_after = s->linger = true;
    if (!s->rb_done)
        s->close_after = s->linger = true; /* the rest of the body is unread: framing lost */
    if (s->ex_broken)
        s->close_after = true;
    const struct loc_conf *lc = ex->lc ? ex->lc : dflt_lc(s);
    if (s->requests >= lc->keepalive_requests || lc->keepalive_timeout_ms == 0)
        s->close_after = true;
    if (s->close_after)
        lingering_of(s, lc);
    uint32_t ka = lc->keepalive_timeout_ms;
    arena_deinit(&ex->arena);
    snapshot_unref(ex->snap);
    ex->snap = NULL;
    if (s->b->head_seg) {
        buf_unref(s->b->head_seg);
        s->b->head_seg = NULL;
    }
    s->active = false;
    s->w->nactive--;
    if (s->close_after || s->ex_broken) {
        if (s->ex_broken) {
            sess_close(s);
            return;
        }
        s->state = S_HEAD;
        sess_flush(s); /* nothing queued: goes on to the lingering close */
        return;
    }
    s->state = S_HEAD;
    if (s->shutting_down && s->rstart == s->rend) {
        sess_close(s);
        return;
    }
    timer_set(s->w->loop, &s->rtimer, s->rstart < s->rend ? hdr_timeout(s) : ka);
    release_idle_buffer(s);
    /* a pipelined request may be waiting in the buffer or the socket */
    s->post_resume = true;
    loop_post(s->w->loop, &s->post);
}

/* ---- client_ops ---- */

static struct h1_session *S(struct exchange *ex)
{
    return ex->session;
}

static int op_send_head(struct exchange *ex, const struct resp_head *h)
{
    struct h1_session *s = S(ex);
    const struct loc_conf *lc = ex->lc ? ex->lc : dflt_lc(s);
    bool http10 = ex->minor_version == 0;
    bool no_body = h->no_body || ex->method_id == HTTP_M_HEAD;
    s->resp_no_body = no_body;
    /* set $limit_rate and X-Accel-Limit-Rate have spoken by now */
    s->rate_limited = ex->limit_rate || (!ex->limit_rate_set && lc->limits.rate);
    s->resp_chunked = false;
    if (!no_body && h->content_length < 0) {
        if (http10 || !lc->chunked_transfer_encoding)
            s->close_after = true; /* close-delimited (HTTP/1.0, chunked_transfer_encoding off) */
        else
            s->resp_chunked = true;
    }
    if (s->shutting_down || ex->close_conn || !s->rb_done)
        s->close_after = true;
    if (s->requests >= lc->keepalive_requests || lc->keepalive_timeout_ms == 0)
        s->close_after = true;
    bool close = s->close_after;
    bool tunnel = h->status == 101;
    if (tunnel) {
        /* the rest of the connection is the tunnel's: raw bytes both ways */
        s->resp_chunked = false;
        s->resp_no_body = false;
        s->close_after = true;
        s->b->rb_kind = RB_RAW;
        s->rb_done = false;
        timer_cancel(&s->rtimer);
    }

    struct slice date = vars_http_date();
    const char *server = lc->server_tokens ? PORTICO_SERVER : "portico";
    const char *reason = http_status_text(h->status);
    bool has_server = false, has_date = false;
    for (size_t i = 0; i < h->nfields; i++) {
        has_server |= slice_eq_lit_ci(h->fields[i].name, "server");
        has_date |= slice_eq_lit_ci(h->fields[i].name, "date");
    }
    size_t len = 64 + strlen(reason) + strlen(server) + date.len + 64 + 48;
    for (size_t i = 0; i < h->nfields; i++)
        len += h->fields[i].name.len + h->fields[i].value.len + 4;
    char *p = arena_alloc(&ex->arena, len);
    if (!p)
        return -1;
    char *d = p;
    d = http10 ? MEM_PUT_LIT(d, "HTTP/1.0 ") : MEM_PUT_LIT(d, "HTTP/1.1 ");
    d[0] = (char)('0' + h->status / 100 % 10);
    d[1] = (char)('0' + h->status / 10 % 10);
    d[2] = (char)('0' + h->status % 10);
    d[3] = ' ';
    d = mem_put(d + 4, reason, strlen(reason));
    d = MEM_PUT_LIT(d, "\r\n");
    if (!has_server) {
        d = MEM_PUT_LIT(d, "Server: ");
        d = mem_put(d, server, strlen(server));
        d = MEM_PUT_LIT(d, "\r\n");
    }
    if (!has_date) {
        d = MEM_PUT_LIT(d, "Date: ");
        d = mem_put(d, date.p, date.len);
        d = MEM_PUT_LIT(d, "\r\n");
    }
    for (size_t i = 0; i < h->nfields; i++) {
        const struct http_field *f = &h->fields[i];
        d = mem_put(d, f->name.p, f->name.len);
        d = MEM_PUT_LIT(d, ": ");
        d = mem_put(d, f->value.p, f->value.len);
        d = MEM_PUT_LIT(d, "\r\n");
    }
    if (h->content_length >= 0 && h->status != 204 && h->status >= 200) {
        d = MEM_PUT_LIT(d, "Content-Length: ");
        d += u64_to_dec((uint64_t)h->content_length, d);
        d = MEM_PUT_LIT(d, "\r\n");
    } else if (s->resp_chunked) {
        d = MEM_PUT_LIT(d, "Transfer-Encoding: chunked\r\n");
    }
    d = tunnel  ? MEM_PUT_LIT(d, "Connection: upgrade\r\n\r\n")
        : close ? MEM_PUT_LIT(d, "Connection: close\r\n\r\n")
                : MEM_PUT_LIT(d, "Connection: keep-alive\r\n\r\n");
    size_t off = (size_t)(d - p);
    ex->status = h->status;
    ex->resp_fields = h->fields;
    ex->nresp_fields = h->nfields;
    ex->head_sent = true;
    if (outq_push(&s->b->out, NULL, p, off) < 0)
        return -1;
    queue_flush(s);
    return 0;
}

static int op_send_interim(struct exchange *ex, int status, struct http_field *f, size_t nf)
{
    struct h1_session *s = S(ex);
    if (ex->minor_version == 0)
        return 0; /* HTTP/1.0 clients know no 1xx */
    size_t len = 48;
    for (size_t i = 0; i < nf; i++)
        len += f[i].name.len + f[i].value.len + 4;
    char *p = arena_alloc(&ex->arena, len);
    if (!p)
        return -1;
    size_t off = (size_t)snprintf(p, len, "HTTP/1.1 %03d %s\r\n", status, http_status_text(status));
    for (size_t i = 0; i < nf; i++)
        off += (size_t)snprintf(p + off, len - off, "%.*s: %.*s\r\n", (int)f[i].name.len,
                                f[i].name.p, (int)f[i].value.len, f[i].value.p);
    p[off++] = '\r';
    p[off++] = '\n';
    if (status == 100)
        s->sent_continue = true;
    if (outq_push(&s->b->out, NULL, p, off) < 0)
        return -1;
    queue_flush(s);
    return 0;
}

static int op_send_body(struct exchange *ex, const struct body_piece *piece)
{
    struct h1_session *s = S(ex);
    if (s->resp_no_body || piece->len == 0)
        return 0;
    if (outq_room(&s->b->out) < 3)
        return -1;
    if (s->resp_chunked) {
        char hdr[24];
        size_t n = u64_to_hex(piece->len, hdr);
        hdr[n++] = '\r';
        hdr[n++] = '\n';
        if (queue_small(s, hdr, n) < 0)
            return -1;
    }
    outq_push(&s->b->out, piece->seg, piece->p, piece->len);
    if (s->resp_chunked)
        outq_push(&s->b->out, NULL, "\r\n", 2);
    ex->body_bytes_sent += piece->len;
    queue_flush(s);
    return 0;
}

static int op_send_file(struct exchange *ex, struct buf *token, int fd, uint64_t off, size_t len)
{
    struct h1_session *s = S(ex);
    if (s->tls || s->resp_chunked)
        return 1;
    if (s->resp_no_body || len == 0)
        return 0;
    if (outq_push_file(&s->b->out, token, fd, off, len) < 0)
        return -1;
    ex->body_bytes_sent += len;
    queue_flush(s);
    return 0;
}

static int op_send_end(struct exchange *ex, struct slice trailers)
{
    struct h1_session *s = S(ex);
    s->resp_ended = true;
    if (s->resp_chunked && !s->resp_no_body) {
        if (outq_room(&s->b->out) < 3)
            return -1;
        outq_push(&s->b->out, NULL, "0\r\n", 3);
        if (trailers.len)
            outq_push(&s->b->out, NULL, trailers.p, trailers.len);
        outq_push(&s->b->out, NULL, "\r\n", 2);
    }
    queue_flush(s);
    return 0;
}

static size_t op_pending(struct exchange *ex)
{
    struct h1_session *s = S(ex);
    if (s->b->out.bytes || outq_room(&s->b->out) < 4)
        s->waiting_drain = true;
    return s->b->out.bytes + (outq_room(&s->b->out) < 4 ? 1 << 30 : 0);
}

static void op_continue_100(struct exchange *ex)
{
    struct h1_session *s = S(ex);
    if (!ex->expect_continue || s->sent_continue || ex->minor_version == 0 || s->rb_done)
        return;
    s->sent_continue = true;
    if (s->rstart < s->rend)
        return; /* the client did not wait */
    outq_push(&s->b->out, NULL, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    queue_flush(s);
}

static enum body_status body_fail(struct h1_session *s, enum ending_code code, const char *why)
{
    s->b->ex.ending = (struct ending){.code = code, .why = why};
    s->b->ex.close_conn = true;
    s->close_after = s->linger = true;
    s->rb_error = true;
    return BODY_ERROR;
}

static enum body_status op_body_read(struct exchange *ex, struct body_piece *piece)
{
    struct h1_session *s = S(ex);
    const struct loc_conf *lc = ex->lc ? ex->lc : dflt_lc(s);
    if (s->rb_error)
        return BODY_ERROR;
    for (;;) {
        if (s->rb_done)
            return BODY_END;
        if (s->rseg && s->rstart < s->rend) {
            char *base = s->rseg->data + s->rstart;
            size_t have = s->rend - s->rstart;
            struct h1_busy *b = s->b;
            if (b->rb_kind == RB_RAW) {
                *piece = (struct body_piece){s->rseg, base, have};
                s->rstart += have;
                return BODY_DATA;
            }
            if (b->rb_kind == RB_LENGTH) {
                size_t n = have < b->rb_left ? have : (size_t)b->rb_left;
                *piece = (struct body_piece){s->rseg, base, n};
                s->rstart += n;
                b->rb_left -= n;
                b->rb_total += n;
                ex->request_length += n;
                if (b->rb_left == 0)
                    s->rb_done = true;
                timer_cancel(&s->rtimer);
                return BODY_DATA;
            }
            size_t consumed = 0;
            struct slice data = SLICE_NULL;
            enum h1_error err = H1E_NONE;
            struct slice trailers = SLICE_NULL;
            enum h1_result r =
                h1_chunked_decode(&s->b->rb_dec, base, have, &consumed, &data, &trailers, &err);
            s->rstart += consumed;
            ex->request_length += consumed;
            if (r == H1_ERROR)
                return body_fail(s, END_CLIENT_BAD_BODY, h1_error_str(err));
            if (r == H1_DONE) {
                s->rb_done = true;
                /* kept for an upstream that gets the body chunked */
                if (trailers.len)
                    ex->req_trailers = arena_slice_dup(&ex->arena, trailers);
            }
            if (data.len) {
                b->rb_total += data.len;
                if (lc->client_max_body_size && b->rb_total > lc->client_max_body_size)
                    return body_fail(s, END_BODY_TOO_LARGE, "request body too large");
                *piece = (struct body_piece){s->rseg, data.p, data.len};
                timer_cancel(&s->rtimer);
                return BODY_DATA;
            }
            if (r == H1_DONE)
                return BODY_END;
            if (consumed > 0)
                continue;
            /* an incomplete framing line: read more behind it */
        }
        if (!s->io.readable) {
            /* a tunnel may be quiet: proxy_read_timeout watches it, not this */
            if (s->b->rb_kind != RB_RAW)
                timer_set(s->w->loop, &s->rtimer, lc->client_body_timeout_ms);
            return BODY_AGAIN;
        }
        if (ensure_room(s, BUF_SEG_SIZE) < 0)
            return body_fail(s, END_INTERNAL, "out of memory");
        ssize_t n = sess_recv(s, s->rseg->data + s->rend, s->rseg->cap - s->rend);
        if (n > 0) {
            s->rend += (size_t)n;
            continue;
        }
        if (n == 0 && s->b->rb_kind == RB_RAW) {
            s->rb_done = true; /* the client ended the tunnel */
            return BODY_END;
        }
        if (n == 0)
            return body_fail(s, END_CLIENT_CLOSED, "client closed the connection mid-body");
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            s->io.readable = false;
            continue;
        }
        return body_fail(s, END_CLIENT_CLOSED, "read error on the client connection");
    }
}

static void op_done(struct exchange *ex, bool broken)
{
    struct h1_session *s = S(ex);
    s->ex_done = true;
    s->ex_broken = broken;
    if (broken) {
        /* what is queued goes out, then the connection is cut */
        s->close_after = true;
        if (ex->status == 444) /* nginx's reset_timedout_connection covers 444 too */
            s->reset_close = ex->lc->reset_timedout_connection;
    }
    sess_flush(s);
}

static const struct client_ops h1_ops = {
    .send_head = op_send_head,
    .send_interim = op_send_interim,
    .send_body = op_send_body,
    .send_file = op_send_file,
    .send_end = op_send_end,
    .pending = op_pending,
    .body_read = op_body_read,
    .continue_100 = op_continue_100,
    .done = op_done,
};

/* ---- events ---- */

static void linger_read(struct h1_session *s)
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
            uint64_t now = loop_now_ms(s->w->loop);
            if (now >= s->linger_deadline)
                sess_close(s);
            else
                timer_set(s->w->loop, &s->rtimer, s->lg_timeout_ms);
            return;
        }
        sess_close(s);
        return;
    }
}

static void sess_io(struct io *io, uint32_t events)
{
    (void)events;
    struct h1_session *s = io->data;
    if (s->state == S_CLOSED)
        return;
    if (s->state == S_HANDSHAKE) {
        do_handshake(s);
        return;
    }
    if (io->writable && out_count(s)) {
        sess_flush(s);
        if (s->state == S_CLOSED)
            return;
    }
    if (!io->readable)
        return;
    switch (s->state) {
    case S_PROXY:
        read_proxy_header(s);
        break;
    case S_HANDSHAKE:
        do_handshake(s);
        break;
    case S_HEAD:
        if (!s->close_after)
            read_head(s);
        break;
    case S_EXCHANGE:
        if (!s->rb_done && !s->ex_done) {
            proxy_request_body_ready(&s->b->ex);
        } else if ((io->hup || io->rdhup) && !s->ex_done) {
            /* the client is gone (a FIN is enough, as nginx sees a closed
             * connection while it waits): stop the upstream side too */
            struct exchange *ex = &s->b->ex;
            if (!ex->ending.code)
                ex->ending = (struct ending){.code = END_CLIENT_CLOSED,
                                             .why = "client prematurely closed connection"};
            if (!ex->head_sent)
                ex->status = 499;
            proxy_abort(ex);
            s->ex_done = true;
            sess_close(s);
        }
        break;
    case S_LINGER:
        linger_read(s);
        break;
    case S_CLOSED:
        break;
    }
}

static void rtimer_cb(struct timer *t)
{
    struct h1_session *s = t->data;
    switch (s->state) {
    case S_PROXY: {
        char peer[64];
        net_addr_format(&s->peer, peer, sizeof(peer));
        LOG(LOG_INFO, "client %s timed out sending the PROXY protocol header", peer);
        sess_close(s);
        break;
    }
    case S_HANDSHAKE: {
        char peer[64];
        net_addr_format(&s->peer, peer, sizeof(peer));
        LOG(LOG_INFO, "SSL handshake with client %s timed out", peer);
        sess_close(s);
        break;
    }
    case S_HEAD:
        if (s->rseg && s->rend > s->rstart && !s->close_after) {
            s->reset_close = dflt_lc(s)->reset_timedout_connection;
            answer_bad_request(s, 408, "client_header_timeout", NULL);
        } else {
            sess_close(s); /* keep-alive timeout */
        }
        break;
    case S_EXCHANGE:
        if (!s->rb_done && !s->ex_done) {
            s->reset_close = s->b->ex.lc->reset_timedout_connection;
            body_fail(s, END_CLIENT_TIMEOUT, "client_body_timeout");
            proxy_request_body_ready(&s->b->ex); /* the corridor sees BODY_ERROR */
        }
        break;
    case S_LINGER:
        sess_close(s);
        break;
    case S_CLOSED:
        break;
    }
}

static void ratetimer_cb(struct timer *t)
{
    sess_flush(t->data);
}

static void wtimer_cb(struct timer *t)
{
    struct h1_session *s = t->data;
    char peer[64];
    net_addr_format(&s->peer, peer, sizeof(peer));
    LOG(LOG_INFO, "client %s timed out (send_timeout) while sending the response", peer);
    s->reset_close = (s->active ? s->b->ex.lc : dflt_lc(s))->reset_timedout_connection;
    if (s->active && !s->ex_done) {
        proxy_abort(&s->b->ex);
        s->ex_done = true;
    }
    sess_close(s);
}

/* In-body timeouts surface as BODY_ERROR from the next body_read. */

static void sess_close(struct h1_session *s)
{
    if (s->state == S_CLOSED)
        return;
    s->state = S_CLOSED;
    struct loop *l = s->w->loop;
    /* no EPOLL_CTL_DEL: closing the only descriptor of the socket removes it
     * from the epoll set (one syscall less per connection) */
    if (s->reset_close && s->io.fd >= 0)
        net_set_reset_on_close(s->io.fd);
    if (s->tls) {
        if (!s->reset_close) /* a reset is no orderly end: no close_notify */
            tls_shutdown(s->tls);
        tls_conn_free(s->tls);
        s->tls = NULL;
    }
    if (s->io.fd >= 0) {
        close(s->io.fd);
        STAT_ADD(s->w->stats.closed, 1);
    }
    s->io.fd = -1;
    if (s->stat_reading) {
        s->stat_reading = false;
        STAT_ADD(s->w->stats.reading, -1);
    }
    timer_cancel(&s->rtimer);
    posted_cancel(l, &s->post);
    if (s->b) {
        outq_clear(&s->b->out);
        rate_stop(s);
    }
    if (s->active) {
        struct exchange *ex = &s->b->ex;
        if (!s->ex_done) {
            if (!ex->ending.code)
                ex->ending = (struct ending){.code = END_CLIENT_CLOSED,
                                             .why = "client closed the connection"};
            proxy_abort(ex);
            if (!ex->head_sent)
                ex->status = 499;
        }
        accesslog_write(ex);
        proxy_release(ex);
        arena_deinit(&ex->arena);
        snapshot_unref(ex->snap);
        s->active = false;
        s->w->nactive--;
    }
    if (s->rseg)
        buf_unref(s->rseg);
    s->rseg = NULL;
    snapshot_unref(s->snap);
    s->snap = NULL;
    if (s->b)
        busy_drop(s);
    worker_session_closed(s->w, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        s->w->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->w->nsessions--;
    /* post is idle from here on (cancelled above): it carries the free */
    posted_init(&s->post, release_post_cb, s);
    loop_post(l, &s->post);
}

void h1_session_shutdown(struct h1_session *s)
{
    s->shutting_down = true;
    if (s->state == S_HEAD && !s->active && (!s->rseg || s->rstart == s->rend) && out_count(s) == 0)
        sess_close(s);
}

void h1_session_kill(struct h1_session *s)
{
    sess_close(s);
}

struct h1_session *h1_session_next(struct h1_session *s)
{
    return s->next;
}

bool h1_session_busy(const struct h1_session *s)
{
    return s->active || out_count(s);
}
