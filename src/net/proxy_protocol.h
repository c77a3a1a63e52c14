/* The PROXY protocol (HAProxy's spec, versions 1 and 2) that L4 balancers
 * (HAProxy, AWS NLB, ...) put in front of a connection to name the client.
 * Pure parsing: no I/O, no allocation. */
#ifndef PORTICO_NET_PROXY_PROTOCOL_H
#define PORTICO_NET_PROXY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>

#include "net/net.h"

/* Longest header read: v1 is at most 107 bytes; v2 16 + addresses + TLVs,
 * which are skipped (longer v2 headers are refused). */
#define PP_MAX_HEADER 4096

struct pp_header {
    bool has_addr; /* false for v1 UNKNOWN, v2 LOCAL or an unsupported family */
    struct net_addr src, dst;
};

/* Parse the start of a connection's bytes. Returns the header's length (> 0),
 * 0 when more bytes are needed, -1 when this is no valid PROXY header. */
int pp_parse(const unsigned char *buf, size_t len, struct pp_header *out);

#endif
