/* Fuzz target for the config lexer and parser (src/config/parse.c), and the
 * setters of src/config/registry.c on whatever tree comes out.
 * Invariants: an error always names "file:line: "; a tree dumped with
 * cf_dump() parses back to the same tree (names, args, quoted flags,
 * blocks), and dumping that again gives the same text.
 * Inputs containing "include" are skipped: the parser would read files of
 * the machine running the fuzzer (include is covered by the unit tests). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

struct fz_conf {
    int flag;
    uint32_t msec;
    uint32_t sec;
    size_t size;
    int num;
    char *str;
};

static int fz_block(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
                    void *conf)
{
    (void)d;
    unsigned saved = cx->context;
    void *saved_conf = cx->confs[0];
    cx->context = CF_SERVER;
    cx->confs[0] = conf;
    int rc = cf_apply_block(cx, n);
    cx->context = saved;
    cx->confs[0] = saved_conf;
    return rc;
}

#define OFF(f) offsetof(struct fz_conf, f)
static const struct cf_directive fz_rows[] = {
    {"flag", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_flag, 0, OFF(flag), "on | off", "off", ""},
    {"msec", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_msec, 0, OFF(msec), "time", "-", ""},
    {"sec", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_sec, 0, OFF(sec), "time", "-", ""},
    {"size", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_size, 0, OFF(size), "size", "-", ""},
    {"num", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_int, 0, OFF(num), "number", "-", ""},
    {"str", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_str, 0, OFF(str), "string", "-", ""},
    {"noop", CF_MAIN, 0, CF_ARGS_ANY, false, cf_set_noop, 0, 0, "...", "-", ""},
    {"server", CF_MAIN | CF_SERVER, 0, 2, true, fz_block, 1, 0, "", "-", ""},
    {0},
};
static const struct cf_module fz_mod = {"fuzz", fz_rows};

static int same_tree(const struct cf_node *a, const struct cf_node *b)
{
    for (; a && b; a = a->next, b = b->next) {
        if (strcmp(a->name, b->name) || a->nargs != b->nargs || a->is_block != b->is_block)
            return 0;
        for (size_t i = 0; i < a->nargs; i++)
            if (strcmp(a->args[i], b->args[i]) || a->arg_quoted[i] != b->arg_quoted[i])
                return 0;
        if (!same_tree(a->children, b->children))
            return 0;
    }
    return !a && !b;
}

static char *dump(const struct cf_node *root, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f)
        abort();
    cf_dump(root, f);
    fclose(f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int registered;
    if (!registered) {
        const struct cf_module *mods[] = {&fz_mod};
        cf_register(mods, 1);
        registered = 1;
    }
    if (memmem(data, size, "include", 7))
        return 0;

    struct arena a;
    char err[256];
    arena_init(&a, 4096, 0);
    struct cf_node *root =
        cf_parse_string(&a, "fuzz.conf", (const char *)data, size, err, sizeof(err));
    if (!root) {
        if (strncmp(err, "fuzz.conf:", 10) != 0 || !strstr(err, ": "))
            abort();
        goto out;
    }

    size_t len1, len2;
    char *text1 = dump(root, &len1);
    struct cf_node *again = cf_parse_string(&a, "dump.conf", text1, len1, err, sizeof(err));
    if (!again) {
        fprintf(stderr, "dump does not parse: %s\n---\n%s---\n", err, text1);
        abort();
    }
    if (!same_tree(root->children, again->children)) {
        fprintf(stderr, "dump parses to another tree\n---\n%s---\n", text1);
        abort();
    }
    char *text2 = dump(again, &len2);
    if (len1 != len2 || memcmp(text1, text2, len1) != 0) {
        fprintf(stderr, "dump is not stable\n---\n%s---\n%s---\n", text1, text2);
        abort();
    }
    free(text1);
    free(text2);

    struct fz_conf main_conf = {CF_UNSET_FLAG, CF_UNSET_MSEC, CF_UNSET_MSEC,
                                CF_UNSET_SIZE, CF_UNSET_INT,  NULL};
    struct fz_conf server_conf = main_conf;
    struct cf_ctx cx = {.arena = &a, .err = err, .errlen = sizeof(err), .context = CF_MAIN};
    cx.confs[0] = &main_conf;
    cx.confs[1] = &server_conf;
    if (cf_apply_block(&cx, root) < 0 && strncmp(err, "fuzz.conf:", 10) != 0)
        abort();
out:
    arena_deinit(&a);
    return 0;
}
