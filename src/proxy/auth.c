/* auth_basic (auth.h). */
#include "proxy/auth.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/rules.h"
#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/vars.h"

#define USER_FILE_MAX (4u << 20) /* a bigger htpasswd is refused (500) */

int auth_set_basic(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                   void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->auth.set)
        return cf_error(cx, n, "\"auth_basic\" directive is duplicate");
    lc->auth.set = true;
    if (!strcmp(n->args[0], "off"))
        return 0;
    if (strchr(n->args[0], '"'))
        return cf_error(cx, n, "the realm cannot hold '\"'");
    lc->auth.realm = conf_tmpl(cx, n, n->args[0]);
    return lc->auth.realm ? 0 : -1;
}

int auth_set_user_file(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->auth.user_file)
        return cf_error(cx, n, "\"auth_basic_user_file\" directive is duplicate");
    if (n->args[0][0] != '/')
        return cf_error(cx, n, "auth_basic_user_file needs an absolute path (\"%s\")", n->args[0]);
    lc->auth.user_file = n->args[0];
    return 0;
}

/* ---- password forms ---- */

static bool ct_equal(const char *a, size_t al, const char *b, size_t bl)
{
    return al == bl && CRYPTO_memcmp(a, b, al) == 0;
}

static const char itoa64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static char *to64(char *p, unsigned long v, int n)
{
    while (n-- > 0) {
        *p++ = itoa64[v & 0x3f];
        v >>= 6;
    }
    return p;
}

static bool md5(EVP_MD_CTX *c, unsigned char out[16])
{
    unsigned int len = 16;
    return EVP_DigestFinal_ex(c, out, &len) == 1;
}

/* Apache's $apr1$: md5crypt with its own magic. */
static bool apr1_ok(struct slice pw, const char *hash)
{
    const char *magic = "$apr1$";
    const char *salt = hash + 6;
    size_t sl = 0;
    while (salt[sl] && salt[sl] != '$' && sl < 8)
        sl++;
    EVP_MD_CTX *c = EVP_MD_CTX_new(), *c1 = EVP_MD_CTX_new();
    unsigned char fin[16];
    bool ok = false;
    if (!c || !c1)
        goto out;
    if (!EVP_DigestInit_ex(c1, EVP_md5(), NULL) || !EVP_DigestUpdate(c1, pw.p, pw.len) ||
        !EVP_DigestUpdate(c1, salt, sl) || !EVP_DigestUpdate(c1, pw.p, pw.len) || !md5(c1, fin))
        goto out;
    if (!EVP_DigestInit_ex(c, EVP_md5(), NULL) || !EVP_DigestUpdate(c, pw.p, pw.len) ||
        !EVP_DigestUpdate(c, magic, 6) || !EVP_DigestUpdate(c, salt, sl))
        goto out;
    for (size_t l = pw.len; l > 0; l -= l > 16 ? 16 : l)
        if (!EVP_DigestUpdate(c, fin, l > 16 ? 16 : l))
            goto out;
    memset(fin, 0, sizeof(fin));
    for (size_t i = pw.len; i; i >>= 1)
        if (!EVP_DigestUpdate(c, (i & 1) ? (const void *)fin : (const void *)pw.p, 1))
            goto out;
    if (!md5(c, fin))
        goto out;
    for (int i = 0; i < 1000; i++) {
        if (!EVP_DigestInit_ex(c1, EVP_md5(), NULL))
            goto out;
        if (i & 1)
            EVP_DigestUpdate(c1, pw.p, pw.len);
        else
            EVP_DigestUpdate(c1, fin, 16);
        if (i % 3)
            EVP_DigestUpdate(c1, salt, sl);
        if (i % 7)
            EVP_DigestUpdate(c1, pw.p, pw.len);
        if (i & 1)
            EVP_DigestUpdate(c1, fin, 16);
        else
            EVP_DigestUpdate(c1, pw.p, pw.len);
        if (!md5(c1, fin))
            goto out;
    }
    char res[64], *p = res;
    memcpy(p, magic, 6);
    p += 6;
    memcpy(p, salt, sl);
    p += sl;
    *p++ = '$';
    p = to64(p, ((unsigned long)fin[0] << 16) | ((unsigned long)fin[6] << 8) | fin[12], 4);
    p = to64(p, ((unsigned long)fin[1] << 16) | ((unsigned long)fin[7] << 8) | fin[13], 4);
    p = to64(p, ((unsigned long)fin[2] << 16) | ((unsigned long)fin[8] << 8) | fin[14], 4);
    p = to64(p, ((unsigned long)fin[3] << 16) | ((unsigned long)fin[9] << 8) | fin[15], 4);
    p = to64(p, ((unsigned long)fin[4] << 16) | ((unsigned long)fin[10] << 8) | fin[5], 4);
    p = to64(p, fin[11], 2);
    ok = ct_equal(res, (size_t)(p - res), hash, strlen(hash));
out:
    EVP_MD_CTX_free(c);
    EVP_MD_CTX_free(c1);
    return ok;
}

/* {SHA}base64(sha1(pw)) and {SSHA}base64(sha1(pw salt) salt) */
static bool sha_ok(struct slice pw, const char *b64, bool salted)
{
    size_t bl = strlen(b64);
    if (bl == 0 || bl % 4 || bl > 512)
        return false;
    unsigned char raw[400];
    int n = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)bl);
    if (n < 0)
        return false;
    n -= (b64[bl - 1] == '=') + (b64[bl - 2] == '=');
    if (n < 20 || (!salted && n != 20))
        return false;
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha1(), NULL) && EVP_DigestUpdate(c, pw.p, pw.len) &&
              EVP_DigestUpdate(c, raw + 20, (size_t)n - 20) && EVP_DigestFinal_ex(c, dig, &dl);
    EVP_MD_CTX_free(c);
    return ok && dl == 20 && CRYPTO_memcmp(dig, raw, 20) == 0;
}

bool auth_password_ok(struct slice password, const char *hash)
{
    if (!strncmp(hash, "{PLAIN}", 7))
        return ct_equal(password.p, password.len, hash + 7, strlen(hash + 7));
    if (!strncmp(hash, "{SHA}", 5))
        return sha_ok(password, hash + 5, false);
    if (!strncmp(hash, "{SSHA}", 6))
        return sha_ok(password, hash + 6, true);
    if (!strncmp(hash, "$apr1$", 6))
        return apr1_ok(password, hash);
    /* crypt(3): libxcrypt knows $1$ $5$ $6$ $2b$/$2y$ $y$ and DES */
    if (memchr(password.p, '\0', password.len) || password.len > 1024)
        return false;
    char pw[1025];
    memcpy(pw, password.p, password.len);
    pw[password.len] = '\0';
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    if (!cd)
        return false;
    /* crypt_rn, not crypt_r: the sanitizers' crypt_r interceptor calls a
     * null pointer when libxcrypt is not resolved at their start */
    const char *out = crypt_rn(pw, hash, cd, (int)sizeof(*cd));
    bool ok = out && out[0] != '*' && ct_equal(out, strlen(out), hash, strlen(hash));
    OPENSSL_cleanse(pw, sizeof(pw));
    free(cd);
    return ok;
}

/* ---- the request ---- */

static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= USER_FILE_MAX) {
        buf = malloc((size_t)st.st_size + 1);
        size_t got = 0;
        while (buf && got < (size_t)st.st_size) {
            ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        if (buf) {
            buf[got] = '\0';
            *len = got;
        }
    } else {
        errno = EFBIG;
    }
    int e = errno;
    close(fd);
    errno = e;
    return buf;
}

enum auth_result auth_check(struct exchange *ex)
{
    const struct auth_conf *a = &ex->lc->auth;
    bool found;
    struct slice v =
        slice_trim_ows(cache_field(ex->req_fields, ex->nreq_fields, "authorization", &found));
    if (!found || v.len < 6 || strncasecmp(v.p, "basic ", 6))
        return AUTH_NONE;
    struct slice b64 = slice_trim_ows(slice_make(v.p + 6, v.len - 6));
    if (!b64.len || b64.len % 4 || b64.len > 2048)
        return AUTH_NONE;
    char cred[1600];
    int n = EVP_DecodeBlock((unsigned char *)cred, (const unsigned char *)b64.p, (int)b64.len);
    if (n < 0)
        return AUTH_NONE;
    n -= (b64.p[b64.len - 1] == '=') + (b64.p[b64.len - 2] == '=');
    char *colon = memchr(cred, ':', (size_t)n);
    if (!colon || colon == cred)
        return AUTH_NONE;
    struct slice user = slice_make(cred, (size_t)(colon - cred));
    struct slice pw = slice_make(colon + 1, (size_t)n - user.len - 1);
    size_t len = 0;
    char *text = read_file(a->user_file, &len);
    if (!text) {
        int e = errno;
        log_write(e == ENOENT ? LOG_ERR : LOG_CRIT, "*%llu open() \"%s\" failed (%s)",
                  (unsigned long long)ex->id, a->user_file, strerror(e));
        OPENSSL_cleanse(cred, sizeof(cred));
        return e == ENOENT ? AUTH_FORBIDDEN : AUTH_ERROR;
    }
    enum auth_result r = AUTH_FAILED;
    bool user_seen = false;
    for (char *line = text, *next; line < text + len; line = next) {
        char *eol = memchr(line, '\n', (size_t)(text + len - line));
        next = eol ? eol + 1 : text + len;
        char *end = eol ? eol : text + len;
        if (end > line && end[-1] == '\r')
            end--;
        *end = '\0';
        if (line[0] == '#' || line == end)
            continue;
        char *c = strchr(line, ':');
        if (!c || (size_t)(c - line) != user.len || memcmp(line, user.p, user.len))
            continue;
        char *hash = c + 1, *hend = strchr(hash, ':'); /* a third field is a comment */
        if (hend)
            *hend = '\0';
        user_seen = true;
        r = auth_password_ok(pw, hash) ? AUTH_OK : AUTH_FAILED;
        break;
    }
    if (r != AUTH_OK) {
        char safe[130];
        size_t k = 0;
        for (size_t i = 0; i < user.len && k + 1 < sizeof(safe);
             i++) /* the log is not the client's */
            safe[k++] = user.p[i] >= 0x20 && user.p[i] < 0x7f && user.p[i] != '"' ? user.p[i] : '?';
        safe[k] = '\0';
        if (user_seen)
            log_write(LOG_ERR, "*%llu user \"%s\": password mismatch", (unsigned long long)ex->id,
                      safe);
        else
            log_write(LOG_ERR, "*%llu user \"%s\" was not found in \"%s\"",
                      (unsigned long long)ex->id, safe, a->user_file);
    }
    OPENSSL_cleanse(text, len);
    free(text);
    OPENSSL_cleanse(cred, sizeof(cred));
    return r;
}
