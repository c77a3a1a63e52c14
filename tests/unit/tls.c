/* Unit tests for src/tls: real handshakes over non-blocking socketpairs.
 * Certificates are generated once per run (openssl CLI) into a temp dir
 * named by $PORTICO_TLS_TEST_DIR; clients are either raw OpenSSL (to pick
 * versions and signature algorithms) or tls_client_ctx_new() ones. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls.h"

/* ---- fixtures ---- */

static const char gen_script[] =
    "set -e; cd \"$D\"\n"
    "q() { \"$@\" >/dev/null 2>&1; }\n"
    "EC='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'\n"
    "q openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa.crt -days 2 -subj "
    "/CN=rsa.test\n"
    "q openssl req -x509 $EC -keyout ec.key -out ec.crt -days 2 -subj /CN=ec.test\n"
    "for ca in ca ca2; do\n"
    "  q openssl req -x509 $EC -keyout $ca.key -out $ca.crt -days 2 -subj \"/CN=Test $ca\" "
    "-addext basicConstraints=critical,CA:TRUE -addext "
    "keyUsage=keyCertSign,cRLSign,digitalSignature\n"
    "done\n"
    "printf 'subjectAltName=DNS:srv.test\\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:%s\\n' "
    "\"$OCSP_PORT\" > srv.ext\n"
    "printf 'extendedKeyUsage=clientAuth\\n' > cli.ext\n"
    "q openssl req $EC -keyout srv.key -out srv.csr -subj /CN=srv.test\n"
    "q openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -set_serial 0x1001 -out srv.crt "
    "-days 2 -extfile srv.ext\n"
    "q openssl req $EC -keyout cli.key -out cli.csr -subj /CN=client1/O=Portico\n"
    "q openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -set_serial 0x2001 -out cli.crt "
    "-days 2 -extfile cli.ext\n"
    "q openssl req $EC -keyout cli2.key -out cli2.csr -subj /CN=intruder\n"
    "q openssl x509 -req -in cli2.csr -CA ca2.crt -CAkey ca2.key -set_serial 0x3001 "
    "-out cli2.crt -days 2 -extfile cli.ext\n"
    "head -c 80 /dev/urandom > tkA.key; head -c 80 /dev/urandom > tkB.key\n"
    "head -c 48 /dev/urandom > tk48.key; head -c 50 /dev/urandom > tkbad.key\n"
    /* an OCSP index and a response for srv.crt, for ssl_stapling_file */
    "exp=$(date -u -d '+2 days' +%y%m%d%H%M%SZ)\n"
    "printf 'V\\t%s\\t\\t1001\\tunknown\\t/CN=srv.test\\n' \"$exp\" > index.txt\n"
    "q openssl ocsp -issuer ca.crt -cert srv.crt -no_nonce -reqout req.der\n"
    "q openssl ocsp -index index.txt -rsigner ca.crt -rkey ca.key -CA ca.crt -reqin req.der "
    "-respout resp.der -ndays 1\n";

static const char *dir(void)
{
    return getenv("PORTICO_TLS_TEST_DIR");
}

static int ocsp_port(void)
{
    const char *p = getenv("PORTICO_TLS_OCSP_PORT");
    return p ? atoi(p) : 0;
}

/* A port for the OCSP responder, baked into the certificate's OCSP URL:
 * below the kernel's ephemeral range (32768+, where busy machines hand out
 * client ports) and free on every address right now. The old choice,
 * 20000 + pid % 30000, was often inside the ephemeral range, and the
 * responder then failed to bind under load. */
static int pick_ocsp_port(void)
{
    for (int k = 0; k < 2000; k++) {
        int p = 10000 + (int)((getpid() * 7u + (unsigned)k * 7919u) % 22000u);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            break;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
        int ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        close(fd);
        if (ok)
            return p;
    }
    return 20000 + (int)(getpid() % 10000);
}

static void generate(void)
{
    char tmpl[] = "/tmp/portico-tls-XXXXXX";
    if (!mkdtemp(tmpl))
        abort();
    char port[16];
    snprintf(port, sizeof(port), "%d", pick_ocsp_port());
    setenv("PORTICO_TLS_TEST_DIR", tmpl, 1);
    setenv("PORTICO_TLS_OCSP_PORT", port, 1);
    setenv("D", tmpl, 1);
    setenv("OCSP_PORT", port, 1);
    FILE *sh = popen("/bin/bash", "w");
    fputs(gen_script, sh);
    if (pclose(sh) != 0)
        fprintf(stderr, "tls tests: certificate generation failed in %s\n", tmpl);
}

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    if (!dir())
        generate();
}

ReportHook(POST_ALL)(struct criterion_global_stats *st)
{
    char cmd[256];
    if (dir() && strncmp(dir(), "/tmp/portico-tls-", 17) == 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir());
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", dir());
    }
}

static const char *path(const char *name)
{
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    if (!dir())
        generate();
    snprintf(b, 512, "%s/%s", dir(), name);
    return b;
}

static struct tls_server_conf base_conf(const char *cert, const char *key)
{
    struct tls_server_conf c = {0};
    c.certs[0] = path(cert);
    c.keys[0] = path(key);
    c.ncerts = 1;
    c.session_timeout_s = 300;
    c.session_tickets = true;
    return c;
}

static struct tls_ctx *server(const struct tls_server_conf *c)
{
    char err[512] = "";
    struct tls_ctx *x = tls_server_ctx_new(c, err, sizeof(err));
    cr_assert_not_null(x, "server ctx: %s", err);
    return x;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void pair(int sv[2], int sndbuf)
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    nonblock(sv[0]);
    nonblock(sv[1]);
    if (sndbuf) {
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
    }
}

/* A raw OpenSSL client with versions [min, max] (0 = library default). */
static SSL_CTX *raw_ctx(int min, int max)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    cr_assert_not_null(c);
    SSL_CTX_set_min_proto_version(c, min);
    SSL_CTX_set_max_proto_version(c, max);
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    return c;
}

/* One end: ours (t) or a raw client (ssl). */
struct ep {
    struct tls_conn *t;
    SSL *ssl;
    bool done;
    int rc;
};

/* 1 done, 0 again, -1 failed */
static int step(struct ep *e)
{
    if (e->done)
        return 1;
    if (e->t) {
        e->rc = tls_handshake(e->t);
        if (e->rc == TLS_OK)
            return e->done = true, 1;
        return e->rc == TLS_WANT_READ || e->rc == TLS_WANT_WRITE ? 0 : -1;
    }
    int r = SSL_do_handshake(e->ssl);
    if (r == 1)
        return e->done = true, 1;
    int err = SSL_get_error(e->ssl, r);
    e->rc = err;
    ERR_clear_error();
    return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

/* Both handshakes to completion: 0, or -1 if either side failed. */
static int pump(struct ep *s, struct ep *c)
{
    for (int i = 0; i < 2000; i++) {
        int a = step(s), b = step(c);
        if (a < 0 || b < 0)
            return -1;
        if (a == 1 && b == 1)
            return 0;
    }
    return -1;
}

struct session {
    int sv[2];
    struct ep s, c;
};

static void open_raw(struct session *x, struct tls_ctx *srv, SSL_CTX *cli, const char *sni)
{
    pair(x->sv, 0);
    x->s = (struct ep){.t = tls_conn_server(srv, x->sv[0])};
    x->c = (struct ep){.ssl = SSL_new(cli)};
    cr_assert_not_null(x->s.t);
    SSL_set_fd(x->c.ssl, x->sv[1]);
    SSL_set_connect_state(x->c.ssl);
    if (sni)
        SSL_set_tlsext_host_name(x->c.ssl, sni);
}

static void open_ours(struct session *x, struct tls_ctx *srv, struct tls_ctx *cli, const char *sni)
{
    pair(x->sv, 0);
    x->s = (struct ep){.t = tls_conn_server(srv, x->sv[0])};
    x->c = (struct ep){.t = tls_conn_client(cli, x->sv[1], sni)};
    cr_assert_not_null(x->s.t);
    cr_assert_not_null(x->c.t);
}

static void close_session(struct session *x)
{
    tls_conn_free(x->s.t);
    if (x->c.t)
        tls_conn_free(x->c.t);
    if (x->c.ssl) {
        SSL_shutdown(x->c.ssl);
        SSL_free(x->c.ssl);
    }
    close(x->sv[0]);
    close(x->sv[1]);
}

/* Server sends "hi", the raw client reads it: processes TLS 1.3 tickets. */
static void ping(struct session *x)
{
    struct iovec iov = {(void *)"hi", 2};
    cr_assert_eq(tls_writev(x->s.t, &iov, 1), 2);
    char buf[8];
    int n = -1;
    for (int i = 0; i < 100 && n <= 0; i++) {
        if (x->c.ssl)
            n = SSL_read(x->c.ssl, buf, sizeof(buf));
        else
            n = (int)tls_read(x->c.t, buf, sizeof(buf));
    }
    cr_assert_eq(n, 2);
    cr_assert(memcmp(buf, "hi", 2) == 0);
}

static char *peer_cn(SSL *ssl, char *buf, size_t len)
{
    X509 *x = SSL_get0_peer_certificate(ssl);
    buf[0] = '\0';
    if (x)
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, (int)len);
    return buf;
}

/* ---- protocols ---- */

Test(tls, tls13_and_tls12_succeed)
{
    struct tls_server_conf c = base_conf("rsa.crt", "rsa.key");
    struct tls_ctx *srv = server(&c);
    static const int vers[] = {TLS1_3_VERSION, TLS1_2_VERSION};
    static const char *names[] = {"TLSv1.3", "TLSv1.2"};
    for (int i = 0; i < 2; i++) {
        SSL_CTX *cli = raw_ctx(vers[i], vers[i]);
        struct session x;
        open_raw(&x, srv, cli, NULL);
        cr_assert_eq(pump(&x.s, &x.c), 0, "%s: %s", names[i], tls_conn_error(x.s.t));
        cr_assert_str_eq(tls_conn_protocol(x.s.t), names[i]);
        cr_assert_neq(tls_conn_cipher(x.s.t)[0], '\0');
        cr_assert_not(tls_conn_reused(x.s.t));
        cr_assert_str_eq(tls_conn_server_name(x.s.t), "");
        if (i == 1) /* the default TLS 1.2 list is ECDHE with AEAD only */
            cr_assert(strstr(tls_conn_cipher(x.s.t), "ECDHE") != NULL);
        ping(&x);
        close_session(&x);
        SSL_CTX_free(cli);
    }
    tls_ctx_free(srv);
}

Test(tls, tls11_refused_by_default)
{
    struct tls_server_conf c = base_conf("rsa.crt", "rsa.key");
    struct tls_ctx *srv = server(&c);
    SSL_CTX *cli = raw_ctx(TLS1_VERSION, TLS1_1_VERSION);
    SSL_CTX_set_cipher_list(cli, "DEFAULT:@SECLEVEL=0");
    struct session x;
    open_raw(&x, srv, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), -1);
    cr_assert(x.s.rc == TLS_ERROR, "server rc %d", x.s.rc);
    cr_assert(strstr(tls_conn_error(x.s.t), "protocol") != NULL, "%s", tls_conn_error(x.s.t));
    close_session(&x);
    SSL_CTX_free(cli);
    tls_ctx_free(srv);
}

Test(tls, tls12_only_server_refuses_tls13_only_client)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    c.protocols = TLS_PROTO_TLSv1_2;
    struct tls_ctx *srv = server(&c);
    SSL_CTX *cli = raw_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    struct session x;
    open_raw(&x, srv, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), -1);
    close_session(&x);
    SSL_CTX_free(cli);
    tls_ctx_free(srv);
}

/* ---- certificates ---- */

Test(tls, ecdsa_or_rsa_by_client_sigalgs)
{
    struct tls_server_conf c = base_conf("rsa.crt", "rsa.key");
    c.certs[1] = path("ec.crt");
    c.keys[1] = path("ec.key");
    c.ncerts = 2;
    struct tls_ctx *srv = server(&c);
    static const char *sigalgs[] = {"ecdsa_secp256r1_sha256", "rsa_pss_rsae_sha256:RSA+SHA256"};
    static const char *want[] = {"ec.test", "rsa.test"};
    for (int v = 0; v < 2; v++) {
        int ver = v ? TLS1_2_VERSION : TLS1_3_VERSION;
        for (int i = 0; i < 2; i++) {
            SSL_CTX *cli = raw_ctx(ver, ver);
            cr_assert_eq(SSL_CTX_set1_sigalgs_list(cli, sigalgs[i]), 1);
            struct session x;
            open_raw(&x, srv, cli, NULL);
            cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.s.t));
            char cn[64];
            cr_assert_str_eq(peer_cn(x.c.ssl, cn, sizeof(cn)), want[i]);
            close_session(&x);
            SSL_CTX_free(cli);
        }
    }
    tls_ctx_free(srv);
}

Test(tls, key_mismatch_is_refused_with_file_name)
{
    struct tls_server_conf c = base_conf("ec.crt", "ca.key"); /* both EC, different keys */
    char err[512] = "";
    cr_assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
    char want[600];
    snprintf(want, sizeof(want), "SSL_CTX_use_PrivateKey(\"%s\") failed (key values mismatch)",
             path("ca.key"));
    cr_assert_str_eq(err, want);

    c = base_conf("rsa.crt", "ec.key"); /* different types */
    cr_assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
    cr_assert(strstr(err, "SSL_CTX_use_PrivateKey(\"") == err, "%s", err);

    c = base_conf("missing.crt", "ec.key");
    cr_assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
    cr_assert(strstr(err, "missing.crt") != NULL, "%s", err);

    c = base_conf("ec.crt", "ec.key");
    c.ciphers = "NOT-A-CIPHER";
    cr_assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
    cr_assert(strstr(err, "SSL_CTX_set_cipher_list(\"NOT-A-CIPHER\") failed") == err, "%s", err);

    c = base_conf("ec.crt", "ec.key");
    c.conf_commands[0][0] = "NoSuchCommand";
    c.conf_commands[0][1] = "x";
    c.nconf_commands = 1;
    cr_assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
    cr_assert(strstr(err, "SSL_CONF_cmd(\"NoSuchCommand\"") == err, "%s", err);

    c = base_conf("ec.crt", "ec.key");
    c.ticket_keys[0] = path("tkbad.key");
    c.nticket_keys = 1;
    cr_assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
    cr_assert(strstr(err, "must be 48 or 80 bytes") != NULL, "%s", err);
}

Test(tls, conf_commands_and_curves_apply)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    c.ecdh_curve = "prime256v1";
    c.conf_commands[0][0] = "Ciphersuites";
    c.conf_commands[0][1] = "TLS_CHACHA20_POLY1305_SHA256";
    c.nconf_commands = 1;
    c.prefer_server_ciphers = true;
    struct tls_ctx *srv = server(&c);
    SSL_CTX *cli = raw_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    struct session x;
    open_raw(&x, srv, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.s.t));
    cr_assert_str_eq(tls_conn_cipher(x.s.t), "TLS_CHACHA20_POLY1305_SHA256");
    close_session(&x);
    /* a client without the server's only group fails */
    SSL_CTX_set1_groups_list(cli, "X25519");
    open_raw(&x, srv, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), -1);
    close_session(&x);
    SSL_CTX_free(cli);
    tls_ctx_free(srv);
}

/* ---- SNI, ALPN ---- */

static struct tls_ctx *sni_other;
static struct tls_ctx *pick(void *arg, struct slice name)
{
    ++*(int *)arg;
    return slice_eq(name, SLICE_LIT("ec.test")) ? sni_other : NULL;
}

Test(tls, sni_switches_context)
{
    struct tls_server_conf c = base_conf("rsa.crt", "rsa.key");
    struct tls_ctx *dflt = server(&c);
    c = base_conf("ec.crt", "ec.key");
    sni_other = server(&c);
    int calls = 0;
    tls_ctx_set_sni(dflt, pick, &calls);
    static const char *sni[] = {"ec.test", "unknown.test", NULL};
    static const char *want[] = {"ec.test", "rsa.test", "rsa.test"};
    for (int i = 0; i < 3; i++) {
        SSL_CTX *cli = raw_ctx(0, 0);
        struct session x;
        open_raw(&x, dflt, cli, sni[i]);
        cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.s.t));
        char cn[64];
        cr_assert_str_eq(peer_cn(x.c.ssl, cn, sizeof(cn)), want[i]);
        cr_assert_str_eq(tls_conn_server_name(x.s.t), sni[i] ? sni[i] : "");
        close_session(&x);
        SSL_CTX_free(cli);
    }
    cr_assert_eq(calls, 3);
    tls_ctx_free(sni_other);
    tls_ctx_free(dflt);
}

Test(tls, alpn_in_server_preference_order)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    c.alpn[0] = "h2";
    c.alpn[1] = "http/1.1";
    c.nalpn = 2;
    struct tls_ctx *srv = server(&c);
    static const unsigned char both[] = "\x08http/1.1\x02h2";
    static const unsigned char h1[] = "\x08http/1.1";
    static const unsigned char bogus[] = "\x03xyz";
    struct {
        const unsigned char *offer;
        size_t len;
        const char *want;
    } cases[] = {
        {both, sizeof(both) - 1, "h2"},
        {h1, sizeof(h1) - 1, "http/1.1"},
        {NULL, 0, ""},
    };
    for (int i = 0; i < 3; i++) {
        SSL_CTX *cli = raw_ctx(0, 0);
        if (cases[i].offer)
            SSL_CTX_set_alpn_protos(cli, cases[i].offer, (unsigned)cases[i].len);
        struct session x;
        open_raw(&x, srv, cli, NULL);
        cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.s.t));
        struct slice a = tls_conn_alpn(x.s.t);
        cr_assert(a.len == strlen(cases[i].want) &&
                      (a.len == 0 || memcmp(a.p, cases[i].want, a.len) == 0),
                  "case %d: %.*s", i, (int)a.len, a.p);
        close_session(&x);
        SSL_CTX_free(cli);
    }
    /* no common protocol: no_application_protocol, as nginx */
    SSL_CTX *cli = raw_ctx(0, 0);
    SSL_CTX_set_alpn_protos(cli, bogus, sizeof(bogus) - 1);
    struct session x;
    open_raw(&x, srv, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), -1);
    close_session(&x);
    SSL_CTX_free(cli);
    tls_ctx_free(srv);
}

/* ---- resumption ---- */

/* Full handshake, then a second one offering the first one's session. */
static bool resumes(struct tls_ctx *first, struct tls_ctx *second, SSL_CTX *cli)
{
    struct session x;
    open_raw(&x, first, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.s.t));
    cr_assert_not(tls_conn_reused(x.s.t));
    ping(&x);
    SSL_SESSION *sess = SSL_get1_session(x.c.ssl);
    cr_assert_not_null(sess);
    close_session(&x);

    open_raw(&x, second, cli, NULL);
    SSL_set_session(x.c.ssl, sess);
    cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.s.t));
    bool r = tls_conn_reused(x.s.t);
    cr_assert_eq(r, SSL_session_reused(x.c.ssl) == 1);
    ping(&x);
    close_session(&x);
    SSL_SESSION_free(sess);
    return r;
}

Test(tls, resumption_by_shared_cache)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    c.session_cache_name = "unit";
    c.session_cache_size = 1 << 20;
    c.session_tickets = false;
    struct tls_ctx *a = server(&c);
    struct tls_ctx *b = server(&c); /* same zone name: another server block or a reload */
    SSL_CTX *cli12 = raw_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    SSL_CTX *cli13 = raw_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    cr_assert(resumes(a, a, cli12));
    cr_assert(resumes(a, b, cli12));
    cr_assert(resumes(a, a, cli13), "TLS 1.3 stateful tickets through the cache");
    /* no cache, no tickets: nothing resumes */
    c.session_cache_name = NULL;
    struct tls_ctx *none = server(&c);
    cr_assert_not(resumes(none, none, cli12));
    tls_ctx_free(none);
    SSL_CTX_free(cli12);
    SSL_CTX_free(cli13);
    tls_ctx_free(a);
    tls_ctx_free(b);
}

Test(tls, resumption_by_tickets)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    struct tls_ctx *srv = server(&c);
    SSL_CTX *cli13 = raw_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    SSL_CTX *cli12 = raw_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    cr_assert(resumes(srv, srv, cli13));
    cr_assert(resumes(srv, srv, cli12));
    /* another context has other random keys */
    struct tls_ctx *other = server(&c);
    cr_assert_not(resumes(srv, other, cli13));
    tls_ctx_free(other);
    SSL_CTX_free(cli12);
    SSL_CTX_free(cli13);
    tls_ctx_free(srv);
}

Test(tls, ticket_key_files_first_encrypts_all_decrypt)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    c.ticket_keys[0] = path("tkA.key");
    c.nticket_keys = 1;
    struct tls_ctx *a = server(&c);
    c.ticket_keys[0] = path("tkB.key");
    c.ticket_keys[1] = path("tkA.key");
    c.nticket_keys = 2;
    struct tls_ctx *ba = server(&c);
    c.nticket_keys = 1;
    struct tls_ctx *b = server(&c);
    c.ticket_keys[0] = path("tk48.key");
    struct tls_ctx *k48 = server(&c);
    SSL_CTX *cli = raw_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    SSL_CTX *cli12 = raw_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    cr_assert(resumes(a, ba, cli), "ticket from A resumes on [B, A]");
    cr_assert(resumes(a, ba, cli12));
    cr_assert_not(resumes(a, b, cli), "B alone does not know A");
    cr_assert_not(resumes(ba, a, cli), "[B, A] encrypts with B");
    cr_assert(resumes(k48, k48, cli), "48-byte keys");
    SSL_CTX_free(cli);
    SSL_CTX_free(cli12);
    tls_ctx_free(a);
    tls_ctx_free(ba);
    tls_ctx_free(b);
    tls_ctx_free(k48);
}

Test(tls, rotating_ticket_keys_keep_old_tickets_within_window)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    struct tls_ctx *srv = server(&c);
    SSL_CTX *cli = raw_ctx(TLS1_3_VERSION, TLS1_3_VERSION);

    struct session x;
    open_raw(&x, srv, cli, NULL);
    cr_assert_eq(pump(&x.s, &x.c), 0);
    ping(&x);
    SSL_SESSION *sess = SSL_get1_session(x.c.ssl);
    unsigned char der[8192], *w = der;
    long der_len = i2d_SSL_SESSION(sess, &w);
    cr_assert_gt(der_len, 0);
    close_session(&x);

    for (int rot = 0; rot <= 3; rot++) {
        if (rot)
            tls_ctx_rotate_ticket_keys(srv);
        open_raw(&x, srv, cli, NULL);
        /* OpenSSL clients use a TLS 1.3 session once: present a fresh copy
         * of the same old ticket each time */
        const unsigned char *p = der;
        SSL_SESSION *copy = d2i_SSL_SESSION(NULL, &p, der_len);
        SSL_set_session(x.c.ssl, copy);
        SSL_SESSION_free(copy);
        cr_assert_eq(pump(&x.s, &x.c), 0);
        /* the current key and the two previous ones decrypt */
        cr_assert_eq(tls_conn_reused(x.s.t), rot <= 2, "after %d rotations", rot);
        close_session(&x);
    }
    SSL_SESSION_free(sess);
    SSL_CTX_free(cli);
    tls_ctx_free(srv);
}

/* ---- client certificates ---- */

static struct tls_ctx *mtls_server(int mode)
{
    struct tls_server_conf c = base_conf("srv.crt", "srv.key");
    c.client_certificate = path("ca.crt");
    c.verify_client = mode;
    c.verify_depth = 2;
    c.session_cache_name = "mtls";
    c.session_cache_size = 1 << 20;
    return server(&c);
}

static struct tls_ctx *client(const char *cert, const char *key, bool verify, const char *ca)
{
    struct tls_client_conf cc = {0};
    cc.cert = cert ? path(cert) : NULL;
    cc.key = key ? path(key) : NULL;
    cc.verify = verify;
    cc.trusted_certificate = ca ? path(ca) : NULL;
    cc.verify_depth = 2;
    cc.session_reuse = true;
    char err[512] = "";
    struct tls_ctx *x = tls_client_ctx_new(&cc, err, sizeof(err));
    cr_assert_not_null(x, "client ctx: %s", err);
    return x;
}

struct mtls_result {
    const char *refusal;
    char verify[128], dn[256], fp[64];
};

static struct mtls_result mtls(int mode, const char *cert, const char *key)
{
    struct tls_ctx *srv = mtls_server(mode);
    struct tls_ctx *cli = client(cert, key, false, NULL);
    struct session x;
    struct mtls_result r;
    open_ours(&x, srv, cli, "srv.test");
    cr_assert_eq(pump(&x.s, &x.c), 0, "server: %s client: %s", tls_conn_error(x.s.t),
                 tls_conn_error(x.c.t));
    r.refusal = tls_conn_verify_refusal(x.s.t);
    snprintf(r.verify, sizeof(r.verify), "%s", tls_conn_client_verify(x.s.t));
    tls_conn_client_s_dn(x.s.t, r.dn, sizeof(r.dn));
    tls_conn_client_fingerprint(x.s.t, r.fp, sizeof(r.fp));
    close_session(&x);
    tls_ctx_free(cli);
    tls_ctx_free(srv);
    return r;
}

static void file_sha1(const char *file, char *out)
{
    FILE *f = fopen(path(file), "r");
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    unsigned char md[20];
    unsigned n;
    X509_digest(x, EVP_sha1(), md, &n);
    for (unsigned i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    X509_free(x);
}

Test(tls, mtls_verify_on)
{
    struct mtls_result r = mtls(TLS_VERIFY_ON, NULL, NULL);
    cr_assert_str_eq(r.refusal, "No required SSL certificate was sent");
    cr_assert_str_eq(r.verify, "NONE");
    cr_assert_str_eq(r.dn, "");

    r = mtls(TLS_VERIFY_ON, "cli.crt", "cli.key");
    cr_assert_null(r.refusal);
    cr_assert_str_eq(r.verify, "SUCCESS");
    cr_assert_str_eq(r.dn, "O=Portico,CN=client1");
    char fp[41];
    file_sha1("cli.crt", fp);
    cr_assert_str_eq(r.fp, fp);

    r = mtls(TLS_VERIFY_ON, "cli2.crt", "cli2.key");
    cr_assert_str_eq(r.refusal, "The SSL certificate error");
    cr_assert(strncmp(r.verify, "FAILED:", 7) == 0, "%s", r.verify);
    cr_assert_str_eq(r.dn, "CN=intruder");
}

Test(tls, mtls_optional_modes)
{
    struct mtls_result r = mtls(TLS_VERIFY_OPTIONAL, NULL, NULL);
    cr_assert_null(r.refusal);
    cr_assert_str_eq(r.verify, "NONE");

    r = mtls(TLS_VERIFY_OPTIONAL, "cli2.crt", "cli2.key");
    cr_assert_str_eq(r.refusal, "The SSL certificate error");

    r = mtls(TLS_VERIFY_OPTIONAL_NO_CA, "cli2.crt", "cli2.key");
    cr_assert_null(r.refusal);
    cr_assert(strncmp(r.verify, "FAILED:", 7) == 0, "%s", r.verify);

    r = mtls(TLS_VERIFY_OPTIONAL, "cli.crt", "cli.key");
    cr_assert_null(r.refusal);
    cr_assert_str_eq(r.verify, "SUCCESS");
}

/* ---- upstream (client) contexts ---- */

Test(tls, upstream_verify_and_session_reuse)
{
    struct tls_server_conf c = base_conf("srv.crt", "srv.key");
    struct tls_ctx *srv = server(&c);

    struct tls_ctx *good = client(NULL, NULL, true, "ca.crt");
    struct session x;
    open_ours(&x, srv, good, "srv.test");
    cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.c.t));
    cr_assert_str_eq(tls_conn_server_name(x.s.t), "srv.test");
    ping(&x);
    struct tls_session *sess = tls_conn_session_get(x.c.t);
    cr_assert_not_null(sess);
    close_session(&x);

    open_ours(&x, srv, good, "srv.test");
    cr_assert_eq(tls_conn_session_set(x.c.t, sess), 0);
    cr_assert_eq(pump(&x.s, &x.c), 0, "%s", tls_conn_error(x.c.t));
    cr_assert(tls_conn_reused(x.c.t));
    cr_assert(tls_conn_reused(x.s.t));
    close_session(&x);
    tls_session_free(sess);

    /* wrong name */
    open_ours(&x, srv, good, "other.test");
    cr_assert_eq(pump(&x.s, &x.c), -1);
    cr_assert(strstr(tls_conn_error(x.c.t), "certificate verify failed") != NULL, "%s",
              tls_conn_error(x.c.t));
    close_session(&x);

    /* wrong CA: a clear reason for the 502 log line */
    struct tls_ctx *bad = client(NULL, NULL, true, "ca2.crt");
    open_ours(&x, srv, bad, "srv.test");
    cr_assert_eq(pump(&x.s, &x.c), -1);
    cr_assert(strstr(tls_conn_error(x.c.t), "certificate verify failed: unable to get local "
                                            "issuer certificate") != NULL,
              "%s", tls_conn_error(x.c.t));
    for (int i = 0; i < 10 && step(&x.s) == 0; i++)
        ;
    cr_assert_str_eq(tls_conn_error(x.s.t), "tlsv1 alert unknown ca");
    close_session(&x);
    tls_ctx_free(bad);
    tls_ctx_free(good);
    tls_ctx_free(srv);
}

/* ---- plain HTTP ---- */

Test(tls, plain_http_detected_without_consuming)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    struct tls_ctx *srv = server(&c);
    int sv[2];
    pair(sv, 0);
    struct tls_conn *t = tls_conn_server(srv, sv[0]);
    cr_assert_eq(tls_handshake(t), TLS_WANT_READ);
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(write(sv[1], req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
    cr_assert_eq(tls_handshake(t), TLS_PLAINTEXT);
    cr_assert_str_eq(tls_conn_error(t), "plain HTTP request sent to HTTPS port");
    char buf[64];
    cr_assert_eq(read(sv[0], buf, sizeof(buf)), (ssize_t)sizeof(req) - 1);
    cr_assert(memcmp(buf, "GET / ", 6) == 0);
    tls_conn_free(t);
    /* EOF before anything */
    t = tls_conn_server(srv, sv[0]);
    close(sv[1]);
    cr_assert_eq(tls_handshake(t), TLS_CLOSED);
    tls_conn_free(t);
    close(sv[0]);
    tls_ctx_free(srv);
}

/* ---- writev ---- */

/* Server writes the iovs (advancing past what was taken), the client reads
 * everything; returns the bytes received. */
static size_t transfer(struct session *x, struct iovec *iov, int n, unsigned char *out, size_t cap,
                       int *wants)
{
    size_t got = 0;
    int i = 0;
    *wants = 0;
    for (int guard = 0; guard < 200000; guard++) {
        while (i < n && iov[i].iov_len == 0)
            i++;
        if (i < n) {
            ssize_t w = tls_writev(x->s.t, iov + i, n - i);
            if (w > 0) {
                size_t left = (size_t)w;
                while (left) {
                    size_t k = left < iov[i].iov_len ? left : iov[i].iov_len;
                    iov[i].iov_base = (char *)iov[i].iov_base + k;
                    iov[i].iov_len -= k;
                    left -= k;
                    if (iov[i].iov_len == 0)
                        i++;
                }
            } else {
                cr_assert(w == TLS_WANT_WRITE || w == TLS_WANT_READ, "writev: %zd %s", w,
                          tls_conn_error(x->s.t));
                (*wants)++;
            }
        }
        int r = SSL_read(x->c.ssl, out + got, (int)(cap - got > 65536 ? 65536 : cap - got));
        if (r > 0)
            got += (size_t)r;
        else
            ERR_clear_error();
        if (i >= n && got == cap)
            break;
    }
    return got;
}

static void writev_case(int nsmall, size_t big, int sndbuf)
{
    struct tls_server_conf c = base_conf("ec.crt", "ec.key");
    struct tls_ctx *srv = server(&c);
    SSL_CTX *cli = raw_ctx(0, 0);
    struct session x;
    open_raw(&x, srv, cli, NULL);
    if (sndbuf) {
        setsockopt(x.sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        setsockopt(x.sv[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
    }
    cr_assert_eq(pump(&x.s, &x.c), 0);

    size_t total = big;
    for (int i = 0; i < nsmall; i++)
        total += 1 + (size_t)(i * 7) % 97;
    unsigned char *src = malloc(total), *dst = malloc(total);
    for (size_t i = 0; i < total; i++)
        src[i] = (unsigned char)(i * 2654435761u >> 13);
    int n = nsmall + (big ? 1 : 0);
    struct iovec *iov = calloc((size_t)n + 1, sizeof(*iov));
    size_t off = 0;
    for (int i = 0; i < nsmall; i++) {
        size_t l = 1 + (size_t)(i * 7) % 97;
        iov[i] = (struct iovec){src + off, l};
        off += l;
    }
    if (big)
        iov[nsmall] = (struct iovec){src + off, big};
    int wants;
    size_t got = transfer(&x, iov, n, dst, total, &wants);
    cr_assert_eq(got, total);
    cr_assert(memcmp(src, dst, total) == 0, "data differs");
    if (total > (1 << 20))
        cr_assert_gt(wants, 0, "expected the retry path to be exercised");
    free(iov);
    free(src);
    free(dst);
    close_session(&x);
    SSL_CTX_free(cli);
    tls_ctx_free(srv);
}

Test(tls, writev_many_small_iovecs)
{
    writev_case(1000, 0, 0);
    writev_case(3000, 0, 4096); /* small socket buffers: retries on coalesced records */
}

Test(tls, writev_one_mebibyte)
{
    writev_case(0, 1 << 20, 0);
    writev_case(5, (1 << 20) + 3, 8192); /* small head pieces then a big one, retries */
}

/* ---- OCSP stapling ---- */

static int stapled(struct tls_ctx *srv, unsigned char *out, size_t cap)
{
    SSL_CTX *cli = raw_ctx(0, 0);
    struct session x;
    open_raw(&x, srv, cli, NULL);
    SSL_set_tlsext_status_type(x.c.ssl, TLSEXT_STATUSTYPE_ocsp);
    cr_assert_eq(pump(&x.s, &x.c), 0);
    const unsigned char *p;
    long n = SSL_get_tlsext_status_ocsp_resp(x.c.ssl, &p);
    if (n > 0 && (size_t)n <= cap)
        memcpy(out, p, (size_t)n);
    close_session(&x);
    SSL_CTX_free(cli);
    return (int)n;
}

static long file_bytes(const char *name, unsigned char *out, size_t cap)
{
    FILE *f = fopen(path(name), "rb");
    cr_assert_not_null(f);
    long n = (long)fread(out, 1, cap, f);
    fclose(f);
    return n;
}

Test(tls, stapling_file)
{
    struct tls_server_conf c = base_conf("srv.crt", "srv.key");
    c.stapling = true;
    c.stapling_file = path("resp.der");
    struct tls_ctx *srv = server(&c);
    cr_assert(tls_ctx_stapling_ready(srv));
    unsigned char want[8192], got[8192];
    long n = file_bytes("resp.der", want, sizeof(want));
    cr_assert_gt(n, 0);
    cr_assert_eq(stapled(srv, got, sizeof(got)), n);
    cr_assert(memcmp(want, got, (size_t)n) == 0);
    tls_ctx_free(srv);
}

static bool responder_ready(void)
{
    char buf[512] = "";
    FILE *f = fopen(path("ocsp.log"), "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, "ACCEPT") != NULL;
}

Test(tls, stapling_fetched_from_responder)
{
    int port = ocsp_port();
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && exec openssl ocsp -index index.txt -port %d -rsigner ca.crt "
             "-rkey ca.key -CA ca.crt -nrequest 5 -ndays 1 >ocsp.log 2>&1",
             dir(), port);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    /* readiness from its log: a probing connect would wedge the responder */
    for (int i = 0; i < 1000 && !responder_ready(); i++)
        usleep(10000);
    struct tls_server_conf c = base_conf("srv.crt", "srv.key");
    c.stapling = true;
    c.stapling_verify = true;
    c.trusted_certificate = path("ca.crt");
    struct tls_ctx *srv = server(&c);
    /* generous under load: a first fetch that fails is retried after 5 s */
    for (int i = 0; i < 2000 && !tls_ctx_stapling_ready(srv); i++)
        usleep(10000);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    cr_assert(tls_ctx_stapling_ready(srv), "no OCSP response fetched from 127.0.0.1:%d", port);
    unsigned char got[8192];
    int n = stapled(srv, got, sizeof(got));
    cr_assert_gt(n, 0);
    const unsigned char *p = got;
    OCSP_RESPONSE *rsp = d2i_OCSP_RESPONSE(NULL, &p, n);
    cr_assert_not_null(rsp);
    cr_assert_eq(OCSP_response_status(rsp), OCSP_RESPONSE_STATUS_SUCCESSFUL);
    OCSP_RESPONSE_free(rsp);
    tls_ctx_free(srv);
}
