#include "proxy/cookie.h"

#include <string.h>
#include <strings.h>

#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/rewrite.h"
#include "proxy/vars.h"
#include "router/router.h"

/* proxy_cookie_domain / proxy_cookie_path: `from to` */
struct cookie_rule {
    pcre2_code *re;    /* ~ / ~*: the whole value replaced, $1.. in `to` */
    struct tmpl *from; /* text: domain equal (caseless) / path prefix */
    struct tmpl *to;
};

enum {
    CF_SECURE = 1,
    CF_NOSECURE = 2,
    CF_HTTPONLY = 4,
    CF_NOHTTPONLY = 8,
    CF_SAMESITE = 16, /* with samesite: Strict, Lax or None */
    CF_NOSAMESITE = 32,
};

/* proxy_cookie_flags name|~regex flag... */
struct cookie_flags_rule {
    const char *name; /* exact (case-sensitive, as cookie names are) */
    pcre2_code *re;
    unsigned flags;
    const char *samesite;
};

void cookie_conf_merge(struct cookie_conf *c, const struct cookie_conf *p)
{
    if (!c->domain_set) {
        c->domain = p->domain;
        c->ndomain = p->ndomain;
        c->domain_set = p->domain_set;
    }
    if (!c->path_set) {
        c->path = p->path;
        c->npath = p->npath;
        c->path_set = p->path_set;
    }
    if (!c->flags_set) {
        c->flags = p->flags;
        c->nflags = p->nflags;
        c->flags_set = p->flags_set;
    }
}

static struct cookie_conf *CC(void *conf)
{
    return &((struct loc_conf *)conf)->cookies;
}

static int set_rule(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    struct cookie_conf *c = CC(conf);
    bool domain = !strcmp(d->name, "proxy_cookie_domain");
    bool *set = domain ? &c->domain_set : &c->path_set;
    const struct cookie_rule **v = domain ? &c->domain : &c->path;
    size_t *nv = domain ? &c->ndomain : &c->npath;
    if (n->nargs == 1) {
        if (strcmp(n->args[0], "off") != 0)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[0]);
        if (*nv)
            return cf_error(cx, n, "\"%s off\" with other rules at the same level", d->name);
        *set = true;
        return 0;
    }
    if (*set && !*nv)
        return cf_error(cx, n, "\"%s off\" with other rules at the same level", d->name);
    *set = true;
    struct cookie_rule *r = arena_alloc(cx->arena, (*nv + 1) * sizeof(*r));
    if (!r)
        return cf_error(cx, n, "out of memory");
    if (*nv)
        memcpy(r, *v, *nv * sizeof(*r));
    struct cookie_rule *nr = &r[*nv];
    memset(nr, 0, sizeof(*nr));
    const char *from = n->args[0];
    if (from[0] == '~') {
        bool ci = from[1] == '*' || domain; /* domains match caselessly, as nginx */
        nr->re = rw_regex(cx, n, conf_snapshot(cx), from + 1 + (from[1] == '*'), ci);
        if (!nr->re)
            return -1;
    } else {
        if (domain && from[0] == '.')
            from++; /* ".example.com" names the same domain */
        if (!(nr->from = conf_tmpl(cx, n, from)))
            return -1;
    }
    if (!(nr->to = conf_tmpl(cx, n, n->args[1])))
        return -1;
    *v = r;
    (*nv)++;
    return 0;
}

static int set_flags(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct cookie_conf *c = CC(conf);
    if (n->nargs == 1 && !strcmp(n->args[0], "off")) {
        if (c->nflags)
            return cf_error(cx, n, "\"proxy_cookie_flags off\" with other rules at the same level");
        c->flags_set = true;
        return 0;
    }
    if (n->nargs < 2)
        return cf_error(cx, n, "invalid number of arguments in \"proxy_cookie_flags\"");
    c->flags_set = true;
    struct cookie_flags_rule *r = arena_alloc(cx->arena, (c->nflags + 1) * sizeof(*r));
    if (!r)
        return cf_error(cx, n, "out of memory");
    if (c->nflags)
        memcpy(r, c->flags, c->nflags * sizeof(*r));
    struct cookie_flags_rule *nr = &r[c->nflags];
    memset(nr, 0, sizeof(*nr));
    const char *name = n->args[0];
    if (name[0] == '~') {
        bool ci = name[1] == '*';
        if (!(nr->re = rw_regex(cx, n, conf_snapshot(cx), name + 1 + ci, ci)))
            return -1;
    } else {
        nr->name = name;
    }
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (!strcasecmp(a, "secure"))
            nr->flags |= CF_SECURE;
        else if (!strcasecmp(a, "nosecure"))
            nr->flags |= CF_NOSECURE;
        else if (!strcasecmp(a, "httponly"))
            nr->flags |= CF_HTTPONLY;
        else if (!strcasecmp(a, "nohttponly"))
            nr->flags |= CF_NOHTTPONLY;
        else if (!strcasecmp(a, "nosamesite"))
            nr->flags |= CF_NOSAMESITE;
        else if (!strcasecmp(a, "samesite") || !strcasecmp(a, "samesite=strict")) {
            nr->flags |= CF_SAMESITE;
            nr->samesite = "Strict";
        } else if (!strcasecmp(a, "samesite=lax")) {
            nr->flags |= CF_SAMESITE;
            nr->samesite = "Lax";
        } else if (!strcasecmp(a, "samesite=none")) {
            nr->flags |= CF_SAMESITE;
            nr->samesite = "None";
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    c->flags = r;
    c->nflags++;
    return 0;
}

#define LOC_ANY (CF_HTTP | CF_SERVER | CF_LOCATION)

static const struct cf_directive cookie_directives[] = {
    {"proxy_cookie_domain", LOC_ANY, 1, 2, false, set_rule, CONF_LOC, 0, "off | domain replacement",
     "off",
     "rewrite the Domain attribute of Set-Cookie fields from upstreams: a domain (caseless, a "
     "leading dot ignored) or ~regex, replaced whole (variables and $1.. allowed); first match "
     "wins"},
    {"proxy_cookie_path", LOC_ANY, 1, 2, false, set_rule, CONF_LOC, 0, "off | path replacement",
     "off",
     "rewrite the Path attribute of Set-Cookie fields: a prefix (replaced by replacement) or "
     "~regex / ~*regex (the whole path replaced); first match wins"},
    {"proxy_cookie_flags", LOC_ANY, 1, 8, false, set_flags, CONF_LOC, 0,
     "off | cookie|~regex [secure] [httponly] [samesite=strict|lax|none] [nosecure] "
     "[nohttponly] [nosamesite]",
     "off",
     "add or remove the Secure, HttpOnly and SameSite flags of cookies by name; the first "
     "rule whose name matches applies"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module cookie_cf_module = {"cookies", cookie_directives};

/* ---- rewriting ---- */

static struct slice eval(struct exchange *ex, const struct tmpl *t)
{
    return tmpl_eval(ex, t, ESC_NONE);
}

/* A rule's replacement for an attribute value, if one matches. */
static bool apply_rules(struct exchange *ex, const struct cookie_rule *v, size_t n, bool domain,
                        struct slice val, struct slice *out)
{
    struct slice cmp = val;
    if (domain && cmp.len && cmp.p[0] == '.')
        cmp = slice_make(cmp.p + 1, cmp.len - 1);
    for (size_t i = 0; i < n; i++) {
        const struct cookie_rule *r = &v[i];
        if (r->re) {
            struct route_captures caps = {0};
            if (!router_regex_match(r->re, val, &caps))
                continue;
            struct route_captures saved = ex->caps;
            ex->caps = caps;
            *out = eval(ex, r->to);
            ex->caps = saved;
            return true;
        }
        struct slice from = eval(ex, r->from);
        if (domain) {
            if (!slice_eq_ci(cmp, from))
                continue;
            struct slice to = eval(ex, r->to);
            if (cmp.p == val.p || !to.len) {
                *out = to;
                return true;
            }
            char *p = arena_alloc(&ex->arena, to.len + 1); /* the leading dot stays, as nginx */
            if (!p)
                return false;
            p[0] = '.';
            memcpy(p + 1, to.p, to.len);
            *out = slice_make(p, to.len + 1);
            return true;
        }
        if (from.len > val.len || memcmp(val.p, from.p, from.len) != 0)
            continue;
        struct slice to = eval(ex, r->to);
        char *p = arena_alloc(&ex->arena, to.len + val.len - from.len + 1);
        if (!p)
            return false;
        memcpy(p, to.p, to.len);
        memcpy(p + to.len, val.p + from.len, val.len - from.len);
        *out = slice_make(p, to.len + val.len - from.len);
        return true;
    }
    return false;
}

static const struct cookie_flags_rule *flags_for(struct exchange *ex, const struct cookie_conf *c,
                                                 struct slice name)
{
    for (size_t i = 0; i < c->nflags; i++) {
        const struct cookie_flags_rule *r = &c->flags[i];
        if (r->re ? router_regex_match(r->re, name, &(struct route_captures){0})
                  : slice_eq(name, slice_cstr(r->name)))
            return r;
    }
    (void)ex;
    return NULL;
}

static void put(char *out, size_t *o, struct slice s)
{
    memcpy(out + *o, s.p, s.len);
    *o += s.len;
}

struct slice cookie_rewrite(struct exchange *ex, struct slice v)
{
    const struct cookie_conf *c = &ex->lc->cookies;
    const char *semi = memchr(v.p, ';', v.len);
    struct slice pair = slice_trim_ows(slice_make(v.p, semi ? (size_t)(semi - v.p) : v.len));
    const char *eq = memchr(pair.p, '=', pair.len);
    struct slice name = slice_trim_ows(slice_make(pair.p, eq ? (size_t)(eq - pair.p) : pair.len));
    const struct cookie_flags_rule *fr = c->nflags ? flags_for(ex, c, name) : NULL;
    /* attributes: as they were, unless a rule rewrites or drops them */
    size_t cap = v.len + 64, o = 0;
    bool changed = false, has_secure = false, has_httponly = false;
    struct slice attrs[32];
    size_t na = 0;
    for (const char *p = semi; p && p < v.p + v.len;) {
        if (na == 32)
            return v; /* more attributes than any real cookie: left as it is */
        const char *next = memchr(p + 1, ';', (size_t)(v.p + v.len - p - 1));
        struct slice a = slice_trim_ows(
            slice_make(p + 1, next ? (size_t)(next - p - 1) : (size_t)(v.p + v.len - p - 1)));
        p = next;
        if (!a.len)
            continue;
        const char *aeq = memchr(a.p, '=', a.len);
        struct slice an = slice_trim_ows(slice_make(a.p, aeq ? (size_t)(aeq - a.p) : a.len));
        struct slice av =
            aeq ? slice_trim_ows(slice_make(aeq + 1, a.len - (size_t)(aeq - a.p) - 1)) : SLICE_NULL;
        bool is_domain = slice_eq_lit_ci(an, "domain"), is_path = slice_eq_lit_ci(an, "path");
        struct slice nv;
        if ((is_domain && c->ndomain && apply_rules(ex, c->domain, c->ndomain, true, av, &nv)) ||
            (is_path && c->npath && apply_rules(ex, c->path, c->npath, false, av, &nv))) {
            changed = true;
            if (!nv.len && is_domain)
                continue; /* an empty domain: the attribute goes (host-only cookie) */
            char *na_p = arena_alloc(&ex->arena, an.len + 1 + nv.len);
            if (!na_p)
                return v;
            memcpy(na_p, an.p, an.len);
            na_p[an.len] = '=';
            memcpy(na_p + an.len + 1, nv.p, nv.len);
            a = slice_make(na_p, an.len + 1 + nv.len);
            cap += nv.len + 1;
        }
        if (fr) {
            bool sec = slice_eq_lit_ci(an, "secure"), ho = slice_eq_lit_ci(an, "httponly");
            bool ss = slice_eq_lit_ci(an, "samesite");
            if ((sec && (fr->flags & CF_NOSECURE)) || (ho && (fr->flags & CF_NOHTTPONLY)) ||
                (ss && (fr->flags & (CF_NOSAMESITE | CF_SAMESITE)))) {
                changed = true;
                continue; /* removed, or replaced below */
            }
            has_secure |= sec;
            has_httponly |= ho;
        }
        attrs[na++] = a;
    }
    if (fr) {
        if (((fr->flags & CF_SECURE) && !has_secure) ||
            ((fr->flags & CF_HTTPONLY) && !has_httponly) || (fr->flags & CF_SAMESITE))
            changed = true;
    }
    if (!changed)
        return v;
    char *out = arena_alloc(&ex->arena, cap + 32 * 2);
    if (!out)
        return v;
    put(out, &o, pair);
    for (size_t i = 0; i < na; i++) {
        put(out, &o, SLICE_LIT("; "));
        put(out, &o, attrs[i]);
    }
    if (fr && (fr->flags & CF_SECURE) && !has_secure)
        put(out, &o, SLICE_LIT("; Secure"));
    if (fr && (fr->flags & CF_HTTPONLY) && !has_httponly)
        put(out, &o, SLICE_LIT("; HttpOnly"));
    if (fr && (fr->flags & CF_SAMESITE)) {
        put(out, &o, SLICE_LIT("; SameSite="));
        put(out, &o, slice_cstr(fr->samesite));
    }
    return slice_make(out, o);
}
