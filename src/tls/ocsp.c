/* OCSP stapling. A handshake only copies the current response under a
 * mutex; responses come from ssl_stapling_file, or are fetched over HTTP
 * from the responder named in each certificate's AIA by one background
 * thread (blocking I/O there never touches a handshake), verified, and
 * refreshed before nextUpdate as nginx does: at min(nextUpdate - 5 min,
 * now + 1 h), not sooner than 5 min; after a failure, again in 5 min. Only
 * "good" responses are stapled. Responder names are resolved on the fetching
 * thread by the server's `resolver` (nginx's), or by the system resolver. */
#include <openssl/err.h>
#include <openssl/http.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "net/dns.h"
#include "tls/tls_int.h"

#define MAX_ITEMS       4
#define MAX_RESPONSE    (1 << 20)
#define FETCH_TIMEOUT_S 10

struct staple_item {
    X509 *cert, *issuer;
    OCSP_CERTID *id;
    char *url;
    unsigned char *der; /* current response, under the staple's lock */
    size_t der_len;
    time_t refresh;
    unsigned fails; /* failed fetches in a row: the retry backs off */
};

struct tls_staple {
    pthread_mutex_t lock;
    int refs;  /* the context, and the fetcher while it works */
    bool dead; /* context gone: the fetcher drops it */
    bool verify;
    STACK_OF(X509) * chain;
    X509_STORE *store;            /* referenced from the SSL_CTX */
    struct net_resolver resolver; /* n == 0: the system resolver */
    uint32_t resolver_timeout_ms;
    size_t n;
    struct staple_item items[MAX_ITEMS];
    struct tls_staple *next; /* fetcher's list */
};

static pthread_mutex_t fetch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fetch_cond = PTHREAD_COND_INITIALIZER;
static struct tls_staple *fetch_list;
static bool fetcher_started;

static void staple_ref(struct tls_staple *s)
{
    pthread_mutex_lock(&s->lock);
    s->refs++;
    pthread_mutex_unlock(&s->lock);
}

static void staple_unref(struct tls_staple *s)
{
    pthread_mutex_lock(&s->lock);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last)
        return;
    for (size_t i = 0; i < s->n; i++) {
        struct staple_item *it = &s->items[i];
        X509_free(it->cert);
        X509_free(it->issuer);
        OCSP_CERTID_free(it->id);
        free(it->url);
        OPENSSL_free(it->der);
    }
    sk_X509_pop_free(s->chain, X509_free);
    X509_STORE_free(s->store);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- handshake side ---- */

int tls_staple_status_cb(SSL *ssl, void *arg)
{
    struct tls_staple *s = arg;
    X509 *cert = SSL_get_certificate(ssl);
    int ret = SSL_TLSEXT_ERR_NOACK;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n; i++) {
        struct staple_item *it = &s->items[i];
        if (it->der && (s->n == 1 || !cert || X509_cmp(it->cert, cert) == 0)) {
            unsigned char *copy = OPENSSL_memdup(it->der, it->der_len);
            if (copy && SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)it->der_len) == 1)
                ret = SSL_TLSEXT_ERR_OK;
            else
                OPENSSL_free(copy);
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

bool tls_staple_ready(struct tls_staple *s)
{
    pthread_mutex_lock(&s->lock);
    bool ready = s->n > 0;
    for (size_t i = 0; i < s->n; i++)
        ready = ready && s->items[i].der;
    pthread_mutex_unlock(&s->lock);
    return ready;
}

/* ---- fetching thread ---- */

/* A connection to host:port through our resolver, as a BIO for OpenSSL's
 * HTTP client (which otherwise resolves with the system's). NULL on
 * failure (logged). */
static BIO *connect_resolved(const struct tls_staple *s, const char *host, const char *port)
{
    struct net_addr a;
    memset(&a, 0, sizeof(a));
    char text[300];
    int p = atoi(port);
    if (p <= 0 || p > 65535)
        return NULL;
    if (inet_pton(AF_INET, host, &a.in4.sin_addr) == 1) {
        a.in4.sin_family = AF_INET;
        a.len = sizeof(a.in4);
    } else if (inet_pton(AF_INET6, host, &a.in6.sin6_addr) == 1) {
        a.in6.sin6_family = AF_INET6;
        a.len = sizeof(a.in6);
    } else if (net_dns_lookup(s->resolver.addr, s->resolver.n, host,
                              s->resolver_timeout_ms ? s->resolver_timeout_ms : 30000,
                              s->resolver.ipv6_set ? s->resolver.ipv6 : true, &a) < 0) {
        log_write(LOG_ERR, "OCSP responder \"%s\" could not be resolved (%s)", host,
                  errno == ENOENT ? "no such name" : "resolver timed out");
        return NULL;
    }
    if (a.sa.ss_family == AF_INET)
        a.in4.sin_port = htons((uint16_t)p);
    else
        a.in6.sin6_port = htons((uint16_t)p);
    int fd = socket(a.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = {FETCH_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&a.sa, a.len) < 0) {
        net_addr_format(&a, text, sizeof(text));
        log_write(LOG_ERR, "OCSP responder \"%s\" at %s: connect failed (%s)", host, text,
                  strerror(errno));
        close(fd);
        return NULL;
    }
    BIO *b = BIO_new_socket(fd, BIO_CLOSE);
    if (!b)
        close(fd);
    return b;
}

static OCSP_RESPONSE *fetch(const struct tls_staple *s, const struct staple_item *it)
{
    char *host = NULL, *port = NULL, *path = NULL;
    int use_ssl = 0;
    OCSP_RESPONSE *rsp = NULL;
    BIO *req = NULL, *body = NULL, *conn = NULL;
    OCSP_REQUEST *oreq = OCSP_REQUEST_new();
    OCSP_CERTID *id = OCSP_CERTID_dup(it->id);
    if (!oreq || !id || !OCSP_request_add0_id(oreq, id)) {
        OCSP_CERTID_free(id);
        goto out;
    }
    if (!OSSL_HTTP_parse_url(it->url, &use_ssl, NULL, &host, &port, NULL, &path, NULL, NULL) ||
        use_ssl)
        goto out; /* https responders are not supported (nginx neither) */
    req = ASN1_item_i2d_mem_bio(ASN1_ITEM_rptr(OCSP_REQUEST), (const ASN1_VALUE *)oreq);
    if (!req)
        goto out;
    if (s->resolver.n) {
        /* our connection; OpenSSL still names the host in the request */
        if (!(conn = connect_resolved(s, host, port)))
            goto out;
    }
    body = OSSL_HTTP_transfer(NULL, host, port, path, 0, NULL, NULL, conn, conn, NULL, NULL, 0,
                              NULL, "application/ocsp-request", req, "application/ocsp-response", 1,
                              MAX_RESPONSE, FETCH_TIMEOUT_S, 0);
    if (body)
        rsp = d2i_OCSP_RESPONSE_bio(body, NULL);
out:
    BIO_free(body);
    BIO_free(req);
    BIO_free_all(conn);
    OCSP_REQUEST_free(oreq);
    OPENSSL_free(host);
    OPENSSL_free(port);
    OPENSSL_free(path);
    return rsp;
}

/* Check a response; returns the refresh time, or 0 if it is unusable. */
static time_t check(struct tls_staple *s, const struct staple_item *it, OCSP_RESPONSE *rsp)
{
    time_t now = time(NULL), refresh = 0;
    OCSP_BASICRESP *basic = NULL;
    ASN1_GENERALIZEDTIME *thisupd, *nextupd;
    int status, reason;
    if (OCSP_response_status(rsp) != OCSP_RESPONSE_STATUS_SUCCESSFUL)
        goto out;
    if (!(basic = OCSP_response_get1_basic(rsp)))
        goto out;
    if (OCSP_basic_verify(basic, s->chain, s->store, s->verify ? OCSP_TRUSTOTHER : OCSP_NOVERIFY) !=
        1)
        goto out;
    if (OCSP_resp_find_status(basic, it->id, &status, &reason, NULL, &thisupd, &nextupd) != 1 ||
        status != V_OCSP_CERTSTATUS_GOOD)
        goto out;
    if (OCSP_check_validity(thisupd, nextupd, 300, -1) != 1)
        goto out;
    time_t valid = now + 3600;
    if (nextupd) {
        struct tm tm;
        if (ASN1_TIME_to_tm(nextupd, &tm) == 1)
            valid = timegm(&tm);
    }
    refresh = valid - 300 < now + 3600 ? valid - 300 : now + 3600;
    if (refresh < now + 300)
        refresh = now + 300;
out:
    OCSP_BASICRESP_free(basic);
    ERR_clear_error();
    return refresh;
}

static void refresh_item(struct tls_staple *s, size_t i)
{
    struct staple_item *it = &s->items[i];
    OCSP_RESPONSE *rsp = fetch(s, it);
    time_t next = rsp ? check(s, it, rsp) : 0;
    unsigned char *der = NULL;
    int len = next ? i2d_OCSP_RESPONSE(rsp, &der) : -1;
    OCSP_RESPONSE_free(rsp);
    ERR_clear_error();
    pthread_mutex_lock(&s->lock);
    if (len > 0) {
        OPENSSL_free(it->der);
        it->der = der;
        it->der_len = (size_t)len;
        it->refresh = next;
        it->fails = 0;
    } else {
        /* Keep a still valid older response; nginx drops it only at expiry.
         * Retry after 5 s, doubling up to nginx's 300 s: a responder that
         * was briefly away does not leave handshakes without a staple for
         * five minutes. */
        unsigned f = it->fails < 6 ? it->fails : 6;
        time_t wait = (time_t)5 << f;
        it->refresh = time(NULL) + (wait > 300 ? 300 : wait);
        it->fails++;
    }
    pthread_mutex_unlock(&s->lock);
}

static void *fetcher(void *arg)
{
    pthread_mutex_lock(&fetch_lock);
    for (;;) {
        time_t now = time(NULL), wake = now + 3600;
        struct tls_staple **pp = &fetch_list, *due = NULL;
        size_t due_i = 0;
        while (*pp && !due) {
            struct tls_staple *s = *pp;
            if (s->dead) {
                *pp = s->next;
                staple_unref(s);
                continue;
            }
            for (size_t i = 0; i < s->n; i++) {
                if (s->items[i].refresh <= now) {
                    due = s;
                    due_i = i;
                    break;
                }
                if (s->items[i].refresh < wake)
                    wake = s->items[i].refresh;
            }
            pp = &s->next;
        }
        if (due) {
            staple_ref(due); /* `dead` may be set meanwhile */
            pthread_mutex_unlock(&fetch_lock);
            refresh_item(due, due_i);
            staple_unref(due);
            pthread_mutex_lock(&fetch_lock);
            continue;
        }
        struct timespec ts = {.tv_sec = wake};
        pthread_cond_timedwait(&fetch_cond, &fetch_lock, &ts);
    }
    return NULL;
}

static bool fetcher_add(struct tls_staple *s)
{
    pthread_mutex_lock(&fetch_lock);
    if (!fetcher_started) {
        pthread_t th;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        /* The fetcher must not take signals meant for the main thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        fetcher_started = pthread_create(&th, &a, fetcher, NULL) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&a);
    }
    if (fetcher_started) {
        staple_ref(s);
        s->next = fetch_list;
        fetch_list = s;
        pthread_cond_signal(&fetch_cond);
    }
    pthread_mutex_unlock(&fetch_lock);
    return fetcher_started;
}

/* ---- setup ---- */

static X509 *find_issuer(X509 *cert, STACK_OF(X509) * chain, X509_STORE *store)
{
    for (int i = 0; i < sk_X509_num(chain); i++) {
        X509 *c = sk_X509_value(chain, i);
        if (X509_check_issued(c, cert) == X509_V_OK) {
            X509_up_ref(c);
            return c;
        }
    }
    X509 *issuer = NULL;
    X509_STORE_CTX *sc = X509_STORE_CTX_new();
    if (sc && X509_STORE_CTX_init(sc, store, NULL, NULL) == 1 &&
        X509_STORE_CTX_get1_issuer(&issuer, sc, cert) != 1)
        issuer = NULL;
    X509_STORE_CTX_free(sc);
    return issuer;
}

static bool read_file(const char *path, unsigned char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            unsigned char *nb =
                cap >= MAX_RESPONSE ? NULL : OPENSSL_realloc(buf, cap = cap ? cap * 2 : 4096);
            if (!nb) {
                OPENSSL_free(buf);
                fclose(f);
                return false;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    *out = buf;
    *len = n;
    return n > 0;
}

/* One item per certificate loaded in the context. */
static bool collect_certs(struct tls_staple *s, SSL_CTX *ssl, char *err, size_t errlen)
{
    int r = SSL_CTX_set_current_cert(ssl, SSL_CERT_SET_FIRST);
    while (r == 1 && s->n < MAX_ITEMS) {
        X509 *cert = SSL_CTX_get0_certificate(ssl);
        STACK_OF(X509) *chain = NULL;
        SSL_CTX_get0_chain_certs(ssl, &chain);
        if (cert) {
            struct staple_item *it = &s->items[s->n++];
            X509_up_ref(cert);
            it->cert = cert;
            for (int i = 0; i < sk_X509_num(chain); i++) {
                X509 *c = sk_X509_value(chain, i);
                X509_up_ref(c);
                if (!sk_X509_push(s->chain, c))
                    X509_free(c);
            }
            it->issuer = find_issuer(cert, chain, s->store);
        }
        r = SSL_CTX_set_current_cert(ssl, SSL_CERT_SET_NEXT);
    }
    SSL_CTX_set_current_cert(ssl, SSL_CERT_SET_FIRST);
    if (s->n == 0) {
        snprintf(err, errlen, "no certificate for ssl_stapling");
        return false;
    }
    return true;
}

struct tls_staple *tls_staple_new(const struct tls_server_conf *c, SSL_CTX *ssl, char *err,
                                  size_t errlen)
{
    struct tls_staple *s = calloc(1, sizeof(*s));
    if (!s || !(s->chain = sk_X509_new_null())) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->refs = 1;
    s->verify = c->stapling_verify;
    if (c->resolver)
        s->resolver = *c->resolver;
    s->resolver_timeout_ms = c->resolver_timeout_ms;
    if (c->trusted_certificate &&
        SSL_CTX_load_verify_locations(ssl, c->trusted_certificate, NULL) != 1) {
        tls_errf(err, errlen, "SSL_CTX_load_verify_locations", c->trusted_certificate);
        goto fail;
    }
    s->store = SSL_CTX_get_cert_store(ssl);
    X509_STORE_up_ref(s->store);
    if (!collect_certs(s, ssl, err, errlen))
        goto fail;

    if (c->stapling_file) {
        unsigned char *der;
        size_t len;
        const unsigned char *p;
        OCSP_RESPONSE *rsp;
        if (!read_file(c->stapling_file, &der, &len)) {
            snprintf(err, errlen, "cannot read ssl_stapling_file \"%s\"", c->stapling_file);
            goto fail;
        }
        p = der;
        if (!(rsp = d2i_OCSP_RESPONSE(NULL, &p, (long)len))) {
            OPENSSL_free(der);
            tls_errf(err, errlen, "d2i_OCSP_RESPONSE", c->stapling_file);
            goto fail;
        }
        OCSP_RESPONSE_free(rsp);
        /* As is, for every certificate (nginx does the same). */
        s->items[0].der = der;
        s->items[0].der_len = len;
        for (size_t i = 1; i < s->n; i++) {
            s->items[i].der = OPENSSL_memdup(der, len);
            s->items[i].der_len = s->items[i].der ? len : 0;
        }
        return s;
    }

    /* Fetched: every certificate with an issuer and a responder URL. */
    bool any = false;
    for (size_t i = 0; i < s->n; i++) {
        struct staple_item *it = &s->items[i];
        STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(it->cert);
        if (urls && sk_OPENSSL_STRING_num(urls) > 0)
            it->url = strdup(sk_OPENSSL_STRING_value(urls, 0));
        X509_email_free(urls);
        if (it->issuer && it->url)
            it->id = OCSP_cert_to_id(NULL, it->cert, it->issuer);
        if (it->id)
            any = true;
        else
            it->refresh = (time_t)1 << 62; /* never: no responder or issuer (nginx warns) */
    }
    ERR_clear_error();
    if (any && !fetcher_add(s)) {
        snprintf(err, errlen, "cannot start the OCSP fetching thread");
        goto fail;
    }
    return s;
fail:
    staple_unref(s);
    return NULL;
}

void tls_staple_free(struct tls_staple *s)
{
    pthread_mutex_lock(&fetch_lock);
    s->dead = true;
    pthread_cond_signal(&fetch_cond);
    pthread_mutex_unlock(&fetch_lock);
    staple_unref(s);
}
