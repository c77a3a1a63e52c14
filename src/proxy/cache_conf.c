/* The proxy_cache* directives (nginx names and syntax) into struct
 * cache_loc_conf; zones are resolved when a location is finished. */
#include "proxy/cache_conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http.h"
#include "proxy/conf.h"
#include "proxy/vars.h"

#define CCONF(lc) (&((struct loc_conf *)(lc))->cache)

void cache_loc_conf_init(struct cache_loc_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->min_uses = CF_UNSET_INT;
    c->convert_head = CF_UNSET_FLAG;
    c->revalidate = CF_UNSET_FLAG;
    c->background_update = CF_UNSET_FLAG;
    c->lock = CF_UNSET_FLAG;
    c->lock_timeout_ms = CF_UNSET_MSEC;
    c->lock_age_ms = CF_UNSET_MSEC;
}

#define MERGE(f, unset)                                                                            \
    do {                                                                                           \
        if (c->f == (unset))                                                                       \
            c->f = p->f;                                                                           \
    } while (0)

void cache_loc_conf_merge(struct cache_loc_conf *c, const struct cache_loc_conf *p)
{
    if (!c->set) {
        c->set = p->set;
        c->zone_name = p->zone_name;
        c->file = p->file;
        c->line = p->line;
    }
    if (!c->paths)
        c->paths = p->paths;
    if (!c->key)
        c->key = p->key;
    if (!c->valid_set)
        c->valid = p->valid, c->nvalid = p->nvalid, c->valid_set = p->valid_set;
    if (!c->methods)
        c->methods = p->methods;
    if (!c->bypass_set)
        c->bypass = p->bypass, c->nbypass = p->nbypass, c->bypass_set = p->bypass_set;
    if (!c->no_cache_set)
        c->no_cache = p->no_cache, c->nno_cache = p->nno_cache, c->no_cache_set = p->no_cache_set;
    if (!c->ignore_set)
        c->ignore = p->ignore, c->ignore_set = p->ignore_set;
    if (!c->use_stale_set)
        c->use_stale = p->use_stale, c->use_stale_set = p->use_stale_set;
    MERGE(min_uses, CF_UNSET_INT);
    MERGE(convert_head, CF_UNSET_FLAG);
    MERGE(revalidate, CF_UNSET_FLAG);
    MERGE(background_update, CF_UNSET_FLAG);
    MERGE(lock, CF_UNSET_FLAG);
    MERGE(lock_timeout_ms, CF_UNSET_MSEC);
    MERGE(lock_age_ms, CF_UNSET_MSEC);
}

int cache_loc_conf_finish(struct arena *a, struct cache_loc_conf *c, char *err, size_t errlen)
{
    if (c->min_uses == CF_UNSET_INT)
        c->min_uses = 1;
    if (c->convert_head == CF_UNSET_FLAG)
        c->convert_head = 1;
    if (c->revalidate == CF_UNSET_FLAG)
        c->revalidate = 0;
    if (c->background_update == CF_UNSET_FLAG)
        c->background_update = 0;
    if (c->lock == CF_UNSET_FLAG)
        c->lock = 0;
    if (c->lock_timeout_ms == CF_UNSET_MSEC)
        c->lock_timeout_ms = 5000;
    if (c->lock_age_ms == CF_UNSET_MSEC)
        c->lock_age_ms = 5000;
    if (!c->methods)
        c->methods = (1u << HTTP_M_GET) | (1u << HTTP_M_HEAD);
    if (!c->zone_name)
        return 0;
    if (!c->key) {
        char msg[128];
        c->key = tmpl_compile(a, "$scheme$proxy_host$request_uri", NULL, msg, sizeof(msg));
        if (!c->key) {
            snprintf(err, errlen, "%s:%d: %s", c->file, c->line, msg);
            return -1;
        }
    }
    for (struct cache_path_decl *d = c->paths; d; d = d->next)
        if (strcmp(d->zc.name, c->zone_name) == 0) {
            if (!d->zone) {
                d->zone = cache_zone_get(&d->zc, err, errlen);
                if (!d->zone)
                    return -1;
            }
            c->zone = d->zone;
            return 0;
        }
    snprintf(err, errlen, "%s:%d: \"proxy_cache\" zone \"%s\" is unknown", c->file, c->line,
             c->zone_name);
    return -1;
}

/* ---- setters ---- */

static int set_cache_path(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    struct cache_path_decl *p = arena_calloc(cx->arena, sizeof(*p));
    if (!p)
        return cf_error(cx, n, "out of memory");
    struct cache_zone_conf *z = &p->zc;
    z->path = n->args[0];
    size_t pl = strlen(z->path);
    while (pl > 1 && z->path[pl - 1] == '/')
        ((char *)z->path)[--pl] = 0;
    z->inactive_ms = 600000;
    z->mem_size = 16u << 20;
    z->file = n->file;
    z->line = n->line;
    for (size_t i = 1; i < n->nargs; i++) {
        const char *a = n->args[i];
        uint32_t ms;
        if (strncmp(a, "levels=", 7) == 0) {
            const char *s = a + 7;
            z->nlevels = 0;
            while (*s) {
                if ((*s != '1' && *s != '2') || z->nlevels == 3)
                    return cf_error(cx, n, "invalid \"levels\" \"%s\"", a + 7);
                z->levels[z->nlevels++] = *s++ - '0';
                if (*s == ':' && s[1])
                    s++;
                else if (*s)
                    return cf_error(cx, n, "invalid \"levels\" \"%s\"", a + 7);
            }
        } else if (strncmp(a, "keys_zone=", 10) == 0) {
            const char *colon = strchr(a + 10, ':');
            if (!colon || colon == a + 10 || cf_parse_size(colon + 1, &z->keys_size) < 0 ||
                z->keys_size < 8192)
                return cf_error(cx, n, "invalid keys zone size \"%s\"", a);
            z->name = arena_strndup(cx->arena, a + 10, (size_t)(colon - (a + 10)));
        } else if (strncmp(a, "max_size=", 9) == 0) {
            if (cf_parse_size(a + 9, &z->max_size) < 0)
                return cf_error(cx, n, "invalid max_size value \"%s\"", a);
        } else if (strncmp(a, "min_free=", 9) == 0) {
            if (cf_parse_size(a + 9, &z->min_free) < 0)
                return cf_error(cx, n, "invalid min_free value \"%s\"", a);
        } else if (strncmp(a, "memory=", 7) == 0) {
            if (cf_parse_size(a + 7, &z->mem_size) < 0)
                return cf_error(cx, n, "invalid memory value \"%s\"", a);
        } else if (strncmp(a, "inactive=", 9) == 0) {
            if (cf_parse_msec(a + 9, &ms) < 0 || ms == 0)
                return cf_error(cx, n, "invalid inactive value \"%s\"", a);
            z->inactive_ms = ms;
        } else if (strncmp(a, "use_temp_path=", 14) == 0 || strncmp(a, "loader_", 7) == 0 ||
                   strncmp(a, "manager_", 8) == 0) {
            /* accepted for nginx configs: temp files always live in the
             * cache directory, the loader and eviction run on their own */
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    if (!z->name)
        return cf_error(cx, n, "\"%s\" must have \"keys_zone\" parameter", d->name);
    for (struct cache_path_decl *o = c->paths; o; o = o->next) {
        if (strcmp(o->zc.name, z->name) == 0)
            return cf_error(cx, n, "duplicate zone \"%s\"", z->name);
        if (strcmp(o->zc.path, z->path) == 0)
            return cf_error(cx, n, "duplicate cache path \"%s\"", z->path);
    }
    p->next = c->paths;
    c->paths = p;
    return 0;
}

static int set_cache(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    if (c->set)
        return cf_error(cx, n, "\"proxy_cache\" directive is duplicate");
    c->set = true;
    c->file = n->file;
    c->line = n->line;
    if (strcmp(n->args[0], "off") != 0)
        c->zone_name = n->args[0];
    return 0;
}

static int set_cache_key(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    if (c->key)
        return cf_error(cx, n, "\"proxy_cache_key\" directive is duplicate");
    c->key = conf_tmpl(cx, n, n->args[0]);
    return c->key ? 0 : -1;
}

static int set_cache_valid(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    uint32_t ms;
    if (cf_parse_msec(n->args[n->nargs - 1], &ms) < 0)
        return cf_error(cx, n, "invalid time value \"%s\"", n->args[n->nargs - 1]);
    struct cache_valid v = {.ms = ms};
    if (n->nargs == 1) {
        /* nginx: only a time caches 200, 301 and 302 */
        v.codes[0] = 200, v.codes[1] = 301, v.codes[2] = 302;
        v.ncodes = 3;
    }
    for (size_t i = 0; i + 1 < n->nargs; i++) {
        int code;
        if (strcmp(n->args[i], "any") == 0) {
            v.any = true;
        } else if (cf_parse_int(n->args[i], &code) == 0 && code >= 200 && code <= 599 &&
                   v.ncodes < 16) {
            v.codes[v.ncodes++] = code;
        } else {
            return cf_error(cx, n, "invalid status \"%s\"", n->args[i]);
        }
    }
    struct cache_valid *nv = arena_alloc(cx->arena, (c->nvalid + 1) * sizeof(*nv));
    if (!nv)
        return cf_error(cx, n, "out of memory");
    if (c->nvalid)
        memcpy(nv, c->valid, c->nvalid * sizeof(*nv));
    nv[c->nvalid++] = v;
    c->valid = nv;
    c->valid_set = true;
    return 0;
}

static int set_cache_methods(struct cf_ctx *cx, const struct cf_node *n,
                             const struct cf_directive *d, void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    uint32_t m = (1u << HTTP_M_GET) | (1u << HTTP_M_HEAD); /* always */
    for (size_t i = 0; i < n->nargs; i++) {
        enum http_method id = http_method_id(slice_cstr(n->args[i]));
        if (id != HTTP_M_GET && id != HTTP_M_HEAD && id != HTTP_M_POST)
            return cf_error(cx, n, "invalid value \"%s\"", n->args[i]);
        m |= 1u << id;
    }
    c->methods = m;
    return 0;
}

static int set_tmpl_list(struct cf_ctx *cx, const struct cf_node *n, struct tmpl ***out,
                         size_t *nout, bool *set)
{
    struct tmpl **v = arena_alloc(cx->arena, (*nout + n->nargs) * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    if (*nout)
        memcpy(v, *out, *nout * sizeof(*v));
    for (size_t i = 0; i < n->nargs; i++) {
        v[*nout + i] = conf_tmpl(cx, n, n->args[i]);
        if (!v[*nout + i])
            return -1;
    }
    *out = v;
    *nout += n->nargs;
    *set = true;
    return 0;
}

static int set_cache_bypass(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    return set_tmpl_list(cx, n, &c->bypass, &c->nbypass, &c->bypass_set);
}

static int set_no_cache(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    return set_tmpl_list(cx, n, &c->no_cache, &c->nno_cache, &c->no_cache_set);
}

struct word_bit {
    const char *word;
    uint32_t bit;
};

static int set_bits(struct cf_ctx *cx, const struct cf_node *n, const struct word_bit *words,
                    uint32_t *out, bool *set, bool allow_off)
{
    if (*set)
        return cf_error(cx, n, "\"%s\" directive is duplicate", n->name);
    uint32_t v = 0;
    for (size_t i = 0; i < n->nargs; i++) {
        if (allow_off && strcmp(n->args[i], "off") == 0 && n->nargs == 1)
            break;
        size_t k = 0;
        while (words[k].word && strcasecmp(words[k].word, n->args[i]) != 0)
            k++;
        if (!words[k].word)
            return cf_error(cx, n, "invalid value \"%s\"", n->args[i]);
        v |= words[k].bit;
    }
    *out = v;
    *set = true;
    return 0;
}

static int set_use_stale(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d;
    static const struct word_bit w[] = {
        {"error", STALE_ERROR},
        {"timeout", STALE_TIMEOUT},
        {"invalid_header", STALE_INVALID_HEADER},
        {"updating", STALE_UPDATING},
        {"http_500", STALE_500},
        {"http_502", STALE_502},
        {"http_503", STALE_503},
        {"http_504", STALE_504},
        {"http_403", STALE_403},
        {"http_404", STALE_404},
        {"http_429", STALE_429},
        {NULL, 0},
    };
    struct cache_loc_conf *c = CCONF(conf);
    return set_bits(cx, n, w, &c->use_stale, &c->use_stale_set, true);
}

static int set_ignore_headers(struct cf_ctx *cx, const struct cf_node *n,
                              const struct cf_directive *d, void *conf)
{
    (void)d;
    static const struct word_bit w[] = {
        {"X-Accel-Expires", IGNORE_X_ACCEL_EXPIRES},
        {"Expires", IGNORE_EXPIRES},
        {"Cache-Control", IGNORE_CACHE_CONTROL},
        {"Set-Cookie", IGNORE_SET_COOKIE},
        {"Vary", IGNORE_VARY},
        {"X-Accel-Redirect", IGNORE_X_ACCEL_REDIRECT},
        {"X-Accel-Limit-Rate", IGNORE_X_ACCEL_LIMIT_RATE},
        {"X-Accel-Buffering", IGNORE_X_ACCEL_BUFFERING},
        {"X-Accel-Charset", 0}, /* (no charset module: nothing to ignore) */
        {NULL, 0},
    };
    struct cache_loc_conf *c = CCONF(conf);
    return set_bits(cx, n, w, &c->ignore, &c->ignore_set, false);
}

static int set_purge(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct cache_loc_conf *c = CCONF(conf);
    if (c->purge)
        return cf_error(cx, n, "\"proxy_cache_purge\" directive is duplicate");
    const char *m = n->args[0];
    if (strcmp(m, "off") == 0) {
        if (n->nargs > 1)
            return cf_error(cx, n, "invalid parameter \"%s\"", n->args[1]);
        return 0;
    }
    struct cache_purge_acl *p = arena_calloc(cx->arena, sizeof(*p));
    if (!p)
        return cf_error(cx, n, "out of memory");
    p->method = strcmp(m, "on") == 0 ? "PURGE" : m;
    for (const char *s = p->method; *s; s++)
        if (!http_tchar[(unsigned char)*s])
            return cf_error(cx, n, "invalid method \"%s\"", m);
    enum http_method id = http_method_id(slice_cstr(p->method));
    if (id == HTTP_M_GET || id == HTTP_M_HEAD || id == HTTP_M_POST)
        return cf_error(cx, n,
                        "\"%s\" cannot be the purge method: it would purge instead of serving "
                        "those requests (use PURGE)",
                        m);
    if (n->nargs > 1) {
        if (strcmp(n->args[1], "from") != 0 || n->nargs == 2)
            return cf_error(cx, n, "expected \"from all\" or \"from\" and addresses");
        p->nfrom = n->nargs - 2;
        p->from = arena_calloc(cx->arena, p->nfrom * sizeof(*p->from));
        if (!p->from)
            return cf_error(cx, n, "out of memory");
        for (size_t i = 0; i < p->nfrom; i++)
            if (net_cidr_parse(n->args[i + 2], &p->from[i]) < 0)
                return cf_error(cx, n, "invalid address \"%s\"", n->args[i + 2]);
    }
    c->purge = p;
    return 0;
}

#define OFF_CACHE(f) (offsetof(struct loc_conf, cache) + offsetof(struct cache_loc_conf, f))
#define LOC_ANY      (CF_HTTP | CF_SERVER | CF_LOCATION)

static const struct cf_directive cache_directives[] = {
    {"proxy_cache_path", CF_HTTP, 2, CF_ARGS_ANY, false, set_cache_path, CONF_LOC, 0,
     "path [levels=1:2] keys_zone=name:size [max_size=size] [inactive=time] [min_free=size] "
     "[memory=size]",
     "-",
     "A cache zone: files under path, keys in memory (about 128 bytes each), a memory tier of "
     "memory= bytes (16m) for hot objects; least recently used go first past max_size, unused "
     "ones after inactive (10m)"},
    {"proxy_cache", LOC_ANY, 1, 1, false, set_cache, CONF_LOC, 0, "zone | off", "off",
     "Cache responses of this location in the zone"},
    {"proxy_cache_key", LOC_ANY, 1, 1, false, set_cache_key, CONF_LOC, 0, "string",
     "$scheme$proxy_host$request_uri", "The key a response is stored under"},
    {"proxy_cache_valid", LOC_ANY, 1, 17, false, set_cache_valid, CONF_LOC, 0,
     "[code ... | any] time", "-",
     "How long to keep responses of these statuses when the origin does not say (no "
     "Cache-Control max-age/s-maxage, Expires or X-Accel-Expires); only a time means 200 301 302"},
    {"proxy_cache_methods", LOC_ANY, 1, 3, false, set_cache_methods, CONF_LOC, 0,
     "GET | HEAD | POST ...", "GET HEAD", "Request methods whose responses are cached"},
    {"proxy_cache_bypass", LOC_ANY, 1, CF_ARGS_ANY, false, set_cache_bypass, CONF_LOC, 0,
     "string ...", "-",
     "If any value is non-empty and not \"0\", go to the origin (the answer may still be stored)"},
    {"proxy_no_cache", LOC_ANY, 1, CF_ARGS_ANY, false, set_no_cache, CONF_LOC, 0, "string ...", "-",
     "If any value is non-empty and not \"0\", do not store the response"},
    {"proxy_cache_min_uses", LOC_ANY, 1, 1, false, cf_set_int, CONF_LOC, OFF_CACHE(min_uses),
     "number", "1", "Store a response once its key was requested this many times"},
    {"proxy_ignore_headers", LOC_ANY, 1, CF_ARGS_ANY, false, set_ignore_headers, CONF_LOC, 0,
     "field ...", "-",
     "Response fields the cache does not act on: X-Accel-Expires, Expires, Cache-Control, "
     "Set-Cookie, Vary"},
    {"proxy_cache_convert_head", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_CACHE(convert_head), "on | off", "on",
     "Fetch a HEAD miss with GET so the full response is stored"},
    {"proxy_cache_revalidate", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_CACHE(revalidate),
     "on | off", "off",
     "Revalidate stale responses with If-None-Match / If-Modified-Since (a 304 refreshes them)"},
    {"proxy_cache_use_stale", LOC_ANY, 1, 12, false, set_use_stale, CONF_LOC, 0,
     "error | timeout | invalid_header | updating | http_500 | http_502 | http_503 | http_504 | "
     "http_403 | http_404 | http_429 | off ...",
     "off",
     "When a stale response may answer instead of the origin's error (stale-if-error and "
     "stale-while-revalidate in Cache-Control grant it too)"},
    {"proxy_cache_background_update", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_CACHE(background_update), "on | off", "off",
     "Refresh an expired response in the background while the stale one answers"},
    {"proxy_cache_lock", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_CACHE(lock), "on | off",
     "off", "Only one request per key fetches a missing response; the others wait for it"},
    {"proxy_cache_lock_timeout", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC,
     OFF_CACHE(lock_timeout_ms), "time", "5s",
     "How long a request waits for the lock; then it goes to the origin and does not store"},
    {"proxy_cache_lock_age", LOC_ANY, 1, 1, false, cf_set_msec, CONF_LOC, OFF_CACHE(lock_age_ms),
     "time", "5s", "After this long another request may fetch the response too"},
    {"proxy_cache_purge", CF_LOCATION, 1, CF_ARGS_ANY, false, set_purge, CONF_LOC, 0,
     "on | off | method [from all | address/bits ...]", "off",
     "Requests with this method (PURGE for on) remove the URL's cached responses; a URL ending "
     "in * removes every key it prefixes; other clients get 403"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module cache_cf_module = {"cache", cache_directives};

void cache_conf_release(struct cache_loc_conf *http)
{
    for (struct cache_path_decl *d = http->paths; d; d = d->next)
        if (d->zone) {
            cache_zone_release(d->zone);
            d->zone = NULL;
        }
}
