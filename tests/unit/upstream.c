/* Unit tests for src/upstream: `upstream {}` parsing, smooth weighted
 * round-robin, backup/down servers, passive health, and the per-worker idle
 * connection pool against a real listening socket on 127.0.0.1. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/log.h"
#include "core/loop.h"
#include "net/net.h"
#include "upstream/upstream.h"

static struct arena A;
static char err[512];

static void setup(void)
{
    static const struct cf_module *const mods[] = { &ups_cf_module };
    cf_register(mods, 1);
    log_current_level = LOG_ERR; /* no "temporarily disabled" lines */
    arena_init(&A, 4096, 0);
    err[0] = '\0';
}

static void teardown(void)
{
    arena_deinit(&A);
}

TestSuite(ups_parse, .init = setup, .fini = teardown);
TestSuite(ups_balance, .init = setup, .fini = teardown);
TestSuite(ups_health, .init = setup, .fini = teardown);
TestSuite(ups_pool, .init = setup, .fini = teardown);

/* Parse "upstream name { ... }" (the first directive of `text`). NULL with
 * err set on failure. */
static struct ups_group *group_try(const char *text)
{
    struct cf_node *root = cf_parse_string(&A, "t.conf", text, strlen(text), err, sizeof(err));
    cr_assert_not_null(root, "%s", err);
    cr_assert_not_null(root->children);
    struct cf_ctx cx = { .arena = &A, .err = err, .errlen = sizeof(err), .context = CF_HTTP };
    struct ups_group *g = arena_calloc(&A, sizeof(*g));
    cr_assert_not_null(g);
    if (ups_group_parse(&cx, root->children, g) < 0)
        return NULL;
    return g;
}

static struct ups_group *group(const char *text)
{
    struct ups_group *g = group_try(text);
    cr_assert_not_null(g, "%s", err);
    return g;
}

static void group_bad(const char *text, const char *msg)
{
    cr_assert_null(group_try(text), "accepted: %s", text);
    cr_assert_str_eq(err, msg, "input: %s", text);
}

static char name_of(const struct ups_group *g, const struct ups_server *s)
{
    cr_assert_not_null(s);
    return (char)('a' + ups_server_index(g, s));
}

/* ---- parsing ---- */

Test(ups_parse, servers_and_defaults)
{
    struct ups_group *g = group("upstream backend {\n"
                                "    server 127.0.0.1:8081 weight=5;\n"
                                "    server 127.0.0.1;\n"
                                "    server [::1]:9000 max_fails=3 fail_timeout=30s backup;\n"
                                "    server 10.0.0.1:1 down;\n"
                                "}\n");
    cr_assert_str_eq(g->name, "backend");
    cr_assert_str_eq(g->file, "t.conf");
    cr_assert_eq(g->line, 1);
    cr_assert_eq(g->nservers, 4);
    cr_assert_not_null(g->balancer);
    cr_assert_str_eq(g->balancer->name, "round_robin");
    cr_assert_not_null(g->rr_current);
    cr_assert_not(g->implicit);

    struct ups_server *s = g->servers;
    cr_assert_str_eq(s[0].name, "127.0.0.1:8081");
    cr_assert_str_eq(s[0].addr_text, "127.0.0.1:8081");
    cr_assert_eq(s[0].weight, 5);
    cr_assert_eq(s[0].max_fails, 1);
    cr_assert_eq(s[0].fail_timeout_ms, 10000);
    cr_assert_not(s[0].backup);
    cr_assert_not(s[0].down);

    cr_assert_str_eq(s[1].addr_text, "127.0.0.1:80", "port 80 by default");
    cr_assert_eq(s[1].weight, 1);

    cr_assert_str_eq(s[2].addr_text, "[::1]:9000");
    cr_assert_eq(s[2].max_fails, 3);
    cr_assert_eq(s[2].fail_timeout_ms, 30000);
    cr_assert(s[2].backup);

    cr_assert(s[3].down);

    /* keep-alive settings unset: finalized defaults */
    cr_assert_eq(g->keepalive, 0);
    cr_assert_eq(g->keepalive_timeout_ms, 60000);
    cr_assert_eq(g->keepalive_requests, 1000);
}

Test(ups_parse, keepalive_settings)
{
    struct ups_group *g = group("upstream k {\n"
                                "    server 127.0.0.1:1;\n"
                                "    keepalive 16;\n"
                                "    keepalive_timeout 1m30s;\n"
                                "    keepalive_requests 7;\n"
                                "}\n");
    cr_assert_eq(g->keepalive, 16);
    cr_assert_eq(g->keepalive_timeout_ms, 90000);
    cr_assert_eq(g->keepalive_requests, 7);
    g = group("upstream k { server 127.0.0.1:1; keepalive_timeout 500ms; keepalive_requests 0; }");
    cr_assert_eq(g->keepalive_timeout_ms, 500);
    cr_assert_eq(g->keepalive_requests, 0);
}

Test(ups_parse, server_parameter_errors)
{
    group_bad("upstream u {\n    server 127.0.0.1:1 weight=0;\n}",
              "t.conf:2: invalid parameter \"weight=0\"");
    group_bad("upstream u {\n\n    server 127.0.0.1:1 weight=1001;\n}",
              "t.conf:3: invalid parameter \"weight=1001\"");
    group_bad("upstream u { server 127.0.0.1:1 weight=x; }", "t.conf:1: invalid parameter \"weight=x\"");
    group_bad("upstream u { server 127.0.0.1:1 weight=; }", "t.conf:1: invalid parameter \"weight=\"");
    group_bad("upstream u { server 127.0.0.1:1 max_fails=-1; }",
              "t.conf:1: invalid parameter \"max_fails=-1\"");
    group_bad("upstream u { server 127.0.0.1:1 fail_timeout=abc; }",
              "t.conf:1: invalid parameter \"fail_timeout=abc\"");
    group_bad("upstream u { server 127.0.0.1:1 slow_start=10s; }",
              "t.conf:1: invalid parameter \"slow_start=10s\"");
    group_bad("upstream u { server 127.0.0.1:1 Backup; }", "t.conf:1: invalid parameter \"Backup\"");
    group_bad("upstream u { server 1.2.3.4:0; }",
              "t.conf:1: invalid server address \"1.2.3.4:0\": invalid port");
    group_bad("upstream u { server ::1:80; }",
              "t.conf:1: invalid server address \"::1:80\": IPv6 addresses must be in brackets");
}

Test(ups_parse, block_errors)
{
    group_bad("upstream empty {\n}", "t.conf:1: no servers are inside upstream \"empty\"");
    group_bad("upstream u { server 127.0.0.1:1; keepalive 0; }",
              "t.conf:1: invalid value \"0\" in \"keepalive\" directive");
    group_bad("upstream u { server 127.0.0.1:1; keepalive x; }",
              "t.conf:1: invalid value \"x\" in \"keepalive\" directive");
    group_bad("upstream u { server 127.0.0.1:1;\nkeepalive_timeout 1s;\nkeepalive_timeout 2s; }",
              "t.conf:3: \"keepalive_timeout\" directive is duplicate");
    group_bad("upstream u { server 127.0.0.1:1; keepalive_requests -3; }",
              "t.conf:1: invalid value \"-3\" in \"keepalive_requests\" directive");
    group_bad("upstream u { server; }", "t.conf:1: invalid number of arguments in \"server\" directive");
    group_bad("upstream u { server 127.0.0.1:1; bogus 1; }", "t.conf:1: unknown directive \"bogus\"");
}

Test(ups_parse, too_many_servers)
{
    char text[8192];
    size_t off = (size_t)snprintf(text, sizeof(text), "upstream big {\n");
    for (int i = 0; i < UPS_MAX_SERVERS; i++)
        off += (size_t)snprintf(text + off, sizeof(text) - off, "server 127.0.0.1:%d;\n", 1000 + i);
    struct ups_group *g = group(strcat(text, "}\n"));
    cr_assert_eq(g->nservers, UPS_MAX_SERVERS);
    text[off] = '\0';
    strcat(text, "server 127.0.0.1:9;\n}\n");
    group_bad(text, "t.conf:66: too many servers in upstream \"big\" (at most 64)");
}

Test(ups_parse, implicit_group)
{
    struct ups_group g;
    const char *msg = NULL;
    cr_assert_eq(ups_group_implicit(&A, "127.0.0.1:8080", &g, &msg), 0, "%s", msg);
    cr_assert(g.implicit);
    cr_assert_eq(g.nservers, 1);
    cr_assert_str_eq(g.name, "127.0.0.1:8080");
    cr_assert_str_eq(g.servers[0].addr_text, "127.0.0.1:8080");
    cr_assert_eq(g.servers[0].weight, 1);
    cr_assert_eq(g.servers[0].max_fails, 1);
    cr_assert_eq(g.keepalive, 0);
    cr_assert_eq(g.keepalive_timeout_ms, 60000);
    cr_assert_eq(g.keepalive_requests, 1000);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(ups_pick(&g, 0, 1000), &g.servers[0]);
    cr_assert_null(ups_pick(&g, 1, 1000), "its only server was tried");

    cr_assert_eq(ups_group_implicit(&A, "10.0.0.1", &g, &msg), 0);
    cr_assert_str_eq(g.servers[0].addr_text, "10.0.0.1:80");
    cr_assert_eq(ups_group_implicit(&A, "10.0.0.1:0", &g, &msg), -1);
    cr_assert_str_eq(msg, "invalid port");
}

/* ---- balancing ---- */

Test(ups_balance, smooth_weighted_sequence)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 weight=5; server 127.0.0.1:2; "
                                "server 127.0.0.1:3; }");
    char seq[8] = { 0 };
    for (int i = 0; i < 7; i++)
        seq[i] = name_of(g, ups_pick(g, 0, 1000));
    cr_assert_str_eq(seq, "aabacaa", "nginx's smooth sequence");
    /* the state returns to zero after a full cycle: the next one is the same */
    for (int i = 0; i < 7; i++)
        seq[i] = name_of(g, ups_pick(g, 0, 1000));
    cr_assert_str_eq(seq, "aabacaa");
}

Test(ups_balance, exact_distribution)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 weight=5; server 127.0.0.1:2; "
                                "server 127.0.0.1:3; server 127.0.0.1:4 weight=3; }");
    int n[4] = { 0 };
    for (int i = 0; i < 10000; i++)
        n[ups_server_index(g, ups_pick(g, 0, 1000))]++;
    cr_assert_eq(n[0], 5000);
    cr_assert_eq(n[1], 1000);
    cr_assert_eq(n[2], 1000);
    cr_assert_eq(n[3], 3000);

    g = group("upstream v { server 127.0.0.1:1 weight=5; server 127.0.0.1:2; server 127.0.0.1:3; }");
    int m[3] = { 0 };
    for (int i = 0; i < 7000; i++)
        m[ups_server_index(g, ups_pick(g, 0, 1000))]++;
    cr_assert_eq(m[0], 5000);
    cr_assert_eq(m[1], 1000);
    cr_assert_eq(m[2], 1000);
}

Test(ups_balance, equal_weights_alternate)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1; server 127.0.0.1:2; "
                                "server 127.0.0.1:3; }");
    char seq[10] = { 0 };
    for (int i = 0; i < 9; i++)
        seq[i] = name_of(g, ups_pick(g, 0, 1000));
    cr_assert_str_eq(seq, "abcabcabc");
}

Test(ups_balance, tried_mask_skips_servers)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 weight=5; server 127.0.0.1:2; "
                                "server 127.0.0.1:3; }");
    for (int i = 0; i < 20; i++) {
        struct ups_server *s = ups_pick(g, 1u << 0, 1000);
        cr_assert_neq(name_of(g, s), 'a');
    }
    cr_assert_eq(name_of(g, ups_pick(g, (1u << 0) | (1u << 2), 1000)), 'b');
    cr_assert_null(ups_pick(g, 7, 1000), "every server tried: none left");
    /* a retry never falls back to failed servers either */
    ups_server_failed(&g->servers[1], 100000);
    cr_assert_null(ups_pick(g, 1u << 0 | 1u << 2, 100000));
}

Test(ups_balance, backup_only_when_primaries_unavailable)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1; server 127.0.0.1:2; "
                                "server 127.0.0.1:3 backup; }");
    for (int i = 0; i < 50; i++)
        cr_assert_neq(name_of(g, ups_pick(g, 0, 1000)), 'c');
    /* primaries tried: the backup is next */
    cr_assert_eq(name_of(g, ups_pick(g, 3, 1000)), 'c');
    cr_assert_null(ups_pick(g, 7, 1000));
    /* primaries failed: the backup serves */
    ups_server_failed(&g->servers[0], 100000);
    ups_server_failed(&g->servers[1], 100000);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(name_of(g, ups_pick(g, 0, 100001)), 'c');
    /* one primary back: the backup is idle again */
    ups_server_ok(&g->servers[1]);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(name_of(g, ups_pick(g, 0, 100002)), 'b');
}

Test(ups_balance, down_servers_never_picked)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 down; server 127.0.0.1:2; "
                                "server 127.0.0.1:3 down backup; }");
    for (int i = 0; i < 20; i++)
        cr_assert_eq(name_of(g, ups_pick(g, 0, 1000)), 'b');
    cr_assert_null(ups_pick(g, 2, 1000), "neither the down primary nor the down backup");
    /* even when every usable server is failed */
    ups_server_failed(&g->servers[1], 100000);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(name_of(g, ups_pick(g, 0, 100001)), 'b');
    struct ups_group *all = group("upstream d { server 127.0.0.1:1 down; server 127.0.0.1:2 down; }");
    cr_assert_null(ups_pick(all, 0, 1000));
}

Test(ups_balance, all_failed_still_picks_a_primary)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 weight=2; server 127.0.0.1:2; }");
    ups_server_failed(&g->servers[0], 100000);
    ups_server_failed(&g->servers[1], 100000);
    int n[2] = { 0 };
    for (int i = 0; i < 30; i++)
        n[ups_server_index(g, ups_pick(g, 0, 100001))]++;
    cr_assert_eq(n[0], 20, "weights still apply");
    cr_assert_eq(n[1], 10);
    cr_assert_null(ups_pick(g, 1, 100001), "not on a retry: the other one is failed");

    /* failed primaries and failed backups: the primaries are tried */
    struct ups_group *b = group("upstream b { server 127.0.0.1:1; server 127.0.0.1:2 backup; }");
    ups_server_failed(&b->servers[0], 100000);
    ups_server_failed(&b->servers[1], 100000);
    cr_assert_eq(name_of(b, ups_pick(b, 0, 100001)), 'a');
}

/* ---- passive health ---- */

Test(ups_health, max_fails_within_fail_timeout)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 max_fails=2 fail_timeout=10s; "
                                "server 127.0.0.1:2; }");
    struct ups_server *a = &g->servers[0];
    const uint64_t t0 = 1000000;
    ups_server_failed(a, t0);
    cr_assert_eq(a->failed_until_ms, 0, "one failure of two allowed");
    bool saw_a = false;
    for (int i = 0; i < 4; i++)
        saw_a |= ups_pick(g, 0, t0 + 1) == a;
    cr_assert(saw_a);

    ups_server_failed(a, t0 + 5000);
    cr_assert_eq(a->failed_until_ms, t0 + 15000, "unavailable for fail_timeout after the 2nd");
    for (int i = 0; i < 10; i++) {
        cr_assert_neq(ups_pick(g, 0, t0 + 5001), a);
        cr_assert_neq(ups_pick(g, 0, t0 + 14999), a);
    }
    saw_a = false;
    for (int i = 0; i < 4; i++)
        saw_a |= ups_pick(g, 0, t0 + 15000) == a;
    cr_assert(saw_a, "available again when fail_timeout has passed");
}

Test(ups_health, failures_in_separate_windows_do_not_add_up)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 max_fails=2 fail_timeout=10s; "
                                "server 127.0.0.1:2; }");
    struct ups_server *a = &g->servers[0];
    const uint64_t t0 = 1000000;
    ups_server_failed(a, t0);
    ups_server_failed(a, t0 + 10001); /* the first window has ended */
    cr_assert_eq(a->failed_until_ms, 0);
    cr_assert_eq(a->fails, 1);
    ups_server_failed(a, t0 + 12000);
    cr_assert_eq(a->failed_until_ms, t0 + 22000);
}

Test(ups_health, ok_resets)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 max_fails=2 fail_timeout=10s; "
                                "server 127.0.0.1:2; }");
    struct ups_server *a = &g->servers[0];
    const uint64_t t0 = 1000000;
    ups_server_failed(a, t0);
    ups_server_ok(a);
    cr_assert_eq(a->fails, 0);
    ups_server_failed(a, t0 + 1);
    cr_assert_eq(a->failed_until_ms, 0, "the count restarted after a success");
    ups_server_failed(a, t0 + 2);
    cr_assert_neq(a->failed_until_ms, 0);
    ups_server_ok(a);
    cr_assert_eq(a->failed_until_ms, 0);
    bool saw_a = false;
    for (int i = 0; i < 4; i++)
        saw_a |= ups_pick(g, 0, t0 + 3) == a;
    cr_assert(saw_a, "usable right after a success");
}

Test(ups_health, max_fails_zero_never_marks)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1 max_fails=0; server 127.0.0.1:2; }");
    struct ups_server *a = &g->servers[0];
    for (int i = 0; i < 100; i++)
        ups_server_failed(a, 1000000 + (uint64_t)i);
    cr_assert_eq(a->failed_until_ms, 0);
    cr_assert_eq(a->fails, 0);
}

Test(ups_health, default_max_fails_is_one)
{
    struct ups_group *g = group("upstream u { server 127.0.0.1:1; server 127.0.0.1:2; }");
    ups_server_failed(&g->servers[0], 1000000);
    cr_assert_eq(g->servers[0].failed_until_ms, 1010000);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(name_of(g, ups_pick(g, 0, 1000001)), 'b');
}

/* ---- the idle pool ----
 * A loop may be run once (loop_run keeps its stop flag), so each pool test
 * is a table of steps run from a timer, a few milliseconds apart. */

struct pool_env {
    struct loop *l;
    struct ups_pool *p;
    int lfd;
    struct ups_group *g;
    struct ups_server *s;
    struct timer step_t, safety;
    int step;
    bool (*fn)(struct pool_env *e, int step); /* false: done */
    uint32_t interval_ms;
    bool done;
};

static struct pool_env E;

static void ignore_io(struct io *io, uint32_t events)
{
    (void)io, (void)events;
}

static void pool_stop(struct timer *t)
{
    (void)t;
    loop_stop(E.l);
}

static void pool_step(struct timer *t)
{
    (void)t;
    if (!E.fn(&E, E.step++)) {
        E.done = true;
        loop_stop(E.l);
        return;
    }
    timer_set(E.l, &E.step_t, E.interval_ms);
}

static int listen_loopback(void)
{
    struct net_addr a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in sin = { .sin_family = AF_INET };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memcpy(&a, &sin, sizeof(sin));
    a.len = sizeof(sin);
    int fd = net_listen(&a, 64, false);
    cr_assert_geq(fd, 0, "%s", strerror(errno));
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

/* Run `fn` every interval_ms from a fresh loop and pool; the group is parsed
 * from `params` (extra directives) with one server at the listener. */
static void pool_run(const char *params, bool (*fn)(struct pool_env *, int), uint32_t interval_ms)
{
    memset(&E, 0, sizeof(E));
    E.l = loop_new();
    cr_assert_not_null(E.l);
    E.p = ups_pool_new(E.l);
    cr_assert_not_null(E.p);
    E.lfd = listen_loopback();
    char text[512];
    snprintf(text, sizeof(text), "upstream u { server 127.0.0.1:%d; %s }", bound_port(E.lfd),
             params);
    E.g = group(text);
    E.s = &E.g->servers[0];
    E.fn = fn;
    E.interval_ms = interval_ms;
    timer_init(&E.step_t, pool_step, NULL);
    timer_init(&E.safety, pool_stop, NULL);
    timer_set(E.l, &E.step_t, 0);
    timer_set(E.l, &E.safety, 3000);
    loop_run(E.l);
    cr_assert(E.done, "the steps did not finish in time (step %d)", E.step);
}

/* Free the pool and the loop; the steps have closed every connection and
 * let the loop run once more so the deferred frees happened. */
static void pool_end(void)
{
    cr_assert_eq(ups_pool_idle_count(E.p), 0);
    ups_pool_free(E.p);
    loop_free(E.l);
    close(E.lfd);
}

static struct ups_conn *open_conn(void)
{
    struct ups_conn *c = ups_conn_open(E.p, E.g, E.s);
    cr_assert_not_null(c, "%s", strerror(errno));
    cr_assert_geq(c->io.fd, 0);
    cr_assert(net_addr_equal(&c->addr, &E.s->addr));
    c->io.cb = ignore_io; /* in use: its owner watches it */
    c->io.data = c;
    return c;
}

static int accept_one(void)
{
    struct pollfd pf = { .fd = E.lfd, .events = POLLIN };
    cr_assert_eq(poll(&pf, 1, 2000), 1);
    struct net_addr peer;
    int fd = net_accept(E.lfd, &peer);
    cr_assert_geq(fd, 0, "%s", strerror(errno));
    return fd;
}

/* Did the client side of `sfd` close? (EOF or reset within a short wait.) */
static bool peer_closed(int sfd)
{
    struct pollfd pf = { .fd = sfd, .events = POLLIN };
    if (poll(&pf, 1, 500) != 1)
        return false;
    char b;
    ssize_t r = recv(sfd, &b, 1, MSG_DONTWAIT);
    /* a close with unread bytes is a reset */
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

static bool peer_open(int sfd)
{
    char b;
    ssize_t r = recv(sfd, &b, 1, MSG_DONTWAIT);
    return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static struct ups_conn *C[4];
static int S[4];

static bool steps_put_get(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        return true;
    case 1: /* connected; its first events have been seen */
        cr_assert_eq(net_connect_result(C[0]->io.fd), 0);
        ups_pool_put(e->p, e->g, C[0]);
        cr_assert_eq(ups_pool_idle_count(e->p), 1);
        return true;
    case 2: {
        cr_assert_eq(ups_pool_idle_count(e->p), 1, "an idle connection nobody touches stays");
        struct ups_group other = *e->g;
        cr_assert_null(ups_pool_get(e->p, &other, e->s), "another group's key");
        struct ups_conn *c = ups_pool_get(e->p, e->g, e->s);
        cr_assert_eq(c, C[0], "the same connection comes back");
        cr_assert_eq(ups_pool_idle_count(e->p), 0);
        cr_assert_null(ups_pool_get(e->p, e->g, e->s), "taken: the pool is empty");
        cr_assert(peer_open(S[0]));
        /* it still works */
        cr_assert_eq(write(c->io.fd, "GET", 3), 3);
        char b[4];
        struct pollfd pf = { .fd = S[0], .events = POLLIN };
        cr_assert_eq(poll(&pf, 1, 1000), 1);
        cr_assert_eq(read(S[0], b, sizeof(b)), 3);
        c->io.cb = ignore_io;
        ups_conn_close(c);
        cr_assert(peer_closed(S[0]));
        close(S[0]);
        return true; /* one more turn of the loop frees it */
    }
    default:
        return false;
    }
}

Test(ups_pool, put_then_get_returns_the_same_connection)
{
    pool_run("keepalive 4;", steps_put_get, 10);
    pool_end();
}

static bool steps_server_closes(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        return true;
    case 1:
        ups_pool_put(e->p, e->g, C[0]);
        cr_assert_eq(ups_pool_idle_count(e->p), 1);
        close(S[0]); /* the server ends the idle connection */
        return true;
    case 2:
    case 3:
        if (ups_pool_idle_count(e->p) != 0 && step == 2)
            return true; /* give the FIN one more step */
        cr_assert_eq(ups_pool_idle_count(e->p), 0, "the pool dropped it");
        cr_assert_null(ups_pool_get(e->p, e->g, e->s));
        return true;
    default:
        return false;
    }
}

Test(ups_pool, server_close_drops_idle_connection)
{
    pool_run("keepalive 4;", steps_server_closes, 20);
    pool_end();
}

static bool steps_stale_readable(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        C[1] = open_conn();
        S[1] = accept_one();
        return true;
    case 1: {
        /* both parked with a stale "readable" flag (the last response ended
         * without EAGAIN); the server then writes junk on the second one */
        C[0]->io.readable = true;
        ups_pool_put(e->p, e->g, C[0]);
        cr_assert_eq(write(S[1], "x", 1), 1);
        struct pollfd pf = { .fd = C[1]->io.fd, .events = POLLIN };
        cr_assert_eq(poll(&pf, 1, 1000), 1);
        C[1]->io.readable = true;
        ups_pool_put(e->p, e->g, C[1]); /* newest: tried first */
        cr_assert_eq(ups_pool_idle_count(e->p), 2);
        /* no loop turn in between: the get has to peek */
        struct ups_conn *c = ups_pool_get(e->p, e->g, e->s);
        cr_assert_eq(c, C[0], "the one with pending bytes is closed and skipped");
        cr_assert_not(c->io.readable, "the stale flag was cleared");
        cr_assert_eq(ups_pool_idle_count(e->p), 0);
        cr_assert(peer_closed(S[1]));
        c->io.cb = ignore_io;
        ups_conn_close(c);
        close(S[0]);
        close(S[1]);
        return true;
    }
    default:
        return false;
    }
}

Test(ups_pool, get_skips_connection_with_pending_data)
{
    pool_run("keepalive 4;", steps_stale_readable, 10);
    pool_end();
}

static bool steps_limit(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        for (int i = 0; i < 3; i++) {
            C[i] = open_conn();
            S[i] = accept_one();
        }
        return true;
    case 1:
        for (int i = 0; i < 3; i++)
            ups_pool_put(e->p, e->g, C[i]);
        cr_assert_eq(ups_pool_idle_count(e->p), 2, "keepalive 2 per group");
        cr_assert(peer_closed(S[0]), "the oldest was evicted");
        cr_assert(peer_open(S[1]));
        cr_assert(peer_open(S[2]));
        cr_assert_eq(ups_pool_get(e->p, e->g, e->s), C[2], "newest first");
        cr_assert_eq(ups_pool_get(e->p, e->g, e->s), C[1]);
        cr_assert_null(ups_pool_get(e->p, e->g, e->s));
        ups_conn_close(C[1]);
        ups_conn_close(C[2]);
        for (int i = 0; i < 3; i++)
            close(S[i]);
        return true;
    default:
        return false;
    }
}

Test(ups_pool, keepalive_limit_evicts_oldest)
{
    pool_run("keepalive 2;", steps_limit, 10);
    pool_end();
}

static bool steps_requests(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        C[1] = open_conn();
        S[1] = accept_one();
        return true;
    case 1:
        C[0]->requests = 3; /* keepalive_requests reached */
        ups_pool_put(e->p, e->g, C[0]);
        cr_assert_eq(ups_pool_idle_count(e->p), 0, "closed instead of pooled");
        cr_assert(peer_closed(S[0]));
        C[1]->requests = 2;
        ups_pool_put(e->p, e->g, C[1]);
        cr_assert_eq(ups_pool_idle_count(e->p), 1, "one request left: pooled");
        ups_pool_clear(e->p);
        cr_assert_eq(ups_pool_idle_count(e->p), 0);
        cr_assert(peer_closed(S[1]));
        close(S[0]);
        close(S[1]);
        return true;
    default:
        return false;
    }
}

Test(ups_pool, keepalive_requests_reached_closes)
{
    pool_run("keepalive 4; keepalive_requests 3;", steps_requests, 10);
    pool_end();
}

static bool steps_no_keepalive(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        return true;
    case 1:
        ups_pool_put(e->p, e->g, C[0]);
        cr_assert_eq(ups_pool_idle_count(e->p), 0, "a group without keepalive keeps none");
        cr_assert(peer_closed(S[0]));
        close(S[0]);
        return true;
    default:
        return false;
    }
}

Test(ups_pool, no_keepalive_closes)
{
    pool_run("", steps_no_keepalive, 10);
    pool_end();
}

static bool steps_idle_timeout(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        return true;
    case 1:
        ups_pool_put(e->p, e->g, C[0]);
        cr_assert_eq(ups_pool_idle_count(e->p), 1);
        return true;
    case 2: /* 10 ms later: still there */
        cr_assert_eq(ups_pool_idle_count(e->p), 1);
        return true;
    case 3:
    case 4:
    case 5:
    case 6:
        return true;
    case 7: /* 60 ms after the put, keepalive_timeout is 30 ms */
        cr_assert_eq(ups_pool_idle_count(e->p), 0, "expired");
        cr_assert(peer_closed(S[0]));
        close(S[0]);
        return true;
    default:
        return false;
    }
}

Test(ups_pool, idle_timeout_closes)
{
    pool_run("keepalive 4; keepalive_timeout 30ms;", steps_idle_timeout, 10);
    pool_end();
}

static bool steps_free_with_idle(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        return true;
    case 1:
        ups_pool_put(e->p, e->g, C[0]);
        ups_pool_clear(e->p); /* what a reload does */
        cr_assert_eq(ups_pool_idle_count(e->p), 0);
        cr_assert(peer_closed(S[0]));
        close(S[0]);
        return true;
    default:
        return false;
    }
}

Test(ups_pool, clear_closes_idle_connections)
{
    pool_run("keepalive 4;", steps_free_with_idle, 10);
    pool_end();
}

Test(ups_pool, open_to_closed_port_fails_later)
{
    /* a refused connect is reported by the connection, not by open */
    memset(&E, 0, sizeof(E));
    E.l = loop_new();
    E.p = ups_pool_new(E.l);
    int lfd = listen_loopback();
    int port = bound_port(lfd);
    close(lfd);
    char text[128];
    snprintf(text, sizeof(text), "upstream u { server 127.0.0.1:%d; }", port);
    struct ups_group *g = group(text);
    struct ups_conn *c = ups_conn_open(E.p, g, &g->servers[0]);
    if (c) {
        struct pollfd pf = { .fd = c->io.fd, .events = POLLOUT };
        cr_assert_eq(poll(&pf, 1, 2000), 1);
        cr_assert_eq(net_connect_result(c->io.fd), ECONNREFUSED);
        c->io.cb = ignore_io;
        ups_conn_close(c);
        /* run the loop once so the deferred free happens */
        timer_init(&E.safety, pool_stop, NULL);
        timer_set(E.l, &E.safety, 5);
        loop_run(E.l);
    } else {
        cr_assert_eq(errno, ECONNREFUSED);
    }
    ups_pool_free(E.p);
    loop_free(E.l);
}

/* Only data or EOF end an idle pooled connection: a writable-only edge (the
 * connect completing here; write space freed after a large request body in
 * real use) keeps it (regression: any event dropped it). */
static bool steps_writable_edge(struct pool_env *e, int step)
{
    switch (step) {
    case 0:
        C[0] = open_conn();
        S[0] = accept_one();
        ups_pool_put(e->p, e->g, C[0]); /* its EPOLLOUT edge is still pending */
        return true;
    case 1: {
        size_t idle = ups_pool_idle_count(e->p);
        ups_pool_clear(e->p);
        close(S[0]);
        cr_assert_eq(idle, 1, "dropped on a writable-only event");
        return true;
    }
    default:
        return false;
    }
}

Test(ups_pool, writable_edge_keeps_idle_connection)
{
    pool_run("keepalive 4;", steps_writable_edge, 10);
    pool_end();
}
