/* Sockets and addresses: listening sockets (one per worker with
 * SO_REUSEPORT), non-blocking connects, address text. Knows no HTTP. */
#ifndef PORTICO_NET_H
#define PORTICO_NET_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* An IPv4 or IPv6 address and port, compact (every connection keeps two). */
struct net_addr {
    union {
        struct sockaddr_in6 in6;
        struct sockaddr_in in4;
        struct {
            sa_family_t ss_family;
        } sa;
    };
    socklen_t len;
};

/* Parse "host:port", "[v6]:port", "port" (any address) or "*:port" into an
 * address; `host` must be a numeric IP or "localhost" (resolved with
 * getaddrinfo when `allow_resolve`). Returns 0 or -1 with a message. */
int net_addr_parse(const char *text, int default_port, bool allow_resolve, struct net_addr *out,
                   const char **errmsg);

/* A numeric IP with an optional port: "10.0.0.1", "::1", "[::1]",
 * "10.0.0.1:8000", "[::1]:8000" (port 0 when none). 0 or -1 with a message. */
int net_addr_parse_ip(const char *text, struct net_addr *out, const char **errmsg);

/* "127.0.0.1:8080" / "[::1]:8080" into buf; returns its length. */
size_t net_addr_format(const struct net_addr *a, char *buf, size_t len);
/* Address and port separately (no brackets). */
size_t net_addr_ip(const struct net_addr *a, char *buf, size_t len);
int net_addr_port(const struct net_addr *a);
bool net_addr_equal(const struct net_addr *a, const struct net_addr *b);
/* 0.0.0.0 or [::] */
bool net_addr_is_any(const struct net_addr *a);

/* An address block ("10.0.0.0/8", "::1", "all"): family 0 matches any. */
struct net_cidr {
    int family; /* AF_INET, AF_INET6, 0 = all */
    unsigned char addr[16], mask[16];
};
/* Parse a CIDR, a single address or "all". Returns 0 or -1. */
int net_cidr_parse(const char *text, struct net_cidr *out);
bool net_cidr_match(const struct net_cidr *c, const struct net_addr *a);

/* A listening socket: non-blocking, CLOEXEC, SO_REUSEADDR, SO_REUSEPORT if
 * asked, TCP_DEFER_ACCEPT off. Returns the fd or -1 (errno). */
int net_listen(const struct net_addr *a, int backlog, bool reuseport);

/* Wake the listener only when a new connection has data (TCP_DEFER_ACCEPT):
 * for protocols where the client speaks first. Returns 0 or -1 (errno). */
int net_defer_accept(int fd);

/* Accept one connection (non-blocking, CLOEXEC; TCP_NODELAY is left to
 * net_nodelay_before_write). Returns the fd or -1 (errno; EAGAIN when none is
 * waiting). */
int net_accept(int lfd, struct net_addr *peer);

/* Set TCP_NODELAY. 0 or -1 (errno). */
int net_set_nodelay(int fd);
/* SO_LINGER with a zero timeout: the close that follows sends a reset and
 * drops what is unsent, so the socket holds no memory in FIN_WAIT. */
int net_set_reset_on_close(int fd);

/* Call before each write to a TCP socket; `*state` starts at 0 per socket.
 * Sets TCP_NODELAY before the second write only: Linux holds back a small
 * segment only while an earlier small one is unacknowledged, so a socket
 * written once (a response with Connection: close, a request on a connection
 * used once) never needs it and saves the system call. */
static inline void net_nodelay_before_write(int fd, unsigned char *state)
{
    if (*state == 1)
        net_set_nodelay(fd);
    if (*state < 2)
        (*state)++;
}

/* Start a non-blocking connect (TCP_NODELAY: see net_nodelay_before_write).
 * Returns the fd (connect may still be in progress: wait for writability,
 * then net_connect_result) or -1 (errno). */
int net_connect(const struct net_addr *a);

/* net_connect with options: `local` (if set) is bound first (IP_TRANSPARENT
 * before it with NET_CONNECT_TRANSPARENT, so it may be a foreign address:
 * needs CAP_NET_ADMIN), NET_CONNECT_KEEPALIVE sets SO_KEEPALIVE. */
#define NET_CONNECT_KEEPALIVE   1u
#define NET_CONNECT_TRANSPARENT 2u
int net_connect_from(const struct net_addr *a, const struct net_addr *local, unsigned opts);
/* 0 when the connect succeeded, else the errno it failed with. */
int net_connect_result(int fd);

#endif
