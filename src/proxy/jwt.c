/* auth_jwt (jwt.h): a small JSON reader (objects, strings with escapes,
 * numbers, literals, nesting bounded), base64url, JWK keys turned into
 * OpenSSL keys at load, and JWS verification with OpenSSL. */
#include "proxy/jwt.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/rules.h"
#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

#define JSON_DEPTH 32

/* ---- JSON ---- */

static const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *skip_string(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        if (*p == '\\') {
            p++;
            continue;
        }
        if (*p == '"')
            return p + 1;
        if ((unsigned char)*p < 0x20)
            return NULL;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *e, int depth)
{
    p = ws(p, e);
    if (p >= e || depth > JSON_DEPTH)
        return NULL;
    if (*p == '"')
        return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        bool obj = *p == '{';
        p = ws(p + 1, e);
        if (p < e && *p == close)
            return p + 1;
        for (;;) {
            if (obj) {
                p = ws(p, e);
                if (p >= e || *p != '"' || !(p = skip_string(p, e)))
                    return NULL;
                p = ws(p, e);
                if (p >= e || *p != ':')
                    return NULL;
                p++;
            }
            if (!(p = skip_value(p, e, depth + 1)))
                return NULL;
            p = ws(p, e);
            if (p < e && *p == ',') {
                p++;
                continue;
            }
            if (p < e && *p == close)
                return p + 1;
            return NULL;
        }
    }
    const char *s = p;
    while (p < e && (strchr("+-.0123456789eE", *p) || (*p >= 'a' && *p <= 'z')))
        p++;
    if (p == s)
        return NULL;
    size_t n = (size_t)(p - s);
    if ((n == 4 && !memcmp(s, "true", 4)) || (n == 5 && !memcmp(s, "false", 5)) ||
        (n == 4 && !memcmp(s, "null", 4)))
        return p;
    if (*s == '-' || (*s >= '0' && *s <= '9')) {
        for (const char *q = s; q < p; q++)
            if (!strchr("+-.0123456789eE", *q))
                return NULL;
        return p;
    }
    return NULL;
}

static void put_utf8(char *out, size_t *o, uint32_t c)
{
    if (c < 0x80) {
        out[(*o)++] = (char)c;
    } else if (c < 0x800) {
        out[(*o)++] = (char)(0xc0 | c >> 6);
        out[(*o)++] = (char)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
        out[(*o)++] = (char)(0xe0 | c >> 12);
        out[(*o)++] = (char)(0x80 | (c >> 6 & 0x3f));
        out[(*o)++] = (char)(0x80 | (c & 0x3f));
    } else {
        out[(*o)++] = (char)(0xf0 | c >> 18);
        out[(*o)++] = (char)(0x80 | (c >> 12 & 0x3f));
        out[(*o)++] = (char)(0x80 | (c >> 6 & 0x3f));
        out[(*o)++] = (char)(0x80 | (c & 0x3f));
    }
}

static int hex4(const char *p, const char *e, uint32_t *v)
{
    if (e - p < 4)
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* The text of a JSON string token [p, e) (quotes included), unescaped into
 * out (room: e - p). Length, or -1. */
static long unescape(const char *p, const char *e, char *out)
{
    size_t o = 0;
    for (p++, e--; p < e; p++) {
        if (*p != '\\') {
            out[o++] = *p;
            continue;
        }
        if (++p >= e)
            return -1;
        switch (*p) {
        case '"':
        case '\\':
        case '/':
            out[o++] = *p;
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            uint32_t c;
            if (hex4(p + 1, e, &c) < 0)
                return -1;
            p += 4;
            if (c >= 0xd800 && c < 0xdc00 && e - p > 6 && p[1] == '\\' && p[2] == 'u') {
                uint32_t lo;
                if (hex4(p + 3, e, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                    c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            if (c == 0)
                return -1; /* no NUL in a value that may become a header */
            put_utf8(out, &o, c);
            break;
        }
        default:
            return -1;
        }
    }
    return (long)o;
}

/* The raw value of member `name` of the object in [p, e); false if absent
 * or the text is not an object. */
static bool member(const char *p, const char *e, const char *name, size_t nl, struct slice *val)
{
    p = ws(p, e);
    if (p >= e || *p != '{')
        return false;
    p = ws(p + 1, e);
    if (p < e && *p == '}')
        return false;
    char key[128];
    for (;;) {
        p = ws(p, e);
        const char *ks = p, *ke;
        if (p >= e || *p != '"' || !(ke = skip_string(p, e)))
            return false;
        long kl = ke - ks <= (long)sizeof(key) ? unescape(ks, ke, key) : -1;
        p = ws(ke, e);
        if (p >= e || *p != ':')
            return false;
        const char *vs = ws(p + 1, e), *ve = skip_value(vs, e, 1);
        if (!ve)
            return false;
        if (kl == (long)nl && !memcmp(key, name, nl)) {
            *val = slice_make(vs, (size_t)(ve - vs));
            return true;
        }
        p = ws(ve, e);
        if (p < e && *p == ',') {
            p++;
            continue;
        }
        return false;
    }
}

/* A string member, unescaped into `out` (cap bytes); false if absent or
 * not a string. */
static bool member_str(struct slice obj, const char *name, char *out, size_t cap, size_t *len)
{
    struct slice v;
    if (!member(obj.p, obj.p + obj.len, name, strlen(name), &v) || !v.len || v.p[0] != '"' ||
        v.len > cap)
        return false;
    long n = unescape(v.p, v.p + v.len, out);
    if (n < 0)
        return false;
    *len = (size_t)n;
    return true;
}

struct slice jwt_json_member(struct arena *a, struct slice object, struct slice name)
{
    struct slice v;
    if (!object.len || !member(object.p, object.p + object.len, name.p, name.len, &v))
        return SLICE_NULL;
    if (v.p[0] != '"')
        return v;
    char *out = arena_alloc(a, v.len);
    long n = out ? unescape(v.p, v.p + v.len, out) : -1;
    return n < 0 ? SLICE_NULL : slice_make(out, (size_t)n);
}

/* A NumericDate member (seconds; a fraction is dropped); false if absent. */
static bool member_time(struct slice obj, const char *name, int64_t *t, bool *bad)
{
    struct slice v;
    if (!member(obj.p, obj.p + obj.len, name, strlen(name), &v))
        return false;
    char buf[32];
    if (v.len >= sizeof(buf) || v.p[0] == '"' || v.p[0] == '{' || v.p[0] == '[') {
        *bad = true;
        return true;
    }
    memcpy(buf, v.p, v.len);
    buf[v.len] = '\0';
    char *end;
    double d = strtod(buf, &end);
    if (*end || d != d || d < -1e15 || d > 1e15) {
        *bad = true;
        return true;
    }
    *t = (int64_t)d;
    return true;
}

/* ---- base64url ---- */

static long b64url(const char *in, size_t n, unsigned char *out, size_t cap)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        int v = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '-'             ? 62
                : c == '_'             ? 63
                                       : -1;
        if (c == '=' && i + 2 >= n)
            break; /* padding some libraries add */
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits >= 6)
        return -1; /* one dangling character */
    return (long)o;
}

/* ---- keys ---- */

enum kty { K_OCT, K_RSA, K_EC, K_OKP };

struct jwt_key {
    char kid[128];
    size_t kidlen;
    enum kty kty;
    EVP_PKEY *pkey;
    unsigned char secret[512];
    size_t slen;
    size_t ec_len; /* EC: the curve's coordinate length (32 P-256, 48 P-384, 66 P-521) */
};

struct jwt_keyset {
    struct jwt_key *v;
    size_t n;
};

static EVP_PKEY *rsa_key(const unsigned char *n, size_t nl, const unsigned char *e, size_t el)
{
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (bn && be && b && ctx && OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(b)) && EVP_PKEY_fromdata_init(ctx) == 1)
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    EVP_PKEY_CTX_free(ctx);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

static EVP_PKEY *ec_key(const char *group, const unsigned char *x, const unsigned char *y,
                        size_t len)
{
    unsigned char pub[1 + 2 * 66];
    pub[0] = 4;
    memcpy(pub + 1, x, len);
    memcpy(pub + 1 + len, y, len);
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * len),
        OSSL_PARAM_construct_end(),
    };
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx && EVP_PKEY_fromdata_init(ctx) == 1)
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

static void keyset_free(struct jwt_keyset *ks)
{
    if (!ks)
        return;
    for (size_t i = 0; i < ks->n; i++) {
        EVP_PKEY_free(ks->v[i].pkey);
        OPENSSL_cleanse(ks->v[i].secret, sizeof(ks->v[i].secret));
    }
    free(ks->v);
    free(ks);
}

/* Parse a JWK set ({"keys": [...]}, or one JWK). NULL with a message. */
static struct jwt_keyset *keyset_parse(const char *text, size_t len, char *err, size_t errlen)
{
    struct slice all = slice_make(text, len), keys;
    const char *e = text + len;
    bool one = false;
    if (!member(text, e, "keys", 4, &keys)) {
        if (!member(text, e, "kty", 3, &keys)) {
            snprintf(err, errlen, "not a JWK set (no \"keys\")");
            return NULL;
        }
        one = true;
    } else if (keys.p[0] != '[') {
        snprintf(err, errlen, "\"keys\" is not an array");
        return NULL;
    }
    struct jwt_keyset *ks = calloc(1, sizeof(*ks));
    if (!ks) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *p = one ? NULL : ws(keys.p + 1, keys.p + keys.len);
    const char *ke = one ? NULL : keys.p + keys.len;
    for (;;) {
        struct slice k;
        if (one) {
            k = all;
        } else {
            p = ws(p, ke);
            if (p >= ke || *p == ']')
                break;
            const char *q = skip_value(p, ke, 1);
            if (!q) {
                snprintf(err, errlen, "invalid JSON in \"keys\"");
                goto fail;
            }
            k = slice_make(p, (size_t)(q - p));
            p = ws(q, ke);
            if (p < ke && *p == ',')
                p++;
        }
        struct jwt_key key = {0};
        char kty[16], crv[16], use[16];
        size_t l;
        if (!member_str(k, "kty", kty, sizeof(kty), &l)) {
            snprintf(err, errlen, "a key without \"kty\"");
            goto fail;
        }
        kty[l] = '\0';
        if (member_str(k, "use", use, sizeof(use), &l) && !(l == 3 && !memcmp(use, "sig", 3))) {
            if (one)
                break;
            continue; /* an encryption key */
        }
        if (member_str(k, "kid", key.kid, sizeof(key.kid) - 1, &key.kidlen))
            key.kid[key.kidlen] = '\0';
        unsigned char a[1024], b[1024];
        char t1[1400], t2[1400];
        size_t l1, l2;
        long n1 = -1, n2 = -1;
        if (!strcmp(kty, "oct")) {
            key.kty = K_OCT;
            if (member_str(k, "k", t1, sizeof(t1), &l1))
                n1 = b64url(t1, l1, key.secret, sizeof(key.secret));
            if (n1 <= 0) {
                snprintf(err, errlen, "an \"oct\" key without a valid \"k\"");
                goto fail;
            }
            key.slen = (size_t)n1;
        } else if (!strcmp(kty, "RSA")) {
            key.kty = K_RSA;
            if (member_str(k, "n", t1, sizeof(t1), &l1))
                n1 = b64url(t1, l1, a, sizeof(a));
            if (member_str(k, "e", t2, sizeof(t2), &l2))
                n2 = b64url(t2, l2, b, sizeof(b));
            if (n1 < 128 || n2 <= 0 || !(key.pkey = rsa_key(a, (size_t)n1, b, (size_t)n2))) {
                snprintf(err, errlen,
                         "an \"RSA\" key without a valid \"n\" and \"e\" (1024 bits at "
                         "least)");
                goto fail;
            }
        } else if (!strcmp(kty, "EC") || !strcmp(kty, "OKP")) {
            bool ec = kty[0] == 'E';
            key.kty = ec ? K_EC : K_OKP;
            if (!member_str(k, "crv", crv, sizeof(crv) - 1, &l)) {
                snprintf(err, errlen, "a \"%s\" key without \"crv\"", kty);
                goto fail;
            }
            crv[l] = '\0';
            if (member_str(k, "x", t1, sizeof(t1), &l1))
                n1 = b64url(t1, l1, a, sizeof(a));
            if (ec && member_str(k, "y", t2, sizeof(t2), &l2))
                n2 = b64url(t2, l2, b, sizeof(b));
            if (ec) {
                const char *group = !strcmp(crv, "P-256")   ? "prime256v1"
                                    : !strcmp(crv, "P-384") ? "secp384r1"
                                    : !strcmp(crv, "P-521") ? "secp521r1"
                                                            : NULL;
                size_t fl = crv[2] == '2' ? 32 : crv[2] == '3' ? 48 : 66;
                /* coordinates are fixed-length (RFC 7518), but some libraries drop a
                 * leading zero byte: pad them back */
                if (group && n1 > 0 && n2 > 0 && n1 <= (long)fl && n2 <= (long)fl) {
                    memmove(a + fl - (size_t)n1, a, (size_t)n1);
                    memset(a, 0, fl - (size_t)n1);
                    memmove(b + fl - (size_t)n2, b, (size_t)n2);
                    memset(b, 0, fl - (size_t)n2);
                    n1 = n2 = (long)fl;
                }
                key.ec_len = fl;
                if (!group || n1 != (long)fl || n2 != (long)fl ||
                    !(key.pkey = ec_key(group, a, b, fl))) {
                    snprintf(err, errlen, "an \"EC\" key with an unknown curve or bad \"x\"/\"y\"");
                    goto fail;
                }
            } else {
                if (strcmp(crv, "Ed25519") || n1 != 32 ||
                    !(key.pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, a, 32))) {
                    snprintf(err, errlen, "an \"OKP\" key that is not a valid Ed25519 key");
                    goto fail;
                }
            }
        } else {
            snprintf(err, errlen, "unsupported \"kty\" \"%s\"", kty);
            goto fail;
        }
        struct jwt_key *nv = realloc(ks->v, (ks->n + 1) * sizeof(*nv));
        if (!nv) {
            EVP_PKEY_free(key.pkey);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        ks->v = nv;
        ks->v[ks->n++] = key;
        if (one)
            break;
    }
    if (!ks->n) {
        snprintf(err, errlen, "no signing key");
        goto fail;
    }
    return ks;
fail:
    keyset_free(ks);
    return NULL;
}

/* ---- verification ---- */

static const EVP_MD *alg_md(const char *alg)
{
    const char *bits = alg + 2;
    return !strcmp(bits, "256")   ? EVP_sha256()
           : !strcmp(bits, "384") ? EVP_sha384()
           : !strcmp(bits, "512") ? EVP_sha512()
                                  : NULL;
}

static bool verify_with(const struct jwt_key *k, const char *alg, const unsigned char *data,
                        size_t dl, const unsigned char *sig, size_t sl)
{
    if (!strcmp(alg, "EdDSA")) {
        if (k->kty != K_OKP)
            return false;
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        bool ok = c && EVP_DigestVerifyInit(c, NULL, NULL, NULL, k->pkey) == 1 &&
                  EVP_DigestVerify(c, sig, sl, data, dl) == 1;
        EVP_MD_CTX_free(c);
        return ok;
    }
    const EVP_MD *md = strlen(alg) == 5 ? alg_md(alg) : NULL;
    if (!md)
        return false;
    if (alg[0] == 'H' && alg[1] == 'S') {
        if (k->kty != K_OCT)
            return false;
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int ml = 0;
        return HMAC(md, k->secret, (int)k->slen, data, dl, mac, &ml) && ml == sl &&
               CRYPTO_memcmp(mac, sig, ml) == 0;
    }
    bool rs = alg[0] == 'R' && alg[1] == 'S', ps = alg[0] == 'P' && alg[1] == 'S';
    bool es = alg[0] == 'E' && alg[1] == 'S';
    if (((rs || ps) && k->kty != K_RSA) || (es && k->kty != K_EC) || !(rs || ps || es))
        return false;
    unsigned char der[160];
    const unsigned char *s = sig;
    size_t slen = sl;
    if (es) {
        /* JWS carries r || s; OpenSSL wants DER */
        size_t half = (size_t)EVP_MD_get_size(md) == 32 ? 32 : EVP_MD_get_size(md) == 48 ? 48 : 66;
        if (sl != 2 * half || half != k->ec_len)
            return false; /* RFC 7518 3.4: ES256 is P-256 only, ES384 P-384, ES512 P-521 */
        ECDSA_SIG *es_sig = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *ss = BN_bin2bn(sig + half, (int)half, NULL);
        if (!es_sig || !r || !ss || !ECDSA_SIG_set0(es_sig, r, ss)) {
            BN_free(r);
            BN_free(ss);
            ECDSA_SIG_free(es_sig);
            return false;
        }
        unsigned char *dp = der;
        int n = i2d_ECDSA_SIG(es_sig, NULL) <= (int)sizeof(der) ? i2d_ECDSA_SIG(es_sig, &dp) : -1;
        ECDSA_SIG_free(es_sig);
        if (n <= 0)
            return false;
        s = der;
        slen = (size_t)n;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    bool ok = c && EVP_DigestVerifyInit(c, &pc, md, NULL, k->pkey) == 1;
    if (ok && ps)
        ok = EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) == 1;
    ok = ok && EVP_DigestVerify(c, s, slen, data, dl) == 1;
    EVP_MD_CTX_free(c);
    return ok;
}

#define JWT_MAX 16384

/* Verify `token`; on success the decoded header and payload JSON (in
 * buffers of JWT_MAX) are returned through hdr/pl. */
static int verify(const struct jwt_keyset *ks, struct slice token, int64_t now, uint32_t leeway,
                  char *hbuf, struct slice *hdr, char *pbuf, struct slice *pl, const char **why)
{
    const char *d1 = memchr(token.p, '.', token.len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', token.len - (size_t)(d1 + 1 - token.p)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', token.len - (size_t)(d2 + 1 - token.p))) {
        *why = "not a signed JWT (three parts)";
        return -1;
    }
    long hl = b64url(token.p, (size_t)(d1 - token.p), (unsigned char *)hbuf, JWT_MAX);
    long plen = b64url(d1 + 1, (size_t)(d2 - d1 - 1), (unsigned char *)pbuf, JWT_MAX);
    unsigned char sig[600];
    long sl = b64url(d2 + 1, token.len - (size_t)(d2 + 1 - token.p), sig, sizeof(sig));
    if (hl <= 0 || plen <= 0 || sl <= 0) {
        *why = "bad base64url";
        return -1;
    }
    *hdr = slice_make(hbuf, (size_t)hl);
    *pl = slice_make(pbuf, (size_t)plen);
    if (!skip_value(hbuf, hbuf + hl, 0) || !skip_value(pbuf, pbuf + plen, 0) || hbuf[0] != '{' ||
        pbuf[0] != '{') {
        *why = "the header or the payload is not a JSON object";
        return -1;
    }
    char alg[16], kid[128];
    size_t al, kl;
    struct slice crit;
    if (!member_str(*hdr, "alg", alg, sizeof(alg) - 1, &al)) {
        *why = "no \"alg\"";
        return -1;
    }
    alg[al] = '\0';
    if (member(hbuf, hbuf + hl, "crit", 4, &crit)) {
        *why = "\"crit\" extensions are not understood";
        return -1;
    }
    bool has_kid = member_str(*hdr, "kid", kid, sizeof(kid) - 1, &kl);
    const unsigned char *data = (const unsigned char *)token.p;
    size_t dl = (size_t)(d2 - token.p);
    bool ok = false;
    for (size_t i = 0; i < ks->n && !ok; i++) {
        const struct jwt_key *k = &ks->v[i];
        if (has_kid && k->kidlen && (k->kidlen != kl || memcmp(k->kid, kid, kl)))
            continue;
        ok = verify_with(k, alg, data, dl, sig, (size_t)sl);
    }
    if (!ok) {
        *why = "signature not verified (algorithm, key or signature)";
        return -1;
    }
    int64_t t;
    bool bad = false;
    if (member_time(*pl, "exp", &t, &bad) && (bad || now > t + (int64_t)leeway)) {
        *why = bad ? "\"exp\" is not a number" : "expired";
        return -1;
    }
    if (member_time(*pl, "nbf", &t, &bad) && (bad || now + (int64_t)leeway < t)) {
        *why = bad ? "\"nbf\" is not a number" : "not valid yet (nbf)";
        return -1;
    }
    return 0;
}

int jwt_verify_text(const char *jwks, size_t jwks_len, struct slice token, int64_t now,
                    uint32_t leeway)
{
    char err[128];
    struct jwt_keyset *ks = keyset_parse(jwks, jwks_len, err, sizeof(err));
    if (!ks)
        return -1;
    char *h = malloc(JWT_MAX), *p = malloc(JWT_MAX);
    struct slice hs, ps;
    const char *why;
    int r = h && p && token.len <= JWT_MAX * 2
                ? verify(ks, token, now, leeway, h, &hs, p, &ps, &why)
                : -1;
    free(h);
    free(p);
    keyset_free(ks);
    return r;
}

/* ---- configuration ---- */

int jwt_set_auth(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                 void *conf)
{
    (void)d;
    struct jwt_conf *j = &((struct loc_conf *)conf)->jwt;
    if (j->set)
        return cf_error(cx, n, "\"auth_jwt\" directive is duplicate");
    j->set = true;
    if (!strcmp(n->args[0], "off")) {
        if (n->nargs > 1)
            return cf_error(cx, n, "\"auth_jwt off\" takes no other parameter");
        return 0;
    }
    if (strchr(n->args[0], '"'))
        return cf_error(cx, n, "the realm cannot hold '\"'");
    if (!(j->realm = conf_tmpl(cx, n, n->args[0])))
        return -1;
    if (n->nargs == 2) {
        if (strncmp(n->args[1], "token=", 6) || n->args[1][6] != '$')
            return cf_error(cx, n, "invalid parameter \"%s\" (token=$variable)", n->args[1]);
        if (!(j->token = conf_tmpl(cx, n, n->args[1] + 6)))
            return -1;
    }
    return 0;
}

int jwt_set_key_file(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct jwt_conf *j = &((struct loc_conf *)conf)->jwt;
    if (j->keys)
        return cf_error(cx, n, "\"auth_jwt_key_file\" directive is duplicate");
    FILE *f = fopen(n->args[0], "re");
    if (!f)
        return cf_error(cx, n, "open() \"%s\" failed (%s)", n->args[0], strerror(errno));
    char *text = malloc(1 << 20);
    size_t len = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
    bool big = text && !feof(f);
    fclose(f);
    if (!text)
        return cf_error(cx, n, "out of memory");
    if (big) {
        free(text);
        return cf_error(cx, n, "\"%s\" is larger than 1 MiB", n->args[0]);
    }
    char err[160];
    struct jwt_keyset *ks = keyset_parse(text, len, err, sizeof(err));
    OPENSSL_cleanse(text, len);
    free(text);
    if (!ks)
        return cf_error(cx, n, "\"%s\": %s", n->args[0], err);
    struct snapshot *s = conf_snapshot(cx);
    struct jwt_keyset **slot = arena_push(cx->arena, (void **)&s->jwt_keys, &s->njwt_keys,
                                          &s->cap_jwt_keys, sizeof(*slot));
    if (!slot) {
        keyset_free(ks);
        return cf_error(cx, n, "out of memory");
    }
    *slot = ks; /* jwt_free frees it with the snapshot */
    j->keys = ks;
    return 0;
}

int jwt_set_leeway(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                   void *conf)
{
    struct jwt_conf *j = &((struct loc_conf *)conf)->jwt;
    struct cf_directive sd = *d;
    sd.offset = 0;
    return cf_set_sec(cx, n, &sd, &j->leeway_s);
}

int jwt_set_require(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    struct jwt_conf *j = &((struct loc_conf *)conf)->jwt;
    if (!j->require_set) {
        j->require_set = true;
        j->require = NULL;
        j->nrequire = 0;
        j->require_error = 401;
    }
    size_t nv = n->nargs;
    if (!strncmp(n->args[nv - 1], "error=", 6)) {
        const char *v = n->args[nv - 1] + 6;
        if (strcmp(v, "401") && strcmp(v, "403"))
            return cf_error(cx, n, "invalid parameter \"%s\" (error=401 or error=403)",
                            n->args[nv - 1]);
        j->require_error = atoi(v);
        nv--;
    }
    if (!nv)
        return cf_error(cx, n, "\"auth_jwt_require\" needs a value");
    struct tmpl **v = arena_alloc(cx->arena, (j->nrequire + nv) * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    if (j->nrequire)
        memcpy(v, j->require, j->nrequire * sizeof(*v));
    for (size_t i = 0; i < nv; i++)
        if (!(v[j->nrequire + i] = conf_tmpl(cx, n, n->args[i])))
            return -1;
    j->require = v;
    j->nrequire += nv;
    return 0;
}

int jwt_set_type(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                 void *conf)
{
    (void)d, (void)conf;
    if (strcmp(n->args[0], "signed"))
        return cf_error(cx, n, "only \"signed\" tokens (JWS) are supported");
    return 0;
}

void jwt_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->njwt_keys; i++)
        keyset_free(s->jwt_keys[i]);
    s->njwt_keys = 0;
}

/* ---- requests ---- */

/* The token checked once per request (its result kept): by the access phase,
 * or earlier by a $jwt_claim_* that a limit_req key reads in preaccess. */
static enum jwt_result verify_request(struct exchange *ex)
{
    const struct jwt_conf *j = &ex->lc->jwt;
    if (ex->jwt_state && ex->jwt_for == (const void *)j->keys)
        return (enum jwt_result)(ex->jwt_state - 1);
    struct slice tok;
    if (j->token) {
        tok = slice_trim_ows(tmpl_eval(ex, j->token, ESC_NONE));
    } else {
        bool found;
        struct slice v =
            slice_trim_ows(cache_field(ex->req_fields, ex->nreq_fields, "authorization", &found));
        tok = !found || v.len < 7 || strncasecmp(v.p, "bearer ", 7)
                  ? SLICE_NULL
                  : slice_trim_ows(slice_make(v.p + 7, v.len - 7));
    }
    ex->jwt_header = ex->jwt_payload = SLICE_NULL;
    enum jwt_result r = JWT_INVALID;
    char *h = NULL, *p = NULL;
    struct slice hs, ps;
    const char *why = "";
    if (!tok.len)
        r = JWT_NONE;
    else if (j->keys && tok.len <= JWT_MAX * 2 && (h = arena_alloc(&ex->arena, JWT_MAX)) &&
             (p = arena_alloc(&ex->arena, JWT_MAX))) {
        if (verify(j->keys, tok, (int64_t)time(NULL),
                   j->leeway_s == CF_UNSET_MSEC ? 0 : j->leeway_s, h, &hs, p, &ps, &why) < 0) {
            log_write(LOG_INFO, "*%llu JWT rejected: %s", (unsigned long long)ex->id, why);
        } else {
            ex->jwt_header = hs;
            ex->jwt_payload = ps;
            r = JWT_OK;
        }
    }
    ex->jwt_state = (uint8_t)(r + 1);
    ex->jwt_for = j->keys; /* another key set (after an internal redirect) checks again */
    return r;
}

void jwt_lazy(struct exchange *ex)
{
    if (ex->lc && ex->lc->jwt.realm)
        verify_request(ex);
}

enum jwt_result jwt_check(struct exchange *ex)
{
    const struct jwt_conf *j = &ex->lc->jwt;
    enum jwt_result r = verify_request(ex);
    if (r != JWT_OK)
        return r;
    for (size_t i = 0; i < j->nrequire; i++) {
        struct slice v = tmpl_eval(ex, j->require[i], ESC_NONE);
        if (!v.len || (v.len == 1 && v.p[0] == '0')) {
            log_write(LOG_INFO, "*%llu JWT rejected: auth_jwt_require %zu is empty or \"0\"",
                      (unsigned long long)ex->id, i + 1);
            return JWT_REQUIRE_FAILED;
        }
    }
    return JWT_OK;
}
