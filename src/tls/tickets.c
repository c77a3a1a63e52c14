/* Session ticket keys (RFC 5077 format of OpenSSL, as nginx): key files of
 * 48 bytes (name 16, HMAC 16, AES-128 16) or 80 bytes (name 16, HMAC 32,
 * AES-256 32); the first key encrypts, all decrypt. Without files, random
 * keys rotate every session timeout and the two previous ones keep
 * decrypting, so a ticket stays valid for its whole lifetime. */
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls/tls_int.h"

#define MAX_KEYS      4
#define ROTATING_KEYS 3

struct ticket_key {
    unsigned char name[16];
    unsigned char hmac[32];
    unsigned char aes[32];
    unsigned size; /* 48 or 80 */
    time_t created;
};

struct tls_tickets {
    pthread_rwlock_t lock;
    bool rotating;
    uint32_t lifetime_s;
    size_t n;
    struct ticket_key keys[MAX_KEYS];
};

static bool read_key(const char *path, struct ticket_key *k, char *err, size_t errlen)
{
    unsigned char buf[81];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "open() \"%s\" failed", path);
        return false;
    }
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    if (n != 48 && n != 80) {
        snprintf(err, errlen, "\"%s\" must be 48 or 80 bytes", path);
        return false;
    }
    k->size = (unsigned)n;
    memcpy(k->name, buf, 16);
    if (n == 48) {
        memcpy(k->hmac, buf + 16, 16);
        memcpy(k->aes, buf + 32, 16);
    } else {
        memcpy(k->hmac, buf + 16, 32);
        memcpy(k->aes, buf + 48, 32);
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return true;
}

static bool random_key(struct ticket_key *k, time_t now)
{
    k->size = 80;
    k->created = now;
    return RAND_bytes(k->name, sizeof(k->name)) == 1 && RAND_bytes(k->hmac, 32) == 1 &&
           RAND_bytes(k->aes, 32) == 1;
}

/* Shift in a new current key; caller holds the write lock. */
static void rotate_locked(struct tls_tickets *t, time_t now)
{
    struct ticket_key k;
    if (!random_key(&k, now))
        return; /* keep the old key rather than none */
    memmove(&t->keys[1], &t->keys[0], sizeof(t->keys[0]) * (ROTATING_KEYS - 1));
    t->keys[0] = k;
    if (t->n < ROTATING_KEYS)
        t->n++;
    OPENSSL_cleanse(&k, sizeof(k));
}

static void maybe_rotate(struct tls_tickets *t)
{
    if (!t->rotating)
        return;
    time_t now = time(NULL);
    pthread_rwlock_rdlock(&t->lock);
    bool due = now >= t->keys[0].created + (time_t)t->lifetime_s;
    pthread_rwlock_unlock(&t->lock);
    if (!due)
        return;
    pthread_rwlock_wrlock(&t->lock);
    if (now >= t->keys[0].created + (time_t)t->lifetime_s)
        rotate_locked(t, now);
    pthread_rwlock_unlock(&t->lock);
}

static bool init_ciphers(const struct ticket_key *k, unsigned char *iv, EVP_CIPHER_CTX *ctx,
                         EVP_MAC_CTX *hctx, int enc)
{
    const EVP_CIPHER *cipher = k->size == 48 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
    size_t hlen = k->size == 48 ? 16 : 32;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, hlen),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return false;
    if (enc)
        return RAND_bytes(iv, EVP_CIPHER_get_iv_length(cipher)) == 1 &&
               EVP_EncryptInit_ex(ctx, cipher, NULL, k->aes, iv) == 1;
    return EVP_DecryptInit_ex(ctx, cipher, NULL, k->aes, iv) == 1;
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct tls_ctx *c = tls_session_ctx_of(ssl);
    struct tls_tickets *t = c ? c->tickets : NULL;
    if (!t)
        return enc ? -1 : 0;
    maybe_rotate(t);
    struct ticket_key k;
    int ret;
    pthread_rwlock_rdlock(&t->lock);
    if (enc) {
        k = t->keys[0];
        ret = 1;
    } else {
        size_t i = 0;
        while (i < t->n && memcmp(t->keys[i].name, name, 16) != 0)
            i++;
        if (i < t->n)
            k = t->keys[i];
        ret = i == t->n ? 0 : i == 0 ? 1 : 2; /* 2: decrypted with an old key, renew */
    }
    pthread_rwlock_unlock(&t->lock);
    if (ret == 0)
        return 0; /* unknown key: full handshake */
    if (enc)
        memcpy(name, k.name, 16);
    if (!init_ciphers(&k, iv, ctx, hctx, enc))
        ret = -1;
    OPENSSL_cleanse(&k, sizeof(k));
    return ret;
}

struct tls_tickets *tls_tickets_new(const char *const *files, size_t nfiles, uint32_t lifetime_s,
                                    char *err, size_t errlen)
{
    struct tls_tickets *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_rwlock_init(&t->lock, NULL);
    t->lifetime_s = lifetime_s ? lifetime_s : 300;
    if (nfiles > MAX_KEYS) {
        snprintf(err, errlen, "too many ssl_session_ticket_key files (at most %d)", MAX_KEYS);
        goto fail;
    }
    for (size_t i = 0; i < nfiles; i++)
        if (!read_key(files[i], &t->keys[i], err, errlen))
            goto fail;
    t->n = nfiles;
    if (nfiles == 0) {
        t->rotating = true;
        if (!random_key(&t->keys[0], time(NULL))) {
            snprintf(err, errlen, "RAND_bytes() failed");
            goto fail;
        }
        t->n = 1;
    }
    return t;
fail:
    tls_tickets_free(t);
    return NULL;
}

void tls_tickets_free(struct tls_tickets *t)
{
    if (!t)
        return;
    pthread_rwlock_destroy(&t->lock);
    OPENSSL_cleanse(t->keys, sizeof(t->keys));
    free(t);
}

void tls_tickets_attach(struct tls_tickets *t, SSL_CTX *ssl)
{
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ssl, ticket_cb);
}

void tls_tickets_rotate(struct tls_tickets *t)
{
    if (!t->rotating)
        return;
    pthread_rwlock_wrlock(&t->lock);
    rotate_locked(t, time(NULL));
    pthread_rwlock_unlock(&t->lock);
}
