/* nginx's access module: `allow` and `deny` by client address, checked in
 * order, the first match deciding (none: allowed). The address is the one
 * realip settled on ($remote_addr). A level with rules replaces what it
 * would inherit, as nginx. */
#ifndef PORTICO_PROXY_ACCESS_H
#define PORTICO_PROXY_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "net/net.h"

struct access_rule {
    struct net_cidr net; /* family 0: all */
    bool allow;
};

struct loc_conf;

cf_set_fn access_set_rule;

/* May `addr` use a location with these rules? */
bool access_allowed(const struct access_rule *rules, size_t n, const struct net_addr *addr);

#endif
