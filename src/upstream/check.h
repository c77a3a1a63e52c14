/* Active health checks (NGINX Plus `health_check` and `match`): one checker
 * thread for the whole process probes every server of the groups that have
 * checks, off the request path, and marks the ones that fail `fails` checks
 * in a row as down (ups_server.hc.down, which every balancer skips) until
 * they pass `passes` checks. The config side (directives, attaching a
 * location's check to its group) is proxy/check_conf.c; this part knows
 * groups, sockets and HTTP/1 responses, not locations. */
#ifndef PORTICO_UPSTREAM_CHECK_H
#define PORTICO_UPSTREAM_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/str.h"
#include "http/http.h"
#include "upstream/upstream.h"

/* One condition of a `match` block. */
enum check_cond_kind { CHECK_STATUS, CHECK_HEADER, CHECK_BODY };
enum check_op { CHECK_OP_EXISTS, CHECK_OP_EQ, CHECK_OP_REGEX };

#define CHECK_MAX_RANGES 16

struct check_cond {
    enum check_cond_kind kind;
    bool negate; /* status ! ..., header ! name, != and !~ */
    /* status: codes and ranges (a code is a range lo == hi) */
    struct {
        int lo, hi;
    } ranges[CHECK_MAX_RANGES];
    size_t nranges;
    /* header: name, op and value; body: op is CHECK_OP_REGEX */
    struct slice name;
    enum check_op op;
    struct slice value;
    void *re; /* pcre2_code, memory from the snapshot arena */
};

/* `match NAME { ... }`: every condition must hold. No condition: any
 * well-formed HTTP response passes. */
struct check_match {
    const char *name;
    struct check_cond *conds;
    size_t nconds;
    bool needs_body;
    const char *file;
    int line;
    struct check_match *next; /* the snapshot's list */
};

/* Per (check, server) counters; the server's own hc block is the sum of the
 * verdicts of every check of its group. */
struct check_peer {
    int ok_run;     /* passes in a row */
    int fail_run;   /* failures in a row */
    bool unhealthy; /* this check holds the server down */
    bool checking;  /* mandatory, no result yet */
};

/* One `health_check` attached to a group. */
struct ups_check {
    struct ups_check *next; /* the group's list */
    struct ups_group *group;
    uint32_t interval_ms;
    uint32_t jitter_ms;
    int fails;
    int passes;
    const char *uri;
    int port; /* 0: the server's port */
    bool mandatory;
    bool tcp;               /* type=tcp: a connect is the whole check */
    const char *match_name; /* resolved into `match` when attached */
    const struct check_match *match;
    struct check_peer *peers; /* one per server of the group */
    const char *file;
    int line;
};

/* Compile a regex of a match condition with its memory in `a` (freed with
 * it). NULL with a message in err. */
void *check_regex_compile(struct arena *a, const char *pattern, char *err, size_t errlen);

/* Parse one `status` argument list ("200", "200-399", "!" first negates).
 * 0 or -1. */
int check_parse_status(struct check_cond *c, char *const *args, size_t nargs);

/* Does the response (status, fields, first bytes of the body) satisfy the
 * match? NULL match: status 2xx or 3xx. */
bool check_match_eval(const struct check_match *m, int status, const struct http_field *fields,
                      size_t nfields, struct slice body);

/* Attach `c` to group `g` (allocating its peers in `a`); mandatory checks
 * start every server in the "checking" state, down. 0 or -1 (memory). */
int check_group_add(struct arena *a, struct ups_group *g, struct ups_check *c);

/* Record one check result of server `i` of c's group: updates the run
 * counters, the server's stats and, on a transition, its hc.down (which
 * starts slow_start when it reaches 0). `wall_ms` is for the stats.
 * Returns true when the server's verdict by this check changed. */
bool check_peer_result(struct ups_check *c, size_t i, bool ok, int status, uint64_t now_ms,
                       uint64_t wall_ms);

/* The checker thread. Start it on the groups of the running config (it runs
 * even with no checks, idle); switch it to another config's groups before
 * they are served (the state of a server with the same group name and
 * address carries over; this returns once the old groups are no longer
 * touched, so they may be freed); stop it before exit. */
int check_start(struct ups_group *const *groups, size_t ngroups);
void check_reload(struct ups_group *const *groups, size_t ngroups);
void check_stop(void);

#endif
