/* Response compression (compress.h): a client_ops filter. It decides at the
 * response head (status, type, length, Content-Encoding, the request's
 * Accept-Encoding, Via and User-Agent), rewrites the head (Content-Encoding,
 * Vary, no Content-Length, a weak ETag, no Accept-Ranges), then encodes the
 * body pieces into segments it hands to the real client side. Everything
 * else passes straight through. */
#include "proxy/compress.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <brotli/encode.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include <zstd.h>

#include "cache/rules.h"
#include "core/buf.h"
#include "core/log.h"
#include "proxy/exchange.h"
#include "proxy/rewrite.h"

static const char *const coding_name[ZC_N] = {"zstd", "br", "gzip"};

/* ---- configuration ---- */

void compress_conf_init(struct compress_conf *c)
{
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < ZC_N; i++) {
        c->c[i].on = CF_UNSET_FLAG;
        c->c[i].min_length = CF_UNSET_SIZE;
        c->c[i].level = CF_UNSET_INT;
    }
    c->vary = CF_UNSET_FLAG;
    c->proxied = ZP_UNSET;
    c->http_version_minor = CF_UNSET_INT;
}

void compress_conf_merge(struct compress_conf *c, const struct compress_conf *p)
{
    for (int i = 0; i < ZC_N; i++) {
        struct zcoding_conf *z = &c->c[i];
        const struct zcoding_conf *pz = &p->c[i];
        if (z->on == CF_UNSET_FLAG)
            z->on = pz->on;
        if (z->min_length == CF_UNSET_SIZE)
            z->min_length = pz->min_length;
        if (z->level == CF_UNSET_INT)
            z->level = pz->level;
        if (!z->types_set) {
            z->types = pz->types;
            z->ntypes = pz->ntypes;
            z->any_type = pz->any_type;
            z->types_set = pz->types_set;
        }
    }
    if (c->vary == CF_UNSET_FLAG)
        c->vary = p->vary;
    if (c->proxied == ZP_UNSET)
        c->proxied = p->proxied;
    if (c->http_version_minor == CF_UNSET_INT)
        c->http_version_minor = p->http_version_minor;
    if (!c->disable_set) {
        c->disable = p->disable;
        c->ndisable = p->ndisable;
        c->disable_set = p->disable_set;
    }
    c->any = c->c[ZC_GZIP].on == 1 || c->c[ZC_BR].on == 1 || c->c[ZC_ZSTD].on == 1;
}

void compress_conf_defaults(struct compress_conf *c)
{
    static const int level[ZC_N] = {1, 6, 1}; /* zstd-nginx-module, ngx_brotli, nginx */
    for (int i = 0; i < ZC_N; i++) {
        c->c[i].on = 0;
        c->c[i].min_length = 20;
        c->c[i].level = level[i];
    }
    c->vary = 0;
    c->proxied = ZP_OFF;
    c->http_version_minor = 1;
}

static int coding_of(const char *directive)
{
    if (!strncmp(directive, "gzip", 4))
        return ZC_GZIP;
    if (!strncmp(directive, "brotli", 6))
        return ZC_BR;
    return ZC_ZSTD;
}

#define CC(conf) ((struct compress_conf *)((char *)(conf) + d->offset))

static int set_on(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                  void *conf)
{
    struct zcoding_conf *z = &CC(conf)->c[coding_of(d->name)];
    if (z->on != CF_UNSET_FLAG)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    if (!strcasecmp(n->args[0], "on"))
        z->on = 1;
    else if (!strcasecmp(n->args[0], "off"))
        z->on = 0;
    else
        return cf_error(cx, n,
                        "invalid value \"%s\" in \"%s\" directive, it must be \"on\" or "
                        "\"off\"",
                        n->args[0], d->name);
    return 0;
}

static int set_types(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    struct zcoding_conf *z = &CC(conf)->c[coding_of(d->name)];
    if (z->types_set)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    const char **v = arena_alloc(cx->arena, n->nargs * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n->nargs; i++) {
        if (!strcmp(n->args[i], "*")) {
            z->any_type = true;
            continue;
        }
        if (!strchr(n->args[i], '/'))
            return cf_error(cx, n, "invalid MIME type \"%s\" in \"%s\" directive", n->args[i],
                            d->name);
        char *t = arena_strdup(cx->arena, n->args[i]);
        if (!t)
            return cf_error(cx, n, "out of memory");
        for (char *p = t; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
        v[k++] = t;
    }
    z->types = v;
    z->ntypes = k;
    z->types_set = true;
    return 0;
}

static int set_min_length(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    struct zcoding_conf *z = &CC(conf)->c[coding_of(d->name)];
    if (z->min_length != CF_UNSET_SIZE)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    struct cf_directive sz = *d;
    sz.offset = 0;
    return cf_set_size(cx, n, &sz, &z->min_length);
}

static int set_level(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    int c = coding_of(d->name);
    struct zcoding_conf *z = &CC(conf)->c[c];
    static const int lo[ZC_N] = {1, 0, 1}, hi[ZC_N] = {19, 11, 9};
    if (z->level != CF_UNSET_INT)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    char *end;
    long v = strtol(n->args[0], &end, 10);
    if (*end || end == n->args[0] || v < lo[c] || v > hi[c])
        return cf_error(cx, n, "\"%s\" must be between %d and %d", d->name, lo[c], hi[c]);
    z->level = (int)v;
    return 0;
}

static int set_proxied(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    static const struct {
        const char *name;
        uint32_t bit;
    } words[] = {
        {"off", ZP_OFF},           {"expired", ZP_EXPIRED}, {"no-cache", ZP_NO_CACHE},
        {"no-store", ZP_NO_STORE}, {"private", ZP_PRIVATE}, {"no_last_modified", ZP_NO_LM},
        {"no_etag", ZP_NO_ETAG},   {"auth", ZP_AUTH},       {"any", ZP_ANY},
    };
    struct compress_conf *c = CC(conf);
    if (c->proxied != ZP_UNSET)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    uint32_t bits = 0;
    for (size_t i = 0; i < n->nargs; i++) {
        size_t k = 0;
        while (k < sizeof(words) / sizeof(words[0]) && strcmp(words[k].name, n->args[i]))
            k++;
        if (k == sizeof(words) / sizeof(words[0]))
            return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[i], d->name);
        if (words[k].bit == ZP_OFF && n->nargs > 1)
            return cf_error(cx, n, "\"off\" cannot be combined in \"%s\" directive", d->name);
        bits |= words[k].bit;
    }
    c->proxied = bits;
    return 0;
}

static int set_http_version(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    struct compress_conf *c = CC(conf);
    if (c->http_version_minor != CF_UNSET_INT)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    if (!strcmp(n->args[0], "1.0"))
        c->http_version_minor = 0;
    else if (!strcmp(n->args[0], "1.1"))
        c->http_version_minor = 1;
    else
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive (1.0 or 1.1)", n->args[0],
                        d->name);
    return 0;
}

static int set_disable(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    struct compress_conf *c = CC(conf);
    if (c->disable_set)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    void **v = arena_alloc(cx->arena, n->nargs * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    for (size_t i = 0; i < n->nargs; i++) {
        /* nginx's "msie6": MSIE 4 to 6, without SV1 */
        const char *pat = strcmp(n->args[i], "msie6") ? n->args[i] : "MSIE [4-6]\\.(?!.*SV1)";
        if (!(v[i] = rw_regex(cx, n, conf_snapshot(cx), pat, true)))
            return -1;
    }
    c->disable = v;
    c->ndisable = n->nargs;
    c->disable_set = true;
    return 0;
}

/* gzip_buffers: nginx's output buffers; ours are the exchange's segments. */
static int set_buffers(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    (void)conf;
    char *end;
    long num = strtol(n->args[0], &end, 10);
    if (*end || end == n->args[0] || num <= 0)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], d->name);
    struct cf_node sn = *n; /* the size, through the usual setter */
    sn.args = n->args + 1;
    sn.nargs = 1;
    struct cf_directive sd = *d;
    sd.offset = 0;
    size_t sz = CF_UNSET_SIZE; /* the setter refuses a value already set */
    if (cf_set_size(cx, &sn, &sd, &sz) < 0)
        return -1;
    if (!sz)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[1], d->name);
    return 0;
}

#define LOC_ANY (CF_HTTP | CF_SERVER | CF_LOCATION)
#define OFF_Z   offsetof(struct loc_conf, z)

static const struct cf_directive compress_directives[] = {
    {"gzip", LOC_ANY, 1, 1, false, set_on, CONF_LOC, OFF_Z, "on | off", "off",
     "compress responses with gzip for clients that accept it (status 200, 403, 404; a type in "
     "gzip_types; at least gzip_min_length; not already encoded; not HEAD or ranges)"},
    {"gzip_types", LOC_ANY, 1, CF_ARGS_ANY, false, set_types, CONF_LOC, OFF_Z, "mime-type ... | *",
     "text/html", "types to compress besides text/html (\"*\": all)"},
    {"gzip_min_length", LOC_ANY, 1, 1, false, set_min_length, CONF_LOC, OFF_Z, "length", "20",
     "compress only responses at least this long (by Content-Length; unknown lengths are "
     "compressed)"},
    {"gzip_comp_level", LOC_ANY, 1, 1, false, set_level, CONF_LOC, OFF_Z, "1..9", "1",
     "zlib compression level"},
    {"gzip_vary", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_Z + offsetof(struct compress_conf, vary), "on | off", "off",
     "add \"Vary: Accept-Encoding\" to every response that could be compressed (all codings)"},
    {"gzip_proxied", LOC_ANY, 1, 9, false, set_proxied, CONF_LOC, OFF_Z,
     "off | expired | no-cache | no-store | private | no_last_modified | no_etag | auth | any "
     "...",
     "off",
     "for requests that came through another proxy (a Via field): compress only when the "
     "response is like this (all codings)"},
    {"gzip_http_version", LOC_ANY, 1, 1, false, set_http_version, CONF_LOC, OFF_Z, "1.0 | 1.1",
     "1.1", "lowest request HTTP version to compress for (all codings)"},
    {"gzip_disable", LOC_ANY, 1, CF_ARGS_ANY, false, set_disable, CONF_LOC, OFF_Z,
     "regex ... | msie6", "-",
     "no compression for a User-Agent matching any regex (case-insensitive; all codings)"},
    {"gzip_buffers", LOC_ANY, 2, 2, false, set_buffers, CONF_LOC, OFF_Z, "number size", "32 4k",
     "accepted for nginx configs: output goes out in the exchange's own segments"},
    {"brotli", LOC_ANY, 1, 1, false, set_on, CONF_LOC, OFF_Z, "on | off", "off",
     "compress with brotli (br) for clients that accept it, as gzip decides"},
    {"brotli_types", LOC_ANY, 1, CF_ARGS_ANY, false, set_types, CONF_LOC, OFF_Z,
     "mime-type ... | *", "text/html", "types to compress with brotli besides text/html"},
    {"brotli_min_length", LOC_ANY, 1, 1, false, set_min_length, CONF_LOC, OFF_Z, "length", "20",
     "brotli only for responses at least this long"},
    {"brotli_comp_level", LOC_ANY, 1, 1, false, set_level, CONF_LOC, OFF_Z, "0..11", "6",
     "brotli quality"},
    {"zstd", LOC_ANY, 1, 1, false, set_on, CONF_LOC, OFF_Z, "on | off", "off",
     "compress with zstd for clients that accept it, as gzip decides"},
    {"zstd_types", LOC_ANY, 1, CF_ARGS_ANY, false, set_types, CONF_LOC, OFF_Z, "mime-type ... | *",
     "text/html", "types to compress with zstd besides text/html"},
    {"zstd_min_length", LOC_ANY, 1, 1, false, set_min_length, CONF_LOC, OFF_Z, "length", "20",
     "zstd only for responses at least this long"},
    {"zstd_comp_level", LOC_ANY, 1, 1, false, set_level, CONF_LOC, OFF_Z, "1..19", "1",
     "zstd level"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module compress_cf_module = {"compression", compress_directives};

/* ---- Accept-Encoding ---- */

/* q as thousandths: "1", "0.5", "0.125"; -1 when malformed. */
static int parse_q(struct slice v)
{
    if (!v.len || (v.p[0] != '0' && v.p[0] != '1'))
        return -1;
    int q = (v.p[0] - '0') * 1000;
    if (v.len == 1)
        return q;
    if (v.p[1] != '.' || v.len > 5)
        return -1;
    int scale = 100;
    for (size_t i = 2; i < v.len; i++, scale /= 10) {
        if (v.p[i] < '0' || v.p[i] > '9' || (q == 1000 && v.p[i] != '0'))
            return -1;
        q += (v.p[i] - '0') * scale;
    }
    return q;
}

int compress_accept_q(struct slice ae, const char *coding)
{
    int star = -1, exact = -1;
    size_t i = 0;
    while (i < ae.len) {
        size_t e = i;
        while (e < ae.len && ae.p[e] != ',')
            e++;
        struct slice item = slice_trim_ows(slice_make(ae.p + i, e - i));
        i = e + 1;
        size_t t = 0;
        while (t < item.len && item.p[t] != ';')
            t++;
        struct slice name = slice_trim_ows(slice_make(item.p, t));
        int q = 1000;
        /* parameters: only q matters */
        while (t < item.len) {
            size_t s = t + 1, pe = s;
            while (pe < item.len && item.p[pe] != ';')
                pe++;
            struct slice par = slice_trim_ows(slice_make(item.p + s, pe - s));
            if (par.len > 2 && (par.p[0] == 'q' || par.p[0] == 'Q') && par.p[1] == '=')
                q = parse_q(slice_trim_ows(slice_make(par.p + 2, par.len - 2)));
            t = pe;
        }
        if (q < 0)
            continue; /* a malformed member counts as absent */
        if (slice_eq_lit_ci(name, coding))
            exact = exact < q ? q : exact;
        else if (name.len == 1 && name.p[0] == '*')
            star = q;
        else if (!strcmp(coding, "gzip") && slice_eq_lit_ci(name, "x-gzip"))
            exact = exact < q ? q : exact;
    }
    return exact >= 0 ? exact : star >= 0 ? star : 0;
}

/* ---- the filter ---- */

struct zfilter {
    const struct client_ops *inner;
    int coding; /* enum zcoding while encoding, -1 passing through */
    bool flush_each;
    z_stream gz;
    bool gz_live;
    BrotliEncoderState *br;
    ZSTD_CCtx *zs;
    /* Encoded output not yet handed on, as ONE piece: the client side has
     * room for one piece per send (its pending() says when), so a burst of
     * output never needs more queue slots than an uncompressed piece. */
    struct buf *seg;
    size_t used;
    bool failed;       /* the encoder failed: nothing more is sent, the connection is cut */
    bool end_pending;  /* send_end asked while output was still held */
    bool done_pending; /* ... and done, which waits for it */
    struct slice trailers;
};

static struct zfilter *ZF(struct exchange *ex)
{
    return ex->compress;
}

static void encoder_free(struct zfilter *zf)
{
    if (zf->gz_live)
        deflateEnd(&zf->gz);
    zf->gz_live = false;
    if (zf->br)
        BrotliEncoderDestroyInstance(zf->br);
    zf->br = NULL;
    if (zf->zs)
        ZSTD_freeCCtx(zf->zs);
    zf->zs = NULL;
    if (zf->seg)
        buf_unref(zf->seg);
    zf->seg = NULL;
    zf->used = 0;
    zf->coding = -1;
    zf->end_pending = zf->done_pending = zf->failed = false;
}

void compress_release(struct exchange *ex)
{
    if (ZF(ex))
        encoder_free(ZF(ex));
}

static bool type_listed(const struct zcoding_conf *z, struct slice ctype)
{
    size_t e = 0;
    while (e < ctype.len && ctype.p[e] != ';')
        e++;
    struct slice t = slice_trim_ows(slice_make(ctype.p, e));
    if (slice_eq_lit_ci(t, "text/html"))
        return true;
    if (z->any_type)
        return t.len > 0;
    for (size_t i = 0; i < z->ntypes; i++)
        if (slice_eq_lit_ci(t, z->types[i]))
            return true;
    return false;
}

/* The response as a whole may be compressed (for some coding)? Fills
 * `ok[]` per coding by status, type, length and existing encoding. */
static bool response_compressible(struct exchange *ex, const struct resp_head *h, bool ok[ZC_N])
{
    const struct compress_conf *c = &ex->lc->z;
    /* a HEAD gets the head a GET would (nginx too); 204/304 and 1xx none */
    if ((h->no_body && ex->method_id != HTTP_M_HEAD) ||
        (h->status != 200 && h->status != 403 && h->status != 404))
        return false;
    bool found;
    cache_field(h->fields, h->nfields, "content-encoding", &found);
    if (found)
        return false;
    struct slice ctype = cache_field(h->fields, h->nfields, "content-type", &found);
    if (!found)
        return false;
    bool any = false;
    for (int i = 0; i < ZC_N; i++) {
        const struct zcoding_conf *z = &c->c[i];
        ok[i] = z->on && type_listed(z, ctype) &&
                (h->content_length < 0 || (uint64_t)h->content_length >= z->min_length);
        any |= ok[i];
    }
    return any;
}

/* gzip_proxied: may a request that came through a proxy (Via) get it? */
static bool proxied_ok(struct exchange *ex, const struct resp_head *h)
{
    uint32_t p = ex->lc->z.proxied;
    bool found;
    cache_field(ex->req_fields, ex->nreq_fields, "via", &found);
    if (!found || (p & ZP_ANY))
        return true;
    if (!p)
        return false;
    if ((p & ZP_AUTH) &&
        (cache_field(ex->req_fields, ex->nreq_fields, "authorization", &found), found))
        return true;
    if ((p & ZP_EXPIRED) && (cache_field(h->fields, h->nfields, "expires", &found), found))
        return true;
    if ((p & ZP_NO_LM) && !(cache_field(h->fields, h->nfields, "last-modified", &found), found))
        return true;
    if ((p & ZP_NO_ETAG) && !(cache_field(h->fields, h->nfields, "etag", &found), found))
        return true;
    struct slice cc = cache_field(h->fields, h->nfields, "cache-control", &found);
    if (found && (p & (ZP_NO_CACHE | ZP_NO_STORE | ZP_PRIVATE))) {
        char low[256];
        size_t n = cc.len < sizeof(low) - 1 ? cc.len : sizeof(low) - 1;
        for (size_t i = 0; i < n; i++)
            low[i] = (char)(cc.p[i] >= 'A' && cc.p[i] <= 'Z' ? cc.p[i] + 32 : cc.p[i]);
        low[n] = '\0';
        if (((p & ZP_NO_CACHE) && strstr(low, "no-cache")) ||
            ((p & ZP_NO_STORE) && strstr(low, "no-store")) ||
            ((p & ZP_PRIVATE) && strstr(low, "private")))
            return true;
    }
    return false;
}

static bool request_allows(struct exchange *ex)
{
    const struct compress_conf *c = &ex->lc->z;
    if (ex->minor_version < c->http_version_minor)
        return false;
    if (c->ndisable) {
        bool found;
        struct slice ua = cache_field(ex->req_fields, ex->nreq_fields, "user-agent", &found);
        for (size_t i = 0; found && i < c->ndisable; i++) {
            pcre2_match_data *md = pcre2_match_data_create(1, NULL);
            if (!md)
                return false;
            int r = pcre2_match(c->disable[i], (PCRE2_SPTR)ua.p, ua.len, 0, 0, md, NULL);
            pcre2_match_data_free(md);
            if (r >= 0)
                return false;
        }
    }
    return true;
}

bool compress_gzip_static_ok(struct exchange *ex)
{
    bool found;
    struct slice ae = cache_field(ex->req_fields, ex->nreq_fields, "accept-encoding", &found);
    if (!found || compress_accept_q(ae, "gzip") <= 0 || !request_allows(ex))
        return false;
    cache_field(ex->req_fields, ex->nreq_fields, "via", &found);
    if (!found)
        return true;
    uint32_t p = ex->lc->z.proxied;
    if (p & ZP_ANY)
        return true;
    cache_field(ex->req_fields, ex->nreq_fields, "authorization", &found);
    return (p & ZP_AUTH) && found;
}

static int encoder_start(struct zfilter *zf, struct exchange *ex, int coding, int64_t len)
{
    int level = ex->lc->z.c[coding].level;
    switch (coding) {
    case ZC_GZIP: {
        /* smaller windows for short bodies, as nginx: less memory per stream */
        int wbits = 15, memlevel = 8;
        while (len > 0 && len < (1 << (wbits - 1)) && wbits > 9) {
            wbits--;
            memlevel = memlevel > 1 ? memlevel - 1 : 1;
        }
        memset(&zf->gz, 0, sizeof(zf->gz));
        if (deflateInit2(&zf->gz, level, Z_DEFLATED, wbits + 16, memlevel, Z_DEFAULT_STRATEGY) !=
            Z_OK)
            return -1;
        zf->gz_live = true;
        break;
    }
    case ZC_BR:
        zf->br = BrotliEncoderCreateInstance(NULL, NULL, NULL);
        if (!zf->br)
            return -1;
        BrotliEncoderSetParameter(zf->br, BROTLI_PARAM_QUALITY, (uint32_t)level);
        if (len > 0) {
            uint32_t lgwin = 10;
            while (lgwin < 22 && ((int64_t)1 << lgwin) < len)
                lgwin++;
            BrotliEncoderSetParameter(zf->br, BROTLI_PARAM_LGWIN, lgwin);
            BrotliEncoderSetParameter(zf->br, BROTLI_PARAM_SIZE_HINT,
                                      len > 1 << 30 ? 1u << 30 : (uint32_t)len);
        } else {
            BrotliEncoderSetParameter(zf->br, BROTLI_PARAM_LGWIN, 19);
        }
        break;
    case ZC_ZSTD:
        zf->zs = ZSTD_createCCtx();
        if (!zf->zs || ZSTD_isError(ZSTD_CCtx_setParameter(zf->zs, ZSTD_c_compressionLevel, level)))
            return -1;
        if (len > 0) {
            int wlog = 10;
            while (wlog < 23 && ((int64_t)1 << wlog) < len)
                wlog++;
            ZSTD_CCtx_setParameter(zf->zs, ZSTD_c_windowLog, wlog);
        }
        break;
    }
    zf->coding = coding;
    return 0;
}

#define ROOM_FULL                                                                                  \
    ((size_t)1 << 30) /* what a client side's pending() adds when its queue is full                \
                       */

/* Hand the held output on if the client side has room. 1 when nothing is
 * held any more, 0 when it must wait for a drain, -1 when the client is gone. */
static int deliver(struct zfilter *zf, struct exchange *ex)
{
    if (!zf->seg || !zf->used)
        return 1;
    if (zf->inner->pending(ex) >= ROOM_FULL)
        return 0;
    struct body_piece piece = {zf->seg, zf->seg->data, zf->used};
    int r = zf->inner->send_body(ex, &piece);
    buf_unref(zf->seg);
    zf->seg = NULL;
    zf->used = 0;
    return r < 0 ? -1 : 1;
}

/* Room for n more output bytes in the held piece (one buffer, grown). */
static int reserve(struct zfilter *zf, size_t n)
{
    if (zf->seg && zf->seg->cap - zf->used >= n)
        return 0;
    size_t cap = zf->seg ? zf->seg->cap : BUF_SEG_SIZE;
    while (cap - zf->used < n)
        cap *= 2;
    struct buf *b = buf_new(cap);
    if (!b)
        return -1;
    if (zf->seg) {
        memcpy(b->data, zf->seg->data, zf->used);
        buf_unref(zf->seg);
    }
    zf->seg = b;
    return 0;
}

/* Encode `len` bytes into the held piece; mode 0 go on, 1 flush what is
 * encoded, 2 finish. 0, or -1 (encoder error, out of memory). */
static int encode(struct zfilter *zf, struct exchange *ex, const char *in, size_t len, int mode)
{
    (void)ex;
    for (;;) {
        if (reserve(zf, 4096) < 0)
            return -1;
        size_t room = zf->seg->cap - zf->used;
        uint8_t *out = (uint8_t *)zf->seg->data + zf->used;
        size_t produced = 0;
        bool done = false;
        switch (zf->coding) {
        case ZC_GZIP: {
            zf->gz.next_in = (Bytef *)in;
            zf->gz.avail_in = (uInt)len;
            zf->gz.next_out = out;
            zf->gz.avail_out = (uInt)room;
            int r = deflate(&zf->gz, mode == 2 ? Z_FINISH : mode == 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH);
            if (r == Z_STREAM_ERROR)
                return -1;
            produced = room - zf->gz.avail_out;
            in = (const char *)zf->gz.next_in;
            len = zf->gz.avail_in;
            /* done when the input is in and zlib did not fill the output */
            done = mode == 2 ? r == Z_STREAM_END : (len == 0 && zf->gz.avail_out > 0);
            break;
        }
        case ZC_BR: {
            const uint8_t *nin = (const uint8_t *)in;
            size_t ain = len, aout = room;
            BrotliEncoderOperation op = mode == 2   ? BROTLI_OPERATION_FINISH
                                        : mode == 1 ? BROTLI_OPERATION_FLUSH
                                                    : BROTLI_OPERATION_PROCESS;
            if (!BrotliEncoderCompressStream(zf->br, op, &ain, &nin, &aout, &out, NULL))
                return -1;
            produced = room - aout;
            in = (const char *)nin;
            len = ain;
            done = len == 0 && !BrotliEncoderHasMoreOutput(zf->br) &&
                   (mode != 2 || BrotliEncoderIsFinished(zf->br));
            break;
        }
        case ZC_ZSTD: {
            ZSTD_inBuffer ib = {in, len, 0};
            ZSTD_outBuffer ob = {out, room, 0};
            size_t r = ZSTD_compressStream2(zf->zs, &ob, &ib,
                                            mode == 2   ? ZSTD_e_end
                                            : mode == 1 ? ZSTD_e_flush
                                                        : ZSTD_e_continue);
            if (ZSTD_isError(r))
                return -1;
            produced = ob.pos;
            in += ib.pos;
            len -= ib.pos;
            done = len == 0 && (mode == 0 || r == 0);
            break;
        }
        default:
            return -1;
        }
        zf->used += produced;
        if (done)
            return 0;
    }
}

/* After send_end: once the held output and the end are out, let a waiting
 * done through. 1 when the filter has finished with the exchange. */
static int try_finish(struct zfilter *zf, struct exchange *ex)
{
    if (!zf->end_pending)
        return 1;
    int d = deliver(zf, ex);
    if (d < 0) {
        zf->end_pending = false;
        return 1; /* the client is gone: the session ends it */
    }
    if (d == 0 || zf->inner->pending(ex) >= ROOM_FULL)
        return 0;
    bool done = zf->done_pending;
    encoder_free(zf); /* (clears end_pending and done_pending) */
    zf->inner->send_end(ex, zf->trailers);
    if (done)
        zf->inner->done(ex, false);
    return 1;
}

bool compress_drained(struct exchange *ex)
{
    struct zfilter *zf = ZF(ex);
    if (!zf || zf->coding < 0)
        return false;
    if (zf->end_pending) {
        bool waiting_done = zf->done_pending;
        try_finish(zf, ex);
        return waiting_done; /* the producer is finished: the event was ours */
    }
    return deliver(zf, ex) == 0; /* still holding: the producer waits too */
}

static int z_send_head(struct exchange *ex, const struct resp_head *h)
{
    struct zfilter *zf = ZF(ex);
    zf->coding = -1;
    bool ok[ZC_N];
    if (!response_compressible(ex, h, ok))
        return zf->inner->send_head(ex, h);
    const struct compress_conf *c = &ex->lc->z;
    /* a Vary for every response that could be compressed, as nginx */
    int best = -1, best_q = 0;
    if (request_allows(ex) && proxied_ok(ex, h)) {
        bool found;
        struct slice ae = cache_field(ex->req_fields, ex->nreq_fields, "accept-encoding", &found);
        for (int i = 0; found && i < ZC_N; i++) {
            int q = ok[i] ? compress_accept_q(ae, coding_name[i]) : 0;
            if (q > best_q) /* a tie keeps the earlier: zstd, br, gzip */
                best = i, best_q = q;
        }
    }
    if (best < 0 && !c->vary)
        return zf->inner->send_head(ex, h);
    struct http_field *f = arena_alloc(&ex->arena, (h->nfields + 2) * sizeof(*f));
    if (!f)
        return zf->inner->send_head(ex, h);
    size_t n = 0;
    for (size_t i = 0; i < h->nfields; i++) {
        struct http_field x = h->fields[i];
        if (best >= 0 && slice_eq_lit_ci(x.name, "accept-ranges"))
            continue;
        if (best >= 0 && slice_eq_lit_ci(x.name, "etag") && x.value.len && x.value.p[0] == '"') {
            /* the bytes differ from the identity ones: a strong tag would lie */
            char *w = arena_alloc(&ex->arena, x.value.len + 2);
            if (w) {
                memcpy(w, "W/", 2);
                memcpy(w + 2, x.value.p, x.value.len);
                x.value = slice_make(w, x.value.len + 2);
            }
        }
        f[n++] = x;
    }
    if (c->vary)
        f[n++] = (struct http_field){SLICE_LIT("Vary"), SLICE_LIT("Accept-Encoding")};
    struct resp_head nh = *h;
    nh.fields = f;
    nh.nfields = n;
    if (best >= 0 && h->no_body) { /* HEAD: the same fields, no encoder */
        f[n++] = (struct http_field){SLICE_LIT("Content-Encoding"), slice_cstr(coding_name[best])};
        nh.nfields = n;
        nh.content_length = -1;
        return zf->inner->send_head(ex, &nh);
    }
    if (best >= 0) {
        if (encoder_start(zf, ex, best, h->content_length) < 0) {
            log_write(LOG_ERR, "*%llu %s encoder could not start: out of memory",
                      (unsigned long long)ex->id, coding_name[best]);
            encoder_free(zf);
            nh.nfields = n - (c->vary ? 1 : 0);
            for (size_t i = 0; i < nh.nfields; i++) /* undo the weak tag */
                if (slice_eq_lit_ci(f[i].name, "etag"))
                    f[i] = h->fields[i];
            return zf->inner->send_head(ex, h);
        }
        f[n++] = (struct http_field){SLICE_LIT("Content-Encoding"), slice_cstr(coding_name[best])};
        nh.nfields = n;
        nh.content_length = -1;
        /* a stream the client reads as it comes (proxy_buffering off)
         * is flushed piece by piece */
        zf->flush_each = !ex->lc->buffering;
    }
    return zf->inner->send_head(ex, &nh);
}

static int z_send_body(struct exchange *ex, const struct body_piece *piece)
{
    struct zfilter *zf = ZF(ex);
    if (zf->coding < 0)
        return zf->inner->send_body(ex, piece);
    if (zf->failed)
        return 0; /* dropped: the connection is cut at done */
    if (encode(zf, ex, piece->p, piece->len, zf->flush_each) < 0) {
        log_write(LOG_ERR, "*%llu %s encoder failed: the connection will be cut",
                  (unsigned long long)ex->id, coding_name[zf->coding]);
        zf->failed = true;
        return 0;
    }
    /* hand on what there is once it is worth a write (or at every piece when
     * streaming); a full client queue keeps it here until the drain */
    if (zf->used >= BUF_SEG_SIZE || zf->flush_each)
        return deliver(zf, ex) < 0 ? -1 : 0;
    return 0;
}

static int z_send_file(struct exchange *ex, struct buf *token, int fd, uint64_t off, size_t len)
{
    struct zfilter *zf = ZF(ex);
    if (zf->coding >= 0 || !zf->inner->send_file)
        return 1; /* the caller reads the file into pieces */
    return zf->inner->send_file(ex, token, fd, off, len);
}

static int z_send_end(struct exchange *ex, struct slice trailers)
{
    struct zfilter *zf = ZF(ex);
    if (zf->coding < 0)
        return zf->inner->send_end(ex, trailers);
    if (zf->failed || encode(zf, ex, NULL, 0, 2) < 0) {
        zf->failed = true;
        return -1;
    }
    zf->trailers = trailers; /* they live in the exchange's arena */
    zf->end_pending = true;
    try_finish(zf, ex);
    return 0;
}

static int z_send_interim(struct exchange *ex, int status, struct http_field *f, size_t n)
{
    return ZF(ex)->inner->send_interim(ex, status, f, n);
}

static size_t z_pending(struct exchange *ex)
{
    struct zfilter *zf = ZF(ex);
    if (zf->coding >= 0 && zf->used) {
        deliver(zf, ex);
        return zf->inner->pending(ex) + zf->used;
    }
    return zf->inner->pending(ex);
}

static enum body_status z_body_read(struct exchange *ex, struct body_piece *piece)
{
    return ZF(ex)->inner->body_read(ex, piece);
}

static void z_continue_100(struct exchange *ex)
{
    ZF(ex)->inner->continue_100(ex);
}

static void z_done(struct exchange *ex, bool broken)
{
    struct zfilter *zf = ZF(ex);
    broken |= zf->failed;
    if (!broken && zf->end_pending) {
        zf->done_pending = true; /* the rest goes out on the drain (compress_drained) */
        return;
    }
    zf->end_pending = zf->done_pending = false;
    encoder_free(zf);
    zf->inner->done(ex, broken);
}

static const struct client_ops z_ops = {
    .send_head = z_send_head,
    .send_interim = z_send_interim,
    .send_body = z_send_body,
    .send_file = z_send_file,
    .send_end = z_send_end,
    .pending = z_pending,
    .body_read = z_body_read,
    .continue_100 = z_continue_100,
    .done = z_done,
};

void compress_install(struct exchange *ex)
{
    const struct compress_conf *c = &ex->lc->z;
    if (ex->compress || ex->cache_background || !c->any)
        return;
    struct zfilter *zf = arena_calloc(&ex->arena, sizeof(*zf));
    if (!zf)
        return; /* served uncompressed */
    zf->inner = ex->client;
    zf->coding = -1;
    ex->compress = zf;
    ex->client = &z_ops;
}
