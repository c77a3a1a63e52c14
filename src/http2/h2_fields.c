/* Field rules of RFC 9113 section 8.2 that the session applies on top of
 * nghttp2's own checks: pure functions, unit-tested. */
#include <string.h>

#include "http2/h2.h"

bool h2_field_is_connection_specific(struct slice n)
{
    /* RFC 9113 8.2.2: Connection and the fields it usually names ("te" is
     * allowed in requests only as "trailers"). "Trailer" is not one of them:
     * it announces trailers, which HTTP/2 has too. */
    return slice_eq_lit_ci(n, "connection") || slice_eq_lit_ci(n, "keep-alive") ||
           slice_eq_lit_ci(n, "proxy-connection") || slice_eq_lit_ci(n, "transfer-encoding") ||
           slice_eq_lit_ci(n, "upgrade") || slice_eq_lit_ci(n, "te");
}

static bool valid_name(struct slice n)
{
    if (!n.len)
        return false;
    for (size_t i = 0; i < n.len; i++)
        if (!http_tchar[(unsigned char)n.p[i]])
            return false;
    return true;
}

size_t h2_parse_trailers(struct slice text, char *lower, struct http_field *out, size_t max)
{
    size_t n = 0, off = 0;
    while (off < text.len && n < max) {
        const char *line = text.p + off;
        const char *nl = memchr(line, '\n', text.len - off);
        size_t len = nl ? (size_t)(nl - line) : text.len - off;
        off += len + (nl ? 1 : 0);
        if (len && line[len - 1] == '\r')
            len--;
        const char *colon = memchr(line, ':', len);
        if (!colon)
            continue;
        struct slice name = slice_make(line, (size_t)(colon - line));
        struct slice value = slice_trim_ows(slice_make(colon + 1, len - name.len - 1));
        if (!valid_name(name) || h2_field_is_connection_specific(name) ||
            slice_eq_lit_ci(name, "content-length"))
            continue;
        char *l = lower + (line - text.p);
        for (size_t i = 0; i < name.len; i++)
            l[i] = ascii_lower(name.p[i]);
        out[n++] = (struct http_field){slice_make(l, name.len), value};
    }
    return n;
}
