/* The HTTP/1.x client session: one accepted connection, its requests in
 * order (keep-alive, pipelining), request bodies pulled by the corridor, and
 * responses written with writev. Implements struct client_ops. */
#ifndef PORTICO_PROXY_SESSION_H
#define PORTICO_PROXY_SESSION_H

#include "net/net.h"

struct worker;
struct h1_session;

/* Take over an accepted socket. Closes it on failure. */
void h1_session_start(struct worker *w, int fd, const struct net_addr *peer,
                      const struct net_addr *local);

/* Graceful stop: idle sessions close now, busy ones after their response. */
void h1_session_shutdown(struct h1_session *s);
/* Forced stop: close now. */
void h1_session_kill(struct h1_session *s);
struct h1_session *h1_session_next(struct h1_session *s);
bool h1_session_busy(const struct h1_session *s);
/* Free this thread's spare request blocks beyond `keep`. */
void h1_session_trim_cache(size_t keep);
/* Free the spare blocks no request needed since the last call, keeping at
 * least `keep` (see buf_trim_unused). Returns the bytes freed. */
size_t h1_session_trim_unused(size_t keep);

#endif
