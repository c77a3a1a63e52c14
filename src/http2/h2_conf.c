/* The http2 and http2_* directives. They write struct h2_conf (proxy/conf.h)
 * of a server or of the http level; h2_conf_finalize() merges them once the
 * snapshot's servers and listen sets are built. */
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "http2/h2.h"
#include "proxy/conf.h"

#define OFF_H2(f)   (offsetof(struct srv_conf, h2) + offsetof(struct h2_conf, f))
#define H2_BIT(off) (1u << (((off)-offsetof(struct srv_conf, h2)) / sizeof(uint32_t)))

static uint32_t *h2_field(const struct cf_directive *d, void *conf, struct h2_conf **h2)
{
    *h2 = &((struct srv_conf *)conf)->h2;
    return (uint32_t *)((char *)conf + d->offset);
}

/* Mark the field as given; a second time is an error, as for every directive. */
static int h2_claim(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    struct h2_conf *h2)
{
    if (h2->set & H2_BIT(d->offset))
        return cf_error(cx, n, "\"%s\" directive is duplicate", n->name);
    h2->set |= H2_BIT(d->offset);
    return 0;
}

static int invalid(struct cf_ctx *cx, const struct cf_node *n)
{
    return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], n->name);
}

static int set_h2_flag(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    struct h2_conf *h2;
    uint32_t *f = h2_field(d, conf, &h2);
    if (h2_claim(cx, n, d, h2) < 0)
        return -1;
    if (strcasecmp(n->args[0], "on") == 0)
        *f = 1;
    else if (strcasecmp(n->args[0], "off") == 0)
        *f = 0;
    else
        return cf_error(cx, n,
                        "invalid value \"%s\" in \"%s\" directive, it must be \"on\" or "
                        "\"off\"",
                        n->args[0], n->name);
    return 0;
}

static int set_h2_count(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                        void *conf)
{
    struct h2_conf *h2;
    uint32_t *f = h2_field(d, conf, &h2);
    int v;
    if (h2_claim(cx, n, d, h2) < 0)
        return -1;
    if (cf_parse_int(n->args[0], &v) < 0 || v < 1)
        return invalid(cx, n);
    *f = (uint32_t)v;
    return 0;
}

/* Sizes: flow-control windows and header lists are at most 2^31-1 bytes. */
static int set_h2_size(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    struct h2_conf *h2;
    uint32_t *f = h2_field(d, conf, &h2);
    size_t v;
    if (h2_claim(cx, n, d, h2) < 0)
        return -1;
    if (cf_parse_size(n->args[0], &v) < 0 || v > 0x7fffffff)
        return invalid(cx, n);
    if (d->offset == OFF_H2(max_header_size) && v < 1024)
        return cf_error(cx, n, "\"%s\" must be at least 1k", n->name);
    *f = (uint32_t)v;
    return 0;
}

static int set_h2_msec(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                       void *conf)
{
    struct h2_conf *h2;
    uint32_t *f = h2_field(d, conf, &h2);
    uint32_t v;
    if (h2_claim(cx, n, d, h2) < 0)
        return -1;
    if (cf_parse_msec(n->args[0], &v) < 0)
        return invalid(cx, n);
    *f = v;
    return 0;
}

#define H2_CTX (CF_HTTP | CF_SERVER)

static const struct cf_directive h2_directives[] = {
    {"http2", H2_CTX, 1, 1, false, set_h2_flag, CONF_SRV, OFF_H2(enable), "on | off", "off",
     "HTTP/2 for this server: ALPN h2 on TLS listeners, h2c with prior knowledge on plain ones"},
    {"http2_max_concurrent_streams", H2_CTX, 1, 1, false, set_h2_count, CONF_SRV,
     OFF_H2(max_concurrent_streams), "number", "128",
     "streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS)"},
    {"http2_initial_window_size", H2_CTX, 1, 1, false, set_h2_size, CONF_SRV,
     OFF_H2(initial_window_size), "size", "64k",
     "request body bytes a stream may send before the proxy reads them (stream window)"},
    {"http2_body_preread", H2_CTX, 1, 1, false, set_h2_size, CONF_SRV, OFF_H2(body_preread), "size",
     "1m", "request body bytes all streams of a connection may have unread (connection window)"},
    {"http2_max_header_size", H2_CTX, 1, 1, false, set_h2_size, CONF_SRV, OFF_H2(max_header_size),
     "size", "32k",
     "largest request header list after HPACK decoding (431 above, GOAWAY far above)"},
    {"http2_idle_timeout", H2_CTX, 1, 1, false, set_h2_msec, CONF_SRV, OFF_H2(idle_timeout_ms),
     "time", "3m", "how long a connection without open streams is kept"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module h2_cf_module = {"http2", h2_directives};

static const struct h2_conf h2_defaults = {
    .enable = 0,
    .max_concurrent_streams = 128,
    .initial_window_size = 65536,
    .max_header_size = 32768,
    .idle_timeout_ms = 180000,
    .body_preread = 1024 * 1024,
};

/* Each field: the server's, else the http level's, else the default. */
static void h2_merge(struct h2_conf *c, const struct h2_conf *http)
{
    uint32_t *cv = &c->enable;
    const uint32_t *hv = &http->enable;
    const uint32_t *dv = &h2_defaults.enable;
    size_t n = (sizeof(*c) - offsetof(struct h2_conf, enable)) / sizeof(uint32_t);
    for (size_t i = 0; i < n; i++) {
        uint32_t bit = 1u << (i + 1);
        if (c->set & bit)
            continue;
        cv[i] = (http->set & bit) ? hv[i] : dv[i];
    }
    if (c->body_preread < 65535)
        c->body_preread = 65535;
}

void h2_conf_finalize(struct snapshot *s)
{
    for (size_t i = 0; i < s->nservers; i++)
        h2_merge(&s->servers[i]->h2, &s->http_srv_defaults.h2);
    /* nginx: `listen ... http2` turns HTTP/2 on for every server of that
     * address, unless one says `http2 off` */
    for (size_t j = 0; j < s->nlistens; j++) {
        struct listen_set *ls = &s->listens[j];
        for (size_t i = 0; ls->http2 && i < ls->nservers; i++)
            if (!(ls->servers[i]->h2.set & H2_BIT(OFF_H2(enable))))
                ls->servers[i]->h2.enable = 1;
    }
    for (size_t i = 0; i < s->nservers; i++)
        s->servers[i]->http2 = s->servers[i]->h2.enable != 0;
}

bool h2_listen_enabled(const struct listen_set *ls)
{
    return ls && (ls->http2 || (ls->dflt && ls->dflt->http2));
}
