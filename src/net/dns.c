#include "net/dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

size_t net_dns_query(const char *host, int type, uint16_t id, unsigned char *q, size_t cap)
{
    size_t o = 12;
    if (cap < 12 + 1 + 4)
        return 0;
    memset(q, 0, 12);
    q[0] = (unsigned char)(id >> 8), q[1] = (unsigned char)id;
    q[2] = 0x01; /* recursion desired */
    q[5] = 1;    /* one question */
    size_t hl = strlen(host);
    if (hl && host[hl - 1] == '.')
        hl--; /* a fully qualified name's root dot */
    if (hl == 0 || hl > 253)
        return 0;
    for (size_t i = 0; i < hl;) {
        const char *l = host + i;
        const char *dot = memchr(l, '.', hl - i);
        size_t n = dot ? (size_t)(dot - l) : hl - i;
        if (n == 0 || n > 63 || o + n + 1 + 5 > cap)
            return 0;
        q[o++] = (unsigned char)n;
        memcpy(q + o, l, n);
        o += n;
        i += n + (dot ? 1 : 0);
    }
    q[o++] = 0;
    q[o++] = (unsigned char)(type >> 8), q[o++] = (unsigned char)type;
    q[o++] = 0, q[o++] = 1; /* IN */
    return o;
}

/* Skip a (possibly compressed) name at p; the offset after it or -1. */
static long skip_name(const unsigned char *m, size_t len, size_t p)
{
    while (p < len) {
        if ((m[p] & 0xc0) == 0xc0)
            return p + 2 <= len ? (long)(p + 2) : -1;
        if (m[p] & 0xc0)
            return -1; /* reserved label types */
        if (m[p] == 0)
            return (long)(p + 1);
        p += (size_t)m[p] + 1;
    }
    return -1;
}

int net_dns_parse(const unsigned char *m, size_t len, const unsigned char *q, size_t qlen,
                  struct net_addr *out)
{
    if (len < 12 || qlen < 17 || len < qlen)
        return -1;
    if (m[0] != q[0] || m[1] != q[1] || !(m[2] & 0x80))
        return -1; /* another id, or not a response */
    if (m[2] & 0x02)
        return -1; /* truncated: over UDP we cannot trust the rest */
    if ((m[4] << 8 | m[5]) != 1 || memcmp(m + 12, q + 12, qlen - 12) != 0)
        return -1; /* not the question we asked (0x20 case is kept as sent) */
    int rcode = m[3] & 0x0f;
    if (rcode == 3)
        return 0; /* NXDOMAIN */
    if (rcode != 0)
        return -2; /* SERVFAIL, REFUSED...: ask the next server */
    int type = q[qlen - 4] << 8 | q[qlen - 3];
    unsigned an = (unsigned)(m[6] << 8 | m[7]);
    size_t p = qlen;
    for (unsigned i = 0; i < an; i++) {
        long np = skip_name(m, len, p);
        if (np < 0 || (size_t)np + 10 > len)
            return -1;
        p = (size_t)np;
        int rtype = m[p] << 8 | m[p + 1];
        size_t rdlen = (size_t)(m[p + 8] << 8 | m[p + 9]);
        p += 10;
        if (p + rdlen > len)
            return -1;
        if (rtype == type && type == 1 && rdlen == 4) {
            memset(out, 0, sizeof(*out));
            out->in4.sin_family = AF_INET;
            memcpy(&out->in4.sin_addr, m + p, 4);
            out->len = sizeof(out->in4);
            return 1;
        }
        if (rtype == type && type == 28 && rdlen == 16) {
            memset(out, 0, sizeof(*out));
            out->in6.sin6_family = AF_INET6;
            memcpy(&out->in6.sin6_addr, m + p, 16);
            out->len = sizeof(out->in6);
            return 1;
        }
        p += rdlen; /* a CNAME or another type: the chain's records follow */
    }
    return 0;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One question to one server: 1 found, 0 answered without, -1 no answer. */
static int ask(const struct net_addr *server, const char *host, int type, uint32_t timeout_ms,
               struct net_addr *out)
{
    unsigned char q[300], m[1500];
    uint16_t id;
    if (getrandom(&id, sizeof(id), 0) != sizeof(id))
        id = (uint16_t)(mono_ms() ^ (uintptr_t)&id);
    size_t qlen = net_dns_query(host, type, id, q, sizeof(q));
    if (!qlen)
        return 0; /* a name that cannot exist */
    int fd = socket(server->sa.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* connected: only the server's datagrams are taken */
    int rc = -1;
    if (connect(fd, (const struct sockaddr *)&server->sa, server->len) < 0 ||
        send(fd, q, qlen, 0) != (ssize_t)qlen)
        goto out;
    uint64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        ssize_t len = recv(fd, m, sizeof(m), 0);
        if (len < 0 && errno == EINTR)
            continue;
        if (len < 0)
            break; /* refused (ICMP): this server is not there */
        rc = net_dns_parse(m, (size_t)len, q, qlen, out);
        if (rc == -2) {
            rc = -1; /* the server failed: the next one */
            break;
        }
        if (rc >= 0)
            break; /* a stray or forged datagram (-1) does not end the wait */
    }
out:
    close(fd);
    return rc;
}

int net_dns_lookup(const struct net_addr *servers, size_t n, const char *host, uint32_t timeout_ms,
                   bool ipv6, struct net_addr *out)
{
    for (size_t i = 0; i < n; i++) {
        int r = ask(&servers[i], host, 1, timeout_ms, out);
        if (r == 0 && ipv6)
            r = ask(&servers[i], host, 28, timeout_ms, out);
        if (r == 1)
            return 0;
        if (r == 0) {
            errno = ENOENT;
            return -1; /* the name has no address: the next server will not differ */
        }
    }
    errno = EAGAIN;
    return -1;
}
