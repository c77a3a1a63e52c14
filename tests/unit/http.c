/* Protocol-neutral HTTP helpers. */
#include <criterion/criterion.h>
#include <string.h>

#include "http/http.h"

Test(http, method_id)
{
    cr_assert_eq(http_method_id(SLICE_LIT("GET")), HTTP_M_GET);
    cr_assert_eq(http_method_id(SLICE_LIT("HEAD")), HTTP_M_HEAD);
    cr_assert_eq(http_method_id(SLICE_LIT("POST")), HTTP_M_POST);
    cr_assert_eq(http_method_id(SLICE_LIT("PUT")), HTTP_M_PUT);
    cr_assert_eq(http_method_id(SLICE_LIT("DELETE")), HTTP_M_DELETE);
    cr_assert_eq(http_method_id(SLICE_LIT("OPTIONS")), HTTP_M_OPTIONS);
    cr_assert_eq(http_method_id(SLICE_LIT("CONNECT")), HTTP_M_CONNECT);
    cr_assert_eq(http_method_id(SLICE_LIT("TRACE")), HTTP_M_TRACE);
    cr_assert_eq(http_method_id(SLICE_LIT("PATCH")), HTTP_M_PATCH);
    cr_assert_eq(http_method_id(SLICE_LIT("get")), HTTP_M_OTHER); /* case-sensitive */
    cr_assert_eq(http_method_id(SLICE_LIT("GETX")), HTTP_M_OTHER);
    cr_assert_eq(http_method_id(SLICE_LIT("")), HTTP_M_OTHER);
    cr_assert_eq(http_method_id(SLICE_LIT("PURGE")), HTTP_M_OTHER);
}

Test(http, idempotent)
{
    cr_assert(http_method_idempotent(HTTP_M_GET));
    cr_assert(http_method_idempotent(HTTP_M_PUT));
    cr_assert(http_method_idempotent(HTTP_M_DELETE));
    cr_assert(http_method_idempotent(HTTP_M_OPTIONS));
    cr_assert(!http_method_idempotent(HTTP_M_POST));
    cr_assert(!http_method_idempotent(HTTP_M_PATCH));
    cr_assert(!http_method_idempotent(HTTP_M_CONNECT));
    cr_assert(!http_method_idempotent(HTTP_M_OTHER));
}

Test(http, status_text)
{
    cr_assert_str_eq(http_status_text(200), "OK");
    cr_assert_str_eq(http_status_text(404), "Not Found");
    cr_assert_str_eq(http_status_text(431), "Request Header Fields Too Large");
    cr_assert_str_eq(http_status_text(103), "Early Hints");
    cr_assert_str_eq(http_status_text(505), "HTTP Version Not Supported");
    cr_assert_str_eq(http_status_text(299), "Unknown");
    static const int common[] = {
        100, 101, 103, 200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308,
        400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
        418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505};
    for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
        cr_assert_str_neq(http_status_text(common[i]), "Unknown", "%d", common[i]);
}

Test(http, tchar)
{
    const char *yes = "!#$%&'*+-.^_`|~09azAZ";
    const char *no = " \t\"(),/:;<=>?@[\\]{}\x7f";
    for (const char *p = yes; *p; p++)
        cr_assert(http_tchar[(unsigned char)*p], "%c", *p);
    for (const char *p = no; *p; p++)
        cr_assert(!http_tchar[(unsigned char)*p], "%c", *p);
    cr_assert(!http_tchar[0]);
    cr_assert(!http_tchar[0x80]);
    cr_assert(!http_tchar[0xff]);
}

Test(http, date_format)
{
    char out[30];
    cr_assert_eq(http_date_format(784111777, out), 29);
    cr_assert_str_eq(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    http_date_format(0, out);
    cr_assert_str_eq(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    http_date_format(951782400, out); /* leap day */
    cr_assert_str_eq(out, "Tue, 29 Feb 2000 00:00:00 GMT");
    http_date_format(4102444799, out);
    cr_assert_str_eq(out, "Thu, 31 Dec 2099 23:59:59 GMT");
}

Test(http, hop_by_hop)
{
    const char *yes[] = {"Connection", "keep-alive",        "PROXY-CONNECTION", "te",
                         "Trailer",    "Transfer-Encoding", "upgrade"};
    const char *no[] = {"Host", "Trailers", "Content-Length", "Keep-Alive2", "", "t"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        cr_assert(http_is_hop_by_hop(slice_cstr(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        cr_assert(!http_is_hop_by_hop(slice_cstr(no[i])), "%s", no[i]);
}

static void norm(const char *in, bool merge, const char *want)
{
    char out[256];
    long n = http_path_normalize(slice_cstr(in), out, merge);
    if (!want) {
        cr_assert_eq(n, -1, "%s normalised to %.*s", in, (int)(n < 0 ? 0 : n), out);
        return;
    }
    cr_assert_geq(n, 0, "%s refused", in);
    cr_assert_leq((size_t)n, strlen(in));
    cr_assert(strlen(want) == (size_t)n && memcmp(out, want, (size_t)n) == 0, "%s -> %.*s, want %s",
              in, (int)n, out, want);
}

Test(http_path, plain)
{
    norm("/", true, "/");
    norm("/a/b/c", true, "/a/b/c");
    norm("/a/b/", true, "/a/b/");
}

Test(http_path, decode)
{
    norm("/a%20b", true, "/a b");
    norm("/%41%62", true, "/Ab");
    norm("/%e2%82%ac", true, "/\xe2\x82\xac");
    norm("/a%2Fb", true, "/a/b");
    norm("/a+b", true, "/a+b");
}

Test(http_path, invalid_escapes)
{
    norm("/a%", true, NULL);
    norm("/a%4", true, NULL);
    norm("/a%zz", true, NULL);
    norm("/a%4g", true, NULL);
    norm("/a%00b", true, NULL);
}

Test(http_path, merge_slashes)
{
    norm("//a///b//", true, "/a/b/");
    norm("//a///b//", false, "//a///b//");
    norm("//", true, "/");
}

Test(http_path, dots)
{
    norm("/a/./b", true, "/a/b");
    norm("/a/.", true, "/a/");
    norm("/.", true, "/");
    norm("/a/b/../c", true, "/a/c");
    norm("/a/b/..", true, "/a/");
    norm("/a/..", true, "/");
    norm("/a/../../", true, NULL);
    norm("/..", true, NULL);
    norm("/../a", true, NULL);
    norm("/a/.b/..c/...", true, "/a/.b/..c/...");
    norm("/a/%2e%2E/b", true, "/b");
    norm("/a/%2e/b", true, "/a/b");
    norm("/%2e%2e", true, NULL);
    norm("/a/b%2f..%2f..%2f..", true, NULL);
    norm("/a//../b", true, "/b");
    norm("/a//../b", false, "/a/b");
}

Test(http_path, not_absolute)
{
    norm("", true, NULL);
    norm("a/b", true, NULL);
}
