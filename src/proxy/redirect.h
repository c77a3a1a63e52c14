/* proxy_redirect (nginx's proxy module): the Location and Refresh fields of
 * upstream responses rewritten, first matching rule wins.
 *   default            "http://<proxy_pass host><proxy_pass URI or />" ->
 *                      the location's prefix (or "/"); the implicit rule
 *   off                none (cancels inherited rules)
 *   redirect repl      a prefix (text and variables) replaced
 *   ~regex repl        ~* caseless; $1.. of the regex in the replacement */
#ifndef PORTICO_PROXY_REDIRECT_H
#define PORTICO_PROXY_REDIRECT_H

#include <stdbool.h>

#include "core/str.h"

struct cf_ctx;
struct cf_node;
struct snapshot;
struct loc_conf;
struct exchange;
struct redirect_rule;

extern const struct redirect_rule *const redirect_default_rules; /* one rule: default */

int redirect_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                       struct loc_conf *lc);

/* If a rule of ex->lc matches `value` (a Location, or with refresh a
 * Refresh field's "url=" part), the rewritten field value in *out. */
bool proxy_redirect_apply(struct exchange *ex, struct slice value, bool refresh, struct slice *out);

#endif
