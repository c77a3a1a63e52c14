/* Protocol-neutral HTTP vocabulary: methods, fields, status texts, dates. */
#ifndef PORTICO_HTTP_H
#define PORTICO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/str.h"

enum http_method {
    HTTP_M_OTHER = 0,
    HTTP_M_GET,
    HTTP_M_HEAD,
    HTTP_M_POST,
    HTTP_M_PUT,
    HTTP_M_DELETE,
    HTTP_M_OPTIONS,
    HTTP_M_CONNECT,
    HTTP_M_TRACE,
    HTTP_M_PATCH,
};

struct http_field {
    struct slice name;
    struct slice value;
};

/* Map a method token to its id (case-sensitive, RFC 9110 9.1). */
enum http_method http_method_id(struct slice m);

/* RFC 9110 9.2.2: GET HEAD OPTIONS TRACE PUT DELETE. */
bool http_method_idempotent(enum http_method m);

/* Reason phrase for a status code ("Unknown" if none). */
const char *http_status_text(int status);

/* RFC 9110 5.6.2 tchar. */
extern const uint8_t http_tchar[256];

/* Format an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into `out` (30 bytes
 * incl. NUL). Returns 29. */
size_t http_date_format(time_t t, char out[30]);

/* The first value of field `name` (case-insensitive) among f[0..n), with
 * *found (may be NULL); an empty slice when absent. */
struct slice http_field_get(const struct http_field *f, size_t n, struct slice name, bool *found);

/* Does `name` make a request conditional or partial (If-None-Match,
 * If-Modified-Since, If-Match, If-Unmodified-Since, Range, If-Range)? */
bool http_is_conditional(struct slice name);

/* Is `name` a hop-by-hop field (RFC 9110 7.6.1) that a proxy never forwards? */
bool http_is_hop_by_hop(struct slice name);

/* Host as routing wants it: lower case, without the :port and one trailing
 * dot ("[::1]:80" keeps its brackets). Allocated in `a`; empty on failure. */
struct arena;
struct slice http_host_normalize(struct arena *a, struct slice host);

/* Does a Connection field among f[0..n) name `name` (RFC 9110 7.6.1: those
 * fields are hop-by-hop too)? */
bool http_connection_names(const struct http_field *f, size_t n, struct slice name);

/* Normalise a request path the way nginx builds $uri: decode %XX, merge
 * "//", resolve "." and ".." segments. `out` must hold at least `in.len`
 * bytes. Returns the length, or -1 when the path climbs above the root or
 * decodes to a NUL byte (both 400). The query string is not part of `in`. */
long http_path_normalize(struct slice in, char *out, bool merge_slashes);

#endif
