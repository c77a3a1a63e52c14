/* Router: nginx's location and server_name selection.
 *
 * Locations: each level (server, or the body of a location) keeps its exact
 * and prefix patterns in one array sorted bytewise, an entry holding the
 * "= /x" and the "/x" (or "^~ /x") of the same string, plus `up`, the index
 * of the longest other entry that is a proper prefix of it. The longest
 * prefix of a path is then found with one binary search (the greatest entry
 * <= path) and a short walk up that chain. Regexes stay in file order.
 *
 * Server names: three open-addressing tables (exact, leading wildcard keyed
 * by the domain after "*." or ".", trailing wildcard keyed by the part
 * before ".*") and the regexes in file order. The leading-wildcard hash is
 * computed right to left so that every suffix of a host costs one step. */
#include "router/router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ regex */

/* pcre2_match_data is per thread: workers are threads sharing the tables. */
static __thread pcre2_match_data *tls_match;

void router_thread_deinit(void)
{
    pcre2_match_data_free(tls_match);
    tls_match = NULL;
}

static pcre2_code *re_compile(const char *pat, size_t len, uint32_t opts, char *err, size_t errlen)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opts, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof(msg)) < 0)
            strcpy((char *)msg, "unknown error");
        snprintf(err, errlen, "pcre2_compile() failed: %s in \"%.*s\" at offset %zu",
                 (const char *)msg, (int)len, pat, (size_t)off);
        return NULL;
    }
    /* JIT is only a speed-up: without it pcre2_match interprets. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

static bool re_has_jit(const pcre2_code *re)
{
    size_t size = 0;
    return pcre2_pattern_info(re, PCRE2_INFO_JITSIZE, &size) == 0 && size > 0;
}

/* 1 on a match (captures recorded), 0 otherwise. A matching error (JIT stack,
 * match limit, no memory for the match data) counts as no match. */
static int re_exec(const pcre2_code *re, bool jit, struct slice subj, struct route_captures *caps)
{
    if (!tls_match) {
        tls_match = pcre2_match_data_create(ROUTER_MAX_CAPTURES, NULL);
        if (!tls_match)
            return 0;
    }
    const char *p = subj.p ? subj.p : "";
    int rc = jit ? pcre2_jit_match(re, (PCRE2_SPTR)p, subj.len, 0, 0, tls_match, NULL)
                 : pcre2_match(re, (PCRE2_SPTR)p, subj.len, 0, 0, tls_match, NULL);
    if (rc < 0)
        return 0;
    if (caps) {
        /* rc == 0: more groups than the ovector holds; keep the first ones */
        int n = rc == 0 ? ROUTER_MAX_CAPTURES : rc;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(tls_match);
        for (int i = 0; i < 2 * n; i++)
            caps->ov[i] = ov[i];
        caps->n = n;
        caps->subject = p;
        caps->re = re;
    }
    return 1;
}

pcre2_code *router_regex_compile(const char *pat, size_t len, bool caseless, char *err,
                                 size_t errlen)
{
    return re_compile(pat, len, caseless ? PCRE2_CASELESS : 0, err, errlen);
}

int router_regex_match(const pcre2_code *re, struct slice subj, struct route_captures *caps)
{
    return re_exec(re, re_has_jit(re), subj, caps);
}

/* -------------------------------------------------------------- locations */

struct static_entry {
    const char *name;
    size_t len;
    const struct location *exact;     /* = /x */
    const struct location *inclusive; /* /x or ^~ /x */
    ptrdiff_t up;                     /* longest entry that is a proper prefix, or -1 */
};

struct regex_entry {
    const struct location *loc;
    bool jit;
};

struct location_tree {
    struct static_entry *st;
    size_t nst;
    struct regex_entry *rx;
    size_t nrx;
};

struct location_set {
    struct location_tree top;
    const struct location **named; /* server level only, file order */
    size_t nnamed;
};

static bool is_regex(const struct location *l)
{
    return l->match == LOC_REGEX || l->match == LOC_REGEX_CI;
}

int router_location_compile(struct location *loc, char *err, size_t errlen)
{
    if (!is_regex(loc) || loc->re)
        return 0;
    uint32_t opts = loc->match == LOC_REGEX_CI ? PCRE2_CASELESS : 0;
    loc->re = re_compile(loc->pattern, loc->pattern_len, opts, err, errlen);
    return loc->re ? 0 : -1;
}

void router_location_deinit(struct location *loc)
{
    if (!loc)
        return;
    for (size_t i = 0; i < loc->nchildren; i++)
        router_location_deinit(loc->children[i]);
    pcre2_code_free(loc->re);
    loc->re = NULL;
    loc->tree = NULL;
}

/* Bytewise order, a prefix before its extensions. */
static int bytes_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static int entry_cmp(const void *x, const void *y)
{
    const struct static_entry *a = x, *b = y;
    int c = bytes_cmp(a->name, a->len, b->name, b->len);
    if (c)
        return c;
    return (a->exact ? 0 : 1) - (b->exact ? 0 : 1);
}

/* The nesting rules of ngx_http_core_location(). */
static int check_nesting(const struct location *parent, const struct location *l, char *err,
                         size_t errlen)
{
    const int ll = (int)l->pattern_len, pl = (int)parent->pattern_len;
    if (l->match == LOC_NAMED) {
        snprintf(err, errlen, "named location \"%.*s\" can be on the server level only", ll,
                 l->pattern);
        return -1;
    }
    if (parent->match == LOC_EXACT || parent->match == LOC_NAMED) {
        snprintf(err, errlen, "location \"%.*s\" cannot be inside the %s location \"%.*s\"", ll,
                 l->pattern, parent->match == LOC_EXACT ? "exact" : "named", pl, parent->pattern);
        return -1;
    }
    if (!is_regex(l) && !slice_starts_with(slice_make(l->pattern, l->pattern_len),
                                           slice_make(parent->pattern, parent->pattern_len))) {
        snprintf(err, errlen, "location \"%.*s\" is outside location \"%.*s\"", ll, l->pattern, pl,
                 parent->pattern);
        return -1;
    }
    return 0;
}

static int build_statics(struct location_tree *t, struct location **locs, size_t n, char *err,
                         size_t errlen)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct location *l = locs[i];
        if (l->match != LOC_EXACT && l->match != LOC_PREFIX && l->match != LOC_PREFIX_NOREGEX)
            continue;
        t->st[k] =
            (struct static_entry){l->pattern, l->pattern_len, l->match == LOC_EXACT ? l : NULL,
                                  l->match == LOC_EXACT ? NULL : l, -1};
        k++;
    }
    if (k > 1)
        qsort(t->st, k, sizeof(*t->st), entry_cmp);

    /* join "= /x" with "/x"; two of a kind are a duplicate */
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        struct static_entry *e = &t->st[i];
        struct static_entry *prev = m ? &t->st[m - 1] : NULL;
        if (prev && prev->len == e->len && memcmp(prev->name, e->name, e->len) == 0) {
            if ((e->exact && prev->exact) || (e->inclusive && prev->inclusive)) {
                snprintf(err, errlen, "duplicate location \"%.*s\"", (int)e->len, e->name);
                return -1;
            }
            if (e->inclusive)
                prev->inclusive = e->inclusive;
            continue;
        }
        t->st[m++] = *e;
    }
    t->nst = m;

    /* the prefixes of entry i that are entries all lie on the chain of i-1 */
    for (size_t i = 0; i < m; i++) {
        ptrdiff_t j = (ptrdiff_t)i - 1;
        while (j >= 0 && !(t->st[j].len < t->st[i].len &&
                           memcmp(t->st[j].name, t->st[i].name, t->st[j].len) == 0))
            j = t->st[j].up;
        t->st[i].up = j;
    }
    return 0;
}

static int build_level(struct arena *a, struct location_set *set, struct location *parent,
                       struct location **locs, size_t n, struct location_tree *t, char *err,
                       size_t errlen)
{
    size_t nst = 0, nrx = 0;
    for (size_t i = 0; i < n; i++) {
        struct location *l = locs[i];
        l->parent = parent;
        if (parent && check_nesting(parent, l, err, errlen) < 0)
            return -1;
        if (is_regex(l)) {
            if (router_location_compile(l, err, errlen) < 0)
                return -1;
            nrx++;
        } else if (l->match == LOC_NAMED) {
            set->nnamed++;
        } else {
            nst++;
        }
    }
    *t = (struct location_tree){0};
    if (nst && !(t->st = arena_alloc(a, nst * sizeof(*t->st))))
        goto nomem;
    if (nrx && !(t->rx = arena_alloc(a, nrx * sizeof(*t->rx))))
        goto nomem;
    if (build_statics(t, locs, n, err, errlen) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (is_regex(locs[i]))
            t->rx[t->nrx++] = (struct regex_entry){locs[i], re_has_jit(locs[i]->re)};
    }

    for (size_t i = 0; i < n; i++) {
        struct location *l = locs[i];
        l->tree = NULL;
        if (!l->nchildren)
            continue;
        if (!(l->tree = arena_alloc(a, sizeof(*l->tree))))
            goto nomem;
        if (build_level(a, set, l, l->children, l->nchildren, l->tree, err, errlen) < 0)
            return -1;
        if (l->tree->nst == 0 && l->tree->nrx == 0)
            l->tree = NULL;
    }
    return 0;
nomem:
    snprintf(err, errlen, "out of memory building locations");
    return -1;
}

struct location_set *router_locations_build(struct arena *a, struct location **locs, size_t n,
                                            char *err, size_t errlen)
{
    struct location_set *s = arena_calloc(a, sizeof(*s));
    if (!s)
        goto nomem;
    if (build_level(a, s, NULL, locs, n, &s->top, err, errlen) < 0)
        return NULL;
    if (s->nnamed && !(s->named = arena_alloc(a, s->nnamed * sizeof(*s->named))))
        goto nomem;
    s->nnamed = 0;
    for (size_t i = 0; i < n; i++)
        if (locs[i]->match == LOC_NAMED)
            s->named[s->nnamed++] = locs[i];
    return s;
nomem:
    snprintf(err, errlen, "out of memory building locations");
    return NULL;
}

/* The exact location equal to `path`, else the longest prefix location. */
static const struct location *static_find(const struct location_tree *t, struct slice path,
                                          bool *is_exact)
{
    size_t lo = 0, hi = t->nst;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (bytes_cmp(t->st[mid].name, t->st[mid].len, path.p, path.len) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    ptrdiff_t i = (ptrdiff_t)lo - 1;
    const struct static_entry *e = &t->st[i];
    size_t common = 0;
    while (common < e->len && common < path.len && e->name[common] == path.p[common])
        common++;
    if (common == e->len && e->len == path.len && e->exact) {
        *is_exact = true;
        return e->exact;
    }
    *is_exact = false;
    for (; i >= 0; i = t->st[i].up)
        if (t->st[i].len <= common && t->st[i].inclusive)
            return t->st[i].inclusive;
    return NULL;
}

/* Mirrors ngx_http_core_find_location(): returns true for a final answer
 * (exact or regex); `*out` holds the best so far either way. Note that
 * "^~" only spares the regexes of its own level: an enclosing level whose
 * prefix was a plain one still tries its own regexes, as nginx does. */
static bool find_in(const struct location_tree *t, struct slice path, struct route_captures *caps,
                    const struct location **out)
{
    bool noregex = false, is_exact;
    const struct location *l = static_find(t, path, &is_exact);
    if (l) {
        *out = l;
        if (is_exact)
            return true;
        noregex = l->match == LOC_PREFIX_NOREGEX;
        if (l->tree && find_in(l->tree, path, caps, out))
            return true;
    }
    if (noregex)
        return false;
    for (size_t i = 0; i < t->nrx; i++) {
        const struct regex_entry *r = &t->rx[i];
        if (!re_exec(r->loc->re, r->jit, path, caps))
            continue;
        *out = r->loc;
        if (r->loc->tree)
            find_in(r->loc->tree, path, caps, out);
        return true;
    }
    return false;
}

const struct location *router_find_location(const struct location_set *s, struct slice path,
                                            struct route_captures *caps)
{
    const struct location *out = NULL;
    if (caps)
        caps->n = 0;
    if (!path.p)
        path.p = "";
    find_in(&s->top, path, caps, &out);
    return out;
}

const struct location *router_find_named(const struct location_set *s, struct slice name)
{
    for (size_t i = 0; i < s->nnamed; i++)
        if (slice_eq(slice_make(s->named[i]->pattern, s->named[i]->pattern_len), name))
            return s->named[i];
    return NULL;
}

/* ------------------------------------------------------------ server names */

#define FNV_BASIS 2166136261u
#define FNV_PRIME 16777619u

static inline uint32_t fnv_step(uint32_t h, char c)
{
    return (h ^ (unsigned char)ascii_lower(c)) * FNV_PRIME;
}

/* exact and leading-wildcard keys: hashed from the last byte to the first */
static uint32_t hash_rev(const char *p, size_t len)
{
    uint32_t h = FNV_BASIS;
    while (len)
        h = fnv_step(h, p[--len]);
    return h;
}

/* trailing-wildcard keys: hashed from the first byte */
static uint32_t hash_fwd(const char *p, size_t len)
{
    uint32_t h = FNV_BASIS;
    for (size_t i = 0; i < len; i++)
        h = fnv_step(h, p[i]);
    return h;
}

struct name_slot {
    const char *name; /* lowercase; NULL = free slot */
    size_t len;
    uint32_t hash;
    const struct vhost *v; /* NULL: name claimed but matching nothing (see add_dot) */
};

struct name_table {
    struct name_slot *slots;
    size_t mask;
    size_t n;
};

struct vhost_regex {
    pcre2_code *re;
    bool jit;
    const struct vhost *v;
};

struct vhost_table {
    struct name_table exact, head, tail;
    struct vhost_regex *rx;
    size_t nrx;
    const struct vhost *def;
};

static int table_init(struct arena *a, struct name_table *t, size_t n)
{
    size_t size = 4;
    while (size < 2 * n)
        size *= 2;
    t->slots = arena_calloc(a, size * sizeof(*t->slots));
    t->mask = size - 1;
    t->n = 0;
    return t->slots ? 0 : -1;
}

/* The slot holding `p` (any case), or the free slot where it would go. */
static struct name_slot *table_slot(const struct name_table *t, const char *p, size_t len,
                                    uint32_t h)
{
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        struct name_slot *s = &t->slots[i];
        if (!s->name)
            return s;
        if (s->hash != h || s->len != len)
            continue;
        size_t k = 0;
        while (k < len && s->name[k] == ascii_lower(p[k]))
            k++;
        if (k == len)
            return s;
    }
}

static const struct name_slot *table_find(const struct name_table *t, const char *p, size_t len,
                                          uint32_t h)
{
    if (t->n == 0)
        return NULL;
    const struct name_slot *s = table_slot(t, p, len, h);
    return s->name ? s : NULL;
}

/* Adds unless taken; returns false if the key was already there (nginx:
 * "conflicting server name ..., ignored" -- the first one wins). */
static bool table_add(struct name_table *t, const char *name, size_t len, uint32_t h,
                      const struct vhost *v)
{
    struct name_slot *s = table_slot(t, name, len, h);
    if (s->name)
        return false;
    *s = (struct name_slot){name, len, h, v};
    t->n++;
    return true;
}

/* ".x" claims the exact name "x" first, then the wildcard "x": like
 * ngx_hash_add_key(), the claim on "x" stays even if the wildcard turns out
 * to be taken by an earlier "*.x". */
static void add_dot(struct vhost_table *t, const char *d, size_t len, const struct vhost *v)
{
    struct name_slot *s = table_slot(&t->exact, d, len, hash_rev(d, len));
    if (s->name)
        return;
    *s = (struct name_slot){d, len, hash_rev(d, len), NULL};
    t->exact.n++;
    if (table_add(&t->head, d, len, hash_rev(d, len), v))
        s->v = v; /* "x" itself matches ".x" */
}

/* Classifies and inserts one server name; -1 if it is not a valid name. */
static int add_name(struct arena *a, struct vhost_table *t, const char *raw, const struct vhost *v)
{
    size_t len = strlen(raw), stars = 0;
    char *n = arena_strndup(a, raw, len);
    if (!n)
        return -2;
    for (size_t i = 0; i < len; i++) {
        n[i] = ascii_lower(n[i]);
        stars += n[i] == '*';
        if (n[i] == '.' && n[i + 1] == '.')
            return -1;
    }
    if (len > 1 && n[0] == '.') {
        if (stars)
            return -1;
        add_dot(t, n + 1, len - 1, v);
    } else if (len > 2 && n[0] == '*' && n[1] == '.') {
        if (stars > 1)
            return -1;
        table_add(&t->head, n + 2, len - 2, hash_rev(n + 2, len - 2), v);
    } else if (len > 2 && n[len - 2] == '.' && n[len - 1] == '*') {
        if (stars > 1)
            return -1;
        table_add(&t->tail, n, len - 2, hash_fwd(n, len - 2), v);
    } else {
        if (stars)
            return -1;
        table_add(&t->exact, n, len, hash_rev(n, len), v);
    }
    return 0;
}

void router_vhosts_free(struct vhost_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nrx; i++)
        pcre2_code_free(t->rx[i].re);
    t->nrx = 0;
}

struct vhost_table *router_vhosts_build(struct arena *a, struct vhost **servers, size_t n,
                                        int default_idx, char *err, size_t errlen)
{
    size_t nnames = 0, nrx = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < servers[i]->nnames; j++) {
            nnames++;
            nrx += servers[i]->names[j][0] == '~';
        }

    struct vhost_table *t = arena_calloc(a, sizeof(*t));
    if (!t || table_init(a, &t->exact, nnames) < 0 || table_init(a, &t->head, nnames) < 0 ||
        table_init(a, &t->tail, nnames) < 0)
        goto nomem;
    if (nrx && !(t->rx = arena_alloc(a, nrx * sizeof(*t->rx))))
        goto nomem;

    for (size_t i = 0; i < n; i++) {
        const struct vhost *v = servers[i];
        for (size_t j = 0; j < v->nnames; j++) {
            const char *name = v->names[j];
            if (name[0] == '~') {
                pcre2_code *re =
                    re_compile(name + 1, strlen(name + 1), PCRE2_CASELESS, err, errlen);
                if (!re)
                    goto fail;
                t->rx[t->nrx++] = (struct vhost_regex){re, re_has_jit(re), v};
                continue;
            }
            int rc = add_name(a, t, name, v);
            if (rc == -2)
                goto nomem;
            if (rc < 0) {
                snprintf(err, errlen, "invalid server name or wildcard \"%s\"", name);
                goto fail;
            }
        }
    }
    if (n)
        t->def = servers[default_idx >= 0 && (size_t)default_idx < n ? (size_t)default_idx : 0];
    return t;
nomem:
    snprintf(err, errlen, "out of memory building server names");
fail:
    router_vhosts_free(t);
    return NULL;
}

/* Host without ":port" (an IPv6 literal keeps its brackets) and without one
 * trailing dot. Always a prefix of `h`, so regex captures point into it. */
static struct slice host_trim(struct slice h)
{
    size_t len = h.len;
    if (len && h.p[0] == '[') {
        const char *end = memchr(h.p, ']', len);
        if (end)
            len = (size_t)(end - h.p) + 1;
    } else if (len) {
        const char *colon = memchr(h.p, ':', len);
        if (colon)
            len = (size_t)(colon - h.p);
    }
    if (len && h.p[len - 1] == '.')
        len--;
    return slice_make(len ? h.p : "", len);
}

const struct vhost *router_find_vhost(const struct vhost_table *t, struct slice host,
                                      struct route_captures *caps)
{
    if (caps)
        caps->n = 0;
    struct slice h = host_trim(host);

    /* one right-to-left pass: exact name and every ".suffix"; the longest
     * (the last seen) leading wildcard wins */
    const struct vhost *wild = NULL;
    uint32_t hr = FNV_BASIS;
    for (size_t i = h.len; i-- > 0;) {
        if (h.p[i] == '.' && t->head.n) {
            const struct name_slot *s = table_find(&t->head, h.p + i + 1, h.len - i - 1, hr);
            if (s)
                wild = s->v;
        }
        hr = fnv_step(hr, h.p[i]);
    }
    const struct name_slot *s = table_find(&t->exact, h.p, h.len, hr);
    if (s && s->v)
        return s->v;
    if (wild)
        return wild;

    if (t->tail.n) {
        uint32_t hf = FNV_BASIS;
        for (size_t i = 0; i < h.len; i++) {
            if (h.p[i] == '.' && (s = table_find(&t->tail, h.p, i, hf)))
                wild = s->v;
            hf = fnv_step(hf, h.p[i]);
        }
        if (wild)
            return wild;
    }

    /* nginx lowercases the host first; here the regexes are caseless and
     * run on the caller's bytes so that captures stay valid after return */
    if (h.len)
        for (size_t i = 0; i < t->nrx; i++)
            if (re_exec(t->rx[i].re, t->rx[i].jit, h, caps))
                return t->rx[i].v;
    return t->def;
}
