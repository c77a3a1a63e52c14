/* HTTP/2 client sessions on nghttp2. A session takes over an accepted
 * connection (h2c with prior knowledge, or TLS after ALPN "h2") and turns
 * each request stream into a protocol-neutral struct exchange, implementing
 * struct client_ops like the HTTP/1 session does: the corridor cannot tell
 * the two apart. Flow control follows the corridor: request body windows
 * reopen only as the corridor takes the bytes, and response bytes leave a
 * stream's queue only as the client's windows allow. */
#ifndef PORTICO_HTTP2_H2_H
#define PORTICO_HTTP2_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "core/str.h"
#include "http/http.h"
#include "net/net.h"

struct worker;
struct tls_conn;
struct listen_set;

/* Take over an accepted connection. `tls` (NULL on plain sockets) and the
 * socket are owned by the session from here and closed with it. `preread`
 * holds bytes already read from the connection (the client preface or part
 * of it); they are copied. The session registers fd with the worker's loop
 * and counts itself in w->nsessions / w->nactive. */
struct pp_header;
/* `pp`: the connection's PROXY protocol header with addresses, or NULL. */
void h2_session_start(struct worker *w, int fd, const struct net_addr *peer,
                      const struct net_addr *local, struct tls_conn *tls, const char *preread,
                      size_t npreread, const struct pp_header *pp);

/* ---- sessions without a socket (fuzzing, tests) ---- */

/* Takes bytes a session would write to its socket; returns how many it
 * took (at least 1; fewer than offered is a short write), or -1 when the
 * connection is to be taken as broken (the session closes). */
typedef ssize_t h2_sink_fn(void *ctx, const struct iovec *iov, int iovcnt);

struct h2_session;

/* A session like h2_session_start()'s on a plain listener at `local` (which
 * must be one of the worker snapshot's listen addresses), with no socket:
 * the client's bytes come by h2_session_input() and everything written goes
 * to `sink`. Output and the corridor run from the worker's loop (posted
 * callbacks) as for any session. Counted in h2_sessions_count(); once that
 * drops, the session is closed and freed by the loop, so hold `s` only
 * while it counts. NULL if it cannot be made. */
struct h2_session *h2_session_detached(struct worker *w, const struct net_addr *peer,
                                       const struct net_addr *local, h2_sink_fn *sink,
                                       void *sink_ctx);
/* Bytes as read from the client. Returns how many the session took: fewer
 * than `len` when it reads no more for now (terminated, closing, or its
 * output is too far behind), as a socket would keep them. */
size_t h2_session_input(struct h2_session *s, const char *p, size_t len);

/* Graceful stop of every HTTP/2 session of `w`: GOAWAY with the last stream
 * id, in-flight streams finish, each connection closes when it has none. */
void h2_sessions_shutdown(struct worker *w);
/* The configuration was reloaded: same as a graceful stop (the client opens
 * a new connection, which gets the new settings). */
void h2_sessions_reload(struct worker *w);
/* Forced stop: close every HTTP/2 session of `w` now. */
void h2_sessions_kill(struct worker *w);
/* HTTP/2 sessions of `w` still open. */
size_t h2_sessions_count(const struct worker *w);

/* Does this listen set speak HTTP/2 (listen ... http2, or `http2 on` in its
 * default server)? On plain listeners that means h2c with prior knowledge. */
bool h2_listen_enabled(const struct listen_set *ls);

/* The 24-byte client connection preface; a plain connection on an HTTP/2
 * listener whose first bytes are these speaks h2c. */
#define H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24

/* ---- pure helpers (unit-tested) ---- */

/* Is `name` (lower case) a connection-specific field that RFC 9113 8.2.2
 * forbids in HTTP/2 messages? */
bool h2_field_is_connection_specific(struct slice name);

/* Split HTTP/1 trailer field lines ("Name: value\r\n"...) into at most `max`
 * fields with lower-cased names written to `lower` (same size as `text`).
 * Connection-specific and malformed lines are dropped. Returns the count. */
size_t h2_parse_trailers(struct slice text, char *lower, struct http_field *out, size_t max);

#endif
