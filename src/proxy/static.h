/* Files from the local file system: root, alias, index, try_files and the
 * MIME types table, as nginx's static, index and try_files modules do it.
 * A location without proxy_pass serves files when a root or alias applies
 * to it (given there or inherited); otherwise it answers 404 as before. */
#ifndef PORTICO_PROXY_STATIC_H
#define PORTICO_PROXY_STATIC_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

struct tmpl;
struct exchange;
struct location;

/* extension -> type, sorted by extension (lower case) */
struct mime_type {
    const char *ext;
    const char *type;
};

struct mime_types {
    struct mime_type *v;
    size_t n;
};

struct static_conf {
    struct tmpl *root;  /* root: the URI is appended */
    struct tmpl *alias; /* alias: replaces the location's prefix (the whole URI in a regex one) */
    const struct location *alias_loc; /* where alias was set: its prefix is what goes */
    bool root_set;                    /* root or alias given at this level */
    const char **index;               /* index names, tried in order for a URI ending in '/' */
    size_t nindex;
    bool index_set;
    struct tmpl **try_files; /* not inherited, as nginx */
    size_t ntry;
    const struct mime_types *types; /* NULL: the built-in table */
    int sendfile;
    int tcp_nopush;
    int etag;
    int gzip_static; /* GZIP_STATIC_OFF / _ON / _ALWAYS */
    int autoindex;
    int autoindex_format; /* AUTOINDEX_HTML / _XML / _JSON / _JSONP */
    int autoindex_exact_size;
    int autoindex_localtime;
};

enum { GZIP_STATIC_OFF, GZIP_STATIC_ON, GZIP_STATIC_ALWAYS };
enum { AUTOINDEX_HTML, AUTOINDEX_XML, AUTOINDEX_JSON, AUTOINDEX_JSONP };

extern const struct cf_module static_cf_module;

void static_conf_init(struct static_conf *c);
void static_conf_merge(struct static_conf *c, const struct static_conf *p);
void static_conf_defaults(struct static_conf *c);

/* Does this merged location serve files (root/alias/try_files apply)? */
bool static_applies(const struct static_conf *c);

/* Serve the exchange from the file system. Ends the exchange, or hands it
 * on (an internal redirect of try_files, an error page). */
void static_serve(struct exchange *ex);

/* The Content-Type for a file name by its extension (NULL: default_type). */
const char *static_mime_type(const struct mime_types *t, const char *name, size_t len);

#endif
