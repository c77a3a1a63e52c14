/* The proxy_cache* directives as a location sees them (cache_conf.c), and
 * the corridor's cache steps (cache.c). */
#ifndef PORTICO_PROXY_CACHE_CONF_H
#define PORTICO_PROXY_CACHE_CONF_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/store.h"
#include "config/config.h"
#include "net/net.h"

struct tmpl;

/* proxy_cache_valid [code ...] time */
struct cache_valid {
    int codes[16];
    size_t ncodes;
    bool any;
    int64_t ms;
};

/* proxy_cache_path, as declared at http level */
struct cache_path_decl {
    struct cache_zone_conf zc;
    struct cache_zone *zone; /* resolved at load */
    struct cache_path_decl *next;
};

/* proxy_cache_purge METHOD [from all | CIDR ...] */
struct cache_purge_acl {
    const char *method;
    struct net_cidr *from;
    size_t nfrom; /* 0: anyone */
};

/* proxy_cache_use_stale and proxy_ignore_headers bits */
#define STALE_ERROR          (1u << 0)
#define STALE_TIMEOUT        (1u << 1)
#define STALE_INVALID_HEADER (1u << 2)
#define STALE_UPDATING       (1u << 3)
#define STALE_500            (1u << 4)
#define STALE_502            (1u << 5)
#define STALE_503            (1u << 6)
#define STALE_504            (1u << 7)
#define STALE_403            (1u << 8)
#define STALE_404            (1u << 9)
#define STALE_429            (1u << 10)

#define IGNORE_X_ACCEL_EXPIRES (1u << 0)
#define IGNORE_EXPIRES         (1u << 1)
#define IGNORE_CACHE_CONTROL   (1u << 2)
#define IGNORE_SET_COOKIE      (1u << 3)
#define IGNORE_VARY            (1u << 4)
#define IGNORE_X_ACCEL_REDIRECT   (1u << 5)
#define IGNORE_X_ACCEL_LIMIT_RATE (1u << 6)
#define IGNORE_X_ACCEL_BUFFERING  (1u << 7)

struct cache_loc_conf {
    bool set;              /* proxy_cache given at this level */
    const char *zone_name; /* NULL: off */
    struct cache_zone *zone;
    const char *file;
    int line;
    struct cache_path_decl *paths; /* the http level's declarations */
    struct tmpl *key;
    struct cache_valid *valid;
    size_t nvalid;
    bool valid_set;
    uint32_t methods; /* bits of enum http_method; 0 unset */
    struct tmpl **bypass;
    size_t nbypass;
    bool bypass_set;
    struct tmpl **no_cache;
    size_t nno_cache;
    bool no_cache_set;
    int min_uses;
    uint32_t ignore;
    bool ignore_set;
    int convert_head, revalidate, background_update, lock;
    uint32_t use_stale;
    bool use_stale_set;
    uint32_t lock_timeout_ms, lock_age_ms;
    struct cache_purge_acl *purge; /* not inherited */
};

extern const struct cf_module cache_cf_module;
void cache_loc_conf_init(struct cache_loc_conf *c);
void cache_loc_conf_merge(struct cache_loc_conf *c, const struct cache_loc_conf *p);
/* Defaults, the key template and the zone of a merged location. */
int cache_loc_conf_finish(struct arena *a, struct cache_loc_conf *c, char *err, size_t errlen);
/* The snapshot is freed: drop its references on the zones (http level). */
void cache_conf_release(struct cache_loc_conf *http);

#endif
