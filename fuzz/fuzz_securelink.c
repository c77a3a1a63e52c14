/* libFuzzer target: the secure link module's reading of client input
 * (src/proxy/securelink.c): "md5,expires" from the query (base64url,
 * digits) and the /prefix/<hex>/link form of the URI. The input is split
 * at its first NUL: the query, then the URI.
 * Invariants: no crash; $secure_link is "", "0" or "1" in the first form
 * and a suffix of the URI in the second. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "proxy/conf.h"
#include "proxy/exchange.h"
#include "proxy/securelink.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const char conf_text[] = "events {}\nhttp {\n  server { listen 127.0.0.1:8080;\n"
                                "    location /dl/ { secure_link $arg_md5,$arg_expires;\n"
                                "      secure_link_md5 \"$secure_link_expires$uri secret\"; }\n"
                                "    location /p/ { secure_link_secret word; }\n  }\n}\n";

static struct snapshot *snap;
static const struct loc_conf *dl, *pl;

static void setup(void)
{
    if (log_open("/dev/null", LOG_EMERG) < 0)
        abort();
    conf_register_all();
    char path[] = "/tmp/portico_fuzz_sl_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, conf_text, sizeof(conf_text) - 1) != (ssize_t)sizeof(conf_text) - 1)
        abort();
    close(fd);
    char err[512] = "";
    snap = conf_load(path, NULL, err, sizeof(err));
    unlink(path);
    if (!snap) {
        fprintf(stderr, "fuzz_securelink: %s\n", err);
        abort();
    }
    const struct srv_conf *sc = snap->servers[0];
    for (size_t i = 0; i < sc->nlocs; i++) {
        if (!strcmp(sc->locs[i]->pattern, "/dl/"))
            dl = sc->locs[i]->conf;
        if (!strcmp(sc->locs[i]->pattern, "/p/"))
            pl = sc->locs[i]->conf;
    }
    if (!dl || !pl)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!snap)
        setup();
    char *copy = malloc(size + 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    copy[size] = '\0';
    const char *nul = memchr(copy, '\0', size);
    size_t ql = nul ? (size_t)(nul - copy) : size;
    struct exchange ex;
    memset(&ex, 0, sizeof(ex));
    arena_init(&ex.arena, 4096, 0);
    ex.snap = snap;
    ex.args = slice_make(copy, ql);
    ex.has_args = ql > 0;
    ex.uri = nul ? slice_make(nul + 1, size - ql - 1) : SLICE_LIT("/dl/x");
    ex.lc = dl;
    struct slice v = securelink_value(&ex);
    CHECK(v.len == 0 || (v.len == 1 && (v.p[0] == '0' || v.p[0] == '1')));
    (void)securelink_expires(&ex);
    ex.lc = pl;
    v = securelink_value(&ex);
    CHECK(v.len <= ex.uri.len && (!v.len || v.p + v.len == ex.uri.p + ex.uri.len));
    arena_deinit(&ex.arena);
    free(copy);
    return 0;
}
