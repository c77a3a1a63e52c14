/* The directives of active health checks (`health_check` in a location,
 * `match` blocks at http level) and attaching a location's check to the
 * upstream group it proxies to. The checks themselves: upstream/check.h. */
#ifndef PORTICO_PROXY_CHECK_CONF_H
#define PORTICO_PROXY_CHECK_CONF_H

#include <stddef.h>

#include "config/config.h"

struct snapshot;
struct location;

extern const struct cf_module check_cf_module;

/* Called by the snapshot builder once the location's proxy_pass group is
 * known: a `health_check` here joins its group's checks. 0, or -1 with
 * "file:line: message" in err (no named upstream group, unknown match). */
int check_attach(struct snapshot *s, struct location *loc, char *err, size_t errlen);

#endif
