#include "proxy/securelink.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

void securelink_conf_merge(struct securelink_conf *c, const struct securelink_conf *p)
{
    if (!c->link)
        c->link = p->link;
    if (!c->md5)
        c->md5 = p->md5;
    if (!c->secret)
        c->secret = p->secret;
}

static struct securelink_conf *SL(void *conf)
{
    return &((struct loc_conf *)conf)->securelink;
}

static int set_tmpl(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    struct securelink_conf *c = SL(conf);
    struct tmpl **slot = !strcmp(d->name, "secure_link") ? &c->link : &c->md5;
    if (*slot)
        return cf_error(cx, n, "\"%s\" directive is duplicate", d->name);
    *slot = conf_tmpl(cx, n, n->args[0]);
    return *slot ? 0 : -1;
}

static int set_secret(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    struct securelink_conf *c = SL(conf);
    if (c->secret)
        return cf_error(cx, n, "\"secure_link_secret\" directive is duplicate");
    c->secret = n->args[0];
    return 0;
}

#define LOC_ANY (CF_HTTP | CF_SERVER | CF_LOCATION)

static const struct cf_directive securelink_directives[] = {
    {"secure_link", LOC_ANY, 1, 1, false, set_tmpl, CONF_LOC, 0, "expression", "-",
     "where the link's signature is: \"md5[,expires]\" (base64url MD5, a Unix time), e.g. "
     "$arg_md5,$arg_expires; $secure_link is then 1 (valid), 0 (expired) or empty"},
    {"secure_link_md5", LOC_ANY, 1, 1, false, set_tmpl, CONF_LOC, 0, "expression", "-",
     "what the MD5 of secure_link is taken over, e.g. \"$secure_link_expires$uri$remote_addr "
     "secret\""},
    {"secure_link_secret", CF_LOCATION, 1, 1, false, set_secret, CONF_LOC, 0, "word", "-",
     "the other form: a URI /prefix/<md5 hex of link + word>/link, $secure_link is the link "
     "(empty when the hash is wrong)"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module securelink_cf_module = {"secure_link", securelink_directives};

static int b64url_md5(struct slice s, unsigned char out[16])
{
    unsigned acc = 0, bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.p[i];
        int v = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '-' || c == '+' ? 62
                : c == '_' || c == '/' ? 63
                : c == '='             ? -2
                                       : -1;
        if (v == -2)
            break;
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == 16)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o == 16 ? 0 : -1;
}

static bool md5_of(struct slice s, unsigned char out[16])
{
    unsigned int len = 0;
    return EVP_Digest(s.p, s.len, out, &len, EVP_md5(), NULL) == 1 && len == 16;
}

/* "hash[,expires]" of secure_link: the hash part and the expiry (-1 none). */
static struct slice split_link(struct exchange *ex, int64_t *expires)
{
    struct slice v = tmpl_eval(ex, ex->lc->securelink.link, ESC_NONE);
    const char *comma = memchr(v.p, ',', v.len);
    *expires = -1;
    if (!comma)
        return v;
    int64_t e = 0;
    const char *p = comma + 1, *end = v.p + v.len;
    if (p == end)
        e = -2;
    for (; p < end && e >= 0; p++)
        e = *p >= '0' && *p <= '9' && e < (int64_t)1e15 ? e * 10 + (*p - '0') : -2;
    *expires = e; /* -2: malformed */
    return slice_make(v.p, (size_t)(comma - v.p));
}

static struct slice by_secret(struct exchange *ex)
{
    /* /prefix/<32 hex>/link */
    struct slice u = ex->uri;
    const char *end = u.p + u.len;
    const char *a = u.len > 1 ? memchr(u.p + 1, '/', u.len - 1) : NULL;
    if (!a)
        return SLICE_NULL;
    const char *h = a + 1, *b = memchr(h, '/', (size_t)(end - h));
    if (!b || b - h != 32)
        return SLICE_NULL;
    struct slice link = slice_make(b + 1, (size_t)(end - b - 1));
    const char *secret = ex->lc->securelink.secret;
    size_t sl = strlen(secret);
    char *msg = arena_alloc(&ex->arena, link.len + sl + 1);
    unsigned char want[16], got[16];
    if (!msg)
        return SLICE_NULL;
    memcpy(msg, link.p, link.len);
    memcpy(msg + link.len, secret, sl);
    for (int i = 0; i < 16; i++) {
        unsigned hi, lo;
        if (sscanf(h + 2 * i, "%1x%1x", &hi, &lo) != 2)
            return SLICE_NULL;
        got[i] = (unsigned char)(hi << 4 | lo);
    }
    if (!md5_of(slice_make(msg, link.len + sl), want) || CRYPTO_memcmp(want, got, 16) != 0)
        return SLICE_NULL;
    return link;
}

struct slice securelink_value(struct exchange *ex)
{
    const struct securelink_conf *c = ex->lc ? &ex->lc->securelink : NULL;
    if (!c)
        return SLICE_NULL;
    if (c->secret && !c->link)
        return by_secret(ex);
    if (!c->link || !c->md5)
        return SLICE_NULL;
    int64_t expires;
    struct slice hash = split_link(ex, &expires);
    unsigned char got[16], want[16];
    if (expires == -2 || b64url_md5(hash, got) < 0)
        return SLICE_NULL;
    struct slice text = tmpl_eval(ex, c->md5, ESC_NONE);
    if (!md5_of(text, want) || CRYPTO_memcmp(want, got, 16) != 0)
        return SLICE_NULL;
    if (expires >= 0 && expires < (int64_t)time(NULL))
        return SLICE_LIT("0");
    return SLICE_LIT("1");
}

struct slice securelink_expires(struct exchange *ex)
{
    if (!ex->lc || !ex->lc->securelink.link)
        return SLICE_NULL;
    int64_t expires;
    split_link(ex, &expires);
    if (expires < 0)
        return SLICE_NULL;
    char *b = arena_alloc(&ex->arena, 24);
    if (!b)
        return SLICE_NULL;
    int n = snprintf(b, 24, "%lld", (long long)expires);
    return slice_make(b, (size_t)n);
}
