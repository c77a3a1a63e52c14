/* The cache in the corridor (cache.c): lookup before the upstream, serving
 * hits (conditionals, ranges, HEAD), revalidation, stale answers, the
 * update lock, storing responses as they stream, invalidation after unsafe
 * methods, purge, and background updates. proxy.c calls these at fixed
 * points; the cache never touches the upstream connection itself. */
#ifndef PORTICO_PROXY_PCACHE_H
#define PORTICO_PROXY_PCACHE_H

#include "proxy/exchange.h"

struct pcache;

enum pc_verdict {
    PC_PASS,  /* no cache for this request: forward as usual */
    PC_FETCH, /* go to the origin; the request is adjusted (pcache_fetch_*) */
    PC_DONE,  /* the cache answers (or waits for the lock and calls proxy_fetch) */
};

/* Before forwarding: look up, answer or prepare the fetch. */
enum pc_verdict pcache_request(struct exchange *ex, struct pcache **out);

/* How the fetch differs from the client's request: the method to send
 * (GET for a HEAD that is stored), whether client conditionals and Range
 * stay out, and validator fields to add. */
struct slice pcache_fetch_method(const struct pcache *pc);
bool pcache_strip_conditionals(const struct pcache *pc);
size_t pcache_fetch_fields(const struct pcache *pc, const struct http_field **out);
/* Is the client's request a HEAD fetched as GET (send no body to the client)? */
bool pcache_head_as_get(const struct pcache *pc);

/* The origin's head arrived (after retries were decided). Returns 1 when
 * the cache answers instead (304 revalidated, stale on error): the caller
 * lets the upstream response go, then calls pcache_answer(). */
int pcache_response_head(struct pcache *pc, int status, const struct http_field *f, size_t n);
void pcache_answer(struct pcache *pc);
void pcache_response_body(struct pcache *pc, const char *p, size_t len);
void pcache_response_done(struct pcache *pc);
void pcache_response_broken(struct pcache *pc);

/* The origin failed (connect, timeout, bad head) with nothing sent to the
 * client. Returns true when a stale response answered. */
bool pcache_upstream_failed(struct pcache *pc, enum ending_code code);

/* The client took what was queued: go on sending a cached body. */
void pcache_drained(struct pcache *pc);
void pcache_release(struct pcache *pc);

/* After a response to an unsafe method: drop what the URL (and Location,
 * Content-Location) had in the cache (RFC 9111 4.4). */
void pcache_invalidate(struct exchange *ex, int status, const struct http_field *f, size_t n);

/* The request is the location's proxy_cache_purge method: answer it. */
bool pcache_is_purge(struct exchange *ex);
void pcache_purge(struct exchange *ex);

/* proxy.c's side: go on to the origin after a lock wait, and build the
 * client-facing field list of a response (hide rules, add_header). */
void proxy_fetch(struct exchange *ex);
size_t proxy_response_fields(struct exchange *ex, int status, const struct http_field *in, size_t n,
                             struct http_field *out, size_t cap);

/* Background updates still running on this worker (graceful stop waits). */
size_t pcache_background_count(void);
void pcache_background_kill(void);

#endif
