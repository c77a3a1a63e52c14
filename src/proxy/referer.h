/* valid_referers and $invalid_referer (nginx's referer module): hotlink
 * protection by the Referer field. */
#ifndef PORTICO_PROXY_REFERER_H
#define PORTICO_PROXY_REFERER_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "core/str.h"

struct exchange;
struct referer_pattern;

struct referer_conf {
    bool set; /* valid_referers given at this level */
    bool none, blocked, server_names;
    const struct referer_pattern *v;
    size_t n;
};

extern const struct cf_module referer_cf_module;

void referer_conf_merge(struct referer_conf *c, const struct referer_conf *p);

/* $invalid_referer: "1" when the location's valid_referers do not accept
 * the request's Referer, "" when they do or there are none. */
struct slice referer_invalid(struct exchange *ex);

#endif
