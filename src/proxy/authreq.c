#include "proxy/authreq.h"

#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/loop.h"
#include "http/http.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/proxy.h"
#include "proxy/rewrite.h"
#include "proxy/vars.h"

/* ---- configuration ---- */

void authreq_conf_merge(struct authreq_conf *c, const struct authreq_conf *p)
{
    if (!c->set) {
        c->uri = p->uri;
        c->set = p->set;
    }
    if (!c->sets_set) {
        c->sets = p->sets;
        c->nsets = p->nsets;
        c->sets_set = p->sets_set;
    }
}

static struct authreq_conf *AC(void *conf)
{
    return &((struct loc_conf *)conf)->authreq;
}

static int set_auth_request(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct authreq_conf *c = AC(conf);
    if (c->set)
        return cf_error(cx, n, "\"auth_request\" directive is duplicate");
    c->set = true;
    if (!strcmp(n->args[0], "off"))
        return 0;
    if (n->args[0][0] != '/')
        return cf_error(cx, n, "\"auth_request\" needs a URI starting with '/': \"%s\"",
                        n->args[0]);
    c->uri = conf_tmpl(cx, n, n->args[0]);
    return c->uri ? 0 : -1;
}

static int set_auth_request_set(struct cf_ctx *cx, const struct cf_node *n,
                                const struct cf_directive *d, void *conf)
{
    (void)d;
    struct authreq_conf *c = AC(conf);
    const char *v = n->args[0];
    if (v[0] != '$' || !v[1])
        return cf_error(cx, n, "invalid variable name \"%s\"", v);
    int idx = vars_user_index(v + 1);
    if (idx < 0)
        return cf_error(cx, n, "the \"%s\" variable cannot be set here (a built-in or map name)",
                        v);
    struct authreq_set *nv = arena_alloc(cx->arena, (c->nsets + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (c->nsets)
        memcpy(nv, c->sets, c->nsets * sizeof(*nv));
    nv[c->nsets].var = idx;
    if (!(nv[c->nsets].value = conf_tmpl(cx, n, n->args[1])))
        return -1;
    c->sets = nv;
    c->nsets++;
    c->sets_set = true;
    return 0;
}

#define LOC_ANY (CF_HTTP | CF_SERVER | CF_LOCATION)

static const struct cf_directive authreq_directives[] = {
    {"auth_request", LOC_ANY, 1, 1, false, set_auth_request, CONF_LOC, 0, "uri | off", "off",
     "allow the request only if a subrequest to uri (a GET with the request's headers, no "
     "body) answers 2xx; its 401 (with WWW-Authenticate) or 403 is the answer, any other "
     "status a 500"},
    {"auth_request_set", LOC_ANY, 2, 2, false, set_auth_request_set, CONF_LOC, 0, "$variable value",
     "-", "after the subrequest, set a variable from its values (e.g. $upstream_http_x_user)"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module authreq_cf_module = {"auth_request", authreq_directives};

/* ---- the subrequest ---- */

struct authsub {
    struct exchange ex;    /* first: the client side's callbacks get this */
    struct exchange *main; /* NULL once the request let go (its client left) */
    struct net_addr peer, local, realip_orig, pp_src, pp_dst;
    struct posted post;
    int status;
    bool answered; /* the head came */
};

static struct authsub *SUB(struct exchange *ex)
{
    return (struct authsub *)ex;
}

static void sub_free(struct authsub *s)
{
    posted_cancel(s->ex.loop, &s->post);
    proxy_release(&s->ex);
    arena_deinit(&s->ex.arena);
    snapshot_unref(s->ex.snap);
    free(s);
}

static int sub_send_head(struct exchange *ex, const struct resp_head *h)
{
    struct authsub *s = SUB(ex);
    struct exchange *m = s->main;
    s->status = h->status;
    s->answered = true;
    ex->status = h->status;
    if (!m)
        return 0;
    /* auth_request_set: the subrequest's values, kept by the request */
    const struct authreq_conf *c = &m->lc->authreq;
    for (size_t i = 0; i < c->nsets; i++) {
        struct slice v = tmpl_eval(ex, c->sets[i].value, ESC_NONE);
        rw_user_set(m, c->sets[i].var, v.len ? arena_slice_dup(&m->arena, v) : v);
    }
    if (h->status == 401) {
        for (size_t i = 0; i < h->nfields; i++)
            if (slice_eq_lit_ci(h->fields[i].name, "www-authenticate")) {
                m->www_authenticate = arena_slice_dup(&m->arena, h->fields[i].value);
                break;
            }
    }
    return 0;
}

static int sub_send_interim(struct exchange *ex, int status, struct http_field *f, size_t n)
{
    (void)ex, (void)status, (void)f, (void)n;
    return 0;
}

static int sub_send_body(struct exchange *ex, const struct body_piece *piece)
{
    (void)ex, (void)piece;
    return 0; /* the body of the answer is not used */
}

static int sub_send_file(struct exchange *ex, struct buf *token, int fd, uint64_t off, size_t len)
{
    (void)ex, (void)token, (void)fd, (void)off, (void)len;
    return 0; /* taken, and dropped */
}

static int sub_send_end(struct exchange *ex, struct slice trailers)
{
    (void)ex, (void)trailers;
    return 0;
}

static size_t sub_pending(struct exchange *ex)
{
    (void)ex;
    return 0;
}

static enum body_status sub_body_read(struct exchange *ex, struct body_piece *piece)
{
    (void)ex, (void)piece;
    return BODY_END; /* a subrequest has no body */
}

static void sub_continue(struct exchange *ex)
{
    (void)ex;
}

/* From the loop: the subrequest is over; the request goes on or is answered. */
static void sub_finish(struct posted *p)
{
    struct authsub *s = p->data;
    struct exchange *m = s->main;
    int status = s->answered ? s->status : 500;
    if (m) {
        s->main = NULL;
        m->auth_request_done = true;
        proxy_attach(m, NULL, NULL, NULL); /* the hook goes: the subrequest is done */
    }
    sub_free(s);
    if (!m)
        return;
    if (status >= 200 && status < 300) {
        proxy_start_located(m);
        return;
    }
    if (status != 401 && status != 403) {
        log_write(LOG_ERR, "*%llu auth request unexpected status: %d", (unsigned long long)m->id,
                  status);
        status = 500;
    }
    if (status != 401)
        m->www_authenticate = SLICE_NULL;
    proxy_respond_error(m, status);
}

static void sub_done(struct exchange *ex, bool broken)
{
    (void)broken;
    struct authsub *s = SUB(ex);
    loop_post(ex->loop, &s->post); /* the corridor is still on the stack */
}

static const struct client_ops sub_ops = {
    .send_head = sub_send_head,
    .send_interim = sub_send_interim,
    .send_body = sub_send_body,
    .send_file = sub_send_file,
    .send_end = sub_send_end,
    .pending = sub_pending,
    .body_read = sub_body_read,
    .continue_100 = sub_continue,
    .done = sub_done,
};

/* The request is released (its client left, or it ends otherwise) while
 * the subrequest runs: the subrequest goes too. */
static void main_release(void *ctx)
{
    struct authsub *s = ctx;
    if (!s->main)
        return;
    s->main = NULL;
    proxy_abort(&s->ex);
    sub_free(s);
}

static struct slice sdup(struct arena *a, struct slice v)
{
    return v.len ? arena_slice_dup(a, v) : v;
}

void authreq_start(struct exchange *ex)
{
    struct slice uri = tmpl_eval(ex, ex->lc->authreq.uri, ESC_NONE);
    struct authsub *s = calloc(1, sizeof(*s));
    if (!s) {
        proxy_respond_error(ex, 500);
        return;
    }
    struct exchange *n = &s->ex;
    s->main = ex;
    posted_init(&s->post, sub_finish, s);
    arena_init(&n->arena, 4096, 0);
    struct arena *a = &n->arena;
    n->snap = snapshot_ref(ex->snap);
    n->worker = ex->worker;
    n->client = &sub_ops;
    n->loop = ex->loop;
    n->id = ex->id;
    n->subrequest = true;
    memcpy(n->request_id, ex->request_id, sizeof(n->request_id));
    s->peer = *ex->peer;
    s->local = *ex->local;
    n->peer = &s->peer;
    n->local = &s->local;
    if (ex->realip_orig) {
        s->realip_orig = *ex->realip_orig;
        n->realip_orig = &s->realip_orig;
    }
    if (ex->pp_src && ex->pp_dst) {
        s->pp_src = *ex->pp_src;
        s->pp_dst = *ex->pp_dst;
        n->pp_src = &s->pp_src;
        n->pp_dst = &s->pp_dst;
    }
    n->listen = ex->listen;
    n->is_tls = ex->is_tls;
    n->tls = ex->tls;
    n->method = SLICE_LIT("GET");
    n->method_id = HTTP_M_GET;
    n->request_uri = sdup(a, ex->request_uri); /* $request_uri stays the request's, as nginx */
    n->request_line = sdup(a, ex->request_line);
    n->host = sdup(a, ex->host);
    n->minor_version = ex->minor_version;
    n->req_content_length = -1;
    n->req_fields = arena_alloc(a, (ex->nreq_fields + 1) * sizeof(*n->req_fields));
    for (size_t i = 0; n->req_fields && i < ex->nreq_fields; i++) {
        struct slice nm = ex->req_fields[i].name;
        if (slice_eq_lit_ci(nm, "content-length") || slice_eq_lit_ci(nm, "transfer-encoding") ||
            slice_eq_lit_ci(nm, "expect"))
            continue; /* the subrequest carries no body */
        n->req_fields[n->nreq_fields++] =
            (struct http_field){sdup(a, nm), sdup(a, ex->req_fields[i].value)};
    }
    size_t nuser = ex->snap->nuser_vars;
    if (ex->user_vals && (n->user_vals = arena_calloc(a, nuser * sizeof(*n->user_vals))))
        for (size_t i = 0; i < nuser; i++)
            n->user_vals[i] = sdup(a, ex->user_vals[i]);
    n->srv = ex->srv;
    n->lc = ex->srv->lc;
    n->start_ms = ex->start_ms;
    n->start_real_us = ex->start_real_us;
    uri = sdup(a, uri);
    if (!n->req_fields || !uri.len || proxy_attach(ex, NULL, main_release, s) < 0) {
        s->main = NULL;
        sub_free(s);
        proxy_respond_error(ex, 500);
        return;
    }
    proxy_internal_redirect(n, uri, true);
}
