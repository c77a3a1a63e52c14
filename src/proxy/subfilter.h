/* sub_filter (nginx's ngx_http_sub_module): strings replaced in response
 * bodies of the listed types (text/html by default), matched without
 * regard to case, across the pieces a body arrives in. A client_ops
 * filter, in front of the compression filter. */
#ifndef PORTICO_PROXY_SUBFILTER_H
#define PORTICO_PROXY_SUBFILTER_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

struct exchange;
struct tmpl;

struct sub_rule {
    struct tmpl *match, *replace;
};

struct subfilter_conf {
    struct sub_rule *rules;
    size_t n;
    bool rules_set;
    const char **types; /* lower case; text/html always counts */
    size_t ntypes;
    bool types_set, any_type;
    int once;          /* sub_filter_once, default on */
    int last_modified; /* sub_filter_last_modified, default off */
};

extern const struct cf_module subfilter_cf_module;

void subfilter_conf_init(struct subfilter_conf *c);
void subfilter_conf_merge(struct subfilter_conf *c, const struct subfilter_conf *p);

/* Put the filter in front of the exchange's client side (the location has
 * sub_filter rules; idempotent). */
void subfilter_install(struct exchange *ex);

#endif
