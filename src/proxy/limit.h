/* Rate and concurrency limits, as nginx's limit_req and limit_conn modules:
 * zones of per-key state (a leaky bucket for requests, a counter for
 * connections) shared by all workers under a mutex, keyed by a template
 * ($binary_remote_addr, $server_name, ...). A zone keeps its state across
 * reloads while its name, kind and size stay. */
#ifndef PORTICO_PROXY_LIMIT_H
#define PORTICO_PROXY_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/str.h"

struct exchange;
struct snapshot;
struct tmpl;
struct limit_zone;

enum limit_kind { LIMIT_REQ, LIMIT_CONN };

/* limit_req_zone / limit_conn_zone as declared (http level). */
struct limit_zone_decl {
    const char *name;
    enum limit_kind kind;
    size_t size;
    uint64_t rate_milli; /* requests per 1000 s (rate=10r/s: 10000); limit_req only */
    struct tmpl *key;
    struct limit_zone *zone; /* the shared state */
    const char *file;
    int line;
};

/* limit_req zone=NAME [burst=N] [nodelay | delay=N] */
struct limit_req_rule {
    const struct limit_zone_decl *decl;
    uint64_t burst_milli;
    uint64_t delay_milli; /* excess below this goes without delay (nodelay: UINT64_MAX) */
};

/* limit_conn NAME NUMBER */
struct limit_conn_rule {
    const struct limit_zone_decl *decl;
    uint32_t max;
};

struct limit_conf {
    struct limit_req_rule *req;
    size_t nreq, cap_req;
    bool req_set;
    struct limit_conn_rule *conn;
    size_t nconn, cap_conn;
    bool conn_set;
    int req_status, conn_status;       /* 503 */
    int req_log_level, conn_log_level; /* enum log_level; error */
    int req_dry_run, conn_dry_run;
    struct tmpl *rate;       /* limit_rate (bytes/s), NULL unset */
    struct tmpl *rate_after; /* limit_rate_after */
};

extern const struct cf_module limit_cf_module;

void limit_conf_init(struct limit_conf *c);
void limit_conf_merge(struct limit_conf *c, const struct limit_conf *p);
void limit_conf_defaults(struct limit_conf *c);
/* Every zone named by limit_req/limit_conn was declared? (file:line in err) */
int limits_finish(struct snapshot *s, char *err, size_t errlen);
/* The snapshot is freed: let go of its zones. */
void limits_free(struct snapshot *s);

enum limit_verdict { LIMIT_PASS, LIMIT_DELAY, LIMIT_REJECT };

/* limit_req of the exchange's location: pass, delay (*delay_ms), or reject
 * (answer lc->limits.req_status). Logs as nginx does. */
enum limit_verdict limit_req_check(struct exchange *ex, uint64_t *delay_ms);

/* limit_conn: take a place in every rule's counter (kept on the exchange
 * until limit_conn_release), or reject. */
enum limit_verdict limit_conn_take(struct exchange *ex);
void limit_conn_release(struct exchange *ex);

/* limit_rate: callers check first, cheaply, that a limit may apply:
 * ex->limit_rate || (!ex->limit_rate_set && ex->lc->limits.rate).
 * How many more response bytes may be written now (UINT64_MAX:
 * no limit). The rate is decided at the first call (set $limit_rate or
 * X-Accel-Limit-Rate may have chosen it before). When the answer is less
 * than `queued`, *wait_ms says when to try again. Counts ex->bytes_sent, as
 * nginx counts what it sent: the first second's worth and limit_rate_after
 * go at once. */
uint64_t limit_rate_budget(struct exchange *ex, uint64_t now_ms, uint64_t queued,
                           uint32_t *wait_ms);

/* The request's rate (bytes/s, 0 none), decided on the first call. */
uint64_t limit_rate_current(struct exchange *ex);

/* $limit_req_status / $limit_conn_status (ex->limit_req_st, limit_conn_st) */
enum limit_status {
    LIMIT_ST_NONE,
    LIMIT_ST_PASSED,
    LIMIT_ST_DELAYED,
    LIMIT_ST_REJECTED,
    LIMIT_ST_DELAYED_DRY_RUN,
    LIMIT_ST_REJECTED_DRY_RUN,
};

/* Parse a size value ("100k") as limit_rate does; -1 if it is not one. */
int limit_rate_parse(struct slice v, uint64_t *out);

#endif
