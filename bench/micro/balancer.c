/* Balancer decision cost: ns per pick for each algorithm, with 3 and 100
 * servers. One thread: the uncontended cost of the shared state (spin flag,
 * atomics). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "upstream/upstream.h"

#define ITERS 2000000

static struct arena A;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static struct ups_group *make(const char *method, size_t n)
{
    static const struct cf_module *const mods[] = {&ups_cf_module};
    cf_register(mods, 1);
    size_t cap = 256 + n * 48;
    char *text = malloc(cap);
    size_t o = (size_t)snprintf(text, cap, "upstream u { %s;\n", method);
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(text + o, cap - o, "server 10.0.%zu.%zu:80 weight=%zu;\n", i / 250,
                              i % 250 + 1, i % 3 + 1);
    snprintf(text + o, cap - o, "}\n");
    char err[256];
    struct cf_node *root = cf_parse_string(&A, "bench", text, strlen(text), err, sizeof(err));
    struct cf_ctx cx = {.arena = &A, .err = err, .errlen = sizeof(err), .context = CF_HTTP};
    struct ups_group *g = arena_calloc(&A, sizeof(*g));
    if (!root || ups_group_parse(&cx, root->children, g) < 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    free(text);
    return g;
}

static volatile const void *sink;

static void bench(const char *label, const char *method, size_t n)
{
    struct ups_group *g = make(method, n);
    struct net_addr client;
    const char *msg;
    net_addr_parse("192.0.2.10:5555", 80, false, &client, &msg);
    char keys[64][24];
    for (int i = 0; i < 64; i++)
        snprintf(keys[i], sizeof(keys[i]), "/item/%d", i * 7919);
    struct ups_pick_ctx cx = {.now_ms = 1000, .client = &client};
    double t0 = now_ns();
    for (int i = 0; i < ITERS; i++) {
        cx.key = slice_cstr(keys[i & 63]);
        sink = ups_select(g, &cx);
    }
    double ns = (now_ns() - t0) / ITERS;
    printf("%-22s %3zu servers %8.1f ns/pick\n", label, n, ns);
}

int main(void)
{
    arena_init(&A, 1 << 16, 0);
    static const struct {
        const char *label, *method;
    } algos[] = {
        {"round_robin", "keepalive 1"}, /* no method line: the default */
        {"least_conn", "least_conn"},
        {"ip_hash", "ip_hash"},
        {"hash", "hash $request_uri"},
        {"hash consistent", "hash $request_uri consistent"},
        {"random", "random"},
        {"random two", "random two least_conn"},
        {"least_time header", "least_time header"},
    };
    for (size_t a = 0; a < sizeof(algos) / sizeof(algos[0]); a++) {
        bench(algos[a].label, algos[a].method, 3);
        bench(algos[a].label, algos[a].method, 100);
    }
    arena_deinit(&A);
    return 0;
}
