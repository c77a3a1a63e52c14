/* `health_check` and `match` (NGINX Plus syntax) into struct ups_check and
 * struct check_match of the snapshot. */
#include "proxy/check_conf.h"

#include <stdio.h>
#include <string.h>

#include "proxy/conf.h"
#include "upstream/check.h"

static int set_health_check(struct cf_ctx *cx, const struct cf_node *n,
                            const struct cf_directive *d, void *conf)
{
    (void)d;
    struct loc_conf *lc = conf;
    if (lc->health_check)
        return cf_error(cx, n, "\"health_check\" directive is duplicate");
    struct ups_check *c = arena_calloc(cx->arena, sizeof(*c));
    if (!c)
        return cf_error(cx, n, "out of memory");
    c->interval_ms = 5000;
    c->fails = 1;
    c->passes = 1;
    c->uri = "/";
    c->file = n->file;
    c->line = n->line;
    for (size_t i = 0; i < n->nargs; i++) {
        const char *a = n->args[i];
        uint32_t ms;
        int v;
        if (strncmp(a, "interval=", 9) == 0 && cf_parse_msec(a + 9, &ms) == 0 && ms) {
            c->interval_ms = ms;
        } else if (strncmp(a, "jitter=", 7) == 0 && cf_parse_msec(a + 7, &ms) == 0) {
            c->jitter_ms = ms;
        } else if (strncmp(a, "fails=", 6) == 0 && cf_parse_int(a + 6, &v) == 0 && v >= 1) {
            c->fails = v;
        } else if (strncmp(a, "passes=", 7) == 0 && cf_parse_int(a + 7, &v) == 0 && v >= 1) {
            c->passes = v;
        } else if (strncmp(a, "uri=", 4) == 0 && a[4] == '/' && !strpbrk(a + 4, " \t\r\n")) {
            c->uri = a + 4;
        } else if (strncmp(a, "port=", 5) == 0 && cf_parse_int(a + 5, &v) == 0 && v >= 1 &&
                   v <= 65535) {
            c->port = v;
        } else if (strncmp(a, "match=", 6) == 0 && a[6]) {
            c->match_name = a + 6;
        } else if (strcmp(a, "type=tcp") == 0) {
            c->tcp = true;
        } else if (strcmp(a, "type=http") == 0) {
            c->tcp = false;
        } else if (strcmp(a, "mandatory") == 0) {
            c->mandatory = true;
        } else if (strcmp(a, "persistent") == 0) {
            /* the state always carries over a reload when it can */
        } else {
            return cf_error(cx, n, "invalid parameter \"%s\"", a);
        }
    }
    lc->health_check = c;
    return 0;
}

static int set_match(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                     void *conf)
{
    (void)d;
    struct loc_conf *http = conf;
    for (struct check_match *o = http->check_matches; o; o = o->next)
        if (strcmp(o->name, n->args[0]) == 0)
            return cf_error(cx, n, "duplicate match \"%s\"", n->args[0]);
    struct check_match *m = arena_calloc(cx->arena, sizeof(*m));
    size_t cap = 0;
    for (const struct cf_node *k = n->children; k; k = k->next)
        cap++;
    if (!m || !(m->conds = arena_calloc(cx->arena, (cap ? cap : 1) * sizeof(*m->conds))))
        return cf_error(cx, n, "out of memory");
    m->name = n->args[0];
    m->file = n->file;
    m->line = n->line;
    struct cf_ctx sub = *cx;
    sub.context = CF_MATCH;
    sub.confs[CONF_LOC] = m;
    if (cf_apply_block(&sub, n) < 0)
        return -1;
    m->next = http->check_matches;
    http->check_matches = m;
    return 0;
}

static struct check_cond *next_cond(struct check_match *m)
{
    return &m->conds[m->nconds++];
}

static int set_status(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    if (check_parse_status(next_cond(conf), n->args, n->nargs) < 0)
        return cf_error(cx, n,
                        "invalid status in \"status\" directive (code, lo-hi, or ! before them)");
    return 0;
}

static int compile_re(struct cf_ctx *cx, const struct cf_node *n, struct check_cond *c,
                      const char *re)
{
    char msg[256];
    c->op = CHECK_OP_REGEX;
    c->re = check_regex_compile(cx->arena, re, msg, sizeof(msg));
    return c->re ? 0 : cf_error(cx, n, "%s", msg);
}

static int set_header(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf)
{
    (void)d;
    struct check_match *m = conf;
    struct check_cond *c = next_cond(m);
    c->kind = CHECK_HEADER;
    if (n->nargs == 1 || (n->nargs == 2 && strcmp(n->args[0], "!") == 0)) {
        c->op = CHECK_OP_EXISTS;
        c->negate = n->nargs == 2;
        c->name = slice_cstr(n->args[n->nargs - 1]);
        return 0;
    }
    if (n->nargs != 3)
        return cf_error(cx, n, "invalid \"header\" condition (name, ! name, or name op value)");
    c->name = slice_cstr(n->args[0]);
    const char *op = n->args[1];
    c->negate = op[0] == '!';
    if (strcmp(op, "=") == 0 || strcmp(op, "!=") == 0) {
        c->op = CHECK_OP_EQ;
        c->value = slice_cstr(n->args[2]);
        return 0;
    }
    if (strcmp(op, "~") == 0 || strcmp(op, "!~") == 0)
        return compile_re(cx, n, c, n->args[2]);
    return cf_error(cx, n, "invalid operator \"%s\" in \"header\" (=, !=, ~ or !~)", op);
}

static int set_body(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    struct check_match *m = conf;
    struct check_cond *c = next_cond(m);
    c->kind = CHECK_BODY;
    const char *op = n->args[0];
    if (strcmp(op, "~") != 0 && strcmp(op, "!~") != 0)
        return cf_error(cx, n, "invalid operator \"%s\" in \"body\" (~ or !~)", op);
    c->negate = op[0] == '!';
    m->needs_body = true;
    return compile_re(cx, n, c, n->args[1]);
}

static const struct cf_directive check_directives[] = {
    {"health_check", CF_LOCATION, 0, 10, false, set_health_check, CONF_LOC, 0,
     "[interval=time] [jitter=time] [fails=number] [passes=number] [uri=uri] [port=number] "
     "[match=name] [type=http|tcp] [mandatory [persistent]]",
     "-",
     "active checks of every server of the upstream group this location's proxy_pass names, "
     "from one checker thread: a GET of uri (/) every interval (5s) plus up to jitter (0), "
     "answer awaited at most interval; fails (1) failures in a row take a server out, passes "
     "(1) successes bring it back (then slow_start); match names the conditions (default: "
     "status 2xx or 3xx); type=tcp: a connect is the check; mandatory: servers start "
     "\"checking\" and get no traffic until a first check passes; the state of a server "
     "carries over a reload (persistent is accepted for NGINX Plus configs)"},
    {"match", CF_HTTP, 1, 1, true, set_match, CONF_LOC, 0, "name { ... }", "-",
     "conditions a health check response must meet, all of them; an empty block accepts any "
     "well-formed response"},
    {"status", CF_MATCH, 1, CHECK_MAX_RANGES + 1, false, set_status, CONF_LOC, 0,
     "[!] code | lo-hi ...", "-",
     "in match: the status is (! is not) one of these codes or ranges"},
    {"header", CF_MATCH, 1, 3, false, set_header, CONF_LOC, 0,
     "name | ! name | name = value | name != value | name ~ regex | name !~ regex", "-",
     "in match: a response header is present, absent, equal (case-sensitive), different, "
     "matching or not matching a regex; != and !~ need the header present"},
    {"body", CF_MATCH, 2, 2, false, set_body, CONF_LOC, 0, "~ regex | !~ regex", "-",
     "in match: the first 64k of the (de-chunked) body match (or not) the regex"},
    {NULL, 0, 0, 0, false, NULL, 0, 0, NULL, NULL, NULL},
};

const struct cf_module check_cf_module = {"health_check", check_directives};

int check_attach(struct snapshot *s, struct location *loc, char *err, size_t errlen)
{
    struct loc_conf *lc = loc->conf;
    struct ups_check *c = lc->health_check;
    if (!c || c->group)
        return 0;
    if (!lc->pass || lc->pass->dynamic || !lc->pass->group || lc->pass->group->implicit) {
        snprintf(err, errlen,
                 "%s:%d: \"health_check\" needs \"proxy_pass\" to an upstream group in its "
                 "location",
                 c->file, c->line);
        return -1;
    }
    if (c->match_name) {
        for (const struct check_match *m = s->http_lc->check_matches; m; m = m->next)
            if (strcmp(m->name, c->match_name) == 0)
                c->match = m;
        if (!c->match) {
            snprintf(err, errlen, "%s:%d: match \"%s\" not found", c->file, c->line, c->match_name);
            return -1;
        }
        if (c->tcp && c->match->nconds) {
            snprintf(err, errlen,
                     "%s:%d: a \"type=tcp\" health check cannot use match \"%s\" "
                     "(it has conditions on the HTTP response)",
                     c->file, c->line, c->match_name);
            return -1;
        }
    }
    if (check_group_add(&s->arena, lc->pass->group, c) < 0) {
        snprintf(err, errlen, "%s:%d: out of memory", c->file, c->line);
        return -1;
    }
    return 0;
}
