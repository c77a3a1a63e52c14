/* `map SOURCE $name { ... }` (nginx's ngx_http_map_module): a variable whose
 * value is looked up from another string, evaluated on first use in a
 * request and kept for the rest of it (unless `volatile`).
 *
 * Lookup order, as nginx: exact keys (case-insensitive), then with
 * `hostnames` the longest "*.example.com" / ".example.com" suffix and the
 * longest "example.*" prefix, then `~regex` / `~*regex` keys in the order
 * written (their captures usable in the value as $1, $name), then `default`
 * (empty if none). Values are templates: text, variables, or both. */
#ifndef PORTICO_PROXY_MAP_H
#define PORTICO_PROXY_MAP_H

#include "core/str.h"

struct cf_ctx;
struct cf_node;
struct snapshot;
struct exchange;
struct map_def;

/* Before any directive is applied: give an index to every `map` variable of
 * the http block, so templates may use it before the map is written (as in
 * nginx). Returns a NULL-terminated list of the names (arena) or NULL on
 * allocation failure; *n gets the count. */
const char **map_prescan(struct snapshot *s, const struct cf_node *root, size_t *n);

/* The `map` directive (http context, a block). */
int map_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s);
/* `split_clients` (nginx's module: the same buckets for the same strings). */
int map_split_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s);
/* `geo [$address] $var { ... }`: longest matching network. */
int map_geo_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s);

/* Value of map `idx` for this exchange. */
struct slice map_value(struct exchange *ex, int idx);

/* The variable a map defines (without '$'). */
const char *map_name(const struct map_def *m);

/* Free what the maps of `s` hold outside its arena (compiled regexes). */
void maps_free(struct snapshot *s);

#endif
