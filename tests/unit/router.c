/* Router: nginx's location and server_name precedence. Each location or
 * server carries its label in `conf`; cases name the label expected. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/router.h"

static struct arena A;
static struct location *tops[256];
static size_t ntops;
static struct vhost_table *tables[16];
static size_t ntables;
static char err[256];

static void setup(void)
{
    arena_init(&A, 4096, 0);
    ntops = ntables = 0;
    err[0] = '\0';
}

static void teardown(void)
{
    for (size_t i = 0; i < ntops; i++)
        router_location_deinit(tops[i]);
    for (size_t i = 0; i < ntables; i++)
        router_vhosts_free(tables[i]);
    router_thread_deinit();
    arena_deinit(&A);
}

TestSuite(location, .init = setup, .fini = teardown);
TestSuite(vhost, .init = setup, .fini = teardown);

/* "= /x", "^~ /x", "/x", "~ re", "~* re", "@name"; children NULL-terminated */
static struct location *L(const char *spec, const char *label, ...)
{
    struct location *l = arena_calloc(&A, sizeof(*l));
    const char *pat = spec;
    l->match = LOC_PREFIX;
    if (spec[0] == '@') {
        l->match = LOC_NAMED;
    } else if (!strncmp(spec, "= ", 2)) {
        l->match = LOC_EXACT;
        pat = spec + 2;
    } else if (!strncmp(spec, "^~ ", 3)) {
        l->match = LOC_PREFIX_NOREGEX;
        pat = spec + 3;
    } else if (!strncmp(spec, "~* ", 3)) {
        l->match = LOC_REGEX_CI;
        pat = spec + 3;
    } else if (!strncmp(spec, "~ ", 2)) {
        l->match = LOC_REGEX;
        pat = spec + 2;
    }
    l->pattern = pat;
    l->pattern_len = strlen(pat);
    l->conf = (void *)label;

    va_list ap;
    struct location *c, *kids[32];
    size_t n = 0;
    va_start(ap, label);
    while ((c = va_arg(ap, struct location *)))
        kids[n++] = c;
    va_end(ap);
    if (n) {
        l->children = arena_alloc(&A, n * sizeof(*kids));
        memcpy(l->children, kids, n * sizeof(*kids));
        l->nchildren = n;
    }
    return l;
}

/* build from a NULL-terminated list of top-level locations */
static struct location_set *build(struct location *first, ...)
{
    va_list ap;
    struct location **v = &tops[ntops];
    size_t n = 0;
    va_start(ap, first);
    for (struct location *l = first; l; l = va_arg(ap, struct location *))
        v[n++] = l;
    va_end(ap);
    ntops += n;
    return router_locations_build(&A, v, n, err, sizeof(err));
}

static struct route_captures caps;

static const char *find(const struct location_set *s, const char *path)
{
    const struct location *l = router_find_location(s, slice_cstr(path), &caps);
    return l ? (const char *)l->conf : "none";
}

#define EXPECT(s, path, label) cr_expect_str_eq(find(s, path), label, "path %s", path)

/* ---------------------------------------------------------- the doc example */

static struct location_set *doc_example(void)
{
    struct location_set *s =
        build(L("= /", "A", NULL), L("/", "B", NULL), L("/documents/", "C", NULL),
              L("^~ /images/", "D", NULL), L("~* \\.(gif|jpg|jpeg)$", "E", NULL), NULL);
    cr_assert(s, "%s", err);
    return s;
}

Test(location, doc_root_is_exact)
{
    EXPECT(doc_example(), "/", "A");
}

Test(location, doc_index_is_prefix_root)
{
    EXPECT(doc_example(), "/index.html", "B");
}

Test(location, doc_documents_prefix)
{
    EXPECT(doc_example(), "/documents/document.html", "C");
}

Test(location, doc_images_noregex)
{
    EXPECT(doc_example(), "/images/1.gif", "D");
}

Test(location, doc_regex_beats_prefix)
{
    EXPECT(doc_example(), "/documents/1.jpg", "E");
}

Test(location, doc_regex_caseless)
{
    EXPECT(doc_example(), "/documents/1.JPG", "E");
}

Test(location, doc_prefix_is_case_sensitive)
{
    /* "/IMAGES/" is not "^~ /images/": the caseless regex gets it */
    EXPECT(doc_example(), "/IMAGES/1.GIF", "E");
}

Test(location, doc_images_without_slash)
{
    EXPECT(doc_example(), "/images", "B");
}

Test(location, doc_exact_root_not_for_longer)
{
    EXPECT(doc_example(), "/x", "B");
}

/* ------------------------------------------------------------ exact/prefix */

Test(location, exact_and_prefix_of_same_string)
{
    struct location_set *s = build(L("/x", "P", NULL), L("= /x", "X", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/x", "X");
    EXPECT(s, "/x/y", "P");
    EXPECT(s, "/xy", "P");
    EXPECT(s, "/", "none");
}

Test(location, exact_beats_regex)
{
    struct location_set *s = build(L("~ ^/a", "R", NULL), L("= /abc", "X", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/abc", "X");
    EXPECT(s, "/abcd", "R");
}

Test(location, exact_only_no_prefix_match)
{
    struct location_set *s = build(L("= /a", "X", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/", "none");
    EXPECT(s, "/", "none");
}

Test(location, longest_prefix_wins_not_file_order)
{
    struct location_set *s =
        build(L("/", "R", NULL), L("/a/b/", "AB", NULL), L("/a/", "A", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/b/c", "AB");
    EXPECT(s, "/a/c", "A");
    EXPECT(s, "/a", "R");
}

Test(location, prefix_chain_skips_siblings)
{
    struct location_set *s =
        build(L("/a", "A", NULL), L("/a/b", "AB", NULL), L("/a/c", "AC", NULL),
              L("/ab", "AB2", NULL), L("/abc", "ABC", NULL), L("/b", "B", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/bz", "AB");
    EXPECT(s, "/a/d", "A");
    EXPECT(s, "/abd", "AB2");
    EXPECT(s, "/abcd", "ABC");
    EXPECT(s, "/aa", "A");
    EXPECT(s, "/b/x", "B");
    EXPECT(s, "/", "none");
    EXPECT(s, "/0", "none");
    EXPECT(s, "/z", "none");
}

Test(location, exact_only_entry_in_chain)
{
    struct location_set *s = build(L("/a", "A", NULL), L("= /a/b", "X", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/b", "X");
    EXPECT(s, "/a/bc", "A");
    EXPECT(s, "/a/a", "A");
}

Test(location, no_match_is_null)
{
    struct location_set *s = build(L("/a/", "A", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/b", "none");
    EXPECT(s, "", "none");
    cr_expect_eq(router_find_location(s, SLICE_NULL, NULL), NULL);
}

Test(location, empty_set)
{
    struct location_set *s = build(NULL);
    cr_assert(s);
    EXPECT(s, "/", "none");
}

Test(location, prefix_case_sensitive)
{
    struct location_set *s = build(L("/Abc", "A", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/abc", "none");
    EXPECT(s, "/Abcd", "A");
}

/* ------------------------------------------------------------------ ^~ */

Test(location, noregex_stops_regex)
{
    struct location_set *s =
        build(L("^~ /a/", "N", NULL), L("/a/b/", "P", NULL), L("~ \\.php$", "R", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/c.php", "N");
}

Test(location, longer_plain_prefix_beats_noregex_then_regex)
{
    struct location_set *s =
        build(L("^~ /a/", "N", NULL), L("/a/b/", "P", NULL), L("~ \\.php$", "R", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/b/c.php", "R");
    EXPECT(s, "/a/b/c.html", "P");
}

Test(location, noregex_only_when_longest)
{
    struct location_set *s =
        build(L("/a/", "P", NULL), L("^~ /a/b/", "N", NULL), L("~ \\.gif$", "R", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/a/b/1.gif", "N");
    EXPECT(s, "/a/1.gif", "R");
}

/* ---------------------------------------------------------------- regexes */

Test(location, regex_file_order)
{
    struct location_set *s = build(L("~ ^/r/", "R1", NULL), L("~ ^/r/x", "R2", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/r/x", "R1");
}

Test(location, regex_file_order_reversed)
{
    struct location_set *s = build(L("~ ^/r/x", "R2", NULL), L("~ ^/r/", "R1", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/r/x", "R2");
    EXPECT(s, "/r/y", "R1");
}

Test(location, regex_beats_any_prefix)
{
    struct location_set *s = build(L("/r/long/prefix/", "P", NULL), L("~ ^/r/", "R", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/r/long/prefix/x", "R");
}

Test(location, regex_case_sensitive)
{
    struct location_set *s = build(L("~ \\.PHP$", "R", NULL), L("/", "B", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/x.php", "B");
    EXPECT(s, "/x.PHP", "R");
}

Test(location, regex_case_insensitive)
{
    struct location_set *s = build(L("~* \\.PHP$", "R", NULL), L("/", "B", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/x.php", "R");
    EXPECT(s, "/x.Php", "R");
}

Test(location, duplicate_regex_allowed_first_wins)
{
    struct location_set *s = build(L("~ x", "R1", NULL), L("~ x", "R2", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/x", "R1");
}

/* ------------------------------------------------------------------ nested */

static struct location_set *nested_example(void)
{
    struct location_set *s =
        build(L("/a/", "A", L("/a/b/", "AB", NULL), L("~ \\.jpg$", "AJ", NULL), NULL),
              L("~ \\.jpg$", "J", NULL), L("~ \\.png$", "PNG", NULL), NULL);
    cr_assert(s, "%s", err);
    return s;
}

Test(location, nested_prefix)
{
    EXPECT(nested_example(), "/a/b/x", "AB");
}

Test(location, nested_regex_before_outer)
{
    EXPECT(nested_example(), "/a/x.jpg", "AJ");
}

Test(location, nested_regex_of_parent_level_after_nested_prefix)
{
    EXPECT(nested_example(), "/a/b/x.jpg", "AJ");
}

Test(location, outer_regex_after_nested_fail)
{
    EXPECT(nested_example(), "/a/x.png", "PNG");
}

Test(location, nested_falls_back_to_parent_prefix)
{
    EXPECT(nested_example(), "/a/x", "A");
}

Test(location, outer_regex_outside_parent)
{
    EXPECT(nested_example(), "/b/x.jpg", "J");
}

Test(location, nested_exact_is_final)
{
    struct location_set *s =
        build(L("/a/", "A", L("= /a/x", "AX", NULL), NULL), L("~ x$", "R", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/a/x", "AX");
    EXPECT(s, "/a/yx", "R");
}

Test(location, noregex_parent_nested_plain)
{
    struct location_set *s =
        build(L("^~ /i/", "I", L("/i/big/", "IB", NULL), NULL), L("~ \\.gif$", "G", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/i/big/1.gif", "IB");
    EXPECT(s, "/i/1.gif", "I");
}

Test(location, noregex_parent_still_runs_nested_regex)
{
    struct location_set *s =
        build(L("^~ /i/", "I", L("~ \\.png$", "IP", NULL), NULL), L("~ \\.png$", "G", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/i/1.png", "IP");
}

/* ngx_http_core_find_location(): a nested "^~" skips only its own level's
 * regexes; the enclosing plain prefix still lets the outer regexes run. */
Test(location, nested_noregex_does_not_stop_outer_regex)
{
    struct location_set *s =
        build(L("/a/", "A", L("^~ /a/b/", "AB", NULL), NULL), L("~ \\.gif$", "G", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/a/b/1.gif", "G");
    EXPECT(s, "/a/b/1.txt", "AB");
}

Test(location, regex_location_nested_search)
{
    struct location_set *s =
        build(L("~ ^/api/", "API", L("~ /v2/", "V2", NULL), NULL), L("/", "B", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/api/v2/x", "V2");
    EXPECT(s, "/api/v1/x", "API");
    EXPECT(s, "/x", "B");
}

Test(location, three_levels)
{
    struct location_set *s =
        build(L("/a/", "A", L("/a/b/", "AB", L("/a/b/c/", "ABC", NULL), NULL), NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/a/b/c/d", "ABC");
    EXPECT(s, "/a/b/d", "AB");
    cr_expect_str_eq((const char *)tops[0]->children[0]->children[0]->parent->parent->conf, "A");
}

/* ---------------------------------------------------------------- captures */

Test(location, captures_values)
{
    struct location_set *s = build(L("~ ^/u/(\\d+)/(?<name>\\w+)$", "U", NULL), NULL);
    cr_assert(s, "%s", err);
    const char *path = "/u/42/bob";
    EXPECT(s, path, "U");
    cr_assert_eq(caps.n, 3);
    cr_expect_eq(caps.subject, path);
    cr_expect_eq(caps.ov[0], 0);
    cr_expect_eq(caps.ov[1], 9);
    cr_expect(!strncmp(caps.subject + caps.ov[2], "42", caps.ov[3] - caps.ov[2]));
    cr_expect_eq(caps.ov[3] - caps.ov[2], 2);
    int g = pcre2_substring_number_from_name(caps.re, (PCRE2_SPTR) "name");
    cr_assert_eq(g, 2);
    cr_expect_eq(caps.ov[2 * g + 1] - caps.ov[2 * g], 3);
    cr_expect(!strncmp(caps.subject + caps.ov[2 * g], "bob", 3));
}

Test(location, captures_cleared_without_regex)
{
    struct location_set *s = build(L("~ ^/r/(.*)", "R", NULL), L("/p", "P", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "/r/x", "R");
    cr_expect_eq(caps.n, 2);
    EXPECT(s, "/p", "P");
    cr_expect_eq(caps.n, 0);
}

Test(location, captures_of_nested_regex)
{
    struct location_set *s = build(L("~ ^/(a)", "RA", L("~ ^/a/(b)(c)", "RB", NULL), NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/a/bc", "RB");
    cr_expect_eq(caps.n, 3);
}

Test(location, more_groups_than_ovector)
{
    struct location_set *s = build(L("~ ^/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)", "R", NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/abcdefghijk", "R");
    cr_expect_eq(caps.n, ROUTER_MAX_CAPTURES);
}

/* ------------------------------------------------------------------ named */

Test(location, named_lookup)
{
    struct location_set *s =
        build(L("/", "B", NULL), L("@fallback", "F", NULL), L("@fallback", "F2", NULL), NULL);
    cr_assert(s, "%s", err);
    const struct location *l = router_find_named(s, SLICE_LIT("@fallback"));
    cr_assert(l);
    cr_expect_str_eq((const char *)l->conf, "F");
    cr_expect_eq(router_find_named(s, SLICE_LIT("@other")), NULL);
    cr_expect_eq(router_find_named(s, SLICE_LIT("fallback")), NULL);
}

Test(location, named_never_matched_by_path)
{
    struct location_set *s = build(L("@x", "N", NULL), NULL);
    cr_assert(s);
    EXPECT(s, "@x", "none");
    EXPECT(s, "/", "none");
}

/* ------------------------------------------------------------------ errors */

Test(location, duplicate_prefix)
{
    cr_expect_eq(build(L("/x", "A", NULL), L("/y", "B", NULL), L("/x", "C", NULL), NULL), NULL);
    cr_expect_str_eq(err, "duplicate location \"/x\"");
}

Test(location, duplicate_noregex_and_prefix)
{
    cr_expect_eq(build(L("^~ /x", "A", NULL), L("/x", "C", NULL), NULL), NULL);
    cr_expect_str_eq(err, "duplicate location \"/x\"");
}

Test(location, duplicate_exact)
{
    cr_expect_eq(build(L("= /x", "A", NULL), L("= /x", "C", NULL), NULL), NULL);
    cr_expect_str_eq(err, "duplicate location \"/x\"");
}

Test(location, duplicate_nested)
{
    cr_expect_eq(build(L("/a/", "A", L("/a/b", "1", NULL), L("/a/b", "2", NULL), NULL), NULL),
                 NULL);
    cr_expect_str_eq(err, "duplicate location \"/a/b\"");
}

Test(location, same_prefix_on_two_levels_is_fine)
{
    struct location_set *s = build(L("/a/", "A", L("/a/", "AA", NULL), NULL), NULL);
    cr_assert(s, "%s", err);
    EXPECT(s, "/a/x", "AA");
}

Test(location, bad_regex)
{
    cr_expect_eq(build(L("/", "B", NULL), L("~ ^/(foo", "R", NULL), NULL), NULL);
    cr_expect(strstr(err, "pcre2_compile() failed: missing closing parenthesis"), "%s", err);
    cr_expect(strstr(err, "\"^/(foo\" at offset 6"), "%s", err);
}

Test(location, compile_direct)
{
    struct location *l = L("~* [a-", "R", NULL);
    tops[ntops++] = l;
    cr_expect_eq(router_location_compile(l, err, sizeof(err)), -1);
    cr_expect(strstr(err, "pcre2_compile() failed"), "%s", err);
    struct location *ok = L("~* ^/ok", "R", NULL);
    tops[ntops++] = ok;
    cr_expect_eq(router_location_compile(ok, err, sizeof(err)), 0);
    cr_expect(ok->re);
}

Test(location, nested_outside_parent)
{
    cr_expect_eq(build(L("/a/", "A", L("/b/", "B", NULL), NULL), NULL), NULL);
    cr_expect_str_eq(err, "location \"/b/\" is outside location \"/a/\"");
}

Test(location, nested_in_exact)
{
    cr_expect_eq(build(L("= /a/", "A", L("/a/b", "B", NULL), NULL), NULL), NULL);
    cr_expect_str_eq(err, "location \"/a/b\" cannot be inside the exact location \"/a/\"");
}

Test(location, nested_named)
{
    cr_expect_eq(build(L("/a/", "A", L("@n", "N", NULL), NULL), NULL), NULL);
    cr_expect_str_eq(err, "named location \"@n\" can be on the server level only");
}

/* ----------------------------------------------------- against a naive scan */

Test(location, random_prefix_sets_match_naive)
{
    static const char alpha[] = "/ab";
    srand(7);
    for (int round = 0; round < 200; round++) {
        struct location *locs[40];
        char *pats[40];
        size_t n = 0;
        for (int i = 0; i < 40; i++) {
            char buf[8];
            size_t len = 1 + (size_t)(rand() % 6);
            for (size_t k = 0; k < len; k++)
                buf[k] = alpha[rand() % 3];
            bool exact = rand() % 4 == 0, dup = false;
            for (size_t j = 0; j < n; j++)
                dup |= strlen(pats[j]) == len && !memcmp(pats[j], buf, len) &&
                       (locs[j]->match == LOC_EXACT) == exact;
            if (dup)
                continue;
            pats[n] = arena_strndup(&A, buf, len);
            char *spec = arena_printf(&A, "%s%s", exact ? "= " : "", pats[n]);
            locs[n] = L(spec, pats[n], NULL);
            n++;
        }
        struct location_set *s = router_locations_build(&A, locs, n, err, sizeof(err));
        cr_assert(s, "%s", err);
        for (int q = 0; q < 50; q++) {
            char path[10];
            size_t len = (size_t)(rand() % 9);
            for (size_t k = 0; k < len; k++)
                path[k] = alpha[rand() % 3];
            const struct location *want = NULL;
            for (size_t j = 0; j < n && !(want && want->match == LOC_EXACT); j++) {
                size_t pl = locs[j]->pattern_len;
                if (locs[j]->match == LOC_EXACT) {
                    if (pl == len && !memcmp(locs[j]->pattern, path, len))
                        want = locs[j];
                } else if (pl <= len && !memcmp(locs[j]->pattern, path, pl) &&
                           (!want || pl > want->pattern_len)) {
                    want = locs[j];
                }
            }
            const struct location *got = router_find_location(s, slice_make(path, len), NULL);
            cr_assert_eq(got, want, "round %d path %.*s", round, (int)len, path);
        }
    }
}

/* ----------------------------------------------------------------- threads */

static void *thread_lookups(void *arg)
{
    const struct location_set *s = arg;
    struct route_captures c;
    size_t bad = 0;
    for (int i = 0; i < 20000; i++) {
        char path[32];
        int len = snprintf(path, sizeof(path), "/u/%d/x", i);
        const struct location *l = router_find_location(s, slice_make(path, (size_t)len), &c);
        if (!l || c.n != 2 || c.ov[3] - c.ov[2] != (size_t)len - 5)
            bad++;
    }
    router_thread_deinit();
    return (void *)bad;
}

Test(location, concurrent_regex_lookups)
{
    struct location_set *s = build(L("~ ^/u/(\\d+)/", "U", NULL), NULL);
    cr_assert(s);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, thread_lookups, s);
    for (int i = 0; i < 4; i++) {
        void *bad;
        pthread_join(th[i], &bad);
        cr_expect_eq((size_t)bad, 0);
    }
}

/* ================================================================= vhosts */

static struct vhost *V(const char *label, ...)
{
    struct vhost *v = arena_calloc(&A, sizeof(*v));
    const char *names[16], *n;
    size_t k = 0;
    va_list ap;
    va_start(ap, label);
    while ((n = va_arg(ap, const char *)))
        names[k++] = n;
    va_end(ap);
    v->names = arena_alloc(&A, (k ? k : 1) * sizeof(*names));
    memcpy(v->names, names, k * sizeof(*names));
    v->nnames = k;
    v->conf = (void *)label;
    return v;
}

static struct vhost_table *vbuild(int def, struct vhost *first, ...)
{
    struct vhost *v[32];
    size_t n = 0;
    va_list ap;
    va_start(ap, first);
    for (struct vhost *s = first; s; s = va_arg(ap, struct vhost *))
        v[n++] = s;
    va_end(ap);
    struct vhost_table *t = router_vhosts_build(&A, v, n, def, err, sizeof(err));
    if (t)
        tables[ntables++] = t;
    return t;
}

static const char *vfind(const struct vhost_table *t, const char *host)
{
    const struct vhost *v = router_find_vhost(t, slice_cstr(host), &caps);
    return v ? (const char *)v->conf : "none";
}

#define VEXPECT(t, host, label) cr_expect_str_eq(vfind(t, host), label, "host %s", host)

static struct vhost_table *mixed(void)
{
    struct vhost_table *t = vbuild(
        -1, V("D", "_", NULL), V("EX", "example.com", NULL), V("HEAD", "*.example.com", NULL),
        V("TAIL", "www.example.*", NULL), V("RE", "~^(?<sub>.+)\\.example\\.net$", NULL), NULL);
    cr_assert(t, "%s", err);
    return t;
}

Test(vhost, exact_name)
{
    VEXPECT(mixed(), "example.com", "EX");
}

Test(vhost, leading_wildcard_before_trailing)
{
    VEXPECT(mixed(), "www.example.com", "HEAD");
}

Test(vhost, leading_wildcard_deep)
{
    VEXPECT(mixed(), "a.b.example.com", "HEAD");
}

Test(vhost, trailing_wildcard)
{
    VEXPECT(mixed(), "www.example.org", "TAIL");
    VEXPECT(mixed(), "www.example.co.uk", "TAIL");
    VEXPECT(mixed(), "www.example", "D");
}

Test(vhost, regex_with_named_capture)
{
    const char *host = "shop.eu.example.net";
    VEXPECT(mixed(), host, "RE");
    cr_assert_eq(caps.n, 2);
    cr_expect_eq(caps.subject, host);
    int g = pcre2_substring_number_from_name(caps.re, (PCRE2_SPTR) "sub");
    cr_assert_eq(g, 1);
    cr_expect_eq(caps.ov[3] - caps.ov[2], 7);
    cr_expect(!strncmp(host + caps.ov[2], "shop.eu", 7));
}

Test(vhost, unknown_goes_to_first_server)
{
    VEXPECT(mixed(), "unknown.org", "D");
    VEXPECT(mixed(), "badexample.com", "D");
}

Test(vhost, star_wildcard_needs_a_subdomain)
{
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("W", "*.example.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "example.com", "D");
    VEXPECT(t, "x.example.com", "W");
}

Test(vhost, dot_wildcard_matches_domain_and_subdomains)
{
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("W", ".example.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "example.com", "W");
    VEXPECT(t, "x.y.example.com", "W");
    VEXPECT(t, "badexample.com", "D");
}

Test(vhost, longest_leading_wildcard_wins)
{
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("W1", "*.example.com", NULL),
                                   V("W2", "*.b.example.com", NULL), V("W0", "*.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "a.b.example.com", "W2");
    VEXPECT(t, "a.c.example.com", "W1");
    VEXPECT(t, "b.example.com", "W1");
    VEXPECT(t, "example.com", "W0");
    VEXPECT(t, "com", "D");
}

Test(vhost, longest_trailing_wildcard_wins)
{
    struct vhost_table *t =
        vbuild(-1, V("D", NULL), V("T1", "www.*", NULL), V("T2", "www.example.*", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "www.example.org", "T2");
    VEXPECT(t, "www.other.org", "T1");
    VEXPECT(t, "www.example", "T1");
    VEXPECT(t, "www", "D");
}

Test(vhost, exact_beats_wildcards_and_regex)
{
    struct vhost_table *t =
        vbuild(-1, V("RE", "~example", NULL), V("W", "*.example.com", NULL),
               V("T", "www.example.*", NULL), V("EX", "www.example.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "www.example.com", "EX");
    VEXPECT(t, "api.example.com", "W");
    VEXPECT(t, "www.example.org", "T");
    VEXPECT(t, "example.org", "RE");
}

Test(vhost, regex_file_order)
{
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("R1", "~^api\\.", NULL),
                                   V("R2", "~^api\\.example\\.", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "api.example.org", "R1");
    VEXPECT(t, "www.example.org", "D");
}

Test(vhost, regex_is_caseless)
{
    struct vhost_table *t =
        vbuild(-1, V("D", NULL), V("R", "~^([a-z]+)\\.example\\.net$", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "ABC.Example.NET", "R");
    cr_expect_eq(caps.n, 2);
}

Test(vhost, default_server_index)
{
    struct vhost_table *t =
        vbuild(2, V("A", "a.com", NULL), V("B", "b.com", NULL), V("C", "c.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "x.com", "C");
    VEXPECT(t, "b.com", "B");
    VEXPECT(t, "", "C");
}

Test(vhost, default_server_first_when_minus_one)
{
    struct vhost_table *t = vbuild(-1, V("A", "a.com", NULL), V("B", "b.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "x.com", "A");
}

Test(vhost, port_stripped)
{
    VEXPECT(mixed(), "example.com:8080", "EX");
    VEXPECT(mixed(), "www.example.org:443", "TAIL");
}

Test(vhost, ipv6_host)
{
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("V6", "[::1]", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "[::1]:8080", "V6");
    VEXPECT(t, "[::1]", "V6");
    VEXPECT(t, "[::2]:80", "D");
}

Test(vhost, trailing_dot_stripped)
{
    VEXPECT(mixed(), "example.com.", "EX");
    VEXPECT(mixed(), "example.com.:80", "EX");
    VEXPECT(mixed(), "x.example.com.", "HEAD");
}

Test(vhost, uppercase_host_and_names)
{
    struct vhost_table *t =
        vbuild(-1, V("D", NULL), V("U", "Example.ORG", "*.Example.NET", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "EXAMPLE.org", "U");
    VEXPECT(t, "WWW.EXAMPLE.NET", "U");
    VEXPECT(mixed(), "EXAMPLE.COM", "EX");
}

Test(vhost, empty_host)
{
    struct vhost_table *t =
        vbuild(-1, V("D", "a.com", NULL), V("E", "", NULL), V("R", "~.*", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "", "E");
    VEXPECT(t, ":80", "E");
    VEXPECT(t, "b.com", "R");
}

Test(vhost, empty_host_without_empty_name)
{
    /* regexes are not tried on an empty host */
    struct vhost_table *t = vbuild(-1, V("D", "a.com", NULL), V("R", "~.*", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "", "D");
    cr_expect_str_eq((const char *)router_find_vhost(t, SLICE_NULL, NULL)->conf, "D");
}

Test(vhost, conflicting_names_first_wins)
{
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("A", "example.com", "*.x.com", NULL),
                                   V("B", "example.com", "*.x.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "example.com", "A");
    VEXPECT(t, "a.x.com", "A");
}

Test(vhost, dot_name_conflicts_with_earlier_exact)
{
    /* nginx ignores ".example.com" whole: its exact part is taken */
    struct vhost_table *t =
        vbuild(-1, V("D", NULL), V("A", "example.com", NULL), V("B", ".example.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "example.com", "A");
    VEXPECT(t, "a.example.com", "D");
}

Test(vhost, dot_name_shadows_later_exact)
{
    struct vhost_table *t =
        vbuild(-1, V("D", NULL), V("B", ".example.com", NULL), V("A", "example.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "example.com", "B");
    VEXPECT(t, "a.example.com", "B");
}

Test(vhost, dot_name_after_star_name)
{
    /* "*.x" keeps the wildcard; ".x" is ignored but still claims "x" */
    struct vhost_table *t = vbuild(-1, V("D", NULL), V("S", "*.example.com", NULL),
                                   V("B", ".example.com", NULL), V("A", "example.com", NULL), NULL);
    cr_assert(t);
    VEXPECT(t, "a.example.com", "S");
    VEXPECT(t, "example.com", "D");
}

Test(vhost, invalid_wildcards)
{
    cr_expect_eq(vbuild(-1, V("A", "www.*.example.com", NULL), NULL), NULL);
    cr_expect_str_eq(err, "invalid server name or wildcard \"www.*.example.com\"");
    cr_expect_eq(vbuild(-1, V("A", "*", NULL), NULL), NULL);
    cr_expect_eq(vbuild(-1, V("A", "a..b", NULL), NULL), NULL);
    cr_expect_eq(vbuild(-1, V("A", "*.a.*", NULL), NULL), NULL);
}

Test(vhost, bad_regex_name)
{
    cr_expect_eq(vbuild(-1, V("A", "~^ok$", NULL), V("B", "~^(bad", NULL), NULL), NULL);
    cr_expect(strstr(err, "pcre2_compile() failed: missing closing parenthesis"), "%s", err);
}

Test(vhost, no_servers)
{
    struct vhost_table *t = vbuild(-1, NULL);
    cr_assert(t);
    VEXPECT(t, "a.com", "none");
}

Test(vhost, many_names_hash)
{
    struct vhost *v[32];
    char *names[32];
    for (int i = 0; i < 32; i++) {
        names[i] = arena_printf(&A, "host%d.example.com", i);
        v[i] = V(names[i], names[i], NULL);
    }
    struct vhost_table *t = router_vhosts_build(&A, v, 32, -1, err, sizeof(err));
    cr_assert(t);
    tables[ntables++] = t;
    for (int i = 0; i < 32; i++)
        VEXPECT(t, names[i], names[i]);
    VEXPECT(t, "host32.example.com", names[0]);
}
