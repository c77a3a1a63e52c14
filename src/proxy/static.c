/* Files from the local file system (static.h): the path from root/alias and
 * $uri, try_files, index, then one file answered with its type, validators
 * and ranges, its body through sendfile(2) where the connection allows it
 * (plain HTTP/1), else read in segments as the client drains. */
#include "proxy/static.h"
#include "proxy/compress.h"
#include "proxy/ofcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/rules.h"
#include "core/log.h"
#include "core/loop.h"
#include "proxy/exchange.h"
#include "proxy/proxy.h"
#include "proxy/vars.h"

#define SEND_HIGH (256 * 1024) /* queued toward the client before we wait */

/* ---- types ---- */

/* Used when no `types` block applies: nginx's own mime.types, the common part. */
static struct mime_type builtin[] = {
    {"7z", "application/x-7z-compressed"},
    {"avif", "image/avif"},
    {"bin", "application/octet-stream"},
    {"bmp", "image/x-ms-bmp"},
    {"css", "text/css"},
    {"csv", "text/csv"},
    {"doc", "application/msword"},
    {"eot", "application/vnd.ms-fontobject"},
    {"epub", "application/epub+zip"},
    {"gif", "image/gif"},
    {"gz", "application/gzip"},
    {"htm", "text/html"},
    {"html", "text/html"},
    {"ico", "image/x-icon"},
    {"jar", "application/java-archive"},
    {"jpeg", "image/jpeg"},
    {"jpg", "image/jpeg"},
    {"js", "application/javascript"},
    {"json", "application/json"},
    {"m4a", "audio/x-m4a"},
    {"map", "application/json"},
    {"mjs", "application/javascript"},
    {"mp3", "audio/mpeg"},
    {"mp4", "video/mp4"},
    {"mpeg", "video/mpeg"},
    {"ogg", "audio/ogg"},
    {"otf", "font/otf"},
    {"pdf", "application/pdf"},
    {"png", "image/png"},
    {"rss", "application/rss+xml"},
    {"svg", "image/svg+xml"},
    {"svgz", "image/svg+xml"},
    {"tar", "application/x-tar"},
    {"tif", "image/tiff"},
    {"tiff", "image/tiff"},
    {"ttf", "font/ttf"},
    {"txt", "text/plain"},
    {"wasm", "application/wasm"},
    {"webm", "video/webm"},
    {"webmanifest", "application/manifest+json"},
    {"webp", "image/webp"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"xhtml", "application/xhtml+xml"},
    {"xml", "text/xml"},
    {"zip", "application/zip"},
};
static const struct mime_types builtin_types = {builtin, sizeof(builtin) / sizeof(builtin[0])};

static int mime_cmp(const void *a, const void *b)
{
    return strcmp(((const struct mime_type *)a)->ext, ((const struct mime_type *)b)->ext);
}

const char *static_mime_type(const struct mime_types *t, const char *name, size_t len)
{
    if (!t)
        t = &builtin_types;
    size_t dot = len;
    while (dot > 0 && name[dot - 1] != '.' && name[dot - 1] != '/')
        dot--;
    if (dot == 0 || name[dot - 1] != '.' || dot == len || len - dot > 31)
        return NULL;
    char ext[32];
    size_t n = len - dot;
    for (size_t i = 0; i < n; i++) {
        char c = name[dot + i];
        ext[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    ext[n] = '\0';
    struct mime_type key = {ext, NULL};
    const struct mime_type *m = bsearch(&key, t->v, t->n, sizeof(*t->v), mime_cmp);
    return m ? m->type : NULL;
}

/* ---- configuration ---- */

void static_conf_init(struct static_conf *c)
{
    memset(c, 0, sizeof(*c));
    c->sendfile = CF_UNSET_FLAG;
    c->tcp_nopush = CF_UNSET_FLAG;
    c->etag = CF_UNSET_FLAG;
    c->gzip_static = c->autoindex = c->autoindex_format = CF_UNSET_INT;
    c->autoindex_exact_size = c->autoindex_localtime = CF_UNSET_FLAG;
}

void static_conf_merge(struct static_conf *c, const struct static_conf *p)
{
    if (!c->root_set) {
        c->root = p->root;
        c->alias = p->alias;
        c->alias_loc = p->alias_loc;
        c->root_set = p->root_set;
    }
    if (!c->index_set) {
        c->index = p->index;
        c->nindex = p->nindex;
        c->index_set = p->index_set;
    }
    if (!c->types)
        c->types = p->types;
    if (c->sendfile == CF_UNSET_FLAG)
        c->sendfile = p->sendfile;
    if (c->tcp_nopush == CF_UNSET_FLAG)
        c->tcp_nopush = p->tcp_nopush;
    if (c->etag == CF_UNSET_FLAG)
        c->etag = p->etag;
    if (c->gzip_static == CF_UNSET_INT)
        c->gzip_static = p->gzip_static;
    if (c->autoindex == CF_UNSET_INT)
        c->autoindex = p->autoindex;
    if (c->autoindex_format == CF_UNSET_INT)
        c->autoindex_format = p->autoindex_format;
    if (c->autoindex_exact_size == CF_UNSET_FLAG)
        c->autoindex_exact_size = p->autoindex_exact_size;
    if (c->autoindex_localtime == CF_UNSET_FLAG)
        c->autoindex_localtime = p->autoindex_localtime;
}

void static_conf_defaults(struct static_conf *c)
{
    static const char *index_html[] = {"index.html"};
    if (!c->index_set) {
        c->index = index_html;
        c->nindex = 1;
    }
    if (c->sendfile == CF_UNSET_FLAG)
        c->sendfile = 1;
    if (c->tcp_nopush == CF_UNSET_FLAG)
        c->tcp_nopush = 0;
    if (c->etag == CF_UNSET_FLAG)
        c->etag = 1;
    if (c->gzip_static == CF_UNSET_INT)
        c->gzip_static = GZIP_STATIC_OFF;
    if (c->autoindex == CF_UNSET_INT)
        c->autoindex = 0;
    if (c->autoindex_format == CF_UNSET_INT)
        c->autoindex_format = AUTOINDEX_HTML;
    if (c->autoindex_exact_size == CF_UNSET_FLAG)
        c->autoindex_exact_size = 1;
    if (c->autoindex_localtime == CF_UNSET_FLAG)
        c->autoindex_localtime = 0;
}

bool static_applies(const struct static_conf *c)
{
    return c->root || c->alias || c->ntry;
}

#define SC(conf) ((struct static_conf *)((char *)(conf) + d->offset))

/* gzip_static off | on | always, autoindex_format html | xml | json | jsonp */
static int set_word(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    static const char *const gz[] = {"off", "on", "always", NULL};
    static const char *const fmt[] = {"html", "xml", "json", "jsonp", NULL};
    bool is_gz = !strcmp(d->name, "gzip_static");
    const char *const *words = is_gz ? gz : fmt;
    int *field = (int *)((char *)conf + d->offset);
    for (int i = 0; words[i]; i++)
        if (!strcmp(n->args[0], words[i])) {
            *field = i;
            return 0;
        }
    return cf_error(
        cx, n, "invalid value \"%s\" in \"%s\" directive, it must be %s", n->args[0], d->name,
        is_gz ? "\"on\", \"off\" or \"always\"" : "\"html\", \"xml\", \"json\" or \"jsonp\"");
}

static int set_root(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    struct static_conf *c = SC(conf);
    bool alias = strcmp(d->name, "alias") == 0;
    if (c->root_set)
        return cf_error(cx, n, "\"%s\" directive is duplicate%s", d->name,
                        c->alias && !alias ? ", \"alias\" directive was specified earlier"
                        : c->root && alias ? ", \"root\" directive was specified earlier"
                                           : "");
    const char *path = n->args[0];
    if (path[0] != '/' && path[0] != '$')
        return cf_error(cx, n, "\"%s\" needs an absolute path (\"%s\")", d->name, path);
    struct tmpl *t = conf_tmpl(cx, n, path);
    if (!t)
        return -1;
    if (alias) {
        c->alias = t;
        c->alias_loc = conf_current_location(cx);
    } else {
        c->root = t;
    }
    c->root_set = true;
    return 0;
}

static int set_index(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    struct static_conf *c = SC(conf);
    if (c->index_set)
        return cf_error(cx, n, "\"index\" directive is duplicate");
    const char **v = arena_alloc(cx->arena, n->nargs * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    for (size_t i = 0; i < n->nargs; i++) {
        const char *s = n->args[i];
        if (!s[0] || strchr(s, '/') || strchr(s, '$'))
            return cf_error(cx, n, "index \"%s\" must be a file name (no '/', no variables)", s);
        v[i] = s;
    }
    c->index = v;
    c->nindex = n->nargs;
    c->index_set = true;
    return 0;
}

static int set_try_files(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                         void *conf)
{
    struct static_conf *c = SC(conf);
    if (c->ntry)
        return cf_error(cx, n, "\"try_files\" directive is duplicate");
    struct tmpl **v = arena_alloc(cx->arena, n->nargs * sizeof(*v));
    if (!v)
        return cf_error(cx, n, "out of memory");
    for (size_t i = 0; i < n->nargs; i++) {
        const char *s = n->args[i];
        if (i == n->nargs - 1 && s[0] == '=') {
            char *end;
            long code = strtol(s + 1, &end, 10);
            if (*end || code < 200 || code > 599)
                return cf_error(cx, n, "invalid code \"%s\"", s);
        }
        if (!(v[i] = conf_tmpl(cx, n, s)))
            return -1;
    }
    c->try_files = v;
    c->ntry = n->nargs;
    return 0;
}

/* types { type ext ...; ... }: a whole table for this level (a level
 * without one inherits its parent's, as nginx). */
static int set_types(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    struct static_conf *c = SC(conf);
    if (c->types)
        return cf_error(cx, n, "\"types\" directive is duplicate");
    size_t cap = 0;
    for (const struct cf_node *e = n->children; e; e = e->next)
        cap += e->nargs;
    struct mime_types *t = arena_calloc(cx->arena, sizeof(*t));
    struct mime_type *v = arena_alloc(cx->arena, (cap ? cap : 1) * sizeof(*v));
    if (!t || !v)
        return cf_error(cx, n, "out of memory");
    size_t k = 0;
    for (const struct cf_node *e = n->children; e; e = e->next) {
        if (e->is_block || !e->nargs)
            return cf_error(cx, e, "invalid types entry \"%s\": \"type extension ...;\"", e->name);
        for (size_t i = 0; i < e->nargs; i++) {
            char *ext = arena_strdup(cx->arena, e->args[i]);
            if (!ext)
                return cf_error(cx, e, "out of memory");
            for (char *p = ext; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p + 32);
            /* nginx keeps the first type of a duplicate extension, with a warning */
            bool dup = false;
            for (size_t j = 0; j < k && !dup; j++)
                dup = strcmp(v[j].ext, ext) == 0;
            if (dup) {
                log_write(LOG_WARN, "%s:%d: duplicate extension \"%s\", content type: \"%s\"",
                          e->file, e->line, ext, e->name);
                continue;
            }
            v[k++] = (struct mime_type){ext, e->name};
        }
    }
    qsort(v, k, sizeof(*v), mime_cmp);
    t->v = v;
    t->n = k;
    c->types = t;
    return 0;
}

#define OFF_ST(f) (offsetof(struct loc_conf, st) + offsetof(struct static_conf, f))
#define LOC_ANY   (CF_HTTP | CF_SERVER | CF_LOCATION)

static const struct cf_directive static_directives[] = {
    {"root", LOC_ANY, 1, 1, false, set_root, CONF_LOC, offsetof(struct loc_conf, st), "path", "-",
     "serve files from path + $uri in a location without proxy_pass (absolute path; variables "
     "allowed)"},
    {"alias", CF_LOCATION, 1, 1, false, set_root, CONF_LOC, offsetof(struct loc_conf, st), "path",
     "-",
     "serve files from path + the URI after the location's prefix (in a regex location: path "
     "is the whole file name, with $1..)"},
    {"index", LOC_ANY, 1, CF_ARGS_ANY, false, set_index, CONF_LOC, offsetof(struct loc_conf, st),
     "file ...", "index.html",
     "for a URI ending in '/': the first of these files that exists in the directory (none: "
     "403)"},
    {"try_files", CF_SERVER | CF_LOCATION, 2, CF_ARGS_ANY, false, set_try_files, CONF_LOC,
     offsetof(struct loc_conf, st), "file ... uri | file ... =code", "-",
     "serve the first file that exists (a name ending in '/' means a directory); else an "
     "internal redirect to the last argument (a URI or @location, method and body kept) or "
     "=code"},
    {"types", LOC_ANY, 0, 0, true, set_types, CONF_LOC, offsetof(struct loc_conf, st),
     "{ type extension ...; }", "a built-in table of common types",
     "Content-Type of files by extension (include mime.types works); a level with a types "
     "block uses only it"},
    {"sendfile", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_ST(sendfile), "on | off", "on",
     "send file bodies (static files, large cached responses, spooled request bodies) with "
     "sendfile(2) on plain connections; off: read and write them (nginx's default is off)"},
    {"tcp_nopush", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_ST(tcp_nopush), "on | off",
     "off",
     "accepted for nginx configs: the head of a sendfile response always goes out with "
     "MSG_MORE, in the same packet as the first body bytes, which is what tcp_nopush does"},
    {"etag", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_ST(etag), "on | off", "on",
     "send an ETag (\"mtime-size\" in hex, as nginx) with files"},
    {"log_not_found", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     offsetof(struct loc_conf, log_not_found), "on | off", "on",
     "log files that are not found to the error log"},
    {"gzip_static", LOC_ANY, 1, 1, false, set_word, CONF_LOC, OFF_ST(gzip_static),
     "on | off | always", "off",
     "serve FILE.gz, if it exists, instead of FILE to clients that take gzip (on: by "
     "Accept-Encoding, gzip_http_version, gzip_disable and gzip_proxied; always: to every "
     "client), with Content-Encoding: gzip, FILE's Content-Type and gzip_vary's Vary"},
    {"autoindex", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC, OFF_ST(autoindex), "on | off", "off",
     "list a directory asked for with a trailing '/' that has no index file (dot files are "
     "not listed)"},
    {"autoindex_format", LOC_ANY, 1, 1, false, set_word, CONF_LOC, OFF_ST(autoindex_format),
     "html | xml | json | jsonp", "html",
     "the listing's format (jsonp: wrapped in the callback argument's function name)"},
    {"autoindex_exact_size", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_ST(autoindex_exact_size), "on | off", "on",
     "HTML listing: sizes in bytes, or rounded to K, M, G"},
    {"autoindex_localtime", LOC_ANY, 1, 1, false, cf_set_flag, CONF_LOC,
     OFF_ST(autoindex_localtime), "on | off", "off",
     "HTML and XML listings: times in the server's local time instead of UTC"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module static_cf_module = {"static", static_directives};

/* ---- serving ---- */

struct sfile {
    struct exchange *ex;
    struct buf *tok; /* keeps fd open; queued sendfile items hold it too */
    int fd;
    uint64_t pos, end;
    bool sending;
    bool by_file; /* sendfile(2) pieces (plain HTTP/1), else pread */
};

#define FILE_PIECE ((uint64_t)1 << 30) /* one sendfile queue item */

static void fd_close_cb(void *ctx)
{
    close((int)(intptr_t)ctx);
}

static void sfile_release(void *ctx)
{
    struct sfile *sf = ctx;
    sf->sending = false;
    if (sf->tok)
        buf_unref(sf->tok);
    sf->tok = NULL;
}

/* A path to open for `uri`: root + uri, or alias + what follows the
 * location's prefix (alias alone in a regex location). NULL when it would
 * hold a NUL or a ".." segment ($uri cannot, but a rewrite or try_files
 * argument made of other variables can). */
static char *file_path(struct exchange *ex, struct slice uri)
{
    const struct static_conf *c = &ex->lc->st;
    struct slice base, rest = uri;
    if (c->alias) {
        base = tmpl_eval(ex, c->alias, ESC_NONE);
        /* the prefix of the location that set alias goes, also in the
         * locations nested in it that inherit it (nginx) */
        const struct location *loc = c->alias_loc;
        if (!loc || loc->match == LOC_REGEX || loc->match == LOC_REGEX_CI) {
            rest = SLICE_NULL;
        } else if (loc->match != LOC_NAMED) {
            struct slice prefix = slice_make(loc->pattern, loc->pattern_len);
            if (!slice_starts_with(uri, prefix))
                return NULL; /* (a try_files argument elsewhere): not under the alias */
            rest = slice_make(uri.p + prefix.len, uri.len - prefix.len);
        }
    } else if (c->root) {
        base = tmpl_eval(ex, c->root, ESC_NONE);
    } else {
        return NULL;
    }
    char *p = arena_alloc(&ex->arena, base.len + rest.len + 1);
    if (!p)
        return NULL;
    if (base.len)
        memcpy(p, base.p, base.len);
    if (rest.len)
        memcpy(p + base.len, rest.p, rest.len);
    size_t n = base.len + rest.len;
    p[n] = '\0';
    if (memchr(p, '\0', n) || !n)
        return NULL;
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] == '.' && p[i + 1] == '.' && (i == 0 || p[i - 1] == '/') &&
            (i + 2 == n || p[i + 2] == '/'))
            return NULL;
    }
    return p;
}

static void not_found(struct exchange *ex, const char *path, int err)
{
    int status =
        err == EACCES ? 403
        : (err == ENOENT || err == ENOTDIR || err == ENAMETOOLONG || err == ELOOP || err == 0)
            ? 404
            : 500;
    if (status != 404 || ex->lc->log_not_found)
        log_write(status == 500 ? LOG_CRIT : LOG_ERR, "*%llu open() \"%s\" failed (%d: %s)",
                  (unsigned long long)ex->id, path ? path : "(invalid path)", err,
                  err ? strerror(err) : "not a file");
    proxy_respond_error(ex, status);
}

static void send_more(void *ctx)
{
    struct sfile *sf = ctx;
    struct exchange *ex = sf->ex;
    if (!sf->sending)
        return;
    while (sf->by_file && sf->pos < sf->end) {
        /* a piece at a time: the queue holds few items, and a file may be
         * larger than all of them together */
        if (ex->client->pending(ex) >= SEND_HIGH)
            return; /* the drained hook brings us back */
        uint64_t n = sf->end - sf->pos < FILE_PIECE ? sf->end - sf->pos : FILE_PIECE;
        int r = ex->client->send_file(ex, sf->tok, sf->fd, sf->pos, (size_t)n);
        if (r < 0)
            return; /* the client is gone: its side ends the exchange */
        if (r == 1) {
            sf->by_file = false; /* not possible here: read it */
            break;
        }
        sf->pos += n;
    }
    while (sf->pos < sf->end) {
        if (ex->client->pending(ex) >= SEND_HIGH)
            return; /* the drained hook brings us back */
        uint64_t left = sf->end - sf->pos;
        struct buf *seg = buf_new(BUF_SEG_SIZE);
        if (!seg) {
            sf->sending = false;
            ex->client->done(ex, true);
            return;
        }
        size_t want = left < seg->cap ? (size_t)left : seg->cap;
        ssize_t r;
        do
            r = pread(sf->fd, seg->data, want, (off_t)sf->pos);
        while (r < 0 && errno == EINTR);
        if (r <= 0) {
            /* the file shrank or went bad after the head was sent */
            log_write(LOG_CRIT, "*%llu pread() of a file failed (%s)", (unsigned long long)ex->id,
                      r < 0 ? strerror(errno) : "file truncated");
            buf_unref(seg);
            sf->sending = false;
            ex->client->done(ex, true);
            return;
        }
        struct body_piece piece = {seg, seg->data, (size_t)r};
        sf->pos += (uint64_t)r;
        int s = ex->client->send_body(ex, &piece);
        buf_unref(seg);
        if (s < 0)
            return;
    }
    sf->sending = false;
    ex->client->send_end(ex, SLICE_NULL);
    ex->client->done(ex, false);
}

static struct slice req_field(struct exchange *ex, const char *name, bool *found)
{
    return cache_field(ex->req_fields, ex->nreq_fields, name, found);
}

/* RFC 9110 13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match,
 * If-Modified-Since. Returns 412, 304 or 0 (go on). */
static int preconditions(struct exchange *ex, struct slice etag, time_t mtime)
{
    bool found;
    struct slice v = req_field(ex, "if-match", &found);
    if (found) {
        v = slice_trim_ows(v);
        bool ok = v.len == 1 && v.p[0] == '*';
        /* strong comparison: a weak tag of ours never matches */
        for (size_t i = 0; !ok && etag.len && i + etag.len <= v.len; i++)
            ok = memcmp(v.p + i, etag.p, etag.len) == 0 && (i == 0 || v.p[i - 1] != '/');
        if (!ok)
            return 412;
    } else {
        v = req_field(ex, "if-unmodified-since", &found);
        int64_t t = found ? http_date_parse(v) : -1;
        if (t >= 0 && (int64_t)mtime > t)
            return 412;
    }
    v = req_field(ex, "if-none-match", &found);
    if (found)
        return etag.len && cache_etag_match(v, etag) ? 304 : 0;
    v = req_field(ex, "if-modified-since", &found);
    int64_t t = found ? http_date_parse(v) : -1;
    return t >= 0 && conf_ims_matches(ex->lc->if_modified_since, (int64_t)mtime, t) ? 304 : 0;
}

/* Answer with the open file fd (ownership taken). */
/* `path` names the file for its Content-Type; `gz`: fd is its .gz twin
 * (gzip_static), sent with Content-Encoding: gzip. */
static void serve_fd(struct exchange *ex, const char *path, int fd, const struct stat *st, bool gz)
{
    const struct loc_conf *lc = ex->lc;
    const struct static_conf *c = &lc->st;
    if (ex->method_id != HTTP_M_GET && ex->method_id != HTTP_M_HEAD) {
        close(fd);
        proxy_respond_error(ex, 405);
        return;
    }
    uint64_t size = (uint64_t)st->st_size;
    char *lm = arena_alloc(&ex->arena, 30);
    char *et = arena_alloc(&ex->arena, 48);
    char *cr = arena_alloc(&ex->arena, 80);
    size_t cap = 10 + LOC_EXTRA_FIELDS(lc);
    struct http_field *in = arena_alloc(&ex->arena, cap * sizeof(*in));
    struct http_field *out = arena_alloc(&ex->arena, cap * sizeof(*out));
    struct sfile *sf = arena_calloc(&ex->arena, sizeof(*sf));
    if (!lm || !et || !cr || !in || !out || !sf) {
        close(fd);
        proxy_respond_error(ex, 500);
        return;
    }
    sf->ex = ex;
    sf->fd = fd;
    sf->tok = buf_wrap(fd_close_cb, (void *)(intptr_t)fd);
    if (!sf->tok) {
        close(fd);
        proxy_respond_error(ex, 500);
        return;
    }
    if (proxy_attach(ex, send_more, sfile_release, sf) < 0) {
        buf_unref(sf->tok);
        proxy_respond_error(ex, 500);
        return;
    }
    struct slice lmv = slice_make(lm, http_date_format(st->st_mtime, lm));
    struct slice etag = SLICE_NULL;
    if (c->etag) {
        int k = snprintf(et, 48, "\"%llx-%llx\"", (unsigned long long)st->st_mtime,
                         (unsigned long long)size);
        etag = slice_make(et, (size_t)k);
    }
    int forced = proxy_forced_status(ex);
    int status = forced ? forced : 200;
    uint64_t first = 0, last = size ? size - 1 : 0;
    bool partial = false;
    if (!forced) {
        int pc = preconditions(ex, etag, st->st_mtime);
        if (pc == 412) {
            proxy_respond_error(ex, 412);
            return;
        }
        if (pc == 304)
            status = 304;
    }
    if (status == 200 && ex->method_id == HTTP_M_GET && lc->max_ranges != 0) {
        bool found, ir_found;
        struct slice range = req_field(ex, "range", &found);
        struct slice ir = slice_trim_ows(req_field(ex, "if-range", &ir_found));
        /* If-Range: our strong tag, or our exact Last-Modified */
        bool ir_ok =
            !ir_found || (ir.len && ir.p[0] == '"' ? slice_eq(ir, etag) : slice_eq(ir, lmv));
        if (found && ir_ok) {
            int r = cache_range(range, size, &first, &last);
            if (r == 0) {
                int k = snprintf(cr, 80, "bytes */%llu", (unsigned long long)size);
                struct http_field f416 = {SLICE_LIT("Content-Range"), slice_make(cr, (size_t)k)};
                size_t n = proxy_response_fields(ex, 416, &f416, 1, out, cap);
                struct resp_head h = {
                    .status = 416, .fields = out, .nfields = n, .content_length = 0};
                if (ex->client->send_head(ex, &h) < 0)
                    return;
                ex->client->send_end(ex, SLICE_NULL);
                ex->client->done(ex, false);
                return;
            }
            if (r == 1) {
                status = 206;
                partial = true;
            }
        }
    }
    size_t n = 0;
    if (status != 304) {
        const char *slash = strrchr(path, '/');
        const char *name = slash ? slash + 1 : path;
        const char *type = static_mime_type(c->types, name, strlen(name));
        in[n++] = (struct http_field){SLICE_LIT("Content-Type"),
                                      slice_cstr(type ? type : lc->default_type)};
    }
    in[n++] = (struct http_field){SLICE_LIT("Last-Modified"), lmv};
    if (etag.len)
        in[n++] = (struct http_field){SLICE_LIT("ETag"), etag};
    if (!forced && lc->max_ranges != 0)
        in[n++] = (struct http_field){SLICE_LIT("Accept-Ranges"), SLICE_LIT("bytes")};
    if (gz && status != 304)
        in[n++] = (struct http_field){SLICE_LIT("Content-Encoding"), SLICE_LIT("gzip")};
    if (gz && lc->z.vary)
        in[n++] = (struct http_field){SLICE_LIT("Vary"), SLICE_LIT("Accept-Encoding")};
    if (partial) {
        int k = snprintf(cr, 80, "bytes %llu-%llu/%llu", (unsigned long long)first,
                         (unsigned long long)last, (unsigned long long)size);
        in[n++] = (struct http_field){SLICE_LIT("Content-Range"), slice_make(cr, (size_t)k)};
    }
    n = proxy_response_fields(ex, status, in, n, out, cap);
    struct resp_head h = {.status = status, .fields = out, .nfields = n};
    if (status == 304) {
        h.no_body = true;
        h.content_length = -1;
    } else {
        h.content_length = size ? (int64_t)(last - first + 1) : 0;
        h.no_body = ex->method_id == HTTP_M_HEAD;
    }
    sf->pos = first;
    sf->end = h.no_body || !size ? first : last + 1;
    if (ex->client->send_head(ex, &h) < 0)
        return;
    sf->sending = true;
    sf->by_file = c->sendfile && ex->client->send_file;
    send_more(sf);
}

/* ---- autoindex ---- */

struct dent {
    char *name;
    bool dir, file;
    time_t mtime;
    uint64_t size;
};

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* text for HTML and XML: & < > " escaped */
static void sb_html(struct sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&':
            sb_str(b, "&amp;");
            break;
        case '<':
            sb_str(b, "&lt;");
            break;
        case '>':
            sb_str(b, "&gt;");
            break;
        case '"':
            sb_str(b, "&quot;");
            break;
        default:
            sb_add(b, s + i, 1);
        }
    }
}

/* a name in an href: everything but unreserved characters percent-encoded */
static void sb_href(struct sbuf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            sb_add(b, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sb_add(b, e, 3);
        }
    }
}

/* a JSON string's content: ", \ and control bytes escaped */
static void sb_json(struct sbuf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_add(b, e, 2);
        } else if (c < 0x20) {
            sb_printf(b, "\\u%04x", c);
        } else {
            sb_add(b, (const char *)&c, 1);
        }
    }
}

static int dent_cmp(const void *a, const void *b)
{
    const struct dent *x = a, *y = b;
    if (x->dir != y->dir)
        return x->dir ? -1 : 1; /* directories first, as nginx */
    return strcmp(x->name, y->name);
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xc0) != 0x80;
    return k;
}

/* Bytes of the first `chars` UTF-8 characters of s. */
static size_t utf8_prefix(const char *s, size_t n, size_t chars)
{
    size_t i = 0, k = 0;
    while (i < n) {
        if (((unsigned char)s[i] & 0xc0) != 0x80) {
            if (k == chars)
                break;
            k++;
        }
        i++;
    }
    return i;
}

static void listing_html(struct sbuf *b, struct exchange *ex, struct slice uri,
                         const struct dent *v, size_t n, bool exact, bool local)
{
    sb_str(b, "<html>\r\n<head><title>Index of ");
    sb_html(b, uri.p, uri.len);
    sb_str(b, "</title></head>\r\n<body>\r\n<h1>Index of ");
    sb_html(b, uri.p, uri.len);
    sb_str(b, "</h1><hr><pre><a href=\"../\">../</a>\r\n");
    for (size_t i = 0; i < n; i++) {
        const struct dent *e = &v[i];
        size_t nl = strlen(e->name);
        sb_str(b, "<a href=\"");
        sb_href(b, e->name);
        if (e->dir)
            sb_str(b, "/");
        sb_str(b, "\">");
        /* the shown name: at most 50 columns, longer ones cut to 47 and "..>" */
        size_t cols = utf8_chars(e->name, nl) + e->dir;
        if (cols > 50) {
            sb_html(b, e->name, utf8_prefix(e->name, nl, 47));
            sb_str(b, "..&gt;</a>");
            cols = 50;
        } else {
            sb_html(b, e->name, nl);
            sb_str(b, e->dir ? "/</a>" : "</a>");
        }
        for (; cols < 50; cols++)
            sb_add(b, " ", 1);
        struct tm tm;
        if (local)
            localtime_r(&e->mtime, &tm);
        else
            gmtime_r(&e->mtime, &tm);
        char date[32];
        strftime(date, sizeof(date), "%d-%b-%Y %H:%M", &tm);
        sb_printf(b, " %s ", date);
        if (e->dir || !e->file) {
            sb_str(b, "                  -");
        } else if (exact) {
            sb_printf(b, "%19llu", (unsigned long long)e->size);
        } else {
            /* nginx's rounding: to the nearest K, M or G; bytes below 1K */
            uint64_t s = e->size;
            char scale = 0;
            if (s > 1024ull * 1024 * 1024 - 1) {
                scale = 'G';
                s = s / (1024ull * 1024 * 1024) +
                    (s % (1024ull * 1024 * 1024) > 512ull * 1024 * 1024);
            } else if (s > 1024 * 1024 - 1) {
                scale = 'M';
                s = s / (1024 * 1024) + (s % (1024 * 1024) > 512 * 1024);
            } else if (s > 9999) {
                scale = 'K';
                s = s / 1024 + (s % 1024 > 512);
            }
            if (scale)
                sb_printf(b, "%6llu%c", (unsigned long long)s, scale);
            else
                sb_printf(b, " %6llu", (unsigned long long)s);
        }
        sb_str(b, "\r\n");
    }
    sb_str(b, "</pre><hr></body>\r\n</html>\r\n");
    (void)ex;
}

static void listing_xml(struct sbuf *b, const struct dent *v, size_t n, bool local)
{
    sb_str(b, "<?xml version=\"1.0\"?>\r\n<list>\r\n");
    for (size_t i = 0; i < n; i++) {
        const struct dent *e = &v[i];
        struct tm tm;
        if (local)
            localtime_r(&e->mtime, &tm);
        else
            gmtime_r(&e->mtime, &tm);
        char date[40];
        strftime(date, sizeof(date), local ? "%Y-%m-%dT%H:%M:%S%z" : "%Y-%m-%dT%H:%M:%SZ", &tm);
        const char *tag = e->dir ? "directory" : e->file ? "file" : "other";
        sb_printf(b, "<%s mtime=\"%s\"", tag, date);
        if (e->file)
            sb_printf(b, " size=\"%llu\"", (unsigned long long)e->size);
        sb_str(b, ">");
        sb_html(b, e->name, strlen(e->name));
        sb_printf(b, "</%s>\r\n", tag);
    }
    sb_str(b, "</list>\r\n");
}

static void listing_json(struct sbuf *b, const struct dent *v, size_t n)
{
    sb_str(b, "[\r\n");
    for (size_t i = 0; i < n; i++) {
        const struct dent *e = &v[i];
        char date[30];
        date[http_date_format(e->mtime, date)] = '\0';
        sb_str(b, "{ \"name\":\"");
        sb_json(b, e->name);
        sb_printf(b, "\", \"type\":\"%s\", \"mtime\":\"%s\"",
                  e->dir    ? "directory"
                  : e->file ? "file"
                            : "other",
                  date);
        if (e->file)
            sb_printf(b, ", \"size\":%llu", (unsigned long long)e->size);
        sb_str(b, i + 1 < n ? " },\r\n" : " }\r\n");
    }
    sb_str(b, "]"); /* (no line end, as nginx) */
}

/* autoindex: the directory `dir` (the file name of `uri`, which ends in
 * '/') listed in autoindex_format. Dot files are left out, directories come
 * first, then names in byte order. */
static void autoindex(struct exchange *ex, struct slice uri, const char *dir)
{
    const struct static_conf *c = &ex->lc->st;
    if (ex->method_id != HTTP_M_GET && ex->method_id != HTTP_M_HEAD) {
        proxy_respond_error(ex, 405);
        return;
    }
    struct slice cb = SLICE_NULL;
    if (c->autoindex_format == AUTOINDEX_JSONP) {
        cb = vars_arg(ex, SLICE_LIT("callback"));
        for (size_t i = 0; i < cb.len; i++) {
            char ch = cb.p[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '$')) {
                log_write(LOG_ERR, "*%llu autoindex: invalid callback name",
                          (unsigned long long)ex->id);
                proxy_respond_error(ex, 400);
                return;
            }
        }
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        int e = errno;
        if (dfd >= 0)
            close(dfd);
        not_found(ex, dir, e);
        return;
    }
    struct dent *v = NULL;
    size_t n = 0, cap = 0;
    bool fail = false;
    struct dirent *de;
    while (!fail && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, 0) < 0) {
            /* a dangling symlink is listed as what it is; others are left out */
            if ((errno != ENOENT && errno != ELOOP) ||
                fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                continue;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            struct dent *nv = realloc(v, nc * sizeof(*nv));
            if (!nv) {
                fail = true;
                break;
            }
            v = nv;
            cap = nc;
        }
        char *name = strdup(de->d_name);
        if (!name) {
            fail = true;
            break;
        }
        v[n++] = (struct dent){name, S_ISDIR(st.st_mode), S_ISREG(st.st_mode), st.st_mtime,
                               (uint64_t)st.st_size};
    }
    closedir(d);
    struct sbuf b = {0};
    if (!fail) {
        qsort(v, n, sizeof(*v), dent_cmp);
        switch (c->autoindex_format) {
        case AUTOINDEX_XML:
            listing_xml(&b, v, n, c->autoindex_localtime);
            break;
        case AUTOINDEX_JSON:
        case AUTOINDEX_JSONP:
            if (c->autoindex_format == AUTOINDEX_JSONP) { /* nginx's exact wrapping */
                sb_str(&b, "/* callback */\r\n");
                sb_add(&b, cb.p, cb.len);
                sb_str(&b, "(");
            }
            listing_json(&b, v, n);
            if (c->autoindex_format == AUTOINDEX_JSONP)
                sb_str(&b, ");");
            break;
        default:
            listing_html(&b, ex, uri, v, n, c->autoindex_exact_size, c->autoindex_localtime);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
    char *body = !fail && !b.oom ? arena_alloc(&ex->arena, b.len ? b.len : 1) : NULL;
    if (!body) {
        free(b.p);
        proxy_respond_error(ex, 500);
        return;
    }
    memcpy(body, b.p, b.len);
    free(b.p);
    static const char *const types[] = {"text/html", "text/xml", "application/json",
                                        "application/javascript"};
    proxy_answer(ex, 200, slice_cstr(types[c->autoindex_format]), slice_make(body, b.len));
}

/* A URI ending in '/': the first index file that exists, by an internal
 * redirect to uri + name (as nginx: another location may serve it, e.g. a
 * .php one), else 403 for a directory, 404 for none. */
static void serve_index(struct exchange *ex, struct slice uri, const char *dir)
{
    const struct static_conf *c = &ex->lc->st;
    size_t dl = strlen(dir);
    for (size_t i = 0; i < c->nindex; i++) {
        size_t nl = strlen(c->index[i]);
        char *p = arena_alloc(&ex->arena, dl + nl + 1);
        char *u = arena_alloc(&ex->arena, uri.len + nl);
        if (!p || !u) {
            proxy_respond_error(ex, 500);
            return;
        }
        memcpy(p, dir, dl);
        memcpy(p + dl, c->index[i], nl + 1);
        struct stat st;
        if (stat(p, &st) < 0) {
            if (errno != ENOENT) {
                not_found(ex, p, errno);
                return;
            }
            continue;
        }
        if (S_ISDIR(st.st_mode))
            continue;
        memcpy(u, uri.p, uri.len);
        memcpy(u + uri.len, c->index[i], nl);
        proxy_internal_redirect(ex, slice_make(u, uri.len + nl), true);
        return;
    }
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (c->autoindex) {
            autoindex(ex, uri, dir);
            return;
        }
        log_write(LOG_ERR, "*%llu directory index of \"%s\" is forbidden",
                  (unsigned long long)ex->id, dir);
        proxy_respond_error(ex, 403);
        return;
    }
    not_found(ex, dir, errno);
}

/* A directory asked for without its '/': redirect to it (arguments kept). */
static void redirect_to_dir(struct exchange *ex, struct slice uri)
{
    char *loc = ex->has_args ? arena_printf(&ex->arena, "%.*s/?%.*s", (int)uri.len, uri.p,
                                            (int)ex->args.len, ex->args.p)
                             : arena_printf(&ex->arena, "%.*s/", (int)uri.len, uri.p);
    if (!loc) {
        proxy_respond_error(ex, 500);
        return;
    }
    /* the path is decoded: escape what a Location cannot hold */
    size_t ll = strlen(loc);
    char *esc = arena_alloc(&ex->arena, ll * 3 + 1);
    if (!esc) {
        proxy_respond_error(ex, 500);
        return;
    }
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0, qpos = ex->has_args ? uri.len + 1 : ll;
    for (size_t i = 0; i < ll; i++) {
        unsigned char ch = (unsigned char)loc[i];
        if (i < qpos && (ch <= 0x20 || ch >= 0x7f || ch == '%' || ch == '?' || ch == '#' ||
                         ch == '"' || ch == '\\')) {
            esc[o++] = '%';
            esc[o++] = hex[ch >> 4];
            esc[o++] = hex[ch & 15];
        } else {
            esc[o++] = (char)ch;
        }
    }
    proxy_local_redirect(ex, 301, slice_make(esc, o));
}

/* Serve `uri` (decoded, like $uri) from the file system. */
static void serve_uri(struct exchange *ex, struct slice uri)
{
    char *path = file_path(ex, uri);
    if (!path) {
        not_found(ex, NULL, 0);
        return;
    }
    if (uri.len && uri.p[uri.len - 1] == '/') {
        serve_index(ex, uri, path);
        return;
    }
    const struct static_conf *c = &ex->lc->st;
    if (c->gzip_static == GZIP_STATIC_ALWAYS ||
        (c->gzip_static == GZIP_STATIC_ON && compress_gzip_static_ok(ex))) {
        /* FILE.gz stands in for FILE if it is there (a missing one is no error) */
        size_t pl = strlen(path);
        char *gzp = arena_alloc(&ex->arena, pl + 4);
        int gfd = -1;
        struct stat gst;
        if (gzp) {
            memcpy(gzp, path, pl);
            memcpy(gzp + pl, ".gz", 4);
            gfd = ofc_open(&ex->lc->ofc, loop_now_ms(ex->loop), gzp, &gst);
        }
        if (gfd < 0 && gzp && errno != ENOENT && errno != ENOTDIR) {
            not_found(ex, gzp, errno);
            return;
        }
        if (gfd >= 0 && S_ISREG(gst.st_mode)) {
            serve_fd(ex, path, gfd, &gst, true);
            return;
        }
        if (gfd >= 0)
            close(gfd);
    }
    struct stat st;
    int fd = ofc_open(&ex->lc->ofc, loop_now_ms(ex->loop), path, &st);
    if (fd < 0) {
        not_found(ex, path, errno);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        redirect_to_dir(ex, uri);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        not_found(ex, path, 0);
        return;
    }
    serve_fd(ex, path, fd, &st, false);
}

static void try_files(struct exchange *ex)
{
    const struct static_conf *c = &ex->lc->st;
    for (size_t i = 0; i + 1 < c->ntry; i++) {
        struct slice v = tmpl_eval(ex, c->try_files[i], ESC_NONE);
        if (!v.len)
            continue;
        bool dir = v.p[v.len - 1] == '/';
        char *path = file_path(ex, v);
        struct stat st;
        if (!path || stat(path, &st) < 0 || (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)))
            continue;
        ex->uri = v;
        serve_uri(ex, v);
        return;
    }
    struct slice last = tmpl_eval(ex, c->try_files[c->ntry - 1], ESC_NONE);
    if (last.len > 1 && last.p[0] == '=') {
        int code = 0;
        for (size_t i = 1; i < last.len && last.p[i] >= '0' && last.p[i] <= '9'; i++)
            code = code * 10 + (last.p[i] - '0');
        proxy_respond_error(ex, code >= 200 && code <= 599 ? code : 500);
        return;
    }
    if (!last.len || (last.p[0] != '/' && last.p[0] != '@')) {
        log_write(LOG_ERR, "*%llu try_files fallback \"%.*s\" is not a URI or @location",
                  (unsigned long long)ex->id, (int)last.len, last.p);
        proxy_respond_error(ex, 500);
        return;
    }
    proxy_internal_redirect(ex, last, true);
}

void static_serve(struct exchange *ex)
{
    if (ex->lc->st.ntry) {
        try_files(ex);
        return;
    }
    serve_uri(ex, ex->uri);
}
