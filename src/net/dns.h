/* A small stub resolver for names looked up at run time (upstream `resolve`
 * servers, OCSP responders) when a `resolver` is configured: one question
 * over UDP to each server in turn, A records first and AAAA when asked.
 * Blocking: called from background threads only, never from a worker. */
#ifndef PORTICO_NET_DNS_H
#define PORTICO_NET_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/net.h"

#define DNS_MAX_SERVERS 8

/* `resolver address ... [valid=time] [ipv6=on|off]` and `resolver_timeout` */
struct net_resolver {
    struct net_addr addr[DNS_MAX_SERVERS];
    size_t n;            /* 0: none configured */
    uint32_t valid_ms;   /* how long an answer is used (0: the owner's default) */
    uint32_t timeout_ms; /* per server (0: the owner's default) */
    bool ipv6;           /* AAAA when there is no A record */
    bool ipv6_set;
};

/* Ask servers[0..n) in turn, each for up to timeout_ms, until one answers
 * (an answer without the record counts as the final word). AAAA is asked
 * only if there is no A record and `ipv6`. 0 with *out filled (port 0), or
 * -1 (errno EAGAIN when no server answered in time). */
int net_dns_lookup(const struct net_addr *servers, size_t n, const char *host, uint32_t timeout_ms,
                   bool ipv6, struct net_addr *out);

/* The query for `host` and record `type` (1 A, 28 AAAA) with `id` into q;
 * its length, or 0 if the name cannot be asked (empty label, too long). */
size_t net_dns_query(const char *host, int type, uint16_t id, unsigned char *q, size_t cap);

/* Read the answer `m` to the query `q`: 1 and *out when it holds a record of
 * the asked type, 0 when it answers without one (NXDOMAIN, no data), -1
 * when it is no answer to q (wrong id or question, malformed, truncated),
 * -2 when the server says it failed (SERVFAIL, REFUSED). */
int net_dns_parse(const unsigned char *m, size_t len, const unsigned char *q, size_t qlen,
                  struct net_addr *out);

#endif
