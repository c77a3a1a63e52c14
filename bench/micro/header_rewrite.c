/* Header rewrite cost, with the real code on a real configuration: the
 * location below is loaded with conf_load(), and each iteration does what
 * the corridor does per proxied request for its headers:
 *   - request side: evaluate the proxy_set_header values (tmpl_eval: $host,
 *     $remote_addr, $proxy_add_x_forwarded_for, $scheme, a literal);
 *   - response side: proxy_response_fields() on a typical origin head (the
 *     default hidden fields, proxy_hide_header, two add_header rules).
 * The exchange's arena is reset between iterations, as a new exchange
 * starts with an empty one. Run alone: build/micro_header_rewrite */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/pcache.h"
#include "proxy/vars.h"

#define ITERS 1000000

static const char CONF[] =
    "events {}\n"
    "http {\n"
    "  server {\n"
    "    listen 127.0.0.1:18999;\n"
    "    location / {\n"
    "      proxy_pass http://127.0.0.1:9;\n"
    "      proxy_set_header Host $host;\n"
    "      proxy_set_header X-Real-IP $remote_addr;\n"
    "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
    "      proxy_set_header X-Forwarded-Proto $scheme;\n"
    "      proxy_set_header X-Env production;\n"
    "      proxy_hide_header X-Powered-By;\n"
    "      add_header X-Frame-Options DENY;\n"
    "      add_header Strict-Transport-Security \"max-age=31536000\" always;\n"
    "    }\n"
    "  }\n"
    "}\n";

#define F(n, v)                                                                                    \
    {                                                                                              \
        SLICE_LIT(n), SLICE_LIT(v)                                                                 \
    }

/* A browser's request (Chrome, 2024) */
static struct http_field REQ[] = {
    F("Host", "www.example.com"),
    F("Connection", "keep-alive"),
    F("sec-ch-ua", "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\""),
    F("sec-ch-ua-mobile", "?0"),
    F("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "Chrome/124.0.0.0 Safari/537.36"),
    F("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    F("Sec-Fetch-Site", "none"),
    F("Accept-Encoding", "gzip, deflate, br, zstd"),
    F("Accept-Language", "en-US,en;q=0.9"),
    F("Cookie", "session=abc123; theme=dark"),
    F("X-Forwarded-For", "203.0.113.7"),
};

/* An application server's response head */
static const struct http_field RESP[] = {
    F("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
    F("Server", "gunicorn"),
    F("Content-Type", "text/html; charset=utf-8"),
    F("X-Powered-By", "Django"),
    F("Cache-Control", "private, max-age=0"),
    F("Vary", "Cookie, Accept-Encoding"),
    F("Set-Cookie", "csrftoken=xyz; Path=/; SameSite=Lax"),
    F("X-Content-Type-Options", "nosniff"),
};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static volatile size_t sink;

int main(void)
{
    char path[] = "/tmp/portico-micro-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, CONF, sizeof(CONF) - 1) != (ssize_t)(sizeof(CONF) - 1))
        return 1;
    close(fd);
    conf_register_all();
    char err[512];
    struct snapshot *s = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    if (!s) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct loc_conf *lc = s->servers[0]->locs[0]->conf;

    struct net_addr peer, local;
    const char *msg;
    net_addr_parse("198.51.100.23:51234", 0, false, &peer, &msg);
    net_addr_parse("127.0.0.1:18999", 0, false, &local, &msg);
    struct exchange ex;
    memset(&ex, 0, sizeof(ex));
    arena_init(&ex.arena, 4096, 0);
    ex.snap = s;
    ex.peer = &peer;
    ex.local = &local;
    ex.method = SLICE_LIT("GET");
    ex.method_id = HTTP_M_GET;
    ex.request_uri = SLICE_LIT("/products/42?ref=home");
    ex.uri = SLICE_LIT("/products/42");
    ex.args = SLICE_LIT("ref=home");
    ex.has_args = true;
    ex.host = SLICE_LIT("www.example.com");
    ex.minor_version = 1;
    ex.req_fields = REQ;
    ex.nreq_fields = sizeof(REQ) / sizeof(REQ[0]);
    ex.srv = s->servers[0];
    ex.lc = lc;

    size_t nresp = sizeof(RESP) / sizeof(RESP[0]);
    struct http_field out[32];
    double t0 = now_ns();
    for (int i = 0; i < ITERS; i++) {
        arena_reset(&ex.arena);
        size_t total = 0;
        for (size_t k = 0; k < lc->set_headers.n; k++)
            total += tmpl_eval(&ex, lc->set_headers.v[k].value, ESC_NONE).len;
        sink = total;
    }
    double req_ns = (now_ns() - t0) / ITERS;
    t0 = now_ns();
    for (int i = 0; i < ITERS; i++) {
        arena_reset(&ex.arena);
        sink = proxy_response_fields(&ex, 200, RESP, nresp, out, 32);
    }
    double resp_ns = (now_ns() - t0) / ITERS;

    size_t n = proxy_response_fields(&ex, 200, RESP, nresp, out, 32);
    printf("request: %zu proxy_set_header values evaluated        %6.1f ns\n", lc->set_headers.n,
           req_ns);
    printf("response: %zu origin fields -> %zu sent (hide + add_header) %6.1f ns\n", nresp, n,
           resp_ns);
    arena_deinit(&ex.arena);
    snapshot_unref(s);
    return 0;
}
