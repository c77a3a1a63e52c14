#include "proxy/map.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"
#include "router/router.h"

struct map_key {
    struct slice key; /* exact: lower case; wildcard: the fixed part */
    struct tmpl *value;
    bool dot_form; /* ".example.com": matches example.com itself too */
};

struct map_regex {
    pcre2_code *re;
    struct tmpl *value;
};

struct map_def {
    const char *name;
    struct tmpl *source;
    struct map_key *exact; /* sorted by key (memcmp order), unique */
    size_t nexact;
    struct map_key *suffix; /* hostnames: "*.example.com" / ".example.com" as ".example.com" */
    size_t nsuffix;
    struct map_key *prefix; /* hostnames: "www.example.*" as "www.example." */
    size_t nprefix;
    struct map_regex *regex;
    size_t nregex;
    struct tmpl *dflt; /* NULL: empty */
    bool hostnames;
    bool is_volatile;
    /* split_clients: MurmurHash2 of the source against cumulative bounds */
    uint32_t *split_bound; /* 0 = "*" (the rest) */
    struct slice *split_val;
    size_t nsplit;
    /* geo: networks, longest prefix first (the first match is the best) */
    struct geo_net *geo;
    size_t ngeo;
    bool is_geo;
    bool geo_has_dflt;
    struct slice geo_dflt;
};

struct geo_net {
    struct net_cidr net;
    int bits;
    struct slice value;
};

enum { MAP_UNSEEN, MAP_BUSY, MAP_DONE };

static const struct map_key *find_exact(const struct map_def *m, struct slice low);

/* ---- configuration ---- */

static bool valid_var_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

static bool is_map_like(const struct cf_node *c)
{
    if (strcmp(c->name, "geo") == 0 && c->nargs == 1 && c->args[0][0] == '$')
        return true;
    return (strcmp(c->name, "map") == 0 || strcmp(c->name, "split_clients") == 0 ||
            strcmp(c->name, "geo") == 0) &&
           c->nargs == 2 && c->args[1][0] == '$';
}

const char **map_prescan(struct snapshot *s, const struct cf_node *root, size_t *n)
{
    size_t count = 0;
    for (const struct cf_node *h = root->children; h; h = h->next)
        if (strcmp(h->name, "http") == 0 && h->is_block)
            for (const struct cf_node *c = h->children; c; c = c->next)
                if (is_map_like(c))
                    count++;
    const char **names = arena_calloc(&s->arena, (count + 1) * sizeof(*names));
    s->maps = arena_calloc(&s->arena, (count + 1) * sizeof(*s->maps));
    if (!names || !s->maps)
        return NULL;
    size_t i = 0;
    for (const struct cf_node *h = root->children; h; h = h->next)
        if (strcmp(h->name, "http") == 0 && h->is_block)
            for (const struct cf_node *c = h->children; c; c = c->next)
                if (is_map_like(c))
                    names[i++] = c->args[c->nargs - 1] + 1;
    s->nmaps = count;
    *n = count;
    return names;
}

static int key_cmp(const void *a, const void *b)
{
    const struct map_key *x = a, *y = b;
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.p, y->key.p, n);
    return c ? c : (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

struct map_build {
    struct map_key *exact, *suffix, *prefix;
    size_t nexact, nsuffix, nprefix, cap_exact, cap_suffix, cap_prefix;
    struct map_regex *regex;
    size_t nregex, cap_regex;
};

static int add_key(struct cf_ctx *cx, const struct cf_node *c, struct map_def *m,
                   struct map_build *b, const char *key, struct tmpl *value)
{
    struct arena *a = cx->arena;
    size_t len = strlen(key);
    struct map_key *k;
    bool exact = false;
    if (m->hostnames && (key[0] == '.' || (key[0] == '*' && key[1] == '.'))) {
        bool dot = key[0] == '.';
        const char *fixed = dot ? key : key + 1;
        if (!fixed[1])
            return cf_error(cx, c, "invalid hostname \"%s\" in map", key);
        k = arena_push(a, (void **)&b->suffix, &b->nsuffix, &b->cap_suffix, sizeof(*k));
        if (!k)
            return cf_error(cx, c, "out of memory");
        *k = (struct map_key){slice_cstr(fixed), value, dot};
    } else if (m->hostnames && len > 2 && key[len - 1] == '*' && key[len - 2] == '.') {
        k = arena_push(a, (void **)&b->prefix, &b->nprefix, &b->cap_prefix, sizeof(*k));
        if (!k)
            return cf_error(cx, c, "out of memory");
        *k = (struct map_key){slice_make(key, len - 1), value, false};
    } else {
        k = arena_push(a, (void **)&b->exact, &b->nexact, &b->cap_exact, sizeof(*k));
        if (!k)
            return cf_error(cx, c, "out of memory");
        *k = (struct map_key){slice_make(key, len), value, false};
        exact = true;
    }
    /* keys compare case-insensitively: store them lower case */
    char *low = arena_strndup(a, k->key.p, k->key.len);
    if (!low)
        return cf_error(cx, c, "out of memory");
    for (size_t i = 0; i < k->key.len; i++)
        low[i] = ascii_lower(low[i]);
    if (m->hostnames && exact && k->key.len && low[k->key.len - 1] == '.')
        k->key.len--; /* "example.com." is "example.com" */
    k->key.p = low;
    return 0;
}

/* The slot prescan gave this map's variable, checks on its name. */
static struct map_def *claim(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s)
{
    const char *var = n->args[n->nargs - 1];
    if (var[0] != '$' || !valid_var_name(var + 1)) {
        cf_error(cx, n, "invalid variable name \"%s\"", var);
        return NULL;
    }
    size_t idx = 0;
    while (idx < s->nmaps && s->maps[idx])
        idx++;
    if (idx == s->nmaps) {
        cf_error(cx, n, "%s \"%s\" was not seen in the http block", n->name, var);
        return NULL;
    }
    if (vars_is_builtin(var + 1)) {
        cf_error(cx, n, "the variable \"%s\" is built in: a %s cannot define it", var,
                 strcmp(n->name, "map") == 0 ? "map" : n->name);
        return NULL;
    }
    for (size_t i = 0; i < idx; i++)
        if (strcmp(s->maps[i]->name, var + 1) == 0) {
            cf_error(cx, n, "the duplicate \"%s\" variable", var + 1);
            return NULL;
        }
    struct map_def *m = arena_calloc(cx->arena, sizeof(*m));
    if (!m) {
        cf_error(cx, n, "out of memory");
        return NULL;
    }
    m->name = var + 1;
    s->maps[idx] = m;
    /* geo without a source: the client address ($remote_addr) */
    if (!(m->source = conf_tmpl(cx, n, n->nargs == 2 ? n->args[0] : "$remote_addr")))
        return NULL;
    return m;
}

static int geo_cmp(const void *a, const void *b)
{
    const struct geo_net *x = a, *y = b;
    return (y->bits > x->bits) - (y->bits < x->bits);
}

/* geo [$address] $var { default v; CIDR v; ... }: the value of the longest
 * network holding the address (default: $remote_addr, after realip). */
int map_geo_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s)
{
    struct map_def *m = claim(cx, n, s);
    if (!m)
        return -1;
    m->is_geo = true;
    size_t cnt = 0;
    for (const struct cf_node *c = n->children; c; c = c->next)
        cnt++;
    m->geo = arena_calloc(cx->arena, (cnt ? cnt : 1) * sizeof(*m->geo));
    if (!m->geo)
        return cf_error(cx, n, "out of memory");
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if (strcmp(c->name, "ranges") == 0 || strcmp(c->name, "proxy") == 0 ||
            strcmp(c->name, "proxy_recursive") == 0 || strcmp(c->name, "delete") == 0)
            return cf_error(cx, c,
                            "\"%s\" is not supported in geo (use set_real_ip_from for "
                            "proxies, CIDR networks instead of ranges)",
                            c->name);
        if (c->is_block || c->nargs != 1)
            return cf_error(cx, c, "invalid number of the geo parameters");
        struct slice v = slice_cstr(c->args[0]);
        if (strcmp(c->name, "default") == 0) {
            if (m->geo_has_dflt)
                return cf_error(cx, c, "duplicate default geo parameter");
            m->geo_dflt = v; /* geo values are text, never variables (nginx) */
            m->geo_has_dflt = true;
            continue;
        }
        struct geo_net *g = &m->geo[m->ngeo];
        if (net_cidr_parse(c->name, &g->net) < 0 || g->net.family == 0)
            return cf_error(cx, c, "invalid network \"%s\" in geo", c->name);
        g->bits = 0;
        for (int i = 0; i < 16; i++)
            for (int b = 0; b < 8; b++)
                g->bits += (g->net.mask[i] >> b) & 1;
        for (size_t k = 0; k < m->ngeo; k++)
            if (m->geo[k].bits == g->bits && m->geo[k].net.family == g->net.family &&
                memcmp(m->geo[k].net.addr, g->net.addr, 16) == 0)
                return cf_error(cx, c, "duplicate network \"%s\" in geo", c->name);
        g->value = v;
        m->ngeo++;
    }
    if (m->ngeo > 1)
        qsort(m->geo, m->ngeo, sizeof(*m->geo), geo_cmp);
    return 0;
}

/* split_clients STRING $var { 0.5% a; 20% b; * c; }: nginx's percentages of
 * MurmurHash2(STRING), so the same clients land in the same bucket. */
int map_split_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s)
{
    struct map_def *m = claim(cx, n, s);
    if (!m)
        return -1;
    size_t cnt = 0;
    for (const struct cf_node *c = n->children; c; c = c->next)
        cnt++;
    m->split_bound = arena_calloc(cx->arena, (cnt ? cnt : 1) * sizeof(*m->split_bound));
    m->split_val = arena_calloc(cx->arena, (cnt ? cnt : 1) * sizeof(*m->split_val));
    if (!m->split_bound || !m->split_val)
        return cf_error(cx, n, "out of memory");
    uint32_t sum = 0; /* hundredths of a percent */
    uint64_t last = 0;
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if (c->is_block || c->nargs != 1)
            return cf_error(cx, c, "invalid number of the split_clients parameters");
        const char *pc = c->name;
        uint32_t part = 0;
        if (strcmp(pc, "*") != 0) {
            /* "12%", "0.5%", "33.33%": up to two decimals */
            size_t len = strlen(pc);
            uint32_t whole = 0, frac = 0;
            int fd = -1;
            bool ok = len >= 2 && pc[len - 1] == '%';
            for (size_t i = 0; ok && i + 1 < len; i++) {
                if (pc[i] == '.' && fd < 0) {
                    fd = 0;
                } else if (pc[i] >= '0' && pc[i] <= '9' && whole < 1000 && fd < 2) {
                    if (fd < 0)
                        whole = whole * 10 + (uint32_t)(pc[i] - '0');
                    else
                        frac = frac * 10 + (uint32_t)(pc[i] - '0'), fd++;
                } else {
                    ok = false;
                }
            }
            if (fd == 1)
                frac *= 10;
            part = whole * 100 + frac;
            if (!ok || part == 0)
                return cf_error(cx, c, "invalid percent value \"%s\"", pc);
        }
        sum = part ? sum + part : 10000;
        if (sum > 10000)
            return cf_error(cx, c, "percent total is greater than 100%%");
        if (part) {
            last += (uint64_t)part * 0xffffffffu / 10000;
            m->split_bound[m->nsplit] = (uint32_t)last;
        }
        m->split_val[m->nsplit++] = slice_cstr(c->args[0]);
    }
    return 0;
}

int map_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s)
{
    const char *var = n->args[1];
    struct map_def *m = claim(cx, n, s); /* from now on maps_free sees its regexes */
    if (!m)
        return -1;

    /* flags first: `hostnames` changes how every key reads */
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if (c->nargs == 0 && strcmp(c->name, "hostnames") == 0)
            m->hostnames = true;
        else if (c->nargs == 0 && strcmp(c->name, "volatile") == 0)
            m->is_volatile = true;
    }
    struct map_build b = {0};
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if (c->is_block)
            return cf_error(cx, c, "unexpected \"{\" in map");
        if (c->nargs == 0 &&
            (strcmp(c->name, "hostnames") == 0 || strcmp(c->name, "volatile") == 0))
            continue;
        if (c->nargs != 1)
            return cf_error(cx, c, "invalid number of the map parameters");
        struct tmpl *value = conf_tmpl(cx, c, c->args[0]);
        if (!value)
            return -1;
        const char *key = c->name;
        if (strcmp(key, "default") == 0) {
            if (m->dflt)
                return cf_error(cx, c, "duplicate default map parameter");
            m->dflt = value;
            continue;
        }
        if (key[0] == '~') {
            bool ci = key[1] == '*';
            const char *pat = key + 1 + ci;
            char err[256];
            struct map_regex *r =
                arena_push(cx->arena, (void **)&b.regex, &b.nregex, &b.cap_regex, sizeof(*r));
            if (!r)
                return cf_error(cx, c, "out of memory");
            r->value = value;
            r->re = router_regex_compile(pat, strlen(pat), ci, err, sizeof(err));
            if (!r->re) {
                b.nregex--;
                return cf_error(cx, c, "%s", err);
            }
            m->regex = b.regex; /* kept current so maps_free finds every one */
            m->nregex = b.nregex;
            continue;
        }
        if (key[0] == '\\')
            key++; /* "\default", "\~x": the text itself */
        if (add_key(cx, c, m, &b, key, value) < 0)
            return -1;
    }
    if (b.nexact > 1)
        qsort(b.exact, b.nexact, sizeof(*b.exact), key_cmp);
    for (size_t i = 1; i < b.nexact; i++)
        if (key_cmp(&b.exact[i - 1], &b.exact[i]) == 0)
            return cf_error(cx, n, "conflicting parameter \"%.*s\" in map %s",
                            (int)b.exact[i].key.len, b.exact[i].key.p, var);
    m->exact = b.exact;
    m->nexact = b.nexact;
    /* ".example.com" is also the exact "example.com": both is a conflict */
    for (size_t i = 0; i < b.nsuffix; i++) {
        const struct map_key *k = &b.suffix[i];
        bool clash = k->dot_form && find_exact(m, slice_make(k->key.p + 1, k->key.len - 1));
        for (size_t j = 0; j < i && !clash; j++)
            clash = b.suffix[j].dot_form == k->dot_form && slice_eq(b.suffix[j].key, k->key);
        if (clash)
            return cf_error(cx, n, "conflicting parameter \"%s%.*s\" in map %s",
                            k->dot_form ? "" : "*", (int)k->key.len, k->key.p, var);
    }
    for (size_t i = 0; i < b.nprefix; i++)
        for (size_t j = 0; j < i; j++)
            if (slice_eq(b.prefix[j].key, b.prefix[i].key))
                return cf_error(cx, n, "conflicting parameter \"%.*s*\" in map %s",
                                (int)b.prefix[i].key.len, b.prefix[i].key.p, var);
    m->suffix = b.suffix;
    m->nsuffix = b.nsuffix;
    m->prefix = b.prefix;
    m->nprefix = b.nprefix;
    return 0;
}

const char *map_name(const struct map_def *m)
{
    return m->name;
}

void maps_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->nmaps; i++) {
        struct map_def *m = s->maps ? s->maps[i] : NULL;
        for (size_t j = 0; m && j < m->nregex; j++)
            pcre2_code_free(m->regex[j].re);
    }
}

/* ---- lookup ---- */

static const struct map_key *find_exact(const struct map_def *m, struct slice low)
{
    size_t lo = 0, hi = m->nexact;
    struct map_key probe = {low, NULL, false};
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = key_cmp(&probe, &m->exact[mid]);
        if (c == 0)
            return &m->exact[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static const struct map_key *find_wild(const struct map_def *m, struct slice low)
{
    const struct map_key *best = NULL;
    for (size_t i = 0; i < m->nsuffix; i++) {
        const struct map_key *k = &m->suffix[i];
        bool hit =
            low.len > k->key.len && memcmp(low.p + low.len - k->key.len, k->key.p, k->key.len) == 0;
        /* ".example.com" is "example.com" and everything under it */
        if (!hit && k->dot_form)
            hit = low.len == k->key.len - 1 && memcmp(low.p, k->key.p + 1, low.len) == 0;
        if (hit && (!best || k->key.len > best->key.len))
            best = k;
    }
    if (best)
        return best;
    for (size_t i = 0; i < m->nprefix; i++) {
        const struct map_key *k = &m->prefix[i];
        if (low.len > k->key.len && memcmp(low.p, k->key.p, k->key.len) == 0 &&
            (!best || k->key.len > best->key.len))
            best = k;
    }
    return best;
}

static struct slice value_of(struct exchange *ex, const struct tmpl *t)
{
    if (!t)
        return SLICE_NULL;
    if (t->is_const)
        return t->parts[0].lit;
    return tmpl_eval(ex, t, ESC_NONE);
}

static struct slice lookup(struct exchange *ex, const struct map_def *m, struct slice src)
{
    if (m->hostnames && src.len && src.p[src.len - 1] == '.')
        src.len--;
    if (m->nexact || m->nsuffix || m->nprefix) {
        char stack[256];
        char *low = src.len <= sizeof(stack) ? stack : arena_alloc(&ex->arena, src.len);
        if (low) {
            for (size_t i = 0; i < src.len; i++)
                low[i] = ascii_lower(src.p[i]);
            struct slice l = slice_make(low, src.len);
            const struct map_key *k = find_exact(m, l);
            if (!k && m->hostnames)
                k = find_wild(m, l);
            if (k)
                return value_of(ex, k->value);
        }
    }
    for (size_t i = 0; i < m->nregex; i++) {
        struct route_captures caps = {0};
        if (!router_regex_match(m->regex[i].re, src, &caps))
            continue;
        if (m->regex[i].value->is_const)
            return m->regex[i].value->parts[0].lit;
        /* the value sees this regex's captures as $1.. and $name */
        struct route_captures saved = ex->caps;
        ex->caps = caps;
        struct slice v = tmpl_eval(ex, m->regex[i].value, ESC_NONE);
        ex->caps = saved;
        return v;
    }
    return value_of(ex, m->dflt);
}

/* MurmurHash2, as nginx's ngx_murmur_hash2 (seed: the length). */
static uint32_t murmur2(const unsigned char *d, size_t len)
{
    uint32_t h = (uint32_t)len, k;
    while (len >= 4) {
        k = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
        k *= 0x5bd1e995;
        k ^= k >> 24;
        k *= 0x5bd1e995;
        h *= 0x5bd1e995;
        h ^= k;
        d += 4;
        len -= 4;
    }
    switch (len) {
    case 3:
        h ^= (uint32_t)d[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)d[1] << 8;
        /* fall through */
    case 1:
        h ^= d[0];
        h *= 0x5bd1e995;
    }
    h ^= h >> 13;
    h *= 0x5bd1e995;
    h ^= h >> 15;
    return h;
}

static struct slice geo_lookup(struct exchange *ex, const struct map_def *m, struct slice src)
{
    char buf[64];
    struct net_addr a;
    memset(&a, 0, sizeof(a));
    if (src.len && src.len < sizeof(buf)) {
        memcpy(buf, src.p, src.len);
        buf[src.len] = '\0';
        if (inet_pton(AF_INET, buf, &a.in4.sin_addr) == 1) {
            a.in4.sin_family = AF_INET;
            a.len = sizeof(a.in4);
        } else if (inet_pton(AF_INET6, buf, &a.in6.sin6_addr) == 1) {
            a.in6.sin6_family = AF_INET6;
            a.len = sizeof(a.in6);
            if (IN6_IS_ADDR_V4MAPPED(&a.in6.sin6_addr)) { /* ::ffff:a.b.c.d is IPv4 */
                struct in_addr v4;
                memcpy(&v4, a.in6.sin6_addr.s6_addr + 12, 4);
                memset(&a, 0, sizeof(a));
                a.in4.sin_family = AF_INET;
                a.in4.sin_addr = v4;
                a.len = sizeof(a.in4);
            }
        }
    }
    if (!a.len) { /* not an address: nginx looks up 255.255.255.255 */
        a.in4.sin_family = AF_INET;
        a.in4.sin_addr.s_addr = 0xffffffffu;
        a.len = sizeof(a.in4);
    }
    for (size_t i = 0; i < m->ngeo; i++)
        if (net_cidr_match(&m->geo[i].net, &a))
            return m->geo[i].value;
    return m->geo_dflt;
}

static struct slice split(const struct map_def *m, struct slice src)
{
    uint32_t h = murmur2((const unsigned char *)(src.p ? src.p : ""), src.len);
    for (size_t i = 0; i < m->nsplit; i++)
        if (h < m->split_bound[i] || m->split_bound[i] == 0)
            return m->split_val[i];
    return SLICE_NULL;
}

struct slice map_value(struct exchange *ex, int idx)
{
    const struct snapshot *s = ex->snap;
    if (!s || idx < 0 || (size_t)idx >= s->nmaps || !s->maps[idx])
        return SLICE_NULL;
    const struct map_def *m = s->maps[idx];
    if (!ex->map_vals) {
        ex->map_vals = arena_calloc(&ex->arena, s->nmaps * sizeof(*ex->map_vals));
        ex->map_state = arena_calloc(&ex->arena, s->nmaps);
        if (!ex->map_vals || !ex->map_state) {
            ex->map_vals = NULL;
            return SLICE_NULL;
        }
    }
    if (ex->map_state[idx] == MAP_DONE && !m->is_volatile)
        return ex->map_vals[idx];
    if (ex->map_state[idx] == MAP_BUSY) {
        LOG(LOG_ERR, "*%llu cycle while evaluating variable \"%s\"", (unsigned long long)ex->id,
            m->name);
        return SLICE_NULL;
    }
    ex->map_state[idx] = MAP_BUSY;
    struct slice src = tmpl_eval(ex, m->source, ESC_NONE);
    struct slice v = m->is_geo        ? geo_lookup(ex, m, src)
                     : m->split_bound ? split(m, src)
                                      : lookup(ex, m, src);
    ex->map_vals[idx] = v;
    ex->map_state[idx] = MAP_DONE;
    return v;
}
