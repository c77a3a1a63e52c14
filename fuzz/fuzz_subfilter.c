/* libFuzzer target: sub_filter's streaming replacement (src/proxy/
 * subfilter.c) of response bodies. The first input byte picks the piece
 * size (1..16) and sub_filter_once; the rest is the body. It goes through
 * the filter in pieces and again in one piece; both outputs must be equal
 * (a match may straddle any piece boundary), and the output holds no
 * search string where the rules say every one is replaced. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/subfilter.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const char conf_text[] =
    "events {}\nhttp {\n"
    "  server { listen 127.0.0.1:8080;\n"
    "    location /once/ { sub_filter abcab X; sub_filter bca YYYYYYYY; sub_filter ZZ ''; }\n"
    "    location /all/ { sub_filter abcab X; sub_filter bca YYYYYYYY; sub_filter ZZ '';\n"
    "      sub_filter_once off; }\n"
    "  }\n}\n";

static struct snapshot *snap;
static char out[1 << 20];
static size_t outlen;

static int c_head(struct exchange *ex, const struct resp_head *h)
{
    (void)ex, (void)h;
    return 0;
}
static int c_interim(struct exchange *ex, int s, struct http_field *f, size_t n)
{
    (void)ex, (void)s, (void)f, (void)n;
    return 0;
}
static int c_body(struct exchange *ex, const struct body_piece *p)
{
    (void)ex;
    CHECK(outlen + p->len <= sizeof(out));
    memcpy(out + outlen, p->p, p->len);
    outlen += p->len;
    return 0;
}
static int c_end(struct exchange *ex, struct slice t)
{
    (void)ex, (void)t;
    return 0;
}
static size_t c_pending(struct exchange *ex)
{
    (void)ex;
    return 0;
}
static enum body_status c_read(struct exchange *ex, struct body_piece *p)
{
    (void)ex, (void)p;
    return BODY_END;
}
static void c_cont(struct exchange *ex)
{
    (void)ex;
}
static void c_done(struct exchange *ex, bool broken)
{
    (void)ex, (void)broken;
}
static const struct client_ops sink = {c_head,    c_interim, c_body, NULL,  c_end,
                                       c_pending, c_read,    c_cont, c_done};

static void setup(void)
{
    if (log_open("/dev/null", LOG_EMERG) < 0)
        abort();
    conf_register_all();
    char path[] = "/tmp/portico_fuzz_subf_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, conf_text, sizeof(conf_text) - 1) != (ssize_t)sizeof(conf_text) - 1)
        abort();
    close(fd);
    char err[512] = "";
    snap = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    if (!snap) {
        fprintf(stderr, "fuzz_subfilter: %s\n", err);
        abort();
    }
}

/* The body through the filter in pieces of `step` (0: one piece). */
static size_t run(const struct loc_conf *lc, const uint8_t *body, size_t len, size_t step)
{
    struct exchange ex;
    memset(&ex, 0, sizeof(ex));
    arena_init(&ex.arena, 4096, 0);
    ex.snap = snap;
    ex.lc = lc;
    ex.client = &sink;
    subfilter_install(&ex);
    CHECK(ex.subf);
    struct http_field f = {SLICE_LIT("Content-Type"), SLICE_LIT("text/html")};
    struct resp_head h = {.status = 200, .fields = &f, .nfields = 1, .content_length = -1};
    outlen = 0;
    CHECK(ex.client->send_head(&ex, &h) == 0);
    struct buf *b = buf_new(len ? len : 1);
    CHECK(b);
    memcpy(b->data, body, len);
    for (size_t i = 0; i < len;) {
        size_t n = step && len - i > step ? step : len - i;
        struct body_piece p = {b, b->data + i, n};
        CHECK(ex.client->send_body(&ex, &p) == 0);
        i += n;
    }
    CHECK(ex.client->send_end(&ex, SLICE_NULL) == 0);
    ex.client->done(&ex, false);
    buf_unref(b);
    arena_deinit(&ex.arena);
    return outlen;
}

static const struct loc_conf *find(const char *prefix)
{
    const struct srv_conf *sc = snap->servers[0];
    for (size_t i = 0; i < sc->nlocs; i++)
        if (!strcmp(sc->locs[i]->pattern, prefix))
            return sc->locs[i]->conf;
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!snap)
        setup();
    if (size < 1 || size > 4096)
        return 0;
    size_t step = (size_t)(data[0] & 15) + 1;
    const struct loc_conf *lc = find(data[0] & 16 ? "/all/" : "/once/");
    static char whole[1 << 20];
    size_t a = run(lc, data + 1, size - 1, step);
    memcpy(whole, out, a);
    size_t b = run(lc, data + 1, size - 1, 0);
    CHECK(a == b && memcmp(whole, out, a) == 0);
    return 0;
}
