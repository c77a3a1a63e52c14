/* Variables ($host, $http_user_agent, $upstream_status, ...) and string
 * templates that use them. Templates are compiled at config load; unknown
 * variables are refused there, so evaluation never fails on a name. */
#ifndef PORTICO_PROXY_VARS_H
#define PORTICO_PROXY_VARS_H

#include "core/arena.h"
#include "http/http.h"
#include "proxy/conf.h"

struct exchange;

enum tmpl_escape {
    ESC_NONE,    /* values as they are */
    ESC_DEFAULT, /* access log default: ", \ and bytes < 0x20 or > 0x7e as \xHH */
    ESC_JSON,    /* JSON string escaping */
    /* rewrite replacements: regex captures ($1.., $name) only, percent-encoded
     * for a URI path or for arguments (as nginx); other values as they are */
    ESC_CAPTURE_URI,
    ESC_CAPTURE_ARGS,
};

/* Compile `src`. `extra_names` lists names that are regex named captures in
 * this config (NULL-terminated, may be NULL). NULL with a message in err. */
struct tmpl *tmpl_compile(struct arena *a, const char *src, const char *const *extra_names,
                          char *err, size_t errlen);

/* Evaluate into the exchange's arena. Never fails on a name; on memory
 * exhaustion returns an empty slice. */
struct slice tmpl_eval(struct exchange *ex, const struct tmpl *t, enum tmpl_escape esc);

/* Value of one variable by id/argument (used by tmpl_eval and tests). */
struct slice var_value(struct exchange *ex, int var, struct slice arg);

/* While a configuration loads: its `map` variable names (NULL-terminated,
 * by index), so templates can refer to them; NULL after the load. */
void vars_set_map_names(const char *const *names);

/* The same for `set` variables; vars_user_index gives a name's index (-1
 * if it is not one of them). */
void vars_set_user_names(const char *const *names);
int vars_user_index(const char *name);

/* Is `name` (without '$') a built-in variable (or a built-in prefix's)? */
bool vars_is_builtin(const char *name);

/* Refresh this thread's cached time strings if the second changed. */
void vars_time_update(void);
/* Current cached Date header value (IMF-fixdate). */
struct slice vars_http_date(void);

/* Fill ex->request_id with 32 random hex characters ($request_id does it
 * on first use). */
void vars_new_request_id(struct exchange *ex);

/* The value of argument `name` in the request's query ($arg_name), or empty. */
struct slice vars_arg(struct exchange *ex, struct slice name);

/* The value of cookie `name` in the request (all Cookie fields), or empty. */
struct slice vars_cookie(struct exchange *ex, struct slice name);

/* Does a request field list hold this name (case-insensitive)? Returns its
 * first value or an empty slice with *found false. */
struct slice fields_get(const struct http_field *f, size_t n, struct slice name, bool *found);

#endif
