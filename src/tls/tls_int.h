/* Internal to src/tls: the pieces shared by its .c files. Nothing outside
 * src/tls includes this header. */
#ifndef PORTICO_TLS_INT_H
#define PORTICO_TLS_INT_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <time.h>

#include "tls/tls.h"

struct tls_cache;
struct tls_tickets;
struct tls_staple;

/* Lives exactly as long as its SSL_CTX (freed from the SSL_CTX's ex_data
 * free hook), so connections that outlive a reload keep valid callbacks. */
struct tls_ctx {
    SSL_CTX *ssl;
    bool is_client;
    int verify_client;      /* TLS_VERIFY_* (server) */
    bool verify_peer;       /* client: proxy_ssl_verify */
    bool session_reuse;     /* client */
    unsigned char alpn[64]; /* wire format, server preference order */
    size_t alpn_len;
    tls_sni_fn *sni_fn;
    void *sni_arg;
    struct tls_cache *cache;     /* shared:NAME:SIZE, referenced */
    struct tls_tickets *tickets; /* NULL when tickets are off */
    struct tls_staple *staple;   /* NULL when stapling is off */
    bool reject;                 /* ssl_reject_handshake */
};

/* Set up once: ex_data indexes. Returns false if OpenSSL refused. */
bool tls_init_once(void);
struct tls_ctx *tls_ctx_of(const SSL_CTX *s);
/* The listener's context an SSL was created from: OpenSSL runs the session
 * cache and ticket callbacks on it even after SNI switched contexts. */
struct tls_ctx *tls_session_ctx_of(SSL *ssl);

/* Errors for tls_server_ctx_new(): "what(\"file\") failed (reason)". */
void tls_errf(char *err, size_t errlen, const char *what, const char *file);

/* cache.c: a session cache shared by name between contexts and threads. */
struct tls_cache *tls_cache_get(const char *name, size_t size_bytes);
void tls_cache_put(struct tls_cache *c);
void tls_cache_attach(struct tls_cache *c, SSL_CTX *ssl);

/* tickets.c: session ticket keys, from files or rotating. */
struct tls_tickets *tls_tickets_new(const char *const *files, size_t nfiles, uint32_t lifetime_s,
                                    char *err, size_t errlen);
void tls_tickets_free(struct tls_tickets *t);
void tls_tickets_attach(struct tls_tickets *t, SSL_CTX *ssl);
void tls_tickets_rotate(struct tls_tickets *t);

/* ocsp.c: the staple handed out in handshakes, from a file or fetched. */
struct tls_staple *tls_staple_new(const struct tls_server_conf *c, SSL_CTX *ssl, char *err,
                                  size_t errlen);
void tls_staple_free(struct tls_staple *s);
int tls_staple_status_cb(SSL *ssl, void *arg);
bool tls_staple_ready(struct tls_staple *s);

#endif
