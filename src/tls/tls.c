/* TLS contexts: server (certificates, protocols, ciphers, resumption,
 * stapling, client certificates, ALPN, SNI) and client (upstream TLS).
 * Modelled on nginx's ngx_event_openssl.c and ngx_http_ssl_module.c. */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls_int.h"

#define DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
#define DEFAULT_CURVES  "X25519:prime256v1:secp384r1"
#define MAX_PASSWORDS   64

static int ctx_index = -1;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void ctx_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct tls_ctx *c = ptr;
    if (!c)
        return;
    if (c->cache)
        tls_cache_put(c->cache);
    if (c->tickets)
        tls_tickets_free(c->tickets);
    if (c->staple)
        tls_staple_free(c->staple);
    free(c);
}

static void init_indexes(void)
{
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
    ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_ex_free);
}

bool tls_init_once(void)
{
    pthread_once(&init_once, init_indexes);
    return ctx_index >= 0;
}

struct tls_ctx *tls_ctx_of(const SSL_CTX *s)
{
    return SSL_CTX_get_ex_data(s, ctx_index);
}

void tls_errf(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_peek_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    if (file)
        snprintf(err, errlen, "%s(\"%s\") failed (%s)", what, file, why ? why : "unknown error");
    else
        snprintf(err, errlen, "%s failed (%s)", what, why ? why : "unknown error");
    ERR_clear_error();
}

/* Allocate the SSL_CTX and our struct, tied together. */
static struct tls_ctx *ctx_alloc(const SSL_METHOD *m, char *err, size_t errlen)
{
    if (!tls_init_once()) {
        snprintf(err, errlen, "OpenSSL initialisation failed");
        return NULL;
    }
    struct tls_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->ssl = SSL_CTX_new(m);
    if (!c->ssl) {
        tls_errf(err, errlen, "SSL_CTX_new()", NULL);
        free(c);
        return NULL;
    }
    if (!SSL_CTX_set_ex_data(c->ssl, ctx_index, c)) {
        tls_errf(err, errlen, "SSL_CTX_set_ex_data()", NULL);
        SSL_CTX_free(c->ssl);
        free(c);
        return NULL;
    }
    /* From here SSL_CTX_free() frees c too. */
    SSL_CTX_set_options(c->ssl, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(c->ssl, 1);
    return c;
}

void tls_ctx_free(struct tls_ctx *c)
{
    if (c)
        SSL_CTX_free(c->ssl); /* c goes with the last reference (ctx_ex_free) */
}

static const int proto_versions[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};
static const uint64_t proto_no_ops[] = {SSL_OP_NO_TLSv1, SSL_OP_NO_TLSv1_1, SSL_OP_NO_TLSv1_2,
                                        SSL_OP_NO_TLSv1_3};

/* min/max from the lowest and highest bit; holes in between become
 * SSL_OP_NO_* (what nginx does with ssl_protocols TLSv1 TLSv1.2). */
static bool set_protocols(SSL_CTX *s, unsigned bits, char *err, size_t errlen)
{
    if (bits == 0)
        bits = TLS_PROTO_TLSv1_2 | TLS_PROTO_TLSv1_3;
    int lo = -1, hi = -1;
    for (int i = 0; i < 4; i++)
        if (bits & (1u << i)) {
            if (lo < 0)
                lo = i;
            hi = i;
        }
    if (lo < 0) {
        snprintf(err, errlen, "no TLS protocol enabled");
        return false;
    }
    if (!SSL_CTX_set_min_proto_version(s, proto_versions[lo]) ||
        !SSL_CTX_set_max_proto_version(s, proto_versions[hi])) {
        tls_errf(err, errlen, "SSL_CTX_set_min/max_proto_version()", NULL);
        return false;
    }
    for (int i = lo + 1; i < hi; i++)
        if (!(bits & (1u << i)))
            SSL_CTX_set_options(s, proto_no_ops[i]);
    return true;
}

/* Load one certificate chain and its key, refusing a key that does not
 * match (OpenSSL only checks when both land in the same slot). */
/* ssl_password_file: the lines of the file (CR LF or LF, empty lines
 * skipped), pointing into *buf (freed and cleansed by the caller). */
static bool read_passwords(const char *path, char **buf, const char **pws, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open ssl_password_file \"%s\": %s", path, strerror(errno));
        return false;
    }
    char *b = calloc(1, 65536);
    size_t n = b ? fread(b, 1, 65535, f) : 0;
    fclose(f);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    b[n] = '\0';
    size_t k = 0;
    for (char *line = strtok(b, "\r\n"); line && k < MAX_PASSWORDS; line = strtok(NULL, "\r\n"))
        pws[k++] = line;
    pws[k] = NULL;
    *buf = b;
    return true;
}

static bool load_pair(SSL_CTX *s, const char *cert, const char *key, const char *const *pws,
                      char *err, size_t errlen)
{
    bool ok = false;
    X509 *x = NULL;
    EVP_PKEY *pk = NULL;
    FILE *f = fopen(cert, "r");
    if (!f || !(x = PEM_read_X509(f, NULL, NULL, NULL))) {
        if (!f)
            snprintf(err, errlen, "cannot load certificate \"%s\": cannot open file", cert);
        else
            tls_errf(err, errlen, "PEM_read_X509", cert);
        goto out;
    }
    fclose(f);
    f = fopen(key, "r");
    if (!f) {
        snprintf(err, errlen, "cannot load certificate key \"%s\": cannot open file", key);
        goto out;
    }
    /* An encrypted key takes the ssl_password_file's phrases in turn; the
     * empty phrase (never a prompt) when there is none. */
    static char empty[] = "";
    for (size_t i = 0; !pk && (i == 0 || (pws && pws[i])); i++) {
        rewind(f);
        ERR_clear_error();
        pk = PEM_read_PrivateKey(f, NULL, NULL, pws && pws[i] ? (void *)pws[i] : empty);
    }
    if (!pk) {
        tls_errf(err, errlen, "PEM_read_PrivateKey", key);
        goto out;
    }
    ERR_clear_error();
    if (!X509_check_private_key(x, pk)) {
        tls_errf(err, errlen, "SSL_CTX_use_PrivateKey", key);
        goto out;
    }
    if (SSL_CTX_use_certificate_chain_file(s, cert) != 1) {
        tls_errf(err, errlen, "SSL_CTX_use_certificate_chain_file", cert);
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(s, pk) != 1) {
        tls_errf(err, errlen, "SSL_CTX_use_PrivateKey", key);
        goto out;
    }
    ok = true;
out:
    if (f)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(pk);
    return ok;
}

static bool set_dhparam(SSL_CTX *s, const char *file, char *err, size_t errlen)
{
    BIO *b = BIO_new_file(file, "r");
    if (!b) {
        tls_errf(err, errlen, "BIO_new_file", file);
        return false;
    }
    EVP_PKEY *dh = PEM_read_bio_Parameters(b, NULL);
    BIO_free(b);
    if (!dh) {
        tls_errf(err, errlen, "PEM_read_bio_Parameters", file);
        return false;
    }
    if (SSL_CTX_set0_tmp_dh_pkey(s, dh) != 1) {
        EVP_PKEY_free(dh);
        tls_errf(err, errlen, "SSL_CTX_set0_tmp_dh_pkey", file);
        return false;
    }
    return true;
}

static bool apply_conf_commands(SSL_CTX *s, const char *const (*cmds)[2], size_t n, bool server,
                                char *err, size_t errlen)
{
    if (n == 0)
        return true;
    SSL_CONF_CTX *cc = SSL_CONF_CTX_new();
    if (!cc) {
        tls_errf(err, errlen, "SSL_CONF_CTX_new()", NULL);
        return false;
    }
    SSL_CONF_CTX_set_flags(cc, SSL_CONF_FLAG_FILE | SSL_CONF_FLAG_CERTIFICATE |
                                   SSL_CONF_FLAG_SHOW_ERRORS |
                                   (server ? SSL_CONF_FLAG_SERVER : SSL_CONF_FLAG_CLIENT));
    SSL_CONF_CTX_set_ssl_ctx(cc, s);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        if (SSL_CONF_cmd(cc, cmds[i][0], cmds[i][1]) <= 0) {
            char what[160];
            snprintf(what, sizeof(what), "SSL_CONF_cmd(\"%s\", \"%s\")", cmds[i][0], cmds[i][1]);
            tls_errf(err, errlen, what, NULL);
            ok = false;
        }
    }
    if (ok && SSL_CONF_CTX_finish(cc) != 1) {
        tls_errf(err, errlen, "SSL_CONF_CTX_finish()", NULL);
        ok = false;
    }
    SSL_CONF_CTX_free(cc);
    return ok;
}

/* ---- ALPN ---- */

static bool build_alpn(struct tls_ctx *c, const char *const *list, size_t n, char *err,
                       size_t errlen)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(list[i]);
        if (l == 0 || l > 255 || off + 1 + l > sizeof(c->alpn)) {
            snprintf(err, errlen, "invalid ALPN protocol \"%s\"", list[i]);
            return false;
        }
        c->alpn[off++] = (unsigned char)l;
        memcpy(c->alpn + off, list[i], l);
        off += l;
    }
    c->alpn_len = off;
    return true;
}

/* Server preference order: SSL_select_next_proto() walks its first list. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tls_ctx *c = tls_ctx_of(SSL_get_SSL_CTX(ssl));
    if (!c || c->alpn_len == 0)
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, c->alpn, (unsigned)c->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol, as nginx */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* ---- client certificates ---- */

/* As nginx: never fail the handshake on a bad client certificate; the result
 * is read after the handshake (tls_conn_client_verify / _verify_refusal) so
 * the HTTP layer can answer 400 with a reason. */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
    return 1;
}

static bool setup_client_verify(struct tls_ctx *c, const struct tls_server_conf *conf, char *err,
                                size_t errlen)
{
    c->verify_client = conf->verify_client;
    if (conf->verify_client == TLS_VERIFY_OFF)
        return true;
    int depth = conf->verify_depth > 0 ? conf->verify_depth : 1;
    SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, verify_cb);
    SSL_CTX_set_verify_depth(c->ssl, depth);
    if (conf->client_certificate) {
        if (SSL_CTX_load_verify_locations(c->ssl, conf->client_certificate, NULL) != 1) {
            tls_errf(err, errlen, "SSL_CTX_load_verify_locations", conf->client_certificate);
            return false;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(conf->client_certificate);
        if (!names) {
            tls_errf(err, errlen, "SSL_load_client_CA_file", conf->client_certificate);
            return false;
        }
        SSL_CTX_set_client_CA_list(c->ssl, names);
    } else if (conf->verify_client != TLS_VERIFY_OPTIONAL_NO_CA) {
        snprintf(err, errlen, "no ssl_client_certificate for ssl_verify_client");
        return false;
    }
    if (conf->crl) {
        X509_STORE *st = SSL_CTX_get_cert_store(c->ssl);
        X509_LOOKUP *lk = X509_STORE_add_lookup(st, X509_LOOKUP_file());
        if (!lk || X509_load_crl_file(lk, conf->crl, X509_FILETYPE_PEM) <= 0) {
            tls_errf(err, errlen, "X509_load_crl_file", conf->crl);
            return false;
        }
        X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    }
    return true;
}

/* The session id context ties cached sessions to this server's certificates
 * and client-verification settings (nginx hashes the same things). */
static bool set_sid_ctx(struct tls_ctx *c, const struct tls_server_conf *conf)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char h[EVP_MAX_MD_SIZE];
    unsigned hl = 0;
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (size_t i = 0; ok && i < conf->ncerts; i++)
        ok = EVP_DigestUpdate(md, conf->certs[i], strlen(conf->certs[i]) + 1);
    if (ok && conf->client_certificate)
        ok = EVP_DigestUpdate(md, conf->client_certificate, strlen(conf->client_certificate));
    if (ok)
        ok = EVP_DigestUpdate(md, &conf->verify_client, sizeof(conf->verify_client)) &&
             EVP_DigestFinal_ex(md, h, &hl);
    EVP_MD_CTX_free(md);
    if (hl > SSL_MAX_SID_CTX_LENGTH)
        hl = SSL_MAX_SID_CTX_LENGTH;
    return ok && SSL_CTX_set_session_id_context(c->ssl, h, hl) == 1;
}

static bool setup_resumption(struct tls_ctx *c, const struct tls_server_conf *conf, char *err,
                             size_t errlen)
{
    uint32_t timeout = conf->session_timeout_s ? conf->session_timeout_s : 300;
    SSL_CTX_set_timeout(c->ssl, timeout);
    if (!set_sid_ctx(c, conf)) {
        tls_errf(err, errlen, "SSL_CTX_set_session_id_context()", NULL);
        return false;
    }
    /* Never OpenSSL's internal per-context cache: ours is shared by name. */
    SSL_CTX_set_session_cache_mode(c->ssl, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL |
                                               SSL_SESS_CACHE_NO_AUTO_CLEAR);
    if (conf->session_cache_name) {
        c->cache = tls_cache_get(conf->session_cache_name, conf->session_cache_size);
        if (!c->cache) {
            snprintf(err, errlen, "cannot create ssl_session_cache \"%s\"",
                     conf->session_cache_name);
            return false;
        }
        tls_cache_attach(c->cache, c->ssl);
    }
    if (!conf->session_tickets) {
        /* TLS 1.3 then sends stateful tickets (session ids) backed by the cache. */
        SSL_CTX_set_options(c->ssl, SSL_OP_NO_TICKET);
        return true;
    }
    c->tickets = tls_tickets_new(conf->ticket_keys, conf->nticket_keys, timeout, err, errlen);
    if (!c->tickets)
        return false;
    tls_tickets_attach(c->tickets, c->ssl);
    return true;
}

struct tls_ctx *tls_server_ctx_new(const struct tls_server_conf *conf, char *err, size_t errlen)
{
    ERR_clear_error();
    struct tls_ctx *c = ctx_alloc(TLS_server_method(), err, errlen);
    if (!c)
        return NULL;
    if ((conf->ncerts == 0 && !conf->reject_handshake) || conf->ncerts > 4) {
        snprintf(err, errlen, "no \"ssl_certificate\" is defined");
        goto fail;
    }
    c->reject = conf->reject_handshake;
    char *pw_buf = NULL;
    const char *pws[MAX_PASSWORDS + 1] = {NULL};
    if (conf->password_file && !read_passwords(conf->password_file, &pw_buf, pws, err, errlen))
        goto fail;
    for (size_t i = 0; i < conf->ncerts; i++) {
        if (!conf->certs[i] || !conf->keys[i]) {
            snprintf(err, errlen, "no \"ssl_certificate_key\" is defined for certificate \"%s\"",
                     conf->certs[i] ? conf->certs[i] : "");
            free(pw_buf);
            goto fail;
        }
        if (!load_pair(c->ssl, conf->certs[i], conf->keys[i], pws, err, errlen)) {
            free(pw_buf);
            goto fail;
        }
    }
    if (pw_buf) {
        OPENSSL_cleanse(pw_buf, strlen(pw_buf));
        free(pw_buf);
    }
    if (conf->buffer_size)
        SSL_CTX_set_max_send_fragment(c->ssl, conf->buffer_size);
    if (!set_protocols(c->ssl, conf->protocols, err, errlen))
        goto fail;
    const char *ciphers = conf->ciphers ? conf->ciphers : DEFAULT_CIPHERS;
    if (SSL_CTX_set_cipher_list(c->ssl, ciphers) != 1) {
        tls_errf(err, errlen, "SSL_CTX_set_cipher_list", ciphers);
        goto fail;
    }
    if (conf->prefer_server_ciphers)
        SSL_CTX_set_options(c->ssl, SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Clients often close without close_notify after a complete exchange;
     * OpenSSL 3 would take that EOF as a fatal error and drop the session
     * from the cache. HTTP framing, not TLS, detects truncated requests. */
    SSL_CTX_set_options(c->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    const char *curves = conf->ecdh_curve ? conf->ecdh_curve : DEFAULT_CURVES;
    if (strcmp(curves, "auto") != 0 && SSL_CTX_set1_groups_list(c->ssl, curves) != 1) {
        tls_errf(err, errlen, "SSL_CTX_set1_groups_list", curves);
        goto fail;
    }
    if (conf->dhparam && !set_dhparam(c->ssl, conf->dhparam, err, errlen))
        goto fail;
    if (!setup_client_verify(c, conf, err, errlen))
        goto fail;
    if (!setup_resumption(c, conf, err, errlen))
        goto fail;
    if (!build_alpn(c, conf->alpn, conf->nalpn, err, errlen))
        goto fail;
    if (c->alpn_len)
        SSL_CTX_set_alpn_select_cb(c->ssl, alpn_select, NULL);
    if (conf->stapling || conf->stapling_file) {
        c->staple = tls_staple_new(conf, c->ssl, err, errlen);
        if (!c->staple)
            goto fail;
        SSL_CTX_set_tlsext_status_cb(c->ssl, tls_staple_status_cb);
        SSL_CTX_set_tlsext_status_arg(c->ssl, c->staple);
    }
    /* Last, as nginx: ssl_conf_command overrides everything above. */
    if (!apply_conf_commands(c->ssl, (const char *const(*)[2])conf->conf_commands,
                             conf->nconf_commands, true, err, errlen))
        goto fail;
    return c;
fail:
    tls_ctx_free(c);
    return NULL;
}

/* ---- SNI ---- */

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    struct tls_ctx *dflt = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    struct tls_ctx *to = dflt->sni_fn(dflt->sni_arg, slice_cstr(name ? name : ""));
    if ((to ? to : dflt)->reject) {
        /* ssl_reject_handshake: the server has no certificate to show */
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (!to || to->ssl == SSL_get_SSL_CTX(ssl))
        return SSL_TLSEXT_ERR_OK;
    if (!SSL_set_SSL_CTX(ssl, to->ssl)) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    /* SSL_set_SSL_CTX() moves certificates only; verification settings and
     * options follow by hand (as ngx_http_ssl_servername does). */
    SSL_set_verify(ssl, SSL_CTX_get_verify_mode(to->ssl), SSL_CTX_get_verify_callback(to->ssl));
    SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(to->ssl));
    SSL_clear_options(ssl, SSL_get_options(ssl) & ~SSL_CTX_get_options(to->ssl));
    SSL_set_options(ssl, SSL_CTX_get_options(to->ssl));
    return SSL_TLSEXT_ERR_OK;
}

void tls_ctx_set_sni(struct tls_ctx *dflt, tls_sni_fn *fn, void *arg)
{
    dflt->sni_fn = fn;
    dflt->sni_arg = arg;
    if (fn)
        SSL_CTX_set_tlsext_servername_callback(dflt->ssl, servername_cb);
    else
        SSL_CTX_callback_ctrl(dflt->ssl, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, NULL);
    SSL_CTX_set_tlsext_servername_arg(dflt->ssl, dflt);
}

void tls_ctx_rotate_ticket_keys(struct tls_ctx *c)
{
    if (c->tickets)
        tls_tickets_rotate(c->tickets);
}

bool tls_ctx_stapling_ready(const struct tls_ctx *c)
{
    return c->staple && tls_staple_ready(c->staple);
}

/* ---- client contexts ---- */

struct tls_ctx *tls_client_ctx_new(const struct tls_client_conf *conf, char *err, size_t errlen)
{
    ERR_clear_error();
    struct tls_ctx *c = ctx_alloc(TLS_client_method(), err, errlen);
    if (!c)
        return NULL;
    c->is_client = true;
    c->verify_peer = conf->verify;
    c->session_reuse = conf->session_reuse;
    if (!set_protocols(c->ssl, conf->protocols, err, errlen))
        goto fail;
    if (conf->ciphers && SSL_CTX_set_cipher_list(c->ssl, conf->ciphers) != 1) {
        tls_errf(err, errlen, "SSL_CTX_set_cipher_list", conf->ciphers);
        goto fail;
    }
    if (conf->verify) {
        if (!conf->trusted_certificate) {
            snprintf(err, errlen, "no proxy_ssl_trusted_certificate for proxy_ssl_verify");
            goto fail;
        }
        if (SSL_CTX_load_verify_locations(c->ssl, conf->trusted_certificate, NULL) != 1) {
            tls_errf(err, errlen, "SSL_CTX_load_verify_locations", conf->trusted_certificate);
            goto fail;
        }
        SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_verify_depth(c->ssl, conf->verify_depth > 0 ? conf->verify_depth : 1);
    } else {
        SSL_CTX_set_verify(c->ssl, SSL_VERIFY_NONE, NULL);
    }
    if (conf->cert || conf->key) {
        if (!conf->cert || !conf->key) {
            snprintf(err, errlen,
                     "proxy_ssl_certificate and proxy_ssl_certificate_key go together");
            goto fail;
        }
        if (!load_pair(c->ssl, conf->cert, conf->key, NULL, err, errlen))
            goto fail;
    }
    if (!build_alpn(c, conf->alpn, conf->nalpn, err, errlen))
        goto fail;
    if (c->alpn_len && SSL_CTX_set_alpn_protos(c->ssl, c->alpn, (unsigned)c->alpn_len) != 0) {
        tls_errf(err, errlen, "SSL_CTX_set_alpn_protos()", NULL);
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(c->ssl, conf->session_reuse
                                               ? SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL
                                               : SSL_SESS_CACHE_OFF);
    if (!conf->session_reuse)
        SSL_CTX_set_options(c->ssl, SSL_OP_NO_TICKET);
    return c;
fail:
    tls_ctx_free(c);
    return NULL;
}

void tls_thread_deinit(void)
{
    OPENSSL_thread_stop();
}
