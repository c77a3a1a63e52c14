/* Micro-benchmark of the HTTP/1 head parsers on real-world heads.
 * Build: cc -O2 -Isrc src/core/str.c src/http/http.c src/http1/h1.c
 *        bench/micro/h1_parse.c -o h1_parse; ./h1_parse [iterations] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http1/h1.h"

static const char curl_req[] = "GET /index.html HTTP/1.1\r\n"
                               "Host: www.example.com\r\n"
                               "User-Agent: curl/8.5.0\r\n"
                               "Accept: */*\r\n"
                               "\r\n";

static const char chrome_req[] =
    "GET /wiki/Reverse_proxy?action=view&oldid=1234567 HTTP/1.1\r\n"
    "Host: en.wikipedia.org\r\n"
    "Connection: keep-alive\r\n"
    "Cache-Control: max-age=0\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Referer: https://en.wikipedia.org/wiki/Load_balancing_(computing)\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
    "Cookie: WMF-Last-Access=12-May-2024; WMF-Last-Access-Global=12-May-2024; "
    "GeoIP=DE:BE:Berlin:52.52:13.40:v4; enwikimwuser-sessionId=0123456789abcdef0123; "
    "enwikiUserName=Example; centralauth_User=Example; centralauth_Token=abcdef0123456789abcdef; "
    "NetworkProbeLimit=0.001\r\n"
    "\r\n";

static const char api_req[] = "POST /api/v2/orders HTTP/1.1\r\n"
                              "Host: api.internal:8443\r\n"
                              "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWI"
                              "iOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U\r\n"
                              "Content-Type: application/json\r\n"
                              "Accept: application/json\r\n"
                              "X-Request-Id: 7f8c2a1e-4b5d-4c3a-9e2f-1a2b3c4d5e6f\r\n"
                              "User-Agent: okhttp/4.12.0\r\n"
                              "Content-Length: 348\r\n"
                              "\r\n";

static const char small_resp[] = "HTTP/1.1 200 OK\r\n"
                                 "Server: nginx\r\n"
                                 "Date: Sun, 12 May 2024 10:00:00 GMT\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 12\r\n"
                                 "Connection: keep-alive\r\n"
                                 "\r\n";

static const char big_resp[] =
    "HTTP/1.1 200 OK\r\n"
    "Date: Sun, 12 May 2024 10:00:00 GMT\r\n"
    "Content-Type: text/html; charset=UTF-8\r\n"
    "Transfer-Encoding: chunked\r\n"
    "Connection: keep-alive\r\n"
    "Vary: Accept-Encoding, Cookie\r\n"
    "Cache-Control: private, s-maxage=0, max-age=0, must-revalidate\r\n"
    "Last-Modified: Sat, 11 May 2024 08:12:45 GMT\r\n"
    "Content-Language: en\r\n"
    "Content-Encoding: gzip\r\n"
    "Strict-Transport-Security: max-age=106384710; includeSubDomains; preload\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Set-Cookie: WMF-Last-Access=12-May-2024;Path=/;HttpOnly;secure;Expires=Thu, 13 Jun 2024 "
    "00:00:00 GMT\r\n"
    "Set-Cookie: GeoIP=DE:BE:Berlin:52.52:13.40:v4; Path=/; secure; Domain=.wikipedia.org\r\n"
    "Age: 0\r\n"
    "\r\n";

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

#define ROUNDS 7

static volatile size_t sink;

static void bench_req(const char *name, const char *s, size_t n, long iters)
{
    struct http_field f[64];
    struct h1_request r;
    enum h1_error e;
    if (h1_parse_request(s, n, NULL, f, 64, &r, &e) != H1_DONE) {
        fprintf(stderr, "%s: %s\n", name, h1_error_str(e));
        exit(1);
    }
    double ns = 1e30; /* best of ROUNDS: other load on the machine only adds */
    for (int round = 0; round < ROUNDS; round++) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            h1_parse_request(s, n, NULL, f, 64, &r, &e);
            sink += r.head_len;
        }
        double t = (now_ns() - t0) / (double)iters;
        ns = t < ns ? t : ns;
    }
    printf("request  %-8s %4zu B %2zu fields %7.1f ns/req %6.2f GB/s\n", name, n, r.nfields, ns,
           (double)n / ns);
}

static void bench_resp(const char *name, const char *s, size_t n, long iters)
{
    struct http_field f[64];
    struct h1_response r;
    enum h1_error e;
    if (h1_parse_response(s, n, NULL, f, 64, &r, &e) != H1_DONE) {
        fprintf(stderr, "%s: %s\n", name, h1_error_str(e));
        exit(1);
    }
    double ns = 1e30; /* best of ROUNDS: other load on the machine only adds */
    for (int round = 0; round < ROUNDS; round++) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            h1_parse_response(s, n, NULL, f, 64, &r, &e);
            sink += r.head_len;
        }
        double t = (now_ns() - t0) / (double)iters;
        ns = t < ns ? t : ns;
    }
    printf("response %-8s %4zu B %2zu fields %7.1f ns/req %6.2f GB/s\n", name, n, r.nfields, ns,
           (double)n / ns);
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 300000;
    bench_req("curl", curl_req, sizeof(curl_req) - 1, iters);
    bench_req("chrome", chrome_req, sizeof(chrome_req) - 1, iters);
    bench_req("api", api_req, sizeof(api_req) - 1, iters);
    bench_resp("small", small_resp, sizeof(small_resp) - 1, iters);
    bench_resp("large", big_resp, sizeof(big_resp) - 1, iters);
    return 0;
}
