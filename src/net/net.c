#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_port(const char *s, int *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    long v = strtol(s, &end, 10);
    if (*end || v < 1 || v > 65535)
        return -1;
    *out = (int)v;
    return 0;
}

int net_addr_parse(const char *text, int default_port, bool allow_resolve, struct net_addr *out,
                   const char **errmsg)
{
    char host[256];
    const char *port_s = NULL;
    int port = default_port;
    memset(out, 0, sizeof(*out));

    if (text[0] == '[') {
        const char *rb = strchr(text, ']');
        if (!rb || (size_t)(rb - text - 1) >= sizeof(host)) {
            *errmsg = "invalid IPv6 address";
            return -1;
        }
        memcpy(host, text + 1, (size_t)(rb - text - 1));
        host[rb - text - 1] = '\0';
        if (rb[1] == ':')
            port_s = rb + 2;
        else if (rb[1] != '\0') {
            *errmsg = "invalid address";
            return -1;
        }
    } else {
        const char *colon = strrchr(text, ':');
        if (colon && strchr(text, ':') != colon) {
            *errmsg = "IPv6 addresses must be in brackets";
            return -1;
        }
        size_t hl = colon ? (size_t)(colon - text) : strlen(text);
        if (hl >= sizeof(host)) {
            *errmsg = "host name too long";
            return -1;
        }
        memcpy(host, text, hl);
        host[hl] = '\0';
        if (colon)
            port_s = colon + 1;
        else {
            /* a bare number is a port on every address */
            int p;
            if (parse_port(text, &p) == 0) {
                port = p;
                strcpy(host, "*");
            }
        }
    }
    if (port_s && parse_port(port_s, &port) < 0) {
        *errmsg = "invalid port";
        return -1;
    }
    if (port <= 0) {
        *errmsg = "no port";
        return -1;
    }

    struct sockaddr_in *sin = &out->in4;
    struct sockaddr_in6 *sin6 = &out->in6;
    if (strcmp(host, "*") == 0 || host[0] == '\0') {
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sin->sin_port = htons((uint16_t)port);
        out->len = sizeof(*sin);
        return 0;
    }
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        out->len = sizeof(*sin);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*sin6);
        return 0;
    }
    if (!allow_resolve) {
        *errmsg = "host is not a numeric address";
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) {
        *errmsg = "host not found";
        return -1;
    }
    if (res->ai_addrlen > sizeof(out->in6)) {
        freeaddrinfo(res);
        *errmsg = "unsupported address family";
        return -1;
    }
    memcpy(&out->in6, res->ai_addr, res->ai_addrlen);
    out->len = (socklen_t)res->ai_addrlen;
    if (out->sa.ss_family == AF_INET)
        sin->sin_port = htons((uint16_t)port);
    else
        sin6->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

size_t net_addr_ip(const struct net_addr *a, char *buf, size_t len)
{
    const void *src;
    if (a->sa.ss_family == AF_INET)
        src = &a->in4.sin_addr;
    else if (a->sa.ss_family == AF_INET6)
        src = &a->in6.sin6_addr;
    else {
        snprintf(buf, len, "unix:");
        return strlen(buf);
    }
    if (!inet_ntop(a->sa.ss_family, src, buf, (socklen_t)len))
        buf[0] = '\0';
    return strlen(buf);
}

int net_addr_port(const struct net_addr *a)
{
    if (a->sa.ss_family == AF_INET)
        return ntohs(a->in4.sin_port);
    if (a->sa.ss_family == AF_INET6)
        return ntohs(a->in6.sin6_port);
    return 0;
}

size_t net_addr_format(const struct net_addr *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    net_addr_ip(a, ip, sizeof(ip));
    int n =
        snprintf(buf, len, a->sa.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, net_addr_port(a));
    return n < 0 ? 0 : ((size_t)n < len ? (size_t)n : len - 1);
}

bool net_addr_equal(const struct net_addr *a, const struct net_addr *b)
{
    return a->len == b->len && memcmp(&a->sa, &b->sa, a->len) == 0;
}

bool net_addr_is_any(const struct net_addr *a)
{
    if (a->sa.ss_family == AF_INET)
        return a->in4.sin_addr.s_addr == htonl(INADDR_ANY);
    if (a->sa.ss_family == AF_INET6)
        return memcmp(&a->in6.sin6_addr, &in6addr_any, sizeof(in6addr_any)) == 0;
    return false;
}

int net_listen(const struct net_addr *a, int backlog, bool reuseport)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->in6, a->len) < 0)
        goto fail;
    if (listen(fd, backlog) < 0)
        goto fail;
    return fd;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

int net_accept(int lfd, struct net_addr *peer)
{
    peer->len = sizeof(peer->in6);
    return accept4(lfd, (struct sockaddr *)&peer->in6, &peer->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int net_set_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int net_set_reset_on_close(int fd)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

int net_addr_parse_ip(const char *text, struct net_addr *out, const char **errmsg)
{
    memset(out, 0, sizeof(*out));
    char tmp[INET6_ADDRSTRLEN + 2];
    size_t len = strlen(text);
    if (len > 2 && text[0] == '[' && text[len - 1] == ']' && len - 2 < sizeof(tmp)) {
        memcpy(tmp, text + 1, len - 2);
        tmp[len - 2] = '\0';
        text = tmp;
    }
    if (inet_pton(AF_INET, text, &out->in4.sin_addr) == 1) {
        out->in4.sin_family = AF_INET;
        out->len = sizeof(out->in4);
        return 0;
    }
    if (inet_pton(AF_INET6, text, &out->in6.sin6_addr) == 1) {
        out->in6.sin6_family = AF_INET6;
        out->len = sizeof(out->in6);
        return 0;
    }
    if (!strcmp(text, "localhost") || !strcmp(text, "*")) {
        *errmsg = "not a numeric address";
        return -1;
    }
    return net_addr_parse(text, 0, false, out, errmsg);
}

int net_connect(const struct net_addr *a)
{
    return net_connect_from(a, NULL, 0);
}

int net_connect_from(const struct net_addr *a, const struct net_addr *local, unsigned opts)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (((opts & NET_CONNECT_KEEPALIVE) &&
         setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0) ||
        (local && (opts & NET_CONNECT_TRANSPARENT) &&
         setsockopt(fd, local->sa.ss_family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP,
                    local->sa.ss_family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one,
                    sizeof(one)) < 0) ||
        (local && bind(fd, (const struct sockaddr *)&local->in6, local->len) < 0) ||
        (connect(fd, (const struct sockaddr *)&a->in6, a->len) < 0 && errno != EINPROGRESS)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int net_connect_result(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

int net_cidr_parse(const char *text, struct net_cidr *out)
{
    memset(out, 0, sizeof(*out));
    if (strcmp(text, "all") == 0)
        return 0;
    char buf[64];
    const char *slash = strchr(text, '/');
    size_t hl = slash ? (size_t)(slash - text) : strlen(text);
    if (hl == 0 || hl >= sizeof(buf))
        return -1;
    memcpy(buf, text, hl);
    buf[hl] = 0;
    int bits;
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        bits = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        bits = 128;
    } else {
        return -1;
    }
    if (slash) {
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || v < 0 || v > bits)
            return -1;
        bits = (int)v;
    }
    for (int i = 0; i < 16; i++) {
        int b = bits - 8 * i;
        out->mask[i] = b >= 8 ? 0xff : b <= 0 ? 0 : (unsigned char)(0xff << (8 - b));
        out->addr[i] &= out->mask[i];
    }
    return 0;
}

bool net_cidr_match(const struct net_cidr *c, const struct net_addr *a)
{
    if (c->family == 0)
        return true;
    const unsigned char *p;
    int n;
    unsigned char mapped[4];
    if (a->sa.ss_family == AF_INET) {
        p = (const unsigned char *)&a->in4.sin_addr;
        n = 4;
        if (c->family != AF_INET)
            return false;
    } else {
        p = (const unsigned char *)&a->in6.sin6_addr;
        n = 16;
        if (c->family == AF_INET) {
            /* an IPv4-mapped IPv6 peer matches IPv4 blocks */
            static const unsigned char pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            if (memcmp(p, pre, 12) != 0)
                return false;
            memcpy(mapped, p + 12, 4);
            p = mapped;
            n = 4;
        }
    }
    for (int i = 0; i < n; i++)
        if ((p[i] & c->mask[i]) != c->addr[i])
            return false;
    return true;
}

int net_defer_accept(int fd)
{
    int secs = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof(secs));
}
