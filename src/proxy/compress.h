/* Response compression: gzip (zlib), br (brotli) and zstd, chosen from the
 * client's Accept-Encoding, with nginx's gzip_* directives (and brotli_* /
 * zstd_* as the ngx_brotli and zstd-nginx-module name them). A filter over
 * the client side of an exchange: every answer (proxied, cached, static,
 * local) passes it, and the cache keeps what the origin sent. */
#ifndef PORTICO_PROXY_COMPRESS_H
#define PORTICO_PROXY_COMPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/str.h"

struct exchange;

enum zcoding { ZC_ZSTD, ZC_BR, ZC_GZIP, ZC_N }; /* in order of preference on a tie */

struct zcoding_conf {
    int on;
    const char **types; /* lower case; text/html always counts */
    size_t ntypes;
    bool types_set, any_type;
    size_t min_length;
    int level;
};

/* gzip_proxied bits */
#define ZP_OFF      0u
#define ZP_EXPIRED  (1u << 0)
#define ZP_NO_CACHE (1u << 1)
#define ZP_NO_STORE (1u << 2)
#define ZP_PRIVATE  (1u << 3)
#define ZP_NO_LM    (1u << 4)
#define ZP_NO_ETAG  (1u << 5)
#define ZP_AUTH     (1u << 6)
#define ZP_ANY      (1u << 7)
#define ZP_UNSET    (1u << 31)

struct compress_conf {
    struct zcoding_conf c[ZC_N];
    int vary;
    uint32_t proxied;
    int http_version_minor; /* gzip_http_version 1.0 | 1.1 */
    void **disable;         /* gzip_disable: pcre2_code * against User-Agent (rw_free) */
    size_t ndisable;
    bool disable_set;
    bool any; /* some coding is on (after merging) */
};

extern const struct cf_module compress_cf_module;

void compress_conf_init(struct compress_conf *c);
void compress_conf_merge(struct compress_conf *c, const struct compress_conf *p);
void compress_conf_defaults(struct compress_conf *c);

/* Put the filter in front of the exchange's client side when its location
 * compresses anything, i.e. lc->z.any (idempotent; every answer then passes
 * it). */
void compress_install(struct exchange *ex);
/* Free the encoder (the exchange ends or starts over). */
void compress_release(struct exchange *ex);
/* The client side drained: hand on held output, finish a waiting end.
 * true when the event was the filter's alone (the producer has finished or
 * must keep waiting). */
bool compress_drained(struct exchange *ex);

/* gzip_static on: may this request get a stored FILE.gz? Accept-Encoding
 * takes gzip, gzip_http_version and gzip_disable allow it, and a request
 * that came through a proxy (Via) only with gzip_proxied any (or auth with
 * Authorization), as nginx decides it for a static file. */
bool compress_gzip_static_ok(struct exchange *ex);

/* The q-value (0..1000) Accept-Encoding gives `coding` ("*" counts). */
int compress_accept_q(struct slice accept_encoding, const char *coding);

#endif
