/* HTTP/1.x parser: every rejection rule has its own test; every request and
 * response is also fed byte by byte and must give the same result. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "http1/h1.h"

static const struct h1_limits lim = {
    .max_request_line = 8192, .max_head = 65536, .max_fields = 100};
static struct http_field fields[128];

/* Every strict prefix must be incomplete, or fail with the same error. */
static void check_prefixes_req(const char *s, size_t n, const struct h1_limits *l,
                               enum h1_result rc, enum h1_error e, size_t head_len)
{
    size_t upto = rc == H1_DONE ? head_len : n;
    for (size_t i = 0; i < upto; i++) {
        struct h1_request r;
        enum h1_error pe;
        struct http_field f[128];
        enum h1_result prc = h1_parse_request(s, i, l, f, 128, &r, &pe);
        if (prc == H1_ERROR)
            cr_assert_eq(pe, e, "prefix %zu: %s vs %s", i, h1_error_str(pe), h1_error_str(e));
        else
            cr_assert_eq(prc, H1_INCOMPLETE, "prefix %zu of a %s message", i,
                         rc == H1_DONE ? "valid" : "bad");
    }
}

static enum h1_result reql(const char *s, size_t n, const struct h1_limits *l, struct h1_request *r,
                           enum h1_error *e)
{
    memset(r, 0xa5, sizeof(*r));
    enum h1_result rc = h1_parse_request(s, n, l, fields, 128, r, e);
    check_prefixes_req(s, n, l, rc, *e, rc == H1_DONE ? r->head_len : 0);
    return rc;
}

static enum h1_result req(const char *s, struct h1_request *r, enum h1_error *e)
{
    return reql(s, strlen(s), &lim, r, e);
}

static void ok_req(const char *s, struct h1_request *r)
{
    enum h1_error e;
    enum h1_result rc = req(s, r, &e);
    cr_assert_eq(rc, H1_DONE, "rc %d: %s", rc, h1_error_str(e));
    cr_assert_eq(r->head_len, strlen(s));
}

static void bad_req(const char *s, enum h1_error want)
{
    struct h1_request r;
    enum h1_error e = H1E_NONE;
    enum h1_result rc = req(s, &r, &e);
    cr_assert_eq(rc, H1_ERROR, "accepted: %s", s);
    cr_assert_eq(e, want, "got %s, want %s", h1_error_str(e), h1_error_str(want));
}

static bool sl_eq(struct slice s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

#define H "Host: a\r\n"
#define BAD(name, msg, err)                                                                        \
    Test(h1_reject, name)                                                                          \
    {                                                                                              \
        bad_req(msg, err);                                                                         \
    }

/* ---- accepted requests ---- */

Test(h1_request, simple_get)
{
    struct h1_request r;
    ok_req("GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", &r);
    cr_assert(sl_eq(r.method, "GET"));
    cr_assert_eq(r.method_id, HTTP_M_GET);
    cr_assert(sl_eq(r.target, "/index.html?x=1"));
    cr_assert(sl_eq(r.path, "/index.html?x=1"));
    cr_assert_eq(r.target_form, H1_TARGET_ORIGIN);
    cr_assert_eq(r.authority.len, 0);
    cr_assert_eq(r.minor_version, 1);
    cr_assert_eq(r.nfields, 2);
    cr_assert(sl_eq(r.fields[0].name, "Host"));
    cr_assert(sl_eq(r.fields[1].value, "*/*"));
    cr_assert(sl_eq(r.host, "example.com"));
    cr_assert_eq(r.content_length, -1);
    cr_assert(!r.chunked);
    cr_assert(r.keep_alive);
    cr_assert(!r.expect_continue);
    cr_assert(!r.upgrade);
}

Test(h1_request, underscore_in_a_name_is_noted)
{
    struct h1_request r;
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: b_c\r\n\r\n", &r);
    cr_assert(!r.underscore); /* a value's '_' is nothing */
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nX_Real_IP: 1\r\n_: 2\r\nA_: 3\r\n\r\n", &r);
    cr_assert(r.underscore);
    cr_assert_eq(r.nfields, 4);
    cr_assert(sl_eq(r.fields[1].name, "X_Real_IP"));
    cr_assert(sl_eq(r.fields[2].name, "_"));
    cr_assert(sl_eq(r.fields[3].name, "A_"));
    cr_assert(sl_eq(r.fields[3].value, "3"));
}

Test(h1_request, trailing_bytes_not_part_of_head)
{
    const char *s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(h1_parse_request(s, strlen(s), &lim, fields, 128, &r, &e), H1_DONE);
    cr_assert_eq(r.head_len, strlen(s) - 6);
    cr_assert_eq(r.content_length, 3);
}

Test(h1_request, value_ows_trimmed_and_empty_value)
{
    struct h1_request r;
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: \t v  w \t\r\nX-B:\r\nX-C:   \r\n\r\n", &r);
    cr_assert(sl_eq(r.fields[1].value, "v  w"));
    cr_assert_eq(r.fields[2].value.len, 0);
    cr_assert_eq(r.fields[3].value.len, 0);
}

Test(h1_request, obs_text_in_value_allowed)
{
    struct h1_request r;
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\x80\xff\r\n\r\n", &r);
    cr_assert_eq(r.fields[1].value.len, 7);
}

Test(h1_request, http10_defaults)
{
    struct h1_request r;
    ok_req("GET / HTTP/1.0\r\n\r\n", &r);
    cr_assert_eq(r.minor_version, 0);
    cr_assert(!r.keep_alive);
    cr_assert_eq(r.host.len, 0);
    ok_req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r);
    cr_assert(r.keep_alive);
}

Test(h1_request, connection_close)
{
    struct h1_request r;
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n", &r);
    cr_assert(!r.keep_alive);
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", &r);
    cr_assert(!r.keep_alive);
}

Test(h1_request, leading_empty_lines_ignored)
{
    struct h1_request r;
    ok_req("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    cr_assert(sl_eq(r.method, "GET"));
    ok_req("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", &r);
}
BAD(too_many_leading_empty_lines, "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    H1E_BAD_REQUEST_LINE)
BAD(leading_bare_lf, "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", H1E_BAD_REQUEST_LINE)

Test(h1_request, methods)
{
    struct h1_request r;
    ok_req("PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    cr_assert_eq(r.method_id, HTTP_M_OTHER);
    ok_req("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    cr_assert_eq(r.method_id, HTTP_M_DELETE);
    ok_req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    cr_assert_eq(r.target_form, H1_TARGET_ASTERISK);
}

Test(h1_request, absolute_form)
{
    struct h1_request r;
    ok_req("GET HTTP://Example.com:8080/p?q HTTP/1.1\r\nHost: example.COM\r\n\r\n", &r);
    cr_assert_eq(r.target_form, H1_TARGET_ABSOLUTE);
    cr_assert(sl_eq(r.authority, "Example.com:8080"));
    cr_assert(sl_eq(r.path, "/p?q"));
    cr_assert(sl_eq(r.host, "Example.com:8080"));
    ok_req("GET https://a HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    cr_assert(sl_eq(r.path, "/"));
    ok_req("GET http://[::1]:80/ HTTP/1.1\r\nHost: [::1]\r\n\r\n", &r);
    cr_assert(sl_eq(r.authority, "[::1]:80"));
}

Test(h1_request, connect_authority_form)
{
    struct h1_request r;
    ok_req("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &r);
    cr_assert_eq(r.target_form, H1_TARGET_AUTHORITY);
    cr_assert(sl_eq(r.authority, "example.com:443"));
    cr_assert_eq(r.path.len, 0);
}

Test(h1_request, expect_upgrade)
{
    struct h1_request r;
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n", &r);
    cr_assert(r.expect_continue);
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", &r);
    cr_assert(!r.expect_continue);
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           "Upgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
           &r);
    cr_assert(r.upgrade);
    cr_assert(r.upgrade_h2c);
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &r);
    cr_assert(r.upgrade);
    cr_assert(!r.upgrade_h2c);
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", &r);
    cr_assert(!r.upgrade);
    ok_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", &r);
    cr_assert(!r.upgrade);
}

Test(h1_request, content_length_forms)
{
    struct h1_request r;
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", &r);
    cr_assert_eq(r.content_length, 0);
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", &r);
    cr_assert_eq(r.content_length, 7);
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n", &r);
    cr_assert_eq(r.content_length, INT64_MAX);
}

Test(h1_request, transfer_encoding_forms)
{
    struct h1_request r;
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &r);
    cr_assert(r.chunked);
    cr_assert_eq(r.content_length, -1);
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n", &r);
    cr_assert(r.chunked);
    ok_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
           "Transfer-Encoding: chunked\r\n\r\n",
           &r);
    cr_assert(r.chunked);
}

Test(h1_request, hosts_accepted)
{
    struct h1_request r;
    const char *ok[] = {"a",
                        "example.com:8080",
                        "127.0.0.1",
                        "[::1]",
                        "[2001:db8::1]:443",
                        "xn--bcher-kva.example.",
                        "a_b.c~d",
                        ""};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", ok[i]);
        ok_req(buf, &r);
        cr_assert(sl_eq(r.host, ok[i]), "%s", ok[i]);
    }
}

Test(h1_request, limits_exact_fit)
{
    struct h1_limits l = {.max_request_line = 14, .max_head = 25, .max_fields = 1};
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"; /* line 14, head 27 */
    struct h1_request r;
    enum h1_error e;
    l.max_head = 27;
    cr_assert_eq(reql(s, strlen(s), &l, &r, &e), H1_DONE);
    l.max_head = 26;
    cr_assert_eq(reql(s, strlen(s), &l, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
    l.max_head = 27;
    l.max_request_line = 13;
    cr_assert_eq(reql(s, strlen(s), &l, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_URI_TOO_LONG);
}

/* ---- rejected: request line ---- */

BAD(method_bad_char, "G(ET / HTTP/1.1\r\n" H "\r\n", H1E_BAD_METHOD)
BAD(method_empty, " / HTTP/1.1\r\n" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(method_only, "GET\r\n" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(double_sp_after_method, "GET  / HTTP/1.1\r\n" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(double_sp_before_version, "GET /  HTTP/1.1\r\n" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(tab_separator, "GET\t/ HTTP/1.1\r\n" H "\r\n", H1E_BAD_METHOD)
BAD(http09_no_version, "GET /\r\n\r\n", H1E_BAD_REQUEST_LINE)
BAD(version_lowercase, "GET / http/1.1\r\n" H "\r\n", H1E_BAD_VERSION)
BAD(version_garbage, "GET / FOO\r\n" H "\r\n", H1E_BAD_VERSION)
BAD(version_2_0, "GET / HTTP/2.0\r\n" H "\r\n", H1E_VERSION)
BAD(version_1_2, "GET / HTTP/1.2\r\n" H "\r\n", H1E_VERSION)
BAD(version_0_9, "GET / HTTP/0.9\r\n" H "\r\n", H1E_VERSION)
BAD(h2_preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", H1E_VERSION)
BAD(version_extra_digit, "GET / HTTP/1.10\r\n" H "\r\n", H1E_BAD_VERSION)
BAD(version_no_minor, "GET / HTTP/1\r\n" H "\r\n", H1E_BAD_VERSION)
BAD(version_trailing_space, "GET / HTTP/1.1 \r\n" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(request_line_bare_lf, "GET / HTTP/1.1\n" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(request_line_bare_cr, "GET / HTTP/1.1\rX" H "\r\n", H1E_BAD_REQUEST_LINE)
BAD(target_ctl, "GET /a\x01 HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(target_del, "GET /a\x7f HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(target_obs_text, "GET /caf\xc3\xa9 HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(target_tab, "GET /a\tb HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(target_relative, "GET index.html HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(asterisk_not_options, "GET * HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(asterisk_with_more, "OPTIONS *x HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(authority_form_not_connect, "GET a:80 HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(connect_origin_form, "CONNECT / HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(connect_no_port, "CONNECT a HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(connect_absolute_form, "CONNECT http://a:80/ HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(absolute_unknown_scheme, "GET ftp://a/ HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(absolute_userinfo, "GET http://u:p@a/ HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(absolute_empty_authority, "GET http:///x HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)
BAD(absolute_query_without_path, "GET http://a?x HTTP/1.1\r\n" H "\r\n", H1E_BAD_TARGET)

Test(h1_reject, request_line_too_long)
{
    char buf[10000];
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    struct h1_request r;
    enum h1_error e;
    /* incomplete: no CRLF yet */
    cr_assert_eq(h1_parse_request(buf, 8193, &lim, fields, 128, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_URI_TOO_LONG);
    cr_assert_eq(h1_error_status(e), 414);
    cr_assert_eq(h1_parse_request(buf, 8192, &lim, fields, 128, &r, &e), H1_INCOMPLETE);
    /* complete: 8193 bytes of line */
    strcpy(buf + 8193 - 9, " HTTP/1.1\r\nHost: a\r\n\r\n");
    cr_assert_eq(reql(buf, strlen(buf), &lim, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_URI_TOO_LONG);
    /* 8192 bytes is fine */
    strcpy(buf + 8192 - 9, " HTTP/1.1\r\nHost: a\r\n\r\n");
    cr_assert_eq(h1_parse_request(buf, strlen(buf), &lim, fields, 128, &r, &e), H1_DONE);
}

/* ---- rejected: fields ---- */

BAD(space_before_colon, "GET / HTTP/1.1\r\nHost : a\r\n\r\n", H1E_BAD_FIELD)
BAD(tab_before_colon, "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", H1E_BAD_FIELD)
BAD(empty_name, "GET / HTTP/1.1\r\n" H ": v\r\n\r\n", H1E_BAD_FIELD)
BAD(name_bad_char, "GET / HTTP/1.1\r\n" H "X(y): v\r\n\r\n", H1E_BAD_FIELD)
BAD(name_obs_text, "GET / HTTP/1.1\r\n" H "X\xe9: v\r\n\r\n", H1E_BAD_FIELD)
BAD(no_colon, "GET / HTTP/1.1\r\n" H "Foo\r\n\r\n", H1E_BAD_FIELD)
BAD(value_ctl,
    "GET / HTTP/1.1\r\n" H "X: a\x01"
    "b\r\n\r\n",
    H1E_BAD_FIELD)
BAD(value_del, "GET / HTTP/1.1\r\n" H "X: a\x7f\r\n\r\n", H1E_BAD_FIELD)
BAD(value_bare_cr, "GET / HTTP/1.1\r\n" H "X: a\rb\r\n\r\n", H1E_BAD_FIELD)
BAD(value_bare_lf, "GET / HTTP/1.1\r\n" H "X: a\nY: b\r\n\r\n", H1E_BAD_FIELD)
BAD(final_bare_lf, "GET / HTTP/1.1\r\n" H "\n", H1E_BAD_FIELD)
BAD(final_cr_then_garbage, "GET / HTTP/1.1\r\n" H "\rX", H1E_BAD_FIELD)
BAD(obs_fold, "GET / HTTP/1.1\r\n" H "X: a\r\n b\r\n\r\n", H1E_OBS_FOLD)
BAD(obs_fold_tab, "GET / HTTP/1.1\r\n" H "X: a\r\n\tb\r\n\r\n", H1E_OBS_FOLD)
BAD(space_before_first_field, "GET / HTTP/1.1\r\n Host: a\r\n\r\n", H1E_OBS_FOLD)

Test(h1_reject, value_nul_via_len)
{
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(reql(s, sizeof(s) - 1, &lim, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_BAD_FIELD);
}

/* One field line longer than a large header buffer is 431, like nginx's
 * large_client_header_buffers, even when the whole head is within limits. */
Test(h1_reject, field_line_too_large)
{
    char buf[4096];
    struct h1_limits l = {.max_request_line = 100, .max_head = 4000, .max_fields = 100};
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    size_t n = strlen(buf);
    memset(buf + n, 'v', 200);
    struct h1_request r;
    enum h1_error e;
    /* refused before the line ends */
    cr_assert_eq(h1_parse_request(buf, n + 200, &l, fields, 128, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
    strcpy(buf + n + 50, "\r\n\r\n");
    cr_assert_eq(reql(buf, strlen(buf), &l, &r, &e), H1_DONE);
}

Test(h1_reject, repeated_content_length)
{
    struct h1_request r;
    enum h1_error e;
    static const char a[] =
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    static const char b[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n";
    cr_assert_eq(reql(a, sizeof(a) - 1, &lim, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_BAD_CONTENT_LENGTH);
    cr_assert_eq(reql(b, sizeof(b) - 1, &lim, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_BAD_CONTENT_LENGTH);
}

Test(h1_reject, head_too_large)
{
    char buf[70000];
    struct h1_limits l = {.max_request_line = 4000, .max_head = 1000, .max_fields = 100};
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    size_t n = strlen(buf);
    memset(buf + n, 'v', 2000);
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(h1_parse_request(buf, 999, &l, fields, 128, &r, &e), H1_INCOMPLETE);
    cr_assert_eq(h1_parse_request(buf, 1000, &l, fields, 128, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
    cr_assert_eq(h1_error_status(e), 431);
    strcpy(buf + 1500, "\r\n\r\n");
    cr_assert_eq(reql(buf, strlen(buf), &l, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
}

Test(h1_reject, head_too_large_waiting_for_lf)
{
    /* the byte at the limit is the CR of the last line: still too large */
    struct h1_limits l = {.max_request_line = 100, .max_head = 27, .max_fields = 100};
    const char *s = "GET / HTTP/1.1\r\nHost: ab\r\n\r\n"; /* 28 bytes */
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(h1_parse_request(s, 26, &l, fields, 128, &r, &e), H1_INCOMPLETE);
    cr_assert_eq(h1_parse_request(s, 27, &l, fields, 128, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
}

Test(h1_reject, too_many_fields_limit)
{
    struct h1_limits l = {.max_request_line = 100, .max_head = 1000, .max_fields = 3};
    const char *s3 = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    const char *s4 = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(reql(s3, strlen(s3), &l, &r, &e), H1_DONE);
    cr_assert_eq(reql(s4, strlen(s4), &l, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
    /* detected before the head ends */
    cr_assert_eq(h1_parse_request(s4, strlen(s4) - 5, &l, fields, 128, &r, &e), H1_ERROR);
}

Test(h1_reject, too_many_fields_array)
{
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    struct http_field f[3];
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(h1_parse_request(s, strlen(s), &lim, f, 2, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
    cr_assert_eq(h1_parse_request(s, strlen(s), &lim, f, 3, &r, &e), H1_DONE);
}

/* ---- rejected: framing ---- */

#define CL(name, v)                                                                                \
    BAD(cl_##name, "POST / HTTP/1.1\r\n" H "Content-Length: " v "\r\n\r\n", H1E_BAD_CONTENT_LENGTH)
CL(plus, "+5")
CL(minus, "-1")
CL(hex, "0x10")
CL(empty, "")
CL(inner_space, "1 2")
CL(letters, "12a")
CL(overflow, "9223372036854775808")
CL(huge, "99999999999999999999999")
CL(list_differs, "5, 6")
CL(list_trailing_comma, "5,")
CL(list_empty_element, "5,,5")
BAD(cl_repeated_differs, "POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
    H1E_BAD_CONTENT_LENGTH)
BAD(cl_and_te, "POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    H1E_CL_AND_TE)
BAD(te_and_cl, "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    H1E_CL_AND_TE)

#define TE(name, v, err)                                                                           \
    BAD(te_##name, "POST / HTTP/1.1\r\n" H "Transfer-Encoding: " v "\r\n\r\n", err)
TE(gzip_only, "gzip", H1E_TE_NOT_CHUNKED)
TE(chunked_not_last, "chunked, gzip", H1E_TE_NOT_CHUNKED)
TE(chunked_twice, "chunked, chunked", H1E_BAD_FIELD)
TE(unknown, "foo, chunked", H1E_TE_UNKNOWN)
TE(chunked_with_param, "chunked;q=1", H1E_TE_UNKNOWN)
TE(chunked_misspelt, "chunkedx", H1E_TE_UNKNOWN)
TE(empty, "", H1E_TE_UNKNOWN)
BAD(te_fields_chunked_then_gzip,
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
    H1E_TE_NOT_CHUNKED)
BAD(te_fields_chunked_twice,
    "POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    H1E_BAD_FIELD)
BAD(te_http10, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", H1E_TE_HTTP10)

Test(h1_reject, te_statuses)
{
    cr_assert_eq(h1_error_status(H1E_TE_NOT_CHUNKED), 501);
    cr_assert_eq(h1_error_status(H1E_TE_UNKNOWN), 501);
    cr_assert_eq(h1_error_status(H1E_VERSION), 505);
    cr_assert_eq(h1_error_status(H1E_CL_AND_TE), 400);
    cr_assert_eq(h1_error_status(H1E_TE_HTTP10), 400);
    cr_assert_eq(h1_error_status(H1E_BAD_FIELD), 400);
    for (int e = H1E_NONE; e <= H1E_TRAILER_TOO_LARGE; e++)
        cr_assert_neq(strcmp(h1_error_str((enum h1_error)e), "unknown error"), 0);
}

/* ---- rejected: Host ---- */

BAD(no_host_http11, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", H1E_NO_HOST)
BAD(no_host_absolute_form, "GET http://a/ HTTP/1.1\r\n\r\n", H1E_NO_HOST)
BAD(dup_host, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", H1E_DUP_HOST)
BAD(dup_host_case, "GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n", H1E_DUP_HOST)
#define HOST(name, v) BAD(host_##name, "GET / HTTP/1.1\r\nHost: " v "\r\n\r\n", H1E_BAD_HOST)
HOST(space, "a b")
HOST(userinfo, "u@a")
HOST(path, "a/b")
HOST(port_letters, "a:8o")
HOST(port_empty, "a:")
HOST(port_too_big, "a:65536")
HOST(port_too_long, "a:000080")
HOST(two_ports, "a:1:2")
HOST(ipv6_unclosed, "[::1")
HOST(ipv6_empty, "[]")
HOST(ipv6_junk, "[::g]")
HOST(bad_pct, "a%zz")
HOST(comma_list, "a, b")
HOST(only_port, ":80")
BAD(host_mismatch, "GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", H1E_HOST_MISMATCH)
BAD(host_mismatch_connect, "CONNECT a:443 HTTP/1.1\r\nHost: b:443\r\n\r\n", H1E_HOST_MISMATCH)

/* ---- incremental parsing ---- */

static const char chrome[] =
    "GET /wiki/Special:Search?search=proxy&go=Go HTTP/1.1\r\n"
    "Host: en.wikipedia.org\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Cookie: a=1; b=2; session=abcdef0123456789\r\n"
    "\r\n";

Test(h1_incremental, byte_at_a_time_equals_one_shot)
{
    struct h1_request one, inc;
    struct http_field f1[64], f2[64];
    enum h1_error e;
    size_t n = sizeof(chrome) - 1;
    cr_assert_eq(h1_parse_request(chrome, n, &lim, f1, 64, &one, &e), H1_DONE);
    size_t i;
    for (i = 0; i <= n; i++) {
        enum h1_result rc = h1_parse_request(chrome, i, &lim, f2, 64, &inc, &e);
        if (rc == H1_DONE)
            break;
        cr_assert_eq(rc, H1_INCOMPLETE, "at %zu", i);
    }
    cr_assert_eq(i, n);
    cr_assert_eq(inc.nfields, one.nfields);
    cr_assert_eq(inc.nfields, 11);
    cr_assert_eq(inc.head_len, one.head_len);
    for (size_t k = 0; k < one.nfields; k++) {
        cr_assert(slice_eq(f1[k].name, f2[k].name));
        cr_assert(slice_eq(f1[k].value, f2[k].value));
    }
    cr_assert(slice_eq(one.target, inc.target));
    cr_assert(slice_eq(one.host, inc.host));
    cr_assert_eq(one.keep_alive, inc.keep_alive);
}

Test(h1_incremental, copy_into_growing_buffer)
{
    /* the slices point into the buffer given to the call that finished */
    char buf[sizeof(chrome)];
    struct h1_request r;
    enum h1_error e;
    size_t n = sizeof(chrome) - 1;
    for (size_t i = 1; i <= n; i++) {
        memcpy(buf, chrome, i);
        if (h1_parse_request(buf, i, &lim, fields, 128, &r, &e) == H1_DONE)
            break;
    }
    cr_assert(r.method.p == buf);
    cr_assert(r.fields[0].value.p >= buf && r.fields[0].value.p < buf + n);
}

/* ---- responses ---- */

static void check_prefixes_resp(const char *s, size_t n, enum h1_result rc, enum h1_error e,
                                size_t head_len)
{
    size_t upto = rc == H1_DONE ? head_len : n;
    for (size_t i = 0; i < upto; i++) {
        struct h1_response r;
        enum h1_error pe;
        struct http_field f[128];
        enum h1_result prc = h1_parse_response(s, i, &lim, f, 128, &r, &pe);
        if (prc == H1_ERROR)
            cr_assert_eq(pe, e, "prefix %zu", i);
        else
            cr_assert_eq(prc, H1_INCOMPLETE, "prefix %zu", i);
    }
}

static enum h1_result resp(const char *s, struct h1_response *r, enum h1_error *e)
{
    size_t n = strlen(s);
    enum h1_result rc = h1_parse_response(s, n, &lim, fields, 128, r, e);
    check_prefixes_resp(s, n, rc, *e, rc == H1_DONE ? r->head_len : 0);
    return rc;
}

static void ok_resp(const char *s, struct h1_response *r)
{
    enum h1_error e;
    cr_assert_eq(resp(s, r, &e), H1_DONE, "%s: %s", s, h1_error_str(e));
    cr_assert_eq(r->head_len, strlen(s));
}

static void bad_resp(const char *s, enum h1_error want)
{
    struct h1_response r;
    enum h1_error e;
    cr_assert_eq(resp(s, &r, &e), H1_ERROR, "accepted %s", s);
    cr_assert_eq(e, want, "got %s want %s", h1_error_str(e), h1_error_str(want));
}

Test(h1_response, simple)
{
    struct h1_response r;
    ok_resp("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: x\r\n\r\n", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.minor_version, 1);
    cr_assert(sl_eq(r.reason, "OK"));
    cr_assert_eq(r.nfields, 2);
    cr_assert_eq(r.content_length, 12);
    cr_assert(r.keep_alive);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_LENGTH);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_HEAD), H1_BODY_NONE);
}

Test(h1_response, reasons)
{
    struct h1_response r;
    ok_resp("HTTP/1.1 404 Not \tFound \xe9\r\n\r\n", &r);
    cr_assert(sl_eq(r.reason, "Not \tFound \xe9"));
    ok_resp("HTTP/1.1 200 \r\n\r\n", &r);
    cr_assert_eq(r.reason.len, 0);
    ok_resp("HTTP/1.1 200\r\n\r\n", &r);
    cr_assert_eq(r.reason.len, 0);
    cr_assert_eq(r.status, 200);
}

Test(h1_response, keep_alive_and_kinds)
{
    struct h1_response r;
    ok_resp("HTTP/1.0 200 OK\r\n\r\n", &r);
    cr_assert(!r.keep_alive);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_UNTIL_CLOSE);
    ok_resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", &r);
    cr_assert(r.keep_alive);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_NONE);
    ok_resp("HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n", &r);
    cr_assert(!r.keep_alive);
    cr_assert(r.chunked);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_POST), H1_BODY_CHUNKED);
    ok_resp("HTTP/1.1 204 No Content\r\n\r\n", &r);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_NONE);
    ok_resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", &r);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_NONE);
    ok_resp("HTTP/1.1 100 Continue\r\n\r\n", &r);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_NONE);
    ok_resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", &r);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_NONE);
    ok_resp("HTTP/1.1 200 Connection established\r\n\r\n", &r);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_CONNECT), H1_BODY_NONE);
    cr_assert_eq(h1_response_body_kind(&r, HTTP_M_GET), H1_BODY_UNTIL_CLOSE);
}

#define BADR(name, msg, err)                                                                       \
    Test(h1_response_reject, name)                                                                 \
    {                                                                                              \
        bad_resp(msg, err);                                                                        \
    }
BADR(lowercase_version, "http/1.1 200 OK\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(version_2, "HTTP/2.0 200 OK\r\n\r\n", H1E_VERSION)
BADR(two_digit_status, "HTTP/1.1 20 OK\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(four_digit_status, "HTTP/1.1 2000 OK\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(status_below_100, "HTTP/1.1 099 X\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(status_above_599, "HTTP/1.1 600 X\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(double_space, "HTTP/1.1  200 OK\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(reason_ctl, "HTTP/1.1 200 O\x01K\r\n\r\n", H1E_BAD_STATUS_LINE)
BADR(status_line_bare_lf, "HTTP/1.1 200 OK\n\r\n", H1E_BAD_STATUS_LINE)
BADR(field_bare_lf, "HTTP/1.1 200 OK\r\nA: b\n\r\n", H1E_BAD_FIELD)
BADR(obs_fold, "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", H1E_OBS_FOLD)
BADR(cl_and_te, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     H1E_CL_AND_TE)
BADR(cl_differs, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     H1E_BAD_CONTENT_LENGTH)
BADR(cl_bad, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", H1E_BAD_CONTENT_LENGTH)
BADR(te_not_chunked, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", H1E_TE_NOT_CHUNKED)
BADR(te_unknown, "HTTP/1.1 200 OK\r\nTransfer-Encoding: x, chunked\r\n\r\n", H1E_TE_UNKNOWN)

Test(h1_response_reject, head_too_large)
{
    struct h1_limits l = {.max_request_line = 100, .max_head = 30, .max_fields = 10};
    const char *s = "HTTP/1.1 200 OK\r\nServer: abcdefghijk\r\n\r\n";
    struct h1_response r;
    enum h1_error e;
    cr_assert_eq(h1_parse_response(s, strlen(s), &l, fields, 128, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_HEAD_TOO_LARGE);
    cr_assert_eq(h1_parse_response(s, 29, &l, fields, 128, &r, &e), H1_INCOMPLETE);
}

/* ---- chunked ---- */

struct ch_out {
    enum h1_result rc;
    enum h1_error err;
    char data[8192];
    size_t dlen;
    struct slice trailers;
    size_t used; /* input bytes consumed */
};

/* Feeds `in` the way a connection would: the bytes available grow to each
 * cut in turn, unconsumed bytes stay in front. */
static void ch_run(const char *in, size_t len, const size_t *cuts, size_t ncuts, size_t max_trailer,
                   struct ch_out *o)
{
    struct h1_chunked d;
    size_t off = 0;
    h1_chunked_init(&d, max_trailer);
    memset(o, 0, sizeof(*o));
    o->rc = H1_INCOMPLETE;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t avail = c < ncuts ? cuts[c] : len;
        for (;;) {
            size_t used;
            struct slice data, tr = SLICE_NULL;
            enum h1_error e;
            enum h1_result rc = h1_chunked_decode(&d, in + off, avail - off, &used, &data, &tr, &e);
            cr_assert_leq(used, avail - off);
            cr_assert(data.len == 0 ||
                      (data.p >= in + off && data.p + data.len <= in + off + used));
            cr_assert_leq(o->dlen + data.len, sizeof(o->data));
            memcpy(o->data + o->dlen, data.p, data.len);
            o->dlen += data.len;
            off += used;
            o->rc = rc;
            if (rc == H1_ERROR) {
                o->err = e;
                o->used = off;
                return;
            }
            if (rc == H1_DONE) {
                o->trailers = tr;
                o->used = off;
                cr_assert(h1_chunked_in_trailer(&d));
                return;
            }
            if (used == 0 && data.len == 0)
                break;
        }
    }
    o->used = off;
}

static void ch_whole(const char *s, size_t max_trailer, struct ch_out *o)
{
    ch_run(s, strlen(s), NULL, 0, max_trailer, o);
}

static const char body[] = "5\r\nhello\r\n"
                           "1a;ext=val;q=\"a \\\" b\" ; flag\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                           "0\r\nExpires: never\r\nX-Sum: 1\r\n\r\nNEXT";

Test(h1_chunked, whole)
{
    struct ch_out o;
    ch_whole(body, 1024, &o);
    cr_assert_eq(o.rc, H1_DONE, "%s", h1_error_str(o.err));
    cr_assert_eq(o.dlen, 31);
    cr_assert_eq(memcmp(o.data, "helloabcdefghijklmnopqrstuvwxyz", 31), 0);
    cr_assert(sl_eq(o.trailers, "Expires: never\r\nX-Sum: 1\r\n"));
    cr_assert_eq(o.used, strlen(body) - 4); /* "NEXT" is not consumed */
}

Test(h1_chunked, split_at_every_position)
{
    size_t n = strlen(body);
    struct ch_out o;
    for (size_t i = 0; i <= n; i++) {
        size_t cut = i;
        ch_run(body, n, &cut, 1, 1024, &o);
        cr_assert_eq(o.rc, H1_DONE, "cut %zu: %s", i, h1_error_str(o.err));
        cr_assert_eq(o.dlen, 31, "cut %zu", i);
        cr_assert_eq(memcmp(o.data, "helloabcdefghijklmnopqrstuvwxyz", 31), 0);
        cr_assert_eq(o.used, n - 4);
    }
}

Test(h1_chunked, byte_at_a_time)
{
    size_t n = strlen(body), cuts[256];
    for (size_t i = 0; i < n; i++)
        cuts[i] = i;
    struct ch_out o;
    ch_run(body, n, cuts, n, 1024, &o);
    cr_assert_eq(o.rc, H1_DONE);
    cr_assert_eq(o.dlen, 31);
    cr_assert(sl_eq(o.trailers, "Expires: never\r\nX-Sum: 1\r\n"));
}

Test(h1_chunked, trailer_consumed_only_whole)
{
    const char *s = "3\r\nabc\r\n0\r\nX: 1\r\n";
    struct h1_chunked d;
    size_t used;
    struct slice data;
    enum h1_error e;
    h1_chunked_init(&d, 100);
    cr_assert_eq(h1_chunked_decode(&d, s, strlen(s), &used, &data, NULL, &e), H1_INCOMPLETE);
    cr_assert_eq(used, 6);
    cr_assert(sl_eq(data, "abc"));
    cr_assert(!h1_chunked_in_trailer(&d));
    cr_assert_eq(h1_chunked_decode(&d, s + 6, strlen(s) - 6, &used, &data, NULL, &e),
                 H1_INCOMPLETE);
    cr_assert_eq(used, 5); /* CRLF and the last-chunk line, not "X: 1\r\n" */
    cr_assert(h1_chunked_in_trailer(&d));
    cr_assert_eq(h1_chunked_decode(&d, s + 11, strlen(s) - 11, &used, &data, NULL, &e),
                 H1_INCOMPLETE);
    cr_assert_eq(used, 0);
}

Test(h1_chunked, empty_body_and_done_is_sticky)
{
    struct h1_chunked d;
    size_t used;
    struct slice data, tr;
    enum h1_error e;
    h1_chunked_init(&d, 0);
    cr_assert_eq(h1_chunked_decode(&d, "0\r\n\r\nX", 6, &used, &data, &tr, &e), H1_DONE);
    cr_assert_eq(used, 5);
    cr_assert_eq(tr.len, 0);
    cr_assert_eq(h1_chunked_decode(&d, "X", 1, &used, &data, &tr, &e), H1_DONE);
    cr_assert_eq(used, 0);
}

Test(h1_chunked, size_forms)
{
    struct ch_out o;
    ch_whole("000A\r\n0123456789\r\n0000\r\n\r\n", 0, &o);
    cr_assert_eq(o.rc, H1_DONE);
    cr_assert_eq(o.dlen, 10);
    ch_whole("1 ;a\r\nx\r\n0;b=\"\"\r\n\r\n", 0, &o);
    cr_assert_eq(o.rc, H1_DONE);
    ch_whole("1;a = b\r\nx\r\n0\r\n\r\n", 0, &o);
    cr_assert_eq(o.rc, H1_DONE);
}

Test(h1_chunked, large_size_partial)
{
    /* 2^63-1 is allowed; the data just never ends */
    struct ch_out o;
    ch_whole("7fffffffffffffff\r\nabc", 0, &o);
    cr_assert_eq(o.rc, H1_INCOMPLETE);
    cr_assert_eq(o.dlen, 3);
}

static void bad_chunk(const char *s, enum h1_error want)
{
    struct ch_out o;
    ch_whole(s, 64, &o);
    cr_assert_eq(o.rc, H1_ERROR, "accepted %s", s);
    cr_assert_eq(o.err, want, "got %s", h1_error_str(o.err));
}
#define BADC(name, s)                                                                              \
    Test(h1_chunked_reject, name)                                                                  \
    {                                                                                              \
        bad_chunk(s, H1E_BAD_CHUNK);                                                               \
    }
BADC(no_digits, "\r\nabc\r\n0\r\n\r\n")
BADC(not_hex, "g\r\n")
BADC(sign, "+5\r\nhello\r\n0\r\n\r\n")
BADC(hex_prefix, "0x5\r\nhello\r\n0\r\n\r\n")
BADC(seventeen_digits, "00000000000000005\r\nhello\r\n0\r\n\r\n")
BADC(overflow, "8000000000000000\r\n")
BADC(overflow_all_f, "ffffffffffffffff\r\n")
BADC(space_after_size, "5 \r\nhello\r\n0\r\n\r\n")
BADC(space_inside_size, "1 2\r\n")
BADC(bare_lf_size, "5\nhello\r\n0\r\n\r\n")
BADC(bare_cr_size, "5\rhello\r\n0\r\n\r\n")
BADC(data_too_long, "5\r\nhello!\r\n0\r\n\r\n")
BADC(data_bare_lf, "5\r\nhello\n0\r\n\r\n")
BADC(data_no_crlf, "5\r\nhelloXY0\r\n\r\n")
BADC(ext_empty_name, "5;\r\nhello\r\n0\r\n\r\n")
BADC(ext_bad_char, "5;a@b\r\nhello\r\n0\r\n\r\n")
BADC(ext_ctl, "5;a=\x01\r\nhello\r\n0\r\n\r\n")
BADC(ext_empty_value, "5;a=\r\nhello\r\n0\r\n\r\n")
BADC(ext_quoted_ctl, "5;a=\"x\x01\"\r\nhello\r\n0\r\n\r\n")
BADC(ext_trailing_space, "5;a \r\nhello\r\n0\r\n\r\n")
BADC(last_chunk_bare_lf, "0\n\r\n")

Test(h1_chunked_reject, size_line_too_long)
{
    static char s[5000];
    memset(s, ' ', sizeof(s) - 1);
    memcpy(s, "5;a=\"", 5);
    struct h1_chunked d;
    size_t used;
    struct slice data;
    enum h1_error e;
    h1_chunked_init(&d, 0);
    cr_assert_eq(h1_chunked_decode(&d, s, 4095, &used, &data, NULL, &e), H1_INCOMPLETE);
    cr_assert_eq(h1_chunked_decode(&d, s, 4096, &used, &data, NULL, &e), H1_ERROR);
    cr_assert_eq(e, H1E_BAD_CHUNK);
    /* sticky */
    cr_assert_eq(h1_chunked_decode(&d, "0\r\n\r\n", 5, &used, &data, NULL, &e), H1_ERROR);
    cr_assert_eq(e, H1E_BAD_CHUNK);
}

Test(h1_chunked_reject, trailer_bad_field)
{
    bad_chunk("0\r\nX : 1\r\n\r\n", H1E_BAD_FIELD);
    bad_chunk("0\r\nX: 1\r\n y\r\n\r\n", H1E_OBS_FOLD);
    bad_chunk("0\r\nX: 1\n\r\n", H1E_BAD_FIELD);
    bad_chunk("0\r\nX: \x01\r\n\r\n", H1E_BAD_FIELD);
    bad_chunk("0\r\n\n", H1E_BAD_FIELD);
}

Test(h1_chunked_reject, trailer_too_large)
{
    struct ch_out o;
    const char *s = "0\r\nX: 12345\r\n\r\n"; /* 10 bytes of trailer lines */
    ch_whole(s, 10, &o);
    cr_assert_eq(o.rc, H1_DONE);
    ch_whole(s, 9, &o);
    cr_assert_eq(o.rc, H1_ERROR);
    cr_assert_eq(o.err, H1E_TRAILER_TOO_LARGE);
    /* and before the end arrives */
    ch_run(s, 14, NULL, 0, 9, &o);
    cr_assert_eq(o.rc, H1_ERROR);
    cr_assert_eq(o.err, H1E_TRAILER_TOO_LARGE);
}

/* Found by fuzz_h1_request: a bad byte just past the line limit gave
 * BAD_VERSION on the whole input but 414 on a prefix. */
Test(h1_regress, fuzz_414_vs_bad_version)
{
    struct h1_limits l = {.max_request_line = 11, .max_head = 1000, .max_fields = 10};
    const char *s = "GET /a HTTP/x.1\r\nHost: a\r\n\r\n";
    struct h1_request r;
    enum h1_error e;
    cr_assert_eq(reql(s, strlen(s), &l, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_URI_TOO_LONG);
    l.max_request_line = 13;
    cr_assert_eq(reql(s, strlen(s), &l, &r, &e), H1_ERROR);
    cr_assert_eq(e, H1E_BAD_VERSION);
}
