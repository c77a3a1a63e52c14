/* HTTP/2 session helpers: RFC 9113 8.2.2 field rules, trailer translation,
 * and the http2 directives' merge. */
#include <criterion/criterion.h>
#include <string.h>
#include <unistd.h>

#include "http2/h2.h"
#include "proxy/conf.h"

Test(http2, connection_specific_fields)
{
    const char *bad[] = {"connection",        "keep-alive", "proxy-connection",
                         "transfer-encoding", "upgrade",    "te"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert(h2_field_is_connection_specific(slice_cstr(bad[i])), "%s", bad[i]);
    cr_assert(!h2_field_is_connection_specific(SLICE_LIT("content-type")));
    cr_assert(!h2_field_is_connection_specific(SLICE_LIT("cookie")));
    cr_assert(!h2_field_is_connection_specific(SLICE_LIT("x-connection")));
    /* RFC 9113 8.2.2 does not list it: HTTP/2 requests may announce trailers
     * (h2spec generic 4/4, POST with trailers) */
    cr_assert(!h2_field_is_connection_specific(SLICE_LIT("trailer")));
}

Test(http2, trailers_lower_cased_and_filtered)
{
    const char *t = "X-Checksum: abc\r\nConnection: close\r\nbad line\r\n"
                    "Grpc-Status:  0 \r\nContent-Length: 5\r\nbad name: v\r\n";
    char lower[128];
    struct http_field f[8];
    size_t n = h2_parse_trailers(slice_cstr(t), lower, f, 8);
    cr_assert_eq(n, 2);
    cr_assert(slice_eq(f[0].name, SLICE_LIT("x-checksum")));
    cr_assert(slice_eq(f[0].value, SLICE_LIT("abc")));
    cr_assert(slice_eq(f[1].name, SLICE_LIT("grpc-status")));
    cr_assert(slice_eq(f[1].value, SLICE_LIT("0")));
}

Test(http2, trailers_bounded_by_max)
{
    const char *t = "a: 1\r\nb: 2\r\nc: 3\r\n";
    char lower[64];
    struct http_field f[2];
    cr_assert_eq(h2_parse_trailers(slice_cstr(t), lower, f, 2), 2);
    cr_assert_eq(h2_parse_trailers(SLICE_NULL, lower, f, 2), 0);
    cr_assert_eq(h2_parse_trailers(SLICE_LIT("no-newline: x"), lower, f, 2), 1);
}

static struct snapshot *load(const char *text)
{
    char path[] = "/tmp/portico_h2_unit_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char err[512] = "";
    struct snapshot *s = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    cr_assert(s, "%s", err);
    return s;
}

Test(http2, directives_merge_and_listen_flag, .init = conf_register_all)
{
    struct snapshot *s =
        load("events {} http {\n"
             "  http2_max_concurrent_streams 64; http2_idle_timeout 10s;\n"
             "  server { listen 127.0.0.1:18501 http2; http2_initial_window_size 1m;\n"
             "           location / { return 200; } }\n"
             "  server { listen 127.0.0.1:18502; location / { return 200; } }\n"
             "  server { listen 127.0.0.1:18503; http2 on; http2_max_header_size 8k;\n"
             "           location / { return 200; } }\n"
             "}\n");
    cr_assert_eq(s->nservers, 3);
    const struct h2_conf *a = &s->servers[0]->h2, *b = &s->servers[1]->h2, *c = &s->servers[2]->h2;
    cr_assert(a->enable && s->servers[0]->http2);
    cr_assert_eq(a->max_concurrent_streams, 64);
    cr_assert_eq(a->initial_window_size, 1 << 20);
    cr_assert_eq(a->idle_timeout_ms, 10000);
    cr_assert_eq(a->max_header_size, 32768);
    cr_assert(!b->enable && !s->servers[1]->http2);
    cr_assert_eq(b->initial_window_size, 65536);
    cr_assert_eq(b->body_preread, 1 << 20);
    cr_assert(c->enable);
    cr_assert_eq(c->max_header_size, 8192);
    for (size_t i = 0; i < s->nlistens; i++) {
        bool h2 = h2_listen_enabled(&s->listens[i]);
        cr_assert_eq(h2, net_addr_port(&s->listens[i].addr) != 18502, "%s", s->listens[i].text);
    }
    snapshot_unref(s);
}

Test(http2, h2c_only_listen, .init = conf_register_all)
{
    struct snapshot *s =
        load("events {} http {\n"
             "  server { listen 127.0.0.1:18504 h2c_only; location / { return 200; } }\n"
             "  server { listen 127.0.0.1:18504; server_name b; }\n"
             "  server { listen 127.0.0.1:18505 http2; location / { return 200; } }\n"
             "}\n");
    for (size_t i = 0; i < s->nlistens; i++) {
        const struct listen_set *ls = &s->listens[i];
        bool only = net_addr_port(&ls->addr) == 18504;
        cr_assert_eq(ls->h2c_only, only, "%s", ls->text);
        /* h2c_only implies http2, for every server of the address */
        cr_assert(h2_listen_enabled(ls), "%s", ls->text);
        for (size_t k = 0; k < ls->nservers; k++)
            cr_assert(ls->servers[k]->http2, "%s", ls->text);
    }
    snapshot_unref(s);
}

Test(http2, directive_errors, .init = conf_register_all)
{
    const char *bad[] = {
        "events {} http { server { http2 maybe; } }",
        "events {} http { server { http2 on; http2 off; } }",
        "events {} http { server { http2_max_concurrent_streams 0; } }",
        "events {} http { server { http2_max_header_size 100; } }",
        "events {} http { server { location / { http2_idle_timeout 1s; } } }",
        "events {} http { server { listen 127.0.0.1:18506 ssl h2c_only; } }",
        "events {} http { server { listen 127.0.0.1:18506 h2c_only=on; } }",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char path[] = "/tmp/portico_h2_unit_XXXXXX";
        int fd = mkstemp(path);
        cr_assert_eq(write(fd, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
        close(fd);
        char err[512] = "";
        struct snapshot *s = conf_load(path, NULL, err, sizeof(err));
        unlink(path);
        cr_assert_null(s, "accepted: %s", bad[i]);
        cr_assert(strstr(err, ":1:"), "%s", err);
    }
}
