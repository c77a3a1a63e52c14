/* secure_link, secure_link_md5, secure_link_secret and $secure_link /
 * $secure_link_expires (nginx's secure link module): signed, expiring
 * download URLs checked without asking the application. */
#ifndef PORTICO_PROXY_SECURELINK_H
#define PORTICO_PROXY_SECURELINK_H

#include "config/config.h"
#include "core/str.h"

struct exchange;
struct tmpl;

struct securelink_conf {
    struct tmpl *link;  /* secure_link: "hash[,expires]" */
    struct tmpl *md5;   /* secure_link_md5: what the hash is of */
    const char *secret; /* secure_link_secret */
};

extern const struct cf_module securelink_cf_module;

void securelink_conf_merge(struct securelink_conf *c, const struct securelink_conf *p);

/* $secure_link: with secure_link, "1" valid, "0" expired, "" not valid;
 * with secure_link_secret, the link part of the URI, or "". */
struct slice securelink_value(struct exchange *ex);
/* $secure_link_expires: the expiry time given in secure_link, or "". */
struct slice securelink_expires(struct exchange *ex);

#endif
