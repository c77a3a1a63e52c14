/* auth_request (nginx's ngx_http_auth_request_module): access decided by a
 * subrequest. The request's headers (not its body) go, as a GET, to a
 * location of the same server, usually a proxy_pass to an authentication
 * service; a 2xx answer lets the request through, 401 and 403 are passed
 * on (with the service's WWW-Authenticate), anything else is a 500.
 * auth_request_set copies values of the subrequest ($upstream_http_*,
 * $upstream_status...) into variables of the request. */
#ifndef PORTICO_PROXY_AUTHREQ_H
#define PORTICO_PROXY_AUTHREQ_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

struct exchange;
struct tmpl;

struct authreq_set {
    int var; /* user variable index */
    struct tmpl *value;
};

struct authreq_conf {
    struct tmpl *uri; /* NULL: off */
    bool set;         /* auth_request given at this level (off included) */
    struct authreq_set *sets;
    size_t nsets;
    bool sets_set;
};

extern const struct cf_module authreq_cf_module;

void authreq_conf_merge(struct authreq_conf *c, const struct authreq_conf *p);

/* Start the subrequest for ex (ex->lc has auth_request). The request waits;
 * when the answer is in, it is resumed (proxy_start_located, with
 * ex->auth_request_done) or answered 401/403/500. */
void authreq_start(struct exchange *ex);

#endif
