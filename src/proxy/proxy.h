/* The corridor: what happens to an exchange once its request head has been
 * parsed — routing, the access phase, local answers (`return`, errors,
 * error_page), forwarding to an upstream, streaming the response back, and
 * the log phase. Client sessions call in here; the upstream side is driven
 * from here. */
#ifndef PORTICO_PROXY_H
#define PORTICO_PROXY_H

#include "proxy/exchange.h"

struct worker;

/* Start the corridor for an exchange whose request fields are filled.
 * The client session hears back through ex->client and proxy_done(). */
void proxy_start(struct exchange *ex);
/* The same for an exchange whose server, location and rewrites are already
 * decided (the cache's background update: a copy of a routed request). */
void proxy_start_located(struct exchange *ex);

/* The client session has more request body (or its end) for body_read. */
void proxy_request_body_ready(struct exchange *ex);

/* The client session wrote out what was pending (backpressure released). */
void proxy_client_drained(struct exchange *ex);

/* The client went away or broke: stop everything for this exchange. The
 * corridor releases the upstream side and does not touch the client again. */
void proxy_abort(struct exchange *ex);

/* Answer locally with `status` (and the error_page rules of the location,
 * if any) — used by client sessions for errors found after the head. */
void proxy_respond_error(struct exchange *ex, int status);

/* Release everything the corridor holds for `ex` (upstream connection,
 * buffers, timers). Idempotent; the session calls it before freeing ex. */
void proxy_release(struct exchange *ex);

/* The built-in HTML page for an error status (with an optional line of
 * detail, as nginx's "The plain HTTP request was sent to HTTPS port").
 * Returns its length. */
size_t proxy_error_html(int status, const char *detail, bool tokens, char *out, size_t cap);

/* Answer locally with a body (admin/ answers its API with it); the
 * location's add_header rules apply. Ends the exchange. */
void proxy_answer(struct exchange *ex, int status, struct slice content_type, struct slice body);

/* For other content handlers (static.c): */
/* An internal redirect to a URI (with ?args) or a @named location. With
 * keep_request (try_files) the method and body stay; without (error_page)
 * it becomes a GET of the page. At most 10 per request, then 500. */
void proxy_internal_redirect(struct exchange *ex, struct slice uri, bool keep_request);
/* A redirect answer (Location made absolute per absolute_redirect). */
void proxy_local_redirect(struct exchange *ex, int code, struct slice location);
/* The status error_page imposes on this answer, 0 if none. */
int proxy_forced_status(struct exchange *ex);
/* Be told when the client drained what was queued, and when the exchange is
 * released (with ctx). 0 or -1 (out of memory). */
int proxy_attach(struct exchange *ex, void (*drained)(void *ctx), void (*release)(void *ctx),
                 void *ctx);
/* Filter and complete response fields (add_header ...): see proxy.c. */
size_t proxy_response_fields(struct exchange *ex, int status, const struct http_field *in, size_t n,
                             struct http_field *out, size_t cap);

#define PORTICO_SERVER "portico/" PORTICO_VERSION

/* $proxy_host of the current forwarding. */
struct slice proxy_current_host(struct exchange *ex);

#endif
