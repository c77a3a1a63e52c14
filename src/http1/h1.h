/* HTTP/1.x message parsing (RFC 9112). Pure: no I/O, no allocation; the
 * parsed slices point into the caller's buffer, which must outlive them. */
#ifndef PORTICO_HTTP1_H1_H
#define PORTICO_HTTP1_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/str.h"
#include "http/http.h"

enum h1_result {
    H1_DONE = 0,       /* a whole head (or the end of a chunked body) */
    H1_INCOMPLETE = 1, /* need more bytes */
    H1_ERROR = -1,     /* malformed: see the h1_error */
};

enum h1_error {
    H1E_NONE = 0,
    H1E_BAD_REQUEST_LINE,   /* 400 */
    H1E_BAD_METHOD,         /* 400 */
    H1E_BAD_TARGET,         /* 400: not origin/absolute/authority/asterisk as allowed */
    H1E_URI_TOO_LONG,       /* 414: request line over the limit */
    H1E_BAD_VERSION,        /* 400: not HTTP/1.0 or HTTP/1.1 syntax */
    H1E_VERSION,            /* 505: HTTP/2.0 etc. on an HTTP/1 connection */
    H1E_BAD_FIELD,          /* 400: bad name/value bytes, space before colon, bare CR, NUL */
    H1E_OBS_FOLD,           /* 400: line folding */
    H1E_HEAD_TOO_LARGE,     /* 431: head over the limit or too many fields */
    H1E_BAD_CONTENT_LENGTH, /* 400: not 1*DIGIT, overflow, or differing repeats */
    H1E_CL_AND_TE,          /* 400: both Content-Length and Transfer-Encoding */
    H1E_TE_NOT_CHUNKED,     /* 501 (request) / 502 (response): final coding not chunked */
    H1E_TE_UNKNOWN,         /* 501: a coding we do not know */
    H1E_TE_HTTP10,          /* 400: Transfer-Encoding in an HTTP/1.0 request */
    H1E_NO_HOST,            /* 400: HTTP/1.1 request without Host */
    H1E_DUP_HOST,           /* 400: more than one Host */
    H1E_BAD_HOST,           /* 400: Host value not a valid authority */
    H1E_HOST_MISMATCH,      /* 400: absolute-form authority differs from Host */
    H1E_BAD_STATUS_LINE,    /* response: malformed status line */
    H1E_BAD_CHUNK,          /* chunked body: bad size line, overflow, missing CRLF */
    H1E_TRAILER_TOO_LARGE,  /* chunked body: trailer section over its limit */
};

/* The status to answer a client with for a request-side error. */
int h1_error_status(enum h1_error e);
/* A short static description, for logs. */
const char *h1_error_str(enum h1_error e);

enum h1_target_form {
    H1_TARGET_ORIGIN,    /* /path?query */
    H1_TARGET_ABSOLUTE,  /* http://host/path?query */
    H1_TARGET_AUTHORITY, /* host:port, CONNECT only */
    H1_TARGET_ASTERISK,  /* *, OPTIONS only */
};

struct h1_limits {
    size_t max_request_line; /* bytes, excluding CRLF: over it is 414 */
    size_t max_head;         /* bytes of the whole head incl. final CRLF: over it is 431 */
    size_t max_fields;       /* number of fields: over it is 431 */
};

struct h1_request {
    struct slice method;
    enum http_method method_id;
    struct slice target; /* as sent */
    enum h1_target_form target_form;
    struct slice path; /* origin-form part: path and query ("/" for absolute-form without path) */
    struct slice authority; /* absolute-form or authority-form authority, else empty */
    int minor_version;      /* 0 or 1 */
    struct http_field *fields;
    size_t nfields;
    size_t head_len; /* bytes up to and including the empty line */

    /* Derived from the fields; the parser validates them (RFC 9112 6). */
    struct slice host;      /* Host value (absolute-form authority wins if both) */
    int64_t content_length; /* -1 if none */
    bool chunked;           /* Transfer-Encoding: chunked (final coding) */
    bool keep_alive;        /* persistent after this exchange (version + Connection) */
    bool expect_continue;   /* Expect: 100-continue */
    bool upgrade;           /* Connection: upgrade with an Upgrade field */
    bool upgrade_h2c;       /* the Upgrade field names h2c */
    bool underscore;        /* some field name holds '_' (underscores_in_headers) */
};

/* Parse one request head from buf[0..len). On H1_DONE fills `out` (fields in
 * `fields`, at most `max_fields`, and out->head_len). H1_INCOMPLETE when no
 * error was found but the head has not ended; the caller retries with more
 * bytes from the same start (a complete head is found in linear time). On
 * H1_ERROR sets *err. Limits are checked on incomplete input too, so a
 * too-long line is refused before its end arrives. */
enum h1_result h1_parse_request(const char *buf, size_t len, const struct h1_limits *lim,
                                struct http_field *fields, size_t max_fields,
                                struct h1_request *out, enum h1_error *err);

struct h1_response {
    int status;
    int minor_version;
    struct slice reason;
    struct http_field *fields;
    size_t nfields;
    size_t head_len;

    int64_t content_length; /* -1 if none */
    bool chunked;
    bool keep_alive; /* the server lets the connection be reused */
};

/* Parse one response head; same contract as h1_parse_request. Strict like
 * it: CL with TE, bad or differing CL, non-chunked final coding, obs-fold,
 * bad bytes are all H1_ERROR (the proxy answers 502 and drops the connection). */
enum h1_result h1_parse_response(const char *buf, size_t len, const struct h1_limits *lim,
                                 struct http_field *fields, size_t max_fields,
                                 struct h1_response *out, enum h1_error *err);

enum h1_body_kind {
    H1_BODY_NONE,   /* no body (HEAD, 1xx, 204, 304, or CL 0) */
    H1_BODY_LENGTH, /* content_length bytes */
    H1_BODY_CHUNKED,
    H1_BODY_UNTIL_CLOSE, /* response only: read until the server closes */
};

/* RFC 9112 6.3: how the body of `resp` is delimited, given the request method. */
enum h1_body_kind h1_response_body_kind(const struct h1_response *resp,
                                        enum http_method req_method);

/* Incremental chunked-body decoder (RFC 9112 7.1). */
struct h1_chunked {
    int state;
    uint64_t remaining; /* bytes left in the current chunk's data */
    size_t trailer_len; /* trailer bytes seen so far */
    size_t max_trailer; /* limit for the trailer section */
    size_t size_digits;
};

void h1_chunked_init(struct h1_chunked *d, size_t max_trailer);

/* Consume framing from buf[0..len) up to and including at most one run of
 * chunk data. Sets *consumed (bytes of buf used) and *data (a slice inside
 * buf[0..*consumed), possibly empty). Returns H1_INCOMPLETE while the body
 * goes on (call again with buf + *consumed and any bytes not consumed kept
 * in front of new ones), H1_DONE once the last chunk and the trailer section
 * have been consumed (bytes after them are not), or H1_ERROR with *err.
 * The trailer section is consumed only whole: until its final CRLF is in buf
 * the decoder consumes nothing of it (H1_INCOMPLETE, *consumed covering only
 * what came before), and over `max_trailer` bytes it is an error. On H1_DONE,
 * if `trailers` is not NULL, *trailers is the trailer field lines with their
 * CRLFs (without the final empty line), validated like header fields. */
enum h1_result h1_chunked_decode(struct h1_chunked *d, const char *buf, size_t len,
                                 size_t *consumed, struct slice *data, struct slice *trailers,
                                 enum h1_error *err);

/* Has the decoder seen the last-chunk line (only trailers remain)? */
bool h1_chunked_in_trailer(const struct h1_chunked *d);

#endif
