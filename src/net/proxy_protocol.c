#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <string.h>

static const unsigned char v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                         0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

#define V1_MAX 107

/* A v1 address token: the family's textual form, nothing else. */
static bool v1_addr(const char *s, size_t n, int fam, struct net_addr *a)
{
    char buf[48];
    if (!n || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    memset(a, 0, sizeof(*a));
    if (fam == AF_INET && inet_pton(AF_INET, buf, &a->in4.sin_addr) == 1) {
        a->in4.sin_family = AF_INET;
        a->len = sizeof(a->in4);
        return true;
    }
    if (fam == AF_INET6 && inet_pton(AF_INET6, buf, &a->in6.sin6_addr) == 1) {
        a->in6.sin6_family = AF_INET6;
        a->len = sizeof(a->in6);
        return true;
    }
    return false;
}

/* A v1 port: 0..65535, no leading zero (except "0"), no sign. */
static bool v1_port(const char *s, size_t n, struct net_addr *a)
{
    if (!n || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return false;
    if (a->sa.ss_family == AF_INET)
        a->in4.sin_port = htons((uint16_t)v);
    else
        a->in6.sin6_port = htons((uint16_t)v);
    return true;
}

static int parse_v1(const unsigned char *buf, size_t len, struct pp_header *out)
{
    const char *p = (const char *)buf;
    size_t lim = len < V1_MAX ? len : V1_MAX;
    const char *lf = memchr(p, '\n', lim);
    const char *cr = memchr(p, '\r', lim);
    if (cr && cr + 1 < p + len && cr[1] != '\n')
        return -1; /* a CR must end the line */
    if (!lf)
        return len >= V1_MAX ? -1 : 0;
    if (lf == p || lf[-1] != '\r')
        return -1; /* a bare LF */
    size_t hl = (size_t)(lf - 1 - p);
    memset(out, 0, sizeof(*out));
    /* "PROXY UNKNOWN[ anything]" */
    if (hl >= 13 && memcmp(p + 6, "UNKNOWN", 7) == 0 && (hl == 13 || p[13] == ' '))
        return (int)hl + 2;
    int fam;
    if (hl > 11 && memcmp(p + 6, "TCP4 ", 5) == 0)
        fam = AF_INET;
    else if (hl > 11 && memcmp(p + 6, "TCP6 ", 5) == 0)
        fam = AF_INET6;
    else
        return -1;
    /* four fields separated by single spaces */
    const char *f[4];
    size_t fl[4];
    const char *s = p + 11, *end = p + hl;
    for (int i = 0; i < 4; i++) {
        const char *sp = i < 3 ? memchr(s, ' ', (size_t)(end - s)) : end;
        if (!sp)
            return -1;
        f[i] = s;
        fl[i] = (size_t)(sp - s);
        s = sp + 1;
    }
    if (!v1_addr(f[0], fl[0], fam, &out->src) || !v1_addr(f[1], fl[1], fam, &out->dst) ||
        !v1_port(f[2], fl[2], &out->src) || !v1_port(f[3], fl[3], &out->dst))
        return -1;
    out->has_addr = true;
    return (int)hl + 2;
}

static int parse_v2(const unsigned char *b, size_t len, struct pp_header *out)
{
    if (len < 16)
        return 0;
    if ((b[12] & 0xf0) != 0x20)
        return -1; /* version 2 only */
    unsigned cmd = b[12] & 0x0f;
    if (cmd > 1)
        return -1;
    size_t alen = (size_t)b[14] << 8 | b[15];
    if (16 + alen > PP_MAX_HEADER)
        return -1;
    if (len < 16 + alen)
        return 0;
    memset(out, 0, sizeof(*out));
    if (cmd == 0) /* LOCAL: the balancer's own connection (health checks) */
        return (int)(16 + alen);
    const unsigned char *a = b + 16;
    switch (b[13]) {
    case 0x11: /* TCP over IPv4 */
    case 0x12: /* UDP over IPv4 (the addresses are still the client's) */
        if (alen < 12)
            return -1;
        out->src.in4.sin_family = out->dst.in4.sin_family = AF_INET;
        memcpy(&out->src.in4.sin_addr, a, 4);
        memcpy(&out->dst.in4.sin_addr, a + 4, 4);
        memcpy(&out->src.in4.sin_port, a + 8, 2);
        memcpy(&out->dst.in4.sin_port, a + 10, 2);
        out->src.len = out->dst.len = sizeof(struct sockaddr_in);
        out->has_addr = true;
        break;
    case 0x21:
    case 0x22:
        if (alen < 36)
            return -1;
        out->src.in6.sin6_family = out->dst.in6.sin6_family = AF_INET6;
        memcpy(&out->src.in6.sin6_addr, a, 16);
        memcpy(&out->dst.in6.sin6_addr, a + 16, 16);
        memcpy(&out->src.in6.sin6_port, a + 32, 2);
        memcpy(&out->dst.in6.sin6_port, a + 34, 2);
        out->src.len = out->dst.len = sizeof(struct sockaddr_in6);
        out->has_addr = true;
        break;
    default: /* UNSPEC, unix sockets: keep the connection's address */
        break;
    }
    return (int)(16 + alen);
}

int pp_parse(const unsigned char *buf, size_t len, struct pp_header *out)
{
    /* which version: as much of the signature as has arrived must match */
    size_t n = len < 12 ? len : 12;
    if (n && buf[0] == 0x0d) {
        if (memcmp(buf, v2_sig, n) != 0)
            return -1;
        return len < 12 ? 0 : parse_v2(buf, len, out);
    }
    n = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", n) != 0)
        return -1;
    return len < 6 ? 0 : parse_v1(buf, len, out);
}
