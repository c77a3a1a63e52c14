/* Unit tests for src/proxy/vars: template compilation, variable values on a
 * hand-built exchange, and the access-log escaping modes. */
#include <criterion/criterion.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/exchange.h"
#include "proxy/map.h"
#include "proxy/realip.h"
#include "proxy/rewrite.h"
#include "proxy/auth.h"
#include "proxy/jwt.h"
#include "proxy/compress.h"
#include "proxy/static.h"
#include "proxy/vars.h"

static struct exchange EX;
static struct net_addr PEER, LOCAL;
static struct http_field F[16];
static char err[256];

#define SL(s) slice_cstr(s)

static void add_field(const char *name, const char *value)
{
    cr_assert_lt(EX.nreq_fields, 16);
    F[EX.nreq_fields++] = (struct http_field){SL(name), SL(value)};
}

static void setup(void)
{
    memset(&EX, 0, sizeof(EX));
    arena_init(&EX.arena, 4096, 0);
    EX.loop = loop_new();
    cr_assert_not_null(EX.loop);
    const char *msg = NULL;
    cr_assert_eq(net_addr_parse("10.0.0.7:51234", 0, false, &PEER, &msg), 0);
    cr_assert_eq(net_addr_parse("127.0.0.1:8080", 0, false, &LOCAL, &msg), 0);
    EX.peer = &PEER;
    EX.local = &LOCAL;
    EX.method = SLICE_LIT("GET");
    EX.method_id = HTTP_M_GET;
    EX.request_uri = SLICE_LIT("/a/b?x=1&Name=Bob&flag");
    EX.uri = SLICE_LIT("/a/b");
    EX.args = SLICE_LIT("x=1&Name=Bob&flag");
    EX.has_args = true;
    EX.host = SLICE_LIT("example.com");
    EX.request_line = SLICE_LIT("GET /a/b?x=1&Name=Bob&flag HTTP/1.1");
    EX.minor_version = 1;
    EX.req_fields = F;
    EX.nreq_fields = 0;
    EX.srv = NULL;
    EX.lc = NULL;
    EX.status = 200;
    err[0] = '\0';
}

static void teardown(void)
{
    arena_deinit(&EX.arena);
    loop_free(EX.loop);
}

TestSuite(tmpl, .init = setup, .fini = teardown);
TestSuite(vars, .init = setup, .fini = teardown);
TestSuite(escape, .init = setup, .fini = teardown);

static struct tmpl *compile(const char *src)
{
    struct tmpl *t = tmpl_compile(&EX.arena, src, NULL, err, sizeof(err));
    cr_assert_not_null(t, "\"%s\": %s", src, err);
    return t;
}

static void compile_bad(const char *src, const char *msg)
{
    cr_assert_null(tmpl_compile(&EX.arena, src, NULL, err, sizeof(err)), "accepted \"%s\"", src);
    cr_assert_str_eq(err, msg, "\"%s\"", src);
}

/* Evaluate into a NUL-terminated string. */
static const char *eval_esc(const char *src, enum tmpl_escape esc)
{
    struct slice v = tmpl_eval(&EX, compile(src), esc);
    char *s = arena_strndup(&EX.arena, v.p ? v.p : "", v.len);
    cr_assert_not_null(s);
    return s;
}

static const char *eval(const char *src)
{
    return eval_esc(src, ESC_NONE);
}

static bool lit_is(struct slice s, const char *lit)
{
    return s.len == strlen(lit) && (s.len == 0 || memcmp(s.p, lit, s.len) == 0);
}

/* ---- compilation ---- */

Test(tmpl, literal_only)
{
    struct tmpl *t = compile("plain text, no variables");
    cr_assert(t->is_const);
    cr_assert_eq(t->nparts, 1);
    cr_assert_not(t->parts[0].is_var);
    cr_assert_str_eq(eval("plain text, no variables"), "plain text, no variables");
    struct tmpl *e = compile("");
    cr_assert(e->is_const);
    cr_assert_eq(tmpl_eval(&EX, e, ESC_DEFAULT).len, 0, "a literal is never escaped or dashed");
}

Test(tmpl, single_variable)
{
    struct tmpl *t = compile("$host");
    cr_assert_not(t->is_const);
    cr_assert_eq(t->nparts, 1);
    cr_assert(t->parts[0].is_var);
    struct slice v = tmpl_eval(&EX, t, ESC_NONE);
    cr_assert_eq(v.p, EX.host.p, "a lone variable is returned without a copy");
    cr_assert(lit_is(v, "example.com"));
}

Test(tmpl, braces_and_literals)
{
    struct tmpl *t = compile("${host}x");
    cr_assert_eq(t->nparts, 2);
    cr_assert(t->parts[0].is_var);
    cr_assert(lit_is(t->parts[1].lit, "x"));
    cr_assert_str_eq(eval("${host}x"), "example.comx");
    cr_assert_str_eq(eval("[$host]"), "[example.com]");
    cr_assert_str_eq(eval("$host$uri"), "example.com/a/b");
    cr_assert_str_eq(eval("$host-$uri."), "example.com-/a/b.", "a name ends at a non-name char");
    cr_assert_str_eq(eval("${uri}${args}"), "/a/bx=1&Name=Bob&flag");
    cr_assert_str_eq(eval("$hostname$host") + strlen(eval("$hostname")), "example.com",
                     "$hostname is not $host followed by \"name\"");
}

Test(tmpl, capture_then_literal)
{
    struct tmpl *t = compile("$1abc");
    cr_assert_eq(t->nparts, 2);
    cr_assert(t->parts[0].is_var);
    cr_assert(lit_is(t->parts[0].lit, "1"));
    cr_assert_not(t->parts[1].is_var);
    cr_assert(lit_is(t->parts[1].lit, "abc"));
    cr_assert_str_eq(eval("$1abc"), "abc", "no regex matched: $1 is empty");

    static const char subject[] = "/img/cat.png";
    EX.caps.subject = subject;
    EX.caps.n = 3;
    EX.caps.ov[0] = 0, EX.caps.ov[1] = 12;
    EX.caps.ov[2] = 5, EX.caps.ov[3] = 8;
    EX.caps.ov[4] = PCRE2_UNSET, EX.caps.ov[5] = PCRE2_UNSET;
    cr_assert_str_eq(eval("$1abc"), "catabc");
    cr_assert_str_eq(eval("$0|$2|$9"), "/img/cat.png||", "unset and out-of-range groups");
    /* location captures win over server_name ones */
    static const char hsub[] = "www.example.org";
    EX.host_caps.subject = hsub;
    EX.host_caps.n = 2;
    EX.host_caps.ov[0] = 0, EX.host_caps.ov[1] = 15;
    EX.host_caps.ov[2] = 4, EX.host_caps.ov[3] = 11;
    cr_assert_str_eq(eval("$1"), "cat");
    EX.caps.n = 0;
    cr_assert_str_eq(eval("$1"), "example");
}

Test(tmpl, named_captures)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR) "^/u/(?<slug>[a-z]+)/(?<id>[0-9]+)$",
                                   PCRE2_ZERO_TERMINATED, 0, &ec, &eo, NULL);
    cr_assert_not_null(re);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    static const char subject[] = "/u/bob/42";
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, strlen(subject), 0, 0, md, NULL);
    cr_assert_eq(rc, 3);
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    EX.caps.subject = subject;
    EX.caps.n = rc;
    EX.caps.re = re;
    for (int i = 0; i < rc * 2; i++)
        EX.caps.ov[i] = ov[i];

    static const char *const names[] = {"slug", "id", NULL};
    struct tmpl *t = tmpl_compile(&EX.arena, "$slug:${id}:$2", names, err, sizeof(err));
    cr_assert_not_null(t, "%s", err);
    struct slice v = tmpl_eval(&EX, t, ESC_NONE);
    cr_assert(lit_is(v, "bob:42:42"));
    compile_bad("$slug", "unknown \"slug\" variable"); /* not a capture of this config */
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

Test(tmpl, errors)
{
    compile_bad("$nope", "unknown \"nope\" variable");
    compile_bad("a ${nope} b", "unknown \"nope\" variable");
    compile_bad("$http_", "unknown \"http_\" variable");
    compile_bad("$Host", "unknown \"Host\" variable");
    compile_bad("${host", "the closing bracket in \"${host\" variable is missing");
    compile_bad("x${", "the closing bracket in \"x${\" variable is missing");
    compile_bad("a$", "invalid variable name in \"a$\"");
    compile_bad("${}", "invalid variable name in \"${}\"");
    compile_bad("$-x", "invalid variable name in \"$-x\"");
    compile_bad("$$host", "invalid variable name in \"$$host\"");
}

Test(tmpl, http_name_normalisation)
{
    struct tmpl *t = compile("$http_X_Custom_Thing");
    cr_assert(lit_is(t->parts[0].lit, "x-custom-thing"), "lower case, '_' as '-'");
    add_field("x-CUSTOM-thing", "v1");
    add_field("X-Custom", "other");
    cr_assert_str_eq(eval("$http_X_Custom_Thing"), "v1");
    cr_assert_str_eq(eval("$http_x_custom"), "other");
    cr_assert_str_eq(eval("${http_x_custom_thing}!"), "v1!");
    cr_assert_str_eq(eval("$http_x_absent"), "");
}

/* ---- values ---- */

Test(vars, host_and_request)
{
    cr_assert_str_eq(eval("$host"), "example.com");
    EX.host = SLICE_NULL;
    cr_assert_str_eq(eval("$host"), "", "no Host and no server");
    cr_assert_str_eq(eval("$request_method $scheme $server_protocol"), "GET http HTTP/1.1");
    cr_assert_str_eq(eval("$request"), "GET /a/b?x=1&Name=Bob&flag HTTP/1.1");
    EX.minor_version = 0;
    EX.is_tls = true;
    cr_assert_str_eq(eval("$scheme $server_protocol"), "https HTTP/1.0");
    cr_assert_str_eq(eval("$proxy_host"), "", "no proxy_pass here");
}

Test(vars, user_agent_and_joined_headers)
{
    add_field("User-Agent", "curl/8.0");
    add_field("X-A", "1");
    add_field("Accept", "*/*");
    add_field("x-a", "2");
    cr_assert_str_eq(eval("$http_user_agent"), "curl/8.0");
    cr_assert_str_eq(eval("$http_x_a"), "1, 2", "repeated fields are joined");
    cr_assert_str_eq(eval("<$http_x_a>"), "<1, 2>");
    add_field("X-A", "");
    cr_assert_str_eq(eval("$http_x_a"), "1, 2, ");
}

Test(vars, cookies)
{
    add_field("Cookie", "a=1; session=xyz;theme=dark");
    add_field("Cookie", "b=2");
    cr_assert_str_eq(eval("$cookie_session"), "xyz");
    cr_assert_str_eq(eval("$cookie_theme"), "dark");
    cr_assert_str_eq(eval("$cookie_a|$cookie_b"), "1|2", "across several Cookie fields");
    cr_assert_str_eq(eval("$cookie_A"), "", "cookie names are case-sensitive");
    cr_assert_str_eq(eval("$cookie_sess"), "", "no prefix match");
    cr_assert_str_eq(eval("$http_cookie"), "a=1; session=xyz;theme=dark; b=2",
                     "Cookie fields are joined with \"; \"");
}

Test(vars, args)
{
    cr_assert_str_eq(eval("$arg_x"), "1");
    cr_assert_str_eq(eval("$arg_name"), "Bob", "argument names are case-insensitive");
    cr_assert_str_eq(eval("$arg_NAME"), "Bob");
    cr_assert_str_eq(eval("[$arg_flag]"), "[]", "present without a value");
    cr_assert_str_eq(eval("[$arg_nam]"), "[]");
    cr_assert_str_eq(eval("$args"), "x=1&Name=Bob&flag");
    cr_assert_str_eq(eval("$query_string"), "x=1&Name=Bob&flag");
    cr_assert_str_eq(eval("$uri$is_args$args"), "/a/b?x=1&Name=Bob&flag");
    cr_assert_str_eq(eval("$request_uri"), "/a/b?x=1&Name=Bob&flag");
    cr_assert_str_eq(eval("$uri"), "/a/b");
    cr_assert_str_eq(eval("$document_uri"), "/a/b");
    EX.has_args = false;
    EX.args = SLICE_NULL;
    cr_assert_str_eq(eval("$uri$is_args$args"), "/a/b");
    cr_assert_str_eq(eval("[$arg_x]"), "[]");
}

Test(vars, addresses)
{
    cr_assert_str_eq(eval("$remote_addr"), "10.0.0.7");
    cr_assert_str_eq(eval("$remote_port"), "51234");
    cr_assert_str_eq(eval("$server_addr:$server_port"), "127.0.0.1:8080");
    const char *msg;
    struct net_addr v6;
    cr_assert_eq(net_addr_parse("[2001:db8::5]:4000", 0, false, &v6, &msg), 0);
    EX.peer = &v6;
    cr_assert_str_eq(eval("$remote_addr $remote_port"), "2001:db8::5 4000");
}

Test(vars, proxy_add_x_forwarded_for)
{
    cr_assert_str_eq(eval("$proxy_add_x_forwarded_for"), "10.0.0.7", "no incoming field");
    add_field("X-Forwarded-For", "203.0.113.1");
    cr_assert_str_eq(eval("$proxy_add_x_forwarded_for"), "203.0.113.1, 10.0.0.7");
    add_field("x-forwarded-for", "198.51.100.2, 198.51.100.3");
    cr_assert_str_eq(eval("$proxy_add_x_forwarded_for"),
                     "203.0.113.1, 198.51.100.2, 198.51.100.3, 10.0.0.7");
}

/* A long incoming X-Forwarded-For is never cut (regression: a 256-byte
 * buffer cut off the address this proxy appends, so a client could make the
 * last hop anything it liked). */
Test(vars, proxy_add_x_forwarded_for_long)
{
    char xff[400];
    memset(xff, 0, sizeof(xff));
    for (size_t off = 0; off + 16 < 300;)
        off += (size_t)snprintf(xff + off, sizeof(xff) - off, "%s192.0.2.%zu", off ? ", " : "",
                                off % 200);
    add_field("X-Forwarded-For", xff);
    char expect[512];
    snprintf(expect, sizeof(expect), "%s, 10.0.0.7", xff);
    cr_assert_str_eq(eval("$proxy_add_x_forwarded_for"), expect);
}

Test(vars, request_id)
{
    vars_new_request_id(&EX);
    const char *a = eval("$request_id");
    cr_assert_eq(strlen(a), 32);
    for (int i = 0; i < 32; i++)
        cr_assert(isxdigit((unsigned char)a[i]) && !isupper((unsigned char)a[i]), "%s", a);
    cr_assert_eq(EX.request_id[32], '\0');
    vars_new_request_id(&EX);
    const char *b = eval("$request_id");
    cr_assert_eq(strlen(b), 32);
    cr_assert_str_neq(a, b, "a new id each time");
    /* and over many calls, no repeats */
    char seen[64][33];
    for (int i = 0; i < 64; i++) {
        vars_new_request_id(&EX);
        memcpy(seen[i], EX.request_id, 33);
        for (int k = 0; k < i; k++)
            cr_assert_str_neq(seen[i], seen[k]);
    }
}

Test(vars, status_and_counters)
{
    cr_assert_str_eq(eval("$status"), "200");
    EX.status = 0;
    cr_assert_str_eq(eval("$status"), "000", "always 3 digits");
    EX.status = 99;
    cr_assert_str_eq(eval("$status"), "099");
    EX.status = 504;
    EX.body_bytes_sent = 12345;
    EX.bytes_sent = 12500;
    EX.request_length = 77;
    EX.conn_number = 9;
    EX.conn_requests = 3;
    cr_assert_str_eq(eval("$status $body_bytes_sent $bytes_sent $request_length"),
                     "504 12345 12500 77");
    cr_assert_str_eq(eval("$connection/$connection_requests"), "9/3");
}

Test(vars, remote_user)
{
    cr_assert_str_eq(eval("[$remote_user]"), "[]");
    add_field("Authorization", "Basic dXNlcjpwYXNz");
    cr_assert_str_eq(eval("$remote_user"), "user");
    F[0].value = SLICE_LIT("basic   YWxpY2U6czNjcjN0Ojo= ");
    cr_assert_str_eq(eval("$remote_user"), "alice", "scheme case-insensitive; first ':' splits");
    F[0].value = SLICE_LIT("Basic bm9jb2xvbg==");
    cr_assert_str_eq(eval("[$remote_user]"), "[]", "no ':' in the credentials");
    F[0].value = SLICE_LIT("Basic !!!!");
    cr_assert_str_eq(eval("[$remote_user]"), "[]", "not base64");
    F[0].value = SLICE_LIT("Bearer dXNlcjpwYXNz");
    cr_assert_str_eq(eval("[$remote_user]"), "[]");
}

Test(vars, content_headers_and_misc)
{
    add_field("Content-Type", "text/plain");
    add_field("Content-Length", "42");
    cr_assert_str_eq(eval("$content_type $content_length"), "text/plain 42");
    char pid[32];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    cr_assert_str_eq(eval("$pid"), pid);
    cr_assert_str_eq(eval("[$http2]"), "[]");
    EX.minor_version = 2;
    cr_assert_str_eq(eval("$http2 $server_protocol"), "h2c HTTP/2.0");
    cr_assert_gt(strlen(eval("$hostname")), 0);
    cr_assert_gt(strlen(eval("$time_local")), 0);
    const char *iso = eval("$time_iso8601");
    cr_assert_eq(strlen(iso), 25, "%s", iso);
    cr_assert_eq(iso[22], ':', "+hh:mm: %s", iso);
}

Test(vars, fields_get)
{
    add_field("Accept", "a");
    add_field("ACCEPT", "b");
    bool found = false;
    struct slice v = fields_get(F, EX.nreq_fields, SLICE_LIT("accept"), &found);
    cr_assert(found);
    cr_assert(lit_is(v, "a"), "the first one");
    v = fields_get(F, EX.nreq_fields, SLICE_LIT("accept-x"), &found);
    cr_assert_not(found);
    cr_assert_eq(v.len, 0);
    cr_assert_not(fields_get(F, 0, SLICE_LIT("accept"), NULL).len);
}

/* A template of more than 64 parts (32 variables with text between them, a
 * plain JSON log_format) is evaluated whole (regression: the tail after 64
 * parts was dropped). */
Test(tmpl, many_parts_are_all_evaluated)
{
    char src[2048], expect[2048];
    size_t so = 0, eo = 0;
    so += (size_t)snprintf(src + so, sizeof(src) - so, "{");
    eo += (size_t)snprintf(expect + eo, sizeof(expect) - eo, "{");
    for (int i = 0; i < 40; i++) {
        so += (size_t)snprintf(src + so, sizeof(src) - so, "\"k%d\":\"$status\",", i);
        eo += (size_t)snprintf(expect + eo, sizeof(expect) - eo, "\"k%d\":\"200\",", i);
    }
    snprintf(src + so, sizeof(src) - so, "\"end\":1}");
    snprintf(expect + eo, sizeof(expect) - eo, "\"end\":1}");
    cr_assert_gt(compile(src)->nparts, 64);
    cr_assert_str_eq(eval_esc(src, ESC_JSON), expect);
}

/* ---- escaping ---- */

Test(escape, default_mode)
{
    add_field("User-Agent", "a\"b\\c\x01\x7f\xc3\xa9 z");
    cr_assert_str_eq(eval_esc("\"$http_user_agent\"", ESC_DEFAULT),
                     "\"a\\x22b\\x5Cc\\x01\\x7F\\xC3\\xA9 z\"",
                     "only values are escaped, not the template's own quotes");
    cr_assert_str_eq(eval_esc("$http_user_agent", ESC_NONE), "a\"b\\c\x01\x7f\xc3\xa9 z");
    cr_assert_str_eq(eval_esc("[$http_referer] [$args]", ESC_DEFAULT), "[-] [x=1&Name=Bob&flag]");
    cr_assert_str_eq(eval_esc("$http_referer", ESC_DEFAULT), "-", "an empty value is \"-\"");
    cr_assert_str_eq(eval_esc("[$http_referer]", ESC_NONE), "[]");
    cr_assert_str_eq(eval_esc("[$http_referer]", ESC_JSON), "[]", "JSON keeps empty values empty");
}

Test(escape, json_mode)
{
    add_field("User-Agent", "q\"b\\s\x01\n\t\xc3\xa9~");
    cr_assert_str_eq(eval_esc("{\"ua\":\"$http_user_agent\"}", ESC_JSON),
                     "{\"ua\":\"q\\\"b\\\\s\\u0001\\u000A\\u0009\xc3\xa9~\"}");
    add_field("X-Plain", "hello world");
    cr_assert_str_eq(eval_esc("$http_x_plain", ESC_JSON), "hello world");
}

/* ---- map (src/proxy/map.c), on a loaded configuration ---- */

static void map_setup(void)
{
    conf_register_all();
    setup();
}

TestSuite(map, .init = map_setup, .fini = teardown);

static struct snapshot *load_maps(const char *maps)
{
    char path[] = "/tmp/portico-map-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "events {}\nhttp {\n%s\n}\n", maps);
    fclose(f);
    struct snapshot *s = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    return s;
}

static const char *mapv(int idx)
{
    struct slice v = map_value(&EX, idx);
    static char out[256];
    snprintf(out, sizeof(out), "%.*s", (int)v.len, v.p ? v.p : "");
    return out;
}

Test(map, lookup_order_and_caching)
{
    struct snapshot *s = load_maps("map $http_x_k $m {\n"
                                   "  default d;\n"
                                   "  Exact e;\n"
                                   "  ~^ex(?<tail>.*) re-$tail;\n"
                                   "  ~^e r2;\n"
                                   "}\n"
                                   "map $host $h { hostnames; .example.com dom; www.* w; }\n");
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(s->nmaps, 2);
    EX.snap = s;
    add_field("X-K", "EXACT");
    cr_assert_str_eq(mapv(0), "e", "exact keys ignore case");
    cr_assert_str_eq(mapv(1), "dom", "example.com is under .example.com");
    /* non-volatile: computed once per request */
    F[0].value = SLICE_LIT("extra");
    cr_assert_str_eq(mapv(0), "e");
    EX.map_vals = NULL; /* a new request */
    EX.map_state = NULL;
    cr_assert_str_eq(mapv(0), "re-tra", "the first matching regex, captures in the value");
    EX.map_vals = NULL;
    EX.map_state = NULL;
    F[0].value = SLICE_LIT("eq");
    cr_assert_str_eq(mapv(0), "r2");
    EX.map_vals = NULL;
    EX.map_state = NULL;
    F[0].value = SLICE_LIT("zzz");
    EX.host = SLICE_LIT("www.other.org");
    cr_assert_str_eq(mapv(0), "d");
    cr_assert_str_eq(mapv(1), "w");
    cr_assert_eq(map_value(&EX, 7).len, 0, "an index out of range is empty");
    EX.snap = NULL;
    snapshot_unref(s);
}

Test(map, refused)
{
    cr_assert_null(load_maps("map $uri $x { a 1; a 2; }"));
    cr_assert(strstr(err, ":3: conflicting parameter \"a\" in map $x"), "%s", err);
    cr_assert_null(load_maps("map $uri $x { default 1; }\nmap $uri $x { default 2; }"));
    cr_assert(strstr(err, ":4: the duplicate \"x\" variable"), "%s", err);
    cr_assert_null(load_maps("map $uri $args { default 1; }"));
    cr_assert(strstr(err, "is built in"), "%s", err);
}

/* ---- rewrite, set, if, return (src/proxy/rewrite.c) on a server's program ---- */

TestSuite(rewrite, .init = map_setup, .fini = teardown);

Test(rewrite, program_in_order)
{
    struct snapshot *s = load_maps("server {\n"
                                   "  listen 127.0.0.1:1;\n"
                                   "  set $a \"A-$uri\";\n"
                                   "  if ($http_x_k ~ ^(\\d+)$) { set $a \"num-$1\"; }\n"
                                   "  rewrite ^/a/(.*)$ /b/$1?x=$a;\n"
                                   "  if ($args = \"\") { return 418 \"no args\"; }\n"
                                   "  rewrite ^/b/ /c? last;\n"
                                   "}\n");
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(s->nuser_vars, 1);
    EX.snap = s;
    const struct rw_prog *p = s->servers[0]->lc->rw;
    cr_assert_not_null(p);
    struct rw_return ret;

    add_field("X-K", "42");
    EX.uri = SLICE_LIT("/a/q");
    cr_assert_eq(rw_run(&EX, p, &ret), RW_LAST);
    cr_assert(slice_eq(EX.uri, SLICE_LIT("/c")), "%.*s", (int)EX.uri.len, EX.uri.p);
    cr_assert(!EX.has_args, "a replacement ending in '?' drops the arguments");
    cr_assert(EX.uri_rewritten);
    cr_assert(slice_eq(rw_user_value(&EX, 0), SLICE_LIT("num-42")));

    /* a new request without args and a path that no rewrite matches */
    EX.user_vals = NULL;
    EX.has_args = false;
    EX.args = SLICE_NULL;
    EX.uri = SLICE_LIT("/z");
    EX.uri_rewritten = false;
    F[0].value = SLICE_LIT("nope");
    cr_assert_eq(rw_run(&EX, p, &ret), RW_RETURN);
    cr_assert_eq(ret.code, 418);
    cr_assert(ret.has_text && slice_eq(ret.text, SLICE_LIT("no args")));
    cr_assert(slice_eq(rw_user_value(&EX, 0), SLICE_LIT("A-/z")));
    cr_assert(!EX.uri_rewritten);
    EX.snap = NULL;
    snapshot_unref(s);
}

/* ---- realip (src/proxy/realip.c) ---- */

Test(vars, realip_forwarded_for)
{
    static struct loc_conf lc;
    static struct net_cidr from[2];
    memset(&lc, 0, sizeof(lc));
    cr_assert_eq(net_cidr_parse("10.0.0.0/8", &from[0]), 0);
    cr_assert_eq(net_cidr_parse("192.168.0.0/16", &from[1]), 0);
    lc.realip_from = from;
    lc.nrealip_from = 2;
    lc.realip_header = "X-Forwarded-For";
    add_field("X-Forwarded-For", " 203.0.113.9 , 192.168.1.1");
    add_field("X-Forwarded-For", "[2001:db8::7]:99, 10.1.2.3:8080");
    realip_apply(&EX, &lc);
    cr_assert_str_eq(eval("$remote_addr:$remote_port|$realip_remote_addr"),
                     "10.1.2.3:8080|10.0.0.7", "the last entry, with its port");
    /* applied once per request */
    realip_apply(&EX, &lc);
    cr_assert_str_eq(eval("$remote_addr"), "10.1.2.3");

    EX.peer = &PEER;
    EX.realip_orig = NULL;
    lc.realip_recursive = 1;
    realip_apply(&EX, &lc);
    cr_assert_str_eq(eval("$remote_addr|$remote_port"), "2001:db8::7|99",
                     "recursive: trusted ones skipped from the right");

    EX.peer = &PEER;
    EX.realip_orig = NULL;
    F[1].value = SLICE_LIT("junk");
    realip_apply(&EX, &lc);
    cr_assert_str_eq(eval("$remote_addr"), "10.0.0.7", "a bad last entry changes nothing");
}

/* ---- static files: the MIME table ---- */

Test(static_types, builtin_lookup_by_extension)
{
    cr_assert_str_eq(static_mime_type(NULL, "index.html", 10), "text/html");
    cr_assert_str_eq(static_mime_type(NULL, "a.CSS", 5), "text/css", "case-insensitive");
    cr_assert_str_eq(static_mime_type(NULL, "x.tar.gz", 8), "application/gzip", "last dot");
    cr_assert_str_eq(static_mime_type(NULL, "font.woff2", 10), "font/woff2");
    cr_assert_null(static_mime_type(NULL, "README", 6), "no extension");
    cr_assert_null(static_mime_type(NULL, "dir.d/file", 10), "a dot in a directory name");
    cr_assert_null(static_mime_type(NULL, "trailing.", 9));
    cr_assert_null(static_mime_type(NULL, "a.unknownext", 12));
    struct mime_type v[] = {{"html", "text/x-mine"}, {"zz", "application/zz"}};
    struct mime_types t = {v, 2};
    cr_assert_str_eq(static_mime_type(&t, "p.ZZ", 4), "application/zz");
    cr_assert_null(static_mime_type(&t, "p.css", 5), "a types block replaces the built-in one");
}

/* ---- compression: Accept-Encoding ---- */

Test(compress, accept_encoding_q_values)
{
    struct slice ae = SLICE_LIT("gzip, deflate, br;q=0.8, zstd;q=0");
    cr_assert_eq(compress_accept_q(ae, "gzip"), 1000);
    cr_assert_eq(compress_accept_q(ae, "br"), 800);
    cr_assert_eq(compress_accept_q(ae, "zstd"), 0, "q=0: not acceptable");
    cr_assert_eq(compress_accept_q(SLICE_LIT("*;q=0.5, gzip;q=0"), "br"), 500, "* counts");
    cr_assert_eq(compress_accept_q(SLICE_LIT("*;q=0.5, gzip;q=0"), "gzip"), 0, "exact wins");
    cr_assert_eq(compress_accept_q(SLICE_LIT("GZIP ; Q=0.25"), "gzip"), 250, "case, spaces");
    cr_assert_eq(compress_accept_q(SLICE_LIT("x-gzip"), "gzip"), 1000);
    cr_assert_eq(compress_accept_q(SLICE_LIT("identity"), "gzip"), 0);
    cr_assert_eq(compress_accept_q(SLICE_LIT(""), "gzip"), 0);
    cr_assert_eq(compress_accept_q(SLICE_LIT("gzip;q=2"), "gzip"), 0, "malformed q: absent");
    cr_assert_eq(compress_accept_q(SLICE_LIT("gzip;q=1.000"), "gzip"), 1000);
    cr_assert_eq(compress_accept_q(SLICE_LIT("gzip;q=1.5"), "gzip"), 0);
    cr_assert_eq(compress_accept_q(SLICE_LIT("gzip;q=0.0001"), "gzip"), 0, "3 decimals at most");
    cr_assert_eq(compress_accept_q(SLICE_LIT("gzip;level=1;q=0.5"), "gzip"), 500);
    cr_assert_eq(compress_accept_q(SLICE_LIT(",,gzip,,"), "gzip"), 1000);
}

/* ---- auth_basic: password forms ---- */

Test(auth, password_forms)
{
    struct slice pw = SLICE_LIT("secret");
    /* openssl passwd -apr1 -salt abcdefgh secret / -1 */
    cr_assert(auth_password_ok(pw, "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"));
    cr_assert_not(auth_password_ok(SLICE_LIT("Secret"), "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"));
    cr_assert_not(auth_password_ok(pw, "$apr1$abcdefgi$h9FWgUz3n9YxylKLlR5SQ/"), "salt counts");
    cr_assert(auth_password_ok(pw, "$1$abcdefgh$cHJi5PXp/ki/ktXzqlk6I1"));
    /* {SHA}: base64(sha1("secret")) */
    cr_assert(auth_password_ok(pw, "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="));
    cr_assert_not(auth_password_ok(SLICE_LIT("secreT"), "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="));
    cr_assert_not(auth_password_ok(pw, "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ"), "bad base64");
    cr_assert(auth_password_ok(pw, "{PLAIN}secret"));
    cr_assert_not(auth_password_ok(pw, "{PLAIN}secre"));
    cr_assert_not(auth_password_ok(pw, ""), "an empty hash never matches");
    cr_assert_not(auth_password_ok(pw, "*"), "a locked entry never matches");
    cr_assert_not(auth_password_ok(SLICE_LIT(""), "$apr1$x$"));
}

/* ---- auth_jwt ---- */

/* RFC 7515 appendix A.1: HS256 */
static const char rfc_jwk[] =
    "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoq"
    "Q-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"}]}";
static const char rfc_jws[] =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQo"
    "gImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

Test(jwt, rfc7515_hs256)
{
    struct slice tok = slice_cstr(rfc_jws);
    cr_assert_eq(jwt_verify_text(rfc_jwk, strlen(rfc_jwk), tok, 1300819000, 0), 0);
    cr_assert_eq(jwt_verify_text(rfc_jwk, strlen(rfc_jwk), tok, 1300819381, 0), -1, "expired");
    cr_assert_eq(jwt_verify_text(rfc_jwk, strlen(rfc_jwk), tok, 1300819381, 60), 0, "leeway");
    char bad[sizeof(rfc_jws)];
    memcpy(bad, rfc_jws, sizeof(bad));
    bad[sizeof(bad) - 2] = bad[sizeof(bad) - 2] == 'k' ? 'j' : 'k';
    cr_assert_eq(jwt_verify_text(rfc_jwk, strlen(rfc_jwk), slice_cstr(bad), 1300819000, 0), -1);
    /* alg none is never accepted, whatever the key set */
    const char *none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
    cr_assert_eq(jwt_verify_text(rfc_jwk, strlen(rfc_jwk), slice_cstr(none), 0, 0), -1);
}

Test(jwt, json_members)
{
    struct arena a;
    arena_init(&a, 1024, 0);
    struct slice obj =
        SLICE_LIT("{\"sub\":\"ann\\u00e9\\n\",\"n\":42,\"ok\":true,\"r\":[1,{\"x\":\"}\"}],"
                  "\"o\":{\"k\":1},\"e\":\"a\\\"b\"}");
    struct slice v = jwt_json_member(&a, obj, SLICE_LIT("sub"));
    cr_assert(slice_eq(v, SLICE_LIT("ann\xc3\xa9\n")));
    cr_assert(slice_eq(jwt_json_member(&a, obj, SLICE_LIT("n")), SLICE_LIT("42")));
    cr_assert(slice_eq(jwt_json_member(&a, obj, SLICE_LIT("ok")), SLICE_LIT("true")));
    cr_assert(slice_eq(jwt_json_member(&a, obj, SLICE_LIT("r")), SLICE_LIT("[1,{\"x\":\"}\"}]")));
    cr_assert(slice_eq(jwt_json_member(&a, obj, SLICE_LIT("o")), SLICE_LIT("{\"k\":1}")));
    cr_assert(slice_eq(jwt_json_member(&a, obj, SLICE_LIT("e")), SLICE_LIT("a\"b")));
    cr_assert_eq(jwt_json_member(&a, obj, SLICE_LIT("x")).len, 0, "nested keys are not members");
    cr_assert_eq(jwt_json_member(&a, SLICE_LIT("{\"a\":1,}"), SLICE_LIT("a")).len, 1);
    cr_assert_eq(jwt_json_member(&a, SLICE_LIT("{\"a\":\"\\u0000\"}"), SLICE_LIT("a")).len, 0,
                 "no NUL");
    arena_deinit(&a);
}
