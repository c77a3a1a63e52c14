/* Fuzz target for the server side of HTTP/2 (src/http2/h2.c): nghttp2 with
 * Portico's callbacks, i.e. request heads turned into exchanges, trailers,
 * request bodies handed to the corridor, limits and flood guards, and the
 * response path back through nghttp2's data provider. The session has no
 * socket (h2_session_detached()); the corridor runs for real on a worker
 * loop with a built-in configuration whose locations answer locally or
 * fail upstream without connecting, so no byte leaves the process.
 *
 * Input: one options byte, then what the client sends.
 *   bit 0     prepend the client preface and an empty SETTINGS frame
 *   bits 1-3  feed in chunks of 2^(2n) bytes (0: all at once), running the
 *             loop's posted work between chunks
 *   bits 4-6  the sink takes at most 2^(2n) bytes per write (0: no limit)
 *   bit 7     after each chunk the clock jumps 11 s and due timers fire
 *             (send and body timeouts are 10 s, the idle timeout 30 s)
 * Invariants: what the session writes starts with a SETTINGS frame and is
 * a sequence of whole frames; after the session is killed no session or
 * exchange is left. The seeds are written by fuzz/make_h2_seeds.py. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "http2/h2.h"
#include "proxy/conf.h"
#include "proxy/worker.h"
#include "upstream/upstream.h"

#define LISTEN "127.0.0.1:18480"

static const char conf_text[] =
    "events {}\n"
    "http {\n"
    "  access_log off;\n"
    "  client_max_body_size 64k;\n"
    "  send_timeout 10s;\n"
    "  client_body_timeout 10s;\n"
    "  upstream gone { server 127.0.0.1:9 down; }\n"
    "  server {\n"
    "    listen " LISTEN " http2 h2c_only;\n"
    "    http2_max_concurrent_streams 8;\n"
    "    http2_max_header_size 2k;\n"
    "    http2_initial_window_size 4k;\n"
    "    http2_idle_timeout 30s;\n"
    "    location / { return 200 \"hello h2\\n\"; }\n"
    "    location = /empty { return 204; }\n"
    "    location /redirect { return 302 /; }\n"
    "    location /big { return 200 \"%BIG%\"; }\n"
    "    location /buffered { proxy_pass http://gone; client_body_buffer_size 16k; }\n"
    "    location /streamed { proxy_pass http://gone; proxy_request_buffering off; }\n"
    "    location /missing { error_page 404 /; return 404; }\n"
    "  }\n"
    "  server {\n"
    "    listen " LISTEN " http2;\n"
    "    server_name vhost.example;\n"
    "    location / { return 403; }\n"
    "  }\n"
    "}\n";

static struct worker wk;
static struct net_addr peer, local;

/* The output, checked as it comes: the first frame is SETTINGS, and the
 * stream of bytes splits into whole frames. */
struct sink {
    size_t max_write;
    uint64_t total;
    uint8_t hd[9];
    size_t hd_have;
    uint64_t payload_left;
    bool first_seen;
};

static ssize_t sink_write(void *ctx, const struct iovec *iov, int iovcnt)
{
    struct sink *k = ctx;
    size_t took = 0;
    for (int i = 0; i < iovcnt; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        if (k->max_write && took + n > k->max_write)
            n = k->max_write - took;
        for (size_t j = 0; j < n;) {
            if (k->payload_left) {
                size_t m = n - j < k->payload_left ? n - j : (size_t)k->payload_left;
                k->payload_left -= m;
                j += m;
                continue;
            }
            k->hd[k->hd_have++] = p[j++];
            if (k->hd_have < 9)
                continue;
            k->hd_have = 0;
            k->payload_left = ((uint64_t)k->hd[0] << 16) | ((uint64_t)k->hd[1] << 8) | k->hd[2];
            if (!k->first_seen && k->hd[3] != 0x4) {
                fprintf(stderr, "the first frame is of type %u, not SETTINGS\n", k->hd[3]);
                abort();
            }
            k->first_seen = true;
        }
        took += n;
        if (k->max_write && took == k->max_write)
            break;
    }
    k->total += took;
    return (ssize_t)took;
}

static char *big_conf(void)
{
    /* a body larger than the stream window, so DATA waits for WINDOW_UPDATE */
    size_t big = 10000;
    const char *mark = strstr(conf_text, "%BIG%");
    size_t head = (size_t)(mark - conf_text), tail = strlen(mark + 5);
    char *t = malloc(head + big + tail + 1);
    if (!t)
        abort();
    memcpy(t, conf_text, head);
    for (size_t i = 0; i < big; i++)
        t[head + i] = (char)('a' + i % 26);
    memcpy(t + head + big, mark + 5, tail + 1);
    return t;
}

static void setup(void)
{
    if (log_open("/dev/null", LOG_EMERG) < 0) /* client mistakes are logged */
        abort();
    conf_register_all();
    char path[] = "/tmp/portico_fuzz_h2_XXXXXX";
    int fd = mkstemp(path);
    char *text = big_conf();
    size_t len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len)
        abort();
    close(fd);
    free(text);
    char err[512] = "";
    struct snapshot *snap = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    if (!snap) {
        fprintf(stderr, "fuzz_h2_session: %s\n", err);
        abort();
    }
    wk.loop = loop_new();
    wk.pool = ups_pool_new(wk.loop);
    wk.snap = snap;
    const char *msg;
    if (!wk.loop || !wk.pool || net_addr_parse(LISTEN, 80, false, &local, &msg) < 0 ||
        net_addr_parse("127.0.0.1:40000", 80, false, &peer, &msg) < 0)
        abort();
}

/* Run what the session posted (flushes, the corridor's follow-ups) until
 * it settles; true while the session is still open. */
static bool settle(void)
{
    loop_update_time(wk.loop);
    loop_drain_posted(wk.loop);
    return h2_sessions_count(&wk) > 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 1)
        return 0;
    uint8_t opt = data[0];
    data++;
    size--;

    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                  "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    size_t npre = (opt & 1) ? sizeof(preface) - 1 : 0;
    char *in = malloc(npre + size + 1);
    if (!in)
        return 0;
    memcpy(in, preface, npre);
    if (size)
        memcpy(in + npre, data, size);
    size_t len = npre + size;
    unsigned ck = (opt >> 1) & 7, wr = (opt >> 4) & 7;
    size_t chunk = ck ? (size_t)1 << (2 * ck) : len;

    struct sink k = {.max_write = wr ? (size_t)1 << (2 * wr) : 0};
    struct h2_session *s = h2_session_detached(&wk, &peer, &local, sink_write, &k);
    if (!s)
        abort();
    size_t off = 0;
    bool open = settle();
    while (open && off < len) {
        size_t n = len - off < chunk ? len - off : chunk;
        size_t took = h2_session_input(s, in + off, n);
        off += took;
        open = settle();
        if (open && (opt & 0x80)) {
            loop_advance(wk.loop, 11000);
            open = settle();
        }
        if (!took)
            break; /* the session reads no more: the rest stays unread */
    }
    if (open)
        h2_sessions_kill(&wk);
    settle();
    if (k.hd_have || k.payload_left) {
        fprintf(stderr, "the output ends inside a frame (%zu header bytes, %llu left)\n", k.hd_have,
                (unsigned long long)k.payload_left);
        abort();
    }
    if (h2_sessions_count(&wk) || wk.nactive || wk.nsessions) {
        fprintf(stderr, "session or exchange left after the kill\n");
        abort();
    }
    free(in);
    return 0;
}
