/* proxy_redirect: rewrite the Location and Refresh fields of upstream
 * responses, as nginx's proxy module does. */
#include "proxy/redirect.h"

#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/rewrite.h"
#include "proxy/vars.h"
#include "router/router.h"

struct redirect_rule {
    bool is_default; /* proxy_redirect default: from proxy_pass and the location */
    pcre2_code *re;  /* ~ / ~*: captures for the replacement */
    struct tmpl *from;
    struct tmpl *to;
};

/* The implicit rule where no proxy_redirect is written (nginx's default). */
static const struct redirect_rule default_rule = {.is_default = true};
const struct redirect_rule *const redirect_default_rules = &default_rule;

int redirect_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                       struct loc_conf *lc)
{
    if (!lc->redirect_set) { /* this level replaces what it would inherit */
        lc->redirect_set = true;
        lc->redirects = NULL;
        lc->nredirects = 0;
        lc->redirects_off = false;
    }
    if (n->nargs == 1 && (strcmp(n->args[0], "off") == 0 || strcmp(n->args[0], "false") == 0)) {
        if (lc->nredirects)
            return cf_error(cx, n,
                            "\"proxy_redirect off\" with other proxy_redirect "
                            "directives at the same level");
        lc->redirects_off = true;
        return 0;
    }
    if (lc->redirects_off)
        return cf_error(cx, n,
                        "\"proxy_redirect off\" with other proxy_redirect directives at "
                        "the same level");
    if (n->nargs == 1 && strcmp(n->args[0], "default") != 0)
        return cf_error(cx, n, "invalid parameter \"%s\"", n->args[0]);
    struct redirect_rule *nv = arena_alloc(cx->arena, (lc->nredirects + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (lc->nredirects)
        memcpy(nv, lc->redirects, lc->nredirects * sizeof(*nv));
    struct redirect_rule *r = &nv[lc->nredirects];
    memset(r, 0, sizeof(*r));
    if (n->nargs == 1) {
        r->is_default = true;
    } else {
        const char *from = n->args[0];
        if (from[0] == '~') {
            bool ci = from[1] == '*';
            r->re = rw_regex(cx, n, s, from + 1 + ci, ci);
            if (!r->re)
                return -1;
        } else if (!(r->from = conf_tmpl(cx, n, from))) {
            return -1;
        }
        if (!(r->to = conf_tmpl(cx, n, n->args[1])))
            return -1;
    }
    lc->redirects = nv;
    lc->nredirects++;
    return 0;
}

static struct slice eval(struct exchange *ex, const struct tmpl *t)
{
    return t->is_const ? t->parts[0].lit : tmpl_eval(ex, t, ESC_NONE);
}

static struct slice join3(struct exchange *ex, struct slice a, struct slice b, struct slice c)
{
    char *p = arena_alloc(&ex->arena, a.len + b.len + c.len + 1);
    if (!p)
        return SLICE_NULL;
    if (a.len)
        memcpy(p, a.p, a.len);
    if (b.len)
        memcpy(p + a.len, b.p, b.len);
    if (c.len)
        memcpy(p + a.len + b.len, c.p, c.len);
    p[a.len + b.len + c.len] = '\0';
    return slice_make(p, a.len + b.len + c.len);
}

/* `default`: "scheme://host[URI of proxy_pass, or /]" -> the location's
 * prefix (or "/"). Not for proxy_pass with variables. */
static bool apply_default(struct exchange *ex, struct slice v, struct slice *out)
{
    const struct proxy_pass *pp = ex->lc->pass;
    if (!pp || pp->dynamic || !pp->host)
        return false;
    struct slice scheme = pp->is_https ? SLICE_LIT("https://") : SLICE_LIT("http://");
    struct slice host = slice_cstr(pp->host);
    struct slice uri = pp->has_uri ? pp->uri : SLICE_LIT("/");
    if (v.len < scheme.len + host.len + uri.len || memcmp(v.p, scheme.p, scheme.len) ||
        memcmp(v.p + scheme.len, host.p, host.len) ||
        memcmp(v.p + scheme.len + host.len, uri.p, uri.len))
        return false;
    struct slice to = SLICE_LIT("/");
    const struct location *loc = ex->loc;
    if (pp->has_uri && loc &&
        (loc->match == LOC_PREFIX || loc->match == LOC_PREFIX_NOREGEX || loc->match == LOC_EXACT))
        to = slice_make(loc->pattern, loc->pattern_len);
    size_t used = scheme.len + host.len + uri.len;
    *out = join3(ex, to, slice_make(v.p + used, v.len - used), SLICE_NULL);
    return out->p != NULL;
}

static bool apply_rule(struct exchange *ex, const struct redirect_rule *r, struct slice v,
                       struct slice *out)
{
    if (r->is_default)
        return apply_default(ex, v, out);
    if (r->re) {
        struct route_captures caps = {0};
        if (!router_regex_match(r->re, v, &caps))
            return false;
        struct route_captures saved = ex->caps;
        ex->caps = caps; /* $1.. in the replacement */
        *out = eval(ex, r->to);
        ex->caps = saved;
        return true;
    }
    struct slice from = eval(ex, r->from);
    if (from.len > v.len || memcmp(v.p, from.p, from.len) != 0)
        return false;
    *out = join3(ex, eval(ex, r->to), slice_make(v.p + from.len, v.len - from.len), SLICE_NULL);
    return out->p != NULL;
}

bool proxy_redirect_apply(struct exchange *ex, struct slice value, bool refresh, struct slice *out)
{
    const struct loc_conf *lc = ex->lc;
    if (!lc || !lc->nredirects || lc->redirects_off)
        return false;
    size_t start = 0;
    if (refresh) { /* "5; url=http://..." */
        const char *u = NULL;
        for (size_t i = 0; i + 4 <= value.len; i++)
            if (strncasecmp(value.p + i, "url=", 4) == 0) {
                u = value.p + i + 4;
                break;
            }
        if (!u)
            return false;
        start = (size_t)(u - value.p);
    }
    struct slice v = slice_make(value.p + start, value.len - start);
    for (size_t i = 0; i < lc->nredirects; i++) {
        struct slice r;
        if (!apply_rule(ex, &lc->redirects[i], v, &r))
            continue;
        *out = join3(ex, slice_make(value.p, start), r, SLICE_NULL);
        return out->p != NULL;
    }
    return false;
}
