#include "http/http.h"

#include "core/arena.h"

#include <string.h>

const uint8_t http_tchar[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

enum http_method http_method_id(struct slice m)
{
#define IS(lit) (memcmp(m.p, lit, sizeof(lit) - 1) == 0)
    switch (m.len) {
    case 3:
        if (IS("GET"))
            return HTTP_M_GET;
        if (IS("PUT"))
            return HTTP_M_PUT;
        break;
    case 4:
        if (IS("POST"))
            return HTTP_M_POST;
        if (IS("HEAD"))
            return HTTP_M_HEAD;
        break;
    case 5:
        if (IS("PATCH"))
            return HTTP_M_PATCH;
        if (IS("TRACE"))
            return HTTP_M_TRACE;
        break;
    case 6:
        if (IS("DELETE"))
            return HTTP_M_DELETE;
        break;
    case 7:
        if (IS("OPTIONS"))
            return HTTP_M_OPTIONS;
        if (IS("CONNECT"))
            return HTTP_M_CONNECT;
        break;
    }
#undef IS
    return HTTP_M_OTHER;
}

bool http_method_idempotent(enum http_method m)
{
    switch (m) {
    case HTTP_M_GET:
    case HTTP_M_HEAD:
    case HTTP_M_OPTIONS:
    case HTTP_M_TRACE:
    case HTTP_M_PUT:
    case HTTP_M_DELETE:
        return true;
    default:
        return false;
    }
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 102:
        return "Processing";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 207:
        return "Multi-Status";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 305:
        return "Use Proxy";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 418:
        return "I'm a teapot";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 423:
        return "Locked";
    case 424:
        return "Failed Dependency";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 451:
        return "Unavailable For Legal Reasons";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 506:
        return "Variant Also Negotiates";
    case 507:
        return "Insufficient Storage";
    case 508:
        return "Loop Detected";
    case 511:
        return "Network Authentication Required";
    default:
        return "Unknown";
    }
}

static void put2(char *o, int v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
}

/* No strftime: it depends on the locale and takes a lock in glibc. */
size_t http_date_format(time_t t, char out[30])
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    struct tm tm;

    /* Out of range for a 4-digit year: the epoch rather than garbage. */
    if (!gmtime_r(&t, &tm) || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900) {
        time_t zero = 0;
        gmtime_r(&zero, &tm);
    }
    int year = tm.tm_year + 1900;
    memcpy(out, days + 3 * tm.tm_wday, 3);
    out[3] = ',';
    out[4] = ' ';
    put2(out + 5, tm.tm_mday);
    out[7] = ' ';
    memcpy(out + 8, months + 3 * tm.tm_mon, 3);
    out[11] = ' ';
    put2(out + 12, year / 100);
    put2(out + 14, year % 100);
    out[16] = ' ';
    put2(out + 17, tm.tm_hour);
    out[19] = ':';
    put2(out + 20, tm.tm_min);
    out[22] = ':';
    put2(out + 23, tm.tm_sec);
    memcpy(out + 25, " GMT", 5);
    return 29;
}

bool http_is_hop_by_hop(struct slice n)
{
    switch (n.len) {
    case 2:
        return slice_eq_lit_ci(n, "te");
    case 7:
        return slice_eq_lit_ci(n, "trailer") || slice_eq_lit_ci(n, "upgrade");
    case 10:
        return slice_eq_lit_ci(n, "connection") || slice_eq_lit_ci(n, "keep-alive");
    case 16:
        return slice_eq_lit_ci(n, "proxy-connection");
    case 17:
        return slice_eq_lit_ci(n, "transfer-encoding");
    default:
        return false;
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Two passes over `out`: decode, then resolve segments in place (the write
 * index never passes the read index). Dot segments are recognised after
 * decoding, so "%2e%2e" climbs like "..", as in nginx. */
long http_path_normalize(struct slice in, char *out, bool merge_slashes)
{
    size_t n = 0;

    if (in.len == 0 || in.p[0] != '/')
        return -1;
    for (size_t i = 0; i < in.len; i++) {
        unsigned char c = (unsigned char)in.p[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= in.len)
                return -1;
            hi = hexval((unsigned char)in.p[i + 1]);
            lo = hexval((unsigned char)in.p[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        if (c == '\0')
            return -1;
        out[n++] = (char)c;
    }

    size_t w = 0, r = 0;
    while (r < n) {
        size_t s = r + 1, e = s;
        while (e < n && out[e] != '/')
            e++;
        size_t seg = e - s;
        bool last = e == n;
        if (seg == 0 && merge_slashes && !last) {
            r = e;
            continue;
        }
        if (seg == 1 && out[s] == '.') {
            if (last)
                out[w++] = '/';
            r = e;
            continue;
        }
        if (seg == 2 && out[s] == '.' && out[s + 1] == '.') {
            if (w == 0)
                return -1;
            while (out[--w] != '/')
                ;
            if (last)
                out[w++] = '/';
            r = e;
            continue;
        }
        memmove(out + w, out + r, e - r);
        w += e - r;
        r = e;
    }
    return (long)w;
}

bool http_connection_names(const struct http_field *f, size_t n, struct slice name)
{
    for (size_t i = 0; i < n; i++)
        if (slice_eq_lit_ci(f[i].name, "connection")) {
            struct slice list = f[i].value, e;
            while (slice_next_token(&list, &e))
                if (slice_eq_ci(e, name))
                    return true;
        }
    return false;
}

struct slice http_host_normalize(struct arena *a, struct slice h)
{
    if (!h.len)
        return h;
    size_t end = h.len;
    if (h.p[0] == '[') {
        const char *rb = memchr(h.p, ']', h.len);
        end = rb ? (size_t)(rb - h.p) + 1 : h.len;
    } else {
        const char *colon = memchr(h.p, ':', h.len);
        if (colon)
            end = (size_t)(colon - h.p);
    }
    if (end > 0 && h.p[end - 1] == '.')
        end--;
    char *p = arena_alloc(a, end + 1);
    if (!p)
        return SLICE_NULL;
    for (size_t i = 0; i < end; i++)
        p[i] = ascii_lower(h.p[i]);
    p[end] = '\0';
    return slice_make(p, end);
}

struct slice http_field_get(const struct http_field *f, size_t n, struct slice name, bool *found)
{
    for (size_t i = 0; i < n; i++)
        if (slice_eq_ci(f[i].name, name)) {
            if (found)
                *found = true;
            return f[i].value;
        }
    if (found)
        *found = false;
    return SLICE_NULL;
}

bool http_is_conditional(struct slice n)
{
    return slice_eq_lit_ci(n, "if-none-match") || slice_eq_lit_ci(n, "if-modified-since") ||
           slice_eq_lit_ci(n, "if-match") || slice_eq_lit_ci(n, "if-unmodified-since") ||
           slice_eq_lit_ci(n, "range") || slice_eq_lit_ci(n, "if-range");
}
