/* libFuzzer target: the PROXY protocol v1/v2 parser (src/net/proxy_protocol.c),
 * the first bytes of every connection on a `listen ... proxy_protocol`.
 * Invariants: a header length is within the input and PP_MAX_HEADER; every
 * shorter prefix of a valid header asks for more; addresses, when there are
 * any, are well-formed IPv4/IPv6 of one family. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>

#include "net/proxy_protocol.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pp_header h;
    int r = pp_parse(data, size, &h);
    CHECK(r >= -1);
    if (r <= 0)
        return 0;
    CHECK((size_t)r <= size && r <= PP_MAX_HEADER);
    if (h.has_addr) {
        int f = h.src.sa.ss_family;
        CHECK(f == AF_INET || f == AF_INET6);
        CHECK(h.dst.sa.ss_family == f);
        CHECK(h.src.len ==
              (f == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)));
    }
    struct pp_header h2;
    size_t probes[3] = {(size_t)r - 1, (size_t)r / 2, 1};
    for (int i = 0; i < 3; i++)
        CHECK(pp_parse(data, probes[i], &h2) == 0);
    return 0;
}
