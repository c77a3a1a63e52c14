/* libFuzzer target: the realip module's reading of client addresses from
 * X-Forwarded-For / X-Real-IP style fields (src/proxy/realip.c), which any
 * client behind a trusted proxy controls. The first byte picks the options
 * (bit 0: real_ip_recursive, bit 1: X-Forwarded-For instead of X-Real-IP);
 * the rest is field lines "Name: value\n".
 * Invariants: the client address is either the connection's, untouched, or
 * a well-formed IPv4/IPv6 address; an IPv4 one appears verbatim in the
 * fields; without real_ip_recursive the trusted-peer rule is applied once. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/realip.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

#define MAXF 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static struct net_cidr from[4];
    static struct net_addr peer;
    static bool init;
    if (!init) {
        const char *nets[] = {"127.0.0.0/8", "10.0.0.0/8", "::1", "2001:db8::/32"};
        for (int i = 0; i < 4; i++)
            CHECK(net_cidr_parse(nets[i], &from[i]) == 0);
        const char *msg;
        CHECK(net_addr_parse("10.0.0.7:4242", 0, false, &peer, &msg) == 0);
        init = true;
    }
    struct loc_conf lc;
    memset(&lc, 0, sizeof(lc));
    lc.realip_from = from;
    lc.nrealip_from = 4;
    lc.realip_recursive = data[0] & 1;
    lc.realip_header = (data[0] & 2) ? "X-Forwarded-For" : NULL;

    struct http_field f[MAXF];
    size_t nf = 0;
    const char *p = (const char *)data + 1;
    size_t len = size - 1, i = 0;
    while (i < len && nf < MAXF) {
        const char *nl = memchr(p + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - p) : len;
        const char *colon = memchr(p + i, ':', e - i);
        if (colon)
            f[nf++] = (struct http_field){slice_make(p + i, (size_t)(colon - (p + i))),
                                          slice_make(colon + 1, e - (size_t)(colon + 1 - p))};
        i = e + 1;
    }

    static struct exchange ex;
    memset(&ex, 0, sizeof(ex));
    arena_init(&ex.arena, 4096, 0);
    ex.peer = &peer;
    ex.req_fields = f;
    ex.nreq_fields = nf;
    realip_apply(&ex, &lc);
    if (ex.realip_orig) {
        CHECK(ex.realip_orig == &peer);
        CHECK(ex.peer != &peer);
        int fam = ex.peer->sa.ss_family;
        CHECK(fam == AF_INET || fam == AF_INET6);
        CHECK(ex.peer->len ==
              (fam == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)));
        char ip[64];
        size_t n = net_addr_ip(ex.peer, ip, sizeof(ip));
        CHECK(n > 0 && n < sizeof(ip));
        if (fam == AF_INET) {
            bool seen = false;
            for (size_t k = 0; k < nf && !seen; k++)
                seen = memmem(f[k].value.p, f[k].value.len, ip, n) != NULL;
            CHECK(seen);
        }
        /* applied once per request */
        const struct net_addr *now = ex.peer;
        realip_apply(&ex, &lc);
        CHECK(ex.peer == now);
    } else {
        CHECK(ex.peer == &peer);
    }
    arena_deinit(&ex.arena);
    return 0;
}
