#include "proxy/subfilter.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/rules.h"
#include "core/buf.h"
#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

#define MAX_RULES 64

/* ---- configuration ---- */

void subfilter_conf_init(struct subfilter_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->once = c->last_modified = CF_UNSET_FLAG;
}

void subfilter_conf_merge(struct subfilter_conf *c, const struct subfilter_conf *p)
{
    if (!c->rules_set) {
        c->rules = p->rules;
        c->n = p->n;
        c->rules_set = p->rules_set;
    }
    if (!c->types_set) {
        c->types = p->types;
        c->ntypes = p->ntypes;
        c->any_type = p->any_type;
        c->types_set = p->types_set;
    }
    if (c->once == CF_UNSET_FLAG)
        c->once = p->once;
    if (c->last_modified == CF_UNSET_FLAG)
        c->last_modified = p->last_modified;
}

static struct subfilter_conf *SF(void *conf)
{
    return &((struct loc_conf *)conf)->subf;
}

static int set_sub_filter(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct subfilter_conf *c = SF(conf);
    if (!n->args[0][0])
        return cf_error(cx, n, "empty search string in \"sub_filter\"");
    if (c->n == MAX_RULES)
        return cf_error(cx, n, "too many \"sub_filter\" rules (at most %d)", MAX_RULES);
    struct sub_rule *v = arena_alloc(cx->arena, (c->n + 1) * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    if (c->n)
        memcpy(v, c->rules, c->n * sizeof(*v));
    if (!(v[c->n].match = conf_tmpl(cx, n, n->args[0])) ||
        !(v[c->n].replace = conf_tmpl(cx, n, n->args[1])))
        return -1;
    c->rules = v;
    c->n++;
    c->rules_set = true;
    return 0;
}

static int set_types(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct subfilter_conf *c = SF(conf);
    if (c->types_set)
        return cf_error(cx, n, "\"sub_filter_types\" directive is duplicate");
    c->types_set = true;
    c->types = arena_alloc(cx->arena, n->nargs * sizeof(*c->types));
    if (!c->types)
        return cf_error(cx, n, "out of memory");
    for (size_t i = 0; i < n->nargs; i++) {
        if (!strcmp(n->args[i], "*")) {
            c->any_type = true;
            continue;
        }
        if (!strchr(n->args[i], '/'))
            return cf_error(cx, n, "invalid MIME type \"%s\"", n->args[i]);
        c->types[c->ntypes++] = n->args[i];
    }
    return 0;
}

#define LOC_ANY   (CF_HTTP | CF_SERVER | CF_LOCATION)
#define OFF_SF(f) (offsetof(struct loc_conf, subf) + offsetof(struct subfilter_conf, f))

static const struct cf_directive subfilter_directives[] = {
    {"sub_filter", LOC_ANY, 2, 2, false, set_sub_filter, CONF_LOC, 0, "string replacement", "-",
     "replace string (caseless; variables allowed in both) in response bodies of "
     "sub_filter_types; several rules: the first match at each place wins. Compressed "
     "answers are left alone: ask the upstream for identity (proxy_set_header Accept-Encoding "
     "\"\")"},
    {"sub_filter_types", LOC_ANY, 1, CF_ARGS_ANY, false, set_types, CONF_LOC, 0,
     "mime-type ... | *", "text/html", "the types sub_filter rewrites besides text/html"},
    {"sub_filter_once", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_SF(once), "on | off", "on",
     "replace each string once per response (off: everywhere)"},
    {"sub_filter_last_modified", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_SF(last_modified),
     "on | off", "off", "keep Last-Modified (and the ETag, made weak) of a rewritten response"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module subfilter_cf_module = {"sub_filter", subfilter_directives};

/* ---- the filter ---- */

struct subf {
    const struct client_ops *inner;
    bool active; /* this response is rewritten */
    struct slice match[MAX_RULES], repl[MAX_RULES];
    bool used[MAX_RULES];
    size_t n, maxlen;
    bool once;
    char *tail; /* bytes that may start a match: held for the next piece */
    size_t tail_len;
};

static struct subf *S(struct exchange *ex)
{
    return ex->subf;
}

static bool type_listed(const struct subfilter_conf *c, struct slice ctype)
{
    size_t e = 0;
    while (e < ctype.len && ctype.p[e] != ';')
        e++;
    struct slice t = slice_trim_ows(slice_make(ctype.p, e));
    if (slice_eq_lit_ci(t, "text/html"))
        return true;
    if (c->any_type)
        return t.len > 0;
    for (size_t i = 0; i < c->ntypes; i++)
        if (slice_eq_lit_ci(t, c->types[i]))
            return true;
    return false;
}

static int s_send_head(struct exchange *ex, const struct resp_head *h)
{
    struct subf *s = S(ex);
    const struct subfilter_conf *c = &ex->lc->subf;
    s->active = false;
    bool typed, encoded;
    struct slice ctype = cache_field(h->fields, h->nfields, "content-type", &typed);
    cache_field(h->fields, h->nfields, "content-encoding", &encoded);
    if (!c->n || h->no_body || h->status == 206 || h->content_length == 0 || encoded || !typed ||
        !type_listed(c, ctype))
        return s->inner->send_head(ex, h);
    s->n = 0;
    s->maxlen = 0;
    for (size_t i = 0; i < c->n; i++) {
        struct slice m = tmpl_eval(ex, c->rules[i].match, ESC_NONE);
        if (!m.len)
            continue;
        s->match[s->n] = m;
        s->repl[s->n] = tmpl_eval(ex, c->rules[i].replace, ESC_NONE);
        s->used[s->n] = false;
        if (m.len > s->maxlen)
            s->maxlen = m.len;
        s->n++;
    }
    s->tail = s->maxlen > 1 ? arena_alloc(&ex->arena, s->maxlen - 1) : NULL;
    if (!s->n || (s->maxlen > 1 && !s->tail))
        return s->inner->send_head(ex, h);
    s->once = c->once;
    s->tail_len = 0;
    s->active = true;
    /* the length changes; the validators describe the original bytes */
    struct http_field *f = arena_alloc(&ex->arena, (h->nfields + 1) * sizeof(*f));
    if (!f) {
        s->active = false;
        return s->inner->send_head(ex, h);
    }
    size_t k = 0;
    for (size_t i = 0; i < h->nfields; i++) {
        struct http_field x = h->fields[i];
        if (slice_eq_lit_ci(x.name, "accept-ranges"))
            continue;
        if (!c->last_modified &&
            (slice_eq_lit_ci(x.name, "last-modified") || slice_eq_lit_ci(x.name, "etag")))
            continue;
        if (c->last_modified && slice_eq_lit_ci(x.name, "etag") && x.value.len &&
            x.value.p[0] == '"') {
            char *w = arena_alloc(&ex->arena, x.value.len + 2);
            if (w) {
                memcpy(w, "W/", 2);
                memcpy(w + 2, x.value.p, x.value.len);
                x.value = slice_make(w, x.value.len + 2);
            }
        }
        f[k++] = x;
    }
    struct resp_head nh = *h;
    nh.fields = f;
    nh.nfields = k;
    nh.content_length = -1;
    return s->inner->send_head(ex, &nh);
}

/* The first rule matching at p (caseless), or -1. */
static int match_at(const struct subf *s, const char *p, size_t left)
{
    for (size_t r = 0; r < s->n; r++) {
        struct slice m = s->match[r];
        if ((s->once && s->used[r]) || m.len > left ||
            tolower((unsigned char)p[0]) != tolower((unsigned char)m.p[0]))
            continue;
        if (strncasecmp(p, m.p, m.len) == 0)
            return (int)r;
    }
    return -1;
}

static bool all_used(const struct subf *s)
{
    if (!s->once)
        return false;
    for (size_t r = 0; r < s->n; r++)
        if (!s->used[r])
            return false;
    return true;
}

/* Rewrite tail + `in`, hand on what is settled as one piece, keep what may
 * still start a match. final: the body ends, keep nothing. */
static int process(struct exchange *ex, const char *in, size_t len, bool final)
{
    struct subf *s = S(ex);
    size_t total = s->tail_len + len;
    if (!total)
        return 0;
    /* the worst case output: every byte a match of the shortest pattern
     * replaced by the longest replacement */
    size_t maxrep = 0, minmatch = SIZE_MAX;
    for (size_t r = 0; r < s->n; r++) {
        if (s->repl[r].len > maxrep)
            maxrep = s->repl[r].len;
        if (s->match[r].len < minmatch)
            minmatch = s->match[r].len;
    }
    size_t cap = total + (total / minmatch + 1) * maxrep;
    char *work = malloc(total);
    struct buf *out = work ? buf_new(cap > BUF_SEG_SIZE ? cap : BUF_SEG_SIZE) : NULL;
    if (!out) {
        free(work);
        return -1;
    }
    if (s->tail_len)
        memcpy(work, s->tail, s->tail_len);
    if (len)
        memcpy(work + s->tail_len, in, len);
    size_t o = 0, i = 0;
    while (i < total) {
        if (all_used(s)) {
            break;
        }
        int r = match_at(s, work + i, total - i);
        if (r >= 0) {
            memcpy(out->data + o, s->repl[r].p, s->repl[r].len);
            o += s->repl[r].len;
            i += s->match[r].len;
            s->used[r] = true;
            continue;
        }
        /* near the end a match may still be coming: stop there */
        if (!final && total - i < s->maxlen)
            break;
        out->data[o++] = work[i++];
    }
    size_t keep = final || all_used(s) ? 0 : total - i;
    if (all_used(s) || final) {
        memcpy(out->data + o, work + i, total - i);
        o += total - i;
    } else {
        memcpy(s->tail, work + i, keep);
    }
    s->tail_len = keep;
    free(work);
    int rc = 0;
    if (o) {
        struct body_piece piece = {out, out->data, o};
        rc = s->inner->send_body(ex, &piece);
    }
    buf_unref(out);
    return rc < 0 ? -1 : 0;
}

static int s_send_body(struct exchange *ex, const struct body_piece *piece)
{
    struct subf *s = S(ex);
    if (!s->active || (all_used(s) && !s->tail_len))
        return s->inner->send_body(ex, piece);
    return process(ex, piece->p, piece->len, false);
}

static int s_send_file(struct exchange *ex, struct buf *token, int fd, uint64_t off, size_t len)
{
    struct subf *s = S(ex);
    if (s->active || !s->inner->send_file)
        return 1; /* the caller reads it into pieces, which pass here */
    return s->inner->send_file(ex, token, fd, off, len);
}

static int s_send_end(struct exchange *ex, struct slice trailers)
{
    struct subf *s = S(ex);
    if (s->active && s->tail_len && process(ex, NULL, 0, true) < 0)
        return -1;
    s->active = false;
    return s->inner->send_end(ex, trailers);
}

static int s_send_interim(struct exchange *ex, int status, struct http_field *f, size_t n)
{
    return S(ex)->inner->send_interim(ex, status, f, n);
}

static size_t s_pending(struct exchange *ex)
{
    return S(ex)->inner->pending(ex);
}

static enum body_status s_body_read(struct exchange *ex, struct body_piece *piece)
{
    return S(ex)->inner->body_read(ex, piece);
}

static void s_continue_100(struct exchange *ex)
{
    S(ex)->inner->continue_100(ex);
}

static void s_done(struct exchange *ex, bool broken)
{
    struct subf *s = S(ex);
    s->active = false;
    s->inner->done(ex, broken);
}

static const struct client_ops sub_ops = {
    .send_head = s_send_head,
    .send_interim = s_send_interim,
    .send_body = s_send_body,
    .send_file = s_send_file,
    .send_end = s_send_end,
    .pending = s_pending,
    .body_read = s_body_read,
    .continue_100 = s_continue_100,
    .done = s_done,
};

void subfilter_install(struct exchange *ex)
{
    if (ex->subf || ex->cache_background || ex->subrequest || !ex->lc->subf.n)
        return;
    struct subf *s = arena_calloc(&ex->arena, sizeof(*s));
    if (!s)
        return; /* served unchanged */
    s->inner = ex->client;
    ex->subf = s;
    ex->client = &sub_ops;
}
