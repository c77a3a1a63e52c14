#include "proxy/referer.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/rewrite.h"
#include "proxy/vars.h"
#include "router/router.h"

/* A server name, "*.example.com", "www.example.*", optionally with a URI
 * prefix ("example.org/galleries/"), or ~regex against what follows the
 * scheme. */
struct referer_pattern {
    pcre2_code *re;
    const char *host; /* lower case, without the '*' part */
    size_t host_len;
    bool lead_star, trail_star;
    const char *uri; /* prefix after the host, or NULL */
    size_t uri_len;
};

void referer_conf_merge(struct referer_conf *c, const struct referer_conf *p)
{
    if (!c->set)
        *c = *p;
}

static int set_valid_referers(struct cf_ctx *cx, const struct cf_node *n,
                              const struct cf_directive *d, void *conf)
{
    (void)d;
    struct referer_conf *c = &((struct loc_conf *)conf)->referers;
    if (c->set)
        return cf_error(cx, n, "\"valid_referers\" directive is duplicate");
    c->set = true;
    struct referer_pattern *v = arena_calloc(cx->arena, n->nargs * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (!strcmp(a, "none")) {
            c->none = true;
            continue;
        }
        if (!strcmp(a, "blocked")) {
            c->blocked = true;
            continue;
        }
        if (!strcmp(a, "server_names")) {
            c->server_names = true;
            continue;
        }
        struct referer_pattern *p = &v[k];
        if (a[0] == '~') {
            bool ci = a[1] == '*';
            if (!(p->re = rw_regex(cx, n, conf_snapshot(cx), a + 1 + ci, ci)))
                return -1;
            k++;
            continue;
        }
        const char *slash = strchr(a, '/');
        size_t hl = slash ? (size_t)(slash - a) : strlen(a);
        const char *h = a;
        if (hl >= 2 && h[0] == '*' && h[1] == '.') {
            p->lead_star = true;
            h++, hl--; /* ".example.com": a subdomain's suffix */
        } else if (hl >= 2 && h[hl - 1] == '*' && h[hl - 2] == '.') {
            p->trail_star = true;
            hl--; /* "www.example.": a prefix */
        }
        if (!hl || memchr(h, '*', hl))
            return cf_error(cx, n, "invalid referer \"%s\"", a);
        char *low = arena_alloc(cx->arena, hl + 1);
        if (!low)
            return cf_error(cx, n, "out of memory");
        for (size_t j = 0; j < hl; j++)
            low[j] = (char)tolower((unsigned char)h[j]);
        low[hl] = '\0';
        p->host = low;
        p->host_len = hl;
        if (slash) {
            p->uri = slash;
            p->uri_len = strlen(slash);
        }
        k++;
    }
    c->v = v;
    c->n = k;
    return 0;
}

#define LOC_ANY (CF_HTTP | CF_SERVER | CF_LOCATION)

static const struct cf_directive referer_directives[] = {
    {"valid_referers", CF_SERVER | CF_LOCATION, 1, CF_ARGS_ANY, false, set_valid_referers, CONF_LOC,
     0, "none | blocked | server_names | string ...", "-",
     "Referer values that make $invalid_referer empty: none (no Referer), blocked (one without "
     "http:// or https://), server_names (a name of this server), a host (\"*.example.com\", "
     "\"www.example.*\") with an optional URI prefix, or ~regex against what follows the "
     "scheme; e.g. if ($invalid_referer) { return 403; }"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module referer_cf_module = {"referer", referer_directives};

static bool host_is(struct slice host, const char *name, size_t len)
{
    return host.len == len && strncasecmp(host.p, name, len) == 0;
}

static bool pattern_ok(const struct referer_pattern *p, struct slice host, struct slice uri)
{
    if (p->lead_star) {
        /* ".example.com": example.com's subdomains (the dot included) */
        if (host.len <= p->host_len ||
            strncasecmp(host.p + host.len - p->host_len, p->host, p->host_len) != 0)
            return false;
    } else if (p->trail_star) {
        if (host.len <= p->host_len || strncasecmp(host.p, p->host, p->host_len) != 0)
            return false;
    } else if (!host_is(host, p->host, p->host_len)) {
        return false;
    }
    return !p->uri || (uri.len >= p->uri_len && memcmp(uri.p, p->uri, p->uri_len) == 0);
}

struct slice referer_invalid(struct exchange *ex)
{
    const struct referer_conf *c = ex->lc ? &ex->lc->referers : NULL;
    if (!c || !c->set)
        return SLICE_NULL;
    bool found;
    struct slice r =
        slice_trim_ows(fields_get(ex->req_fields, ex->nreq_fields, SLICE_LIT("referer"), &found));
    if (!found || !r.len)
        return c->none ? SLICE_NULL : SLICE_LIT("1");
    size_t skip = r.len >= 7 && !strncasecmp(r.p, "http://", 7)    ? 7
                  : r.len >= 8 && !strncasecmp(r.p, "https://", 8) ? 8
                                                                   : 0;
    if (!skip)
        return c->blocked ? SLICE_NULL : SLICE_LIT("1");
    struct slice rest = slice_make(r.p + skip, r.len - skip);
    size_t hl = 0;
    while (hl < rest.len && rest.p[hl] != '/' && rest.p[hl] != ':')
        hl++;
    struct slice host = slice_make(rest.p, hl);
    size_t ue = hl;
    while (ue < rest.len && rest.p[ue] != '/')
        ue++; /* past a port */
    struct slice uri = slice_make(rest.p + ue, rest.len - ue);
    if (c->server_names && ex->srv) {
        for (size_t i = 0; i < ex->srv->nnames; i++) {
            const char *nm = ex->srv->names[i];
            if (nm[0] && nm[0] != '~' && !strchr(nm, '*') && host_is(host, nm, strlen(nm)))
                return SLICE_NULL;
        }
    }
    for (size_t i = 0; i < c->n; i++) {
        const struct referer_pattern *p = &c->v[i];
        if (p->re ? router_regex_match(p->re, rest, &(struct route_captures){0})
                  : pattern_ok(p, host, uri))
            return SLICE_NULL;
    }
    return SLICE_LIT("1");
}
