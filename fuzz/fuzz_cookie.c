/* libFuzzer target: the Set-Cookie rewriter of proxy_cookie_domain,
 * proxy_cookie_path and proxy_cookie_flags (src/proxy/cookie.c), which
 * reads every Set-Cookie field an upstream sends. The input is one field
 * value; the rules (loaded once) touch Domain, Path and every flag.
 * Invariants: no crash; the cookie's own "name=value" starts the result;
 * the result is never far longer than the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/cookie.h"
#include "proxy/exchange.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const char conf_text[] = "events {}\nhttp {\n"
                                "  proxy_cookie_domain internal.local $host;\n"
                                "  proxy_cookie_domain ~^(.+)\\.corp$ $1.example;\n"
                                "  proxy_cookie_path /internal/ /app/;\n"
                                "  proxy_cookie_path ~^/legacy/(.*)$ /old/$1;\n"
                                "  proxy_cookie_flags ~^s secure httponly samesite=lax;\n"
                                "  proxy_cookie_flags ~ nosecure nohttponly nosamesite;\n"
                                "  server { listen 127.0.0.1:8080; }\n"
                                "}\n";

static struct snapshot *snap;

static void setup(void)
{
    if (log_open("/dev/null", LOG_EMERG) < 0)
        abort();
    conf_register_all();
    char path[] = "/tmp/portico_fuzz_cookie_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, conf_text, sizeof(conf_text) - 1) != (ssize_t)sizeof(conf_text) - 1)
        abort();
    close(fd);
    char err[512] = "";
    snap = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    if (!snap) {
        fprintf(stderr, "fuzz_cookie: %s\n", err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!snap)
        setup();
    struct exchange ex;
    memset(&ex, 0, sizeof(ex));
    arena_init(&ex.arena, 4096, 0);
    ex.snap = snap;
    ex.lc = snap->http_lc;
    ex.host = SLICE_LIT("shop.test");
    char *copy = malloc(size ? size : 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    struct slice in = slice_make(copy, size), out = cookie_rewrite(&ex, in);
    CHECK(out.len <= 2 * size + 400);
    const char *semi = memchr(copy, ';', size);
    size_t pl = semi ? (size_t)(semi - copy) : size;
    while (pl && (copy[pl - 1] == ' ' || copy[pl - 1] == '\t'))
        pl--;
    size_t lead = 0;
    while (lead < pl && (copy[lead] == ' ' || copy[lead] == '\t'))
        lead++;
    if (out.p != in.p)
        CHECK(out.len >= pl - lead && memcmp(out.p, copy + lead, pl - lead) == 0);
    arena_deinit(&ex.arena);
    free(copy);
    return 0;
}
