/* Run-time state readable over HTTP: the `api` location answers with JSON
 * (NGINX Plus-like) describing the upstream groups of the snapshot the
 * request runs on. Read-only. */
#ifndef PORTICO_ADMIN_H
#define PORTICO_ADMIN_H

#include "config/config.h"

struct exchange;

extern const struct cf_module admin_cf_module;

/* Answer an exchange routed to an `api` location (ends the exchange):
 *   <location>                      {"portico": version, "connections": {...},
 *                                    "requests", "responses", "bytes", "upstreams",
 *                                    "caches"}
 *   <location>/metrics              the same in the Prometheus text format
 *   <location>/upstreams            {"NAME": group, ...}
 *   <location>/upstreams/NAME       one group
 * 404 for anything else, 405 for methods other than GET and HEAD. */
void admin_answer(struct exchange *ex);
/* Answer a `stub_status` location: nginx's plain-text status. */
void admin_stub_status(struct exchange *ex);

#endif
