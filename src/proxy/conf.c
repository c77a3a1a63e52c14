/* From the directive tree to a snapshot: the directive tables of the http
 * proxy (main, events, http, server, location), merging down the levels,
 * listen sets and the router's tables. */
#include "proxy/conf.h"

#include <errno.h>
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "http/http.h"
#include "admin/admin.h"
#include "proxy/accesslog.h"
#include "proxy/check_conf.h"
#include "proxy/map.h"
#include "proxy/realip.h"
#include "proxy/redirect.h"
#include "proxy/rewrite.h"
#include "proxy/static.h"
#include "proxy/vars.h"

struct load_state {
    struct snapshot *snap;
    const char **capture_names; /* regex named groups seen anywhere in the config */
    size_t ncapture_names;
    struct srv_conf **servers;
    size_t nservers, cap_servers;
    struct ups_group **groups;
    size_t ngroups, cap_groups;
    struct log_format **formats;
    size_t nformats, cap_formats;
    struct access_log **logs;
    size_t nlogs, cap_logs;
    struct srv_conf *cur_srv;
    struct location *cur_loc;
};

#define LS(cx) ((struct load_state *)(cx)->user)

static struct tmpl *compile(struct cf_ctx *cx, const struct cf_node *n, const char *src)
{
    char msg[256];
    struct tmpl *t = tmpl_compile(cx->arena, src, LS(cx)->capture_names, msg, sizeof(msg));
    if (!t)
        cf_error(cx, n, "%s", msg);
    return t;
}

struct tmpl *conf_tmpl(struct cf_ctx *cx, const struct cf_node *n, const char *src)
{
    return compile(cx, n, src);
}

struct snapshot *conf_snapshot(struct cf_ctx *cx)
{
    return LS(cx)->snap;
}

const struct location *conf_current_location(struct cf_ctx *cx)
{
    return LS(cx)->cur_loc;
}

/* ---- loc_conf ---- */

static void loc_conf_init(struct loc_conf *lc)
{
    memset(lc, 0, sizeof(*lc));
    lc->pass_request_headers = CF_UNSET_FLAG;
    lc->pass_request_body = CF_UNSET_FLAG;
    lc->buffering = CF_UNSET_FLAG;
    lc->request_buffering = CF_UNSET_FLAG;
    lc->intercept_errors = CF_UNSET_FLAG;
    lc->server_tokens = CF_UNSET_FLAG;
    lc->http_version_minor = CF_UNSET_INT;
    lc->connect_timeout_ms = CF_UNSET_MSEC;
    lc->read_timeout_ms = CF_UNSET_MSEC;
    lc->send_timeout_ms = CF_UNSET_MSEC;
    lc->client_body_timeout_ms = CF_UNSET_MSEC;
    lc->keepalive_timeout_ms = CF_UNSET_MSEC;
    lc->send_timeout_client_ms = CF_UNSET_MSEC;
    lc->keepalive_requests = CF_UNSET_INT;
    lc->client_max_body_size = CF_UNSET_SIZE;
    lc->client_body_buffer_size = CF_UNSET_SIZE;
    lc->proxy_buffer_size = CF_UNSET_SIZE;
    lc->proxy_buffers = CF_UNSET_SIZE;
    lc->busy_buffers_size = CF_UNSET_SIZE;
    lc->max_temp_file_size = CF_UNSET_SIZE;
    lc->temp_file_write_size = CF_UNSET_SIZE;
    lc->next_upstream = NEXT_UPS_UNSET;
    lc->next_upstream_tries = CF_UNSET_INT;
    lc->next_upstream_timeout_ms = CF_UNSET_MSEC;
    lc->log_not_found = CF_UNSET_FLAG;
    lc->absolute_redirect = CF_UNSET_FLAG;
    lc->port_in_redirect = CF_UNSET_FLAG;
    lc->server_name_in_redirect = CF_UNSET_FLAG;
    lc->realip_recursive = CF_UNSET_FLAG;
    lc->tcp_nodelay = CF_UNSET_FLAG;
    lc->underscores_in_headers = CF_UNSET_FLAG;
    lc->ignore_invalid_headers = CF_UNSET_FLAG;
    lc->reset_timedout_connection = CF_UNSET_FLAG;
    lc->socket_keepalive = CF_UNSET_FLAG;
    lc->lingering_close = CF_UNSET_INT;
    lc->chunked_transfer_encoding = lc->recursive_error_pages = CF_UNSET_FLAG;
    lc->if_modified_since = lc->max_ranges = CF_UNSET_INT;
    lc->lingering_time_ms = lc->lingering_timeout_ms = CF_UNSET_MSEC;
    lc->resolver_timeout_ms = CF_UNSET_MSEC;
    lc->expires = CF_UNSET_INT;
    lc->satisfy_any = CF_UNSET_INT;
    lc->default_type = NULL;
    proxy_ssl_conf_init(&lc->proxy_ssl);
    cache_loc_conf_init(&lc->cache);
    static_conf_init(&lc->st);
    compress_conf_init(&lc->z);
    limit_conf_init(&lc->limits);
    subfilter_conf_init(&lc->subf);
    lc->ofc.errors = CF_UNSET_FLAG;
    lc->ofc.valid_ms = CF_UNSET_MSEC;
    lc->jwt.leeway_s = CF_UNSET_MSEC;
}

#define MERGE(f, unset)                                                                            \
    do {                                                                                           \
        if (c->f == (unset))                                                                       \
            c->f = p->f;                                                                           \
    } while (0)

static void loc_conf_merge(struct loc_conf *c, const struct loc_conf *p)
{
    MERGE(pass_request_headers, CF_UNSET_FLAG);
    MERGE(pass_request_body, CF_UNSET_FLAG);
    MERGE(buffering, CF_UNSET_FLAG);
    MERGE(request_buffering, CF_UNSET_FLAG);
    MERGE(intercept_errors, CF_UNSET_FLAG);
    MERGE(server_tokens, CF_UNSET_FLAG);
    MERGE(http_version_minor, CF_UNSET_INT);
    MERGE(connect_timeout_ms, CF_UNSET_MSEC);
    MERGE(read_timeout_ms, CF_UNSET_MSEC);
    MERGE(send_timeout_ms, CF_UNSET_MSEC);
    MERGE(client_body_timeout_ms, CF_UNSET_MSEC);
    MERGE(keepalive_timeout_ms, CF_UNSET_MSEC);
    MERGE(send_timeout_client_ms, CF_UNSET_MSEC);
    MERGE(keepalive_requests, CF_UNSET_INT);
    MERGE(client_max_body_size, CF_UNSET_SIZE);
    MERGE(client_body_buffer_size, CF_UNSET_SIZE);
    MERGE(proxy_buffer_size, CF_UNSET_SIZE);
    MERGE(proxy_buffers, CF_UNSET_SIZE);
    MERGE(busy_buffers_size, CF_UNSET_SIZE);
    MERGE(max_temp_file_size, CF_UNSET_SIZE);
    MERGE(temp_file_write_size, CF_UNSET_SIZE);
    MERGE(next_upstream, NEXT_UPS_UNSET);
    MERGE(next_upstream_tries, CF_UNSET_INT);
    MERGE(next_upstream_timeout_ms, CF_UNSET_MSEC);
    MERGE(log_not_found, CF_UNSET_FLAG);
    MERGE(absolute_redirect, CF_UNSET_FLAG);
    MERGE(port_in_redirect, CF_UNSET_FLAG);
    MERGE(server_name_in_redirect, CF_UNSET_FLAG);
    MERGE(realip_recursive, CF_UNSET_FLAG);
    MERGE(tcp_nodelay, CF_UNSET_FLAG);
    MERGE(underscores_in_headers, CF_UNSET_FLAG);
    MERGE(ignore_invalid_headers, CF_UNSET_FLAG);
    MERGE(reset_timedout_connection, CF_UNSET_FLAG);
    MERGE(socket_keepalive, CF_UNSET_FLAG);
    if (!c->proxy_method)
        c->proxy_method = p->proxy_method;
    if (!c->proxy_bind_set) {
        c->proxy_bind = p->proxy_bind;
        c->proxy_bind_transparent = p->proxy_bind_transparent;
        c->proxy_bind_set = p->proxy_bind_set;
    }
    MERGE(lingering_close, CF_UNSET_INT);
    MERGE(chunked_transfer_encoding, CF_UNSET_FLAG);
    MERGE(recursive_error_pages, CF_UNSET_FLAG);
    MERGE(if_modified_since, CF_UNSET_INT);
    MERGE(max_ranges, CF_UNSET_INT);
    MERGE(lingering_time_ms, CF_UNSET_MSEC);
    MERGE(lingering_timeout_ms, CF_UNSET_MSEC);
    MERGE(resolver_timeout_ms, CF_UNSET_MSEC);
    if (!c->resolver)
        c->resolver = p->resolver;
    if (c->expires == CF_UNSET_INT) {
        c->expires = p->expires;
        c->expires_sec = p->expires_sec;
    }
    MERGE(satisfy_any, CF_UNSET_INT);
    if (!c->auth.set) {
        c->auth.realm = p->auth.realm;
        c->auth.set = p->auth.set;
    }
    if (!c->auth.user_file)
        c->auth.user_file = p->auth.user_file;
    if (!c->access_set) {
        c->access = p->access;
        c->naccess = p->naccess;
        c->access_set = p->access_set;
    }
    if (!c->realip_from_set) {
        c->realip_from = p->realip_from;
        c->nrealip_from = p->nrealip_from;
        c->realip_from_set = p->realip_from_set;
    }
    if (!c->realip_header) {
        c->realip_header = p->realip_header;
        c->realip_pp = p->realip_pp;
    }
    cookie_conf_merge(&c->cookies, &p->cookies);
    authreq_conf_merge(&c->authreq, &p->authreq);
    referer_conf_merge(&c->referers, &p->referers);
    subfilter_conf_merge(&c->subf, &p->subf);
    securelink_conf_merge(&c->securelink, &p->securelink);
    ofc_conf_merge(&c->ofc, &p->ofc);
    if (!c->redirect_set) {
        c->redirects = p->redirects;
        c->nredirects = p->nredirects;
        c->redirects_off = p->redirects_off;
        c->redirect_set = p->redirect_set;
    }
    if (!c->default_type)
        c->default_type = p->default_type;
    if (!c->body_temp_path)
        c->body_temp_path = p->body_temp_path;
    if (!c->proxy_temp_path)
        c->proxy_temp_path = p->proxy_temp_path;
    proxy_ssl_conf_merge(&c->proxy_ssl, &p->proxy_ssl);
    cache_loc_conf_merge(&c->cache, &p->cache);
    static_conf_merge(&c->st, &p->st);
    compress_conf_merge(&c->z, &p->z);
    limit_conf_merge(&c->limits, &p->limits);
    if (!c->jwt.set) {
        c->jwt.realm = p->jwt.realm;
        c->jwt.token = p->jwt.token;
        c->jwt.set = p->jwt.set;
    }
    if (!c->jwt.keys)
        c->jwt.keys = p->jwt.keys;
    if (c->jwt.leeway_s == CF_UNSET_MSEC)
        c->jwt.leeway_s = p->jwt.leeway_s;
    if (!c->jwt.require_set) {
        c->jwt.require = p->jwt.require;
        c->jwt.nrequire = p->jwt.nrequire;
        c->jwt.require_error = p->jwt.require_error;
        c->jwt.require_set = p->jwt.require_set;
    }
    /* arrays are inherited whole, only when this level has none (nginx) */
    if (!c->set_headers_set)
        c->set_headers = p->set_headers, c->set_headers_set = p->set_headers_set;
    if (!c->add_headers_set)
        c->add_headers = p->add_headers, c->add_headers_set = p->add_headers_set;
    if (!c->hide_set)
        c->hide_headers = p->hide_headers, c->nhide = p->nhide, c->hide_set = p->hide_set;
    if (!c->pass_set)
        c->pass_headers = p->pass_headers, c->npass = p->npass, c->pass_set = p->pass_set;
    if (!c->error_pages_set)
        c->error_pages = p->error_pages, c->nerror_pages = p->nerror_pages,
        c->error_pages_set = p->error_pages_set;
    if (!c->logs_set) {
        c->logs = p->logs;
        c->nlogs = p->nlogs;
        c->log_off = p->log_off;
        c->logs_set = p->logs_set;
    }
}

static void loc_conf_defaults(struct loc_conf *c)
{
    static struct loc_conf d;
    static bool init;
    if (!init) {
        d.pass_request_headers = 1;
        d.pass_request_body = 1;
        d.buffering = 1;
        d.request_buffering = 1;
        d.intercept_errors = 0;
        d.server_tokens = 1;
        d.http_version_minor = 1;
        d.connect_timeout_ms = 60000;
        d.read_timeout_ms = 60000;
        d.send_timeout_ms = 60000;
        d.client_body_timeout_ms = 60000;
        d.keepalive_timeout_ms = 75000;
        d.send_timeout_client_ms = 60000;
        d.keepalive_requests = 1000;
        d.client_max_body_size = 1024 * 1024;
        d.client_body_buffer_size = 16384;
        d.proxy_buffer_size = 16384;
        d.proxy_buffers = 8 * 8192;
        d.busy_buffers_size = 16384;
        d.max_temp_file_size = (size_t)1024 * 1024 * 1024;
        d.temp_file_write_size = 16384;
        d.next_upstream = NEXT_UPS_ERROR | NEXT_UPS_TIMEOUT;
        d.next_upstream_tries = 0;
        d.next_upstream_timeout_ms = 0;
        d.log_not_found = 1;
        d.absolute_redirect = 1;
        d.port_in_redirect = 1;
        d.server_name_in_redirect = 0;
        d.realip_recursive = 0;
        d.tcp_nodelay = 1;
        d.underscores_in_headers = 0;
        d.ignore_invalid_headers = 1;
        d.reset_timedout_connection = 0;
        d.socket_keepalive = 0;
        d.lingering_close = LINGERING_ON;
        d.chunked_transfer_encoding = 1;
        d.recursive_error_pages = 0;
        d.if_modified_since = IMS_BEFORE;
        d.max_ranges = -1;
        d.lingering_time_ms = 30000;
        d.lingering_timeout_ms = 5000;
        d.resolver_timeout_ms = 30000;
        d.expires = EXPIRES_OFF;
        d.satisfy_any = 0;
        d.redirects = redirect_default_rules;
        d.nredirects = 1;
        d.redirect_set = true;
        d.default_type = "text/plain";
        d.body_temp_path = "/tmp";
        d.proxy_temp_path = "/tmp";
        proxy_ssl_conf_init(&d.proxy_ssl); /* defaults: conf_tls_build() */
        cache_loc_conf_init(&d.cache);     /* defaults: cache_loc_conf_finish() */
        static_conf_init(&d.st);
        static_conf_defaults(&d.st);
        compress_conf_init(&d.z);
        compress_conf_defaults(&d.z);
        limit_conf_init(&d.limits);
        limit_conf_defaults(&d.limits);
        d.ofc.valid_ms = 60000;
        d.ofc.min_uses = 1;
        d.ofc.errors = 0;
        subfilter_conf_init(&d.subf);
        d.subf.once = 1;
        d.subf.last_modified = 0;
        init = true;
    }
    loc_conf_merge(c, &d);
}

/* ---- setters ---- */

static int set_proxy_pass(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->pass)
        return cf_error(cx, n, "\"proxy_pass\" directive is duplicate");
    struct proxy_pass *pp = arena_calloc(cx->arena, sizeof(*pp));
    if (!pp)
        return cf_error(cx, n, "out of memory");
    const char *url = n->args[0];
    if (strncasecmp(url, "http://", 7) == 0) {
        url += 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        url += 8;
        pp->is_https = true;
    } else {
        return cf_error(cx, n, "invalid URL prefix in \"%s\"", n->args[0]);
    }
    if (strchr(n->args[0], '$')) {
        pp->dynamic = compile(cx, n, n->args[0]);
        if (!pp->dynamic)
            return -1;
        lc->pass = pp;
        return 0;
    }
    const char *slash = strchr(url, '/');
    size_t hl = slash ? (size_t)(slash - url) : strlen(url);
    pp->host = arena_strndup(cx->arena, url, hl);
    if (slash) {
        pp->has_uri = true;
        pp->uri = slice_cstr(arena_strdup(cx->arena, slash));
    }
    if (!pp->host || hl == 0)
        return cf_error(cx, n, "no host in \"%s\"", n->args[0]);
    /* a named upstream, resolved in finalize (it may be defined later) */
    lc->pass = pp;
    return 0;
}

/* rewrite, return, set, if, break: one program per level (rewrite.c), in
 * order, as nginx: a return beside proxy_pass or after another return is
 * accepted (a break or an if may come first). */
static int set_rewrite_op(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    return rw_directive(cx, n, LS(cx)->snap, lc);
}

static int add_rule(struct cf_ctx *cx, const struct cf_node *n, struct hdr_rules *r, bool *set,
                    bool allow_always)
{
    if (!*set) {
        r->v = NULL;
        r->n = 0;
        *set = true;
    }
    struct hdr_rule *nv = arena_alloc(cx->arena, (r->n + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (r->n)
        memcpy(nv, r->v, r->n * sizeof(*nv));
    struct hdr_rule *rule = &nv[r->n];
    memset(rule, 0, sizeof(*rule));
    for (const char *c = n->args[0]; *c; c++)
        if (!http_tchar[(unsigned char)*c])
            return cf_error(cx, n, "invalid header name \"%s\"", n->args[0]);
    if (!n->args[0][0])
        return cf_error(cx, n, "invalid header name \"\"");
    rule->name = slice_cstr(n->args[0]);
    for (const char *c = n->args[1]; *c; c++)
        if ((unsigned char)*c < 0x20 && *c != '\t')
            return cf_error(cx, n, "invalid header value \"%s\"", n->args[1]);
    rule->value = compile(cx, n, n->args[1]);
    if (!rule->value)
        return -1;
    if (n->nargs == 3) {
        if (!allow_always || strcmp(n->args[2], "always") != 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[2]);
        rule->always = true;
    }
    r->v = nv;
    r->n++;
    return 0;
}

static int set_proxy_set_header(struct cf_ctx *cx, const struct cf_node *n,
                                const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    return add_rule(cx, n, &lc->set_headers, &lc->set_headers_set, false);
}

static int set_add_header(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    return add_rule(cx, n, &lc->add_headers, &lc->add_headers_set, true);
}

static int add_name(struct cf_ctx *cx, const struct cf_node *n, struct slice **arr, size_t *cnt,
                    bool *set)
{
    if (!*set) {
        *arr = NULL;
        *cnt = 0;
        *set = true;
    }
    struct slice *nv = arena_alloc(cx->arena, (*cnt + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (*cnt)
        memcpy(nv, *arr, *cnt * sizeof(*nv));
    nv[*cnt] = slice_cstr(n->args[0]);
    *arr = nv;
    (*cnt)++;
    return 0;
}

static int set_hide_header(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    return add_name(cx, n, &lc->hide_headers, &lc->nhide, &lc->hide_set);
}

static int set_pass_header(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    return add_name(cx, n, &lc->pass_headers, &lc->npass, &lc->pass_set);
}

static int set_http_version(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (strcmp(n->args[0], "1.0") == 0)
        lc->http_version_minor = 0;
    else if (strcmp(n->args[0], "1.1") == 0)
        lc->http_version_minor = 1;
    else
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], n->name);
    return 0;
}

static int set_next_upstream(struct cf_ctx *cx, const struct cf_node *n,
                             const struct cf_directive *d, void *conf)
{
    (void)d;
    static const struct {
        const char *name;
        uint32_t bit;
    } words[] = {
        {"error", NEXT_UPS_ERROR},
        {"timeout", NEXT_UPS_TIMEOUT},
        {"invalid_header", NEXT_UPS_INVALID_HEADER},
        {"http_500", NEXT_UPS_500},
        {"http_502", NEXT_UPS_502},
        {"http_503", NEXT_UPS_503},
        {"http_504", NEXT_UPS_504},
        {"http_429", NEXT_UPS_429},
        {"non_idempotent", NEXT_UPS_NON_IDEMPOTENT},
        {"off", NEXT_UPS_OFF},
    };
    struct loc_conf *lc = conf;
    if (lc->next_upstream != NEXT_UPS_UNSET)
        return cf_error(cx, n, "\"%s\" directive is duplicate", n->name);
    uint32_t bits = 0;
    for (size_t i = 0; i < n->nargs; i++) {
        size_t k;
        for (k = 0; k < sizeof(words) / sizeof(words[0]); k++)
            if (strcmp(n->args[i], words[k].name) == 0)
                break;
        if (k == sizeof(words) / sizeof(words[0]))
            return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[i], n->name);
        bits |= words[k].bit;
    }
    if ((bits & NEXT_UPS_OFF) && bits != NEXT_UPS_OFF)
        return cf_error(cx, n, "\"off\" cannot be combined with other values in \"%s\"", n->name);
    lc->next_upstream = bits;
    return 0;
}

static int set_internal(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    (void)cx;
    (void)n;
    (void)d;
    ((struct loc_conf *)conf)->internal = true;
    return 0;
}

static int set_error_page(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    struct error_page ep = {.override = 0};
    size_t last = n->nargs - 1;
    for (size_t i = 0; i < last; i++) {
        const char *a = n->args[i];
        char *end;
        if (a[0] == '=') {
            if (i != last - 1)
                return cf_error(cx, n, "invalid value \"%s\"", a);
            if (a[1] == '\0') {
                ep.override = -1;
                continue;
            }
            long v = strtol(a + 1, &end, 10);
            if (*end || v < 100 || v > 599)
                return cf_error(cx, n, "invalid value \"%s\"", a);
            ep.override = (int)v;
            continue;
        }
        long v = strtol(a, &end, 10);
        if (*end || v < 300 || v > 599)
            return cf_error(cx, n, "value \"%s\" must be between 300 and 599", a);
        if (ep.ncodes == sizeof(ep.codes) / sizeof(ep.codes[0]))
            return cf_error(cx, n, "too many codes in \"error_page\"");
        ep.codes[ep.ncodes++] = (int)v;
    }
    if (ep.ncodes == 0)
        return cf_error(cx, n, "invalid number of arguments in \"error_page\" directive");
    ep.uri = compile(cx, n, n->args[last]);
    if (!ep.uri)
        return -1;
    if (!lc->error_pages_set) {
        lc->error_pages = NULL;
        lc->nerror_pages = 0;
        lc->error_pages_set = true;
    }
    struct error_page *nv = arena_alloc(cx->arena, (lc->nerror_pages + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (lc->nerror_pages)
        memcpy(nv, lc->error_pages, lc->nerror_pages * sizeof(*nv));
    nv[lc->nerror_pages++] = ep;
    lc->error_pages = nv;
    return 0;
}

static struct log_format *find_format(struct load_state *ls, const char *name)
{
    for (size_t i = 0; i < ls->nformats; i++)
        if (strcmp(ls->formats[i]->name, name) == 0)
            return ls->formats[i];
    return NULL;
}

static int set_log_format(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    (void)conf;
    struct load_state *ls = LS(cx);
    if (find_format(ls, n->args[0]))
        return cf_error(cx, n, "duplicate \"log_format\" name \"%s\"", n->args[0]);
    struct log_format *f = arena_calloc(cx->arena, sizeof(*f));
    if (!f)
        return cf_error(cx, n, "out of memory");
    f->name = n->args[0];
    size_t first = 1;
    if (strncmp(n->args[1], "escape=", 7) == 0) {
        const char *e = n->args[1] + 7;
        if (strcmp(e, "json") == 0)
            f->escape_json = true;
        else if (strcmp(e, "none") == 0)
            f->escape_none = true;
        else if (strcmp(e, "default") != 0)
            return cf_error(cx, n, "unknown log format escaping \"%s\"", e);
        first = 2;
        if (n->nargs < 3)
            return cf_error(cx, n, "invalid number of arguments in \"log_format\" directive");
    }
    size_t total = 0;
    for (size_t i = first; i < n->nargs; i++)
        total += strlen(n->args[i]);
    char *s = arena_alloc(cx->arena, total + 1);
    if (!s)
        return cf_error(cx, n, "out of memory");
    s[0] = '\0';
    for (size_t i = first; i < n->nargs; i++)
        strcat(s, n->args[i]);
    f->t = compile(cx, n, s);
    if (!f->t)
        return -1;
    struct log_format **slot = arena_push(cx->arena, (void **)&ls->formats, &ls->nformats,
                                          &ls->cap_formats, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    *slot = f;
    return 0;
}

static int set_access_log(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    struct load_state *ls = LS(cx);
    if (!lc->logs_set) {
        lc->logs = NULL;
        lc->nlogs = 0;
        lc->log_off = false;
        lc->logs_set = true;
    }
    if (strcmp(n->args[0], "off") == 0) {
        if (n->nargs != 1)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
        lc->log_off = true;
        return 0;
    }
    struct access_log *al = arena_calloc(cx->arena, sizeof(*al));
    if (!al)
        return cf_error(cx, n, "out of memory");
    al->path = n->args[0];
    al->file = n->file;
    al->line = n->line;
    const char *fmt_name = "combined";
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (strncmp(a, "buffer=", 7) == 0) {
            if (cf_parse_size(a + 7, &al->buffer_size) < 0 || al->buffer_size > 64 * 1024 * 1024)
                return cf_error(cx, n, "invalid buffer size \"%s\"", a + 7);
        } else if (strncmp(a, "flush=", 6) == 0) {
            if (cf_parse_msec(a + 6, &al->flush_ms) < 0)
                return cf_error(cx, n, "invalid flush time \"%s\"", a + 6);
        } else if (strncmp(a, "if=", 3) == 0) {
            if (!a[3])
                return cf_error(cx, n, "invalid parameter \"%s\"", a);
            if (!(al->cond = compile(cx, n, a + 3)))
                return -1;
        } else if (i == 1) {
            fmt_name = a;
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (al->flush_ms && !al->buffer_size)
        al->buffer_size = 64 * 1024;
    if (al->buffer_size && !al->flush_ms)
        al->flush_ms = 1000;
    al->format = find_format(ls, fmt_name);
    if (!al->format)
        return cf_error(cx, n, "unknown log format \"%s\"", fmt_name);
    struct access_log **nv = arena_alloc(cx->arena, (lc->nlogs + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (lc->nlogs)
        memcpy(nv, lc->logs, lc->nlogs * sizeof(*nv));
    nv[lc->nlogs++] = al;
    lc->logs = nv;
    struct access_log **slot =
        arena_push(cx->arena, (void **)&ls->logs, &ls->nlogs, &ls->cap_logs, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    al->index = ls->nlogs - 1;
    *slot = al;
    return 0;
}

static int set_default_type(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    lc->default_type = n->args[0];
    (void)cx;
    return 0;
}

/* client_body_temp_path / proxy_temp_path PATH [l1 [l2 [l3]]]: bodies are
 * spooled to unnamed files (O_TMPFILE), so nginx's levels are accepted and
 * have nothing to do. The directory is created if missing, as nginx does. */
static int set_temp_path(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (!(a[0] >= '1' && a[0] <= '2' && a[1] == '\0'))
            return cf_error(cx, n, "invalid level \"%s\" in \"%s\" directive (1 or 2)", a, n->name);
    }
    struct stat st;
    if (stat(n->args[0], &st) < 0 && mkdir(n->args[0], 0700) < 0 && errno != EEXIST)
        return cf_error(cx, n, "%s \"%s\": cannot create it: %s", n->name, n->args[0],
                        strerror(errno));
    if (stat(n->args[0], &st) < 0 || !S_ISDIR(st.st_mode))
        return cf_error(cx, n, "%s \"%s\" is not a directory", n->name, n->args[0]);
    *(const char **)((char *)conf + d->offset) = n->args[0];
    struct snapshot *sn = LS(cx)->snap;
    const char **slot =
        arena_push(cx->arena, (void **)&sn->dirs, &sn->ndirs, &sn->cap_dirs, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    *slot = n->args[0];
    return 0;
}

static int set_satisfy(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->satisfy_any != CF_UNSET_INT)
        return cf_error(cx, n, "\"satisfy\" directive is duplicate");
    if (strcmp(n->args[0], "all") && strcmp(n->args[0], "any"))
        return cf_error(cx, n, "invalid value \"%s\" in \"satisfy\" directive (all or any)",
                        n->args[0]);
    lc->satisfy_any = n->args[0][1] == 'n';
    return 0;
}

/* expires [modified] time | @time | epoch | max | off */
static int set_expires(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    struct loc_conf *lc = conf;
    if (lc->expires != CF_UNSET_INT)
        return cf_error(cx, n, "\"expires\" directive is duplicate");
    const char *v = n->args[0];
    bool modified = false;
    if (n->nargs == 2) {
        if (strcmp(v, "modified"))
            return cf_error(cx, n, "invalid value \"%s\" in \"expires\" directive", v);
        modified = true;
        v = n->args[1];
    }
    if (!modified && !strcmp(v, "off")) {
        lc->expires = EXPIRES_OFF;
        return 0;
    }
    if (!modified && !strcmp(v, "epoch")) {
        lc->expires = EXPIRES_EPOCH;
        return 0;
    }
    if (!modified && !strcmp(v, "max")) {
        lc->expires = EXPIRES_MAX;
        return 0;
    }
    bool daily = v[0] == '@', negative = v[0] == '-';
    if ((daily && modified) || (daily && negative))
        return cf_error(cx, n, "daily time cannot be used with \"modified\" or be negative");
    /* the time, with nginx's units, through the usual setter */
    struct cf_node tn = *n;
    char *arg = (char *)(v + (daily || negative));
    tn.args = &arg;
    tn.nargs = 1;
    struct cf_directive td = *d;
    td.offset = 0;
    uint32_t sec = CF_UNSET_MSEC; /* the setter refuses a value already set */
    if (cf_set_sec(cx, &tn, &td, &sec) < 0)
        return -1;
    if (daily && sec >= 86400)
        return cf_error(cx, n, "daily time value must be less than 24 hours");
    lc->expires = daily ? EXPIRES_DAILY : modified ? EXPIRES_MODIFIED : EXPIRES_ACCESS;
    lc->expires_sec = negative ? -(int64_t)sec : (int64_t)sec;
    return 0;
}

/* user NAME [GROUP]: resolved now, so a typo is refused at load. */
static int set_user(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    struct main_conf *m = conf;
    if (m->user)
        return cf_error(cx, n, "\"user\" directive is duplicate");
    struct passwd *pw = getpwnam(n->args[0]);
    if (!pw)
        return cf_error(cx, n, "getpwnam(\"%s\") failed: no such user", n->args[0]);
    const char *gname = n->nargs > 1 ? n->args[1] : n->args[0];
    struct group *gr = getgrnam(gname);
    if (!gr)
        return cf_error(cx, n, "getgrnam(\"%s\") failed: no such group", gname);
    m->user = n->args[0];
    m->uid = pw->pw_uid;
    m->gid = gr->gr_gid;
    return 0;
}

/* Settings nginx needs to size its internal hash tables: Portico's tables
 * size themselves, so the value is only checked. */
static int set_ims(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                   void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    const char *a = n->args[0];
    if (!strcmp(a, "off"))
        lc->if_modified_since = IMS_OFF;
    else if (!strcmp(a, "exact"))
        lc->if_modified_since = IMS_EXACT;
    else if (!strcmp(a, "before"))
        lc->if_modified_since = IMS_BEFORE;
    else
        return cf_error(cx, n, "invalid value \"%s\" in \"if_modified_since\" (off, exact, before)",
                        a);
    return 0;
}

static int set_max_ranges(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    char *end;
    long v = strtol(n->args[0], &end, 10);
    if (*end || v < 0 || v > 1000000)
        return cf_error(cx, n, "invalid value \"%s\" in \"max_ranges\"", n->args[0]);
    lc->max_ranges = (int)v;
    return 0;
}

static int set_lingering_close(struct cf_ctx *cx, const struct cf_node *n,
                               const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    const char *a = n->args[0];
    if (!strcmp(a, "off"))
        lc->lingering_close = LINGERING_OFF;
    else if (!strcmp(a, "on"))
        lc->lingering_close = LINGERING_ON;
    else if (!strcmp(a, "always"))
        lc->lingering_close = LINGERING_ALWAYS;
    else
        return cf_error(cx, n, "invalid value \"%s\" in \"lingering_close\" (off, on or always)",
                        a);
    return 0;
}

static int set_proxy_method(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->proxy_method)
        return cf_error(cx, n, "\"proxy_method\" directive is duplicate");
    lc->proxy_method = conf_tmpl(cx, n, n->args[0]);
    return lc->proxy_method ? 0 : -1;
}

static int set_proxy_bind(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->proxy_bind_set)
        return cf_error(cx, n, "\"proxy_bind\" directive is duplicate");
    lc->proxy_bind_set = true;
    const char *a = n->args[0];
    if (n->nargs == 1 && !strcmp(a, "off"))
        return 0;
    if (n->nargs == 2) {
        if (strcmp(n->args[1], "transparent") != 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
        lc->proxy_bind_transparent = true;
    }
    if (!strchr(a, '$')) {
        struct net_addr tmp;
        const char *msg = NULL;
        if (net_addr_parse_ip(a, &tmp, &msg) < 0)
            return cf_error(cx, n, "invalid address \"%s\" in \"proxy_bind\": %s", a, msg);
    }
    lc->proxy_bind = conf_tmpl(cx, n, a);
    return lc->proxy_bind ? 0 : -1;
}

static int set_resolver(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->resolver)
        return cf_error(cx, n, "\"resolver\" directive is duplicate");
    struct net_resolver *r = arena_calloc(cx->arena, sizeof(*r));
    if (!r)
        return cf_error(cx, n, "out of memory");
    if (ups_parse_resolver(cx, n, r) < 0)
        return -1;
    lc->resolver = r;
    return 0;
}

static int set_hash_size(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d, (void)conf;
    const char *v = n->args[0];
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    if (end == v || (*end && !((*end == 'k' || *end == 'K') && !end[1])) || x == 0)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", v, n->name);
    return 0;
}

/* proxy_buffers NUMBER SIZE: how much of the response is read ahead of a
 * slow client in memory (NUMBER*SIZE), before proxy_max_temp_file_size. */
static int set_proxy_buffers(struct cf_ctx *cx, const struct cf_node *n,
                             const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    char *end;
    long num = strtol(n->args[0], &end, 10);
    size_t size;
    if (*end || num < 2 || num > 4096)
        return cf_error(cx, n, "invalid number \"%s\" in \"%s\" directive (2 to 4096)", n->args[0],
                        n->name);
    if (cf_parse_size(n->args[1], &size) < 0 || size == 0 || size > 16 * 1024 * 1024)
        return cf_error(cx, n, "invalid size \"%s\" in \"%s\" directive", n->args[1], n->name);
    lc->proxy_buffers = (size_t)num * size;
    return 0;
}

/* ---- main and events ---- */

static int set_worker_processes(struct cf_ctx *cx, const struct cf_node *n,
                                const struct cf_directive *d, void *conf)
{
    (void)d;
    struct main_conf *m = conf;
    if (strcmp(n->args[0], "auto") == 0) {
        m->worker_processes = 0;
        return 0;
    }
    int v;
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1 || v > 256)
        return cf_error(cx, n, "invalid value \"%s\" in \"worker_processes\" directive",
                        n->args[0]);
    m->worker_processes = v;
    return 0;
}

static int set_worker_connections(struct cf_ctx *cx, const struct cf_node *n,
                                  const struct cf_directive *d, void *conf)
{
    struct main_conf *m = conf;
    int v;
    if (m->worker_connections != CF_UNSET_INT)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    /* 0 would accept nothing at all: a typo, not a setting */
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], d->name);
    m->worker_connections = v;
    return 0;
}

static int set_error_log(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d;
    struct main_conf *m = conf;
    m->error_log_path = n->args[0];
    m->error_log_level = LOG_ERR;
    m->error_log_file = n->file;
    m->error_log_line = n->line;
    if (n->nargs == 2) {
        int lvl = log_level_parse(n->args[1]);
        if (lvl < 0)
            return cf_error(cx, n, "invalid log level \"%s\"", n->args[1]);
        m->error_log_level = lvl;
    }
    return 0;
}

static int set_daemon(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    (void)conf;
    if (strcmp(n->args[0], "on") != 0 && strcmp(n->args[0], "off") != 0)
        return cf_error(cx, n,
                        "invalid value \"%s\" in \"daemon\" directive, it must be \"on\" or "
                        "\"off\"",
                        n->args[0]);
    return 0;
}

static int set_events(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    (void)conf;
    struct cf_ctx sub = *cx;
    sub.context = CF_EVENTS;
    return cf_apply_block(&sub, n);
}

/* ---- server, location, upstream ---- */

static int set_listen(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    struct srv_conf *sc = conf;
    struct listen_conf *nl = arena_calloc(cx->arena, (sc->nlistens + 1) * sizeof(*nl));
    if (!nl)
        return cf_error(cx, n, "out of memory");
    if (sc->nlistens)
        memcpy(nl, sc->listens, sc->nlistens * sizeof(*nl));
    struct listen_conf *l = &nl[sc->nlistens];
    const char *msg = NULL;
    if (net_addr_parse(n->args[0], 80, true, &l->addr, &msg) < 0)
        return cf_error(cx, n, "invalid address \"%s\" in \"listen\": %s", n->args[0], msg);
    net_addr_format(&l->addr, l->text, sizeof(l->text));
    l->backlog = 511;
    l->file = n->file;
    l->line = n->line;
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (strcmp(a, "default_server") == 0 || strcmp(a, "default") == 0) {
            l->default_server = true;
        } else if (strcmp(a, "reuseport") == 0) {
            l->reuseport = true;
        } else if (strcmp(a, "deferred") == 0) {
            /* nginx's TCP_DEFER_ACCEPT: Portico's listeners always defer */
        } else if (strncmp(a, "backlog=", 8) == 0) {
            if (cf_parse_int(a + 8, &l->backlog) < 0 || l->backlog < 1)
                return cf_error(cx, n, "invalid backlog \"%s\"", a + 8);
        } else if (strcmp(a, "ssl") == 0) {
            l->ssl = true;
        } else if (strcmp(a, "http2") == 0) {
            l->http2 = true;
        } else if (strcmp(a, "proxy_protocol") == 0) {
            l->proxy_protocol = true;
        } else if (strcmp(a, "h2c_only") == 0) {
            /* HTTP/2 with prior knowledge and nothing else (h2spec, gRPC
             * behind a TLS-terminating balancer): no HTTP/1 sniffing */
            l->h2c_only = true;
            l->http2 = true;
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (l->h2c_only && l->ssl)
        return cf_error(cx, n,
                        "\"h2c_only\" is for plain listeners; with \"ssl\", ALPN picks the "
                        "protocol");
    sc->listens = nl;
    sc->nlistens++;
    return 0;
}

static int set_server_name(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct srv_conf *sc = conf;
    const char **nv = arena_alloc(cx->arena, (sc->nnames + n->nargs) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (sc->nnames)
        memcpy(nv, sc->names, sc->nnames * sizeof(*nv));
    for (size_t i = 0; i < n->nargs; i++) {
        const char *name = n->args[i];
        if (name[0] != '~') {
            char *low = arena_strdup(cx->arena, name);
            if (!low)
                return cf_error(cx, n, "out of memory");
            for (char *c = low; *c; c++)
                *c = ascii_lower(*c);
            if (strchr(low, '/') || strchr(low, ' '))
                return cf_error(cx, n, "server name \"%s\" has suspicious symbols", name);
            name = low;
        }
        nv[sc->nnames++] = name;
    }
    sc->names = nv;
    return 0;
}

static int set_large_buffers(struct cf_ctx *cx, const struct cf_node *n,
                             const struct cf_directive *d, void *conf)
{
    (void)d;
    struct srv_conf *sc = conf;
    if (cf_parse_int(n->args[0], &sc->large_header_buffers_num) < 0 ||
        sc->large_header_buffers_num < 1)
        return cf_error(cx, n, "invalid value \"%s\"", n->args[0]);
    if (cf_parse_size(n->args[1], &sc->large_header_buffers_size) < 0 ||
        sc->large_header_buffers_size < 128)
        return cf_error(cx, n, "invalid value \"%s\"", n->args[1]);
    return 0;
}

static int apply_location(struct cf_ctx *cx, const struct cf_node *n, struct location *parent,
                          struct location ***arr, size_t *cnt);

static int set_location(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    (void)d;
    (void)conf;
    struct load_state *ls = LS(cx);
    if (ls->cur_loc)
        return apply_location(cx, n, ls->cur_loc, &ls->cur_loc->children, &ls->cur_loc->nchildren);
    return apply_location(cx, n, NULL, &ls->cur_srv->locs, &ls->cur_srv->nlocs);
}

static int apply_location(struct cf_ctx *cx, const struct cf_node *n, struct location *parent,
                          struct location ***arr, size_t *cnt)
{
    struct load_state *ls = LS(cx);
    struct location *loc = arena_calloc(cx->arena, sizeof(*loc));
    struct loc_conf *lc = arena_alloc(cx->arena, sizeof(*lc));
    if (!loc || !lc)
        return cf_error(cx, n, "out of memory");
    loc_conf_init(lc);
    lc->file = n->file;
    lc->line = n->line;
    const char *pat;
    if (n->nargs == 2) {
        const char *m = n->args[0];
        pat = n->args[1];
        if (strcmp(m, "=") == 0)
            loc->match = LOC_EXACT;
        else if (strcmp(m, "^~") == 0)
            loc->match = LOC_PREFIX_NOREGEX;
        else if (strcmp(m, "~") == 0)
            loc->match = LOC_REGEX;
        else if (strcmp(m, "~*") == 0)
            loc->match = LOC_REGEX_CI;
        else
            return cf_error(cx, n, "invalid location modifier \"%s\"", m);
    } else {
        pat = n->args[0];
        if (pat[0] == '=' && pat[1]) {
            loc->match = LOC_EXACT;
            pat++;
        } else if (pat[0] == '~' && pat[1] == '*' && pat[2]) {
            loc->match = LOC_REGEX_CI;
            pat += 2;
        } else if (pat[0] == '^' && pat[1] == '~' && pat[2]) {
            loc->match = LOC_PREFIX_NOREGEX;
            pat += 2;
        } else if (pat[0] == '~' && pat[1]) {
            loc->match = LOC_REGEX;
            pat++;
        } else if (pat[0] == '@') {
            loc->match = LOC_NAMED;
        } else {
            loc->match = LOC_PREFIX;
        }
    }
    if (parent) {
        if (parent->match == LOC_EXACT)
            return cf_error(cx, n, "location \"%s\" cannot be inside the exact location \"%s\"",
                            pat, parent->pattern);
        if (parent->match == LOC_NAMED)
            return cf_error(cx, n, "location \"%s\" cannot be inside the named location \"%s\"",
                            pat, parent->pattern);
        if (loc->match == LOC_NAMED)
            return cf_error(cx, n, "named location \"%s\" can be on the server level only", pat);
        if ((loc->match == LOC_PREFIX || loc->match == LOC_PREFIX_NOREGEX ||
             loc->match == LOC_EXACT) &&
            (parent->match == LOC_PREFIX || parent->match == LOC_PREFIX_NOREGEX) &&
            strncmp(pat, parent->pattern, parent->pattern_len) != 0)
            return cf_error(cx, n, "location \"%s\" is outside location \"%s\"", pat,
                            parent->pattern);
    }
    for (size_t i = 0; i < *cnt; i++) {
        const struct location *o = (*arr)[i];
        bool o_prefix = o->match == LOC_PREFIX || o->match == LOC_PREFIX_NOREGEX;
        bool n_prefix = loc->match == LOC_PREFIX || loc->match == LOC_PREFIX_NOREGEX;
        if (strcmp(o->pattern, pat) == 0 &&
            ((o_prefix && n_prefix) || (o->match == loc->match && loc->match == LOC_EXACT)))
            return cf_error(cx, n, "duplicate location \"%s\"", pat);
    }
    loc->pattern = pat;
    loc->pattern_len = strlen(pat);
    loc->parent = parent;
    loc->conf = lc;
    if (loc->match == LOC_REGEX || loc->match == LOC_REGEX_CI) {
        char msg[256];
        if (router_location_compile(loc, msg, sizeof(msg)) < 0)
            return cf_error(cx, n, "%s", msg);
    }
    struct location **nv = arena_alloc(cx->arena, (*cnt + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (*cnt)
        memcpy(nv, *arr, *cnt * sizeof(*nv));
    nv[(*cnt)++] = loc;
    *arr = nv;

    struct location *saved = ls->cur_loc;
    ls->cur_loc = loc;
    struct cf_ctx sub = *cx;
    sub.context = CF_LOCATION;
    sub.confs[CONF_LOC] = lc;
    int rc = cf_apply_block(&sub, n);
    ls->cur_loc = saved;
    return rc;
}

static int set_server(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    (void)conf;
    struct load_state *ls = LS(cx);
    struct srv_conf *sc = arena_calloc(cx->arena, sizeof(*sc));
    struct loc_conf *lc = arena_alloc(cx->arena, sizeof(*lc));
    if (!sc || !lc)
        return cf_error(cx, n, "out of memory");
    loc_conf_init(lc);
    sc->lc = lc;
    sc->file = n->file;
    sc->line = n->line;
    sc->client_header_timeout_ms = CF_UNSET_MSEC;
    sc->client_header_buffer_size = CF_UNSET_SIZE;
    sc->large_header_buffers_num = 0;
    sc->merge_slashes = CF_UNSET_FLAG;
    sc->underscores_in_headers = CF_UNSET_FLAG;
    ssl_srv_conf_init(&sc->ssl);
    ls->cur_srv = sc;
    ls->cur_loc = NULL;
    struct cf_ctx sub = *cx;
    sub.context = CF_SERVER;
    sub.confs[CONF_SRV] = sc;
    sub.confs[CONF_LOC] = lc;
    if (cf_apply_block(&sub, n) < 0)
        return -1;
    struct srv_conf **slot = arena_push(cx->arena, (void **)&ls->servers, &ls->nservers,
                                        &ls->cap_servers, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    *slot = sc;
    ls->cur_srv = NULL;
    return 0;
}

static int set_upstream(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    (void)d;
    (void)conf;
    struct load_state *ls = LS(cx);
    for (size_t i = 0; i < ls->ngroups; i++)
        if (strcmp(ls->groups[i]->name, n->args[0]) == 0)
            return cf_error(cx, n, "duplicate upstream \"%s\"", n->args[0]);
    struct ups_group *g = arena_calloc(cx->arena, sizeof(*g));
    if (!g)
        return cf_error(cx, n, "out of memory");
    if (ups_group_parse(cx, n, g) < 0)
        return -1;
    if (g->hash_key && !(g->hash_tmpl = compile(cx, n, g->hash_key)))
        return -1;
    struct ups_group **slot =
        arena_push(cx->arena, (void **)&ls->groups, &ls->ngroups, &ls->cap_groups, sizeof(*slot));
    if (!slot)
        return cf_error(cx, n, "out of memory");
    g->id = ls->ngroups - 1;
    *slot = g;
    return 0;
}

static int set_http(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    (void)conf;
    struct snapshot *s = LS(cx)->snap;
    if (s->has_http)
        return cf_error(cx, n, "\"http\" directive is duplicate");
    s->has_http = true;
    struct cf_ctx sub = *cx;
    sub.context = CF_HTTP;
    sub.confs[CONF_LOC] = s->http_lc;
    return cf_apply_block(&sub, n);
}

static int set_map(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                   void *conf)
{
    (void)d;
    (void)conf;
    if (strcmp(n->name, "split_clients") == 0)
        return map_split_directive(cx, n, LS(cx)->snap);
    if (strcmp(n->name, "geo") == 0)
        return map_geo_directive(cx, n, LS(cx)->snap);
    return map_directive(cx, n, LS(cx)->snap);
}

static int set_real_ip_header(struct cf_ctx *cx, const struct cf_node *n,
                              const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    const char *h = n->args[0];
    if (strcmp(h, "proxy_protocol") == 0) {
        lc->realip_pp = true; /* the address of the listener's PROXY header */
        lc->realip_header = h;
        return 0;
    }
    for (const char *c = h; *c; c++)
        if (!http_tchar[(unsigned char)*c])
            return cf_error(cx, n, "invalid header name \"%s\"", h);
    if (!*h)
        return cf_error(cx, n, "invalid header name \"\"");
    lc->realip_header = h;
    return 0;
}

static int set_proxy_redirect(struct cf_ctx *cx, const struct cf_node *n,
                              const struct cf_directive *d, void *conf)
{
    (void)d;
    return redirect_directive(cx, n, LS(cx)->snap, conf);
}

#define LOC_ANY     (CF_HTTP | CF_SERVER | CF_LOCATION)
#define OFF_LOC(f)  offsetof(struct loc_conf, f)
#define OFF_SRV(f)  offsetof(struct srv_conf, f)
#define OFF_MAIN(f) offsetof(struct main_conf, f)

static const struct cf_directive core_directives[] = {
    {"worker_processes", CF_MAIN, 1, 1, false, set_worker_processes, CONF_MAIN, 0, "number | auto",
     "1", "worker threads, each with its own event loop and listening sockets"},
    {"pid", CF_MAIN, 1, 1, false, cf_set_str, CONF_MAIN, OFF_MAIN(pid_path), "file",
     "/run/portico.pid", "file holding the process id, used by -s"},
    {"error_log", CF_MAIN, 1, 2, false, set_error_log, CONF_MAIN, 0, "file [level]", "stderr error",
     "where the error log goes and from which level (debug .. emerg)"},
    {"worker_shutdown_timeout", CF_MAIN, 1, 1, false, cf_set_msec, CONF_MAIN,
     OFF_MAIN(worker_shutdown_timeout_ms), "time", "10s",
     "how long a stop waits for in-flight requests"},
    {"worker_rlimit_nofile", CF_MAIN, 1, 1, false, cf_set_int, CONF_MAIN,
     OFF_MAIN(worker_rlimit_nofile), "number", "-", "raise the open-files limit at start"},
    {"daemon", CF_MAIN, 1, 1, false, set_daemon, CONF_MAIN, 0, "on | off", "off",
     "accepted for nginx configs; Portico always runs in the foreground (use a service "
     "manager)"},
    {"events", CF_MAIN, 0, 0, true, set_events, CONF_MAIN, 0, "{ ... }", "-",
     "event loop settings"},
    {"worker_connections", CF_EVENTS, 1, 1, false, set_worker_connections, CONF_MAIN,
     OFF_MAIN(worker_connections), "number", "10240",
     "client connections each worker accepts at most"},
    {"multi_accept", CF_EVENTS, 1, 1, false, cf_set_flag, CONF_MAIN, OFF_MAIN(multi_accept),
     "on | off", "off",
     "on: a worker accepts every waiting connection at once; off: 64 at a time, then it "
     "serves what it has before taking more"},
    {"user", CF_MAIN, 1, 2, false, set_user, CONF_MAIN, 0, "user [group]", "-",
     "when started as root: after the listeners, logs, pid file and certificates are open, "
     "run as this user (group: the user's name, as nginx); temp and cache directories are "
     "handed to it. Portico is one process, so a later reload runs as that user too (see "
     "docs). Not root: ignored with a warning"},
    {"http", CF_MAIN, 0, 0, true, set_http, CONF_MAIN, 0, "{ ... }", "-",
     "the HTTP proxy: upstreams, servers, locations"},
    {"map", CF_HTTP, 2, 2, true, set_map, CONF_MAIN, 0, "string $variable { ... }", "-",
     "a variable looked up from string: exact keys (case-insensitive), hostnames wildcards, "
     "~regex/~*regex (captures in the value), default; evaluated once per request unless "
     "volatile"},
    {"geo", CF_HTTP, 1, 2, true, set_map, CONF_MAIN, 0, "[$address] $variable { ... }", "-",
     "a variable by client network: the value of the longest CIDR holding $address (default "
     "$remote_addr, after set_real_ip_from), else default"},
    {"split_clients", CF_HTTP, 2, 2, true, set_map, CONF_MAIN, 0,
     "string $variable { percent value; ... * value; }", "-",
     "A/B buckets: MurmurHash2 of string against the percentages in order, as nginx (the same "
     "clients get the same value); \"*\" takes the rest, none: empty"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

static const struct cf_directive http_directives[] = {
    {"server", CF_HTTP, 0, 0, true, set_server, CONF_LOC, 0, "{ ... }", "-", "a virtual server"},
    {"upstream", CF_HTTP, 1, 1, true, set_upstream, CONF_LOC, 0, "name { ... }", "-",
     "a group of servers to proxy to"},
    {"listen", CF_SERVER, 1, CF_ARGS_ANY, false, set_listen, CONF_SRV, 0,
     "address[:port] [default_server] [ssl] [http2 [h2c_only]] [proxy_protocol] [reuseport] "
     "[deferred] "
     "[backlog=number]",
     "*:80",
     "address and port to accept connections on; http2: HTTP/2 there too (ALPN h2 with ssl, "
     "else h2c with prior knowledge beside HTTP/1.x); h2c_only (plain, implies http2): HTTP/2 "
     "only, anything but the client preface gets GOAWAY(PROTOCOL_ERROR); accepts are always "
     "deferred until the client sends (TCP_DEFER_ACCEPT), `deferred` is accepted for nginx "
     "configs; proxy_protocol: every connection starts with a PROXY protocol v1/v2 header "
     "($proxy_protocol_addr; real_ip_header proxy_protocol makes it $remote_addr)"},
    {"server_name", CF_SERVER, 1, CF_ARGS_ANY, false, set_server_name, CONF_SRV, 0, "name ...",
     "\"\"", "names of the virtual server: exact, *.wildcard, wildcard.*, ~regex"},
    {"location", CF_SERVER | CF_LOCATION, 1, 2, true, set_location, CONF_LOC, 0,
     "[ = | ~ | ~* | ^~ ] uri { ... } | @name { ... }", "-",
     "settings for requests whose URI matches"},
    {"client_header_timeout", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_msec, CONF_SRV,
     OFF_SRV(client_header_timeout_ms), "time", "60s",
     "time to receive a request head (408 after it)"},
    {"client_header_buffer_size", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_size, CONF_SRV,
     OFF_SRV(client_header_buffer_size), "size", "1k", "first buffer for a request head"},
    {"large_client_header_buffers", CF_HTTP | CF_SERVER, 2, 2, false, set_large_buffers, CONF_SRV,
     0, "number size", "4 8k",
     "a request line longer than size is 414; a head larger than number*size is 431"},
    {"merge_slashes", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_flag, CONF_SRV,
     OFF_SRV(merge_slashes), "on | off", "on", "merge \"//\" in the URI used for routing"},
    {"log_format", CF_HTTP, 2, CF_ARGS_ANY, false, set_log_format, CONF_LOC, 0,
     "name [escape=default|json|none] string ...", "combined \"...\"",
     "a named access log line format with variables"},
    {"access_log", LOC_ANY, 1, 5, false, set_access_log, CONF_LOC, 0,
     "path [format [buffer=size] [flush=time] [if=condition]] | off", "logs/access.log combined",
     "where request lines are logged; with if= only when the condition (text and variables, "
     "e.g. a map) is neither empty nor \"0\""},
    {"proxy_pass", CF_LOCATION, 1, 1, false, set_proxy_pass, CONF_LOC, 0, "URL", "-",
     "forward to an upstream group or address; with a URI part, the matched location prefix is "
     "replaced by it"},
    {"return", CF_SERVER | CF_LOCATION, 1, 2, false, set_rewrite_op, CONF_LOC, 0,
     "code [text] | code URL | URL", "-",
     "answer at once with a status, body or redirect (in order with the other rewrite "
     "directives; also inside if)"},
    {"rewrite", CF_SERVER | CF_LOCATION, 2, 3, false, set_rewrite_op, CONF_LOC, 0,
     "regex replacement [last | break | redirect | permanent]", "-",
     "change $uri when regex matches it ($1.. in the replacement; a '?' in it sets the "
     "arguments); last/no flag: search the location again, break: stay, redirect/permanent "
     "or an http(s):// replacement: 302/301"},
    {"set", CF_SERVER | CF_LOCATION, 2, 2, false, set_rewrite_op, CONF_LOC, 0, "$variable value",
     "-", "give a variable of your own a value (text and variables)"},
    {"if", CF_SERVER | CF_LOCATION, 1, CF_ARGS_ANY, true, set_rewrite_op, CONF_LOC, 0,
     "(condition) { ... }", "-",
     "run return, rewrite, set and break when the condition holds: $var, = !=, ~ ~* !~ !~* "
     "(captures for what follows), -f -d -e -x and !-f ...; no other directive inside"},
    {"break", CF_SERVER | CF_LOCATION, 0, 0, false, set_rewrite_op, CONF_LOC, 0, "", "-",
     "stop the rewrite directives here and stay in this location"},
    {"internal", CF_LOCATION, 0, 0, false, set_internal, CONF_LOC, 0, "", "-",
     "only internal redirects reach this location (error_page, index, try_files, rewrite, an "
     "upstream's X-Accel-Redirect); a client asking for it directly gets 404"},
    {"error_page", LOC_ANY, 2, CF_ARGS_ANY, false, set_error_page, CONF_LOC, 0,
     "code ... [=[response]] uri", "-",
     "on these statuses answer with another URI (internal redirect), a named location or a "
     "redirect"},
    {"proxy_set_header", LOC_ANY, 2, 2, false, set_proxy_set_header, CONF_LOC, 0, "field value",
     "Host $proxy_host; Connection close",
     "set a request header sent upstream (an empty value removes it)"},
    {"proxy_hide_header", LOC_ANY, 1, 1, false, set_hide_header, CONF_LOC, 0, "field", "-",
     "do not pass this upstream response header to the client"},
    {"proxy_pass_header", LOC_ANY, 1, 1, false, set_pass_header, CONF_LOC, 0, "field", "-",
     "pass a header hidden by default (Server, Date, X-Accel-*)"},
    {"proxy_pass_request_headers", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(pass_request_headers), "on | off", "on", "forward the client's request headers"},
    {"proxy_bind", LOC_ANY, 1, 2, false, set_proxy_bind, CONF_LOC, 0, "address [transparent] | off",
     "-",
     "connect to upstreams from this local address (variables allowed; an empty value: "
     "none); transparent allows a foreign address such as $remote_addr (IP_TRANSPARENT: "
     "needs CAP_NET_ADMIN and policy routing). Pooled connections are reused only from the "
     "same address"},
    {"proxy_method", LOC_ANY, 1, 1, false, set_proxy_method, CONF_LOC, 0, "method", "-",
     "the method of upstream requests instead of the client's (variables allowed; a value "
     "that is not a token is ignored)"},
    {"proxy_socket_keepalive", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(socket_keepalive), "on | off", "off",
     "TCP keep-alive (SO_KEEPALIVE, the system's timings) on new upstream connections"},
    {"proxy_pass_request_body", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(pass_request_body), "on | off", "on", "forward the client's request body"},
    {"add_header", LOC_ANY, 2, 3, false, set_add_header, CONF_LOC, 0, "name value [always]", "-",
     "add a response header (to 2xx/3xx answers, or to all with always)"},
    {"expires", LOC_ANY, 1, 2, false, set_expires, CONF_LOC, 0,
     "[modified] time | @time-of-day | epoch | max | off", "off",
     "set Expires and Cache-Control (max-age, or no-cache for a time in the past or epoch) on "
     "200, 201, 204, 206, 301, 302, 303, 304, 307 and 308 answers, replacing the upstream's; "
     "modified: from Last-Modified; @15h30m: the next such time of day"},
    {"server_tokens", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_LOC(server_tokens),
     "on | off", "on", "send the version in Server and error pages"},
    {"types_hash_max_size", LOC_ANY, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"types_hash_bucket_size", LOC_ANY, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"server_names_hash_max_size", CF_HTTP, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"server_names_hash_bucket_size", CF_HTTP, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"variables_hash_max_size", CF_HTTP, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"variables_hash_bucket_size", CF_HTTP, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"map_hash_max_size", CF_HTTP, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"map_hash_bucket_size", CF_HTTP, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"proxy_headers_hash_max_size", LOC_ANY, 1, 1, false, set_hash_size, CONF_LOC, 0, "size", "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"proxy_headers_hash_bucket_size", LOC_ANY, 1, 1, false, set_hash_size, CONF_LOC, 0, "size",
     "-",
     "accepted for nginx configs: sizes one of nginx's lookup tables; Portico's size "
     "themselves"},
    {"tcp_nodelay", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_flag, CONF_LOC, OFF_LOC(tcp_nodelay),
     "on | off", "on",
     "set TCP_NODELAY on client connections once a keep-alive response is written (the "
     "listening address's default server decides; TLS handshakes and HTTP/2 always set it)"},
    {"underscores_in_headers", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(underscores_in_headers), "on | off", "off",
     "off: request header fields whose names hold '_' are dropped on arrival (as nginx: a "
     "backend that maps X_Real_IP and X-Real-IP to one name cannot be fooled); the "
     "listening address's default server decides"},
    {"ignore_invalid_headers", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(ignore_invalid_headers), "on | off", "on",
     "off: names with '_' pass even with underscores_in_headers off. Names outside "
     "RFC 9110's token characters are always refused with 400 (nginx drops them)"},
    {"resolver", CF_HTTP | CF_SERVER, 1, CF_ARGS_ANY, false, set_resolver, CONF_LOC, 0,
     "address ... [valid=time] [ipv6=on|off]", "-",
     "DNS servers for names looked up while running, asked in turn over UDP: the resolve "
     "servers of upstream groups without a resolver of their own (http level), and the "
     "OCSP responders of ssl_stapling (this server's); without it, the system resolver"},
    {"resolver_timeout", CF_HTTP | CF_SERVER, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_LOC(resolver_timeout_ms), "time", "30s",
     "how long each resolver address is waited for before the next one is asked"},
    {"lingering_close", LOC_ANY, 1, 1, false, set_lingering_close, CONF_LOC, 0, "off | on | always",
     "on",
     "before closing a connection whose client may still be sending, the write side is shut "
     "and what arrives is read and dropped, so the client gets the answer instead of a reset "
     "(on: when a request body or pipelined bytes are unread; always; off: never)"},
    {"chunked_transfer_encoding", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(chunked_transfer_encoding), "on | off", "on",
     "off: an HTTP/1.1 answer of unknown length ends with the connection instead of in "
     "chunks (for clients that cannot read chunked)"},
    {"recursive_error_pages", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(recursive_error_pages), "on | off", "off",
     "let an error page's own error go to error_page again (at most 10 redirects in all)"},
    {"if_modified_since", LOC_ANY, 1, 1, false, set_ims, CONF_LOC, 0, "off | exact | before",
     "before",
     "how If-Modified-Since makes a 304 of a file or a cached answer: before (last "
     "modified at or before the date, RFC 9110's rule), exact (the same date; nginx's "
     "default), off (never)"},
    {"max_ranges", LOC_ANY, 1, 1, false, set_max_ranges, CONF_LOC, 0, "number", "-",
     "0: Range requests are answered whole and no Accept-Ranges is sent (Portico answers "
     "one range; a request for more gets the whole body anyway)"},
    {"lingering_time", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC, OFF_LOC(lingering_time_ms),
     "time", "30s", "the longest a lingering close reads"},
    {"lingering_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_LOC(lingering_timeout_ms), "time", "5s",
     "a lingering close ends when the client sends nothing for this long"},
    {"reset_timedout_connection", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(reset_timedout_connection), "on | off", "off",
     "a client connection closed because it timed out (client_header_timeout, "
     "client_body_timeout, send_timeout) or by return 444 is reset (SO_LINGER 0) instead of "
     "closed, so the kernel frees it at once (HTTP/1 connections)"},
    {"default_type", LOC_ANY, 1, 1, false, set_default_type, CONF_LOC, 0, "mime-type", "text/plain",
     "Content-Type of bodies sent with return"},
    {"proxy_http_version", LOC_ANY, 1, 1, false, set_http_version, CONF_LOC, 0, "1.0 | 1.1", "1.1",
     "HTTP version spoken to upstreams (1.1 allows keep-alive and chunked bodies)"},
    {"proxy_connect_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_LOC(connect_timeout_ms), "time", "60s", "time to connect to an upstream (504 after)"},
    {"proxy_read_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC, OFF_LOC(read_timeout_ms),
     "time", "60s", "longest silence between two reads from the upstream (504 after)"},
    {"proxy_send_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC, OFF_LOC(send_timeout_ms),
     "time", "60s", "longest stall between two writes to the upstream"},
    {"proxy_buffering", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_LOC(buffering), "on | off",
     "on",
     "read the upstream response ahead of a slow client (proxy_buffers in memory, then "
     "proxy_max_temp_file_size in a file); off: only as fast as the client takes it"},
    {"proxy_request_buffering", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(request_buffering), "on | off", "on",
     "read the whole request body (memory, then a file) before connecting upstream; off: stream "
     "it"},
    {"allow", LOC_ANY, 1, 1, false, access_set_rule, CONF_LOC, 0, "address | CIDR | all", "-",
     "let clients from here in; allow and deny are checked in order, the first match decides "
     "(none matches: allowed); the address is $remote_addr, after set_real_ip_from"},
    {"deny", LOC_ANY, 1, 1, false, access_set_rule, CONF_LOC, 0, "address | CIDR | all", "-",
     "answer 403 to clients from here (see allow)"},
    {"auth_basic", LOC_ANY, 1, 1, false, auth_set_basic, CONF_LOC, 0, "realm | off", "off",
     "ask for a user name and password (HTTP Basic, 401 with WWW-Authenticate) checked against "
     "auth_basic_user_file; the realm may hold variables"},
    {"auth_basic_user_file", LOC_ANY, 1, 1, false, auth_set_user_file, CONF_LOC, 0, "file", "-",
     "htpasswd file, read on each request (changes apply at once): user:password lines; "
     "crypt(3) ($1$, $5$, $6$, bcrypt $2y$, yescrypt), $apr1$, {SHA}, {SSHA}, {PLAIN}"},
    {"auth_jwt", LOC_ANY, 1, 2, false, jwt_set_auth, CONF_LOC, 0, "realm [token=$variable] | off",
     "off",
     "require a signed JSON Web Token (Authorization: Bearer, or the variable), verified "
     "against auth_jwt_key_file, exp and nbf checked; 401 with WWW-Authenticate: Bearer "
     "otherwise; $jwt_claim_NAME and $jwt_header_NAME then hold its fields"},
    {"auth_jwt_key_file", LOC_ANY, 1, 1, false, jwt_set_key_file, CONF_LOC, 0, "file", "-",
     "a JWK set (read at load): oct keys for HS256/384/512, RSA for RS* and PS*, EC P-256/"
     "384/521 for ES*, OKP Ed25519 for EdDSA; a token's kid picks the key"},
    {"auth_jwt_leeway", LOC_ANY, 1, 1, false, jwt_set_leeway, CONF_LOC, 0, "time", "0s",
     "clock skew allowed on exp and nbf"},
    {"auth_jwt_require", LOC_ANY, 1, CF_ARGS_ANY, false, jwt_set_require, CONF_LOC, 0,
     "value ... [error=401|403]", "-",
     "more conditions on a valid token: every value (variables, e.g. a map of "
     "$jwt_claim_role) must be non-empty and not \"0\", else 401 (or 403)"},
    {"auth_jwt_type", LOC_ANY, 1, 1, false, jwt_set_type, CONF_LOC, 0, "signed", "signed",
     "only signed tokens (JWS) are supported"},
    {"satisfy", LOC_ANY, 1, 1, false, set_satisfy, CONF_LOC, 0, "all | any", "all",
     "all: allow/deny and auth_basic must both let the request in; any: either suffices"},
    {"set_real_ip_from", LOC_ANY, 1, 1, false, realip_set_from, CONF_LOC, 0, "address | CIDR", "-",
     "trust this proxy: a request from it takes its client address from real_ip_header"},
    {"real_ip_header", LOC_ANY, 1, 1, false, set_real_ip_header, CONF_LOC, 0,
     "field | X-Real-IP | X-Forwarded-For", "X-Real-IP",
     "the request field that holds the client address (the last one in a list)"},
    {"real_ip_recursive", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_LOC(realip_recursive),
     "on | off", "off",
     "in a list, skip trusted addresses from the right and take the first other one"},
    {"proxy_redirect", LOC_ANY, 1, 2, false, set_proxy_redirect, CONF_LOC, 0,
     "default | off | redirect replacement", "default",
     "rewrite Location and Refresh of upstream responses: default maps \"http://<proxy_pass "
     "host and URI>\" to the location's prefix; a prefix (variables allowed) or ~regex / "
     "~*regex ($1.. in the replacement); several: the first match wins"},
    {"absolute_redirect", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_LOC(absolute_redirect),
     "on | off", "on",
     "make the Location of local redirects (return, rewrite, error_page) and of proxy_redirect "
     "results absolute when it starts with /"},
    {"port_in_redirect", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_LOC(port_in_redirect),
     "on | off", "on", "put the listening port in absolute redirects when it is not 80/443"},
    {"server_name_in_redirect", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(server_name_in_redirect), "on | off", "off",
     "use the server's first server_name in absolute redirects instead of the Host field"},
    {"proxy_buffers", LOC_ANY, 2, 2, false, set_proxy_buffers, CONF_LOC, 0, "number size", "8 8k",
     "response bytes read ahead of a slow client in memory (number x size); beyond them "
     "the response goes to a file (proxy_max_temp_file_size)"},
    {"proxy_busy_buffers_size", LOC_ANY, 1, 1, false, cf_set_size, CONF_LOC,
     OFF_LOC(busy_buffers_size), "size", "16k",
     "accepted for nginx configs; no effect (the client queue is bounded by proxy_buffers as "
     "a whole)"},
    {"proxy_max_temp_file_size", LOC_ANY, 1, 1, false, cf_set_size, CONF_LOC,
     OFF_LOC(max_temp_file_size), "size", "1024m",
     "with proxy_buffering on: how much of a response a slow client has not taken yet may go "
     "to an unnamed file in proxy_temp_path, so the upstream connection is freed early "
     "(0: none, the upstream waits for the client)"},
    {"proxy_temp_path", LOC_ANY, 1, 4, false, set_temp_path, CONF_LOC, OFF_LOC(proxy_temp_path),
     "path [level1 [level2 [level3]]]", "/tmp",
     "directory for responses buffered to files (unnamed files: levels are accepted and unused)"},
    {"proxy_temp_file_write_size", LOC_ANY, 1, 1, false, cf_set_size, CONF_LOC,
     OFF_LOC(temp_file_write_size), "size", "16k", "accepted for nginx configs; no effect"},
    {"proxy_buffer_size", LOC_ANY, 1, 1, false, cf_set_size, CONF_LOC, OFF_LOC(proxy_buffer_size),
     "size", "16k", "response bytes read ahead of the client before reading stops"},
    {"proxy_intercept_errors", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_LOC(intercept_errors), "on | off", "off",
     "apply error_page to upstream responses of status >= 300"},
    {"proxy_next_upstream", LOC_ANY, 1, CF_ARGS_ANY, false, set_next_upstream, CONF_LOC, 0,
     "error | timeout | invalid_header | http_500 | http_502 | http_503 | http_504 | http_429 | "
     "non_idempotent | off ...",
     "error timeout", "when to try the next server (never once bytes reached the client)"},
    {"proxy_next_upstream_tries", LOC_ANY, 1, 1, false, cf_set_int, CONF_LOC,
     OFF_LOC(next_upstream_tries), "number", "0", "tries at most (0: every server once)"},
    {"proxy_next_upstream_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_LOC(next_upstream_timeout_ms), "time", "0", "time for all tries (0: no limit)"},
    {"client_max_body_size", LOC_ANY, 1, 1, false, cf_set_size, CONF_LOC,
     OFF_LOC(client_max_body_size), "size", "1m",
     "largest request body (413 above it; 0: no limit)"},
    {"client_body_buffer_size", LOC_ANY, 1, 1, false, cf_set_size, CONF_LOC,
     OFF_LOC(client_body_buffer_size), "size", "16k",
     "request body held in memory; with proxy_request_buffering on the rest goes to a file in "
     "client_body_temp_path, otherwise it is streamed upstream"},
    {"client_body_temp_path", LOC_ANY, 1, 4, false, set_temp_path, CONF_LOC,
     OFF_LOC(body_temp_path), "path [level1 [level2 [level3]]]", "/tmp",
     "directory for request bodies larger than client_body_buffer_size while "
     "proxy_request_buffering is on (unnamed files: levels are accepted and unused)"},
    {"client_body_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_LOC(client_body_timeout_ms), "time", "60s",
     "longest silence between two reads of the request body (408)"},
    {"keepalive_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_LOC(keepalive_timeout_ms), "time", "75s",
     "how long an idle client connection stays open (0 disables keep-alive)"},
    {"keepalive_requests", LOC_ANY, 1, 1, false, cf_set_int, CONF_LOC, OFF_LOC(keepalive_requests),
     "number", "1000", "requests served on one client connection before it is closed"},
    {"send_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC, OFF_LOC(send_timeout_client_ms),
     "time", "60s", "longest stall between two writes to the client"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

static const struct cf_module core_cf_module = {"core", core_directives};
static const struct cf_module http_cf_module = {"http", http_directives};

void conf_register_all(void)
{
    static const struct cf_module *const mods[] = {
        &core_cf_module,     &http_cf_module,    &ssl_cf_module,       &h2_cf_module,
        &ups_cf_module,      &check_cf_module,   &cache_cf_module,     &static_cf_module,
        &compress_cf_module, &limit_cf_module,   &admin_cf_module,     &cookie_cf_module,
        &authreq_cf_module,  &referer_cf_module, &subfilter_cf_module, &securelink_cf_module,
        &ofcache_cf_module,
    };
    cf_register(mods, sizeof(mods) / sizeof(mods[0]));
}

void conf_docs(FILE *out)
{
    cf_docs_markdown(out);
}

/* ---- finalisation ---- */

/* Regex named groups: (?<name>..), (?P<name>..), (?'name'..). */
static int collect_names(struct arena *a, const char *re, struct load_state *ls)
{
    for (const char *p = re; (p = strstr(p, "(?")); p += 2) {
        const char *s = p + 2;
        char close;
        if (*s == 'P' && s[1] == '<')
            s += 2, close = '>';
        else if (*s == '<' && s[1] != '=' && s[1] != '!')
            s += 1, close = '>';
        else if (*s == '\'')
            s += 1, close = '\'';
        else
            continue;
        const char *e = strchr(s, close);
        if (!e)
            continue;
        char *nm = arena_strndup(a, s, (size_t)(e - s));
        if (!nm)
            return -1;
        const char **nv = arena_alloc(a, (ls->ncapture_names + 2) * sizeof(*nv));
        if (!nv)
            return -1;
        if (ls->ncapture_names)
            memcpy(nv, ls->capture_names, ls->ncapture_names * sizeof(*nv));
        nv[ls->ncapture_names++] = nm;
        nv[ls->ncapture_names] = NULL;
        ls->capture_names = nv;
    }
    return 0;
}

static int scan_regexes(struct arena *a, const struct cf_node *n, struct load_state *ls)
{
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if (strcmp(c->name, "location") == 0) {
            for (size_t i = 0; i < c->nargs; i++)
                if (collect_names(a, c->args[i], ls) < 0)
                    return -1;
        } else if (strcmp(c->name, "rewrite") == 0 || strcmp(c->name, "if") == 0 ||
                   (strcmp(c->name, "proxy_redirect") == 0 && c->nargs == 2)) {
            for (size_t i = 0; i < c->nargs; i++)
                if (collect_names(a, c->args[i], ls) < 0)
                    return -1;
        } else if (strcmp(c->name, "map") == 0) {
            for (const struct cf_node *k = c->children; k; k = k->next)
                if (k->name[0] == '~' && collect_names(a, k->name, ls) < 0)
                    return -1;
        } else if (strcmp(c->name, "server_name") == 0) {
            for (size_t i = 0; i < c->nargs; i++)
                if (c->args[i][0] == '~' && collect_names(a, c->args[i], ls) < 0)
                    return -1;
        }
        if (c->is_block && scan_regexes(a, c, ls) < 0)
            return -1;
    }
    return 0;
}

static struct ups_group *find_group(struct load_state *ls, const char *name)
{
    for (size_t i = 0; i < ls->ngroups; i++)
        if (strcmp(ls->groups[i]->name, name) == 0)
            return ls->groups[i];
    return NULL;
}

static int finalize_location(struct snapshot *s, struct load_state *ls, struct location *loc,
                             const struct loc_conf *parent, char *err, size_t errlen)
{
    struct loc_conf *lc = loc->conf;
    loc_conf_merge(lc, parent);
    if (cache_loc_conf_finish(&s->arena, &lc->cache, err, errlen) < 0)
        return -1;
    if (lc->pass && !lc->pass->dynamic && !lc->pass->group) {
        struct proxy_pass *pp = lc->pass;
        pp->group = find_group(ls, pp->host);
        if (!pp->group) {
            /* host[:port] of its own: an implicit one-server group */
            struct ups_group *g = arena_calloc(&s->arena, sizeof(*g));
            const char *msg = NULL;
            const char *hp = pp->host;
            const char *colon = strrchr(hp, ':');
            if (pp->is_https && (!colon || strchr(colon, ']'))) {
                /* https:// without a port: 443, not the group's default 80 */
                size_t hl = strlen(hp);
                char *p443 = arena_alloc(&s->arena, hl + 5);
                if (p443)
                    snprintf(p443, hl + 5, "%s:443", hp);
                hp = p443;
            }
            if (!g || !hp || ups_group_implicit(&s->arena, hp, g, &msg) < 0) {
                snprintf(err, errlen, "%s:%d: host not found in upstream \"%s\" (%s)", lc->file,
                         lc->line, pp->host, msg ? msg : "out of memory");
                return -1;
            }
            struct ups_group **slot = arena_push(&s->arena, (void **)&ls->groups, &ls->ngroups,
                                                 &ls->cap_groups, sizeof(*slot));
            if (!slot)
                return -1;
            g->id = ls->ngroups - 1;
            *slot = g;
            pp->group = g;
        }
        if ((loc->match == LOC_REGEX || loc->match == LOC_REGEX_CI || loc->match == LOC_NAMED) &&
            pp->has_uri) {
            snprintf(err, errlen,
                     "%s:%d: \"proxy_pass\" cannot have URI part in location given by regular "
                     "expression, or inside named location",
                     lc->file, lc->line);
            return -1;
        }
    }
    if (check_attach(s, loc, err, errlen) < 0)
        return -1;
    for (size_t i = 0; i < loc->nchildren; i++)
        if (finalize_location(s, ls, loc->children[i], lc, err, errlen) < 0)
            return -1;
    return 0;
}

static int build_listens(struct snapshot *s, struct load_state *ls, char *err, size_t errlen)
{
    /* servers without listen get *:80 (nginx's default as root) */
    static struct listen_conf dflt;
    const char *msg;
    if (dflt.text[0] == '\0') {
        net_addr_parse("0.0.0.0:80", 80, false, &dflt.addr, &msg);
        net_addr_format(&dflt.addr, dflt.text, sizeof(dflt.text));
        dflt.backlog = 511;
    }
    size_t cap = 0;
    for (size_t i = 0; i < ls->nservers; i++)
        cap += ls->servers[i]->nlistens ? ls->servers[i]->nlistens : 1;
    s->listens = arena_calloc(&s->arena, (cap ? cap : 1) * sizeof(*s->listens));
    if (!s->listens)
        return -1;
    for (size_t i = 0; i < ls->nservers; i++) {
        struct srv_conf *sc = ls->servers[i];
        size_t nl = sc->nlistens ? sc->nlistens : 1;
        for (size_t k = 0; k < nl; k++) {
            const struct listen_conf *l = sc->nlistens ? &sc->listens[k] : &dflt;
            struct listen_set *set = NULL;
            for (size_t j = 0; j < s->nlistens; j++)
                if (net_addr_equal(&s->listens[j].addr, &l->addr))
                    set = &s->listens[j];
            if (!set) {
                set = &s->listens[s->nlistens++];
                set->addr = l->addr;
                memcpy(set->text, l->text, sizeof(set->text));
                set->servers = arena_calloc(&s->arena, ls->nservers * sizeof(*set->servers));
                if (!set->servers)
                    return -1;
            }
            if (l->backlog != 511 || !set->backlog)
                set->backlog = l->backlog;
            set->reuseport |= l->reuseport;
            if (set->nservers && set->ssl != l->ssl) {
                snprintf(err, errlen, "%s:%d: %s is both \"ssl\" and not \"ssl\" in listen",
                         l->file, l->line, l->text);
                return -1;
            }
            set->ssl = l->ssl;
            set->http2 |= l->http2;
            set->h2c_only |= l->h2c_only;
            set->proxy_protocol |= l->proxy_protocol;
            if (l->default_server) {
                if (set->dflt) {
                    snprintf(err, errlen, "%s:%d: a duplicate default server for %s", l->file,
                             l->line, l->text);
                    return -1;
                }
                set->dflt = sc;
            }
            bool dup = false;
            for (size_t j = 0; j < set->nservers; j++)
                dup |= set->servers[j] == sc;
            if (!dup)
                set->servers[set->nservers++] = sc;
        }
    }
    for (size_t j = 0; j < s->nlistens; j++) {
        struct listen_set *set = &s->listens[j];
        struct vhost **vh = arena_alloc(&s->arena, set->nservers * sizeof(*vh));
        if (!vh)
            return -1;
        int dflt_idx = -1;
        for (size_t i = 0; i < set->nservers; i++) {
            vh[i] = &set->servers[i]->vhost;
            if (set->servers[i] == set->dflt)
                dflt_idx = (int)i;
        }
        if (!set->dflt)
            set->dflt = set->servers[0];
        char msg2[256];
        set->vhosts =
            router_vhosts_build(&s->arena, vh, set->nservers, dflt_idx, msg2, sizeof(msg2));
        if (!set->vhosts) {
            snprintf(err, errlen, "%s: %s", set->text, msg2);
            return -1;
        }
    }
    return 0;
}

static int finalize(struct snapshot *s, struct load_state *ls, char *err, size_t errlen)
{
    struct main_conf *m = &s->main;
    if (m->worker_shutdown_timeout_ms == CF_UNSET_MSEC)
        m->worker_shutdown_timeout_ms = 10000;
    if (m->worker_connections == CF_UNSET_INT)
        m->worker_connections = 10240;
    if (m->worker_processes < 0)
        m->worker_processes = 1;
    if (m->multi_accept == CF_UNSET_FLAG)
        m->multi_accept = 0;
    if (limits_finish(s, err, errlen) < 0)
        return -1;
    loc_conf_defaults(s->http_lc);
    for (size_t i = 0; i < ls->nservers; i++) {
        struct srv_conf *sc = ls->servers[i];
        loc_conf_merge(sc->lc, s->http_lc);
        if (cache_loc_conf_finish(&s->arena, &sc->lc->cache, err, errlen) < 0)
            return -1;
        if (sc->client_header_timeout_ms == CF_UNSET_MSEC)
            sc->client_header_timeout_ms = s->http_srv_defaults.client_header_timeout_ms;
        if (sc->client_header_buffer_size == CF_UNSET_SIZE)
            sc->client_header_buffer_size = s->http_srv_defaults.client_header_buffer_size;
        if (sc->large_header_buffers_num == 0) {
            sc->large_header_buffers_num = s->http_srv_defaults.large_header_buffers_num;
            sc->large_header_buffers_size = s->http_srv_defaults.large_header_buffers_size;
        }
        if (sc->merge_slashes == CF_UNSET_FLAG)
            sc->merge_slashes = s->http_srv_defaults.merge_slashes;
        if (sc->underscores_in_headers == CF_UNSET_FLAG)
            sc->underscores_in_headers = 0;
        for (size_t k = 0; k < sc->nlocs; k++)
            if (finalize_location(s, ls, sc->locs[k], sc->lc, err, errlen) < 0)
                return -1;
        char msg[256];
        sc->locset = router_locations_build(&s->arena, sc->locs, sc->nlocs, msg, sizeof(msg));
        if (!sc->locset) {
            snprintf(err, errlen, "%s:%d: %s", sc->file, sc->line, msg);
            return -1;
        }
        sc->vhost.names = sc->names;
        sc->vhost.nnames = sc->nnames;
        sc->vhost.locations = sc->locset;
        sc->vhost.conf = sc;
    }
    s->servers = ls->servers;
    s->nservers = ls->nservers;
    s->formats = ls->formats;
    s->nformats = ls->nformats;
    s->all_logs = ls->logs;
    s->nall_logs = ls->nlogs;
    if (build_listens(s, ls, err, errlen) < 0)
        return -1;
    h2_conf_finalize(s);
    if (conf_tls_build(s, err, errlen) < 0)
        return -1;
    s->groups = ls->groups;
    s->ngroups = ls->ngroups;
    for (size_t i = 0; i < s->ngroups; i++)
        ups_group_inherit_resolver(s->groups[i], s->http_lc->resolver,
                                   s->http_lc->resolver_timeout_ms);
    return 0;
}

static void release_regexes(struct location **locs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        router_location_deinit(locs[i]);
}

struct snapshot *conf_load(const char *path, const struct snapshot *reuse, char *err, size_t errlen)
{
    static _Atomic uint64_t generation;
    struct snapshot *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    arena_init(&s->arena, 64 * 1024, 0);
    s->generation = ++generation;
    struct load_state ls = {.snap = s};
    s->path = arena_strdup(&s->arena, path);
    struct cf_node *root = cf_parse_file(&s->arena, path, err, errlen);
    if (!root)
        goto fail;
    if (scan_regexes(&s->arena, root, &ls) < 0)
        goto oom;
    size_t nmaps;
    const char **map_var_names = map_prescan(s, root, &nmaps);
    if (!map_var_names)
        goto oom;
    vars_set_map_names(map_var_names);
    size_t nuser;
    const char **user_var_names = rw_prescan(s, root, &nuser);
    if (!user_var_names)
        goto oom;
    vars_set_user_names(user_var_names);

    s->main.worker_processes = -1;
    s->main.worker_shutdown_timeout_ms = CF_UNSET_MSEC;
    s->main.worker_connections = CF_UNSET_INT;
    s->main.worker_rlimit_nofile = CF_UNSET_INT;
    s->main.multi_accept = CF_UNSET_FLAG;
    s->main.error_log_level = LOG_ERR;
    s->http_lc = arena_alloc(&s->arena, sizeof(*s->http_lc));
    if (!s->http_lc)
        goto oom;
    loc_conf_init(s->http_lc);
    s->http_srv_defaults.client_header_timeout_ms = CF_UNSET_MSEC;
    s->http_srv_defaults.client_header_buffer_size = CF_UNSET_SIZE;
    s->http_srv_defaults.merge_slashes = CF_UNSET_FLAG;
    ssl_srv_conf_init(&s->http_srv_defaults.ssl);

    /* the predefined "combined" format */
    {
        struct cf_ctx cx0 = {.arena = &s->arena, .err = err, .errlen = errlen, .user = &ls};
        struct cf_node fake = {.name = "log_format", .file = path, .line = 0};
        char *args[] = {"combined",
                        "$remote_addr - $remote_user [$time_local] \"$request\" $status "
                        "$body_bytes_sent \"$http_referer\" \"$http_user_agent\""};
        fake.args = args;
        fake.nargs = 2;
        if (set_log_format(&cx0, &fake, NULL, NULL) < 0)
            goto fail;
    }

    struct cf_ctx cx = {
        .arena = &s->arena,
        .err = err,
        .errlen = errlen,
        .context = CF_MAIN,
        .user = &ls,
    };
    cx.confs[CONF_MAIN] = &s->main;
    cx.confs[CONF_SRV] = &s->http_srv_defaults;
    int applied = cf_apply_block(&cx, root);
    vars_set_map_names(NULL);
    vars_set_user_names(NULL);
    if (applied < 0)
        goto fail;
    if (s->http_srv_defaults.client_header_timeout_ms == CF_UNSET_MSEC)
        s->http_srv_defaults.client_header_timeout_ms = 60000;
    if (s->http_srv_defaults.client_header_buffer_size == CF_UNSET_SIZE)
        s->http_srv_defaults.client_header_buffer_size = 1024;
    if (s->http_srv_defaults.large_header_buffers_num == 0) {
        s->http_srv_defaults.large_header_buffers_num = 4;
        s->http_srv_defaults.large_header_buffers_size = 8192;
    }
    if (s->http_srv_defaults.merge_slashes == CF_UNSET_FLAG)
        s->http_srv_defaults.merge_slashes = 1;
    if (finalize(s, &ls, err, errlen) < 0)
        goto fail;
    if (accesslog_open_all(s, reuse, err, errlen) < 0)
        goto fail;
    return s;
oom:
    snprintf(err, errlen, "%s: out of memory", path);
fail:
    vars_set_map_names(NULL);
    vars_set_user_names(NULL);
    maps_free(s);
    rw_free(s);
    limits_free(s);
    jwt_free(s);
    conf_tls_free(s);
    if (s->http_lc)
        cache_conf_release(&s->http_lc->cache);
    if (ls.cur_srv)
        release_regexes(ls.cur_srv->locs, ls.cur_srv->nlocs);
    for (size_t i = 0; i < ls.nservers; i++)
        release_regexes(ls.servers[i]->locs, ls.servers[i]->nlocs);
    for (size_t j = 0; j < s->nlistens; j++)
        router_vhosts_free(s->listens[j].vhosts);
    arena_deinit(&s->arena);
    free(s);
    return NULL;
}

const struct listen_set *snapshot_find_listen(const struct snapshot *s,
                                              const struct net_addr *local)
{
    for (size_t i = 0; i < s->nlistens; i++)
        if (net_addr_equal(&s->listens[i].addr, local))
            return &s->listens[i];
    for (size_t i = 0; i < s->nlistens; i++)
        if (net_addr_port(&s->listens[i].addr) == net_addr_port(local))
            return &s->listens[i];
    return NULL;
}

void snapshot_unref(struct snapshot *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    accesslog_close_all(s, NULL);
    maps_free(s);
    rw_free(s);
    limits_free(s);
    jwt_free(s);
    conf_tls_free(s);
    cache_conf_release(&s->http_lc->cache);
    for (size_t i = 0; i < s->ngroups; i++)
        ups_group_release(s->groups[i]);
    for (size_t i = 0; i < s->nservers; i++)
        release_regexes(s->servers[i]->locs, s->servers[i]->nlocs);
    for (size_t j = 0; j < s->nlistens; j++)
        router_vhosts_free(s->listens[j].vhosts);
    arena_deinit(&s->arena);
    free(s);
}
