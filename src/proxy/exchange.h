/* One request and its response, protocol-neutral: what the client session
 * parsed, where the router sent it, what the upstream answered, timings,
 * and the arena that dies with it. The client side (HTTP/1 today, HTTP/2
 * later) fills the request and implements `struct client_ops`; the proxy
 * corridor (proxy.h) does the rest. */
#ifndef PORTICO_PROXY_EXCHANGE_H
#define PORTICO_PROXY_EXCHANGE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/loop.h"
#include "http/http.h"
#include "net/net.h"
#include "proxy/conf.h"
#include "router/router.h"

struct exchange;
struct worker;
struct limit_hold;

/* Body data handed from one side to the other: a slice of a segment. */
struct body_piece {
    struct buf *seg; /* referenced by whoever keeps the piece */
    const char *p;
    size_t len;
};

enum body_status {
    BODY_DATA = 1,   /* *piece filled */
    BODY_AGAIN = 0,  /* nothing now: the side calls proxy_request_body_ready() later */
    BODY_END = 2,    /* body complete */
    BODY_ERROR = -1, /* the client broke framing or timed out: ex->ending says how */
};

/* The response head as the client side receives it. */
struct resp_head {
    int status;
    struct http_field *fields; /* already filtered: no hop-by-hop, framing excluded */
    size_t nfields;
    int64_t content_length; /* -1 unknown (stream) */
    bool no_body;           /* HEAD, 204, 304, 1xx */
};

/* What the client session does for the corridor. */
struct client_ops {
    /* Queue the response head. 0 or -1 (client gone). */
    int (*send_head)(struct exchange *ex, const struct resp_head *h);
    /* Queue an interim (1xx) response. */
    int (*send_interim)(struct exchange *ex, int status, struct http_field *f, size_t n);
    /* Queue body bytes; the piece's segment gets a reference. */
    int (*send_body)(struct exchange *ex, const struct body_piece *piece);
    /* Optional: queue `len` bytes of file `fd` from `off` to go out with
     * sendfile(2); `token` (referenced) keeps the fd open. 0 queued, -1 the
     * client is gone, 1 not possible on this connection (TLS, HTTP/2, a
     * chunked response): the caller sends the bytes as pieces instead. */
    int (*send_file)(struct exchange *ex, struct buf *token, int fd, uint64_t off, size_t len);
    /* The body is complete (trailers: field lines with CRLFs, may be empty). */
    int (*send_end)(struct exchange *ex, struct slice trailers);
    /* Bytes queued toward the client and not yet written: backpressure. */
    size_t (*pending)(struct exchange *ex);
    /* Pull request body data (already de-chunked). */
    enum body_status (*body_read)(struct exchange *ex, struct body_piece *piece);
    /* Say 100 Continue if the client waits for it (once). */
    void (*continue_100)(struct exchange *ex);
    /* The corridor is finished with the exchange: the response is complete
     * (or `broken`: it failed after the head went out, so the client's
     * connection must be cut). The session logs, frees, and goes on. */
    void (*done)(struct exchange *ex, bool broken);
};

enum ending_code {
    END_OK = 0,
    END_CLIENT_CLOSED,     /* client went away (499) */
    END_CLIENT_TIMEOUT,    /* 408 */
    END_CLIENT_BAD_BODY,   /* 400 */
    END_BODY_TOO_LARGE,    /* 413 */
    END_CONNECT_REFUSED,   /* 502 */
    END_CONNECT_TIMEOUT,   /* 504 */
    END_UPSTREAM_RESET,    /* 502 */
    END_UPSTREAM_CLOSED,   /* 502: closed before a whole response */
    END_UPSTREAM_BAD_HEAD, /* 502 */
    END_UPSTREAM_BAD_BODY, /* 502 after the head: the client connection is cut */
    END_SEND_TIMEOUT,      /* 504 */
    END_READ_TIMEOUT,      /* 504 */
    END_NO_SERVER,         /* 502 */
    END_INTERNAL,          /* 500 */
    END_UPSTREAM_TLS,      /* 502: the TLS handshake with the upstream failed */
};

struct ending {
    enum ending_code code;
    const char *why; /* static text for the error log */
    bool retryable;
};

/* One try at an upstream, for $upstream_addr and friends. */
struct ups_try {
    const char *addr;
    int status; /* 0 when no response (502/504 recorded by the log) */
    uint64_t connect_ms, header_ms, response_ms;
};

#define EX_MAX_TRIES 8

struct exchange {
    struct arena arena;
    struct snapshot *snap; /* referenced */
    struct worker *worker;
    const struct client_ops *client;
    void *session; /* the client session's own state */
    struct loop *loop;
    uint64_t id; /* per worker */
    char request_id[33];

    /* the connection */
    const struct net_addr *peer;
    const struct net_addr *local;
    const struct listen_set *listen;
    bool is_tls;
    uint64_t conn_number;
    int conn_requests;

    /* the request (slices live as long as the exchange) */
    struct slice method;
    enum http_method method_id;
    struct slice request_uri; /* target as sent */
    struct slice uri;         /* normalised path ($uri) */
    struct slice args;        /* query without '?' */
    bool has_args;
    struct slice host; /* lower-case, no port */
    struct slice request_line;
    int minor_version; /* 1.x; 2 for HTTP/2 */
    struct http_field *req_fields;
    size_t nreq_fields;
    int64_t req_content_length; /* -1 unknown */
    bool req_chunked;
    bool req_has_body;
    bool expect_continue;
    struct slice upgrade;      /* HTTP/1.1 Upgrade (not h2c) asked with Connection: upgrade */
    size_t request_length;     /* head + body bytes read */
    struct slice req_trailers; /* trailer field lines (with CRLFs) of a chunked body */

    /* routing */
    const struct srv_conf *srv;
    const struct location *loc;
    const struct loc_conf *lc;
    struct route_captures caps;             /* location regex */
    struct route_captures host_caps;        /* server_name regex */
    struct slice *map_vals;                 /* `map` values of this request (arena, lazily) */
    struct slice *user_vals;                /* `set` values */
    bool uri_rewritten;                     /* a rewrite changed $uri or $args */
    const struct net_addr *realip_orig;     /* the connection's address, when realip replaced it */
    const struct net_addr *pp_src, *pp_dst; /* the PROXY protocol header's, or NULL */
    bool uri_rewritten_here; /* ... in the location that serves (rewrite ... break) */
    bool args_set;           /* `set $args` changed the arguments */
    uint8_t *map_state;

    /* the response */
    int status;
    struct http_field *resp_fields; /* as sent to the client ($sent_http_) */
    size_t nresp_fields;
    struct http_field *ups_fields; /* as received ($upstream_http_) */
    size_t nups_fields;
    bool head_sent;
    bool close_conn;                      /* the client connection cannot be reused */
    bool redirected;                      /* went through error_page already */
    bool error_page_locked;               /* no more error pages (recursive_error_pages off) */
    uint8_t internal_redirects;           /* error_page and try_files hops (500 after 10) */
    const char *error_detail;             /* a line for the built-in error page, or NULL */
    struct slice www_authenticate;        /* the challenge of a 401 from auth_basic / auth_jwt */
    struct slice jwt_header, jwt_payload; /* a verified token's JSON ($jwt_*) */
    uint8_t jwt_state;                    /* 0 unchecked, else enum jwt_result + 1 */
    const void *jwt_for;                  /* the key set jwt_state is for */
    struct limit_hold *limit_holds;       /* limit_conn places taken (limit.c) */
    size_t nlimit_holds;
    bool limit_req_done;  /* limit_req counts a request once (not again after a redirect) */
    bool limit_rate_set;  /* limit_rate is decided: by set $limit_rate, or at the first write */
    uint64_t limit_rate;  /* response bytes per second, 0 unlimited (limit_rate_budget) */
    uint64_t limit_rate_after;
    uint8_t limit_req_st, limit_conn_st; /* enum limit_status */
    bool req_underscore; /* a request field name holds '_' (the parser saw it) */
    bool internal;       /* an internal redirect or a rewrite brought it here (`internal`) */
    bool subrequest;     /* auth_request's: no access or limit phases, no log */
    bool auth_request_done;
    struct subf *subf; /* the sub_filter filter, when installed (subfilter.c) */
    struct http_field *accel_keep; /* X-Accel-Redirect: upstream fields the answer keeps */
    uint8_t naccel_keep;
    bool in_redirect;     /* proxy_release inside an internal redirect: keep the holds */
    bool stat_counted;    /* counted in the worker's requests (stats.h) */
    struct tls_conn *tls; /* the client's TLS connection, or NULL */
    int error_status;     /* status error_page imposes (0: the target's) */
    uint64_t body_bytes_sent;
    uint64_t bytes_sent;

    /* upstream tries */
    struct ups_try tries[EX_MAX_TRIES];
    int ntries;
    struct ending ending;

    /* timing */
    uint64_t start_ms;      /* monotonic */
    uint64_t start_real_us; /* wall clock, for $msec and $time_local */

    /* cache */
    const char *cache_status; /* $upstream_cache_status, NULL when no cache */
    bool cache_background;    /* a background update (no client) */

    void *proxy;    /* the corridor's state (proxy.c) */
    void *compress; /* the compression filter over `client` (compress.c), or NULL */
};

/* Status to answer for an ending (502, 504, ...). */
int ending_status(enum ending_code c);

#endif
