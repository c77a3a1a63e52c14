/* Router lookup cost: a server with 50 prefix, 10 exact and 10 regex
 * locations, and one listen address with 100 virtual hosts.
 *
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Isrc src/core/str.c src/core/arena.c \
 *       src/router/router.c bench/micro/router_lookup.c -lpcre2-8 -o router_lookup
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "router/router.h"

#define ITERS 2000000

static struct arena A;

static struct location *mkloc(enum location_match m, const char *pat)
{
    struct location *l = arena_calloc(&A, sizeof(*l));
    l->match = m;
    l->pattern = pat;
    l->pattern_len = strlen(pat);
    l->conf = (void *)pat;
    return l;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static volatile const void *sink;

static void bench_path(const struct location_set *s, const char *path)
{
    struct route_captures c;
    struct slice p = slice_cstr(path);
    double t0 = now_ns();
    for (int i = 0; i < ITERS; i++)
        sink = router_find_location(s, p, &c);
    double ns = (now_ns() - t0) / ITERS;
    const struct location *l = router_find_location(s, p, &c);
    printf("location %-42s -> %-30s %6.1f ns\n", path, l ? l->pattern : "(none)", ns);
}

static void bench_host(const struct vhost_table *t, const char *host)
{
    struct route_captures c;
    struct slice h = slice_cstr(host);
    double t0 = now_ns();
    for (int i = 0; i < ITERS; i++)
        sink = router_find_vhost(t, h, &c);
    double ns = (now_ns() - t0) / ITERS;
    const struct vhost *v = router_find_vhost(t, h, &c);
    printf("vhost    %-42s -> %-30s %6.1f ns\n", host, v ? v->names[0] : "(none)", ns);
}

int main(void)
{
    static const char *sections[] = {"api",  "static", "img",   "docs",  "blog",
                                     "shop", "user",   "admin", "media", "assets"};
    static const char *subs[] = {"", "v1/", "v2/", "private/", "public/"};
    static const char *regexes[] = {
        "\\.(gif|jpg|jpeg|png|webp)$",
        "\\.php$",
        "^/download/.+\\.(zip|tar\\.gz)$",
        "^/u/(\\d+)/profile$",
        "\\.(css|js)$",
        "^/feeds/(?<feed>\\w+)\\.xml$",
        "/\\.git",
        "^/legacy/",
        "\\.(mp4|webm)$",
        "^/health(z)?$",
    };
    char err[256];
    struct location *locs[80];
    size_t n = 0;

    arena_init(&A, 1 << 16, 0);
    locs[n++] = mkloc(LOC_PREFIX, "/");
    for (size_t i = 0; i < 10; i++)
        for (size_t j = 0; j < 5; j++) {
            if (i == 0 && j == 0)
                continue;
            char *p = arena_printf(&A, "/%s/%s", sections[i], subs[j]);
            locs[n++] = mkloc(i == 1 ? LOC_PREFIX_NOREGEX : LOC_PREFIX, p);
        }
    for (size_t i = 0; i < 10; i++)
        locs[n++] = mkloc(LOC_EXACT, arena_printf(&A, "/%s", sections[i]));
    for (size_t i = 0; i < 10; i++)
        locs[n++] = mkloc(i % 2 ? LOC_REGEX_CI : LOC_REGEX, regexes[i]);
    struct location_set *s = router_locations_build(&A, locs, n, err, sizeof(err));
    if (!s) {
        fprintf(stderr, "locations: %s\n", err);
        return 1;
    }

    struct vhost *servers[100];
    for (int i = 0; i < 100; i++) {
        struct vhost *v = arena_calloc(&A, sizeof(*v));
        const char **names = arena_alloc(&A, 2 * sizeof(*names));
        if (i < 80) {
            names[0] = arena_printf(&A, "site%d.example.com", i);
            names[1] = arena_printf(&A, "www.site%d.example.com", i);
            v->nnames = 2;
        } else if (i < 90) {
            names[0] = arena_printf(&A, "*.tenant%d.example.org", i);
            v->nnames = 1;
        } else if (i < 95) {
            names[0] = arena_printf(&A, "mail%d.*", i);
            v->nnames = 1;
        } else {
            names[0] = arena_printf(&A, "~^(?<app>[a-z]+)\\.r%d\\.example\\.net$", i);
            v->nnames = 1;
        }
        v->names = names;
        servers[i] = v;
    }
    struct vhost_table *t = router_vhosts_build(&A, servers, 100, -1, err, sizeof(err));
    if (!t) {
        fprintf(stderr, "vhosts: %s\n", err);
        return 1;
    }

    printf("%zu locations, 100 servers, %d iterations each\n", n, ITERS);
    bench_path(s, "/");
    bench_path(s, "/docs");
    bench_path(s, "/api/v2/users/17");
    bench_path(s, "/static/v1/app.js");
    bench_path(s, "/media/public/a/b/c/d/e/f/g/h/index.html");
    bench_path(s, "/img/v1/photo.jpg");
    bench_path(s, "/u/12345/profile");
    bench_path(s, "/nothing/matches/here/at/all.txt");
    bench_host(t, "site42.example.com");
    bench_host(t, "WWW.SITE79.EXAMPLE.COM:8443");
    bench_host(t, "a.b.tenant85.example.org");
    bench_host(t, "mail92.example.io");
    bench_host(t, "shop.r97.example.net");
    bench_host(t, "unknown.invalid");

    for (size_t i = 0; i < n; i++)
        router_location_deinit(locs[i]);
    router_vhosts_free(t);
    router_thread_deinit();
    arena_deinit(&A);
    return 0;
}
