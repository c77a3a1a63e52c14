#include "proxy/rewrite.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/limit.h"
#include "proxy/map.h"
#include "proxy/vars.h"
#include "router/router.h"

enum rw_kind { OP_REWRITE, OP_RETURN, OP_SET, OP_IF, OP_BREAK };

enum rw_flag { F_NONE, F_LAST, F_BREAK, F_REDIRECT, F_PERMANENT };

enum cond_kind {
    C_VAR,  /* ($x): not empty and not "0" */
    C_EQ,   /* = */
    C_NE,   /* != */
    C_RE,   /* ~ ~*, negated: !~ !~* */
    C_FILE, /* -f -d -e -x, negated: !-f ... */
};

struct rw_op {
    enum rw_kind kind;
    /* rewrite */
    pcre2_code *re;
    struct tmpl *repl;      /* the replacement up to its first '?' (the path) */
    struct tmpl *repl_args; /* after it (NULL: none, or nothing before a final '?') */
    enum rw_flag flag;
    bool redirect;  /* the replacement starts with http://, https:// or $scheme */
    bool has_query; /* the replacement holds '?': it sets the arguments */
    bool drop_args; /* ... and ends with '?': the old ones are not appended */
    /* return */
    int code;
    struct tmpl *text;
    /* set */
    int var;
    struct tmpl *value;
    /* if */
    enum cond_kind cond;
    bool negate;
    char ftest; /* 'f', 'd', 'e', 'x' */
    struct tmpl *lhs, *rhs;
    struct rw_prog *body;
};

struct rw_prog {
    struct rw_op *ops;
    size_t n, cap;
};

static int rw_directive_into(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                             struct rw_prog **pp);

/* ---- configuration ---- */

/* $args (and its alias $query_string) can be set, as in nginx: it changes
 * the arguments sent upstream. */
static bool is_args_var(const char *name)
{
    return strcmp(name, "args") == 0 || strcmp(name, "query_string") == 0;
}

static void collect_sets(const struct cf_node *n, const char **names, size_t *count, bool fill)
{
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if ((strcmp(c->name, "set") == 0 || strcmp(c->name, "auth_request_set") == 0) &&
            c->nargs >= 1 && c->args[0][0] == '$' && !is_args_var(c->args[0] + 1) &&
            strcmp(c->args[0] + 1, "limit_rate") != 0) {
            const char *nm = c->args[0] + 1;
            bool seen = false;
            for (size_t i = 0; fill && i < *count; i++)
                seen = seen || strcmp(names[i], nm) == 0;
            if (!fill || !seen) {
                if (fill)
                    names[*count] = nm;
                (*count)++;
            }
        }
        if (c->is_block)
            collect_sets(c, names, count, fill);
    }
}

const char **rw_prescan(struct snapshot *s, const struct cf_node *root, size_t *n)
{
    size_t upper = 0, count = 0;
    collect_sets(root, NULL, &upper, false);
    const char **names = arena_calloc(&s->arena, (upper + 1) * sizeof(*names));
    if (!names)
        return NULL;
    collect_sets(root, names, &count, true);
    s->nuser_vars = count;
    *n = count;
    return names;
}

static struct rw_op *new_op(struct cf_ctx *cx, struct rw_prog **pp, enum rw_kind kind)
{
    if (!*pp && !(*pp = arena_calloc(cx->arena, sizeof(**pp))))
        return NULL;
    struct rw_prog *p = *pp;
    struct rw_op *op = arena_push(cx->arena, (void **)&p->ops, &p->n, &p->cap, sizeof(*op));
    if (!op)
        return NULL;
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    return op;
}

/* Compile a regex and keep it for rw_free. */
pcre2_code *rw_regex(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                     const char *pat, bool ci)
{
    pcre2_code **slot = arena_push(cx->arena, (void **)&s->rw_regexes, &s->nrw_regexes,
                                   &s->cap_rw_regexes, sizeof(*slot));
    if (!slot) {
        cf_error(cx, n, "out of memory");
        return NULL;
    }
    *slot = NULL; /* rw_free skips it if the compile fails */
    char err[256];
    pcre2_code *re = router_regex_compile(pat, strlen(pat), ci, err, sizeof(err));
    if (!re) {
        cf_error(cx, n, "%s", err);
        return NULL;
    }
    *slot = re;
    return re;
}

void rw_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->nrw_regexes; i++)
        pcre2_code_free(s->rw_regexes[i]);
    s->nrw_regexes = 0;
}

static int add_rewrite(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                       struct rw_prog **pp)
{
    struct rw_op *op = new_op(cx, pp, OP_REWRITE);
    if (!op)
        return cf_error(cx, n, "out of memory");
    if (n->nargs == 3) {
        const char *f = n->args[2];
        if (strcmp(f, "last") == 0)
            op->flag = F_LAST;
        else if (strcmp(f, "break") == 0)
            op->flag = F_BREAK;
        else if (strcmp(f, "redirect") == 0)
            op->flag = F_REDIRECT;
        else if (strcmp(f, "permanent") == 0)
            op->flag = F_PERMANENT;
        else
            return cf_error(cx, n, "invalid parameter \"%s\"", f);
    }
    if (!(op->re = rw_regex(cx, n, s, n->args[0], false)))
        return -1;
    const char *r = n->args[1];
    op->redirect = strncmp(r, "http://", 7) == 0 || strncmp(r, "https://", 8) == 0 ||
                   strncmp(r, "$scheme", 7) == 0 || op->flag == F_REDIRECT ||
                   op->flag == F_PERMANENT;
    /* split where the text says so, not where a value says so: a capture
     * holding a decoded %3F stays in the path */
    const char *q = strchr(r, '?');
    op->has_query = q != NULL;
    op->drop_args = q && r[strlen(r) - 1] == '?';
    if (q) {
        char *path = arena_strndup(cx->arena, r, (size_t)(q - r));
        size_t alen = strlen(q + 1) - (op->drop_args && q[1] ? 1 : 0);
        char *args = arena_strndup(cx->arena, q + 1, alen);
        if (!path || !args)
            return cf_error(cx, n, "out of memory");
        if (op->drop_args && !q[1])
            args[0] = '\0';
        if (args[0] && !(op->repl_args = conf_tmpl(cx, n, args)))
            return -1;
        r = path;
    }
    op->repl = conf_tmpl(cx, n, r);
    return op->repl ? 0 : -1;
}

static int add_return(struct cf_ctx *cx, const struct cf_node *n, struct rw_prog **pp)
{
    const char *a0 = n->args[0];
    char *end;
    long code = strtol(a0, &end, 10);
    struct rw_op *op = new_op(cx, pp, OP_RETURN);
    if (!op)
        return cf_error(cx, n, "out of memory");
    if (*end || end == a0) {
        if (n->nargs != 1)
            return cf_error(cx, n, "invalid return code \"%s\"", a0);
        /* return URL: a 302 */
        if (strncmp(a0, "http://", 7) && strncmp(a0, "https://", 8) && a0[0] != '$')
            return cf_error(cx, n, "invalid return code \"%s\"", a0);
        op->code = 302;
        op->text = conf_tmpl(cx, n, a0);
        return op->text ? 0 : -1;
    }
    if (code < 0 || code > 999)
        return cf_error(cx, n, "invalid return code \"%s\"", a0);
    op->code = (int)code;
    if (n->nargs == 2 && !(op->text = conf_tmpl(cx, n, n->args[1])))
        return -1;
    return 0;
}

static int add_set(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                   struct rw_prog **pp)
{
    const char *v = n->args[0];
    if (v[0] != '$' || !v[1])
        return cf_error(cx, n, "invalid variable name \"%s\"", v);
    if (is_args_var(v + 1)) {
        struct rw_op *op = new_op(cx, pp, OP_SET);
        if (!op)
            return cf_error(cx, n, "out of memory");
        op->var = -1; /* the request's arguments */
        op->value = conf_tmpl(cx, n, n->args[1]);
        return op->value ? 0 : -1;
    }
    if (strcmp(v + 1, "limit_rate") == 0) { /* as nginx: the request's limit_rate */
        struct rw_op *op = new_op(cx, pp, OP_SET);
        if (!op)
            return cf_error(cx, n, "out of memory");
        op->var = -2;
        op->value = conf_tmpl(cx, n, n->args[1]);
        return op->value ? 0 : -1;
    }
    if (vars_is_builtin(v + 1))
        return cf_error(cx, n, "the \"%s\" variable is built in and cannot be changed", v);
    for (size_t i = 0; i < s->nmaps; i++)
        if (s->maps[i] && strcmp(map_name(s->maps[i]), v + 1) == 0)
            return cf_error(cx, n, "the \"%s\" variable is a map and cannot be changed", v);
    int idx = vars_user_index(v + 1);
    if (idx < 0)
        return cf_error(cx, n, "invalid variable name \"%s\"", v);
    struct rw_op *op = new_op(cx, pp, OP_SET);
    if (!op)
        return cf_error(cx, n, "out of memory");
    op->var = idx;
    op->value = conf_tmpl(cx, n, n->args[1]);
    return op->value ? 0 : -1;
}

/* `if (...)`: the parenthesised words, nginx style: "($a", "=", "b)" or
 * "(", "$a", ")" or "($a)". */
static int add_if(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                  struct rw_prog **pp)
{
    const char *w[4];
    size_t nw = 0;
    if (!n->is_block)
        return cf_error(cx, n, "directive \"if\" has no opening \"{\"");
    for (size_t i = 0; i < n->nargs; i++) {
        char *a = n->args[i];
        size_t len = strlen(a);
        if (i == 0) {
            if (a[0] != '(' || n->arg_quoted[0])
                return cf_error(cx, n, "invalid condition \"%s\"", a);
            a++;
            len--;
        }
        if (i == n->nargs - 1) {
            if (!len || a[len - 1] != ')' || (n->arg_quoted[i] && i != 0))
                return cf_error(cx, n, "invalid condition \"%s\"", n->args[i]);
            len--;
        }
        if (!len && !(n->arg_quoted[i] && i != 0 && i != n->nargs - 1))
            continue;
        if (nw == 4)
            return cf_error(cx, n, "invalid condition");
        w[nw++] = arena_strndup(cx->arena, a, len);
    }
    struct rw_op *op = new_op(cx, pp, OP_IF);
    if (!op)
        return cf_error(cx, n, "out of memory");
    if (nw == 1) {
        if (w[0][0] != '$')
            return cf_error(cx, n, "invalid condition \"%s\"", w[0]);
        op->cond = C_VAR;
        op->lhs = conf_tmpl(cx, n, w[0]);
    } else if (nw == 2) {
        const char *t = w[0];
        op->negate = t[0] == '!';
        t += op->negate;
        if (t[0] != '-' || !strchr("fdex", t[1]) || t[2])
            return cf_error(cx, n, "invalid condition \"%s\"", w[0]);
        op->cond = C_FILE;
        op->ftest = t[1];
        op->lhs = conf_tmpl(cx, n, w[1]);
    } else if (nw == 3) {
        const char *o = w[1];
        op->lhs = conf_tmpl(cx, n, w[0]);
        if (strcmp(o, "=") == 0 || strcmp(o, "!=") == 0) {
            op->cond = o[0] == '=' ? C_EQ : C_NE;
            op->rhs = conf_tmpl(cx, n, w[2]);
            if (!op->rhs)
                return -1;
        } else if (strcmp(o, "~") == 0 || strcmp(o, "~*") == 0 || strcmp(o, "!~") == 0 ||
                   strcmp(o, "!~*") == 0) {
            op->cond = C_RE;
            op->negate = o[0] == '!';
            if (!(op->re = rw_regex(cx, n, s, w[2], o[strlen(o) - 1] == '*')))
                return -1;
        } else {
            return cf_error(cx, n, "unexpected \"%s\" in condition", o);
        }
    } else {
        return cf_error(cx, n, "invalid condition");
    }
    if (!op->lhs)
        return -1;
    /* the body: rewrite directives only (the body's ops land in op->body;
     * `op` may move while the body grows its own program, so keep an index) */
    struct rw_prog *body = NULL;
    for (const struct cf_node *c = n->children; c; c = c->next) {
        if (strcmp(c->name, "if") == 0)
            return cf_error(cx, c, "\"if\" directive is not allowed here (no nested if)");
        if (strcmp(c->name, "rewrite") && strcmp(c->name, "return") && strcmp(c->name, "set") &&
            strcmp(c->name, "break"))
            return cf_error(cx, c,
                            "\"%s\" directive is not allowed in \"if\": only return, rewrite, "
                            "set and break are (nginx's \"if is evil\": use a map or a "
                            "location instead)",
                            c->name);
        if (rw_directive_into(cx, c, s, &body) < 0)
            return -1;
    }
    op->body = body;
    return 0;
}

static int rw_directive_into(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                             struct rw_prog **pp)
{
    const char *d = n->name;
    size_t na = n->nargs;
    if (strcmp(d, "if") != 0 && n->is_block)
        return cf_error(cx, n, "directive \"%s\" has no opening \"{\"", d);
    if (strcmp(d, "rewrite") == 0) {
        if (na < 2 || na > 3)
            return cf_error(cx, n, "invalid number of arguments in \"rewrite\" directive");
        return add_rewrite(cx, n, s, pp);
    }
    if (strcmp(d, "return") == 0) {
        if (na < 1 || na > 2)
            return cf_error(cx, n, "invalid number of arguments in \"return\" directive");
        return add_return(cx, n, pp);
    }
    if (strcmp(d, "set") == 0) {
        if (na != 2)
            return cf_error(cx, n, "invalid number of arguments in \"set\" directive");
        return add_set(cx, n, s, pp);
    }
    if (strcmp(d, "break") == 0) {
        if (na)
            return cf_error(cx, n, "invalid number of arguments in \"break\" directive");
        return new_op(cx, pp, OP_BREAK) ? 0 : cf_error(cx, n, "out of memory");
    }
    if (!na)
        return cf_error(cx, n, "invalid number of arguments in \"if\" directive");
    return add_if(cx, n, s, pp);
}

int rw_directive(struct cf_ctx *cx, const struct cf_node *n, struct snapshot *s,
                 struct loc_conf *lc)
{
    if (strcmp(n->name, "return") == 0)
        lc->has_return = true;
    return rw_directive_into(cx, n, s, &lc->rw);
}

/* ---- running ---- */

struct slice rw_user_value(struct exchange *ex, int idx)
{
    if (!ex->user_vals || idx < 0 || !ex->snap || (size_t)idx >= ex->snap->nuser_vars)
        return SLICE_NULL;
    return ex->user_vals[idx];
}

static int set_user(struct exchange *ex, int idx, struct slice v);

int rw_user_set(struct exchange *ex, int idx, struct slice v)
{
    return set_user(ex, idx, v);
}

static int set_user(struct exchange *ex, int idx, struct slice v)
{
    size_t n = ex->snap ? ex->snap->nuser_vars : 0;
    if ((size_t)idx >= n)
        return -1;
    if (!ex->user_vals && !(ex->user_vals = arena_calloc(&ex->arena, n * sizeof(*ex->user_vals))))
        return -1;
    ex->user_vals[idx] = v;
    return 0;
}

static struct slice eval(struct exchange *ex, const struct tmpl *t)
{
    return t->is_const ? t->parts[0].lit : tmpl_eval(ex, t, ESC_NONE);
}

static bool file_test(struct exchange *ex, char t, struct slice path)
{
    char *p = arena_strndup(&ex->arena, path.p ? path.p : "", path.len);
    struct stat st;
    if (!p || stat(p, &st) < 0)
        return false;
    switch (t) {
    case 'f':
        return S_ISREG(st.st_mode);
    case 'd':
        return S_ISDIR(st.st_mode);
    case 'x':
        return !S_ISDIR(st.st_mode) && access(p, X_OK) == 0;
    default:
        return true;
    }
}

static bool cond_true(struct exchange *ex, const struct rw_op *op)
{
    struct slice l = eval(ex, op->lhs);
    switch (op->cond) {
    case C_VAR:
        return l.len && !(l.len == 1 && l.p[0] == '0');
    case C_EQ:
        return slice_eq(l, eval(ex, op->rhs));
    case C_NE:
        return !slice_eq(l, eval(ex, op->rhs));
    case C_RE: {
        struct route_captures caps = {0};
        bool m = router_regex_match(op->re, l, &caps);
        if (m && !op->negate)
            ex->caps = caps; /* $1.. for what follows, as nginx */
        return m != op->negate;
    }
    case C_FILE:
        return file_test(ex, op->ftest, l) != op->negate;
    }
    return false;
}

static void put(char *d, struct slice v)
{
    if (v.len)
        memcpy(d, v.p, v.len);
}

/* `rewrite`: $uri (and maybe $args) from the replacement, or a redirect.
 * Captures come from the decoded $uri: in arguments, and in the path of a
 * redirect, they are percent-encoded (as nginx), so a %0D%0A in a request
 * never becomes a header line here or upstream. */
static enum rw_result do_rewrite(struct exchange *ex, const struct rw_op *op, struct rw_return *ret)
{
    struct route_captures caps = {0};
    if (!router_regex_match(op->re, ex->uri, &caps))
        return RW_END;
    ex->caps = caps;
    struct slice path =
        op->redirect ? tmpl_eval(ex, op->repl, ESC_CAPTURE_URI) : eval(ex, op->repl);
    struct slice args = ex->args;
    bool has_args = ex->has_args;
    if (op->has_query) {
        struct slice na =
            op->repl_args ? tmpl_eval(ex, op->repl_args, ESC_CAPTURE_ARGS) : SLICE_NULL;
        if (!op->drop_args && ex->has_args && ex->args.len) {
            size_t len = na.len + (na.len ? 1 : 0) + ex->args.len;
            char *b = arena_alloc(&ex->arena, len);
            if (!b)
                return RW_END;
            put(b, na);
            if (na.len)
                b[na.len] = '&';
            put(b + len - ex->args.len, ex->args);
            na = slice_make(b, len);
        }
        args = na;
        has_args = na.len > 0;
    }
    if (op->redirect) {
        size_t len = path.len + (has_args ? 1 + args.len : 0);
        char *b = arena_alloc(&ex->arena, len + 1);
        if (!b)
            return RW_END;
        put(b, path);
        if (has_args) {
            b[path.len] = '?';
            put(b + path.len + 1, args);
        }
        ret->code = op->flag == F_PERMANENT ? 301 : 302;
        ret->text = slice_make(b, len);
        ret->has_text = true;
        return RW_RETURN;
    }
    ex->uri = path;
    ex->args = args;
    ex->has_args = has_args;
    ex->uri_rewritten = true;
    if (op->flag == F_LAST)
        return RW_LAST;
    if (op->flag == F_BREAK) {
        ex->uri_rewritten_here = true; /* nginx: the URI of proxy_pass is not used */
        return RW_BREAK;
    }
    return RW_END;
}

enum rw_result rw_run(struct exchange *ex, const struct rw_prog *p, struct rw_return *ret)
{
    for (size_t i = 0; p && i < p->n; i++) {
        const struct rw_op *op = &p->ops[i];
        enum rw_result r;
        switch (op->kind) {
        case OP_REWRITE:
            r = do_rewrite(ex, op, ret);
            if (r != RW_END)
                return r;
            break;
        case OP_RETURN:
            ret->code = op->code;
            ret->has_text = op->text != NULL;
            ret->text = op->text ? eval(ex, op->text) : SLICE_NULL;
            return RW_RETURN;
        case OP_SET:
            if (op->var == -2) { /* set $limit_rate */
                uint64_t rate = 0;
                struct slice v = eval(ex, op->value);
                if (limit_rate_parse(v, &rate) < 0 && v.len)
                    LOG(LOG_ERR, "*%llu invalid $limit_rate \"%.*s\"", (unsigned long long)ex->id,
                        (int)v.len, v.p);
                ex->limit_rate = rate;
                ex->limit_rate_set = true;
            } else if (op->var < 0) { /* set $args */
                ex->args = eval(ex, op->value);
                ex->has_args = ex->args.len > 0;
                ex->args_set = true; /* the request line is made anew (no new search) */
            } else {
                set_user(ex, op->var, eval(ex, op->value));
            }
            break;
        case OP_BREAK:
            return RW_BREAK;
        case OP_IF:
            if (cond_true(ex, op)) {
                r = rw_run(ex, op->body, ret);
                if (r != RW_END)
                    return r;
            }
            break;
        }
    }
    return RW_END;
}
