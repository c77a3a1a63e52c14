/* Virtual hosts and locations: which server block and which location a
 * request belongs to, with nginx's rules. The per-server and per-location
 * settings are opaque here (`conf`): the router only matches. Tables are
 * built once per config snapshot and then read by every worker (immutable). */
#ifndef PORTICO_ROUTER_H
#define PORTICO_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "core/arena.h"
#include "core/str.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Up to 10 captures ($0..$9), as offsets into the matched subject. */
#define ROUTER_MAX_CAPTURES 10

struct route_captures {
    const char *subject; /* the string the regex ran on */
    int n;               /* number of valid pairs (0 if no regex matched) */
    size_t ov[ROUTER_MAX_CAPTURES * 2];
    const pcre2_code *re; /* for named groups */
};

enum location_match {
    LOC_PREFIX,         /* location /x */
    LOC_PREFIX_NOREGEX, /* location ^~ /x */
    LOC_EXACT,          /* location = /x */
    LOC_REGEX,          /* location ~ re */
    LOC_REGEX_CI,       /* location ~* re */
    LOC_NAMED,          /* location @name (only reachable by name) */
};

struct location {
    enum location_match match;
    const char *pattern; /* as written */
    size_t pattern_len;
    pcre2_code *re;             /* LOC_REGEX, LOC_REGEX_CI (JIT-compiled) */
    struct location *parent;    /* enclosing location, NULL at server level */
    struct location **children; /* nested locations, in file order */
    size_t nchildren;
    void *conf; /* owned by the proxy layer */
    /* built by router_locations_build(): private lookup tables of the
     * children (NULL if none) */
    struct location_tree *tree;
};

/* Compile a location's regex (case-insensitive for LOC_REGEX_CI) with JIT.
 * Returns 0 or -1 with a message in err (PCRE2's, with the offset). */
int router_location_compile(struct location *loc, char *err, size_t errlen);

/* Free the compiled regexes of `loc` and of its nested locations (PCRE2 and
 * JIT memory is not in any arena). Call for every top-level location that
 * was compiled or built, whether or not router_locations_build() succeeded,
 * once no worker can use the set any more. */
void router_location_deinit(struct location *loc);

/* Prepare the lookup structures of a list of top-level locations (and,
 * recursively, of their children); regexes not yet compiled are compiled.
 * Exact and prefix patterns must be unique per level: a duplicate is an
 * error ("duplicate location \"/x\""); "= /x" and "/x" may coexist. Nesting
 * is checked as nginx does: a nested prefix must start with its parent's
 * pattern, nothing nests in "=" or "@" locations, "@" only at top level.
 * Sets each location's `parent` and `tree`. Returns NULL with err set. */
struct location_set;
struct location_set *router_locations_build(struct arena *a, struct location **locs, size_t n,
                                            char *err, size_t errlen);

/* nginx's order: an exact match wins at once; otherwise the longest prefix
 * is remembered (its nested locations searched the same way); if it is ^~
 * it wins; otherwise regexes are tried in file order, the innermost level
 * first, and the first match wins; otherwise the longest prefix. `path` is
 * the normalised path without the query. Returns NULL if nothing matches. */
const struct location *router_find_location(const struct location_set *s, struct slice path,
                                            struct route_captures *caps);

/* Find a named location (@name, given with its "@") of the set, or NULL.
 * Named locations are top-level only; of duplicates the first wins. */
const struct location *router_find_named(const struct location_set *s, struct slice name);

struct vhost {
    const char **names; /* server_name values as written */
    size_t nnames;
    struct location_set *locations;
    void *conf; /* owned by the proxy layer */
};

/* Which virtual hosts listen on one address:port, and the default one. */
struct vhost_table;

/* Build the table of one listening address from its servers in file order;
 * `default_idx` is the server marked default_server or -1 for the first.
 * Server names: "example.com" exact, "*.example.com" and ".example.com"
 * (which also matches example.com itself) wildcard prefix, "www.example.*"
 * wildcard suffix, "~regex" (named captures become variables), "" (requests
 * without Host). Duplicated names on one address are a warning in nginx; here
 * the first wins. Returns NULL with err set on a bad regex. */
struct vhost_table *router_vhosts_build(struct arena *a, struct vhost **servers, size_t n,
                                        int default_idx, char *err, size_t errlen);

/* Pick the server for `host` (any case, may carry a :port and a trailing
 * dot; both are ignored). Order as nginx: exact, longest leading wildcard,
 * longest trailing wildcard, regex in file order, then the default server. */
const struct vhost *router_find_vhost(const struct vhost_table *t, struct slice host,
                                      struct route_captures *caps);

/* Free the server-name regexes of `t` (the rest lives in the arena). */
void router_vhosts_free(struct vhost_table *t);

/* A PCRE2 regex (JIT-compiled when possible), for other modules' regexes
 * (map). NULL with a message in err. Free with pcre2_code_free. */
pcre2_code *router_regex_compile(const char *pat, size_t len, bool caseless, char *err,
                                 size_t errlen);
/* 1 if `re` matches `subj` (captures recorded in caps when not NULL), else 0. */
int router_regex_match(const pcre2_code *re, struct slice subj, struct route_captures *caps);

/* Both finders keep one pcre2_match_data per thread, created on first use;
 * a worker thread calls this before it exits. `caps` may be NULL. */
void router_thread_deinit(void);

#endif
