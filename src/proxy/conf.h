/* The configuration snapshot of the http proxy: what `http {}`, `server {}`
 * and `location {}` blocks become. Built off the data path by conf_load(),
 * immutable afterwards, reference-counted: an exchange keeps the snapshot
 * it started with. */
#ifndef PORTICO_PROXY_CONF_H
#define PORTICO_PROXY_CONF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "proxy/access.h"
#include "proxy/auth.h"
#include "proxy/jwt.h"
#include "proxy/limit.h"
#include "proxy/cache_conf.h"
#include "proxy/compress.h"
#include "proxy/static.h"
#include "core/arena.h"
#include "net/net.h"
#include "router/router.h"
#include "tls/tls.h"
#include "proxy/authreq.h"
#include "proxy/cookie.h"
#include "proxy/ofcache.h"
#include "proxy/referer.h"
#include "proxy/securelink.h"
#include "proxy/subfilter.h"
#include "upstream/upstream.h"

/* Slots of cf_ctx.confs while loading. */
enum { CONF_MAIN = 0, CONF_SRV = 1, CONF_LOC = 2 /* UPS_CONF_GROUP = 3 */ };

/* A string with variables, compiled once ("$scheme://$host$request_uri"). */
struct tmpl_part {
    bool is_var;
    struct slice lit; /* literal text, or the variable's argument ($http_X -> "x") */
    int var;          /* variable id (vars.h) */
};

struct tmpl {
    struct tmpl_part *parts;
    size_t nparts;
    bool is_const; /* no variables: parts[0].lit is the value */
    const char *src;
};

struct hdr_rule {
    struct slice name;
    struct tmpl *value;
    bool always; /* add_header ... always */
};

struct hdr_rules {
    struct hdr_rule *v;
    size_t n;
};

struct error_page {
    int codes[16];
    size_t ncodes;
    int override; /* =code, 0 to keep the status, -1: use the subrequest's */
    struct tmpl *uri;
};

struct proxy_pass {
    bool is_https;
    struct tmpl *dynamic;    /* proxy_pass with variables: the whole URL */
    struct ups_group *group; /* named upstream or implicit host:port group */
    char *host;              /* as written after the scheme: $proxy_host */
    bool has_uri;            /* a URI part after host (even "/") */
    struct slice uri;        /* the URI part */
};

struct access_log;
struct log_format;

#define NEXT_UPS_ERROR          (1u << 0)
#define NEXT_UPS_TIMEOUT        (1u << 1)
#define NEXT_UPS_INVALID_HEADER (1u << 2)
#define NEXT_UPS_500            (1u << 3)
#define NEXT_UPS_502            (1u << 4)
#define NEXT_UPS_503            (1u << 5)
#define NEXT_UPS_504            (1u << 6)
#define NEXT_UPS_429            (1u << 7)
#define NEXT_UPS_NON_IDEMPOTENT (1u << 8)
#define NEXT_UPS_OFF            (1u << 9)
#define NEXT_UPS_UNSET          UINT32_MAX

/* proxy_ssl_* (upstream TLS) as written at one level; ints -1 and pointers
 * NULL when unset, merged down by proxy_ssl_conf_merge(). */
struct proxy_ssl_conf {
    int verify;         /* proxy_ssl_verify, default off */
    int server_name;    /* proxy_ssl_server_name: send SNI; default off */
    int session_reuse;  /* default on */
    int verify_depth;   /* default 1 */
    unsigned protocols; /* TLS_PROTO_* bits, 0 = TLSv1.2 TLSv1.3 */
    const char *trusted_certificate;
    const char *ciphers;
    const char *name;       /* proxy_ssl_name, NULL = the host of proxy_pass */
    const char *cert, *key; /* mTLS toward the upstream */
};

/* A location's upstream TLS at run time (conf_tls.c): its client context and
 * the newest session per upstream address, shared by every worker. */
struct proxy_ssl;
struct map_def;
struct rw_prog;
struct redirect_rule;

/* expires */
enum expires_kind {
    EXPIRES_OFF,
    EXPIRES_EPOCH,
    EXPIRES_MAX,
    EXPIRES_ACCESS,
    EXPIRES_MODIFIED,
    EXPIRES_DAILY
};

/* Fields the location may add to a response beyond its own (add_header,
 * and expires' Expires and Cache-Control): callers size arrays with it. */
#define LOC_EXTRA_FIELDS(lc) ((lc)->add_headers.n + 2 + ACCEL_KEEP_MAX)
#define ACCEL_KEEP_MAX       8 /* fields an X-Accel-Redirect response hands on (ex->accel_keep) */

/* Settings of http, server and location levels (one shape, merged down). */
enum { LINGERING_OFF, LINGERING_ON, LINGERING_ALWAYS };
enum { IMS_OFF, IMS_EXACT, IMS_BEFORE };

/* if_modified_since: may a representation last modified at `lm` be a 304
 * for If-Modified-Since `since` (both seconds)? */
static inline bool conf_ims_matches(int mode, int64_t lm, int64_t since)
{
    return mode == IMS_EXACT ? lm == since : mode == IMS_BEFORE ? lm <= since : false;
}

struct loc_conf {
    struct proxy_pass *pass;
    struct rw_prog *rw; /* rewrite, return, set, if, break of this level (not inherited) */
    const struct redirect_rule *redirects; /* proxy_redirect (redirect.h) */
    size_t nredirects;
    bool redirect_set, redirects_off;
    struct cookie_conf cookies;   /* proxy_cookie_* (cookie.h) */
    struct authreq_conf authreq;  /* auth_request (authreq.h) */
    struct referer_conf referers; /* valid_referers (referer.h) */
    struct subfilter_conf subf;   /* sub_filter (subfilter.h) */
    struct securelink_conf securelink; /* secure_link (securelink.h) */
    struct ofc_conf ofc;               /* open_file_cache (ofcache.h) */
    int absolute_redirect;        /* relative Location made absolute (scheme://host[:port]) */
    int port_in_redirect;         /* ... with the port when not the scheme's */
    int server_name_in_redirect;  /* ... with the first server_name, not Host */
    struct access_rule *access;   /* allow / deny, in order (access.h) */
    size_t naccess, cap_access;
    bool access_set;
    struct auth_conf auth;        /* auth_basic (auth.h) */
    struct limit_conf limits;     /* limit_req, limit_conn (limit.h) */
    struct jwt_conf jwt;          /* auth_jwt (jwt.h) */
    int satisfy_any;              /* satisfy any: allow/deny or auth_basic suffices */
    struct net_cidr *realip_from; /* set_real_ip_from (realip.h) */
    size_t nrealip_from;
    bool realip_from_set;
    const char *realip_header; /* NULL: X-Real-IP */
    bool realip_pp;            /* real_ip_header proxy_protocol */
    int realip_recursive;
    bool has_return; /* a `return` at this level itself */

    struct hdr_rules set_headers; /* proxy_set_header (inherited whole if none here) */
    bool set_headers_set;
    struct hdr_rules add_headers;
    bool add_headers_set;
    int expires;         /* enum expires_kind; -1 unset */
    int64_t expires_sec; /* its time (seconds; of the day for EXPIRES_DAILY) */
    struct slice *hide_headers;
    size_t nhide;
    bool hide_set;
    struct slice *pass_headers;
    size_t npass;
    bool pass_set;
    struct error_page *error_pages;
    size_t nerror_pages;
    bool error_pages_set;

    int pass_request_headers;
    int pass_request_body;
    struct tmpl *proxy_bind; /* local address of upstream connections, NULL: none */
    bool proxy_bind_set;     /* (proxy_bind off counts) */
    bool proxy_bind_transparent;
    int socket_keepalive;      /* proxy_socket_keepalive */
    struct tmpl *proxy_method; /* the method sent upstream, NULL: the client's */
    int buffering;
    int request_buffering;
    int intercept_errors;
    int server_tokens;
    int tcp_nodelay;
    int underscores_in_headers; /* (default server of the listening address) */
    int ignore_invalid_headers;
    int reset_timedout_connection;
    int lingering_close; /* LINGERING_OFF / _ON / _ALWAYS */
    int chunked_transfer_encoding;
    int recursive_error_pages;
    int if_modified_since; /* IMS_OFF / IMS_EXACT / IMS_BEFORE */
    int max_ranges;        /* -1: no limit; 0: ranges off */
    uint32_t lingering_time_ms, lingering_timeout_ms;
    struct net_resolver *resolver; /* resolver (http, server), NULL unset */
    uint32_t resolver_timeout_ms;
    int http_version_minor; /* proxy_http_version 1.0 | 1.1 */
    uint32_t connect_timeout_ms;
    uint32_t read_timeout_ms;
    uint32_t send_timeout_ms;
    uint32_t client_body_timeout_ms;
    uint32_t keepalive_timeout_ms;
    uint32_t send_timeout_client_ms;
    int keepalive_requests;
    size_t client_max_body_size;
    size_t client_body_buffer_size;
    size_t proxy_buffer_size;
    size_t proxy_buffers;        /* proxy_buffers N SIZE: N*SIZE read ahead of the client */
    size_t busy_buffers_size;    /* proxy_busy_buffers_size (checked, see docs) */
    size_t max_temp_file_size;   /* proxy_max_temp_file_size: beyond proxy_buffers, 0 off */
    size_t temp_file_write_size; /* proxy_temp_file_write_size (accepted) */
    uint32_t next_upstream;
    int next_upstream_tries;
    uint32_t next_upstream_timeout_ms;
    char *request_id_header; /* proxy_request_id_header NAME: send $request_id upstream */
    struct proxy_ssl_conf proxy_ssl;
    struct proxy_ssl *proxy_ssl_rt;    /* built for proxy_pass https:// locations, else NULL */
    struct ups_check *health_check;    /* health_check (proxy/check_conf.c), not inherited */
    struct check_match *check_matches; /* http level: the match blocks */
    int api;                           /* api: answered by admin/ (not inherited) */
    int stub_status;                   /* stub_status: answered by admin/ (not inherited) */
    struct cache_loc_conf cache;       /* proxy_cache* (cache_conf.c) */
    struct static_conf st;             /* root, alias, index, try_files, types (static.c) */
    struct compress_conf z;            /* gzip, brotli, zstd (compress.c) */

    struct access_log **logs; /* access_log lines; NULL when none at this level */
    size_t nlogs;
    bool logs_set;
    bool log_off;
    int log_not_found;
    bool internal; /* `internal`: only internal redirects reach this location (not inherited) */
    const char *default_type;
    const char *body_temp_path;  /* client_body_temp_path: where spooled bodies go */
    const char *proxy_temp_path; /* proxy_temp_path: where spooled responses go */
    const char *file;            /* where this level was defined */
    int line;
};

struct listen_conf {
    struct net_addr addr;
    char text[80];
    bool ssl;
    bool http2;          /* listen ... http2: h2c prior knowledge, h2 in ALPN */
    bool h2c_only;       /* listen ... http2 h2c_only: no HTTP/1 on this plain address */
    bool proxy_protocol; /* connections start with a PROXY protocol header */
    bool default_server;
    bool reuseport;
    int backlog;
    const char *file;
    int line;
};

/* ssl_* settings of a server (or of the http level) as written; merged and
 * turned into a TLS context by conf_tls_build(). Ints: -1 unset. */
struct ssl_srv_conf {
    struct tls_server_conf tc;
    size_t nkeys;
    int prefer, tickets, stapling, stapling_verify, verify_client, reject_handshake;
    int cache_set;
    uint32_t handshake_timeout_ms;
    const char *file; /* the first ssl_certificate, for errors */
    int line;
};

/* http2_* settings of a server or of the http level, as written (http2/
 * h2_conf.c); `set` has bit (offset / 4) for each field given, the rest is
 * inherited from the http level, then defaulted. */
struct h2_conf {
    uint32_t set;
    uint32_t enable; /* http2 on | off */
    uint32_t max_concurrent_streams;
    uint32_t initial_window_size;
    uint32_t max_header_size;
    uint32_t idle_timeout_ms;
    uint32_t body_preread;
};

struct srv_conf {
    struct listen_conf *listens;
    size_t nlistens;
    const char **names;
    size_t nnames;
    struct loc_conf *lc;    /* server-level settings */
    struct location **locs; /* top-level locations in file order */
    size_t nlocs;
    struct location_set *locset;
    struct vhost vhost;
    uint32_t client_header_timeout_ms;
    size_t client_header_buffer_size;
    int large_header_buffers_num;
    size_t large_header_buffers_size;
    int merge_slashes;
    int underscores_in_headers;
    struct ssl_srv_conf ssl;
    struct tls_ctx *tls_ctx; /* NULL when the server has no certificate */
    bool http2;
    struct h2_conf h2;
    const char *file;
    int line;
};

/* All servers on one listening address. */
struct listen_set {
    struct net_addr addr;
    char text[80];
    int backlog;
    bool reuseport;
    bool ssl;
    bool http2;          /* some listen of this address says http2 */
    bool h2c_only;       /* some listen of this address says h2c_only: every
                          * connection is HTTP/2 from its first byte */
    bool proxy_protocol; /* ... says proxy_protocol: a PROXY header comes first */
    struct srv_conf **servers;
    size_t nservers;
    struct vhost_table *vhosts;
    struct srv_conf *dflt;
};

struct log_format {
    const char *name;
    struct tmpl *t;
    bool escape_json;
    bool escape_none;
};

struct main_conf {
    int worker_processes; /* 0 = auto */
    char *pid_path;
    char *error_log_path;
    int error_log_level;
    const char *error_log_file; /* where error_log was written, for errors */
    int error_log_line;
    uint32_t worker_shutdown_timeout_ms;
    int worker_connections;
    int worker_rlimit_nofile;
    int multi_accept;  /* accept until EAGAIN in one go (else batches of ACCEPT_BATCH) */
    const char *user;  /* `user`: drop to it after start when run as root; NULL none */
    unsigned uid, gid; /* ... resolved at load */
};

struct snapshot {
    _Atomic int refs;
    struct arena arena;
    char *path; /* the main config file */
    struct main_conf main;
    struct loc_conf *http_lc;
    struct srv_conf http_srv_defaults; /* server settings given at http level */
    struct srv_conf **servers;
    size_t nservers;
    struct ups_group **groups;
    size_t ngroups;
    struct listen_set *listens;
    size_t nlistens;
    struct log_format **formats;
    size_t nformats;
    struct jwt_keyset **jwt_keys; /* auth_jwt_key_file sets, freed with the snapshot */
    size_t njwt_keys, cap_jwt_keys;
    struct limit_zone_decl **limit_zones; /* limit_req_zone / limit_conn_zone (limit.h) */
    size_t nlimit_zones, cap_limit_zones;
    const char **dirs; /* directories this config made or writes in (temp paths), chowned
                        * to `user` when privileges are dropped */
    size_t ndirs, cap_dirs;
    struct access_log **all_logs; /* every access log file, opened once */
    size_t nall_logs;
    bool has_http;
    uint64_t generation;
    struct map_def **maps; /* `map` variables, by index (vars.h: V_MAP_BASE + i) */
    size_t nmaps;
    size_t nuser_vars;       /* `set` variables (rewrite.h) */
    pcre2_code **rw_regexes; /* compiled by rewrite and if */
    size_t nrw_regexes, cap_rw_regexes;
};

/* Register every module's directive table (once, at start). */
void conf_register_all(void);

/* Parse, check and build a snapshot from `path`. NULL with "file:line:
 * message" in err. `reuse` (the running snapshot, may be NULL) lends its
 * open access-log files to the new one. */
struct snapshot *conf_load(const char *path, const struct snapshot *reuse, char *err,
                           size_t errlen);

/* The listen set a connection accepted on `local` belongs to (a wildcard
 * listener matches by port), or NULL if the address is no longer listened on. */
const struct listen_set *snapshot_find_listen(const struct snapshot *s,
                                              const struct net_addr *local);

static inline struct snapshot *snapshot_ref(struct snapshot *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}
void snapshot_unref(struct snapshot *s);

/* TLS (conf_tls.c): the ssl_* directives and the snapshot's contexts. */
extern const struct cf_module ssl_cf_module;
void ssl_srv_conf_init(struct ssl_srv_conf *sc);
void ssl_srv_conf_merge(struct ssl_srv_conf *c, const struct ssl_srv_conf *p);
int conf_tls_build(struct snapshot *s, char *err, size_t errlen);
void conf_tls_free(struct snapshot *s);
/* Upstream TLS (proxy_ssl_*): loc_conf's part of init and merge. */
void proxy_ssl_conf_init(struct proxy_ssl_conf *c);
void proxy_ssl_conf_merge(struct proxy_ssl_conf *c, const struct proxy_ssl_conf *p);
/* The client context of a location built by conf_tls_build(). */
struct tls_ctx *proxy_ssl_ctx(const struct proxy_ssl *ps);
/* The newest resumable session for `addr` (free it with tls_session_free),
 * or NULL; and keep `s` (taken over) as the newest. Thread-safe. */
struct tls_session *proxy_ssl_session_get(struct proxy_ssl *ps, const struct net_addr *addr);
void proxy_ssl_session_put(struct proxy_ssl *ps, const struct net_addr *addr,
                           struct tls_session *s);

/* HTTP/2 (http2/h2_conf.c): the http2 and http2_* directives. */
extern const struct cf_module h2_cf_module;
/* Resolve each server's http2 settings (inheritance, defaults, `listen ...
 * http2`) into srv_conf.h2 and srv_conf.http2; before the TLS contexts. */
void h2_conf_finalize(struct snapshot *s);

/* Compile a string with variables for a directive (errors with file:line). */
struct tmpl *conf_tmpl(struct cf_ctx *cx, const struct cf_node *n, const char *src);
/* The snapshot being loaded (for setters that register what it must free). */
struct snapshot *conf_snapshot(struct cf_ctx *cx);
/* The location block being applied (NULL at server and http level). */
const struct location *conf_current_location(struct cf_ctx *cx);

/* Print the Markdown directive reference of every module. */
void conf_docs(FILE *out);

#endif
