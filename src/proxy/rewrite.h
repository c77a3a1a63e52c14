/* The rewrite directives of nginx's ngx_http_rewrite_module: `rewrite`,
 * `return`, `set`, `if` and `break`, run in the order written.
 *
 * Each server and each location has its own program (not inherited, as in
 * nginx). The server's runs once, before the location is searched; the
 * location's runs after it is found. A `rewrite` that changes $uri (without
 * `break`) or `rewrite ... last` searches the location again, at most 10
 * times. Inside `if` only these directives are allowed (the uses of "if"
 * that nginx's documentation calls safe, plus set); a location-scoped `if`
 * with other directives is refused at load. */
#ifndef PORTICO_PROXY_REWRITE_H
#define PORTICO_PROXY_REWRITE_H

#include "core/str.h"
#include "router/router.h" /* pcre2 */

struct cf_ctx;
struct cf_node;
struct snapshot;
struct exchange;
struct loc_conf;
struct rw_prog;

/* Before any directive is applied: give an index to every variable a `set`
 * anywhere in the http block names, so templates may use it whatever the
 * order. NULL-terminated list (arena), NULL on allocation failure. */
const char **rw_prescan(struct snapshot *s, const struct cf_node *root, size_t *n);

/* The directives (server, location; `if` bodies are read by `if` itself):
 * append an operation to lc's program. */
int rw_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                 struct loc_conf *lc);

/* Compile a regex of the configuration (JIT), freed by rw_free: NULL with
 * the error recorded for n. */
pcre2_code *rw_regex(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                     const char *pat, bool caseless);

/* Free the compiled regexes the programs of `s` hold. */
void rw_free(struct snapshot *s);

enum rw_result {
    RW_END,    /* ran to the end */
    RW_BREAK,  /* `break` or `rewrite ... break`: stay in this location */
    RW_LAST,   /* `rewrite ... last`: search the location again */
    RW_RETURN, /* `return` or a redirecting rewrite: answer with *ret */
};

struct rw_return {
    int code;
    struct slice text; /* body, or Location for 3xx */
    bool has_text;
};

/* Run a program. Sets ex->uri_rewritten when $uri changed. */
enum rw_result rw_run(struct exchange *ex, const struct rw_prog *p, struct rw_return *ret);

/* Value of `set` variable `idx` (empty until set). */
struct slice rw_user_value(struct exchange *ex, int idx);
/* Set a `set` variable (auth_request_set too); -1 if idx is not one. */
int rw_user_set(struct exchange *ex, int idx, struct slice v);

#endif
