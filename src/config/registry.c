/* Directive registry, cf_apply_block, typed setters and the generated
 * reference. Messages follow nginx's ngx_conf_handler() and
 * ngx_conf_set_*_slot() so that users can search for them. */
#include "config/config.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Several rows may share a name (nginx has `server` in http and in stream);
 * the index is sorted by name, then registration order, and apply takes the
 * first row whose contexts allow the current block. */
struct entry {
    const char *name;
    const struct cf_directive *d;
    size_t order;
};

static struct {
    const struct cf_module **mods;
    size_t nmods;
    struct entry *index;
    size_t nindex;
} reg;

static int entry_cmp(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

void cf_register(const struct cf_module *const *mods, size_t n)
{
    free(reg.mods);
    free(reg.index);
    reg.mods = NULL;
    reg.index = NULL;
    reg.nmods = reg.nindex = 0;

    size_t rows = 0;
    for (size_t i = 0; i < n; i++)
        for (const struct cf_directive *d = mods[i]->directives; d && d->name; d++)
            rows++;
    reg.mods = malloc((n ? n : 1) * sizeof(*reg.mods));
    reg.index = malloc((rows ? rows : 1) * sizeof(*reg.index));
    if (!reg.mods || !reg.index) {
        /* start-up only; an empty registry makes every directive unknown */
        free(reg.mods);
        free(reg.index);
        reg.mods = NULL;
        reg.index = NULL;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        reg.mods[i] = mods[i];
        for (const struct cf_directive *d = mods[i]->directives; d && d->name; d++)
            reg.index[reg.nindex] = (struct entry){.name = d->name, .d = d, .order = reg.nindex},
            reg.nindex++;
    }
    reg.nmods = n;
    qsort(reg.index, reg.nindex, sizeof(*reg.index), entry_cmp);
}

/* First index entry named `name`, or NULL. */
static const struct entry *lookup(const char *name)
{
    size_t lo = 0, hi = reg.nindex;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(reg.index[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < reg.nindex && strcmp(reg.index[lo].name, name) == 0)
        return &reg.index[lo];
    return NULL;
}

const struct cf_directive *cf_find(const char *name)
{
    const struct entry *e = lookup(name);
    return e ? e->d : NULL;
}

int cf_error(struct cf_ctx *cx, const struct cf_node *n, const char *fmt, ...)
{
    if (!cx->err || !cx->errlen)
        return -1;
    int k = snprintf(cx->err, cx->errlen, "%s:%d: ", n && n->file ? n->file : "?", n ? n->line : 0);
    if (k >= 0 && (size_t)k < cx->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cx->err + k, cx->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int apply_one(struct cf_ctx *cx, const struct cf_node *n)
{
    const struct entry *e = lookup(n->name);
    if (!e)
        return cf_error(cx, n, "unknown directive \"%s\"", n->name);
    const struct cf_directive *d = NULL;
    for (const struct entry *end = reg.index + reg.nindex; e < end; e++) {
        if (strcmp(e->name, n->name) != 0)
            break;
        if (e->d->contexts & cx->context) {
            d = e->d;
            break;
        }
    }
    if (!d)
        return cf_error(cx, n, "\"%s\" directive is not allowed here", n->name);
    if (d->block && !n->is_block)
        return cf_error(cx, n, "directive \"%s\" has no opening \"{\"", n->name);
    if (!d->block && n->is_block)
        return cf_error(cx, n, "unexpected \"{\"");
    if (n->nargs < d->min_args || (d->max_args != CF_ARGS_ANY && n->nargs > d->max_args))
        return cf_error(cx, n, "invalid number of arguments in \"%s\" directive", n->name);
    if (!d->set)
        return 0;
    void *conf = d->conf < sizeof(cx->confs) / sizeof(cx->confs[0]) ? cx->confs[d->conf] : NULL;
    return d->set(cx, n, d, conf);
}

int cf_apply_block(struct cf_ctx *cx, const struct cf_node *block)
{
    for (const struct cf_node *n = block->children; n; n = n->next)
        if (apply_one(cx, n) < 0)
            return -1;
    return 0;
}

/* Setters. Tables are trusted to route only rows with a target here, but
 * the argument count is checked again: a row may say 0..N. */

static void *field(const struct cf_directive *d, void *conf)
{
    return (char *)conf + d->offset;
}

static int one_arg(struct cf_ctx *cx, const struct cf_node *n)
{
    if (n->nargs != 1)
        return cf_error(cx, n, "invalid number of arguments in \"%s\" directive", n->name);
    return 0;
}

static int duplicate(struct cf_ctx *cx, const struct cf_node *n)
{
    return cf_error(cx, n, "\"%s\" directive is duplicate", n->name);
}

static int invalid(struct cf_ctx *cx, const struct cf_node *n)
{
    return cf_error(cx, n, "invalid value \"%s\" in \"%s\" directive", n->args[0], n->name);
}

int cf_set_flag(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                void *conf)
{
    int *f = field(d, conf);
    if (one_arg(cx, n) < 0)
        return -1;
    if (*f != CF_UNSET_FLAG)
        return duplicate(cx, n);
    if (strcasecmp(n->args[0], "on") == 0)
        *f = 1;
    else if (strcasecmp(n->args[0], "off") == 0)
        *f = 0;
    else
        return cf_error(cx, n,
                        "invalid value \"%s\" in \"%s\" directive, it must be \"on\" or \"off\"",
                        n->args[0], n->name);
    return 0;
}

/* nginx's ngx_parse_time(): units in decreasing order, each at most once,
 * optionally separated by spaces; a trailing bare number counts in seconds. */
static int parse_time(const char *s, bool is_sec, uint64_t max, uint64_t *out)
{
    enum { st_start, st_year, st_month, st_week, st_day, st_hour, st_min, st_sec, st_msec };
    uint64_t total = 0, value = 0, scale;
    int step = st_start;
    bool valid = false;
    const uint64_t ms = is_sec ? 1 : 1000;

    while (*s) {
        if (*s >= '0' && *s <= '9') {
            if (value > (max - (uint64_t)(*s - '0')) / 10)
                return -1;
            value = value * 10 + (uint64_t)(*s++ - '0');
            valid = true;
            continue;
        }
        if (!valid && *s != ' ')
            return -1;
        int next;
        switch (*s++) {
        case 'y':
            next = st_year, scale = 365ULL * 86400 * ms;
            break;
        case 'M':
            next = st_month, scale = 30ULL * 86400 * ms;
            break;
        case 'w':
            next = st_week, scale = 7ULL * 86400 * ms;
            break;
        case 'd':
            next = st_day, scale = 86400ULL * ms;
            break;
        case 'h':
            next = st_hour, scale = 3600ULL * ms;
            break;
        case 'm':
            if (*s == 's') {
                if (is_sec)
                    return -1;
                s++;
                next = st_msec, scale = 1;
            } else {
                next = st_min, scale = 60ULL * ms;
            }
            break;
        case 's':
            next = st_sec, scale = ms;
            break;
        default:
            return -1;
        }
        if (next <= step)
            return -1;
        step = next;
        if (value > max / scale)
            return -1;
        value *= scale;
        if (total > max - value)
            return -1;
        total += value;
        value = 0;
        while (*s == ' ')
            s++;
        if (*s && (*s < '0' || *s > '9'))
            return -1;
    }
    if (!valid)
        return -1;
    if (value) {
        if (step >= st_sec || value > max / ms)
            return -1;
        value *= ms;
        if (total > max - value)
            return -1;
        total += value;
    } else if (s[-1] >= '0' && s[-1] <= '9' && step >= st_sec) {
        return -1; /* "1s0": a bare number after seconds */
    }
    *out = total;
    return 0;
}

int cf_parse_msec(const char *s, uint32_t *out)
{
    uint64_t v;
    /* UINT32_MAX is the unset sentinel: never a parsed value */
    if (parse_time(s, false, UINT32_MAX - 1, &v) < 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_sec(const char *s, uint32_t *out)
{
    uint64_t v;
    if (parse_time(s, true, UINT32_MAX - 1, &v) < 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int cf_parse_size(const char *s, size_t *out)
{
    size_t len = strlen(s), scale = 1, v = 0;
    if (!len)
        return -1;
    switch (s[len - 1]) {
    case 'k':
    case 'K':
        scale = 1024, len--;
        break;
    case 'm':
    case 'M':
        scale = 1024 * 1024, len--;
        break;
    case 'g':
    case 'G':
        scale = 1024 * 1024 * 1024, len--;
        break;
    }
    if (!len)
        return -1;
    /* SIZE_MAX is the unset sentinel: never a parsed value */
    const size_t max = (SIZE_MAX - 1) / scale;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        size_t digit = (size_t)(s[i] - '0');
        if (v > (max - digit) / 10)
            return -1;
        v = v * 10 + digit;
    }
    *out = v * scale;
    return 0;
}

int cf_parse_int(const char *s, int *out)
{
    int v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        int digit = *s - '0';
        if (v > (INT_MAX - digit) / 10)
            return -1;
        v = v * 10 + digit;
    }
    *out = v;
    return 0;
}

int cf_set_msec(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                void *conf)
{
    uint32_t *f = field(d, conf), v;
    if (one_arg(cx, n) < 0)
        return -1;
    if (*f != CF_UNSET_MSEC)
        return duplicate(cx, n);
    if (cf_parse_msec(n->args[0], &v) < 0)
        return invalid(cx, n);
    *f = v;
    return 0;
}

int cf_set_sec(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d, void *conf)
{
    uint32_t *f = field(d, conf), v;
    if (one_arg(cx, n) < 0)
        return -1;
    if (*f != CF_UNSET_MSEC)
        return duplicate(cx, n);
    if (parse_sec(n->args[0], &v) < 0)
        return invalid(cx, n);
    *f = v;
    return 0;
}

int cf_set_size(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                void *conf)
{
    size_t *f = field(d, conf), v;
    if (one_arg(cx, n) < 0)
        return -1;
    if (*f != CF_UNSET_SIZE)
        return duplicate(cx, n);
    if (cf_parse_size(n->args[0], &v) < 0)
        return invalid(cx, n);
    *f = v;
    return 0;
}

int cf_set_int(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d, void *conf)
{
    int *f = field(d, conf), v;
    if (one_arg(cx, n) < 0)
        return -1;
    if (*f != CF_UNSET_INT)
        return duplicate(cx, n);
    if (cf_parse_int(n->args[0], &v) < 0)
        return invalid(cx, n);
    *f = v;
    return 0;
}

int cf_set_str(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d, void *conf)
{
    char **f = field(d, conf);
    if (one_arg(cx, n) < 0)
        return -1;
    if (*f)
        return duplicate(cx, n);
    if (!(*f = arena_strdup(cx->arena, n->args[0])))
        return cf_error(cx, n, "out of memory");
    return 0;
}

int cf_set_noop(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                void *conf)
{
    (void)cx, (void)n, (void)d, (void)conf;
    return 0;
}

/* Reference. Table cells escape `|`, which GitHub Markdown reads as a
 * column break even inside code spans. */

static void put_cell(const char *s, FILE *out)
{
    for (; *s; s++) {
        if (*s == '|')
            fputc('\\', out);
        if (*s == '\n')
            fputc(' ', out);
        else
            fputc(*s, out);
    }
}

static void put_contexts(unsigned bits, FILE *out)
{
    static const char *const names[] = {"main",     "events",   "http",   "server",
                                        "location", "upstream", "stream", "match"};
    bool first = true;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!(bits & (1u << i)))
            continue;
        fprintf(out, "%s%s", first ? "" : ", ", names[i]);
        first = false;
    }
    if (first)
        fputs("-", out);
}

static void docs_directive(const struct cf_directive *d, FILE *out)
{
    fprintf(out, "### %s\n\n", d->name);
    fputs("| | |\n|---|---|\n", out);
    fputs("| Syntax | `", out);
    put_cell(d->name, out);
    if (d->syntax && *d->syntax) {
        fputc(' ', out);
        put_cell(d->syntax, out);
    }
    fputs(d->block ? " { ... }`" : ";`", out);
    fputs(" |\n| Default | ", out);
    if (d->dflt && *d->dflt && strcmp(d->dflt, "-") != 0) {
        fputc('`', out);
        put_cell(d->dflt, out);
        fputc('`', out);
    } else {
        fputs("-", out);
    }
    fputs(" |\n| Context | ", out);
    put_contexts(d->contexts, out);
    fputs(" |\n\n", out);
    if (d->help && *d->help)
        fprintf(out, "%s\n\n", d->help);
}

void cf_docs_markdown(FILE *out)
{
    fputs("# Directive reference\n\n", out);
    fputs("Generated from the directive tables by `cf_docs_markdown()`; do not edit.\n\n", out);
    for (size_t i = 0; i < reg.nmods; i++) {
        fprintf(out, "## %s\n\n", reg.mods[i]->name ? reg.mods[i]->name : "(unnamed)");
        for (const struct cf_directive *d = reg.mods[i]->directives; d && d->name; d++)
            docs_directive(d, out);
    }
}
