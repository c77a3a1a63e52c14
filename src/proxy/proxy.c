/* The corridor of one exchange: route, answer locally or forward upstream,
 * stream the response back, retry when that is safe. */
#include "proxy/proxy.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin.h"
#include "cache/rules.h"
#include "core/fdio.h"
#include "proxy/realip.h"
#include "proxy/redirect.h"
#include "proxy/rewrite.h"
#include "proxy/auth.h"
#include "proxy/compress.h"
#include "proxy/jwt.h"
#include "proxy/limit.h"
#include "proxy/static.h"
#include "proxy/subfilter.h"
#include "core/log.h"
#include "http1/h1.h"
#include "proxy/pcache.h"
#include "proxy/vars.h"
#include "proxy/worker.h"

#define UPS_MAX_FIELDS 100
#define MAX_PRE_PIECES 16
#define UPS_SEND_HIGH  (64 * 1024)

enum fwd_phase {
    P_CACHE,    /* the cache answers or waits for its lock */
    P_COLLECT,  /* reading the request body before connecting */
    P_QUEUED,   /* every server at max_conns: waiting in the group's queue */
    P_DEFERRED, /* no idle connection: look again once this loop round is over */
    P_CONNECTING,
    P_HANDSHAKE, /* proxy_pass https://: TLS handshake (proxy_connect_timeout) */
    P_ACTIVE,    /* connected: sending the request, reading the response */
    P_DRAIN,     /* the upstream is done and released; the client drains the response file */
    P_DONE,
};

struct fwd {
    struct exchange *ex;
    enum fwd_phase phase;
    struct ups_group *group;
    struct ups_server *srv;
    struct ups_conn *uc;
    bool uc_reused;
    bool stale_retry_used;
    struct ups_tried tried;
    int tries;
    uint64_t first_try_ms;
    uint64_t try_start_ms;
    struct ups_try *cur_try;
    struct slice hash_key; /* the group's evaluated `hash` key */
    struct slice sticky;   /* the request's sticky cookie value */
    struct slice proxy_host;
    struct slice uri;     /* request target sent upstream */
    struct slice dyn_uri; /* the URI part of a proxy_pass with variables */
    struct timer timer;
    struct ups_waiter wait;     /* `queue N`: while P_QUEUED */
    struct posted connect_post; /* while P_DEFERRED */
    bool connect_deferred;      /* this try waited for the end of a round already */

    /* request toward the upstream */
    struct buf *req_head; /* serialized head */
    size_t req_head_len;
    struct body_piece pre[MAX_PRE_PIECES];
    size_t npre;
    size_t pre_bytes;
    bool body_collected; /* the whole body is in pre[] or in the spool file */
    struct buf *spool;   /* the body outgrew client_body_buffer_size: it is all in an
                          * unnamed file, held open by this token (NULL: it is in pre[]) */
    int spool_fd;
    uint64_t spool_off; /* TLS upstream: spooled bytes queued so far on this try */
    bool body_eof;      /* the client's body ended */
    bool body_streamed; /* bytes beyond pre[] went upstream: no replay */
    bool send_chunked;  /* length unknown: chunked toward the upstream */
    bool req_sent;      /* everything (head, body, last chunk) queued */
    bool tunnel;        /* 101 Switching Protocols: bytes both ways until a close */
    struct outq out;
    struct buf *scratch;
    size_t scratch_used;

    /* response */
    struct buf *rseg;
    size_t rstart, rend;
    struct buf *head_seg;
    bool head_done;
    uint8_t accel_buffering; /* X-Accel-Buffering: 0 none, 1 yes, 2 no (this answer's buffering) */
    bool got_bytes;          /* any response byte arrived on this try */
    struct h1_response resp;
    enum h1_body_kind body_kind;
    uint64_t body_left;
    struct h1_chunked dec;
    bool resp_done;
    bool upstream_reusable;
    /* response bytes a slow client has not taken, beyond proxy_buffers: an
     * unnamed file in proxy_temp_path (NULL until needed), rs_read..rs_written */
    struct buf *rspool;
    int rspool_fd;
    uint64_t rs_read, rs_written;
    struct slice rs_trailers; /* kept for the end of P_DRAIN */
    int error_page_status;    /* status forced by error_page, 0 if none */
    struct pcache *pc;        /* proxy_cache state, NULL without a cache */
    /* another content handler's (static.c): told when the client drained,
     * and released with the exchange */
    void (*hook_drained)(void *ctx);
    void (*hook_release)(void *ctx);
    void *hook_ctx;
};

static void fwd_run(struct fwd *f);
static void body_broken(struct fwd *f, enum ending_code code, const char *why, int err);
static void push_last_chunk(struct fwd *f);
static void try_upstream(struct fwd *f);
static void try_connect(struct fwd *f);
static void respond_status(struct exchange *ex, int status);

size_t proxy_error_html(int status, const char *detail, bool tokens, char *out, size_t cap)
{
    const char *text = http_status_text(status);
    int n = snprintf(out, cap,
                     "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d "
                     "%s</h1></center>\r\n%s%s%s<hr><center>%s</center>\r\n</body>\r\n</html>\r\n",
                     status, detail ? detail : text, status, text, detail ? "<center>" : "",
                     detail ? detail : "", detail ? "</center>\r\n" : "",
                     tokens ? PORTICO_SERVER : "portico");
    return n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
}

int ending_status(enum ending_code c)
{
    switch (c) {
    case END_OK:
        return 200;
    case END_CLIENT_CLOSED:
        return 499;
    case END_CLIENT_TIMEOUT:
        return 408;
    case END_CLIENT_BAD_BODY:
        return 400;
    case END_BODY_TOO_LARGE:
        return 413;
    case END_CONNECT_TIMEOUT:
    case END_SEND_TIMEOUT:
    case END_READ_TIMEOUT:
        return 504;
    case END_INTERNAL:
        return 500;
    default:
        return 502;
    }
}

static struct fwd *F(struct exchange *ex)
{
    return ex->proxy;
}

/* ---- routing ---- */

static void answer_return(struct exchange *ex, const struct rw_return *r);

/* The location for $uri, then its rewrite directives; a changed $uri (no
 * `break`) or `rewrite ... last` searches again, as nginx, at most 10 times.
 * Returns 0 to go on with ex->lc, 1 when the exchange was answered. */
static int find_location(struct exchange *ex, bool search)
{
    for (int cycle = 0;; cycle++) {
        if (search) {
            if (cycle) /* (the exchange starts zeroed) */
                memset(&ex->caps, 0, sizeof(ex->caps));
            ex->loc = router_find_location(ex->srv->locset, ex->uri, &ex->caps);
            ex->lc = ex->loc ? ex->loc->conf : ex->srv->lc;
            if (ex->lc->internal && !ex->internal) {
                respond_status(ex, 404); /* `internal`: not for the client to ask */
                return 1;
            }
        }
        search = true;
        if (!ex->loc || !ex->lc->rw)
            return 0;
        bool before = ex->uri_rewritten;
        ex->uri_rewritten = false;
        struct rw_return ret;
        enum rw_result r = rw_run(ex, ex->lc->rw, &ret);
        bool changed = ex->uri_rewritten;
        ex->uri_rewritten = before || changed;
        if (r == RW_RETURN) {
            answer_return(ex, &ret);
            return 1;
        }
        if (r == RW_BREAK || !changed)
            return 0; /* (rewrite ... break, here or in the server, set uri_rewritten_here) */
        ex->internal = true; /* a rewritten URI may enter `internal` locations, as nginx */
        if (cycle + 1 >= 10) {
            LOG(LOG_ERR, "*%llu rewrite or internal redirection cycle while processing \"%.*s\"",
                (unsigned long long)ex->id, (int)ex->uri.len, ex->uri.p);
            respond_status(ex, 500);
            return 1;
        }
    }
}

/* Server, then the server's rewrite directives (before any location, as
 * nginx's server rewrite phase), then the location. 1 when answered. */
static int route(struct exchange *ex)
{
    const struct listen_set *ls = ex->listen;
    const struct vhost *vh = router_find_vhost(ls->vhosts, ex->host, &ex->host_caps);
    ex->srv = vh ? vh->conf : ls->dflt;
    ex->loc = NULL;
    ex->lc = ex->srv->lc;
    if (ex->srv->lc->nrealip_from) /* nginx's post-read phase: before any rewrite */
        realip_apply(ex, ex->srv->lc);
    if (ex->srv->lc->rw) {
        struct rw_return ret;
        if (rw_run(ex, ex->srv->lc->rw, &ret) == RW_RETURN) {
            answer_return(ex, &ret);
            return 1;
        }
        if (ex->uri_rewritten)
            ex->internal = true;
    }
    return find_location(ex, true);
}

/* ---- local answers ---- */

static bool add_header_applies(int status)
{
    switch (status) {
    case 200:
    case 201:
    case 204:
    case 206:
    case 301:
    case 302:
    case 303:
    case 304:
    case 307:
    case 308:
        return true;
    default:
        return false;
    }
}

/* A field value made from a template: a decoded $uri or a capture may hold
 * CR, LF or other controls, which would start a new header line; they are
 * percent-encoded instead (HTAB stays). Most values pass untouched. */
static struct slice field_safe(struct exchange *ex, struct slice v)
{
    size_t bad = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        bad += (c < 0x20 && c != '\t') || c == 0x7f;
    }
    if (!bad)
        return v;
    static const char hex[] = "0123456789ABCDEF";
    char *out = arena_alloc(&ex->arena, v.len + 2 * bad);
    if (!out)
        return SLICE_NULL;
    size_t o = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    return slice_make(out, o);
}

/* Set (replacing what is there) Expires and Cache-Control per `expires`,
 * as nginx: a time in the past or `epoch` means no-cache. */
static size_t apply_expires(struct exchange *ex, struct http_field *fields, size_t n)
{
    const struct loc_conf *lc = ex->lc;
    time_t now = time(NULL); /* (vDSO: no system call) */
    time_t at = 0;
    int64_t max_age = -1;
    const char *cc = NULL;
    switch (lc->expires) {
    case EXPIRES_EPOCH:
        at = 1, cc = "no-cache";
        break;
    case EXPIRES_MAX:
        at = 2145916555, cc = "max-age=315360000"; /* Thu, 31 Dec 2037 23:55:55 GMT */
        break;
    case EXPIRES_ACCESS:
        at = now + (time_t)lc->expires_sec, max_age = lc->expires_sec;
        break;
    case EXPIRES_MODIFIED: {
        int64_t lm = -1;
        for (size_t i = 0; i < n; i++)
            if (slice_eq_lit_ci(fields[i].name, "last-modified"))
                lm = http_date_parse(fields[i].value);
        if (lm < 0)
            return n; /* nothing to count from */
        at = (time_t)(lm + lc->expires_sec), max_age = (int64_t)at - now;
        break;
    }
    case EXPIRES_DAILY: {
        struct tm tm;
        localtime_r(&now, &tm);
        tm.tm_hour = (int)(lc->expires_sec / 3600);
        tm.tm_min = (int)(lc->expires_sec / 60 % 60);
        tm.tm_sec = (int)(lc->expires_sec % 60);
        at = mktime(&tm);
        if (at <= now)
            at += 86400;
        max_age = (int64_t)at - now;
        break;
    }
    default:
        return n;
    }
    char *date = arena_alloc(&ex->arena, 30);
    char *ccv = cc ? NULL : arena_alloc(&ex->arena, 32);
    if (!date || (!cc && !ccv))
        return n;
    size_t dl = http_date_format(at, date);
    struct slice ccs;
    if (cc)
        ccs = slice_cstr(cc);
    else if (max_age < 0)
        ccs = SLICE_LIT("no-cache");
    else
        ccs = slice_make(ccv, (size_t)snprintf(ccv, 32, "max-age=%lld", (long long)max_age));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) /* drop what the response had */
        if (!slice_eq_lit_ci(fields[i].name, "expires") &&
            !slice_eq_lit_ci(fields[i].name, "cache-control"))
            fields[k++] = fields[i];
    fields[k++] = (struct http_field){SLICE_LIT("Expires"), slice_make(date, dl)};
    fields[k++] = (struct http_field){SLICE_LIT("Cache-Control"), ccs};
    return k;
}

/* Append expires' and add_header's fields to `fields` (capacity:
 * LOC_EXTRA_FIELDS beyond n). */
static size_t apply_add_headers(struct exchange *ex, int status, struct http_field *fields,
                                size_t n)
{
    const struct loc_conf *lc = ex->lc;
    if (!lc)
        return n;
    if (ex->naccel_keep) {
        /* X-Accel-Redirect: the upstream's Content-Type, Set-Cookie... win */
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            bool dup = false;
            for (size_t j = 0; j < ex->naccel_keep && !dup; j++)
                dup = slice_eq_ci(fields[i].name, ex->accel_keep[j].name);
            if (!dup)
                fields[k++] = fields[i];
        }
        n = k;
        for (size_t j = 0; j < ex->naccel_keep; j++)
            fields[n++] = ex->accel_keep[j];
    }
    /* nginx applies expires and add_header (without always) to one list */
    bool applies = add_header_applies(status);
    if (lc->expires > EXPIRES_OFF && applies)
        n = apply_expires(ex, fields, n);
    for (size_t i = 0; i < lc->add_headers.n; i++) {
        const struct hdr_rule *r = &lc->add_headers.v[i];
        if (!applies && !r->always)
            continue;
        struct slice v = field_safe(ex, tmpl_eval(ex, r->value, ESC_NONE));
        if (!v.len)
            continue;
        fields[n++] = (struct http_field){r->name, v};
    }
    return n;
}

static void send_local(struct exchange *ex, int status, struct slice ctype, struct slice location,
                       struct slice body)
{
    struct fwd *f = F(ex);
    if (f && f->error_page_status)
        status = f->error_page_status;
    size_t cap = 3 + (ex->lc ? LOC_EXTRA_FIELDS(ex->lc) : 0);
    struct http_field *fields = arena_alloc(&ex->arena, cap * sizeof(*fields));
    size_t n = 0;
    if (!fields) {
        ex->client->done(ex, true);
        return;
    }
    if (ctype.len)
        fields[n++] = (struct http_field){SLICE_LIT("Content-Type"), ctype};
    if (location.len) /* (a Location can only get a space from a capture) */
        fields[n++] = (struct http_field){SLICE_LIT("Location"), field_safe(ex, location)};
    if (ex->www_authenticate.len && status == 401)
        fields[n++] = (struct http_field){SLICE_LIT("WWW-Authenticate"), ex->www_authenticate};
    n = apply_add_headers(ex, status, fields, n);
    struct resp_head h = {
        .status = status,
        .fields = fields,
        .nfields = n,
        .content_length = (int64_t)body.len,
        .no_body = status == 204 || status == 304 || status < 200,
    };
    if (h.no_body)
        h.content_length = -1;
    if (ex->client->send_head(ex, &h) < 0) {
        ex->client->done(ex, true);
        return;
    }
    if (body.len && !h.no_body) {
        struct body_piece piece = {NULL, body.p, body.len};
        ex->client->send_body(ex, &piece);
    }
    ex->client->send_end(ex, SLICE_NULL);
    ex->client->done(ex, false);
}

void proxy_answer(struct exchange *ex, int status, struct slice content_type, struct slice body)
{
    send_local(ex, status, content_type, SLICE_NULL, body);
}

static struct slice absolute_location(struct exchange *ex, struct slice loc)
{
    const struct loc_conf *lc = ex->lc;
    if (!loc.len || loc.p[0] != '/' || (lc && !lc->absolute_redirect))
        return loc;
    bool by_name = lc && lc->server_name_in_redirect && ex->srv && ex->srv->nnames &&
                   ex->srv->names[0][0] && ex->srv->names[0][0] != '~' &&
                   !strchr(ex->srv->names[0], '*');
    struct slice host = by_name                        ? slice_cstr(ex->srv->names[0])
                        : ex->host.len                 ? ex->host
                        : (ex->srv && ex->srv->nnames) ? slice_cstr(ex->srv->names[0])
                                                       : SLICE_NULL;
    char ipbuf[64];
    if (!host.len)
        host = slice_make(ipbuf, net_addr_ip(ex->local, ipbuf, sizeof(ipbuf)));
    int port = net_addr_port(ex->local);
    char *p = (port == (ex->is_tls ? 443 : 80) || (lc && !lc->port_in_redirect))
                  ? arena_printf(&ex->arena, "%s://%.*s%.*s", ex->is_tls ? "https" : "http",
                                 (int)host.len, host.p, (int)loc.len, loc.p)
                  : arena_printf(&ex->arena, "%s://%.*s:%d%.*s", ex->is_tls ? "https" : "http",
                                 (int)host.len, host.p, port, (int)loc.len, loc.p);
    return p ? slice_cstr(p) : loc;
}

static void internal_redirect(struct exchange *ex, struct slice uri);

/* error_page: another URI, a named location or a redirect for this status. */
static bool try_error_page(struct exchange *ex, int status)
{
    struct fwd *f = F(ex);
    const struct loc_conf *lc = ex->lc;
    if (!lc || !lc->nerror_pages || ex->error_page_locked)
        return false;
    for (size_t i = 0; i < lc->nerror_pages; i++) {
        const struct error_page *ep = &lc->error_pages[i];
        for (size_t k = 0; k < ep->ncodes; k++) {
            if (ep->codes[k] != status)
                continue;
            /* as nginx: the location that used an error page decides whether
             * the page's own errors may use one again (recursive_error_pages) */
            ex->error_page_locked = !lc->recursive_error_pages;
            struct slice uri = tmpl_eval(ex, ep->uri, ESC_NONE);
            if (uri.len && uri.p[0] != '/' && uri.p[0] != '@') {
                /* a URL: redirect (302 unless =code says otherwise) */
                int code = ep->override > 0 ? ep->override : 302;
                if (!f) {
                    f = arena_calloc(&ex->arena, sizeof(*f));
                    if (!f)
                        return false;
                    f->ex = ex;
                    ex->proxy = f;
                }
                ex->redirected = true;
                char body[512];
                size_t bl = proxy_error_html(code, NULL, lc->server_tokens, body, sizeof(body));
                send_local(ex, code, SLICE_LIT("text/html"), uri,
                           arena_slice_dup(&ex->arena, slice_make(body, bl)));
                return true;
            }
            ex->error_status = ep->override > 0 ? ep->override : ep->override == 0 ? status : 0;
            internal_redirect(ex, uri);
            return true;
        }
    }
    return false;
}

static void respond_status(struct exchange *ex, int status)
{
    if (status >= 400 && try_error_page(ex, status))
        return;
    /* after these the rest of the request cannot be told from the next one */
    if (status == 413 || status == 400 || status == 408 || status == 411)
        ex->close_conn = true;
    const struct loc_conf *lc = ex->lc ? ex->lc : ex->snap->http_lc;
    char body[512];
    size_t bl = 0;
    if (status >= 300 && status != 304)
        bl = proxy_error_html(status, ex->error_detail, lc->server_tokens, body, sizeof(body));
    struct slice b = arena_slice_dup(&ex->arena, slice_make(body, bl));
    send_local(ex, status, bl ? SLICE_LIT("text/html") : SLICE_NULL, SLICE_NULL, b);
}

void proxy_respond_error(struct exchange *ex, int status)
{
    if (!ex->lc && ex->listen) {
        const struct listen_set *ls = ex->listen;
        ex->srv = ls->dflt;
        ex->lc = ex->srv->lc;
    }
    respond_status(ex, status);
}

int proxy_forced_status(struct exchange *ex)
{
    return F(ex) ? F(ex)->error_page_status : 0;
}

int proxy_attach(struct exchange *ex, void (*drained)(void *ctx), void (*release)(void *ctx),
                 void *ctx)
{
    struct fwd *f = F(ex);
    if (!f) {
        f = arena_calloc(&ex->arena, sizeof(*f));
        if (!f)
            return -1;
        f->ex = ex;
        f->phase = P_DONE;
        ex->proxy = f;
    }
    f->hook_drained = drained;
    f->hook_release = release;
    f->hook_ctx = ctx;
    return 0;
}

void proxy_local_redirect(struct exchange *ex, int code, struct slice location)
{
    struct slice loc = absolute_location(ex, location);
    char body[512];
    size_t bl = proxy_error_html(code, NULL, ex->lc->server_tokens, body, sizeof(body));
    send_local(ex, code, SLICE_LIT("text/html"), loc,
               arena_slice_dup(&ex->arena, slice_make(body, bl)));
}

/* `return` (or a redirecting rewrite): a status, a body, or a Location. */
static void answer_return(struct exchange *ex, const struct rw_return *r)
{
    const struct loc_conf *lc = ex->lc;
    int code = r->code;
    if (code == 444) {
        /* nginx's "close without an answer" */
        ex->status = 444;
        ex->client->done(ex, true);
        return;
    }
    if (code == 301 || code == 302 || code == 303 || code == 307 || code == 308) {
        proxy_local_redirect(ex, code, r->text);
        return;
    }
    if (!r->has_text) {
        respond_status(ex, code);
        return;
    }
    send_local(ex, code, slice_cstr(lc->default_type), SLICE_NULL, r->text);
}

/* ---- forwarding: the upstream request ---- */

static bool uri_char_ok(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '%' && c != '?' && c != '#' && c != '"' && c != '<' &&
           c != '>' && c != '\\' && c != '^' && c != '`' && c != '{' && c != '|' && c != '}';
}

static size_t escape_uri(char *out, struct slice in)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < in.len; i++) {
        unsigned char c = (unsigned char)in.p[i];
        if (uri_char_ok(c)) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    return o;
}

/* nginx's rules: without a URI part the client's URI goes as sent (or, after
 * an internal redirect, the new $uri); with one, the part of $uri matched by
 * the location prefix is replaced by it. */
/* Arguments into a request line: a byte that cannot stand there raw (a
 * space, a control: only a rewrite or `set` can have put one in) is
 * percent-encoded, so no value can split the request. */
static size_t copy_args(char *out, struct slice a)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < a.len; i++) {
        unsigned char c = (unsigned char)a.p[i];
        if (c <= 0x20 || c == 0x7f) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

static struct slice upstream_uri(struct exchange *ex, const struct proxy_pass *pp,
                                 struct slice dyn_uri, bool dyn)
{
    if (dyn) {
        if (dyn_uri.len) { /* (a decoded $uri in it may hold a space or a CR LF) */
            char *p = arena_alloc(&ex->arena, dyn_uri.len * 3 + 1);
            return p ? slice_make(p, copy_args(p, dyn_uri)) : SLICE_NULL;
        }
    } else if (pp->has_uri && !ex->uri_rewritten_here) {
        /* (a URI changed by `rewrite ... break` in this location goes whole,
         * the URI of proxy_pass ignored, as nginx documents) */
        const struct location *loc = ex->loc;
        size_t skip = 0;
        if (loc &&
            (loc->match == LOC_PREFIX || loc->match == LOC_PREFIX_NOREGEX ||
             loc->match == LOC_EXACT) &&
            !ex->redirected)
            skip = loc->pattern_len <= ex->uri.len ? loc->pattern_len : ex->uri.len;
        struct slice rest = slice_make(ex->uri.p + skip, ex->uri.len - skip);
        size_t cap = pp->uri.len + rest.len * 3 + ex->args.len * 3 + 2;
        char *p = arena_alloc(&ex->arena, cap);
        if (!p)
            return SLICE_NULL;
        memcpy(p, pp->uri.p, pp->uri.len);
        size_t o = pp->uri.len + escape_uri(p + pp->uri.len, rest);
        if (ex->has_args) {
            p[o++] = '?';
            o += copy_args(p + o, ex->args);
        }
        return slice_make(p, o);
    }
    bool same = !ex->redirected && !ex->uri_rewritten && !ex->args_set;
    if (same && ex->request_uri.len && ex->request_uri.p[0] == '/')
        return ex->request_uri;
    if (same && ex->request_uri.len) {
        /* absolute-form: send the origin-form part */
        struct slice u = ex->uri;
        size_t cap = u.len * 3 + ex->args.len * 3 + 2;
        char *p = arena_alloc(&ex->arena, cap);
        if (!p)
            return SLICE_NULL;
        size_t o = escape_uri(p, u);
        if (ex->has_args) {
            p[o++] = '?';
            o += copy_args(p + o, ex->args);
        }
        return slice_make(p, o);
    }
    size_t cap = ex->uri.len * 3 + ex->args.len * 3 + 2;
    char *p = arena_alloc(&ex->arena, cap);
    if (!p)
        return SLICE_NULL;
    size_t o = escape_uri(p, ex->uri);
    if (ex->has_args) {
        p[o++] = '?';
        o += copy_args(p + o, ex->args);
    }
    return slice_make(p, o);
}

static bool set_by_rule(const struct loc_conf *lc, struct slice name)
{
    for (size_t i = 0; i < lc->set_headers.n; i++)
        if (slice_eq_ci(lc->set_headers.v[i].name, name))
            return true;
    return false;
}

static int build_request_head(struct fwd *f)
{
    struct exchange *ex = f->ex;
    const struct loc_conf *lc = ex->lc;
    struct slice vals[64];
    size_t nrules = lc->set_headers.n < 64 ? lc->set_headers.n : 64;
    bool host_set = false, conn_set = false;
    struct slice method = f->pc ? pcache_fetch_method(f->pc) : ex->method;
    if (lc->proxy_method) {
        struct slice m = tmpl_eval(ex, lc->proxy_method, ESC_NONE);
        bool ok = m.len > 0 && m.len <= 32;
        for (size_t i = 0; ok && i < m.len; i++)
            ok = http_tchar[(unsigned char)m.p[i]];
        if (ok)
            method = m;
    }
    bool strip = pcache_strip_conditionals(f->pc);
    const struct http_field *extra;
    size_t nextra = pcache_fetch_fields(f->pc, &extra);
    size_t len = method.len + f->uri.len + 16;
    for (size_t i = 0; i < nextra; i++)
        len += extra[i].name.len + extra[i].value.len + 4;
    for (size_t i = 0; i < nrules; i++) {
        const struct hdr_rule *r = &lc->set_headers.v[i];
        vals[i] = field_safe(ex, tmpl_eval(ex, r->value, ESC_NONE));
        host_set |= slice_eq_lit_ci(r->name, "host");
        conn_set |= slice_eq_lit_ci(r->name, "connection");
        len += r->name.len + vals[i].len + 4;
    }
    if (!host_set)
        len += 8 + f->proxy_host.len;
    len += 32 + ex->upgrade.len;
    bool keepalive = f->group->keepalive > 0 && lc->http_version_minor == 1;
    len += 24;
    if (lc->pass_request_headers)
        for (size_t i = 0; i < ex->nreq_fields; i++)
            len += ex->req_fields[i].name.len + ex->req_fields[i].value.len + 4;
    len += 48;

    struct buf *b = buf_new(len);
    if (!b)
        return -1;
    char *p = b->data;
    size_t o = 0;
#define PUT(s, n)                                                                                  \
    do {                                                                                           \
        memcpy(p + o, (s), (n));                                                                   \
        o += (n);                                                                                  \
    } while (0)
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)
    PUT(method.p, method.len);
    p[o++] = ' ';
    PUT(f->uri.p, f->uri.len);
    if (lc->http_version_minor == 1)
        PUTS(" HTTP/1.1\r\n");
    else
        PUTS(" HTTP/1.0\r\n");
    if (!host_set) {
        PUTS("Host: ");
        PUT(f->proxy_host.p, f->proxy_host.len);
        PUTS("\r\n");
    }
    for (size_t i = 0; i < nrules; i++) {
        if (!vals[i].len)
            continue; /* an empty value removes the field */
        const struct hdr_rule *r = &lc->set_headers.v[i];
        PUT(r->name.p, r->name.len);
        PUTS(": ");
        PUT(vals[i].p, vals[i].len);
        PUTS("\r\n");
    }
    /* an upgrade the client asked for goes on (nginx needs proxy_set_header
     * Upgrade/Connection for it; with those set, they are what is sent) */
    bool upgrade = ex->upgrade.len && lc->http_version_minor == 1;
    if (upgrade && !set_by_rule(lc, SLICE_LIT("upgrade"))) {
        PUTS("Upgrade: ");
        PUT(ex->upgrade.p, ex->upgrade.len);
        PUTS("\r\n");
    }
    if (upgrade && !conn_set)
        PUTS("Connection: upgrade\r\n");
    else if (!conn_set && !keepalive)
        PUTS("Connection: close\r\n");
    if (lc->pass_request_headers) {
        for (size_t i = 0; i < ex->nreq_fields; i++) {
            const struct http_field *fl = &ex->req_fields[i];
            if (http_is_hop_by_hop(fl->name) || slice_eq_lit_ci(fl->name, "host") ||
                slice_eq_lit_ci(fl->name, "content-length") ||
                slice_eq_lit_ci(fl->name, "expect") || set_by_rule(lc, fl->name) ||
                http_connection_names(ex->req_fields, ex->nreq_fields, fl->name))
                continue;
            if (strip && http_is_conditional(fl->name))
                continue; /* the cache wants the whole response */
            PUT(fl->name.p, fl->name.len);
            PUTS(": ");
            PUT(fl->value.p, fl->value.len);
            PUTS("\r\n");
        }
    }
    for (size_t i = 0; i < nextra; i++) {
        PUT(extra[i].name.p, extra[i].name.len);
        PUTS(": ");
        PUT(extra[i].value.p, extra[i].value.len);
        PUTS("\r\n");
    }
    if (f->send_chunked) {
        PUTS("Transfer-Encoding: chunked\r\n");
    } else if (ex->req_has_body && lc->pass_request_body) {
        uint64_t cl = ex->req_content_length >= 0 ? (uint64_t)ex->req_content_length : f->pre_bytes;
        PUTS("Content-Length: ");
        o += u64_to_dec(cl, p + o);
        PUTS("\r\n");
    } else if (ex->req_content_length >= 0 && lc->pass_request_body) {
        PUTS("Content-Length: 0\r\n");
    }
    PUTS("\r\n");
#undef PUT
#undef PUTS
    f->req_head = b;
    f->req_head_len = o;
    return 0;
}

static void spool_close(void *ctx)
{
    close((int)(intptr_t)ctx);
}

/* An unnamed file in `dir` (O_TMPFILE; where the file system has none, a
 * named one unlinked at once), held open by *token: it closes with the last
 * reference. Nothing is left on disk whatever happens to the process. */
static int temp_file(const char *dir, struct buf **token, int *fd_out)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/portico-tmp.XXXXXX", dir);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    if (fd < 0)
        return -1;
    *token = buf_wrap(spool_close, (void *)(intptr_t)fd);
    if (!*token) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    *fd_out = fd;
    return 0;
}

/* The body outgrew client_body_buffer_size (or pre[]): move what we hold to
 * a file in client_body_temp_path, which the rest follows. */
static int spool_open(struct fwd *f)
{
    struct exchange *ex = f->ex;
    if (temp_file(ex->lc->body_temp_path, &f->spool, &f->spool_fd) < 0)
        return -1;
    LOG(LOG_WARN, "*%llu a client request body is buffered to a temporary file in %s",
        (unsigned long long)ex->id, ex->lc->body_temp_path);
    int r = 0;
    for (size_t i = 0; i < f->npre; i++) {
        if (r == 0)
            r = fd_write_all(f->spool_fd, f->pre[i].p, f->pre[i].len);
        buf_unref(f->pre[i].seg); /* every piece, also after a failure */
        f->pre[i].seg = NULL;
    }
    f->npre = 0;
    return r;
}

/* Writing the spool failed: the body is half read, so 500 and close. */
static int spool_fail(struct fwd *f)
{
    struct exchange *ex = f->ex;
    LOG(LOG_CRIT, "*%llu cannot buffer the request body in %s: %s", (unsigned long long)ex->id,
        ex->lc->body_temp_path, strerror(errno));
    ex->ending = (struct ending){.code = END_INTERNAL, .why = "request body buffering failed"};
    ex->close_conn = true;
    return -1;
}

/* Read the request body before connecting. With proxy_request_buffering on,
 * all of it: in pre[] up to client_body_buffer_size, then in a file, so a
 * slow client never holds an upstream connection and a retry can replay it.
 * Off: the first piece that is there, the rest is streamed. Returns 1 when
 * done collecting, 0 to wait for more, -1 on an error (ex->ending says). */
static int collect_body(struct fwd *f)
{
    struct exchange *ex = f->ex;
    const struct loc_conf *lc = ex->lc;
    bool buffering = lc->request_buffering;
    ex->client->continue_100(ex);
    while (!f->body_eof && (buffering || f->npre == 0)) {
        struct body_piece piece;
        enum body_status st = ex->client->body_read(ex, &piece);
        if (st == BODY_AGAIN)
            return buffering ? 0 : 1;
        if (st == BODY_ERROR)
            return -1;
        if (st == BODY_END) {
            f->body_eof = true;
            break;
        }
        if (buffering && !f->spool &&
            (f->npre == MAX_PRE_PIECES || f->pre_bytes + piece.len > lc->client_body_buffer_size) &&
            spool_open(f) < 0)
            return spool_fail(f);
        if (f->spool) {
            if (fd_write_all(f->spool_fd, piece.p, piece.len) < 0)
                return spool_fail(f);
        } else {
            buf_ref(piece.seg);
            f->pre[f->npre++] = piece;
        }
        f->pre_bytes += piece.len;
    }
    f->body_collected = f->body_eof;
    return 1;
}

/* ---- upstream connection handling ---- */

static void fwd_io(struct io *io, uint32_t events)
{
    (void)events;
    struct fwd *f = io->data;
    fwd_run(f);
}

static void release_conn(struct fwd *f, bool reusable)
{
    struct ups_conn *c = f->uc;
    if (!c)
        return;
    f->uc = NULL;
    timer_cancel(&f->timer);
    if (reusable) {
        c->requests++;
        ups_pool_put(f->ex->worker->pool, f->group, c);
    } else {
        ups_conn_close(c);
    }
}

static void reset_try_state(struct fwd *f)
{
    outq_clear(&f->out);
    if (f->rseg)
        buf_unref(f->rseg);
    if (f->head_seg)
        buf_unref(f->head_seg);
    f->rseg = f->head_seg = NULL;
    f->rstart = f->rend = 0;
    f->head_done = f->got_bytes = f->resp_done = false;
    f->req_sent = false;
}

static const char *phase_text(const struct fwd *f)
{
    if (f->phase == P_CONNECTING || f->phase == P_DEFERRED)
        return "connecting to upstream";
    if (f->phase == P_HANDSHAKE)
        return "SSL handshaking to upstream";
    if (!f->head_done)
        return f->req_sent ? "reading response header from upstream"
                           : "sending request to upstream";
    return "reading upstream";
}

static void log_upstream_error(struct fwd *f, const char *why, int err)
{
    struct exchange *ex = f->ex;
    char peer[64];
    net_addr_ip(ex->peer, peer, sizeof(peer));
    const char *scheme = ex->lc->pass && ex->lc->pass->is_https ? "https" : "http";
    if (err)
        log_write(LOG_ERR,
                  "*%llu upstream %s (%d: %s) while %s, client: %s, request: \"%.*s\", upstream: "
                  "\"%s://%s%.*s\", host: \"%.*s\"",
                  (unsigned long long)ex->id, why, err, strerror(err), phase_text(f), peer,
                  (int)ex->request_line.len, ex->request_line.p, scheme,
                  f->srv ? f->srv->addr_text : "-", (int)f->uri.len, f->uri.p, (int)ex->host.len,
                  ex->host.p);
    else
        log_write(LOG_ERR,
                  "*%llu upstream %s while %s, client: %s, request: \"%.*s\", upstream: "
                  "\"%s://%s%.*s\", host: \"%.*s\"",
                  (unsigned long long)ex->id, why, phase_text(f), peer, (int)ex->request_line.len,
                  ex->request_line.p, scheme, f->srv ? f->srv->addr_text : "-", (int)f->uri.len,
                  f->uri.p, (int)ex->host.len, ex->host.p);
}

static bool body_replayable(const struct fwd *f)
{
    return !f->ex->req_has_body || (f->body_collected && !f->body_streamed);
}

static bool may_retry(struct fwd *f, uint32_t kind)
{
    struct exchange *ex = f->ex;
    const struct loc_conf *lc = ex->lc;
    if ((lc->next_upstream & NEXT_UPS_OFF) || !(lc->next_upstream & kind))
        return false;
    if (ex->head_sent || !body_replayable(f))
        return false;
    if (!http_method_idempotent(ex->method_id) && !(lc->next_upstream & NEXT_UPS_NON_IDEMPOTENT))
        return false;
    int max = lc->next_upstream_tries ? lc->next_upstream_tries : (int)f->group->nservers;
    if (f->tries >= max || f->tries >= EX_MAX_TRIES)
        return false;
    if (lc->next_upstream_timeout_ms &&
        loop_now_ms(ex->loop) - f->first_try_ms >= lc->next_upstream_timeout_ms)
        return false;
    return ups_has_candidate(f->group, &f->tried, loop_now_ms(ex->loop)) &&
           ups_budget_retry(f->group, loop_now_ms(ex->loop));
}

/* This try failed before the response head reached the client. */
static void fail_try(struct fwd *f, enum ending_code code, const char *why, int err, uint32_t kind)
{
    struct exchange *ex = f->ex;
    if (f->tunnel || ex->head_sent) {
        /* a head (a 101) is out: no retry, no error page, no second
         * response into the stream; the connection is cut */
        body_broken(f, code, why, err);
        return;
    }
    bool stale = f->uc_reused && !f->got_bytes && kind == NEXT_UPS_ERROR && !f->stale_retry_used;
    release_conn(f, false);
    if (stale && body_replayable(f)) {
        /* a kept-alive connection the server had closed: not the server's
         * fault; try it again on a fresh connection */
        f->stale_retry_used = true;
        reset_try_state(f);
        ups_tried_clear(&f->tried, ups_server_index(f->group, f->srv));
        f->tries--;
        ex->ntries--;
        try_upstream(f);
        return;
    }
    log_upstream_error(f, why, err);
    if (f->cur_try) {
        f->cur_try->status = ending_status(code);
        f->cur_try->response_ms = loop_now_ms(ex->loop) - f->try_start_ms;
        if (!f->head_done)
            f->cur_try->header_ms = UINT64_MAX;
    }
    if (kind & (NEXT_UPS_ERROR | NEXT_UPS_TIMEOUT | NEXT_UPS_INVALID_HEADER)) {
        ups_server_failed(f->srv, loop_now_ms(ex->loop));
        ups_outlier_report(f->group, f->srv, true, loop_now_ms(ex->loop));
    }
    ex->ending = (struct ending){.code = code, .why = why, .retryable = true};
    if (may_retry(f, kind)) {
        reset_try_state(f);
        try_upstream(f);
        return;
    }
    f->phase = P_DONE;
    if (pcache_upstream_failed(f->pc, code))
        return;
    respond_status(ex, ending_status(code));
}

static void fwd_timer(struct timer *t)
{
    struct fwd *f = t->data;
    switch (f->phase) {
    case P_CONNECTING:
    case P_HANDSHAKE:
        fail_try(f, END_CONNECT_TIMEOUT, "timed out (110: Connection timed out)", 0,
                 NEXT_UPS_TIMEOUT);
        break;
    case P_ACTIVE:
        if (f->head_done) {
            /* the head went to the client: all we can do is cut it */
            log_upstream_error(f, "timed out (110: Connection timed out)", 0);
            f->ex->ending = (struct ending){.code = END_READ_TIMEOUT, .why = "read timeout"};
            pcache_response_broken(f->pc);
            release_conn(f, false);
            f->phase = P_DONE;
            f->ex->client->done(f->ex, true);
        } else if (!f->req_sent || f->out.count) {
            fail_try(f, END_SEND_TIMEOUT, "timed out (110: Connection timed out)", 0,
                     NEXT_UPS_TIMEOUT);
        } else {
            fail_try(f, END_READ_TIMEOUT, "timed out (110: Connection timed out)", 0,
                     NEXT_UPS_TIMEOUT);
        }
        break;
    default:
        break;
    }
}

/* ---- upstream TLS (proxy_pass https://) ---- */

static struct tls_conn *fwd_tls(const struct fwd *f)
{
    return f->uc->tls;
}

/* read(2)'s contract: > 0 bytes, 0 at EOF, -1 with errno (EAGAIN: wait). */
static ssize_t fwd_recv(struct fwd *f, void *buf, size_t want)
{
    return tls_io_read(&f->uc->io, f->uc->tls ? fwd_tls(f) : NULL, buf, want);
}

static ssize_t fwd_send(struct fwd *f)
{
    net_nodelay_before_write(f->uc->io.fd, &f->uc->nodelay);
    if (!f->uc->tls)
        return outq_write(&f->out, f->uc->io.fd);
    return outq_write_with(&f->out, tls_outq_writev, fwd_tls(f));
}

/* The pool frees a connection's TLS when it closes it. */
static void free_tls(void *t)
{
    tls_shutdown(t);
    tls_conn_free(t);
}

/* proxy_ssl_name, or the host of proxy_pass without its port or brackets. */
static void ssl_name(const struct fwd *f, char *out, size_t cap)
{
    const char *name = f->ex->lc->proxy_ssl.name;
    if (name) {
        snprintf(out, cap, "%s", name);
        return;
    }
    struct slice h = f->proxy_host;
    if (h.len && h.p[0] == '[') {
        const char *end = memchr(h.p, ']', h.len);
        h = end ? slice_make(h.p + 1, (size_t)(end - h.p - 1)) : h;
    } else {
        const char *colon = memchr(h.p, ':', h.len);
        if (colon)
            h.len = (size_t)(colon - h.p);
    }
    snprintf(out, cap, "%.*s", (int)h.len, h.p);
}

/* Connected: set up the handshake, offering the newest session. 0 or -1
 * (the try failed). */
static int start_tls(struct fwd *f)
{
    const struct loc_conf *lc = f->ex->lc;
    struct proxy_ssl *ps = lc->proxy_ssl_rt;
    char name[256];
    ssl_name(f, name, sizeof(name));
    bool send_sni = lc->proxy_ssl.server_name == 1;
    struct tls_conn *t = tls_conn_client(proxy_ssl_ctx(ps), f->uc->io.fd, send_sni ? name : NULL);
    if (t && !send_sni && name[0] && tls_conn_verify_name(t, name) < 0) {
        tls_conn_free(t);
        t = NULL;
    }
    if (!t) {
        fail_try(f, END_INTERNAL, "SSL connection setup failed", 0, 0);
        return -1;
    }
    struct tls_session *sess = proxy_ssl_session_get(ps, &f->srv->addr);
    if (sess) {
        tls_conn_session_set(t, sess);
        tls_session_free(sess);
    }
    /* the handshake writes more than once, inside OpenSSL */
    if (f->uc->nodelay < 2) {
        net_set_nodelay(f->uc->io.fd);
        f->uc->nodelay = 2;
    }
    f->uc->tls = t;
    f->uc->tls_free = free_tls;
    f->uc->tls_key = ps;
    f->phase = P_HANDSHAKE;
    timer_set(f->ex->loop, &f->timer, lc->connect_timeout_ms);
    return 0;
}

/* 1 when the handshake is done, 0 to wait, -1 if the try failed. */
static int handshake_step(struct fwd *f)
{
    struct tls_conn *t = fwd_tls(f);
    int r = tls_handshake(t);
    if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
        if (r == TLS_WANT_READ)
            f->uc->io.readable = false;
        else
            f->uc->io.writable = false;
        return 0;
    }
    if (r != TLS_OK) {
        const char *text = NULL;
        long v = tls_conn_verify_result(t, &text);
        /* in the arena: the ending and the log line read it later */
        const char *why;
        if (v != 0 && f->ex->lc->proxy_ssl.verify == 1)
            why = arena_printf(&f->ex->arena, "SSL certificate verify error: (%ld:%s)", v, text);
        else
            why = arena_printf(&f->ex->arena, "SSL_do_handshake() failed (SSL: %s)",
                               tls_conn_error(t));
        fail_try(f, END_UPSTREAM_TLS, why ? why : "SSL_do_handshake() failed", 0, NEXT_UPS_ERROR);
        return -1;
    }
    return 1;
}

/* Keep the connection's session for the next handshake to this server (TLS
 * 1.3 tickets arrive with the first response bytes, so after a response). */
static void save_session(struct fwd *f)
{
    struct proxy_ssl *ps = f->ex->lc->proxy_ssl_rt;
    struct tls_session *sess = ps ? tls_conn_session_get(fwd_tls(f)) : NULL;
    if (sess)
        proxy_ssl_session_put(ps, &f->srv->addr, sess);
}

static void queue_ready(struct ups_waiter *w, bool expired)
{
    struct fwd *f = w->data;
    struct exchange *ex = f->ex;
    if (!expired) {
        try_upstream(f);
        return;
    }
    log_write(LOG_ERR, "*%llu queue timeout while connecting to upstream \"%s\"",
              (unsigned long long)ex->id, f->group->name);
    ex->ending = (struct ending){.code = END_NO_SERVER, .why = "queue timeout"};
    f->phase = P_DONE;
    if (pcache_upstream_failed(f->pc, END_NO_SERVER))
        return;
    respond_status(ex, 502);
}

static void try_upstream(struct fwd *f)
{
    struct exchange *ex = f->ex;
    uint64_t now = loop_now_ms(ex->loop);
    struct ups_pick_ctx pc = {
        .tried = &f->tried, .now_ms = now, .client = ex->peer, .key = f->hash_key};
    struct ups_server *s =
        f->sticky.len && !f->tries ? ups_sticky_find(f->group, f->sticky, &f->tried, now) : NULL;
    if (!s)
        s = ups_select(f->group, &pc);
    if (!s && f->group->queue_max && ups_group_saturated(f->group, &f->tried, now)) {
        f->wait.cb = queue_ready;
        f->wait.data = f;
        if (ups_queue_wait(ex->worker->pool, f->group, &f->wait) == 0) {
            f->phase = P_QUEUED;
            return;
        }
    }
    if (!s) {
        log_write(LOG_ERR, "*%llu no live upstreams while connecting to upstream \"%s\"%s",
                  (unsigned long long)ex->id, f->group->name,
                  f->group->queue_max ? " (queue full)" : "");
        ex->ending = (struct ending){.code = END_NO_SERVER, .why = "no live upstreams"};
        f->phase = P_DONE;
        if (pcache_upstream_failed(f->pc, END_NO_SERVER))
            return;
        respond_status(ex, 502);
        return;
    }
    f->wait.deadline_ms = 0;
    f->srv = s;
    ups_tried_set(&f->tried, ups_server_index(f->group, s));
    f->tries++;
    f->try_start_ms = now;
    if (!f->first_try_ms)
        f->first_try_ms = now;
    if (ex->ntries < EX_MAX_TRIES) {
        f->cur_try = &ex->tries[ex->ntries++];
        *f->cur_try = (struct ups_try){.addr = ups_server_addr_text(s),
                                       .connect_ms = UINT64_MAX,
                                       .header_ms = UINT64_MAX,
                                       .response_ms = UINT64_MAX};
    } else {
        f->cur_try = NULL;
    }
    f->connect_deferred = false;
    try_connect(f);
}

static void connect_post_cb(struct posted *p)
{
    struct fwd *f = p->data;
    if (f->phase == P_DEFERRED) {
        ups_server_unhold(f->srv);
        try_connect(f);
    }
}

/* Take an idle connection to f->srv, or open one. When none is idle, the
 * first look waits for the end of the loop round: responses read in the same
 * round put their connections back, and a busy worker then reuses them
 * instead of opening (and soon closing) one more than keepalive allows. The
 * connect would wait for the next epoll_wait anyway, so nothing is slower. */
/* proxy_bind's address for this request: 1 and *out, or 0 for none; an
 * invalid value is logged and counts as none, as nginx. A bare IP gets
 * port 0 (the kernel picks one). */
static int bind_address(struct exchange *ex, struct net_addr *out)
{
    const struct loc_conf *lc = ex->lc;
    if (!lc->proxy_bind)
        return 0;
    struct slice v = tmpl_eval(ex, lc->proxy_bind, ESC_NONE);
    if (!v.len)
        return 0;
    char text[80];
    const char *msg = NULL;
    if (v.len >= sizeof(text))
        msg = "too long";
    else {
        memcpy(text, v.p, v.len);
        text[v.len] = '\0';
        if (net_addr_parse_ip(text, out, &msg) == 0)
            return 1;
    }
    LOG(LOG_ERR, "*%llu invalid local address \"%.*s\" for proxy_bind%s%s",
        (unsigned long long)ex->id, (int)v.len, v.p, msg ? ": " : "", msg ? msg : "");
    return 0;
}

static void try_connect(struct fwd *f)
{
    struct exchange *ex = f->ex;
    struct ups_server *s = f->srv;
    struct ups_pool *pool = ex->worker->pool;
    struct net_addr local;
    int has_local = bind_address(ex, &local);
    const struct net_addr *lp = has_local ? &local : NULL;
    f->uc = ups_pool_get(pool, f->group, s);
    while (f->uc && (f->uc->tls_key != (const void *)ex->lc->proxy_ssl_rt ||
                     !ups_conn_local_is(f->uc, lp))) {
        /* made for another location's TLS (or plain) or from another local
         * address: not ours to reuse */
        ups_conn_close(f->uc);
        f->uc = ups_pool_get(pool, f->group, s);
    }
    if (!f->uc && !f->connect_deferred && f->group->keepalive > 0) {
        f->connect_deferred = true;
        f->phase = P_DEFERRED;
        ups_server_hold(s);
        posted_init(&f->connect_post, connect_post_cb, f);
        loop_post(ex->loop, &f->connect_post);
        return;
    }
    f->uc_reused = f->uc != NULL;
    if (!f->uc) {
        unsigned opts = (ex->lc->socket_keepalive ? NET_CONNECT_KEEPALIVE : 0) |
                        (lp && ex->lc->proxy_bind_transparent ? NET_CONNECT_TRANSPARENT : 0);
        f->uc = ups_conn_open_from(pool, f->group, s, lp, opts);
        if (!f->uc) {
            int e = errno;
            f->phase = P_CONNECTING;
            fail_try(f, END_CONNECT_REFUSED, "connect() failed", e, NEXT_UPS_ERROR);
            return;
        }
    }
    f->uc->io.cb = fwd_io;
    f->uc->io.data = f;
    f->phase = f->uc_reused ? P_ACTIVE : P_CONNECTING;
    if (f->uc_reused && f->cur_try)
        f->cur_try->connect_ms = 0;
    timer_set(ex->loop, &f->timer,
              f->uc_reused ? ex->lc->send_timeout_ms : ex->lc->connect_timeout_ms);
    /* queue the request: head, then what we have of the body */
    outq_push(&f->out, f->req_head, f->req_head->data, f->req_head_len);
    f->spool_off = 0;
    bool tls = ex->lc->proxy_ssl_rt != NULL; /* the handshake may still be ahead */
    /* a plain upstream gets the file by sendfile when the queue can hold it
     * (OUTQ_MAX items of up to 1 GiB); TLS, or more, is read back in pieces */
    bool by_file = f->spool && !tls && ex->lc->st.sendfile &&
                   f->pre_bytes <= (uint64_t)(OUTQ_MAX - 4) * OUTQ_ITEM_MAX &&
                   outq_push_file(&f->out, f->spool, f->spool_fd, 0, f->pre_bytes) == 0;
    for (size_t i = 0; i < f->npre; i++) {
        if (f->send_chunked) {
            char hdr[24];
            int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", f->pre[i].len);
            outq_push_copy(&f->out, &f->scratch, &f->scratch_used, hdr, (size_t)n);
        }
        outq_push(&f->out, f->pre[i].seg, f->pre[i].p, f->pre[i].len);
        if (f->send_chunked)
            outq_push(&f->out, NULL, "\r\n", 2);
    }
    if ((f->body_eof || !ex->req_has_body || !ex->lc->pass_request_body) &&
        !(f->spool && !by_file)) {
        if (f->send_chunked)
            push_last_chunk(f);
        f->req_sent = true;
    }
    if (f->uc_reused)
        f->uc->io.writable = true;
    fwd_run(f);
}

/* ---- sending the request ---- */

/* The last chunk toward the upstream, with the client's trailers if any. */
static void push_last_chunk(struct fwd *f)
{
    struct slice t = f->ex->req_trailers;
    if (!t.len) {
        outq_push(&f->out, NULL, "0\r\n\r\n", 5);
        return;
    }
    outq_push(&f->out, NULL, "0\r\n", 3);
    outq_push(&f->out, NULL, t.p, t.len);
    outq_push(&f->out, NULL, "\r\n", 2);
}

/* Queue the next piece of the spool file (TLS cannot sendfile). Returns 0,
 * or 1 when the try failed. */
static int spool_refill(struct fwd *f)
{
    if (f->spool_off >= f->pre_bytes) {
        f->req_sent = true;
        return 0;
    }
    struct buf *b = buf_new(BUF_SEG_SIZE);
    if (!b) {
        fail_try(f, END_INTERNAL, "out of memory", 0, 0);
        return 1;
    }
    size_t want =
        f->pre_bytes - f->spool_off < b->cap ? (size_t)(f->pre_bytes - f->spool_off) : b->cap;
    ssize_t n;
    do
        n = pread(f->spool_fd, b->data, want, (off_t)f->spool_off);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        buf_unref(b);
        fail_try(f, END_INTERNAL, "reading the buffered request body failed", n < 0 ? errno : EIO,
                 0);
        return 1;
    }
    outq_push(&f->out, b, b->data, (size_t)n);
    buf_unref(b);
    f->spool_off += (uint64_t)n;
    return 0;
}

static int pump_request(struct fwd *f)
{
    struct exchange *ex = f->ex;
    for (;;) {
        /* refill from the client's body */
        bool client_dry = false;
        while (!f->req_sent && outq_room(&f->out) >= 4 && f->out.bytes < UPS_SEND_HIGH) {
            if (f->spool) { /* TLS upstream: the spooled body through segments */
                int r = spool_refill(f);
                if (r)
                    return r;
                continue;
            }
            struct body_piece piece;
            enum body_status st = ex->client->body_read(ex, &piece);
            if (st == BODY_AGAIN) {
                client_dry = true;
                break;
            }
            if (st == BODY_ERROR)
                return -1;
            if (st == BODY_END) {
                f->body_eof = true;
                if (f->send_chunked)
                    push_last_chunk(f);
                f->req_sent = true;
                break;
            }
            f->body_streamed = true;
            if (f->send_chunked) {
                char hdr[24];
                int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", piece.len);
                outq_push_copy(&f->out, &f->scratch, &f->scratch_used, hdr, (size_t)n);
            }
            outq_push(&f->out, piece.seg, piece.p, piece.len);
            if (f->send_chunked)
                outq_push(&f->out, NULL, "\r\n", 2);
        }
        if (!f->out.count || !f->uc->io.writable)
            return 0;
        ssize_t w = fwd_send(f);
        if (w < 0 && errno != EAGAIN) {
            fail_try(f, END_UPSTREAM_RESET, "send() failed", errno, NEXT_UPS_ERROR);
            return 1;
        }
        if (w > 0 && !f->head_done)
            timer_set(ex->loop, &f->timer,
                      f->out.count || !f->req_sent ? ex->lc->send_timeout_ms
                                                   : ex->lc->read_timeout_ms);
        if (f->out.count) {
            f->uc->io.writable = false;
            return 0;
        }
        if (f->req_sent || client_dry)
            return 0;
    }
}

/* ---- the response ---- */

static bool hidden_by_default(struct slice n)
{
    return slice_eq_lit_ci(n, "date") || slice_eq_lit_ci(n, "server") ||
           slice_eq_lit_ci(n, "x-pad") ||
           (n.len > 8 && slice_eq_ci(slice_make(n.p, 8), SLICE_LIT("x-accel-")));
}

static bool in_list(const struct slice *l, size_t n, struct slice name)
{
    for (size_t i = 0; i < n; i++)
        if (slice_eq_ci(l[i], name))
            return true;
    return false;
}

static int ensure_rseg(struct fwd *f)
{
    if (!f->rseg) {
        f->rseg = buf_new(BUF_SEG_SIZE);
        f->rstart = f->rend = 0;
        return f->rseg ? 0 : -1;
    }
    if (f->rend < f->rseg->cap)
        return 0;
    size_t have = f->rend - f->rstart;
    if (f->rseg->refs == 1) {
        memmove(f->rseg->data, f->rseg->data + f->rstart, have);
    } else {
        struct buf *nb = buf_new(BUF_SEG_SIZE);
        if (!nb)
            return -1;
        memcpy(nb->data, f->rseg->data + f->rstart, have);
        buf_unref(f->rseg);
        f->rseg = nb;
    }
    f->rstart = 0;
    f->rend = have;
    return 0;
}

static bool retry_status(const struct fwd *f, int status, uint32_t *kind)
{
    switch (status) {
    case 500:
        *kind = NEXT_UPS_500;
        break;
    case 502:
        *kind = NEXT_UPS_502;
        break;
    case 503:
        *kind = NEXT_UPS_503;
        break;
    case 504:
        *kind = NEXT_UPS_504;
        break;
    case 429:
        *kind = NEXT_UPS_429;
        break;
    default:
        return false;
    }
    return (f->ex->lc->next_upstream & *kind) != 0;
}

size_t proxy_response_fields(struct exchange *ex, int status, const struct http_field *in, size_t n,
                             struct http_field *out, size_t cap)
{
    const struct loc_conf *lc = ex->lc;
    size_t k = 0;
    for (size_t i = 0; i < n && k + LOC_EXTRA_FIELDS(lc) < cap; i++) {
        struct slice name = in[i].name;
        if (hidden_by_default(name) && !in_list(lc->pass_headers, lc->npass, name))
            continue;
        if (in_list(lc->hide_headers, lc->nhide, name))
            continue;
        out[k++] = in[i];
        bool loc = slice_eq_lit_ci(name, "location");
        struct slice v;
        if ((loc || slice_eq_lit_ci(name, "refresh")) &&
            proxy_redirect_apply(ex, in[i].value, !loc, &v))
            out[k - 1].value = field_safe(ex, loc ? absolute_location(ex, v) : v);
    }
    return apply_add_headers(ex, status, out, k);
}

/* An X-Accel-Redirect value as a local URI: '?' starts the arguments, the
 * path is percent-decoded and must be absolute, without "." or ".."
 * segments or control bytes (nginx refuses such a path too). The slice is
 * in the arena; 0, or -1 when unsafe. */
static int accel_uri(struct exchange *ex, struct slice v, struct slice *out)
{
    char *u = arena_alloc(&ex->arena, v.len + 1);
    if (!u)
        return -1;
    const char *q = memchr(v.p, '?', v.len);
    size_t pl = q ? (size_t)(q - v.p) : v.len, o = 0;
    for (size_t i = 0; i < pl; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (c == '%' && i + 2 < pl && isxdigit((unsigned char)v.p[i + 1]) &&
            isxdigit((unsigned char)v.p[i + 2])) {
            char hx[3] = {v.p[i + 1], v.p[i + 2], 0};
            c = (unsigned char)strtol(hx, NULL, 16);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f)
            return -1;
        u[o++] = (char)c;
    }
    if (!o || u[0] != '/')
        return -1;
    for (size_t i = 0; i < o; i++) {
        if (u[i] != '/' || i + 1 >= o || u[i + 1] != '.')
            continue;
        size_t dots = i + 2 < o && u[i + 2] == '.' ? 2 : 1;
        if (i + 1 + dots == o || u[i + 1 + dots] == '/')
            return -1; /* a "." or ".." segment */
    }
    if (q) {
        memcpy(u + o, q, v.len - pl); /* '?' and the arguments as sent */
        o += v.len - pl;
    }
    *out = slice_make(u, o);
    return 0;
}

/* The upstream said X-Accel-Redirect: its answer is dropped (with the
 * connection: its body is unread) and the request goes, as a GET (HEAD
 * stays), without body, to that URI or @name, keeping the fields nginx
 * keeps: Content-Type, Set-Cookie, Content-Disposition, Cache-Control,
 * Expires, Accept-Ranges. $upstream_http_* stay readable. */
static void accel_redirect(struct fwd *f, struct slice v)
{
    static const char *const keep[] = {"content-type",  "set-cookie", "content-disposition",
                                       "cache-control", "expires",    "accept-ranges"};
    struct exchange *ex = f->ex;
    struct h1_response *r = &f->resp;
    /* the fields live in the upstream's read buffer, which goes with it */
    for (size_t i = 0; i < ex->nups_fields; i++) {
        ex->ups_fields[i].name = arena_slice_dup(&ex->arena, ex->ups_fields[i].name);
        ex->ups_fields[i].value = arena_slice_dup(&ex->arena, ex->ups_fields[i].value);
    }
    r->fields = ex->ups_fields;
    v = arena_slice_dup(&ex->arena, v);
    ex->accel_keep = arena_alloc(&ex->arena, ACCEL_KEEP_MAX * sizeof(*ex->accel_keep));
    ex->naccel_keep = 0;
    unsigned seen = 0; /* single fields: the first one, as nginx; every Set-Cookie */
    for (size_t i = 0; ex->accel_keep && i < ex->nups_fields; i++)
        for (size_t k = 0; k < sizeof(keep) / sizeof(keep[0]); k++)
            if (slice_eq_ci(ex->ups_fields[i].name, slice_cstr(keep[k])) &&
                ex->naccel_keep < ACCEL_KEEP_MAX && (k == 1 || !(seen & (1u << k)))) {
                seen |= 1u << k;
                ex->accel_keep[ex->naccel_keep++] = ex->ups_fields[i];
            }
    release_conn(f, false);
    f->phase = P_DONE;
    struct slice uri = v;
    if (v.p[0] != '@' && accel_uri(ex, v, &uri) < 0) {
        LOG(LOG_ERR, "*%llu unsafe X-Accel-Redirect \"%.*s\" from upstream",
            (unsigned long long)ex->id, (int)v.len, v.p);
        ex->naccel_keep = 0;
        respond_status(ex, 404);
        return;
    }
    if (ex->method_id != HTTP_M_HEAD) {
        ex->method = SLICE_LIT("GET");
        ex->method_id = HTTP_M_GET;
    }
    ex->req_has_body = false;
    ex->req_content_length = -1;
    proxy_internal_redirect(ex, uri, true);
}

/* The head is parsed: filter it and hand it to the client. Returns 0 to go
 * on with the body, 1 when the exchange went elsewhere (retry, error page). */
static int deliver_head(struct fwd *f)
{
    struct exchange *ex = f->ex;
    const struct loc_conf *lc = ex->lc;
    struct h1_response *r = &f->resp;
    if (f->cur_try) {
        f->cur_try->status = r->status;
        f->cur_try->header_ms = loop_now_ms(ex->loop) - f->try_start_ms;
    }
    ups_server_ok(f->srv);
    ups_server_time(f->srv, UPS_TIME_HEADER, loop_now_ms(ex->loop) - f->try_start_ms);
    ups_outlier_report(f->group, f->srv, r->status >= 500, loop_now_ms(ex->loop));
    uint32_t kind;
    if (retry_status(f, r->status, &kind) && may_retry(f, kind)) {
        release_conn(f, false);
        reset_try_state(f);
        try_upstream(f);
        return 1;
    }
    if (lc->intercept_errors && r->status >= 300 && lc->nerror_pages) {
        for (size_t i = 0; i < lc->nerror_pages; i++)
            for (size_t k = 0; k < lc->error_pages[i].ncodes; k++)
                if (lc->error_pages[i].codes[k] == r->status) {
                    release_conn(f, false);
                    f->phase = P_DONE;
                    respond_status(ex, r->status);
                    return 1;
                }
    }
    /* nginx's X-Accel-* fields: one pass, a byte compare per field unless
     * a name starts with "x-accel-" */
    struct slice xar = SLICE_NULL;
    for (size_t i = 0; i < r->nfields; i++) {
        struct slice nm = r->fields[i].name;
        if ((nm.p[0] | 0x20) != 'x' || nm.len < 14 || strncasecmp(nm.p, "x-accel-", 8) != 0)
            continue;
        struct slice rest = slice_make(nm.p + 8, nm.len - 8);
        struct slice v = slice_trim_ows(r->fields[i].value);
        if (slice_eq_lit_ci(rest, "limit-rate") &&
            !(lc->cache.ignore & IGNORE_X_ACCEL_LIMIT_RATE)) {
            uint64_t rate;
            if (slice_eq_lit_ci(v, "off") || limit_rate_parse(v, &rate) == 0) {
                ex->limit_rate = slice_eq_lit_ci(v, "off") ? 0 : rate;
                ex->limit_rate_set = true;
            }
        } else if (slice_eq_lit_ci(rest, "buffering") &&
                   !(lc->cache.ignore & IGNORE_X_ACCEL_BUFFERING)) {
            if (slice_eq_lit_ci(v, "yes") || slice_eq_lit_ci(v, "no"))
                f->accel_buffering = slice_eq_lit_ci(v, "yes") ? 1 : 2;
        } else if (slice_eq_lit_ci(rest, "redirect") && !xar.len &&
                   !(lc->cache.ignore & IGNORE_X_ACCEL_REDIRECT)) {
            xar = v;
        }
    }
    if (xar.len) {
        accel_redirect(f, xar);
        return 1;
    }
    if (lc->cache.zone)
        pcache_invalidate(ex, r->status, r->fields, r->nfields);
    if (f->pc && pcache_response_head(f->pc, r->status, r->fields, r->nfields)) {
        /* the cache answers (revalidated, or stale for an error) */
        release_conn(f, r->keep_alive && f->body_kind == H1_BODY_NONE && f->req_sent &&
                            f->out.count == 0 && f->rstart == f->rend);
        f->phase = P_DONE;
        pcache_answer(f->pc);
        return 1;
    }
    size_t cap = r->nfields + LOC_EXTRA_FIELDS(lc) + 2;
    struct http_field *in = arena_alloc(&ex->arena, cap * sizeof(*in));
    struct http_field *out = arena_alloc(&ex->arena, cap * sizeof(*out));
    if (!in || !out)
        return -1;
    size_t nin = 0;
    bool cookies = cookie_rewrites(&lc->cookies);
    for (size_t i = 0; i < r->nfields; i++) {
        struct slice name = r->fields[i].name;
        if (http_is_hop_by_hop(name) || slice_eq_lit_ci(name, "content-length") ||
            http_connection_names(r->fields, r->nfields, name))
            continue;
        in[nin++] = r->fields[i];
        if (cookies && slice_eq_lit_ci(name, "set-cookie"))
            in[nin - 1].value = field_safe(ex, cookie_rewrite(ex, r->fields[i].value));
    }
    int status = f->error_page_status ? f->error_page_status : r->status;
    const struct ups_sticky *st = &f->group->sticky;
    if (st->cookie && !slice_eq(f->sticky, slice_cstr(f->srv->sticky_id))) {
        /* no cookie, or its server could not be used: name the one that answered */
        char *v = arena_printf(&ex->arena, "%s=%s%s", st->cookie, f->srv->sticky_id, st->attrs);
        if (v)
            in[nin++] = (struct http_field){SLICE_LIT("Set-Cookie"), slice_cstr(v)};
    }
    size_t n = proxy_response_fields(ex, status, in, nin, out, cap);
    struct resp_head h = {.status = status, .fields = out, .nfields = n, .content_length = -1};
    switch (f->body_kind) {
    case H1_BODY_NONE:
        h.no_body = true;
        /* HEAD and 304 keep the representation's length */
        if (r->content_length >= 0 && (ex->method_id == HTTP_M_HEAD || r->status == 304))
            h.content_length = r->content_length;
        if (r->status == 204 || r->status < 200)
            h.content_length = -1;
        if (r->status >= 200 && r->status != 204 && r->status != 304 &&
            ex->method_id != HTTP_M_HEAD)
            h.content_length = 0;
        break;
    case H1_BODY_LENGTH:
        h.content_length = r->content_length;
        break;
    default:
        break;
    }
    if (ex->client->send_head(ex, &h) < 0)
        return -1;
    return 0;
}

/* Parse what we have of the head. 0: go on; 1: exchange moved on; -1: wait. */
static void body_broken(struct fwd *f, enum ending_code code, const char *why, int err);

/* 101 to an upgrade the client asked for: the head goes to the client with
 * the upstream's Upgrade, then bytes flow both ways (pump_request one way,
 * relay_body as a close-delimited body the other) until one side closes or
 * stays silent for proxy_read_timeout. The connection is not pooled. */
static int start_tunnel(struct fwd *f, struct http_field *fields)
{
    struct exchange *ex = f->ex;
    struct h1_response *r = &f->resp;
    f->head_done = true;
    f->head_seg = buf_ref(f->rseg);
    f->rstart += r->head_len;
    if (f->cur_try) {
        f->cur_try->status = 101;
        f->cur_try->header_ms = loop_now_ms(ex->loop) - f->try_start_ms;
    }
    ups_server_ok(f->srv);
    size_t cap = r->nfields + LOC_EXTRA_FIELDS(ex->lc) + 2;
    struct http_field *in = arena_alloc(&ex->arena, cap * sizeof(*in));
    struct http_field *out = arena_alloc(&ex->arena, cap * sizeof(*out));
    if (!in || !out) {
        fail_try(f, END_INTERNAL, "out of memory", 0, 0);
        return 1;
    }
    size_t nin = 0;
    struct slice proto = SLICE_NULL;
    for (size_t i = 0; i < r->nfields; i++) {
        struct slice name = fields[i].name;
        if (slice_eq_lit_ci(name, "upgrade"))
            proto = arena_slice_dup(&ex->arena, fields[i].value);
        if (http_is_hop_by_hop(name) || slice_eq_lit_ci(name, "content-length") ||
            http_connection_names(fields, r->nfields, name))
            continue;
        in[nin++] = (struct http_field){arena_slice_dup(&ex->arena, name),
                                        arena_slice_dup(&ex->arena, fields[i].value)};
    }
    if (!proto.len) {
        fail_try(f, END_UPSTREAM_BAD_HEAD, "sent 101 Switching Protocols without Upgrade", 0,
                 NEXT_UPS_INVALID_HEADER);
        return 1;
    }
    size_t n = proxy_response_fields(ex, 101, in, nin, out, cap - 1);
    out[n++] = (struct http_field){SLICE_LIT("Upgrade"), proto};
    struct resp_head h = {.status = 101, .fields = out, .nfields = n, .content_length = -1};
    f->tunnel = true;
    f->upstream_reusable = false;
    if (f->spool) { /* the request body went up whole: from now on raw client bytes */
        buf_unref(f->spool);
        f->spool = NULL;
    }
    f->body_kind = H1_BODY_UNTIL_CLOSE;
    f->req_sent = false; /* from now on the client's bytes go up, raw */
    f->body_eof = false;
    f->send_chunked = false;
    if (ex->client->send_head(ex, &h) < 0) {
        body_broken(f, END_CLIENT_CLOSED, "client gone before the upgrade", 0);
        return 1;
    }
    timer_set(ex->loop, &f->timer, ex->lc->read_timeout_ms);
    return 0;
}

static int read_head_step(struct fwd *f)
{
    struct exchange *ex = f->ex;
    struct http_field fields[UPS_MAX_FIELDS];
    struct h1_limits lim = {.max_request_line = 8192,
                            .max_head = ex->lc->proxy_buffer_size,
                            .max_fields = UPS_MAX_FIELDS};
    for (;;) {
        enum h1_error err = H1E_NONE;
        enum h1_result res = h1_parse_response(f->rseg->data + f->rstart, f->rend - f->rstart, &lim,
                                               fields, UPS_MAX_FIELDS, &f->resp, &err);
        if (res == H1_INCOMPLETE) {
            if (f->rend - f->rstart >= lim.max_head) {
                fail_try(f, END_UPSTREAM_BAD_HEAD, "sent too big header", 0,
                         NEXT_UPS_INVALID_HEADER);
                return 1;
            }
            return -1;
        }
        if (res == H1_ERROR) {
            char why[128];
            snprintf(why, sizeof(why), "sent invalid header (%s)", h1_error_str(err));
            const char *w = arena_strdup(&ex->arena, why);
            fail_try(f, END_UPSTREAM_BAD_HEAD, w ? w : "sent invalid header", 0,
                     NEXT_UPS_INVALID_HEADER);
            return 1;
        }
        struct h1_response *r = &f->resp;
        if (r->status >= 100 && r->status < 200) {
            if (r->status == 101) {
                if (ex->upgrade.len && f->req_sent && f->out.count == 0)
                    return start_tunnel(f, fields);
                fail_try(f, END_UPSTREAM_BAD_HEAD, "sent an unexpected 101 Switching Protocols", 0,
                         NEXT_UPS_INVALID_HEADER);
                return 1;
            }
            if (!(r->status == 100 && !ex->expect_continue)) {
                size_t n = 0;
                struct http_field *keep = arena_alloc(&ex->arena, (r->nfields + 1) * sizeof(*keep));
                for (size_t i = 0; keep && i < r->nfields; i++)
                    if (!http_is_hop_by_hop(r->fields[i].name))
                        keep[n++] =
                            (struct http_field){arena_slice_dup(&ex->arena, r->fields[i].name),
                                                arena_slice_dup(&ex->arena, r->fields[i].value)};
                if (keep && !(r->status == 100 && ex->minor_version == 0))
                    ex->client->send_interim(ex, r->status, keep, n);
            }
            f->rstart += r->head_len;
            if (f->rstart == f->rend)
                return -1;
            continue;
        }
        f->head_done = true;
        f->head_seg = buf_ref(f->rseg);
        ex->ups_fields = arena_alloc(&ex->arena, (r->nfields + 1) * sizeof(*ex->ups_fields));
        if (!ex->ups_fields) {
            fail_try(f, END_INTERNAL, "out of memory", 0, 0);
            return 1;
        }
        memcpy(ex->ups_fields, fields, r->nfields * sizeof(*fields));
        ex->nups_fields = r->nfields;
        r->fields = ex->ups_fields;
        f->rstart += r->head_len;
        f->body_kind =
            h1_response_body_kind(r, pcache_head_as_get(f->pc) ? HTTP_M_GET : ex->method_id);
        f->body_left = f->body_kind == H1_BODY_LENGTH ? (uint64_t)r->content_length : 0;
        if (f->body_kind == H1_BODY_CHUNKED)
            h1_chunked_init(&f->dec, 16384);
        f->upstream_reusable = r->keep_alive && f->body_kind != H1_BODY_UNTIL_CLOSE;
        if (deliver_head(f) != 0)
            return 1; /* a retry, an error page or the cache took over: f may be gone */
        if (f->body_kind == H1_BODY_NONE)
            f->resp_done = true;
        return 0;
    }
}

static void complete_response(struct fwd *f, struct slice trailers)
{
    struct exchange *ex = f->ex;
    if (f->cur_try)
        f->cur_try->response_ms = loop_now_ms(ex->loop) - f->try_start_ms;
    ups_server_time(f->srv, UPS_TIME_LAST_BYTE, loop_now_ms(ex->loop) - f->try_start_ms);
    bool reusable =
        f->upstream_reusable && f->req_sent && f->out.count == 0 && f->rstart == f->rend;
    if (f->uc && f->uc->tls && !f->uc_reused)
        save_session(f);
    release_conn(f, reusable);
    pcache_response_done(f->pc);
    if (trailers.len)
        trailers = arena_slice_dup(&ex->arena, trailers);
    if (f->rs_read < f->rs_written) {
        /* the upstream is free again; the client still has the file to take */
        f->phase = P_DRAIN;
        f->rs_trailers = trailers;
        return;
    }
    f->phase = P_DONE;
    ex->client->send_end(ex, trailers);
    ex->client->done(ex, false);
}

static void body_broken(struct fwd *f, enum ending_code code, const char *why, int err)
{
    log_upstream_error(f, why, err);
    f->ex->ending = (struct ending){.code = code, .why = why};
    pcache_response_broken(f->pc);
    release_conn(f, false);
    f->phase = P_DONE;
    f->ex->client->done(f->ex, true);
}

/* The response file failed (disk full, I/O error): the client is cut, as
 * after a broken upstream body. */
static void rspool_fail(struct fwd *f, const char *what)
{
    struct exchange *ex = f->ex;
    LOG(LOG_CRIT, "*%llu %s a temporary file in %s failed: %s", (unsigned long long)ex->id, what,
        ex->lc->proxy_temp_path, strerror(errno));
    ex->ending = (struct ending){.code = END_INTERNAL, .why = "response buffering failed"};
    if (f->phase != P_DRAIN)
        pcache_response_broken(f->pc);
    release_conn(f, false);
    f->phase = P_DONE;
    ex->client->done(ex, true);
}

/* Give the client what the file holds while it keeps up (pread into
 * segments: it works for every client side, TLS and HTTP/2 included). When
 * the client has taken everything the file starts over from offset 0, so
 * its size stays within proxy_max_temp_file_size. Returns 0, or -1 when the
 * exchange ended. */
static int rspool_feed(struct fwd *f, size_t high)
{
    struct exchange *ex = f->ex;
    while (f->rs_read < f->rs_written && ex->client->pending(ex) < high) {
        struct buf *b = buf_new(BUF_SEG_SIZE);
        if (!b) {
            errno = ENOMEM;
            rspool_fail(f, "reading");
            return -1;
        }
        uint64_t left = f->rs_written - f->rs_read;
        size_t want = left < b->cap ? (size_t)left : b->cap;
        ssize_t n;
        do
            n = pread(f->rspool_fd, b->data, want, (off_t)f->rs_read);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            buf_unref(b);
            if (n == 0)
                errno = EIO;
            rspool_fail(f, "reading");
            return -1;
        }
        struct body_piece piece = {b, b->data, (size_t)n};
        int r = ex->client->send_body(ex, &piece);
        buf_unref(b);
        if (r < 0)
            return 0; /* the client is gone: its side ends the exchange */
        f->rs_read += (uint64_t)n;
    }
    if (f->rs_read == f->rs_written)
        f->rs_read = f->rs_written = 0;
    return 0;
}

/* A piece of the response body: to the cache being filled and the client
 * (a HEAD fetched as GET sends the client nothing), or behind what the
 * response file already holds. Returns 0, -1 when the client is gone, -2
 * when the exchange ended. */
static int send_piece(struct fwd *f, const struct body_piece *piece, bool to_file)
{
    pcache_response_body(f->pc, piece->p, piece->len);
    if (pcache_head_as_get(f->pc))
        return 0;
    if (!to_file)
        return f->ex->client->send_body(f->ex, piece);
    if (!f->rspool) {
        if (temp_file(f->ex->lc->proxy_temp_path, &f->rspool, &f->rspool_fd) < 0) {
            rspool_fail(f, "creating");
            return -2;
        }
        LOG(LOG_WARN, "*%llu an upstream response is buffered to a temporary file in %s",
            (unsigned long long)f->ex->id, f->ex->lc->proxy_temp_path);
    }
    if (fd_pwrite_all(f->rspool_fd, piece->p, piece->len, f->rs_written) < 0) {
        rspool_fail(f, "writing");
        return -2;
    }
    f->rs_written += piece->len;
    return 0;
}

/* Move response body bytes to the client while it keeps up. Returns 1 if
 * the exchange finished. */
static int relay_body(struct fwd *f)
{
    struct exchange *ex = f->ex;
    const struct loc_conf *lc = ex->lc;
    bool buffering = f->accel_buffering ? f->accel_buffering == 1 : lc->buffering;
    size_t high = buffering ? lc->proxy_buffers : 1;
    while (!f->resp_done) {
        if (f->rs_read < f->rs_written && rspool_feed(f, high) < 0)
            return 1;
        /* the client is behind: the file takes the rest while it may grow
         * (by one segment at most past proxy_max_temp_file_size) */
        bool to_file = f->rs_read < f->rs_written || ex->client->pending(ex) >= high;
        if (to_file && (f->tunnel || !(buffering && f->rs_written < lc->max_temp_file_size)))
            return 0; /* the client session calls proxy_client_drained() */
        if (f->rstart < f->rend) {
            char *base = f->rseg->data + f->rstart;
            size_t have = f->rend - f->rstart;
            struct body_piece piece = {f->rseg, base, 0};
            if (f->body_kind == H1_BODY_LENGTH) {
                piece.len = have < f->body_left ? have : (size_t)f->body_left;
                f->body_left -= piece.len;
                f->rstart += piece.len;
                if (f->body_left == 0)
                    f->resp_done = true;
            } else if (f->body_kind == H1_BODY_CHUNKED) {
                size_t consumed = 0;
                struct slice data = SLICE_NULL, trailers = SLICE_NULL;
                enum h1_error err = H1E_NONE;
                enum h1_result r =
                    h1_chunked_decode(&f->dec, base, have, &consumed, &data, &trailers, &err);
                f->rstart += consumed;
                if (r == H1_ERROR) {
                    body_broken(f, END_UPSTREAM_BAD_BODY, "sent invalid chunked response", 0);
                    return 1;
                }
                piece.p = data.p;
                piece.len = data.len;
                int sr = piece.len ? send_piece(f, &piece, to_file) : 0;
                if (sr < 0)
                    return sr == -2 ? 1 : 0;
                if (r == H1_DONE) {
                    f->resp_done = true;
                    complete_response(f, trailers);
                    return 1;
                }
                if (consumed == 0)
                    goto need_more;
                continue;
            } else {
                piece.len = have;
                f->rstart += have;
            }
            if (piece.len && send_piece(f, &piece, to_file) == -2)
                return 1;
            continue;
        }
    need_more:
        if (!f->uc->io.readable) {
            timer_set(ex->loop, &f->timer, ex->lc->read_timeout_ms);
            return 0;
        }
        if (ensure_rseg(f) < 0) {
            body_broken(f, END_INTERNAL, "out of memory", 0);
            return 1;
        }
        size_t want = f->rseg->cap - f->rend;
        ssize_t n = fwd_recv(f, f->rseg->data + f->rend, want);
        if (n > 0) {
            f->rend += (size_t)n;
            continue;
        }
        if (n == 0) {
            if (f->body_kind == H1_BODY_UNTIL_CLOSE) {
                f->resp_done = true;
                f->upstream_reusable = false;
                break;
            }
            body_broken(f, END_UPSTREAM_CLOSED, "prematurely closed connection", 0);
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            f->uc->io.readable = false;
            continue;
        }
        body_broken(f, END_UPSTREAM_RESET, "recv() failed", errno);
        return 1;
    }
    complete_response(f, SLICE_NULL);
    return 1;
}

static int read_response(struct fwd *f)
{
    struct exchange *ex = f->ex;
    while (!f->head_done) {
        if (f->rseg && f->rend > f->rstart) {
            int r = read_head_step(f);
            if (r == 1)
                return 1;
            if (r == 0)
                break;
        }
        if (!f->uc->io.readable)
            return 0;
        if (ensure_rseg(f) < 0) {
            fail_try(f, END_INTERNAL, "out of memory", 0, 0);
            return 1;
        }
        size_t want = f->rseg->cap - f->rend;
        ssize_t n = fwd_recv(f, f->rseg->data + f->rend, want);
        if (n > 0) {
            f->rend += (size_t)n;
            f->got_bytes = true;
            continue;
        }
        if (n == 0) {
            fail_try(f, END_UPSTREAM_CLOSED, "prematurely closed connection", 0, NEXT_UPS_ERROR);
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            f->uc->io.readable = false;
            return 0;
        }
        fail_try(f, END_UPSTREAM_RESET, "recv() failed", errno, NEXT_UPS_ERROR);
        return 1;
    }
    if (!f->req_sent && !f->tunnel) {
        /* answered before the body was sent: the rest is not sent, and the
         * upstream connection and the client's framing are both spent */
        f->upstream_reusable = false;
        ex->close_conn = true;
        outq_clear(&f->out);
        f->req_sent = true;
    }
    return relay_body(f);
}

static void fwd_run(struct fwd *f)
{
    struct exchange *ex = f->ex;
    if (f->phase == P_COLLECT) {
        int r = collect_body(f);
        if (r < 0) {
            f->phase = P_DONE;
            respond_status(ex, ending_status(ex->ending.code));
            return;
        }
        if (r == 0)
            return;
        f->send_chunked = ex->req_has_body && !f->body_collected && ex->req_content_length < 0 &&
                          ex->lc->pass_request_body;
        if (f->send_chunked && ex->lc->http_version_minor == 0) {
            f->phase = P_DONE;
            respond_status(ex, 411);
            return;
        }
        if (build_request_head(f) < 0) {
            f->phase = P_DONE;
            respond_status(ex, 500);
            return;
        }
        try_upstream(f);
        return;
    }
    if (f->phase == P_CONNECTING) {
        if (!f->uc->io.writable && !f->uc->io.hup)
            return;
        /* writable without an error edge means connected: ask SO_ERROR only
         * when epoll reported a problem (one syscall less per connect) */
        int err = f->uc->io.hup ? net_connect_result(f->uc->io.fd) : 0;
        if (f->uc->io.hup && !err)
            err = ECONNRESET;
        if (err) {
            fail_try(f, END_CONNECT_REFUSED, "connect() failed", err, NEXT_UPS_ERROR);
            return;
        }
        if (ex->lc->proxy_ssl_rt && start_tls(f) < 0)
            return;
    }
    if (f->phase == P_HANDSHAKE && handshake_step(f) <= 0)
        return;
    if (f->phase == P_CONNECTING || f->phase == P_HANDSHAKE) {
        f->phase = P_ACTIVE;
        if (f->cur_try)
            f->cur_try->connect_ms = loop_now_ms(ex->loop) - f->try_start_ms;
        timer_set(ex->loop, &f->timer, ex->lc->send_timeout_ms);
    }
    if (f->phase != P_ACTIVE)
        return;
    if (f->tunnel) {
        int r = pump_request(f);
        if (r < 0) { /* the client closed or broke: the tunnel is over */
            release_conn(f, false);
            f->phase = P_DONE;
            ex->client->done(ex, true);
            return;
        }
        if (r > 0)
            return;
        if (f->req_sent && f->out.count == 0) { /* the client finished, all of it went up */
            release_conn(f, false);
            f->phase = P_DONE;
            ex->client->send_end(ex, SLICE_NULL);
            ex->client->done(ex, false);
            return;
        }
    } else if (!f->head_done) {
        int r = pump_request(f);
        if (r < 0) {
            /* the client's body broke: no point waiting for the upstream */
            release_conn(f, false);
            f->phase = P_DONE;
            respond_status(ex, ending_status(ex->ending.code));
            return;
        }
        if (r > 0)
            return;
        if (f->req_sent && f->out.count == 0 && !f->uc->io.readable && !timer_armed(&f->timer))
            timer_set(ex->loop, &f->timer, ex->lc->read_timeout_ms);
    }
    bool was_tunnel = f->tunnel;
    if (read_response(f) == 0 && !was_tunnel && f->tunnel)
        fwd_run(f); /* just upgraded: bytes the client sent meanwhile go up now */
}

/* ---- entry points ---- */

static struct slice parse_dynamic(struct fwd *f, struct slice url, struct slice *uri,
                                  const char **err)
{
    /* http://host[:port][/uri], https:// when proxy_pass says so */
    size_t skip = f->ex->lc->pass->is_https ? 8 : 7;
    if (url.len < skip || strncasecmp(url.p, skip == 8 ? "https://" : "http://", skip) != 0) {
        *err = "invalid URL prefix";
        return SLICE_NULL;
    }
    struct slice rest = slice_make(url.p + skip, url.len - skip);
    const char *slash = memchr(rest.p, '/', rest.len);
    struct slice host = slice_make(rest.p, slash ? (size_t)(slash - rest.p) : rest.len);
    *uri = slash ? slice_make(slash, rest.len - host.len) : SLICE_NULL;
    if (!host.len)
        *err = "no host";
    return host;
}

static void fetch(struct fwd *f);

static void forward(struct exchange *ex)
{
    const struct loc_conf *lc = ex->lc;
    const struct proxy_pass *pp = lc->pass;
    int forced = F(ex) ? F(ex)->error_page_status : 0;
    struct fwd *f = arena_calloc(&ex->arena, sizeof(*f));
    if (!f) {
        respond_status(ex, 500);
        return;
    }
    f->ex = ex;
    f->error_page_status = forced;
    ex->proxy = f;
    outq_init(&f->out);
    timer_init(&f->timer, fwd_timer, f);
    struct slice dyn_uri = SLICE_NULL;
    if (pp->dynamic) {
        struct slice url = tmpl_eval(ex, pp->dynamic, ESC_NONE);
        const char *err = NULL;
        struct slice host = parse_dynamic(f, url, &dyn_uri, &err);
        if (err) {
            log_write(LOG_ERR, "*%llu invalid proxy_pass URL \"%.*s\": %s",
                      (unsigned long long)ex->id, (int)url.len, url.p, err);
            respond_status(ex, 500);
            return;
        }
        f->proxy_host = host;
        for (size_t i = 0; i < ex->snap->ngroups; i++)
            if (!ex->snap->groups[i]->implicit &&
                slice_eq(slice_cstr(ex->snap->groups[i]->name), host))
                f->group = ex->snap->groups[i];
        if (!f->group) {
            struct ups_group *g = arena_calloc(&ex->arena, sizeof(*g));
            char *hp = arena_strndup(&ex->arena, host.p, host.len);
            const char *msg = NULL;
            /* numeric addresses only: no blocking name lookups on a worker */
            struct net_addr probe;
            if (!g || !hp || net_addr_parse(hp, 80, false, &probe, &msg) < 0 ||
                ups_group_implicit(&ex->arena, hp, g, &msg) < 0) {
                log_write(LOG_ERR, "*%llu no upstream \"%.*s\" and it is not an address (%s)",
                          (unsigned long long)ex->id, (int)host.len, host.p,
                          msg ? msg : "out of memory");
                ex->ending = (struct ending){.code = END_NO_SERVER, .why = "no upstream"};
                respond_status(ex, 502);
                return;
            }
            g->keepalive = 0;
            f->group = g;
        }
    } else {
        f->group = pp->group;
        f->proxy_host = slice_cstr(pp->host);
    }
    f->dyn_uri = dyn_uri;
    f->phase = P_CACHE;
    if (!ex->upgrade.len && pcache_request(ex, &f->pc) == PC_DONE)
        return; /* a cache hit needs none of what follows (an upgrade is never cached) */
    fetch(f);
}

void proxy_fetch(struct exchange *ex)
{
    fetch(F(ex));
}

/* Go to the origin: collect the body if asked, build the head, connect. */
static void fetch(struct fwd *f)
{
    struct exchange *ex = f->ex;
    const struct loc_conf *lc = ex->lc;
    const struct proxy_pass *pp = lc->pass;
    ups_budget_request(f->group, loop_now_ms(ex->loop));
    if (f->group->hash_tmpl)
        f->hash_key = tmpl_eval(ex, f->group->hash_tmpl, ESC_NONE);
    if (f->group->sticky.cookie)
        f->sticky = vars_cookie(ex, slice_cstr(f->group->sticky.cookie));
    f->uri = upstream_uri(ex, pp, f->dyn_uri, pp->dynamic != NULL);
    if (!f->uri.len) {
        f->phase = P_DONE;
        respond_status(ex, 500);
        return;
    }
    f->phase = P_COLLECT;
    if (!ex->req_has_body || !lc->pass_request_body) {
        f->body_eof = !ex->req_has_body;
        f->body_collected = true;
        if (build_request_head(f) < 0) {
            respond_status(ex, 500);
            return;
        }
        try_upstream(f);
        return;
    }
    fwd_run(f);
}

/* allow/deny and auth_basic, combined by `satisfy` (all: both must let the
 * request in; any: one is enough). 1 when answered (403, 401, 500), 0 to go
 * on. */
static int access_phase(struct exchange *ex)
{
    const struct loc_conf *lc = ex->lc;
    bool addr_ok = !lc->naccess || access_allowed(lc->access, lc->naccess, ex->peer);
    bool basic_on = lc->auth.realm && lc->auth.user_file, jwt_on = lc->jwt.realm != NULL;
    bool auth_on = basic_on || jwt_on;
    if (addr_ok && (!auth_on || (lc->satisfy_any && lc->naccess)))
        return 0;
    if (!addr_ok && !(lc->satisfy_any && auth_on)) {
        char peer[64];
        net_addr_ip(ex->peer, peer, sizeof(peer));
        LOG(LOG_ERR, "*%llu access forbidden by rule, client: %s, request: \"%.*s\"",
            (unsigned long long)ex->id, peer, (int)ex->request_line.len, ex->request_line.p);
        respond_status(ex, 403);
        return 1;
    }
    if (basic_on) {
        switch (auth_check(ex)) {
        case AUTH_OK:
            break;
        case AUTH_FORBIDDEN:
            respond_status(ex, 403);
            return 1;
        case AUTH_ERROR:
            respond_status(ex, 500);
            return 1;
        default: {
            struct slice realm = tmpl_eval(ex, lc->auth.realm, ESC_NONE);
            char *v = arena_printf(&ex->arena, "Basic realm=\"%.*s\"", (int)realm.len, realm.p);
            ex->www_authenticate = v ? field_safe(ex, slice_cstr(v)) : SLICE_NULL;
            respond_status(ex, 401);
            return 1;
        }
        }
    }
    if (jwt_on) {
        enum jwt_result r = jwt_check(ex);
        if (r == JWT_OK)
            return 0;
        if (r == JWT_REQUIRE_FAILED && lc->jwt.require_error == 403) {
            respond_status(ex, 403);
            return 1;
        }
        struct slice realm = tmpl_eval(ex, lc->jwt.realm, ESC_NONE);
        char *v = arena_printf(&ex->arena, "Bearer realm=\"%.*s\"%s", (int)realm.len, realm.p,
                               r == JWT_NONE ? "" : ",error=\"invalid_token\"");
        ex->www_authenticate = v ? field_safe(ex, slice_cstr(v)) : SLICE_NULL;
        respond_status(ex, 401);
        return 1;
    }
    return 0;
}

static void run_location(struct exchange *ex);

/* limit_req waits out its delay here, then the location runs on. */
struct limit_delay {
    struct timer t;
    struct exchange *ex;
};

static void limit_delay_release(void *ctx)
{
    struct limit_delay *d = ctx;
    timer_cancel(&d->t);
}

static void limit_delay_done(struct timer *t)
{
    struct limit_delay *d = t->data;
    proxy_attach(d->ex, NULL, NULL, NULL);
    run_location(d->ex);
}

/* limit_conn, then limit_req. 1 when answered or delayed, 0 to go on. */
static int limit_phase(struct exchange *ex)
{
    const struct loc_conf *lc = ex->lc;
    if (lc->limits.nconn && limit_conn_take(ex) == LIMIT_REJECT) {
        respond_status(ex, lc->limits.conn_status);
        return 1;
    }
    if (!lc->limits.nreq || ex->limit_req_done)
        return 0;
    ex->limit_req_done = true;
    uint64_t delay = 0;
    switch (limit_req_check(ex, &delay)) {
    case LIMIT_REJECT:
        respond_status(ex, lc->limits.req_status);
        return 1;
    case LIMIT_DELAY: {
        struct limit_delay *d = arena_calloc(&ex->arena, sizeof(*d));
        if (!d || proxy_attach(ex, NULL, limit_delay_release, d) < 0)
            return 0; /* no memory to wait: go on at once */
        d->ex = ex;
        timer_init(&d->t, limit_delay_done, d);
        timer_set(ex->loop, &d->t, delay);
        return 1;
    }
    default:
        return 0;
    }
}

static void run_location(struct exchange *ex)
{
    const struct loc_conf *lc = ex->lc;
    /* nginx's order: limits (preaccess) before access, so a password guess
     * that fails still counts against limit_req */
    bool main_req = !ex->cache_background && !ex->subrequest;
    if ((lc->limits.nreq || lc->limits.nconn) && main_req && limit_phase(ex))
        return;
    if ((lc->naccess || lc->auth.realm || lc->jwt.realm) && main_req && access_phase(ex))
        return;
    if (lc->authreq.uri && main_req && !ex->auth_request_done &&
        !(lc->satisfy_any && lc->naccess && access_allowed(lc->access, lc->naccess, ex->peer))) {
        authreq_start(ex); /* resumes here with auth_request_done, or answers */
        return;
    }
    if (lc->z.any)
        compress_install(ex);
    if (lc->subf.n)
        subfilter_install(ex); /* (in front of compression: it sees the plain bytes) */
    if (lc->api) {
        admin_answer(ex);
        return;
    }
    if (lc->stub_status) {
        admin_stub_status(ex);
        return;
    }
    if (lc->cache.purge && pcache_is_purge(ex)) {
        pcache_purge(ex);
        return;
    }
    if (lc->pass) {
        if (lc->client_max_body_size && ex->req_content_length > 0 &&
            (uint64_t)ex->req_content_length > lc->client_max_body_size) {
            char peer[64];
            net_addr_ip(ex->peer, peer, sizeof(peer));
            LOG(LOG_ERR, "*%llu client intended to send too large body: %lld bytes, client: %s",
                (unsigned long long)ex->id, (long long)ex->req_content_length, peer);
            ex->close_conn = true;
            respond_status(ex, 413);
            return;
        }
        forward(ex);
        return;
    }
    if (static_applies(&lc->st)) {
        static_serve(ex);
        return;
    }
    respond_status(ex, 404);
}

static void internal_redirect(struct exchange *ex, struct slice uri)
{
    proxy_internal_redirect(ex, uri, false);
}

void proxy_internal_redirect(struct exchange *ex, struct slice uri, bool keep_request)
{
    int forced = F(ex) ? F(ex)->error_page_status : 0;
    ex->internal = true;
    ex->in_redirect = true; /* limit_conn places stay with the request */
    proxy_release(ex);
    ex->in_redirect = false;
    ex->proxy = NULL;
    if (++ex->internal_redirects > 10) {
        log_write(LOG_ERR,
                  "*%llu rewrite or internal redirection cycle while redirecting to \"%.*s\"",
                  (unsigned long long)ex->id, (int)uri.len, uri.p);
        respond_status(ex, 500);
        return;
    }
    if (!keep_request) {
        /* error_page: a GET (or HEAD) of the page, without the request body */
        ex->redirected = true;
        if (ex->method_id != HTTP_M_HEAD) {
            ex->method = SLICE_LIT("GET");
            ex->method_id = HTTP_M_GET;
        }
        ex->req_has_body = false;
        ex->req_content_length = -1;
        forced = ex->error_status;
    }
    /* the status error_page imposes travels in a state of its own */
    struct fwd *f = arena_calloc(&ex->arena, sizeof(*f));
    if (!f) {
        respond_status(ex, 500);
        return;
    }
    f->ex = ex;
    f->phase = P_DONE;
    f->error_page_status = forced;
    ex->proxy = f;
    if (uri.len && uri.p[0] == '@') {
        ex->loc = router_find_named(ex->srv->locset, uri);
        if (!ex->loc) {
            log_write(LOG_ERR, "*%llu named location \"%.*s\" not found",
                      (unsigned long long)ex->id, (int)uri.len, uri.p);
            ex->lc = ex->srv->lc;
            respond_status(ex, 500);
            return;
        }
        /* a named location runs its own rewrite directives only */
        ex->lc = ex->loc->conf;
        if (find_location(ex, false))
            return;
    } else {
        const char *q = memchr(uri.p, '?', uri.len);
        if (q) {
            ex->args = slice_make(q + 1, uri.len - (size_t)(q - uri.p) - 1);
            ex->has_args = true;
            uri.len = (size_t)(q - uri.p);
        }
        ex->uri = uri;
        ex->uri_rewritten_here = false;
        if (keep_request)
            ex->uri_rewritten = true;           /* try_files: proxy_pass sends the new URI */
        memset(&ex->caps, 0, sizeof(ex->caps)); /* the first location's are stale */
        ex->lc = ex->srv->lc;
        struct rw_return ret;
        if (ex->srv->lc->rw && rw_run(ex, ex->srv->lc->rw, &ret) == RW_RETURN) {
            answer_return(ex, &ret);
            return;
        }
        if (find_location(ex, true))
            return;
    }
    run_location(ex);
}

void proxy_start_located(struct exchange *ex)
{
    run_location(ex);
}

/* underscores_in_headers off (the default): fields named with '_' are
 * dropped before anything reads them, as nginx ignores them while parsing,
 * so no variable, rule or upstream sees them. The listening address's
 * default server decides: the virtual server is not known yet. */
static __attribute__((noinline)) void drop_underscore_fields(struct exchange *ex)
{
    const struct loc_conf *dl = ex->listen->dflt->lc;
    if (dl->underscores_in_headers || !dl->ignore_invalid_headers)
        return;
    size_t n = 0;
    for (size_t i = 0; i < ex->nreq_fields; i++) {
        const struct http_field *f = &ex->req_fields[i];
        if (memchr(f->name.p, '_', f->name.len)) {
            LOG(LOG_INFO, "*%llu client sent invalid header line: \"%.*s\"",
                (unsigned long long)ex->id, (int)f->name.len, f->name.p);
            continue;
        }
        ex->req_fields[n++] = *f;
    }
    ex->nreq_fields = n;
}

void proxy_start(struct exchange *ex)
{
    if (ex->req_underscore) /* (the parser noted it: nothing to scan otherwise) */
        drop_underscore_fields(ex);
    if (route(ex))
        return;
    if (ex->lc->nrealip_from) /* rules given in the location only (nginx's preaccess) */
        realip_apply(ex, ex->lc);
    if (ex->method_id == HTTP_M_TRACE || ex->method_id == HTTP_M_CONNECT) {
        ex->close_conn = ex->method_id == HTTP_M_CONNECT;
        respond_status(ex, 405);
        return;
    }
    run_location(ex);
}

void proxy_request_body_ready(struct exchange *ex)
{
    struct fwd *f = F(ex);
    if (!f || f->phase == P_DONE)
        return;
    if (f->phase == P_COLLECT || (f->phase == P_ACTIVE && (!f->req_sent || f->tunnel)))
        fwd_run(f);
}

void proxy_client_drained(struct exchange *ex)
{
    if (ex->compress && compress_drained(ex))
        return;
    struct fwd *f = F(ex);
    if (f && f->hook_drained) {
        f->hook_drained(f->hook_ctx);
        return;
    }
    if (f && f->phase == P_DRAIN) {
        bool buffering = f->accel_buffering ? f->accel_buffering == 1 : ex->lc->buffering;
        if (rspool_feed(f, buffering ? ex->lc->proxy_buffers : 1) < 0)
            return;
        if (f->rs_read < f->rs_written)
            return;
        f->phase = P_DONE;
        ex->client->send_end(ex, f->rs_trailers);
        ex->client->done(ex, false);
        return;
    }
    if (f && f->pc && (f->phase == P_CACHE || f->phase == P_DONE)) {
        pcache_drained(f->pc);
        return;
    }
    if (!f || f->phase != P_ACTIVE || !f->head_done)
        return;
    relay_body(f);
}

void proxy_release(struct exchange *ex)
{
    if (ex->compress)
        compress_release(ex);
    if (ex->nlimit_holds && !ex->in_redirect)
        limit_conn_release(ex);
    struct fwd *f = F(ex);
    if (!f)
        return;
    if (f->hook_release) {
        void (*release)(void *) = f->hook_release;
        f->hook_release = NULL;
        f->hook_drained = NULL;
        release(f->hook_ctx);
    }
    timer_cancel(&f->timer);
    ups_queue_cancel(&f->wait);
    pcache_release(f->pc);
    if (f->phase == P_DEFERRED) {
        posted_cancel(ex->loop, &f->connect_post);
        ups_server_unhold(f->srv);
    }
    if (f->uc) {
        ups_conn_close(f->uc);
        f->uc = NULL;
    }
    outq_clear(&f->out);
    for (size_t i = 0; i < f->npre; i++)
        buf_unref(f->pre[i].seg);
    f->npre = 0;
    if (f->spool)
        buf_unref(f->spool);
    if (f->rspool)
        buf_unref(f->rspool);
    f->spool = f->rspool = NULL;
    if (f->req_head)
        buf_unref(f->req_head);
    if (f->rseg)
        buf_unref(f->rseg);
    if (f->head_seg)
        buf_unref(f->head_seg);
    if (f->scratch)
        buf_unref(f->scratch);
    f->req_head = f->rseg = f->head_seg = f->scratch = NULL;
    f->phase = P_DONE;
}

void proxy_abort(struct exchange *ex)
{
    proxy_release(ex);
}

struct slice proxy_current_host(struct exchange *ex)
{
    struct fwd *f = F(ex);
    if (f && f->proxy_host.len)
        return f->proxy_host;
    if (ex->lc && ex->lc->pass && ex->lc->pass->host)
        return slice_cstr(ex->lc->pass->host);
    return SLICE_NULL;
}
