/* TLS on OpenSSL 3: server contexts (certificates, protocols, ciphers, SNI,
 * session cache and tickets, OCSP stapling, client certificates) and
 * non-blocking connections driven by an edge-triggered loop. Knows sockets
 * and bytes, not HTTP. */
#ifndef PORTICO_TLS_H
#define PORTICO_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "core/str.h"

/* Settings of one server block (or one upstream, for client contexts).
 * Strings are NUL-terminated; arrays may be empty. Filled by the config
 * loader, then handed to tls_server_ctx_new() once. */
struct net_resolver;

struct tls_server_conf {
    const char *certs[4]; /* ssl_certificate (PEM chains), e.g. an ECDSA and an RSA one */
    const char *keys[4];  /* ssl_certificate_key, same order */
    size_t ncerts;
    unsigned protocols;     /* TLS_PROTO_* bits; 0 = TLSv1.2 | TLSv1.3. OpenSSL 3 refuses
                             * TLSv1/1.1 handshakes at security level >= 1: they also
                             * need "@SECLEVEL=0" in ciphers */
    const char *ciphers;    /* ssl_ciphers (TLS 1.2 list), NULL = ECDHE+AESGCM:ECDHE+CHACHA20;
                             * TLS 1.3 suites stay OpenSSL's (ssl_conf_command Ciphersuites) */
    const char *ecdh_curve; /* ssl_ecdh_curve, NULL = X25519:prime256v1:secp384r1 */
    const char *dhparam;    /* ssl_dhparam file, NULL = none */
    bool prefer_server_ciphers;
    bool reject_handshake;     /* ssl_reject_handshake: no certificate needed; every
                                * handshake that picks this server is refused */
    uint32_t buffer_size;      /* ssl_buffer_size: largest record sent (0: 16k) */
    const char *password_file; /* ssl_password_file: pass phrases, one a line */
    const char *conf_commands[8][2]; /* ssl_conf_command name value */
    size_t nconf_commands;
    /* resumption */
    /* Session cache and tickets are those of the listener's default context:
     * OpenSSL resumes before the SNI callback runs (see tls_ctx_set_sni). */
    const char *session_cache_name; /* ssl_session_cache shared:NAME:SIZE, NULL = off; one
                                     * cache per NAME in the process, shared by all contexts
                                     * and threads naming it and kept across reloads */
    size_t session_cache_size;
    uint32_t session_timeout_s; /* ssl_session_timeout, default 300 */
    bool session_tickets;       /* default on */
    const char *ticket_keys[4]; /* ssl_session_ticket_key files (80 or 48 bytes), the first
                                 * encrypts; none = random keys rotated every
                                 * session_timeout, the 2 previous still decrypt */
    size_t nticket_keys;
    /* OCSP */
    bool stapling;
    bool stapling_verify;
    const char *stapling_file;       /* DER response to staple as is; else with `stapling`
                                      * responses are fetched from the AIA responder on a
                                      * background thread (`resolver`, or the system's) */
    const char *trusted_certificate; /* issuers/responders for stapling; added to the
                                      * verify store, as nginx */
    const struct net_resolver *resolver; /* names of responders (NULL: the system's) */
    uint32_t resolver_timeout_ms;
    /* client certificates */
    const char *client_certificate; /* CA file */
    int verify_client;              /* TLS_VERIFY_OFF/ON/OPTIONAL/OPTIONAL_NO_CA; as nginx, a
                                     * missing or bad client certificate does not fail the
                                     * handshake: see tls_conn_verify_refusal() */
    int verify_depth;               /* default 1 */
    const char *crl;
    /* ALPN protocols offered, in preference order, e.g. "h2", "http/1.1" */
    const char *alpn[4];
    size_t nalpn;
};

#define TLS_PROTO_TLSv1   (1u << 0)
#define TLS_PROTO_TLSv1_1 (1u << 1)
#define TLS_PROTO_TLSv1_2 (1u << 2)
#define TLS_PROTO_TLSv1_3 (1u << 3)

enum { TLS_VERIFY_OFF, TLS_VERIFY_ON, TLS_VERIFY_OPTIONAL, TLS_VERIFY_OPTIONAL_NO_CA };

struct tls_ctx;

/* Build a server context. On error returns NULL and writes a message naming
 * the file and OpenSSL's reason into err (the caller prefixes file:line). */
struct tls_ctx *tls_server_ctx_new(const struct tls_server_conf *c, char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *c);

/* SNI: called during the handshake with the requested name (may be empty);
 * returns the context of the server block that should answer, or NULL to
 * keep the listener's default. Set once per listener's default context. */
typedef struct tls_ctx *tls_sni_fn(void *arg, struct slice server_name);
void tls_ctx_set_sni(struct tls_ctx *dflt, tls_sni_fn *fn, void *arg);

/* Contexts are reference counted by OpenSSL: tls_ctx_free() drops the
 * caller's reference; connections still using it (after a reload) keep it
 * alive. tls_server_ctx_new() errors look like nginx's:
 * SSL_CTX_use_PrivateKey("file") failed (key values mismatch). */

/* Start a new ticket key now (rotating keys only; the old ones still decrypt).
 * For tests and the admin API; rotation otherwise happens by itself. */
void tls_ctx_rotate_ticket_keys(struct tls_ctx *c);
/* True once every certificate has an OCSP response to staple. */
bool tls_ctx_stapling_ready(const struct tls_ctx *c);

/* A client context for upstream TLS (proxy_ssl_*). */
struct tls_client_conf {
    bool verify; /* proxy_ssl_verify */
    const char *trusted_certificate;
    int verify_depth;
    unsigned protocols;
    const char *ciphers;
    const char *cert, *key; /* proxy_ssl_certificate / _key (mTLS) */
    bool session_reuse;     /* default on; see tls_conn_session_get() */
    const char *alpn[4];    /* offered to the upstream, e.g. "http/1.1" */
    size_t nalpn;
};
struct tls_ctx *tls_client_ctx_new(const struct tls_client_conf *c, char *err, size_t errlen);

/* One TLS connection over a non-blocking socket. */
struct tls_conn;

enum tls_io {
    TLS_OK = 0,          /* done / n bytes */
    TLS_WANT_READ = -2,  /* retry when readable */
    TLS_WANT_WRITE = -3, /* retry when writable */
    TLS_CLOSED = -4,     /* clean close_notify (or EOF) */
    TLS_ERROR = -5,      /* fatal: tls_conn_error() says why */
    TLS_PLAINTEXT = -6,  /* server handshake: the first byte is not a TLS handshake
                          * record (plain HTTP?); nothing was consumed from the
                          * socket, answer 400 in clear and close */
};

struct tls_conn *tls_conn_server(struct tls_ctx *c, int fd);
/* `sni` may be NULL; it is sent (unless an IP literal) and, when the context
 * verifies, the certificate must match it. */
struct tls_conn *tls_conn_client(struct tls_ctx *c, int fd, const char *sni);
/* Verify the upstream certificate against `name` instead (proxy_ssl_name with
 * proxy_ssl_server_name off). Before the handshake; 0 or -1. */
int tls_conn_verify_name(struct tls_conn *t, const char *name);

/* Upstream session reuse: take the session after a handshake (TLS 1.3:
 * after some data was read, the ticket comes late) and keep the newest per
 * upstream server; hand it to the next connection before its handshake.
 * _get returns NULL when there is nothing resumable or reuse is off; a
 * session may be shared by threads; free each one you got. */
struct tls_session;
struct tls_session *tls_conn_session_get(const struct tls_conn *t);
int tls_conn_session_set(struct tls_conn *t, struct tls_session *s);
void tls_session_free(struct tls_session *s);
/* Another reference to the same session (free each one). */
struct tls_session *tls_session_dup(struct tls_session *s);
/* After a client handshake failed (or succeeded): the peer certificate's
 * verification result, X509_V_OK (0) or OpenSSL's code, with its text in
 * *text ("unable to get local issuer certificate") for the upstream log. */
long tls_conn_verify_result(const struct tls_conn *t, const char **text);
void tls_conn_free(struct tls_conn *t);

/* Drive the handshake: TLS_OK when done; TLS_PLAINTEXT (server); errors are
 * for the info log with tls_conn_error(). Call until TLS_OK before reading. */
int tls_handshake(struct tls_conn *t);
/* Read up to len bytes: > 0 bytes, or a negative enum tls_io. With an
 * edge-triggered loop, read until TLS_WANT_READ: decrypted bytes (and, with
 * read-ahead, whole records) can wait inside OpenSSL with the socket empty. */
ssize_t tls_read(struct tls_conn *t, void *buf, size_t len);
/* Write as much of iov as possible: > 0 bytes written, or a negative enum
 * tls_io. Coalesces small pieces into TLS records of up to 16 KiB. After
 * TLS_WANT_*, call again with the same unconsumed bytes at the head of iov
 * (more may follow): OpenSSL retries the record already encrypted. */
ssize_t tls_writev(struct tls_conn *t, const struct iovec *iov, int iovcnt);
/* Send close_notify (best effort, non-blocking). */
void tls_shutdown(struct tls_conn *t);

/* A static description of the last failure, for the log. */
const char *tls_conn_error(const struct tls_conn *t);

/* For variables: "TLSv1.3", cipher name, "r" or ".", SNI, client cert. */
const char *tls_conn_protocol(const struct tls_conn *t);
const char *tls_conn_cipher(const struct tls_conn *t);
bool tls_conn_reused(const struct tls_conn *t);
const char *tls_conn_server_name(const struct tls_conn *t);
/* The negotiated ALPN protocol ("h2", "http/1.1") or empty. */
struct slice tls_conn_alpn(const struct tls_conn *t);
/* "SUCCESS", "NONE", "FAILED:reason" (static or owned by the connection). */
const char *tls_conn_client_verify(const struct tls_conn *t);
/* NULL if the request may go on, else nginx's reason for a 400 ("No required
 * SSL certificate was sent", "The SSL certificate error"), per the
 * verify_client of the context SNI selected. */
const char *tls_conn_verify_refusal(const struct tls_conn *t);
/* Subject DN (RFC 2253) and SHA-1 fingerprint (hex) of the client cert, into buf. */
size_t tls_conn_client_s_dn(const struct tls_conn *t, char *buf, size_t len);
size_t tls_conn_client_fingerprint(const struct tls_conn *t, char *buf, size_t len);

/* read(2)- and writev(2)-shaped access to a connection that is plain (t is
 * NULL) or TLS: > 0 bytes, 0 at EOF / close_notify, -1 with errno (EAGAIN:
 * wait for the next edge). On plain sockets a short read clears
 * io->readable (edge-triggered: the socket is empty and new bytes bring a new
 * edge), unless the peer half-closed; not with TLS, where OpenSSL may hold
 * decrypted bytes while the socket is empty. */
struct io;
ssize_t tls_io_read(struct io *io, struct tls_conn *t, void *buf, size_t want);
ssize_t tls_io_writev(int fd, struct tls_conn *t, const struct iovec *iov, int iovcnt);
/* For outq_write_with(): ctx is the struct tls_conn. */
ssize_t tls_outq_writev(void *ctx, const struct iovec *iov, int iovcnt);

/* Per-thread cleanup (OpenSSL's thread state). */
void tls_thread_deinit(void);

#endif
