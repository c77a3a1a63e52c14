/* Lexer and parser for the nginx-style config, following the rules of
 * nginx's ngx_conf_read_token() so that configs behave the same:
 *   - `#` starts a comment only at the start of a token;
 *   - quotes are special only at the start of a token, and a closing quote
 *     must be followed by whitespace, `;`, `{` or `)`;
 *   - a backslash protects the next character in words and quoted strings;
 *     only \" \' \\ \t \r \n are translated, other pairs are kept as is;
 *   - `}` is special only at the start of a token; `{` ends a word unless
 *     it follows `$` (so `${var}` stays one word).
 * `include` is expanded here, while parsing, in any context. */
#include "config/config.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TOKEN         (64 * 1024)
#define MAX_FILE          (16 * 1024 * 1024)
#define MAX_INCLUDE_DEPTH 32
#define MAX_BLOCK_DEPTH   100

struct lexer {
    const char *buf;
    size_t len;
    size_t pos;
    int line;
    const char *file; /* arena copy, shared by the nodes of this file */
};

struct parser {
    struct arena *a;
    char *err;
    size_t errlen;
    bool failed;
    const char *prefix; /* directory for relative includes, NULL = CWD */
    int include_depth;
    int block_depth;
};

enum tok { T_WORD, T_SEMI, T_LBRACE, T_RBRACE, T_EOF, T_ERR };

struct word {
    char *s;
    bool quoted;
    int line;
};

/* The words of the directive being read. */
struct words {
    struct word *v;
    size_t n, cap;
};

static int perr(struct parser *p, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int perr(struct parser *p, const char *file, int line, const char *fmt, ...)
{
    if (p->failed)
        return -1;
    p->failed = true;
    if (!p->err || !p->errlen)
        return -1;
    int n = snprintf(p->err, p->errlen, "%s:%d: ", file, line);
    if (n >= 0 && (size_t)n < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int oom(struct parser *p, const struct lexer *lx)
{
    return perr(p, lx->file, lx->line, "out of memory");
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Print one offending byte the way nginx does, but keep the message text. */
static int unexpected_char(struct parser *p, const struct lexer *lx, char c)
{
    if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
        return perr(p, lx->file, lx->line, "unexpected \"%c\"", c);
    return perr(p, lx->file, lx->line, "unexpected \"\\x%02x\"", (unsigned char)c);
}

static int unexpected_eof(struct parser *p, const struct lexer *lx)
{
    return perr(p, lx->file, lx->line, "unexpected end of file, expecting \";\" or \"}\"");
}

static int too_long(struct parser *p, const struct lexer *lx, size_t start)
{
    return perr(p, lx->file, lx->line, "too long parameter \"%.10s...\" started", lx->buf + start);
}

/* Copy raw token bytes into the arena, translating escapes as nginx does. */
static char *unescape(struct arena *a, const char *s, size_t len)
{
    char *out = arena_alloc(a, len + 1), *d = out;
    const char *e = s + len;
    if (!out)
        return NULL;
    while (s < e) {
        if (*s == '\\' && s + 1 < e) {
            switch (s[1]) {
            case '"':
            case '\'':
            case '\\':
                s++;
                break;
            case 't':
                *d++ = '\t';
                s += 2;
                continue;
            case 'r':
                *d++ = '\r';
                s += 2;
                continue;
            case 'n':
                *d++ = '\n';
                s += 2;
                continue;
            }
        }
        *d++ = *s++;
    }
    *d = '\0';
    return out;
}

static enum tok lex_quoted(struct parser *p, struct lexer *lx, struct word *w)
{
    char q = lx->buf[lx->pos++];
    size_t start = lx->pos;
    for (;;) {
        if (lx->pos >= lx->len)
            return unexpected_eof(p, lx), T_ERR;
        if (lx->pos - start > MAX_TOKEN)
            return too_long(p, lx, start), T_ERR;
        char c = lx->buf[lx->pos];
        if (c == '\0')
            return unexpected_char(p, lx, c), T_ERR;
        if (c == '\n')
            lx->line++;
        if (c == q)
            break;
        lx->pos++;
        if (c == '\\' && lx->pos < lx->len) {
            c = lx->buf[lx->pos];
            if (c == '\0')
                return unexpected_char(p, lx, c), T_ERR;
            if (c == '\n')
                lx->line++;
            lx->pos++;
        }
    }
    size_t end = lx->pos++;
    if (lx->pos < lx->len) {
        char c = lx->buf[lx->pos];
        if (!is_space(c) && c != ';' && c != '{' && c != ')')
            return unexpected_char(p, lx, c), T_ERR;
    }
    w->quoted = true;
    w->s = unescape(p->a, lx->buf + start, end - start);
    if (!w->s)
        return oom(p, lx), T_ERR;
    return T_WORD;
}

static enum tok lex_word(struct parser *p, struct lexer *lx, struct word *w)
{
    size_t start = lx->pos;
    bool variable = false;
    while (lx->pos < lx->len) {
        if (lx->pos - start > MAX_TOKEN)
            return too_long(p, lx, start), T_ERR;
        char c = lx->buf[lx->pos];
        if (c == '\0')
            return unexpected_char(p, lx, c), T_ERR;
        if (c == '{' && variable) {
            lx->pos++;
            continue;
        }
        variable = false;
        if (c == '\\') {
            if (++lx->pos >= lx->len)
                return unexpected_eof(p, lx), T_ERR;
            c = lx->buf[lx->pos];
            if (c == '\0')
                return unexpected_char(p, lx, c), T_ERR;
            if (c == '\n')
                lx->line++;
            lx->pos++;
            continue;
        }
        if (is_space(c) || c == ';' || c == '{')
            break;
        if (c == '$')
            variable = true;
        lx->pos++;
    }
    w->quoted = false;
    w->s = unescape(p->a, lx->buf + start, lx->pos - start);
    if (!w->s)
        return oom(p, lx), T_ERR;
    return T_WORD;
}

static enum tok lex(struct parser *p, struct lexer *lx, struct word *w)
{
    for (;;) {
        if (lx->pos >= lx->len)
            return T_EOF;
        char c = lx->buf[lx->pos];
        if (c == '\n') {
            lx->line++;
            lx->pos++;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            lx->pos++;
        } else if (c == '#') {
            while (lx->pos < lx->len && lx->buf[lx->pos] != '\n')
                lx->pos++;
        } else {
            break;
        }
    }
    w->line = lx->line;
    switch (lx->buf[lx->pos]) {
    case ';':
        lx->pos++;
        return T_SEMI;
    case '{':
        lx->pos++;
        return T_LBRACE;
    case '}':
        lx->pos++;
        return T_RBRACE;
    case '"':
    case '\'':
        return lex_quoted(p, lx, w);
    default:
        return lex_word(p, lx, w);
    }
}

static int words_push(struct words *ws, const struct word *w)
{
    if (ws->n == ws->cap) {
        size_t cap = ws->cap ? ws->cap * 2 : 8;
        struct word *v = realloc(ws->v, cap * sizeof(*v));
        if (!v)
            return -1;
        ws->v = v;
        ws->cap = cap;
    }
    ws->v[ws->n++] = *w;
    return 0;
}

static struct cf_node *make_node(struct parser *p, const struct lexer *lx, const struct words *ws,
                                 bool is_block)
{
    struct cf_node *n = arena_calloc(p->a, sizeof(*n));
    if (!n)
        return NULL;
    n->name = ws->v[0].s;
    n->nargs = ws->n - 1;
    n->args = arena_alloc(p->a, (n->nargs + 1) * sizeof(*n->args));
    n->arg_quoted = arena_alloc(p->a, (n->nargs + 1) * sizeof(*n->arg_quoted));
    if (!n->args || !n->arg_quoted)
        return NULL;
    for (size_t i = 0; i < n->nargs; i++) {
        n->args[i] = ws->v[i + 1].s;
        n->arg_quoted[i] = ws->v[i + 1].quoted;
    }
    n->args[n->nargs] = NULL;
    n->arg_quoted[n->nargs] = false;
    n->file = lx->file;
    n->line = ws->v[0].line;
    n->is_block = is_block;
    return n;
}

static int parse_body(struct parser *p, struct lexer *lx, struct cf_node ***tail, bool in_block);
static int include_file(struct parser *p, const char *path, const struct lexer *at, int line,
                        struct cf_node ***tail);

static int read_whole(const char *path, char **out, size_t *outlen, int *err)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        goto fail;
    if (fstat(fd, &st) < 0)
        goto fail_fd;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        goto fail_fd;
    }
    if (st.st_size > MAX_FILE) {
        errno = EFBIG;
        goto fail_fd;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        goto fail_fd;
    while (len < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto fail_buf;
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    *out = buf;
    *outlen = len;
    return 0;
fail_buf:
    free(buf);
fail_fd:
    *err = errno;
    close(fd);
    return -1;
fail:
    *err = errno;
    return -1;
}

/* Parse one whole file (main or included) and append its nodes at *tail. */
static int parse_file_into(struct parser *p, const char *path, const char *err_file, int err_line,
                           struct cf_node ***tail)
{
    char *buf;
    size_t len;
    int e;
    if (read_whole(path, &buf, &len, &e) < 0)
        return perr(p, err_file, err_line, "open() \"%s\" failed (%d: %s)", path, e, strerror(e));
    struct lexer lx = {.buf = buf, .len = len, .line = 1};
    lx.file = arena_strdup(p->a, path);
    int rc = lx.file ? parse_body(p, &lx, tail, false) : oom(p, &lx);
    free(buf);
    return rc;
}

/* Like GLOB_ERR, but a directory that does not exist is a glob matching
 * nothing (as in nginx), not an error; unreadable ones still fail. */
static int glob_error(const char *path, int e)
{
    (void)path;
    return e != ENOENT && e != ENOTDIR;
}

static int do_include(struct parser *p, const struct lexer *lx, const struct words *ws,
                      struct cf_node ***tail)
{
    int line = ws->v[0].line;
    if (ws->n != 2)
        return perr(p, lx->file, line, "invalid number of arguments in \"include\" directive");
    const char *pattern = ws->v[1].s;
    if (p->include_depth >= MAX_INCLUDE_DEPTH)
        return perr(p, lx->file, line, "too deep include nesting (%d) at \"%s\"", MAX_INCLUDE_DEPTH,
                    pattern);
    if (!*pattern)
        return perr(p, lx->file, line, "invalid value \"\" in \"include\" directive");
    char *full = (pattern[0] != '/' && p->prefix) ? arena_printf(p->a, "%s/%s", p->prefix, pattern)
                                                  : arena_strdup(p->a, pattern);
    if (!full)
        return oom(p, lx);
    if (!strpbrk(full, "*?["))
        return include_file(p, full, lx, line, tail);

    glob_t g;
    int rc = glob(full, 0, glob_error, &g);
    if (rc == GLOB_NOMATCH)
        return 0;
    if (rc != 0) {
        globfree(&g); /* glibc leaves `g` valid on every error */
        return perr(p, lx->file, line, "glob() \"%s\" failed", full);
    }
    for (size_t i = 0; i < g.gl_pathc && rc == 0; i++)
        rc = include_file(p, g.gl_pathv[i], lx, line, tail);
    globfree(&g);
    return rc;
}

static int include_file(struct parser *p, const char *path, const struct lexer *at, int line,
                        struct cf_node ***tail)
{
    p->include_depth++;
    int rc = parse_file_into(p, path, at->file, line, tail);
    p->include_depth--;
    return rc;
}

static int parse_block(struct parser *p, struct lexer *lx, struct cf_node *n)
{
    if (p->block_depth >= MAX_BLOCK_DEPTH)
        return perr(p, lx->file, lx->line, "too deep nesting of blocks (%d)", MAX_BLOCK_DEPTH);
    struct cf_node **tail = &n->children;
    p->block_depth++;
    int rc = parse_body(p, lx, &tail, true);
    p->block_depth--;
    return rc;
}

/* Read directives until `}` (in_block) or the end of the file. */
static int parse_body(struct parser *p, struct lexer *lx, struct cf_node ***tail, bool in_block)
{
    struct words ws = {0};
    struct word w;
    int rc = -1;
    for (;;) {
        enum tok t = lex(p, lx, &w);
        switch (t) {
        case T_ERR:
            goto out;
        case T_WORD:
            if (words_push(&ws, &w) < 0) {
                oom(p, lx);
                goto out;
            }
            continue;
        case T_EOF:
            if (ws.n) {
                unexpected_eof(p, lx);
            } else if (in_block) {
                perr(p, lx->file, lx->line, "unexpected end of file, expecting \"}\"");
            } else {
                rc = 0;
            }
            goto out;
        case T_RBRACE:
            if (ws.n || !in_block) {
                perr(p, lx->file, lx->line, "unexpected \"}\"");
            } else {
                rc = 0;
            }
            goto out;
        case T_SEMI:
        case T_LBRACE:
            break;
        }
        if (!ws.n) {
            perr(p, lx->file, lx->line, "unexpected \"%c\"", t == T_SEMI ? ';' : '{');
            goto out;
        }
        if (strcmp(ws.v[0].s, "include") == 0) {
            if (t == T_LBRACE) {
                perr(p, lx->file, lx->line, "directive \"include\" is not terminated by \";\"");
                goto out;
            }
            if (do_include(p, lx, &ws, tail) < 0)
                goto out;
        } else {
            struct cf_node *n = make_node(p, lx, &ws, t == T_LBRACE);
            if (!n) {
                oom(p, lx);
                goto out;
            }
            **tail = n;
            *tail = &n->next;
            if (t == T_LBRACE && parse_block(p, lx, n) < 0)
                goto out;
        }
        ws.n = 0;
    }
out:
    free(ws.v);
    return rc;
}

static struct cf_node *new_root(struct parser *p, const char *file)
{
    struct cf_node *root = arena_calloc(p->a, sizeof(*root));
    if (!root)
        return NULL;
    root->name = "";
    root->args = arena_calloc(p->a, sizeof(*root->args));
    root->arg_quoted = arena_calloc(p->a, sizeof(*root->arg_quoted));
    root->file = arena_strdup(p->a, file);
    root->is_block = true;
    if (!root->args || !root->arg_quoted || !root->file)
        return NULL;
    return root;
}

struct cf_node *cf_parse_file(struct arena *a, const char *path, char *err, size_t errlen)
{
    struct parser p = {.a = a, .err = err, .errlen = errlen};
    if (err && errlen)
        err[0] = '\0';
    struct cf_node *root = new_root(&p, path);
    if (!root) {
        perr(&p, path, 0, "out of memory");
        return NULL;
    }
    const char *slash = strrchr(path, '/');
    if (slash) {
        p.prefix = slash == path ? "/" : arena_strndup(a, path, (size_t)(slash - path));
        if (!p.prefix) {
            perr(&p, path, 0, "out of memory");
            return NULL;
        }
    }
    struct cf_node **tail = &root->children;
    if (parse_file_into(&p, path, path, 0, &tail) < 0)
        return NULL;
    return root;
}

struct cf_node *cf_parse_string(struct arena *a, const char *name, const char *text, size_t len,
                                char *err, size_t errlen)
{
    struct parser p = {.a = a, .err = err, .errlen = errlen};
    if (err && errlen)
        err[0] = '\0';
    struct cf_node *root = new_root(&p, name);
    if (!root) {
        perr(&p, name, 0, "out of memory");
        return NULL;
    }
    struct lexer lx = {.buf = text, .len = len, .line = 1, .file = root->file};
    struct cf_node **tail = &root->children;
    if (parse_body(&p, &lx, &tail, false) < 0)
        return NULL;
    return root;
}

/* Dump: words are printed bare when a bare word reads back to the same
 * string (keeping the quoted flag), otherwise double-quoted. */

static bool bare_needs_pair(char c)
{
    return c == ' ' || c == ';' || c == '{';
}

/* Write `s` as a bare word into out (capacity >= 2 * strlen + 1). Returns
 * false when no bare spelling gives `s` back; then it must be quoted. */
static bool encode_bare(const char *s, char *out)
{
    size_t len = strlen(s), o = 0;
    bool variable = false;
    if (!len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '\\') {
            /* "\X" reads back as both bytes unless X is one of " ' \ t r n;
             * it is the only way to get a separator into a bare word. */
            if (i + 1 < len && bare_needs_pair(s[i + 1])) {
                out[o++] = '\\';
                out[o++] = s[++i];
            } else {
                out[o++] = '\\';
                out[o++] = '\\';
            }
            variable = false;
            continue;
        }
        if (c == '{' && variable && i > 0) {
            out[o++] = c;
            continue;
        }
        variable = false;
        switch (c) {
        case ' ':
        case ';':
        case '{':
        case '\0':
            return false;
        case '\t':
            out[o++] = '\\';
            out[o++] = 't';
            continue;
        case '\r':
            out[o++] = '\\';
            out[o++] = 'r';
            continue;
        case '\n':
            out[o++] = '\\';
            out[o++] = 'n';
            continue;
        case '"':
        case '\'':
            if (i == 0)
                out[o++] = '\\';
            break;
        case '}':
        case '#':
            if (i == 0)
                return false;
            break;
        case '$':
            variable = true;
            break;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

/* Double quotes unless the value holds " but no ': log formats read better. */
static void put_quoted(const char *s, FILE *out)
{
    char q = strchr(s, '"') && !strchr(s, '\'') ? '\'' : '"';
    fputc(q, out);
    for (; *s; s++) {
        if (*s == q || *s == '\\') {
            fputc('\\', out);
            fputc(*s, out);
        } else if (*s == '\t') {
            fputs("\\t", out);
        } else if (*s == '\r') {
            fputs("\\r", out);
        } else if (*s == '\n') {
            fputs("\\n", out);
        } else {
            fputc(*s, out);
        }
    }
    fputc(q, out);
}

static void put_word(const char *s, bool quoted, FILE *out)
{
    char small[256], *buf = small;
    size_t need = 2 * strlen(s) + 1;
    if (!quoted) {
        if (need > sizeof(small) && !(buf = malloc(need)))
            quoted = true;
        else if (encode_bare(s, buf))
            fputs(buf, out);
        else
            quoted = true;
        if (buf != small)
            free(buf);
    }
    if (quoted)
        put_quoted(s, out);
}

static void dump_list(const struct cf_node *n, FILE *out, int depth)
{
    for (; n; n = n->next) {
        fprintf(out, "%*s", depth * 4, "");
        put_word(n->name, false, out);
        for (size_t i = 0; i < n->nargs; i++) {
            fputc(' ', out);
            put_word(n->args[i], n->arg_quoted && n->arg_quoted[i], out);
        }
        if (!n->is_block) {
            fputs(";\n", out);
            continue;
        }
        fputs(" {\n", out);
        dump_list(n->children, out, depth + 1);
        fprintf(out, "%*s}\n", depth * 4, "");
    }
}

void cf_dump(const struct cf_node *root, FILE *out)
{
    if (root)
        dump_list(root->children, out, 0);
}
