/* libFuzzer target: the DNS answer reader (src/net/dns.c) that `resolver`
 * uses for upstream resolve servers and OCSP responders; a datagram from the
 * network. The first byte picks the question (A or AAAA, one of two names),
 * the rest is the answer, whose id is taken as the query's so the reader
 * gets past the id check.
 * Invariants: the verdict is -2..1; a found address is of the asked family
 * with the right length. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/dns.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int type = data[0] & 1 ? 28 : 1;
    const char *host = data[0] & 2 ? "a.example.com" : "origin.test.";
    const uint8_t *m = data + 1;
    size_t len = size - 1;
    unsigned char q[300];
    size_t qlen = net_dns_query(host, type, (uint16_t)(m[0] << 8 | m[1]), q, sizeof(q));
    CHECK(qlen > 12);
    struct net_addr out;
    memset(&out, 0xa5, sizeof(out));
    int r = net_dns_parse(m, len, q, qlen, &out);
    CHECK(r >= -2 && r <= 1);
    if (r == 1) {
        CHECK(out.sa.ss_family == (type == 1 ? AF_INET : AF_INET6));
        CHECK(out.len == (type == 1 ? sizeof(out.in4) : sizeof(out.in6)));
    }
    return 0;
}
