/* TLS connections over non-blocking sockets: handshake, read, writev,
 * shutdown, and what the variables read afterwards. */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "tls/tls_int.h"

#include <unistd.h>

#include "core/loop.h"

#define RECORD 16384

struct tls_conn {
    SSL *ssl;
    struct tls_ctx *ctx; /* the listener's (or upstream's) context */
    int fd;
    bool is_server;
    bool peeked;     /* first byte checked for plain HTTP */
    bool done;       /* handshake complete */
    bool fatal;      /* no close_notify after a fatal error */
    size_t pend_len; /* an SSL_write to retry with this many bytes */
    const char *err;
    char errbuf[160];
    char verify[96]; /* $ssl_client_verify */
};

/* Coalescing buffer: a record is encrypted by OpenSSL as soon as SSL_write
 * is called, so a retry only has to present the same length (and, to be
 * safe, the same bytes, which the caller's unconsumed iov still holds);
 * nothing needs to stay in a per-connection buffer between calls. */
static __thread unsigned char coalesce[RECORD];

static int sess_index = -1;
static pthread_once_t sess_once = PTHREAD_ONCE_INIT;

static void make_sess_index(void)
{
    sess_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

struct tls_ctx *tls_session_ctx_of(SSL *ssl)
{
    struct tls_ctx *c = sess_index >= 0 ? SSL_get_ex_data(ssl, sess_index) : NULL;
    return c ? c : tls_ctx_of(SSL_get_SSL_CTX(ssl));
}

static struct tls_conn *conn_new(struct tls_ctx *c, int fd)
{
    pthread_once(&sess_once, make_sess_index);
    struct tls_conn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (!(t->ssl = SSL_new(c->ssl)) || SSL_set_fd(t->ssl, fd) != 1 ||
        SSL_set_ex_data(t->ssl, sess_index, c) != 1) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    t->ctx = c;
    t->fd = fd;
    t->err = "";
    return t;
}

struct tls_conn *tls_conn_server(struct tls_ctx *c, int fd)
{
    struct tls_conn *t = conn_new(c, fd);
    if (t) {
        t->is_server = true;
        SSL_set_accept_state(t->ssl);
    }
    return t;
}

static bool is_ip_literal(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

struct tls_conn *tls_conn_client(struct tls_ctx *c, int fd, const char *sni)
{
    struct tls_conn *t = conn_new(c, fd);
    if (!t)
        return NULL;
    SSL_set_connect_state(t->ssl);
    /* RFC 6066: no IP literals in server_name. */
    if (sni && *sni && !is_ip_literal(sni) && SSL_set_tlsext_host_name(t->ssl, sni) != 1)
        goto fail;
    if (sni && *sni && tls_conn_verify_name(t, sni) < 0)
        goto fail;
    return t;
fail:
    tls_conn_free(t);
    ERR_clear_error();
    return NULL;
}

int tls_conn_verify_name(struct tls_conn *t, const char *name)
{
    if (!t->ctx->verify_peer)
        return 0;
    if (is_ip_literal(name))
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) == 1 ? 0 : -1;
    SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return SSL_set1_host(t->ssl, name) == 1 ? 0 : -1;
}

void tls_conn_free(struct tls_conn *t)
{
    if (!t)
        return;
    /* Freeing an SSL that did not send close_notify drops its session from
     * the cache; a closed keep-alive or timed-out connection is no reason
     * (nginx sets the same flags). Fatal errors removed it already. */
    if (!t->fatal)
        SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(t->ssl);
    free(t);
}

/* ---- errors ---- */

static void set_reason(struct tls_conn *t, const char *prefix)
{
    unsigned long e = ERR_peek_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    if (!why)
        why = "unknown error";
    long vr = SSL_get_verify_result(t->ssl);
    if (ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK)
        snprintf(t->errbuf, sizeof(t->errbuf), "%s%s: %s", prefix, why,
                 X509_verify_cert_error_string(vr));
    else
        snprintf(t->errbuf, sizeof(t->errbuf), "%s%s", prefix, why);
    t->err = t->errbuf;
}

/* Map a failed SSL_* call; `in_handshake` turns EOF into an error. */
static int io_error(struct tls_conn *t, int ret, bool in_handshake)
{
    int saved_errno = errno;
    int e = SSL_get_error(t->ssl, ret);
    int r = TLS_ERROR;
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        t->err = "closed by peer";
        return TLS_CLOSED;
    case SSL_ERROR_SYSCALL:
        t->fatal = true;
        if (ERR_peek_error()) {
            set_reason(t, "");
        } else if (ret == 0 || saved_errno == 0) {
            t->err = in_handshake ? "peer closed connection in SSL handshake" : "closed by peer";
            r = in_handshake ? TLS_ERROR : TLS_CLOSED;
        } else {
            snprintf(t->errbuf, sizeof(t->errbuf), "%s", strerror(saved_errno));
            t->err = t->errbuf;
        }
        break;
    case SSL_ERROR_SSL:
        t->fatal = true;
        if (!in_handshake &&
            ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            t->err = "closed by peer without close_notify";
            r = TLS_CLOSED;
        } else {
            set_reason(t, "");
        }
        break;
    default:
        t->fatal = true;
        t->err = "unexpected SSL error";
        break;
    }
    ERR_clear_error();
    return r;
}

const char *tls_conn_error(const struct tls_conn *t)
{
    return t->err;
}

/* ---- handshake, I/O ---- */

/* nginx learns of plain HTTP from OpenSSL's "http request" error after the
 * bytes are gone; peeking keeps them, and catches any non-handshake byte. */
static int peek_first_byte(struct tls_conn *t)
{
    unsigned char b;
    for (;;) {
        ssize_t r = recv(t->fd, &b, 1, MSG_PEEK);
        if (r == 1)
            break;
        if (r == 0) {
            t->err = "peer closed connection in SSL handshake";
            return TLS_CLOSED;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return TLS_WANT_READ;
        snprintf(t->errbuf, sizeof(t->errbuf), "%s", strerror(errno));
        t->err = t->errbuf;
        return TLS_ERROR;
    }
    t->peeked = true;
    if (b != 0x16) { /* TLS record type handshake */
        t->err = "plain HTTP request sent to HTTPS port";
        t->fatal = true;
        return TLS_PLAINTEXT;
    }
    return TLS_OK;
}

static void record_verify(struct tls_conn *t)
{
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    long vr = SSL_get_verify_result(t->ssl);
    if (!peer)
        snprintf(t->verify, sizeof(t->verify), "NONE");
    else if (vr == X509_V_OK)
        snprintf(t->verify, sizeof(t->verify), "SUCCESS");
    else
        snprintf(t->verify, sizeof(t->verify), "FAILED:%s", X509_verify_cert_error_string(vr));
}

int tls_handshake(struct tls_conn *t)
{
    if (t->done)
        return TLS_OK;
    if (t->is_server && !t->peeked) {
        int r = peek_first_byte(t);
        if (r != TLS_OK)
            return r;
    }
    ERR_clear_error();
    errno = 0;
    int ret = SSL_do_handshake(t->ssl);
    if (ret != 1)
        return io_error(t, ret, true);
    t->done = true;
    if (t->is_server)
        record_verify(t);
    return TLS_OK;
}

ssize_t tls_read(struct tls_conn *t, void *buf, size_t len)
{
    if (len > INT32_MAX)
        len = INT32_MAX;
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(t->ssl, buf, (int)len);
    if (n > 0)
        return n;
    return io_error(t, n, false);
}

ssize_t tls_writev(struct tls_conn *t, const struct iovec *iov, int iovcnt)
{
    size_t total = 0, off = 0;
    int i = 0;
    for (;;) {
        while (i < iovcnt && off == iov[i].iov_len) {
            i++;
            off = 0;
        }
        if (i == iovcnt)
            break;
        size_t want = t->pend_len ? t->pend_len : RECORD;
        size_t avail = iov[i].iov_len - off;
        const void *p;
        size_t len;
        if (avail >= want) {
            p = (const char *)iov[i].iov_base + off;
            len = want;
        } else {
            len = 0;
            for (int j = i; j < iovcnt && len < want; j++) {
                size_t from = j == i ? off : 0;
                size_t n = iov[j].iov_len - from;
                if (n > want - len)
                    n = want - len;
                memcpy(coalesce + len, (const char *)iov[j].iov_base + from, n);
                len += n;
            }
            if (t->pend_len && len < t->pend_len) {
                t->err = "writev retried with fewer bytes than the pending record";
                t->fatal = true;
                return total ? (ssize_t)total : TLS_ERROR;
            }
            p = coalesce;
        }
        ERR_clear_error();
        errno = 0;
        int n = SSL_write(t->ssl, p, (int)len);
        if (n <= 0) {
            int r = io_error(t, n, false);
            if (r == TLS_WANT_READ || r == TLS_WANT_WRITE)
                t->pend_len = len;
            return total ? (ssize_t)total : r;
        }
        t->pend_len = 0;
        total += (size_t)n;
        /* advance the cursor by n */
        size_t left = (size_t)n;
        while (left) {
            size_t room = iov[i].iov_len - off;
            if (left < room) {
                off += left;
                left = 0;
            } else {
                left -= room;
                i++;
                off = 0;
            }
        }
    }
    return (ssize_t)total;
}

void tls_shutdown(struct tls_conn *t)
{
    if (!t->done || t->fatal)
        return;
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

/* ---- variables ---- */

const char *tls_conn_protocol(const struct tls_conn *t)
{
    return SSL_get_version(t->ssl);
}

const char *tls_conn_cipher(const struct tls_conn *t)
{
    const char *s = SSL_get_cipher_name(t->ssl);
    return s ? s : "";
}

bool tls_conn_reused(const struct tls_conn *t)
{
    return SSL_session_reused(t->ssl) == 1;
}

const char *tls_conn_server_name(const struct tls_conn *t)
{
    const char *s = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    return s ? s : "";
}

struct slice tls_conn_alpn(const struct tls_conn *t)
{
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    return slice_make((const char *)p, p ? len : 0);
}

const char *tls_conn_client_verify(const struct tls_conn *t)
{
    return t->verify[0] ? t->verify : "NONE";
}

/* nginx's ngx_ssl_verify_error_optional(): the errors optional_no_ca lets by. */
static bool no_ca_error(long r)
{
    return r == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
           r == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN || r == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
           r == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
           r == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE;
}

const char *tls_conn_verify_refusal(const struct tls_conn *t)
{
    /* The context SNI chose decides, as in ngx_http_process_request(). */
    struct tls_ctx *c = tls_ctx_of(SSL_get_SSL_CTX(t->ssl));
    if (!t->is_server || !c || c->verify_client == TLS_VERIFY_OFF)
        return NULL;
    if (!SSL_get0_peer_certificate(t->ssl))
        return c->verify_client == TLS_VERIFY_ON ? "No required SSL certificate was sent" : NULL;
    long r = SSL_get_verify_result(t->ssl);
    if (r == X509_V_OK || (c->verify_client == TLS_VERIFY_OPTIONAL_NO_CA && no_ca_error(r)))
        return NULL;
    return "The SSL certificate error";
}

static size_t copy_out(char *buf, size_t len, const char *s, size_t n)
{
    if (len == 0)
        return 0;
    if (n >= len)
        n = len - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return n;
}

size_t tls_conn_client_s_dn(const struct tls_conn *t, char *buf, size_t len)
{
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (!peer)
        return copy_out(buf, len, "", 0);
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || X509_NAME_print_ex(b, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253) < 0) {
        BIO_free(b);
        return copy_out(buf, len, "", 0);
    }
    char *p;
    long n = BIO_get_mem_data(b, &p);
    size_t r = copy_out(buf, len, p, n > 0 ? (size_t)n : 0);
    BIO_free(b);
    return r;
}

size_t tls_conn_client_fingerprint(const struct tls_conn *t, char *buf, size_t len)
{
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!peer || X509_digest(peer, EVP_sha1(), md, &n) != 1)
        return copy_out(buf, len, "", 0);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return copy_out(buf, len, hex, 2 * n);
}

/* ---- client sessions (proxy_ssl_session_reuse) ---- */

struct tls_session *tls_conn_session_get(const struct tls_conn *t)
{
    if (!t->ctx->session_reuse)
        return NULL;
    SSL_SESSION *s = SSL_get1_session(t->ssl);
    if (s && !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        s = NULL;
    }
    return (struct tls_session *)s;
}

int tls_conn_session_set(struct tls_conn *t, struct tls_session *s)
{
    if (!s || !t->ctx->session_reuse)
        return 0;
    return SSL_set_session(t->ssl, (SSL_SESSION *)s) == 1 ? 0 : -1;
}

void tls_session_free(struct tls_session *s)
{
    SSL_SESSION_free((SSL_SESSION *)s);
}

struct tls_session *tls_session_dup(struct tls_session *s)
{
    if (s)
        SSL_SESSION_up_ref((SSL_SESSION *)s);
    return s;
}

long tls_conn_verify_result(const struct tls_conn *t, const char **text)
{
    long r = SSL_get_verify_result(t->ssl);
    if (text)
        *text = X509_verify_cert_error_string(r);
    return r;
}

ssize_t tls_io_read(struct io *io, struct tls_conn *t, void *buf, size_t want)
{
    if (!t) {
        ssize_t n = read(io->fd, buf, want);
        if (n > 0 && (size_t)n < want && !io->rdhup)
            io->readable = false;
        return n;
    }
    ssize_t n = tls_read(t, buf, want);
    if (n > 0)
        return n;
    switch (n) {
    case TLS_WANT_READ:
    case TLS_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case TLS_CLOSED:
        return 0;
    default:
        errno = ECONNRESET;
        return -1;
    }
}

ssize_t tls_outq_writev(void *ctx, const struct iovec *iov, int iovcnt)
{
    ssize_t n = tls_writev(ctx, iov, iovcnt);
    if (n > 0)
        return n;
    errno = (n == TLS_WANT_WRITE || n == TLS_WANT_READ) ? EAGAIN : EPIPE;
    return -1;
}

ssize_t tls_io_writev(int fd, struct tls_conn *t, const struct iovec *iov, int iovcnt)
{
    return t ? tls_outq_writev(t, iov, iovcnt) : writev(fd, iov, iovcnt);
}
