/* proxy_cookie_domain, proxy_cookie_path and proxy_cookie_flags (nginx's
 * proxy module): the Set-Cookie fields of upstream responses rewritten, so
 * an application mounted under another host or path sets cookies the
 * client will send back, and gets the Secure / HttpOnly / SameSite flags
 * it forgot. */
#ifndef PORTICO_PROXY_COOKIE_H
#define PORTICO_PROXY_COOKIE_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "core/str.h"

struct exchange;
struct cookie_rule;
struct cookie_flags_rule;

struct cookie_conf {
    const struct cookie_rule *domain, *path; /* first matching rule wins */
    size_t ndomain, npath;
    bool domain_set, path_set; /* given at this level (off included) */
    const struct cookie_flags_rule *flags;
    size_t nflags;
    bool flags_set;
};

extern const struct cf_module cookie_cf_module;

void cookie_conf_merge(struct cookie_conf *c, const struct cookie_conf *p);

/* Does the location rewrite cookies at all? */
static inline bool cookie_rewrites(const struct cookie_conf *c)
{
    return c->ndomain || c->npath || c->nflags;
}

/* The Set-Cookie value `v` after the location's rules (v itself if none
 * applies; else in the exchange's arena). */
struct slice cookie_rewrite(struct exchange *ex, struct slice v);

#endif
