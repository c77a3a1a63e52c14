/* Unit tests for src/config: lexer and parser (nginx rules), include
 * expansion, dump round trip, registry and setters, generated docs. */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"

static struct arena A;
static char err[512];

static void setup(void)
{
    arena_init(&A, 4096, 0);
    err[0] = '\0';
}

static void teardown(void)
{
    arena_deinit(&A);
}

static struct cf_node *parse(const char *text)
{
    return cf_parse_string(&A, "t.conf", text, strlen(text), err, sizeof(err));
}

static void expect_error(const char *text, const char *msg)
{
    struct cf_node *root = parse(text);
    cr_assert_null(root, "parsed: %s", text);
    cr_assert_str_eq(err, msg, "input: %s", text);
}

static size_t count(const struct cf_node *n)
{
    size_t k = 0;
    for (; n; n = n->next)
        k++;
    return k;
}

TestSuite(lexer, .init = setup, .fini = teardown);

Test(lexer, simple_tree)
{
    struct cf_node *r = parse("worker_processes 4;\n"
                              "http {\n"
                              "    server {\n"
                              "        listen 80 default_server;\n"
                              "        location / { }\n"
                              "    }\n"
                              "}\n");
    cr_assert_not_null(r, "%s", err);
    cr_assert_str_eq(r->name, "");
    cr_assert(r->is_block);
    cr_assert_eq(count(r->children), 2);
    struct cf_node *w = r->children;
    cr_assert_str_eq(w->name, "worker_processes");
    cr_assert_eq(w->nargs, 1);
    cr_assert_str_eq(w->args[0], "4");
    cr_assert_null(w->args[1]);
    cr_assert_not(w->is_block);
    cr_assert_eq(w->line, 1);
    cr_assert_str_eq(w->file, "t.conf");
    struct cf_node *http = w->next;
    cr_assert(http->is_block);
    cr_assert_eq(http->nargs, 0);
    cr_assert_eq(http->line, 2);
    struct cf_node *srv = http->children;
    cr_assert_str_eq(srv->name, "server");
    struct cf_node *listen = srv->children;
    cr_assert_eq(listen->nargs, 2);
    cr_assert_eq(listen->line, 4);
    struct cf_node *loc = listen->next;
    cr_assert_str_eq(loc->name, "location");
    cr_assert_str_eq(loc->args[0], "/");
    cr_assert(loc->is_block);
    cr_assert_null(loc->children);
    cr_assert_eq(loc->line, 5);
}

Test(lexer, empty_and_comments_only)
{
    struct cf_node *r = parse("");
    cr_assert_not_null(r);
    cr_assert_null(r->children);
    r = parse("# nothing\n   \t\r\n# more");
    cr_assert_not_null(r);
    cr_assert_null(r->children);
}

Test(lexer, quotes_and_escapes)
{
    struct cf_node *r = parse("a \"x y\" 'p q' \"q\\\"d\" 'it\\'s' \"b\\\\s\" \"t\\tr\\rn\\n\" "
                              "\"\\d\" plain\\\"x;");
    cr_assert_not_null(r, "%s", err);
    struct cf_node *n = r->children;
    cr_assert_eq(n->nargs, 8);
    cr_assert_str_eq(n->args[0], "x y");
    cr_assert_str_eq(n->args[1], "p q");
    cr_assert_str_eq(n->args[2], "q\"d");
    cr_assert_str_eq(n->args[3], "it's");
    cr_assert_str_eq(n->args[4], "b\\s");
    cr_assert_str_eq(n->args[5], "t\tr\rn\n");
    cr_assert_str_eq(n->args[6], "\\d"); /* unknown escape kept, as nginx */
    cr_assert_str_eq(n->args[7], "plain\"x");
    for (int i = 0; i < 7; i++)
        cr_assert(n->arg_quoted[i]);
    cr_assert_not(n->arg_quoted[7]);
}

Test(lexer, quoted_vs_bare_and_empty)
{
    struct cf_node *r = parse("set $x \"$x\" \"\";");
    cr_assert_not_null(r, "%s", err);
    struct cf_node *n = r->children;
    cr_assert_eq(n->nargs, 3);
    cr_assert_str_eq(n->args[0], "$x");
    cr_assert_not(n->arg_quoted[0]);
    cr_assert_str_eq(n->args[1], "$x");
    cr_assert(n->arg_quoted[1]);
    cr_assert_str_eq(n->args[2], "");
}

Test(lexer, quote_followed_by_separators)
{
    struct cf_node *r = parse("a \"x\";b \"y\"{}c \"z\"\t;if (\"$a\") {}");
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(count(r->children), 4);
    struct cf_node *i = r->children->next->next->next;
    cr_assert_str_eq(i->name, "if");
    cr_assert_eq(i->nargs, 1);
    cr_assert_str_eq(i->args[0], "(\"$a\")"); /* quotes are plain inside a word */
    expect_error("a \"x\"b;", "t.conf:1: unexpected \"b\"");
    expect_error("a\n'x'}", "t.conf:2: unexpected \"}\"");
    expect_error("a \"x\"#c\n;", "t.conf:1: unexpected \"#\"");
}

Test(lexer, comments)
{
    struct cf_node *r = parse("# top\n"
                              "a b#c d; # trailing\n"
                              "e \"#not\" '#no';\n"
                              "f #x;\n"
                              " g;\n");
    cr_assert_not_null(r, "%s", err);
    struct cf_node *a = r->children;
    cr_assert_eq(a->nargs, 2);
    cr_assert_str_eq(a->args[0], "b#c");
    cr_assert_str_eq(a->args[1], "d");
    struct cf_node *e = a->next;
    cr_assert_str_eq(e->args[0], "#not");
    cr_assert_str_eq(e->args[1], "#no");
    struct cf_node *f = e->next; /* "f #x;\n g;" is one directive: f g */
    cr_assert_str_eq(f->name, "f");
    cr_assert_eq(f->nargs, 1);
    cr_assert_str_eq(f->args[0], "g");
    cr_assert_null(f->next);
}

Test(lexer, variables_with_braces)
{
    struct cf_node *r = parse("return 200 ${host}x${uri};\nlocation /a{b;}\nx $a{ }\n");
    cr_assert_not_null(r, "%s", err);
    struct cf_node *n = r->children;
    cr_assert_eq(n->nargs, 2);
    cr_assert_str_eq(n->args[1], "${host}x${uri}");
    struct cf_node *loc = n->next;
    cr_assert(loc->is_block);
    cr_assert_str_eq(loc->args[0], "/a");
    cr_assert_str_eq(loc->children->name, "b");
    struct cf_node *x = loc->next; /* $a{ : the brace opens a block */
    cr_assert(x->is_block);
    cr_assert_str_eq(x->args[0], "$a");
}

Test(lexer, word_escapes)
{
    struct cf_node *r = parse("a x\\ y b\\;c \\{ d\\\\;");
    cr_assert_not_null(r, "%s", err);
    struct cf_node *n = r->children;
    cr_assert_eq(n->nargs, 4);
    cr_assert_str_eq(n->args[0], "x\\ y");
    cr_assert_str_eq(n->args[1], "b\\;c");
    cr_assert_str_eq(n->args[2], "\\{");
    cr_assert_str_eq(n->args[3], "d\\");
}

Test(lexer, brace_inside_word_and_close)
{
    struct cf_node *r = parse("a b}c;");
    cr_assert_not_null(r, "%s", err);
    cr_assert_str_eq(r->children->args[0], "b}c");
}

Test(lexer, multiline_tokens_keep_lines)
{
    struct cf_node *r = parse("a \"one\ntwo\nthree\";\nb 'x\\\ny';\nc\nd\n;\ne;");
    cr_assert_not_null(r, "%s", err);
    struct cf_node *a = r->children, *b = a->next, *c = b->next, *e = c->next;
    cr_assert_eq(a->line, 1);
    cr_assert_str_eq(a->args[0], "one\ntwo\nthree");
    cr_assert_eq(b->line, 4);
    cr_assert_str_eq(b->args[0], "x\\\ny");
    cr_assert_eq(c->line, 6);
    cr_assert_eq(c->nargs, 1);
    cr_assert_eq(e->line, 9);
    expect_error("a \"x\ny\"\n\n}", "t.conf:4: unexpected \"}\"");
    expect_error("a x\\\ny;\n}", "t.conf:3: unexpected \"}\"");
}

Test(lexer, crlf_lines)
{
    struct cf_node *r = parse("a;\r\nb;\r\n\r\nc d;\r\n");
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(r->children->next->next->line, 4);
}

Test(lexer, errors)
{
    expect_error("}", "t.conf:1: unexpected \"}\"");
    expect_error("a;\n\nb c }", "t.conf:3: unexpected \"}\"");
    expect_error("a {\n b;\n", "t.conf:3: unexpected end of file, expecting \"}\"");
    expect_error("a {\n b", "t.conf:2: unexpected end of file, expecting \";\" or \"}\"");
    expect_error("a b", "t.conf:1: unexpected end of file, expecting \";\" or \"}\"");
    expect_error("a \"open\n", "t.conf:2: unexpected end of file, expecting \";\" or \"}\"");
    expect_error("a 'x\\", "t.conf:1: unexpected end of file, expecting \";\" or \"}\"");
    expect_error("a x\\", "t.conf:1: unexpected end of file, expecting \";\" or \"}\"");
    expect_error("\n;", "t.conf:2: unexpected \";\"");
    expect_error("a;\n  {", "t.conf:2: unexpected \"{\"");
    expect_error("a { b; } }", "t.conf:1: unexpected \"}\"");
    expect_error("a \"x\"\x01;", "t.conf:1: unexpected \"\\x01\"");
}

Test(lexer, nul_byte_rejected)
{
    const char q[] = "a \"b\0c\";";
    cr_assert_null(cf_parse_string(&A, "t.conf", q, sizeof(q) - 1, err, sizeof(err)));
    cr_assert_str_eq(err, "t.conf:1: unexpected \"\\x00\"");
    const char text[] = "a b\0c;";
    struct cf_node *r = cf_parse_string(&A, "t.conf", text, sizeof(text) - 1, err, sizeof(err));
    cr_assert_null(r);
    cr_assert_str_eq(err, "t.conf:1: unexpected \"\\x00\"");
}

Test(lexer, too_long_token)
{
    size_t n = 70 * 1024;
    char *text = malloc(n + 3);
    memset(text, 'a', n);
    memcpy(text + n, ";", 2);
    struct cf_node *r = cf_parse_string(&A, "t.conf", text, n + 1, err, sizeof(err));
    cr_assert_null(r);
    cr_assert_str_eq(err, "t.conf:1: too long parameter \"aaaaaaaaaa...\" started");
    free(text);
}

Test(lexer, deep_nesting_bounded)
{
    size_t depth = 5000;
    char *text = malloc(depth * 2 + 1);
    for (size_t i = 0; i < depth; i++)
        memcpy(text + 2 * i, "a{", 2);
    struct cf_node *r = cf_parse_string(&A, "t.conf", text, depth * 2, err, sizeof(err));
    cr_assert_null(r);
    cr_assert(strstr(err, "too deep nesting"), "%s", err);
    free(text);
}

Test(lexer, include_arguments_checked)
{
    expect_error("include;", "t.conf:1: invalid number of arguments in \"include\" directive");
    expect_error("\ninclude a b;",
                 "t.conf:2: invalid number of arguments in \"include\" directive");
    expect_error("include \"\";", "t.conf:1: invalid value \"\" in \"include\" directive");
    expect_error("include x {}", "t.conf:1: directive \"include\" is not terminated by \";\"");
}

/* dump */

static bool same_tree(const struct cf_node *a, const struct cf_node *b)
{
    for (; a && b; a = a->next, b = b->next) {
        if (strcmp(a->name, b->name) || a->nargs != b->nargs || a->is_block != b->is_block)
            return false;
        for (size_t i = 0; i < a->nargs; i++)
            if (strcmp(a->args[i], b->args[i]) || a->arg_quoted[i] != b->arg_quoted[i])
                return false;
        if (!same_tree(a->children, b->children))
            return false;
    }
    return !a && !b;
}

static char *dump(const struct cf_node *r)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cf_dump(r, f);
    fclose(f);
    return buf;
}

TestSuite(dump, .init = setup, .fini = teardown);

Test(dump, format)
{
    struct cf_node *r = parse("a 1;http{server{listen 80;location / {}}}");
    cr_assert_not_null(r);
    char *out = dump(r);
    cr_assert_str_eq(out, "a 1;\n"
                          "http {\n"
                          "    server {\n"
                          "        listen 80;\n"
                          "        location / {\n"
                          "        }\n"
                          "    }\n"
                          "}\n");
    free(out);
}

Test(dump, round_trip_awkward_words)
{
    const char *text = "\"odd name\" \"a b\" '' \"x;y\" \"{\" \"}\" \"#\" 'q\"' "
                       "\\\"lead x\\ y b\\;c \\{ d\\\\ ${v}x \"tab\\there\" "
                       "plain\"quote \"\\\\n\" \\\\n \\t \\$x \\\\${y} $ ${{ 'a\nb' k}# {\n"
                       "  inner \"\" \"\\\\\";\n"
                       "}\n";
    struct cf_node *r = parse(text);
    cr_assert_not_null(r, "%s", err);
    char *out = dump(r);
    struct cf_node *r2 = parse(out);
    cr_assert_not_null(r2, "%s\n%s", err, out);
    cr_assert(same_tree(r->children, r2->children), "dump:\n%s", out);
    free(out);
}

/* include */

TestSuite(include, .init = setup, .fini = teardown);

static char dir[64];

static void write_file(const char *rel, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

static void make_dir(void)
{
    strcpy(dir, "/tmp/cftestXXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static struct cf_node *parse_main(void)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/main.conf", dir);
    return cf_parse_file(&A, path, err, sizeof(err));
}

Test(include, glob_relative_and_positions)
{
    make_dir();
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/conf.d", dir);
    cr_assert_eq(mkdir(sub, 0700), 0);
    write_file("main.conf",
               "a;\nhttp {\n    include conf.d/*.conf;\n    z;\n}\ninclude none/*.x;\n");
    write_file("conf.d/b.conf", "\n\nserver { b; }\n");
    write_file("conf.d/a.conf", "server_a;\n");
    write_file("conf.d/skip.txt", "nope;\n");
    struct cf_node *r = parse_main();
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(count(r->children), 2);
    struct cf_node *http = r->children->next;
    struct cf_node *n = http->children;
    cr_assert_str_eq(n->name, "server_a");
    cr_assert_eq(n->line, 1);
    cr_assert(strstr(n->file, "conf.d/a.conf"), "%s", n->file);
    n = n->next;
    cr_assert_str_eq(n->name, "server");
    cr_assert_eq(n->line, 3);
    cr_assert(strstr(n->file, "conf.d/b.conf"));
    n = n->next;
    cr_assert_str_eq(n->name, "z");
    cr_assert_eq(n->line, 4);
    cr_assert(strstr(n->file, "main.conf"));
    remove_dir();
}

Test(include, missing_file_named)
{
    make_dir();
    write_file("main.conf", "a;\n\ninclude nothere.conf;\n");
    cr_assert_null(parse_main());
    char want[512];
    snprintf(want, sizeof(want),
             "%s/main.conf:3: open() \"%s/nothere.conf\" failed (2: No such file or directory)",
             dir, dir);
    cr_assert_str_eq(err, want);
    remove_dir();
}

Test(include, missing_main_file)
{
    cr_assert_null(cf_parse_file(&A, "/nonexistent/portico.conf", err, sizeof(err)));
    cr_assert(strstr(err, "open() \"/nonexistent/portico.conf\" failed (2: No such file"), "%s",
              err);
}

Test(include, error_inside_included_file)
{
    make_dir();
    write_file("main.conf", "http {\ninclude inc.conf;\n}\n");
    write_file("inc.conf", "ok;\n}\n");
    cr_assert_null(parse_main());
    char want[256];
    snprintf(want, sizeof(want), "%s/inc.conf:2: unexpected \"}\"", dir);
    cr_assert_str_eq(err, want);
    /* an included file cannot leave its block open either */
    write_file("inc.conf", "server {\n");
    cr_assert_null(parse_main());
    snprintf(want, sizeof(want), "%s/inc.conf:2: unexpected end of file, expecting \"}\"", dir);
    cr_assert_str_eq(err, want);
    remove_dir();
}

Test(include, loop_is_bounded)
{
    make_dir();
    write_file("main.conf", "include self.conf;\n");
    write_file("self.conf", "x;\ninclude self.conf;\n");
    cr_assert_null(parse_main());
    cr_assert(strstr(err, "self.conf:2: too deep include nesting"), "%s", err);
    remove_dir();
}

Test(include, directory_refused)
{
    make_dir();
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/d", dir);
    cr_assert_eq(mkdir(sub, 0700), 0);
    write_file("main.conf", "include d;\n");
    cr_assert_null(parse_main());
    cr_assert(strstr(err, "main.conf:1: open() "), "%s", err);
    cr_assert(strstr(err, "(21: Is a directory)"), "%s", err);
    remove_dir();
}

Test(include, string_relative_to_cwd)
{
    make_dir();
    write_file("inc.conf", "from_inc 1;\n");
    char cwd[PATH_MAX];
    cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
    cr_assert_eq(chdir(dir), 0);
    struct cf_node *r = parse("include inc.conf;\ninclude *.conf;");
    cr_assert_eq(chdir(cwd), 0);
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(count(r->children), 2);
    cr_assert_str_eq(r->children->name, "from_inc");
    cr_assert_str_eq(r->children->file, "inc.conf");
    remove_dir();
}

/* registry and setters */

struct test_conf {
    int flag;
    uint32_t timeout_ms;
    uint32_t ttl_s;
    size_t size;
    int count;
    char *name;
};

static int block_set(struct cf_ctx *cx, const struct cf_node *n, const struct cf_directive *d,
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

#define OFF(f) offsetof(struct test_conf, f)

static const struct cf_directive core_rows[] = {
    {"flag", CF_MAIN | CF_SERVER, 1, 1, false, cf_set_flag, 0, OFF(flag), "on | off", "off",
     "a flag"},
    {"timeout", CF_MAIN, 1, 1, false, cf_set_msec, 0, OFF(timeout_ms), "time", "60s", "a timeout"},
    {"ttl", CF_MAIN, 1, 1, false, cf_set_sec, 0, OFF(ttl_s), "time", "-", "seconds"},
    {"size", CF_MAIN, 1, 1, false, cf_set_size, 0, OFF(size), "size", "16k", "a size"},
    {"count", CF_MAIN, 1, 1, false, cf_set_int, 0, OFF(count), "number", "1", "a count"},
    {"name", CF_MAIN, 1, 1, false, cf_set_str, 0, OFF(name), "string", "-", "a name"},
    {"legacy", CF_MAIN | CF_HTTP, 0, CF_ARGS_ANY, false, cf_set_noop, 0, 0, "...", "-",
     "accepted and ignored"},
    {"server", CF_MAIN, 0, 0, true, block_set, 1, 0, "", "-", "a block"},
    {0},
};

static const struct cf_directive other_rows[] = {
    {"server", CF_STREAM, 1, 2, true, NULL, 0, 0, "address", "-", "stream server"},
    {"only_http", CF_HTTP, 1, 1, false, cf_set_noop, 0, 0, "x", "-", "http only"},
    {0},
};

static const struct cf_module core_mod = {"core", core_rows};
static const struct cf_module other_mod = {"other", other_rows};

static struct test_conf tc, sc;
static struct cf_ctx cx;

static void reg_setup(void)
{
    setup();
    const struct cf_module *mods[] = {&core_mod, &other_mod};
    cf_register(mods, 2);
    tc = (struct test_conf){CF_UNSET_FLAG, CF_UNSET_MSEC, CF_UNSET_MSEC,
                            CF_UNSET_SIZE, CF_UNSET_INT,  NULL};
    sc = tc;
    cx = (struct cf_ctx){.arena = &A, .err = err, .errlen = sizeof(err), .context = CF_MAIN};
    cx.confs[0] = &tc;
    cx.confs[1] = &sc;
}

static int apply(const char *text)
{
    struct cf_node *r = parse(text);
    cr_assert_not_null(r, "%s", err);
    err[0] = '\0';
    return cf_apply_block(&cx, r);
}

static void expect_apply_error(const char *text, const char *msg)
{
    cr_assert_eq(apply(text), -1, "applied: %s", text);
    cr_assert_str_eq(err, msg, "input: %s", text);
}

TestSuite(apply, .init = reg_setup, .fini = teardown);

Test(apply, find)
{
    cr_assert_eq(cf_find("flag"), &core_rows[0]);
    cr_assert_eq(cf_find("server"), &core_rows[7]); /* first registered */
    cr_assert_eq(cf_find("only_http"), &other_rows[1]);
    cr_assert_null(cf_find("nope"));
    cr_assert_null(cf_find(""));
}

Test(apply, all_setters_good)
{
    cr_assert_eq(apply("flag ON; timeout 1m30s; ttl 2h; size 16k; count 42; name \"a b\";"
                       "legacy 1 2 3; legacy;"),
                 0, "%s", err);
    cr_assert_eq(tc.flag, 1);
    cr_assert_eq(tc.timeout_ms, 90000);
    cr_assert_eq(tc.ttl_s, 7200);
    cr_assert_eq(tc.size, 16384);
    cr_assert_eq(tc.count, 42);
    cr_assert_str_eq(tc.name, "a b");
}

Test(apply, unknown_misplaced_argc_block)
{
    expect_apply_error("flag on;\n\nbogus 1;", "t.conf:3: unknown directive \"bogus\"");
    expect_apply_error("only_http x;", "t.conf:1: \"only_http\" directive is not allowed here");
    expect_apply_error("timeout;",
                       "t.conf:1: invalid number of arguments in \"timeout\" directive");
    expect_apply_error("\ntimeout 1 2;",
                       "t.conf:2: invalid number of arguments in \"timeout\" directive");
    expect_apply_error("server;", "t.conf:1: directive \"server\" has no opening \"{\"");
    expect_apply_error("count 1 { }", "t.conf:1: unexpected \"{\"");
    expect_apply_error("server x { }",
                       "t.conf:1: invalid number of arguments in \"server\" directive");
}

Test(apply, nested_block_context)
{
    cr_assert_eq(apply("server {\n flag off;\n}"), 0, "%s", err);
    cr_assert_eq(sc.flag, 0);
    cr_assert_eq(tc.flag, CF_UNSET_FLAG);
    expect_apply_error("server {\n\n  count 1;\n}",
                       "t.conf:3: \"count\" directive is not allowed here");
}

Test(apply, same_name_other_context)
{
    cx.context = CF_STREAM;
    cr_assert_eq(apply("server 127.0.0.1:53 { }"), 0, "%s", err);
    cx.context = CF_HTTP;
    expect_apply_error("server { }", "t.conf:1: \"server\" directive is not allowed here");
}

Test(apply, duplicates)
{
    expect_apply_error("flag on;\nflag off;", "t.conf:2: \"flag\" directive is duplicate");
    expect_apply_error("timeout 1s; timeout 2s;", "t.conf:1: \"timeout\" directive is duplicate");
    expect_apply_error("ttl 1; ttl 1;", "t.conf:1: \"ttl\" directive is duplicate");
    expect_apply_error("size 1; size 1;", "t.conf:1: \"size\" directive is duplicate");
    expect_apply_error("count 0; count 0;", "t.conf:1: \"count\" directive is duplicate");
    expect_apply_error("name a; name b;", "t.conf:1: \"name\" directive is duplicate");
}

Test(apply, bad_values)
{
    expect_apply_error("flag yes;",
                       "t.conf:1: invalid value \"yes\" in \"flag\" directive, it must be \"on\" "
                       "or \"off\"");
    expect_apply_error("timeout 10x;", "t.conf:1: invalid value \"10x\" in \"timeout\" directive");
    expect_apply_error("ttl 5ms;", "t.conf:1: invalid value \"5ms\" in \"ttl\" directive");
    expect_apply_error("size 1t;", "t.conf:1: invalid value \"1t\" in \"size\" directive");
    expect_apply_error("count -1;", "t.conf:1: invalid value \"-1\" in \"count\" directive");
}

Test(apply, cf_error_format)
{
    struct cf_node n = {.name = "x", .file = "f.conf", .line = 7};
    cr_assert_eq(cf_error(&cx, &n, "bad %s %d", "thing", 3), -1);
    cr_assert_str_eq(err, "f.conf:7: bad thing 3");
}

/* value parsers */

static uint32_t msec(const char *s)
{
    uint32_t v = 12345;
    cr_assert_eq(cf_parse_msec(s, &v), 0, "rejected %s", s);
    return v;
}

static void msec_bad(const char *s)
{
    uint32_t v;
    cr_assert_eq(cf_parse_msec(s, &v), -1, "accepted %s", s);
}

TestSuite(values);

Test(values, msec_good)
{
    cr_assert_eq(msec("30"), 30000);
    cr_assert_eq(msec("0"), 0);
    cr_assert_eq(msec("30s"), 30000);
    cr_assert_eq(msec("500ms"), 500);
    cr_assert_eq(msec("1m30s"), 90000);
    cr_assert_eq(msec("1m30"), 90000);
    cr_assert_eq(msec("1h 30m"), 5400000);
    cr_assert_eq(msec("2h"), 7200000);
    cr_assert_eq(msec("1d"), 86400000);
    cr_assert_eq(msec("1w"), 604800000);
    cr_assert_eq(msec("1M"), 2592000000u);
    cr_assert_eq(msec("1s500ms"), 1500);
    cr_assert_eq(msec("4294967294ms"), 4294967294u);
}

Test(values, msec_bad)
{
    const char *bad[] = {
        "",      "s",    "ms",  "1x", "1s1m", "1s1s",         "1mm", "-1",
        "1.5s",  " 1s",  "1 s", "1y", "50d",  "4294967295ms", "1s0", "99999999999999999999",
        "1h-1m", "1ms5", "1\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        msec_bad(bad[i]);
}

Test(values, sec_via_setter)
{
    struct arena a;
    arena_init(&a, 0, 0);
    char e[128];
    struct cf_node *r = cf_parse_string(&a, "s", "ttl 1y;", 7, e, sizeof(e));
    cr_assert_not_null(r);
    static const struct cf_module *mods[] = {&core_mod};
    cf_register(mods, 1);
    struct test_conf c = {.ttl_s = CF_UNSET_MSEC};
    struct cf_ctx x = {.arena = &a, .err = e, .errlen = sizeof(e), .context = CF_MAIN};
    x.confs[0] = &c;
    cr_assert_eq(cf_apply_block(&x, r), 0, "%s", e);
    cr_assert_eq(c.ttl_s, 365u * 86400);
    arena_deinit(&a);
}

Test(values, size)
{
    size_t v;
    cr_assert_eq(cf_parse_size("0", &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(cf_parse_size("512", &v), 0);
    cr_assert_eq(v, 512);
    cr_assert_eq(cf_parse_size("16k", &v), 0);
    cr_assert_eq(v, 16384);
    cr_assert_eq(cf_parse_size("16K", &v), 0);
    cr_assert_eq(cf_parse_size("1m", &v), 0);
    cr_assert_eq(v, 1048576);
    cr_assert_eq(cf_parse_size("2G", &v), 0);
    cr_assert_eq(v, 2147483648u);
    const char *bad[] = {"",
                         "k",
                         "1kb",
                         "-1",
                         "1.5k",
                         " 1",
                         "1t",
                         "99999999999999999999",
                         "18446744073709551615",
                         "17179869184g"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(cf_parse_size(bad[i], &v), -1, "accepted %s", bad[i]);
}

Test(values, integer)
{
    int v;
    cr_assert_eq(cf_parse_int("0", &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(cf_parse_int("2147483647", &v), 0);
    cr_assert_eq(v, INT_MAX);
    const char *bad[] = {"", "-1", "+1", "1a", "2147483648", " 1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(cf_parse_int(bad[i], &v), -1, "accepted %s", bad[i]);
}

/* docs */

TestSuite(docs, .init = reg_setup, .fini = teardown);

Test(docs, markdown_rows)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cf_docs_markdown(f);
    fclose(f);
    cr_assert(strstr(buf, "## core\n"));
    cr_assert(strstr(buf, "## other\n"));
    cr_assert(strstr(buf, "### flag\n"));
    cr_assert(strstr(buf, "| Syntax | `flag on \\| off;` |\n"), "%s", buf);
    cr_assert(strstr(buf, "| Default | `off` |\n"));
    cr_assert(strstr(buf, "| Context | main, server |\n"));
    cr_assert(strstr(buf, "a flag\n"));
    cr_assert(strstr(buf, "| Syntax | `server address { ... }` |\n"));
    cr_assert(strstr(buf, "| Context | stream |\n"));
    cr_assert(strstr(buf, "| Default | - |\n"));
    /* table order: core before other, flag before timeout */
    cr_assert(strstr(buf, "## core") < strstr(buf, "## other"));
    cr_assert(strstr(buf, "### flag") < strstr(buf, "### timeout"));
    /* deterministic */
    char *buf2 = NULL;
    size_t len2 = 0;
    f = open_memstream(&buf2, &len2);
    cf_docs_markdown(f);
    fclose(f);
    cr_assert_str_eq(buf, buf2);
    free(buf);
    free(buf2);
}

Test(lexer, arena_cap_reports_out_of_memory)
{
    struct arena small;
    arena_init(&small, 256, 1024);
    const char *text = "http { server { listen 80; server_name a.example b.example c.example; "
                       "location / { proxy_pass http://backend; } } }";
    struct cf_node *r = NULL;
    /* the arena fills up over a few parses; each failure must be clean */
    for (int i = 0;
         i < 20 && (r = cf_parse_string(&small, "t.conf", text, strlen(text), err, sizeof(err)));
         i++)
        ;
    cr_assert_null(r);
    cr_assert(strstr(err, "t.conf:") == err && strstr(err, "out of memory"), "%s", err);
    arena_deinit(&small);
}
