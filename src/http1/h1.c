/* HTTP/1.x parser: one tight pass per call over the head, no state kept
 * between calls (like picohttpparser); the chunked decoder keeps a little. */
#include "http1/h1.h"

#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

enum {
    C_TCHAR = 1,    /* RFC 9110 5.6.2 */
    C_TARGET = 2,   /* VCHAR: request-target bytes (strict: no obs-text) */
    C_VALUE = 4,    /* field-value bytes: HTAB SP VCHAR obs-text */
    C_HEX = 8,      /* HEXDIG */
    C_REGNAME = 16, /* RFC 3986 unreserved, sub-delims, '%' */
    C_QDTEXT = 32,  /* RFC 9110 5.6.4 */
    C_DIGIT = 64,
    C_NAME = 128, /* C_TCHAR but '_' (underscores_in_headers) */
};

static const uint8_t cls[256] = {
    0,   0,   0,   0,   0,   0,   0,   0,   0,   36,  0,   0,   0,   0,   0,   0,   0,   0,   0,
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   36,  183, 6,   167, 183, 183,
    183, 183, 54,  54,  183, 183, 54,  183, 183, 38,  255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 38,  54,  38,  54,  38,  38,  38,  191, 191, 191, 191, 191, 191, 183, 183, 183, 183, 183,
    183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 38,  6,   38,  167,
    55,  167, 191, 191, 191, 191, 191, 191, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183, 183,
    183, 183, 183, 183, 183, 183, 183, 183, 183, 38,  167, 38,  183, 0,   36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,  36,
    36,  36,  36,  36,  36,  36,  36,  36,  36,
};

#define CLS(c, m) (cls[(unsigned char)(c)] & (m))

#define DEF_MAX_LINE     8192
#define DEF_MAX_HEAD     65536
#define DEF_MAX_FIELDS   100
#define MAX_LEADING_CRLF 4 /* RFC 9112 2.2: ignore "at least one" empty line */
#define MAX_CHUNK_LINE   4096

int h1_error_status(enum h1_error e)
{
    switch (e) {
    case H1E_URI_TOO_LONG:
        return 414;
    case H1E_HEAD_TOO_LARGE:
        return 431;
    case H1E_TE_NOT_CHUNKED:
    case H1E_TE_UNKNOWN:
        return 501;
    case H1E_VERSION:
        return 505;
    default:
        return 400;
    }
}

const char *h1_error_str(enum h1_error e)
{
    switch (e) {
    case H1E_NONE:
        return "no error";
    case H1E_BAD_REQUEST_LINE:
        return "malformed request line";
    case H1E_BAD_METHOD:
        return "invalid method";
    case H1E_BAD_TARGET:
        return "invalid request target";
    case H1E_URI_TOO_LONG:
        return "request line too long";
    case H1E_BAD_VERSION:
        return "malformed HTTP version";
    case H1E_VERSION:
        return "unsupported HTTP version";
    case H1E_BAD_FIELD:
        return "invalid header field";
    case H1E_OBS_FOLD:
        return "obsolete line folding";
    case H1E_HEAD_TOO_LARGE:
        return "header section too large";
    case H1E_BAD_CONTENT_LENGTH:
        return "invalid Content-Length";
    case H1E_CL_AND_TE:
        return "both Content-Length and Transfer-Encoding";
    case H1E_TE_NOT_CHUNKED:
        return "final transfer coding is not chunked";
    case H1E_TE_UNKNOWN:
        return "unknown transfer coding";
    case H1E_TE_HTTP10:
        return "Transfer-Encoding in an HTTP/1.0 request";
    case H1E_NO_HOST:
        return "missing Host";
    case H1E_DUP_HOST:
        return "duplicate Host";
    case H1E_BAD_HOST:
        return "invalid Host";
    case H1E_HOST_MISMATCH:
        return "request target authority differs from Host";
    case H1E_BAD_STATUS_LINE:
        return "malformed status line";
    case H1E_BAD_CHUNK:
        return "malformed chunked encoding";
    case H1E_TRAILER_TOO_LARGE:
        return "trailer section too large";
    }
    return "unknown error";
}

/* The two long runs of a head, target and field values, are skipped 16
 * bytes at a time: SSE2 is baseline on x86-64. Bytes are compared unsigned
 * by flipping their sign bit. */
static inline const char *skip_value(const char *p, const char *end)
{
#if defined(__SSE2__)
    const __m128i flip = _mm_set1_epi8((char)0x80);
    const __m128i sp = _mm_set1_epi8((char)(0x20 ^ 0x80));
    const __m128i del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i ctl = _mm_cmplt_epi8(_mm_xor_si128(v, flip), sp);
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(v, del)));
        if (!m) {
            p += 16;
            continue;
        }
        p += __builtin_ctz(m);
        if (*p != '\t')
            return p;
        p++;
    }
#endif
    while (p < end && CLS(*p, C_VALUE))
        p++;
    return p;
}

static inline const char *skip_target(const char *p, const char *end)
{
#if defined(__SSE2__)
    const __m128i flip = _mm_set1_epi8((char)0x80);
    const __m128i lo = _mm_set1_epi8((char)(0x21 ^ 0x80));
    const __m128i hi = _mm_set1_epi8((char)(0x7e ^ 0x80));
    while (end - p >= 16) {
        __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)p), flip);
        unsigned m =
            (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmplt_epi8(v, lo), _mm_cmpgt_epi8(v, hi)));
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < end && CLS(*p, C_TARGET))
        p++;
    return p;
}

/* ---- field lines (shared by requests, responses and trailers) ---- */

/* Parse field lines from *pp up to and including the empty line. Stores at
 * most `maxf` fields when `fields` is not NULL. On H1_INCOMPLETE, *pp is where
 * the bytes ran out (end). */
static enum h1_result parse_fields(const char **pp, const char *end, struct http_field *fields,
                                   size_t maxf, size_t max_line, size_t *nf, enum h1_error *err,
                                   bool *underscore)
{
    const char *p = *pp;
    const char *line = p;
    size_t n = 0;

    for (;;) {
        line = p;
        if (p >= end)
            goto more;
        if (*p == '\r') {
            if (p + 1 >= end)
                goto more;
            if (p[1] != '\n')
                goto bad;
            *pp = p + 2;
            *nf = n;
            return H1_DONE;
        }
        if (*p == ' ' || *p == '\t') {
            *err = H1E_OBS_FOLD;
            return H1_ERROR;
        }
        if (n == maxf) {
            *err = H1E_HEAD_TOO_LARGE;
            return H1_ERROR;
        }
        const char *name = p;
        while (p < end && CLS(*p, C_NAME))
            p++;
        if (p < end && *p == '_') { /* rare: noted, and the rest of the name read */
            *underscore = true;
            while (p < end && CLS(*p, C_TCHAR))
                p++;
        }
        if (p >= end)
            goto more;
        if (*p != ':' || p == name)
            goto bad;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *val = p;
        p = skip_value(p, end);
        if (p >= end)
            goto more;
        if (*p != '\r')
            goto bad;
        if (p + 1 >= end)
            goto more;
        if (p[1] != '\n')
            goto bad;
        if (max_line && (size_t)(p - line) > max_line) {
            /* one field line must fit in one large header buffer (nginx) */
            *err = H1E_HEAD_TOO_LARGE;
            return H1_ERROR;
        }
        const char *ve = p;
        while (ve > val && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (fields) {
            fields[n].name = slice_make(name, name_len);
            fields[n].value = slice_make(val, (size_t)(ve - val));
        }
        n++;
        p += 2;
    }
more:
    /* an unfinished line may still end in its CR: refuse it past max_line + CR */
    if (max_line && (size_t)(end - line) > max_line + 1) {
        *err = H1E_HEAD_TOO_LARGE;
        return H1_ERROR;
    }
    *pp = p;
    *nf = n;
    return H1_INCOMPLETE;
bad:
    /* a prefix ending past the limit already said 431: say it here too */
    *err = max_line && (size_t)(p - line) > max_line + 1 ? H1E_HEAD_TOO_LARGE : H1E_BAD_FIELD;
    return H1_ERROR;
}

/* ---- semantics of the framing fields (RFC 9112 6) ---- */

/* Compare a tchar name with a lowercase literal of the same length: for
 * tchars, c | 0x20 equals a lowercase letter or '-' only for that letter. */
static bool name_is(struct slice n, const char *lit, size_t lit_len)
{
    if (n.len != lit_len)
        return false;
    for (size_t i = 0; i < lit_len; i++)
        if ((n.p[i] | 0x20) != lit[i])
            return false;
    return true;
}
#define NAME_IS(n, lit) name_is((n), (lit), sizeof(lit) - 1)

struct framing {
    int64_t content_length;
    bool has_te;
    bool chunked_last;
    bool conn_close;
    bool conn_keep_alive;
    bool conn_upgrade;
    bool has_upgrade;
    bool upgrade_h2c;
    bool expect_continue;
    size_t nhost;
    struct slice host;
};

/* Exactly one Content-Length of 1*DIGIT. RFC 9110 8.6 lets a recipient
 * accept repeated equal values; like HAProxy's strict mode we refuse any
 * repetition (two fields or a list): a peer that sends it is already
 * suspect, and one meaning per message leaves nothing to smuggle. */
static bool content_length_add(struct framing *f, struct slice v)
{
    const char *p = v.p, *end = v.p + v.len;
    if (f->content_length >= 0 || p >= end)
        return false;
    int64_t n = 0;
    while (p < end) {
        if (!CLS(*p, C_DIGIT))
            return false;
        int d = *p++ - '0';
        if (n > (INT64_MAX - d) / 10)
            return false;
        n = n * 10 + d;
    }
    f->content_length = n;
    return true;
}

static bool te_known(struct slice c)
{
    switch (c.len) {
    case 4:
        return slice_eq_lit_ci(c, "gzip");
    case 6:
        return slice_eq_lit_ci(c, "x-gzip");
    case 7:
        return slice_eq_lit_ci(c, "deflate");
    case 8:
        return slice_eq_lit_ci(c, "compress") || slice_eq_lit_ci(c, "identity");
    default:
        return false;
    }
}

/* Codings of all Transfer-Encoding fields, in order. "chunked" must come
 * once and last; anything after it is a smuggling attempt. */
static bool transfer_encoding_add(struct framing *f, struct slice v, enum h1_error *err)
{
    struct slice e;
    bool any = false;

    while (slice_next_token(&v, &e)) {
        if (e.len == 0)
            continue;
        any = true;
        if (slice_eq_lit_ci(e, "chunked")) {
            if (f->chunked_last) {
                *err = H1E_BAD_FIELD; /* "chunked, chunked" */
                return false;
            }
            f->chunked_last = true;
        } else if (te_known(e)) {
            f->chunked_last = false;
        } else {
            *err = H1E_TE_UNKNOWN;
            return false;
        }
        f->has_te = true;
    }
    if (!any) {
        *err = H1E_TE_UNKNOWN;
        return false;
    }
    return true;
}

static void connection_add(struct framing *f, struct slice v)
{
    struct slice e;
    while (slice_next_token(&v, &e)) {
        if (NAME_IS(e, "close"))
            f->conn_close = true;
        else if (NAME_IS(e, "keep-alive"))
            f->conn_keep_alive = true;
        else if (NAME_IS(e, "upgrade"))
            f->conn_upgrade = true;
    }
}

/* One pass over the stored fields; the names that matter have distinct
 * lengths, so most fields cost one switch. */
static bool framing_scan(struct framing *f, const struct http_field *fields, size_t n, bool request,
                         enum h1_error *err)
{
    memset(f, 0, sizeof(*f));
    f->content_length = -1;
    for (size_t i = 0; i < n; i++) {
        struct slice nm = fields[i].name, v = fields[i].value;
        switch (nm.len) {
        case 4:
            if (request && NAME_IS(nm, "host")) {
                if (++f->nhost > 1) {
                    *err = H1E_DUP_HOST;
                    return false;
                }
                f->host = v;
            }
            break;
        case 6:
            if (request && NAME_IS(nm, "expect") && slice_eq_lit_ci(v, "100-continue"))
                f->expect_continue = true;
            break;
        case 7:
            if (NAME_IS(nm, "upgrade")) {
                f->has_upgrade = true;
                if (slice_list_has_token(v, "h2c"))
                    f->upgrade_h2c = true;
            }
            break;
        case 10:
            if (NAME_IS(nm, "connection"))
                connection_add(f, v);
            break;
        case 14:
            if (NAME_IS(nm, "content-length") && !content_length_add(f, v)) {
                *err = H1E_BAD_CONTENT_LENGTH;
                return false;
            }
            break;
        case 17:
            if (NAME_IS(nm, "transfer-encoding") && !transfer_encoding_add(f, v, err))
                return false;
            break;
        }
    }
    if (f->has_te && f->content_length >= 0) {
        *err = H1E_CL_AND_TE;
        return false;
    }
    if (f->has_te && !f->chunked_last) {
        *err = H1E_TE_NOT_CHUNKED;
        return false;
    }
    return true;
}

/* authority = host [ ":" port ], host = "[" IPv6 "]" / IPv4 / reg-name
 * (RFC 3986 3.2; no userinfo). Sets *host to the host part. */
static bool parse_authority(struct slice a, bool need_port, struct slice *host)
{
    const char *p = a.p, *end = a.p + a.len;

    if (p == end)
        return false;
    if (*p == '[') {
        p++;
        while (p < end && (CLS(*p, C_HEX) || *p == ':' || *p == '.'))
            p++;
        if (p >= end || *p != ']' || p == a.p + 1)
            return false;
        p++;
    } else {
        while (p < end && CLS(*p, C_REGNAME)) {
            if (*p == '%' && (end - p < 3 || !CLS(p[1], C_HEX) || !CLS(p[2], C_HEX)))
                return false;
            p++;
        }
        if (p == a.p)
            return false;
    }
    *host = slice_make(a.p, (size_t)(p - a.p));
    if (p == end)
        return !need_port;
    if (*p++ != ':')
        return false;
    unsigned port = 0;
    const char *ps = p;
    while (p < end && CLS(*p, C_DIGIT) && p - ps < 5)
        port = port * 10 + (unsigned)(*p++ - '0');
    return p == end && p > ps && port <= 65535;
}

/* Version "HTTP/1.0" or "HTTP/1.1" (case-sensitive, RFC 9112 2.3), checked
 * on as many bytes as there are. Returns 8 when whole, 0 when short, -1 with
 * *err and *bad (the offending byte) otherwise. */
static int parse_version(const char *p, const char *end, int *minor, const char **bad,
                         enum h1_error *err)
{
    size_t avail = (size_t)(end - p);
    if (avail > 8)
        avail = 8;
    for (size_t i = 0; i < avail; i++) {
        char c = p[i];
        bool ok = i < 5 ? c == "HTTP/"[i] : i == 6 ? c == '.' : (c >= '0' && c <= '9');
        if (!ok) {
            *bad = p + i;
            *err = H1E_BAD_VERSION;
            return -1;
        }
    }
    if (avail < 8)
        return 0;
    if (p[5] != '1' || p[7] > '1') {
        *bad = p + 7;
        *err = H1E_VERSION;
        return -1;
    }
    *minor = p[7] - '0';
    return 8;
}

/* ---- requests ---- */

static const char slash[] = "/";

static bool classify_target(struct h1_request *r)
{
    struct slice t = r->target;
    bool connect = r->method_id == HTTP_M_CONNECT;

    r->authority = slice_make(t.p, 0);
    if (t.p[0] == '/') {
        r->target_form = H1_TARGET_ORIGIN;
        r->path = t;
        return !connect;
    }
    if (t.len == 1 && t.p[0] == '*') {
        r->target_form = H1_TARGET_ASTERISK;
        r->path = t;
        return r->method_id == HTTP_M_OPTIONS;
    }
    if (connect) {
        struct slice h;
        r->target_form = H1_TARGET_AUTHORITY;
        r->authority = t;
        r->path = slice_make(t.p + t.len, 0);
        return parse_authority(t, true, &h);
    }
    size_t skip = 0;
    if (t.len >= 7 && slice_eq_lit_ci(slice_make(t.p, 7), "http://"))
        skip = 7;
    else if (t.len >= 8 && slice_eq_lit_ci(slice_make(t.p, 8), "https://"))
        skip = 8;
    else
        return false;
    const char *a = t.p + skip, *end = t.p + t.len, *q = a;
    while (q < end && *q != '/' && *q != '?' && *q != '#')
        q++;
    r->target_form = H1_TARGET_ABSOLUTE;
    r->authority = slice_make(a, (size_t)(q - a));
    if (q == end)
        r->path = slice_make(slash, 1);
    else if (*q == '/')
        r->path = slice_make(q, (size_t)(end - q));
    else
        return false; /* "http://h?q": a path must come first; we do not rebuild one */
    struct slice h;
    return parse_authority(r->authority, false, &h);
}

static struct slice host_part(struct slice authority)
{
    struct slice h = SLICE_NULL;
    if (!parse_authority(authority, false, &h))
        return authority;
    return h;
}

static enum h1_result request_semantics(struct h1_request *r, enum h1_error *err)
{
    struct framing f;

    if (!classify_target(r)) {
        *err = H1E_BAD_TARGET;
        return H1_ERROR;
    }
    if (!framing_scan(&f, r->fields, r->nfields, true, err))
        return H1_ERROR;
    if (f.has_te && r->minor_version == 0) {
        *err = H1E_TE_HTTP10;
        return H1_ERROR;
    }
    if (f.nhost == 0 && r->minor_version == 1) {
        *err = H1E_NO_HOST;
        return H1_ERROR;
    }
    struct slice hh;
    /* RFC 9112 3.2: an empty Host is what a client sends for a target
     * without authority, so it is valid. */
    if (f.nhost && f.host.len && !parse_authority(f.host, false, &hh)) {
        *err = H1E_BAD_HOST;
        return H1_ERROR;
    }
    r->host = f.host;
    if (r->authority.len) {
        if (f.nhost && !slice_eq_ci(host_part(r->authority), host_part(f.host))) {
            *err = H1E_HOST_MISMATCH;
            return H1_ERROR;
        }
        r->host = r->authority;
    }
    r->content_length = f.content_length;
    r->chunked = f.has_te;
    r->keep_alive = r->minor_version ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
    r->expect_continue = r->minor_version && f.expect_continue;
    r->upgrade = r->minor_version && f.conn_upgrade && f.has_upgrade;
    r->upgrade_h2c = r->upgrade && f.upgrade_h2c;
    return H1_DONE;
}

static void limits_get(const struct h1_limits *lim, size_t *line, size_t *head, size_t *nf)
{
    *line = lim && lim->max_request_line ? lim->max_request_line : DEF_MAX_LINE;
    *head = lim && lim->max_head ? lim->max_head : DEF_MAX_HEAD;
    *nf = lim && lim->max_fields ? lim->max_fields : DEF_MAX_FIELDS;
}

#define FAIL(e)                                                                                    \
    do {                                                                                           \
        *err = (e);                                                                                \
        return H1_ERROR;                                                                           \
    } while (0)

/* An error at `p` in the request line: when the line is already longer than
 * the limit there, it is 414 whatever else is wrong, so that the verdict does
 * not depend on how many bytes have arrived (a prefix stops at the limit). */
static enum h1_result line_error(const char *ls, const char *p, size_t max_line, enum h1_error e,
                                 enum h1_error *err)
{
    size_t i = (size_t)(p - ls), seen;
    if (i && p[-1] == '\r')
        seen = i - 1; /* p is where the LF should be */
    else
        seen = *p == '\r' ? i : i + 1;
    *err = seen > max_line ? H1E_URI_TOO_LONG : e;
    return H1_ERROR;
}
#define LFAIL(e) return line_error(ls, p, max_line, (e), err)

/* Skip the empty lines a client may send before a request line. */
static enum h1_result skip_empty_lines(const char **pp, const char *end, enum h1_error *err)
{
    const char *p = *pp;
    for (int i = 0; p < end && (*p == '\r' || *p == '\n'); i++) {
        if (*p == '\n' || i == MAX_LEADING_CRLF)
            FAIL(H1E_BAD_REQUEST_LINE);
        if (p + 1 >= end)
            return H1_INCOMPLETE;
        if (p[1] != '\n')
            FAIL(H1E_BAD_REQUEST_LINE);
        p += 2;
    }
    *pp = p;
    return H1_DONE;
}

enum h1_result h1_parse_request(const char *buf, size_t len, const struct h1_limits *lim,
                                struct http_field *fields, size_t max_fields,
                                struct h1_request *out, enum h1_error *err)
{
    size_t max_line, max_head, maxf;
    const char *p = buf, *hend, *lend, *ls;
    enum h1_result rc;
    int minor = 0, v;

    *err = H1E_NONE;
    limits_get(lim, &max_line, &max_head, &maxf);
    if (max_fields < maxf)
        maxf = max_fields;
    hend = buf + (len < max_head ? len : max_head);

    rc = skip_empty_lines(&p, hend, err);
    if (rc == H1_ERROR)
        return rc;
    if (rc == H1_INCOMPLETE) {
        lend = hend;
        ls = p;
        goto line_short;
    }
    ls = p;
    lend = (size_t)(hend - ls) > max_line + 2 ? ls + max_line + 2 : hend;

    /* method SP target SP version CRLF, single SPs (RFC 9112 3) */
    while (p < lend && CLS(*p, C_TCHAR))
        p++;
    if (p >= lend)
        goto line_short;
    if (*p != ' ')
        LFAIL(p == ls || *p == '\r' || *p == '\n' ? H1E_BAD_REQUEST_LINE : H1E_BAD_METHOD);
    if (p == ls)
        LFAIL(H1E_BAD_REQUEST_LINE);
    out->method = slice_make(ls, (size_t)(p - ls));
    const char *t = ++p;
    p = skip_target(p, lend);
    if (p >= lend)
        goto line_short;
    if (*p != ' ')
        LFAIL(*p == '\r' || *p == '\n' ? H1E_BAD_REQUEST_LINE : H1E_BAD_TARGET);
    if (p == t)
        LFAIL(H1E_BAD_REQUEST_LINE);
    out->target = slice_make(t, (size_t)(p - t));
    p++;
    if (lend - p >= 10 && memcmp(p, "HTTP/1.1\r\n", 10) == 0) {
        minor = 1;
        p += 10;
    } else {
        if (p < lend && *p == ' ')
            LFAIL(H1E_BAD_REQUEST_LINE);
        const char *bad;
        if ((v = parse_version(p, lend, &minor, &bad, err)) < 0) {
            p = bad;
            LFAIL(*err);
        }
        if (v == 0)
            goto line_short;
        p += 8;
        if (p >= lend)
            goto line_short;
        if (*p != '\r')
            LFAIL(*p >= '0' && *p <= '9' ? H1E_BAD_VERSION : H1E_BAD_REQUEST_LINE);
        if (p + 1 >= lend)
            goto line_short;
        if (p[1] != '\n')
            LFAIL(H1E_BAD_REQUEST_LINE);
        p += 2;
    }
    out->minor_version = minor;
    out->method_id = http_method_id(out->method);

    out->underscore = false;
    rc = parse_fields(&p, hend, fields, maxf, max_line, &out->nfields, err, &out->underscore);
    if (rc == H1_ERROR)
        return rc;
    if (rc == H1_INCOMPLETE) {
        if ((size_t)(hend - buf) >= max_head)
            FAIL(H1E_HEAD_TOO_LARGE);
        return H1_INCOMPLETE;
    }
    out->fields = fields;
    out->head_len = (size_t)(p - buf);
    return request_semantics(out, err);

line_short:
    /* Out of bytes inside the request line: every byte before lend is part
     * of it but a final CR (its end). */
    {
        size_t seen = (size_t)(lend - ls);
        if (seen && lend[-1] == '\r')
            seen--;
        if (seen > max_line)
            FAIL(H1E_URI_TOO_LONG);
        if ((size_t)(lend - buf) >= max_head)
            FAIL(H1E_HEAD_TOO_LARGE);
        return H1_INCOMPLETE;
    }
}

/* ---- responses ---- */

enum h1_result h1_parse_response(const char *buf, size_t len, const struct h1_limits *lim,
                                 struct http_field *fields, size_t max_fields,
                                 struct h1_response *out, enum h1_error *err)
{
    size_t max_line, max_head, maxf;
    const char *p = buf, *hend;
    enum h1_result rc;
    int minor = 0, v;

    *err = H1E_NONE;
    limits_get(lim, &max_line, &max_head, &maxf);
    if (max_fields < maxf)
        maxf = max_fields;
    hend = buf + (len < max_head ? len : max_head);

    /* HTTP-version SP 3DIGIT SP [reason] CRLF; "HTTP/1.1 200\r\n" tolerated */
    const char *bad;
    if ((v = parse_version(p, hend, &minor, &bad, err)) < 0) {
        *err = *err == H1E_BAD_VERSION ? H1E_BAD_STATUS_LINE : *err;
        return H1_ERROR;
    }
    if (v == 0)
        goto short_head;
    p += 8;
    for (int i = 0; i < 4; i++) {
        if (p + i >= hend)
            goto short_head;
        char c = p[i];
        if (i == 0 ? c != ' ' : (c < '0' || c > '9'))
            FAIL(H1E_BAD_STATUS_LINE);
    }
    int status = (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    if (status < 100 || status > 599)
        FAIL(H1E_BAD_STATUS_LINE);
    p += 4;
    if (p >= hend)
        goto short_head;
    const char *reason = p;
    if (*p == ' ') {
        reason = ++p;
        while (p < hend && (CLS(*p, C_VALUE)))
            p++;
        if (p >= hend)
            goto short_head;
    }
    if (*p != '\r')
        FAIL(H1E_BAD_STATUS_LINE);
    if (p + 1 >= hend)
        goto short_head;
    if (p[1] != '\n')
        FAIL(H1E_BAD_STATUS_LINE);
    out->reason = slice_make(reason, (size_t)(p - reason));
    out->status = status;
    out->minor_version = minor;
    p += 2;

    bool under = false; /* (a response's names are not filtered) */
    rc = parse_fields(&p, hend, fields, maxf, 0, &out->nfields, err, &under);
    if (rc == H1_ERROR)
        return rc;
    if (rc == H1_INCOMPLETE)
        goto short_head;
    out->fields = fields;
    out->head_len = (size_t)(p - buf);

    struct framing f;
    if (!framing_scan(&f, fields, out->nfields, false, err))
        return H1_ERROR;
    out->content_length = f.content_length;
    out->chunked = f.has_te;
    out->keep_alive = minor ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
    return H1_DONE;

short_head:
    if ((size_t)(hend - buf) >= max_head)
        FAIL(H1E_HEAD_TOO_LARGE);
    return H1_INCOMPLETE;
}

enum h1_body_kind h1_response_body_kind(const struct h1_response *resp, enum http_method req_method)
{
    if (req_method == HTTP_M_HEAD || resp->status < 200 || resp->status == 204 ||
        resp->status == 304)
        return H1_BODY_NONE;
    if (req_method == HTTP_M_CONNECT && resp->status < 300)
        return H1_BODY_NONE; /* RFC 9112 6.3: the connection becomes a tunnel */
    if (resp->chunked)
        return H1_BODY_CHUNKED;
    if (resp->content_length == 0)
        return H1_BODY_NONE;
    if (resp->content_length > 0)
        return H1_BODY_LENGTH;
    return H1_BODY_UNTIL_CLOSE;
}

/* ---- chunked bodies (RFC 9112 7.1) ---- */

enum { CH_SIZE = 0, CH_DATA, CH_DATA_CRLF, CH_TRAILER, CH_DONE, CH_ERROR };

void h1_chunked_init(struct h1_chunked *d, size_t max_trailer)
{
    memset(d, 0, sizeof(*d));
    d->max_trailer = max_trailer;
}

bool h1_chunked_in_trailer(const struct h1_chunked *d)
{
    return d->state == CH_TRAILER || d->state == CH_DONE;
}

static unsigned hex_digit(char c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

static const char *skip_bws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* chunk-size [ chunk-ext ] CRLF, taken whole (at most MAX_CHUNK_LINE bytes).
 * chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
 * Returns the line length, 0 when short, -1 when malformed. */
static long chunk_size_line(const char *s, const char *end, uint64_t *size)
{
    const char *lim = (size_t)(end - s) > MAX_CHUNK_LINE ? s + MAX_CHUNK_LINE : end;
    const char *p = s;
    uint64_t v = 0;

    while (p < lim && CLS(*p, C_HEX)) {
        if (p - s == 16)
            return -1;
        v = v << 4 | hex_digit(*p++);
    }
    if (p >= lim)
        goto more;
    if (p == s || v > (uint64_t)INT64_MAX)
        return -1;
    for (;;) {
        const char *q = p;
        p = skip_bws(p, lim);
        if (p >= lim)
            goto more;
        if (*p == '\r') {
            if (p != q)
                return -1;
            break;
        }
        if (*p++ != ';')
            return -1;
        p = skip_bws(p, lim);
        q = p;
        while (p < lim && CLS(*p, C_TCHAR))
            p++;
        if (p >= lim)
            goto more;
        if (p == q)
            return -1;
        q = p;
        p = skip_bws(p, lim);
        if (p >= lim)
            goto more;
        if (*p != '=') {
            p = q;
            continue;
        }
        p = skip_bws(p + 1, lim);
        if (p >= lim)
            goto more;
        if (*p == '"') {
            for (p++;; p++) {
                if (p >= lim)
                    goto more;
                if (*p == '"')
                    break;
                if (*p == '\\') {
                    if (++p >= lim)
                        goto more;
                    if (!CLS(*p, C_VALUE))
                        return -1;
                } else if (!CLS(*p, C_QDTEXT)) {
                    return -1;
                }
            }
            p++;
        } else {
            q = p;
            while (p < lim && CLS(*p, C_TCHAR))
                p++;
            if (p == q)
                return -1;
        }
    }
    if (p + 1 >= lim)
        goto more;
    if (p[1] != '\n')
        return -1;
    *size = v;
    return (long)(p + 2 - s);
more:
    return (size_t)(lim - s) >= MAX_CHUNK_LINE ? -1 : 0;
}

enum h1_result h1_chunked_decode(struct h1_chunked *d, const char *buf, size_t len,
                                 size_t *consumed, struct slice *data, struct slice *trailers,
                                 enum h1_error *err)
{
    const char *p = buf, *end = buf + len;
    enum h1_error e = H1E_BAD_CHUNK;

    *consumed = 0;
    *data = slice_make(buf, 0);
    *err = H1E_NONE;
    for (;;) {
        switch (d->state) {
        case CH_DATA_CRLF:
            /* exactly CRLF after the data: anything else means the data was
             * longer than its size */
            if (end - p < 2) {
                if (p < end && *p != '\r')
                    goto fail;
                goto more;
            }
            if (p[0] != '\r' || p[1] != '\n')
                goto fail;
            p += 2;
            d->state = CH_SIZE;
            /* fall through */
        case CH_SIZE: {
            uint64_t size = 0;
            long n = chunk_size_line(p, end, &size);
            if (n < 0)
                goto fail;
            if (n == 0)
                goto more;
            p += n;
            if (size == 0) {
                d->state = CH_TRAILER;
                continue;
            }
            d->remaining = size;
            d->state = CH_DATA;
        }
            /* fall through */
        case CH_DATA: {
            size_t n = (size_t)(end - p);
            if (n > d->remaining)
                n = (size_t)d->remaining;
            *data = slice_make(p, n);
            p += n;
            d->remaining -= n;
            if (d->remaining == 0)
                d->state = CH_DATA_CRLF;
            goto more;
        }
        case CH_TRAILER: {
            size_t avail = (size_t)(end - p), cap = d->max_trailer + 2, nf;
            const char *q = p;
            if (cap < d->max_trailer)
                cap = SIZE_MAX;
            bool under = false;
            enum h1_result rc =
                parse_fields(&q, avail > cap ? p + cap : end, NULL, SIZE_MAX, 0, &nf, &e, &under);
            if (rc == H1_ERROR)
                goto fail;
            if (rc == H1_INCOMPLETE) {
                d->trailer_len = avail;
                if (avail >= cap) {
                    e = H1E_TRAILER_TOO_LARGE;
                    goto fail;
                }
                goto more;
            }
            d->trailer_len = (size_t)(q - p) - 2;
            if (trailers)
                *trailers = slice_make(p, d->trailer_len);
            p = q;
            d->state = CH_DONE;
            *consumed = (size_t)(p - buf);
            return H1_DONE;
        }
        case CH_DONE:
            return H1_DONE;
        default:
            *err = (enum h1_error)d->remaining;
            return H1_ERROR;
        }
    }
more:
    *consumed = (size_t)(p - buf);
    return H1_INCOMPLETE;
fail:
    d->state = CH_ERROR;
    d->remaining = (uint64_t)e; /* sticky: later calls report the same error */
    *err = e;
    *data = slice_make(buf, 0);
    return H1_ERROR;
}
