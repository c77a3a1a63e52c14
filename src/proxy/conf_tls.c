/* The ssl_* directives (server and http level, nginx names) and building the
 * TLS contexts of a snapshot: one per server block with certificates, the
 * listener's default server's context answering the handshake, SNI switching
 * to the server whose server_name matches. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/conf.h"
#include "tls/tls.h"

#define SSL_OFF(f) offsetof(struct ssl_srv_conf, f)

/* Upstream sessions kept per location: one per upstream address. */
#define PSSL_SLOTS 64

struct proxy_ssl {
    struct tls_ctx *ctx;
    pthread_mutex_t lock;
    size_t next;
    struct {
        struct net_addr addr;
        struct tls_session *sess;
    } slots[PSSL_SLOTS];
};

static int build_upstream_tls(struct location *loc, char *err, size_t errlen);

static struct ssl_srv_conf *ssl_of(void *srv)
{
    return &((struct srv_conf *)srv)->ssl;
}

static int set_certificate(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct ssl_srv_conf *sc = ssl_of(conf);
    bool key = strcmp(n->name, "ssl_certificate_key") == 0;
    size_t *cnt = key ? &sc->nkeys : &sc->tc.ncerts;
    const char **arr = key ? sc->tc.keys : sc->tc.certs;
    if (*cnt == 4)
        return cf_error(cx, n, "too many \"%s\" directives (at most 4)", n->name);
    arr[(*cnt)++] = n->args[0];
    if (!sc->file) {
        sc->file = n->file;
        sc->line = n->line;
    }
    return 0;
}

static int parse_protocols(struct cf_ctx *cx, const struct cf_node *n, unsigned *out)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"TLSv1", TLS_PROTO_TLSv1},
                 {"TLSv1.1", TLS_PROTO_TLSv1_1},
                 {"TLSv1.2", TLS_PROTO_TLSv1_2},
                 {"TLSv1.3", TLS_PROTO_TLSv1_3}};
    unsigned bits = 0;
    for (size_t i = 0; i < n->nargs; i++) {
        size_t k;
        for (k = 0; k < sizeof(names) / sizeof(names[0]); k++)
            if (strcmp(n->args[i], names[k].name) == 0)
                break;
        if (k == sizeof(names) / sizeof(names[0]))
            return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[i], n->name);
        bits |= names[k].bit;
    }
    *out = bits;
    return 0;
}

static int set_protocols(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    (void)d;
    return parse_protocols(cx, n, &ssl_of(conf)->tc.protocols);
}

static int set_str(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                   void *conf)
{
    const char **field = (const char **)((char *)ssl_of(conf) + d->offset);
    if (*field)
        return cf_error(cx, n, "\"%s\" directive is duplicate", n->name);
    *field = n->args[0];
    return 0;
}

static int set_buffer_size(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                           void *conf)
{
    (void)d;
    struct ssl_srv_conf *c = ssl_of(conf);
    size_t v;
    if (cf_parse_size(n->args[0], &v) < 0 || v < 512 || v > 16384)
        return cf_error(cx, n, "\"ssl_buffer_size\" must be between 512 and 16k");
    c->tc.buffer_size = (uint32_t)v;
    return 0;
}

static int set_flag(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    int *field = (int *)((char *)ssl_of(conf) + d->offset);
    if (strcmp(n->args[0], "on") == 0)
        *field = 1;
    else if (strcmp(n->args[0], "off") == 0)
        *field = 0;
    else
        return cf_error(cx, n,
                        "invalid value \"%s\" in \"%s\" directive, it must be \"on\" or "
                        "\"off\"",
                        n->args[0], n->name);
    return 0;
}

static int set_conf_command(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct ssl_srv_conf *sc = ssl_of(conf);
    if (sc->tc.nconf_commands == 8)
        return cf_error(cx, n, "too many \"ssl_conf_command\" directives (at most 8)");
    sc->tc.conf_commands[sc->tc.nconf_commands][0] = n->args[0];
    sc->tc.conf_commands[sc->tc.nconf_commands][1] = n->args[1];
    sc->tc.nconf_commands++;
    return 0;
}

static int set_session_cache(struct cf_ctx *cx, const struct cf_node *n,
                             const struct cf_directive *d, void *conf)
{
    (void)d;
    struct ssl_srv_conf *sc = ssl_of(conf);
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        if (strcmp(a, "off") == 0 || strcmp(a, "none") == 0) {
            sc->cache_set = 1;
            sc->tc.session_cache_name = NULL;
            continue;
        }
        if (strcmp(a, "builtin") == 0 || strncmp(a, "builtin:", 8) == 0)
            continue; /* OpenSSL's per-context cache: ours is shared anyway */
        if (strncmp(a, "shared:", 7) != 0)
            return cf_error(cx, n, "invalid session cache \"%s\"", a);
        const char *colon = strchr(a + 7, ':');
        if (!colon || colon == a + 7)
            return cf_error(cx, n, "invalid session cache \"%s\"", a);
        char *name = arena_strndup(cx->arena, a + 7, (size_t)(colon - a - 7));
        size_t size;
        if (!name || cf_parse_size(colon + 1, &size) < 0 || size < 8192)
            return cf_error(cx, n, "invalid session cache size \"%s\"", colon + 1);
        sc->tc.session_cache_name = name;
        sc->tc.session_cache_size = size;
        sc->cache_set = 1;
    }
    return 0;
}

static int set_session_timeout(struct cf_ctx *cx, const struct cf_node *n,
                               const struct cf_directive *d, void *conf)
{
    (void)d;
    uint32_t ms;
    if (cf_parse_msec(n->args[0], &ms) < 0 || ms < 1000)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], n->name);
    ssl_of(conf)->tc.session_timeout_s = ms / 1000;
    return 0;
}

static int set_ticket_key(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                          void *conf)
{
    (void)d;
    struct ssl_srv_conf *sc = ssl_of(conf);
    if (sc->tc.nticket_keys == 4)
        return cf_error(cx, n, "too many \"ssl_session_ticket_key\" directives (at most 4)");
    sc->tc.ticket_keys[sc->tc.nticket_keys++] = n->args[0];
    return 0;
}

static int set_verify_client(struct cf_ctx *cx, const struct cf_node *n,
                             const struct cf_directive *d, void *conf)
{
    (void)d;
    struct ssl_srv_conf *sc = ssl_of(conf);
    const char *a = n->args[0];
    if (strcmp(a, "off") == 0)
        sc->verify_client = TLS_VERIFY_OFF;
    else if (strcmp(a, "on") == 0)
        sc->verify_client = TLS_VERIFY_ON;
    else if (strcmp(a, "optional") == 0)
        sc->verify_client = TLS_VERIFY_OPTIONAL;
    else if (strcmp(a, "optional_no_ca") == 0)
        sc->verify_client = TLS_VERIFY_OPTIONAL_NO_CA;
    else
        return cf_error(cx, n, "invalid value \"%s\" in \"ssl_verify_client\" directive", a);
    return 0;
}

static int set_verify_depth(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    int v;
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1 || v > 100)
        return cf_error(cx, n, "invalid value \"%s\" in \"ssl_verify_depth\" directive",
                        n->args[0]);
    ssl_of(conf)->tc.verify_depth = v;
    return 0;
}

static int set_handshake_timeout(struct cf_ctx *cx, const struct cf_node *n,
                                 const struct cf_directive *d, void *conf)
{
    (void)d;
    if (cf_parse_msec(n->args[0], &ssl_of(conf)->handshake_timeout_ms) < 0)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], n->name);
    return 0;
}

static int set_proxy_protocols(struct cf_ctx *cx, const struct cf_node *n,
                               const struct cf_directive *d, void *conf)
{
    return parse_protocols(cx, n, (unsigned *)((char *)conf + d->offset));
}

static int set_proxy_verify_depth(struct cf_ctx *cx, const struct cf_node *n,
                                  const struct cf_directive *d, void *conf)
{
    int v;
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1 || v > 100)
        return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], n->name);
    *(int *)((char *)conf + d->offset) = v;
    return 0;
}

#define PSSL_OFF(f) (offsetof(struct loc_conf, proxy_ssl) + offsetof(struct proxy_ssl_conf, f))
#define PROW(name, min, max, fn, off, syn, dflt, help)                                             \
    {                                                                                              \
        name, CF_HTTP | CF_SERVER | CF_LOCATION, min, max, false, fn, CONF_LOC, off, syn, dflt,    \
            help                                                                                   \
    }

#define SRV_HTTP (CF_HTTP | CF_SERVER)
#define ROW(name, min, max, fn, off, syn, dflt, help)                                              \
    {                                                                                              \
        name, SRV_HTTP, min, max, false, fn, CONF_SRV, off, syn, dflt, help                        \
    }

static const struct cf_directive ssl_directives[] = {
    ROW("ssl_certificate", 1, 1, set_certificate, 0, "file", "-",
        "a PEM certificate chain; up to four (e.g. ECDSA and RSA: each client gets one it "
        "supports)"),
    ROW("ssl_certificate_key", 1, 1, set_certificate, 0, "file", "-",
        "the private key of the ssl_certificate in the same position"),
    ROW("ssl_protocols", 1, 4, set_protocols, 0, "[TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]",
        "TLSv1.2 TLSv1.3", "protocol versions accepted"),
    ROW("ssl_ciphers", 1, 1, set_str, SSL_OFF(tc.ciphers), "ciphers", "ECDHE+AESGCM:ECDHE+CHACHA20",
        "TLS 1.2 cipher list (OpenSSL syntax); TLS 1.3 suites via ssl_conf_command"),
    ROW("ssl_prefer_server_ciphers", 1, 1, set_flag, SSL_OFF(prefer), "on | off", "on",
        "the server's cipher order wins over the client's"),
    ROW("ssl_ecdh_curve", 1, 1, set_str, SSL_OFF(tc.ecdh_curve), "curve[:curve...]",
        "X25519:prime256v1:secp384r1", "key exchange groups"),
    ROW("ssl_dhparam", 1, 1, set_str, SSL_OFF(tc.dhparam), "file", "-",
        "DH parameters for DHE ciphers"),
    ROW("ssl_conf_command", 2, 2, set_conf_command, 0, "name value", "-",
        "any OpenSSL SSL_CONF command (e.g. Ciphersuites, Options)"),
    ROW("ssl_session_cache", 1, 3, set_session_cache, 0,
        "off | none | [builtin[:size]] [shared:name:size]", "none",
        "a session cache shared by every worker (and kept across reloads)"),
    ROW("ssl_session_timeout", 1, 1, set_session_timeout, 0, "time", "5m",
        "how long a session (cache or ticket) can be resumed"),
    ROW("ssl_session_tickets", 1, 1, set_flag, SSL_OFF(tickets), "on | off", "on",
        "session resumption by tickets"),
    ROW("ssl_session_ticket_key", 1, 1, set_ticket_key, 0, "file", "-",
        "ticket key file (48 or 80 bytes); the first encrypts, all decrypt; without one, keys "
        "are random and rotate every ssl_session_timeout"),
    ROW("ssl_stapling", 1, 1, set_flag, SSL_OFF(stapling), "on | off", "off",
        "staple OCSP responses (fetched in the background, never during a handshake)"),
    ROW("ssl_stapling_verify", 1, 1, set_flag, SSL_OFF(stapling_verify), "on | off", "off",
        "verify OCSP responses before stapling them"),
    ROW("ssl_stapling_file", 1, 1, set_str, SSL_OFF(tc.stapling_file), "file", "-",
        "a DER OCSP response to staple instead of fetching one"),
    ROW("ssl_trusted_certificate", 1, 1, set_str, SSL_OFF(tc.trusted_certificate), "file", "-",
        "CA certificates to verify OCSP responses and client certificates"),
    ROW("ssl_client_certificate", 1, 1, set_str, SSL_OFF(tc.client_certificate), "file", "-",
        "CA certificates for client certificates (also sent as the acceptable CA list)"),
    ROW("ssl_verify_client", 1, 1, set_verify_client, 0, "on | off | optional | optional_no_ca",
        "off", "ask for a client certificate; with on, requests without a valid one get 400"),
    ROW("ssl_verify_depth", 1, 1, set_verify_depth, 0, "number", "1",
        "longest client certificate chain"),
    ROW("ssl_crl", 1, 1, set_str, SSL_OFF(tc.crl), "file", "-",
        "revoked client certificates (PEM CRL)"),
    ROW("ssl_handshake_timeout", 1, 1, set_handshake_timeout, 0, "time", "60s",
        "time to complete a TLS handshake"),
    ROW("ssl_reject_handshake", 1, 1, set_flag, SSL_OFF(reject_handshake), "on | off", "off",
        "refuse every handshake that picks this server (an unrecognized_name alert): a default "
        "server that needs no certificate, so unknown names learn nothing from one"),
    ROW("ssl_buffer_size", 1, 1, set_buffer_size, 0, "size", "16k",
        "largest TLS record sent (512 to 16k): smaller records let a browser start on the "
        "first bytes sooner, larger ones cost less"),
    ROW("ssl_password_file", 1, 1, set_str, SSL_OFF(tc.password_file), "file", "-",
        "pass phrases for encrypted ssl_certificate_key files, one a line, each tried in turn"),
    /* upstream TLS (proxy_pass https://...): location-level settings */
    PROW("proxy_ssl_verify", 1, 1, cf_set_flag, PSSL_OFF(verify), "on | off", "off",
         "verify the upstream's certificate (chain and name)"),
    PROW("proxy_ssl_trusted_certificate", 1, 1, cf_set_str, PSSL_OFF(trusted_certificate), "file",
         "-", "CA certificates (PEM) to verify upstream certificates with"),
    PROW("proxy_ssl_verify_depth", 1, 1, set_proxy_verify_depth, PSSL_OFF(verify_depth), "number",
         "1", "longest upstream certificate chain"),
    PROW("proxy_ssl_server_name", 1, 1, cf_set_flag, PSSL_OFF(server_name), "on | off", "off",
         "send the proxy_ssl_name as SNI"),
    PROW("proxy_ssl_name", 1, 1, cf_set_str, PSSL_OFF(name), "name", "$proxy_host",
         "the name sent as SNI and checked in the certificate (default: the proxy_pass host "
         "without port)"),
    PROW("proxy_ssl_protocols", 1, 4, set_proxy_protocols, PSSL_OFF(protocols),
         "[TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]", "TLSv1.2 TLSv1.3",
         "protocol versions offered to upstreams"),
    PROW("proxy_ssl_ciphers", 1, 1, cf_set_str, PSSL_OFF(ciphers), "ciphers", "DEFAULT",
         "TLS 1.2 cipher list offered to upstreams (OpenSSL syntax)"),
    PROW("proxy_ssl_certificate", 1, 1, cf_set_str, PSSL_OFF(cert), "file", "-",
         "a client certificate (PEM) presented to upstreams"),
    PROW("proxy_ssl_certificate_key", 1, 1, cf_set_str, PSSL_OFF(key), "file", "-",
         "the key of proxy_ssl_certificate"),
    PROW("proxy_ssl_session_reuse", 1, 1, cf_set_flag, PSSL_OFF(session_reuse), "on | off", "on",
         "resume TLS sessions with upstreams (the newest session per upstream address)"),
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module ssl_cf_module = {"ssl", ssl_directives};

void ssl_srv_conf_init(struct ssl_srv_conf *sc)
{
    memset(sc, 0, sizeof(*sc));
    sc->prefer = sc->tickets = sc->stapling = sc->stapling_verify = sc->reject_handshake = -1;
    sc->verify_client = -1;
    sc->handshake_timeout_ms = CF_UNSET_MSEC;
}

#define INHERIT(f)                                                                                 \
    do {                                                                                           \
        if (!c->f)                                                                                 \
            c->f = p->f;                                                                           \
    } while (0)
#define INHERIT_INT(f)                                                                             \
    do {                                                                                           \
        if (c->f == -1)                                                                            \
            c->f = p->f;                                                                           \
    } while (0)

void ssl_srv_conf_merge(struct ssl_srv_conf *c, const struct ssl_srv_conf *p)
{
    if (c->tc.ncerts == 0 && c->nkeys == 0) {
        memcpy(c->tc.certs, p->tc.certs, sizeof(c->tc.certs));
        memcpy(c->tc.keys, p->tc.keys, sizeof(c->tc.keys));
        c->tc.ncerts = p->tc.ncerts;
        c->nkeys = p->nkeys;
        c->file = p->file;
        c->line = p->line;
    }
    INHERIT(tc.protocols);
    INHERIT(tc.ciphers);
    INHERIT(tc.ecdh_curve);
    INHERIT(tc.dhparam);
    if (!c->tc.nconf_commands) {
        memcpy(c->tc.conf_commands, p->tc.conf_commands, sizeof(c->tc.conf_commands));
        c->tc.nconf_commands = p->tc.nconf_commands;
    }
    if (!c->cache_set) {
        c->tc.session_cache_name = p->tc.session_cache_name;
        c->tc.session_cache_size = p->tc.session_cache_size;
        c->cache_set = p->cache_set;
    }
    INHERIT(tc.session_timeout_s);
    if (!c->tc.nticket_keys) {
        memcpy(c->tc.ticket_keys, p->tc.ticket_keys, sizeof(c->tc.ticket_keys));
        c->tc.nticket_keys = p->tc.nticket_keys;
    }
    INHERIT(tc.stapling_file);
    INHERIT(tc.trusted_certificate);
    INHERIT(tc.client_certificate);
    INHERIT(tc.verify_depth);
    INHERIT(tc.crl);
    INHERIT_INT(prefer);
    INHERIT_INT(tickets);
    INHERIT_INT(stapling);
    INHERIT_INT(stapling_verify);
    INHERIT_INT(reject_handshake);
    INHERIT(tc.buffer_size);
    INHERIT(tc.password_file);
    INHERIT_INT(verify_client);
    if (c->handshake_timeout_ms == CF_UNSET_MSEC)
        c->handshake_timeout_ms = p->handshake_timeout_ms;
}

/* Defaults for what neither the server nor http level set. */
static void ssl_finish(struct ssl_srv_conf *c, bool http2)
{
    /* on by default (nginx: off): testssl.sh counts a client-chosen order
     * as a finding; every default cipher is ECDHE + AEAD anyway */
    c->tc.prefer_server_ciphers = c->prefer != 0;
    c->tc.session_tickets = c->tickets != 0;
    c->tc.stapling = c->stapling == 1;
    c->tc.stapling_verify = c->stapling_verify == 1;
    c->tc.reject_handshake = c->reject_handshake == 1;
    c->tc.verify_client = c->verify_client < 0 ? TLS_VERIFY_OFF : c->verify_client;
    if (!c->tc.session_timeout_s)
        c->tc.session_timeout_s = 300;
    if (!c->tc.verify_depth)
        c->tc.verify_depth = 1;
    if (c->handshake_timeout_ms == CF_UNSET_MSEC)
        c->handshake_timeout_ms = 60000;
    c->tc.nalpn = 0;
    if (http2)
        c->tc.alpn[c->tc.nalpn++] = "h2";
    c->tc.alpn[c->tc.nalpn++] = "http/1.1";
}

/* SNI: the server of this listener whose server_name matches. */
static struct tls_ctx *sni_pick(void *arg, struct slice name)
{
    const struct listen_set *ls = arg;
    const struct vhost *vh = router_find_vhost(ls->vhosts, name, NULL);
    const struct srv_conf *sc = vh ? vh->conf : NULL;
    return sc ? sc->tls_ctx : NULL;
}

int conf_tls_build(struct snapshot *s, char *err, size_t errlen)
{
    for (size_t i = 0; i < s->nservers; i++) {
        struct srv_conf *sc = s->servers[i];
        struct ssl_srv_conf *c = &sc->ssl;
        bool ssl_listen = false;
        for (size_t k = 0; k < sc->nlistens; k++)
            ssl_listen |= sc->listens[k].ssl;
        ssl_srv_conf_merge(c, &s->http_srv_defaults.ssl);
        ssl_finish(c, sc->http2);
        c->tc.resolver = sc->lc->resolver;
        c->tc.resolver_timeout_ms = sc->lc->resolver_timeout_ms;
        if (c->tc.ncerts != c->nkeys) {
            const char *f = c->file ? c->file : sc->file;
            int line = c->file ? c->line : sc->line;
            snprintf(err, errlen, "%s:%d: %zu \"ssl_certificate\" but %zu \"ssl_certificate_key\"",
                     f, line, c->tc.ncerts, c->nkeys);
            return -1;
        }
        if (!c->tc.ncerts && !c->tc.reject_handshake) {
            if (ssl_listen) {
                snprintf(err, errlen,
                         "%s:%d: no \"ssl_certificate\" is defined for the \"listen ... ssl\" "
                         "directive in this server",
                         sc->file, sc->line);
                return -1;
            }
            continue;
        }
        char msg[512];
        sc->tls_ctx = tls_server_ctx_new(&c->tc, msg, sizeof(msg));
        if (!sc->tls_ctx) {
            snprintf(err, errlen, "%s:%d: %s", c->file ? c->file : sc->file,
                     c->file ? c->line : sc->line, msg);
            return -1;
        }
    }
    for (size_t j = 0; j < s->nlistens; j++) {
        struct listen_set *ls = &s->listens[j];
        if (!ls->ssl)
            continue;
        if (!ls->dflt->tls_ctx) {
            snprintf(err, errlen,
                     "%s:%d: no \"ssl_certificate\" is defined for the default server of %s "
                     "(listen ... ssl)",
                     ls->dflt->file, ls->dflt->line, ls->text);
            return -1;
        }
        tls_ctx_set_sni(ls->dflt->tls_ctx, sni_pick, ls);
    }
    for (size_t i = 0; i < s->nservers; i++)
        for (size_t k = 0; k < s->servers[i]->nlocs; k++)
            if (build_upstream_tls(s->servers[i]->locs[k], err, errlen) < 0)
                return -1;
    return 0;
}

static void free_upstream_tls(struct location *loc)
{
    struct loc_conf *lc = loc->conf;
    struct proxy_ssl *ps = lc ? lc->proxy_ssl_rt : NULL;
    if (ps) {
        for (size_t i = 0; i < PSSL_SLOTS; i++)
            if (ps->slots[i].sess)
                tls_session_free(ps->slots[i].sess);
        pthread_mutex_destroy(&ps->lock);
        tls_ctx_free(ps->ctx);
        free(ps);
        lc->proxy_ssl_rt = NULL;
    }
    for (size_t i = 0; i < loc->nchildren; i++)
        free_upstream_tls(loc->children[i]);
}

void conf_tls_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->nservers; i++) {
        if (s->servers[i]->tls_ctx) {
            tls_ctx_free(s->servers[i]->tls_ctx);
            s->servers[i]->tls_ctx = NULL;
        }
        for (size_t k = 0; k < s->servers[i]->nlocs; k++)
            free_upstream_tls(s->servers[i]->locs[k]);
    }
}

/* ---- upstream TLS ---- */

void proxy_ssl_conf_init(struct proxy_ssl_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->verify = c->server_name = c->session_reuse = c->verify_depth = -1;
}

void proxy_ssl_conf_merge(struct proxy_ssl_conf *c, const struct proxy_ssl_conf *p)
{
    INHERIT_INT(verify);
    INHERIT_INT(server_name);
    INHERIT_INT(session_reuse);
    INHERIT_INT(verify_depth);
    INHERIT(protocols);
    INHERIT(trusted_certificate);
    INHERIT(ciphers);
    INHERIT(name);
    if (!c->cert && !c->key) {
        c->cert = p->cert;
        c->key = p->key;
    }
}

struct tls_ctx *proxy_ssl_ctx(const struct proxy_ssl *ps)
{
    return ps->ctx;
}

/* One client context per location with proxy_pass https://, built here so
 * a bad file fails the load with the location's file:line. */
static int build_upstream_tls(struct location *loc, char *err, size_t errlen)
{
    struct loc_conf *lc = loc->conf;
    if (lc->pass && lc->pass->is_https && !lc->proxy_ssl_rt) {
        const struct proxy_ssl_conf *pc = &lc->proxy_ssl;
        struct tls_client_conf cc = {
            .verify = pc->verify == 1,
            .trusted_certificate = pc->trusted_certificate,
            .verify_depth = pc->verify_depth > 0 ? pc->verify_depth : 1,
            .protocols = pc->protocols,
            .ciphers = pc->ciphers,
            .cert = pc->cert,
            .key = pc->key,
            .session_reuse = pc->session_reuse != 0,
        };
        struct proxy_ssl *ps = calloc(1, sizeof(*ps));
        if (!ps) {
            snprintf(err, errlen, "%s:%d: out of memory", lc->file, lc->line);
            return -1;
        }
        char msg[512];
        ps->ctx = tls_client_ctx_new(&cc, msg, sizeof(msg));
        if (!ps->ctx) {
            free(ps);
            snprintf(err, errlen, "%s:%d: %s", lc->file, lc->line, msg);
            return -1;
        }
        pthread_mutex_init(&ps->lock, NULL);
        lc->proxy_ssl_rt = ps;
    }
    for (size_t i = 0; i < loc->nchildren; i++)
        if (build_upstream_tls(loc->children[i], err, errlen) < 0)
            return -1;
    return 0;
}

struct tls_session *proxy_ssl_session_get(struct proxy_ssl *ps, const struct net_addr *addr)
{
    struct tls_session *s = NULL;
    pthread_mutex_lock(&ps->lock);
    for (size_t i = 0; i < PSSL_SLOTS; i++)
        if (ps->slots[i].sess && net_addr_equal(&ps->slots[i].addr, addr)) {
            s = tls_session_dup(ps->slots[i].sess);
            break;
        }
    pthread_mutex_unlock(&ps->lock);
    return s;
}

void proxy_ssl_session_put(struct proxy_ssl *ps, const struct net_addr *addr, struct tls_session *s)
{
    struct tls_session *old = NULL;
    pthread_mutex_lock(&ps->lock);
    size_t slot = PSSL_SLOTS;
    for (size_t i = 0; i < PSSL_SLOTS; i++) {
        if (ps->slots[i].sess && net_addr_equal(&ps->slots[i].addr, addr)) {
            slot = i;
            break;
        }
        if (!ps->slots[i].sess && slot == PSSL_SLOTS)
            slot = i;
    }
    if (slot == PSSL_SLOTS) /* full: replace in turn */
        slot = ps->next++ % PSSL_SLOTS;
    old = ps->slots[slot].sess;
    ps->slots[slot].addr = *addr;
    ps->slots[slot].sess = s;
    pthread_mutex_unlock(&ps->lock);
    if (old)
        tls_session_free(old);
}
