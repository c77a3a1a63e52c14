/* Configuration: an nginx-style lexer and parser producing a tree of
 * directives, and the generic machinery (directive tables, typed setters,
 * file:line errors) that each module uses to turn that tree into its own
 * immutable objects. This module knows no HTTP. */
#ifndef PORTICO_CONFIG_H
#define PORTICO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/arena.h"

/* One directive: `name arg...;` or `name arg... { children }`. */
struct cf_node {
    const char *name;
    char **args;      /* NUL-terminated strings, quotes removed, escapes applied */
    bool *arg_quoted; /* per arg: was it quoted (so "$x" vs $x can be told apart) */
    size_t nargs;
    const char *file; /* the file it came from (include expanded) */
    int line;
    bool is_block;            /* had a { } body (possibly empty) */
    struct cf_node *children; /* first child; block bodies only */
    struct cf_node *next;     /* next sibling */
};

/* Parse `path`, expanding `include` directives (globs, relative paths taken
 * from the directory of the main file, as nginx does), into a tree whose
 * root is a block named "" holding the main context. Everything is allocated
 * in `a`. On error returns NULL and writes "file:line: message" into err. */
struct cf_node *cf_parse_file(struct arena *a, const char *path, char *err, size_t errlen);

/* Same from a string (`name` stands for the file name in errors). Includes
 * are relative to the current working directory. */
struct cf_node *cf_parse_string(struct arena *a, const char *name, const char *text, size_t len,
                                char *err, size_t errlen);

/* Print the tree back as a config text (for `portico -T`). */
void cf_dump(const struct cf_node *root, FILE *out);

/* Contexts a directive may appear in (bit set). */
enum cf_context {
    CF_MAIN = 1u << 0,
    CF_EVENTS = 1u << 1,
    CF_HTTP = 1u << 2,
    CF_SERVER = 1u << 3,
    CF_LOCATION = 1u << 4,
    CF_UPSTREAM = 1u << 5,
    CF_STREAM = 1u << 6,
    CF_MATCH = 1u << 7,
};

#define CF_ARGS_ANY 255

/* The state passed while a block is being applied. */
struct cf_ctx {
    struct arena *arena; /* where objects that live with the snapshot go */
    char *err;           /* "file:line: message" on failure */
    size_t errlen;
    unsigned context; /* the enum cf_context of the block being applied */
    void *confs[4];   /* targets, indexed by cf_directive.conf (module-defined) */
    void *user;       /* the loader's own state */
};

struct cf_directive;
typedef int cf_set_fn(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                      void *conf);

/* One row of a module's directive table. */
struct cf_directive {
    const char *name;
    unsigned contexts;          /* enum cf_context bits */
    uint8_t min_args, max_args; /* max CF_ARGS_ANY for "any number" */
    bool block;                 /* takes a { } body */
    cf_set_fn *set;
    unsigned conf;      /* index into cf_ctx.confs of the target struct */
    size_t offset;      /* offset of the field in that struct */
    const char *syntax; /* e.g. "time" or "on | off", for the docs */
    const char *dflt;   /* default, for the docs ("-" if none) */
    const char *help;   /* one line */
};

/* A module's table: rows ending with a row whose name is NULL. */
struct cf_module {
    const char *name; /* for the docs section */
    const struct cf_directive *directives;
};

/* Register the tables of all modules once at start-up (in docs order). */
void cf_register(const struct cf_module *const *mods, size_t n);

/* Find a directive by name among the registered tables, or NULL. */
const struct cf_directive *cf_find(const char *name);

/* Apply every child of `block` in context cx->context: each is looked up in
 * the registry and checked (unknown directive, not allowed here, wrong
 * number of arguments, block or not) before its setter runs with
 * cx->confs[d->conf] as target. Returns 0, or -1 with cx->err set. */
int cf_apply_block(struct cf_ctx *cx, const struct cf_node *block);

/* Record an error "file:line: message" for node n. Returns -1. */
int cf_error(struct cf_ctx *cx, const struct cf_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Typed setters for table rows. Each writes at d->offset inside conf and
 * fails (with file:line) if the value does not parse or was already set
 * ("is duplicate", as nginx says). Fields use "unset" sentinels so merges
 * can tell inherited values from explicit ones: */
#define CF_UNSET_MSEC UINT32_MAX
#define CF_UNSET_SIZE SIZE_MAX
#define CF_UNSET_INT  (-1)
#define CF_UNSET_FLAG (-1)

cf_set_fn cf_set_flag; /* int: on | off -> 1 | 0 */
cf_set_fn cf_set_msec; /* uint32_t ms: nginx time: 30, 30s, 500ms, 1m30s, 2h, 1d */
cf_set_fn cf_set_sec;  /* uint32_t seconds, same syntax */
cf_set_fn cf_set_size; /* size_t bytes: 512, 16k, 1m, 2g (0 allowed) */
cf_set_fn cf_set_int;  /* int >= 0 */
cf_set_fn cf_set_str;  /* char *: a copy of the single argument */
cf_set_fn cf_set_noop; /* accepted and ignored (documented as such) */

/* Value parsers shared with module setters. Return 0 or -1. */
int cf_parse_msec(const char *s, uint32_t *out);
int cf_parse_size(const char *s, size_t *out);
int cf_parse_int(const char *s, int *out);

/* Write the Markdown reference of every registered directive to `out`. */
void cf_docs_markdown(FILE *out);

#endif
