/* Unit tests for active health checks: `match` evaluation, the state of a
 * server under its checks (fails, passes, mandatory, slow start), the
 * balancers skipping unhealthy servers, the config errors of health_check,
 * match and api, and the checker thread against real loopback sockets. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "net/net.h"
#include "proxy/conf.h"
#include "upstream/check.h"

static char err[1024];
static char path[64];

static void setup(void)
{
    conf_register_all();
    log_current_level = LOG_CRIT;
    err[0] = '\0';
    snprintf(path, sizeof(path), "/tmp/portico-check-%d.conf", (int)getpid());
}

static void teardown(void)
{
    unlink(path);
}

TestSuite(check_match, .init = setup, .fini = teardown);
TestSuite(check_state, .init = setup, .fini = teardown);
TestSuite(check_conf, .init = setup, .fini = teardown);
TestSuite(check_live, .init = setup, .fini = teardown, .timeout = 20);

/* Load an http block body as a whole config. */
static struct snapshot *load_try(const char *http)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "events {}\nhttp {\n%s\n}\n", http);
    fclose(f);
    return conf_load(path, NULL, err, sizeof(err));
}

static struct snapshot *load(const char *http)
{
    struct snapshot *s = load_try(http);
    cr_assert_not_null(s, "%s", err);
    return s;
}

static void load_bad(const char *http, int line, const char *msg)
{
    struct snapshot *s = load_try(http);
    cr_assert_null(s, "accepted: %s", http);
    char want[512];
    snprintf(want, sizeof(want), "%s:%d: %s", path, line + 2, msg); /* after "events {}\nhttp {" */
    cr_assert_str_eq(err, want);
}

static struct ups_group *group_named(struct snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->ngroups; i++)
        if (strcmp(s->groups[i]->name, name) == 0)
            return s->groups[i];
    cr_assert_fail("no group %s", name);
    return NULL;
}

#define FIELD(n, v)                                                                                \
    {                                                                                              \
        SLICE_LIT(n), SLICE_LIT(v)                                                                 \
    }

/* ---- match ---- */

static const char *MATCHES = "match ok {\n"
                             "    status 200-399;\n"
                             "    status ! 302 304;\n"
                             "    header Content-Type ~ \"json\";\n"
                             "    header X-Ok = \"1\";\n"
                             "    header ! X-Broken;\n"
                             "    body ~ \"\\\"ok\\\": *true\";\n"
                             "}\n"
                             "match any { }\n"
                             "match not_down { header X-State != down; body !~ maintenance; }\n"
                             "match has { header X-Id; }\n"
                             "upstream u { server 127.0.0.1:1; }\n"
                             "server { listen 127.0.0.1:1; location / { proxy_pass http://u; "
                             "health_check match=ok; } }\n";

static const struct check_match *find_match(struct snapshot *s, const char *name)
{
    for (const struct check_match *m = s->http_lc->check_matches; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    cr_assert_fail("no match %s", name);
    return NULL;
}

Test(check_match, default_is_2xx_3xx)
{
    cr_assert(check_match_eval(NULL, 200, NULL, 0, SLICE_NULL));
    cr_assert(check_match_eval(NULL, 399, NULL, 0, SLICE_NULL));
    cr_assert_not(check_match_eval(NULL, 199, NULL, 0, SLICE_NULL));
    cr_assert_not(check_match_eval(NULL, 400, NULL, 0, SLICE_NULL));
    cr_assert_not(check_match_eval(NULL, 500, NULL, 0, SLICE_NULL));
}

Test(check_match, all_conditions)
{
    struct snapshot *s = load(MATCHES);
    const struct check_match *m = find_match(s, "ok");
    cr_assert_eq(m->nconds, 6);
    cr_assert(m->needs_body);
    struct http_field f[] = {FIELD("content-type", "application/json"), FIELD("X-Ok", "1")};
    struct slice body = SLICE_LIT("{\"ok\": true}");
    cr_assert(check_match_eval(m, 200, f, 2, body));
    cr_assert_not(check_match_eval(m, 500, f, 2, body), "status range");
    cr_assert_not(check_match_eval(m, 302, f, 2, body), "status ! 302");
    cr_assert_not(check_match_eval(m, 200, f, 2, SLICE_LIT("{\"ok\": false}")), "body");
    cr_assert_not(check_match_eval(m, 200, f, 2, SLICE_NULL), "empty body");
    cr_assert_not(check_match_eval(m, 200, f, 1, body), "X-Ok missing");
    struct http_field g[] = {FIELD("Content-Type", "text/html"), FIELD("X-Ok", "1")};
    cr_assert_not(check_match_eval(m, 200, g, 2, body), "content type regex");
    struct http_field h[] = {FIELD("Content-Type", "json"), FIELD("X-Ok", "10")};
    cr_assert_not(check_match_eval(m, 200, h, 2, body), "= is exact");
    struct http_field b[] = {FIELD("Content-Type", "json"), FIELD("X-Ok", "1"),
                             FIELD("X-Broken", "")};
    cr_assert_not(check_match_eval(m, 200, b, 3, body), "header ! X-Broken");
    snapshot_unref(s);
}

Test(check_match, empty_and_negations)
{
    struct snapshot *s = load(MATCHES);
    const struct check_match *any = find_match(s, "any");
    cr_assert_eq(any->nconds, 0);
    cr_assert(check_match_eval(any, 500, NULL, 0, SLICE_NULL), "no condition: any response");
    const struct check_match *nd = find_match(s, "not_down");
    struct http_field up[] = {FIELD("X-State", "up")};
    struct http_field down[] = {FIELD("X-State", "down")};
    cr_assert(check_match_eval(nd, 200, up, 1, SLICE_LIT("hello")));
    cr_assert_not(check_match_eval(nd, 200, down, 1, SLICE_LIT("hello")));
    cr_assert_not(check_match_eval(nd, 200, NULL, 0, SLICE_LIT("hello")), "!= needs the header");
    cr_assert_not(check_match_eval(nd, 200, up, 1, SLICE_LIT("in maintenance")));
    const struct check_match *has = find_match(s, "has");
    struct http_field id[] = {FIELD("x-id", "7")};
    cr_assert(check_match_eval(has, 200, id, 1, SLICE_NULL));
    cr_assert_not(check_match_eval(has, 200, up, 1, SLICE_NULL));
    snapshot_unref(s);
}

Test(check_match, status_parsing)
{
    struct check_cond c;
    char *ok1[] = {"200"};
    char *ok2[] = {"!", "500", "502-504"};
    char *bad1[] = {"!"};
    char *bad2[] = {"2xx"};
    char *bad3[] = {"500-400"};
    char *bad4[] = {"99"};
    memset(&c, 0, sizeof(c));
    cr_assert_eq(check_parse_status(&c, ok1, 1), 0);
    cr_assert_eq(c.nranges, 1);
    memset(&c, 0, sizeof(c));
    cr_assert_eq(check_parse_status(&c, ok2, 3), 0);
    cr_assert(c.negate);
    cr_assert_eq(c.ranges[1].lo, 502);
    cr_assert_eq(c.ranges[1].hi, 504);
    memset(&c, 0, sizeof(c));
    cr_assert_eq(check_parse_status(&c, bad1, 1), -1);
    memset(&c, 0, sizeof(c));
    cr_assert_eq(check_parse_status(&c, bad2, 1), -1);
    memset(&c, 0, sizeof(c));
    cr_assert_eq(check_parse_status(&c, bad3, 1), -1);
    memset(&c, 0, sizeof(c));
    cr_assert_eq(check_parse_status(&c, bad4, 1), -1);
}

/* ---- state ---- */

static const char *TWO = "upstream u {\n"
                         "    server 127.0.0.1:1;\n"
                         "    server 127.0.0.1:2 slow_start=10s;\n"
                         "}\n"
                         "server { listen 127.0.0.1:1; location / { proxy_pass http://u;\n"
                         "    health_check interval=1s fails=2 passes=3; } }\n";

Test(check_state, fails_then_passes)
{
    struct snapshot *s = load(TWO);
    struct ups_group *g = group_named(s, "u");
    struct ups_check *c = g->checks;
    cr_assert_not_null(c);
    cr_assert_null(c->next);
    cr_assert_eq(c->interval_ms, 1000);
    cr_assert_eq(c->fails, 2);
    cr_assert_eq(c->passes, 3);
    struct ups_server *b = &g->servers[1];
    cr_assert_eq(atomic_load(&b->hc.down), 0, "not mandatory: up at start");

    cr_assert_not(check_peer_result(c, 1, false, 500, 1000, 1));
    cr_assert_eq(atomic_load(&b->hc.down), 0, "one failure of fails=2");
    cr_assert_not(check_peer_result(c, 1, true, 200, 2000, 2), "a pass resets the run");
    cr_assert_not(check_peer_result(c, 1, false, 500, 3000, 3));
    cr_assert(check_peer_result(c, 1, false, 0, 4000, 4));
    cr_assert_eq(atomic_load(&b->hc.down), 1);
    cr_assert_eq(atomic_load(&b->hc.unhealthy), 1);
    cr_assert_not(ups_server_usable(b, 4000));
    for (int i = 0; i < 10; i++) {
        struct ups_server *pick = ups_pick(g, 0, 4000 + (uint64_t)i);
        cr_assert_eq(pick, &g->servers[0], "no traffic to an unhealthy server");
    }
    struct ups_tried first = {.w = {1}};
    cr_assert_not(ups_has_candidate(g, &first, 4000), "only the unhealthy one is left");

    cr_assert_not(check_peer_result(c, 1, true, 200, 5000, 5));
    cr_assert_not(check_peer_result(c, 1, true, 200, 6000, 6));
    cr_assert(check_peer_result(c, 1, true, 200, 7000, 7), "passes=3");
    cr_assert_eq(atomic_load(&b->hc.down), 0);
    cr_assert(ups_server_usable(b, 7000));
    /* slow start ramps from the recovery */
    cr_assert_eq(atomic_load(&b->ramp_start_ms), 7000);
    cr_assert_lt(ups_server_weight(b, 7001), UPS_WEIGHT_SCALE);
    cr_assert_eq(ups_server_weight(b, 17000), UPS_WEIGHT_SCALE);

    cr_assert_eq(atomic_load(&b->hc.checks), 7);
    cr_assert_eq(atomic_load(&b->hc.fails), 3);
    cr_assert_eq(atomic_load(&b->hc.last_status), 200);
    cr_assert(atomic_load(&b->hc.last_ok));
    cr_assert_eq(atomic_load(&b->hc.last_ms), 7);
    snapshot_unref(s);
}

Test(check_state, all_unhealthy_means_no_server)
{
    struct snapshot *s = load(TWO);
    struct ups_group *g = group_named(s, "u");
    for (size_t i = 0; i < 2; i++) {
        check_peer_result(g->checks, i, false, 500, 1, 1);
        check_peer_result(g->checks, i, false, 500, 2, 2);
    }
    /* unlike passive failures, nginx Plus does not retry unhealthy servers */
    cr_assert_null(ups_pick(g, 0, 10));
    cr_assert_not(ups_has_candidate(g, NULL, 10));
    snapshot_unref(s);
}

Test(check_state, mandatory_starts_checking)
{
    struct snapshot *s = load("upstream u { server 127.0.0.1:1; server 127.0.0.1:2; }\n"
                              "server { listen 127.0.0.1:1; location / { proxy_pass http://u;\n"
                              "    health_check passes=5 mandatory persistent; } }\n");
    struct ups_group *g = group_named(s, "u");
    struct ups_check *c = g->checks;
    cr_assert(c->mandatory);
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(atomic_load(&g->servers[i].hc.down), 1);
        cr_assert(atomic_load(&g->servers[i].hc.checking));
    }
    cr_assert_null(ups_pick(g, 0, 1), "no traffic before a first check");
    cr_assert(check_peer_result(c, 0, true, 200, 1, 1), "the first pass is enough");
    cr_assert_eq(atomic_load(&g->servers[0].hc.down), 0);
    cr_assert_not(atomic_load(&g->servers[0].hc.checking));
    cr_assert_eq(ups_pick(g, 0, 2), &g->servers[0]);
    cr_assert_not(check_peer_result(c, 1, false, 500, 1, 1), "stays down");
    cr_assert_not(atomic_load(&g->servers[1].hc.checking), "checked: unhealthy, not checking");
    cr_assert_eq(atomic_load(&g->servers[1].hc.down), 1);
    snapshot_unref(s);
}

Test(check_state, two_checks_on_one_group)
{
    struct snapshot *s = load("upstream u { server 127.0.0.1:1; server 127.0.0.1:2; }\n"
                              "server { listen 127.0.0.1:1;\n"
                              "  location /a { proxy_pass http://u; health_check; }\n"
                              "  location /b { proxy_pass http://u; health_check uri=/b; } }\n");
    struct ups_group *g = group_named(s, "u");
    struct ups_check *a = g->checks, *b = a->next;
    cr_assert_not_null(b);
    cr_assert_str_eq(b->uri, "/b");
    check_peer_result(a, 0, false, 500, 1, 1);
    check_peer_result(b, 0, false, 500, 1, 1);
    cr_assert_eq(atomic_load(&g->servers[0].hc.down), 2);
    check_peer_result(a, 0, true, 200, 2, 2);
    cr_assert_not(ups_server_usable(&g->servers[0], 2), "down while any check fails it");
    check_peer_result(b, 0, true, 200, 3, 3);
    cr_assert(ups_server_usable(&g->servers[0], 3));
    snapshot_unref(s);
}

/* ---- config ---- */

Test(check_conf, parameters)
{
    struct snapshot *s = load("match m { status 200; }\n"
                              "upstream u { server 127.0.0.1:1; }\n"
                              "server { listen 127.0.0.1:1; location / { proxy_pass http://u;\n"
                              "  health_check interval=200ms jitter=50ms fails=3 passes=2 "
                              "uri=/health port=8080 match=m; }\n"
                              "  location /api { api write=off; } }\n");
    struct ups_check *c = group_named(s, "u")->checks;
    cr_assert_eq(c->interval_ms, 200);
    cr_assert_eq(c->jitter_ms, 50);
    cr_assert_eq(c->fails, 3);
    cr_assert_eq(c->passes, 2);
    cr_assert_str_eq(c->uri, "/health");
    cr_assert_eq(c->port, 8080);
    cr_assert_not_null(c->match);
    cr_assert_str_eq(c->match->name, "m");
    cr_assert_not(c->tcp);
    snapshot_unref(s);
}

Test(check_conf, errors_name_file_and_line)
{
    load_bad("server { listen 127.0.0.1:1;\n location / {\n  health_check;\n  return 200; } }", 3,
             "\"health_check\" needs \"proxy_pass\" to an upstream group in its location");
    load_bad("server { listen 127.0.0.1:1;\n location / { proxy_pass http://127.0.0.1:1;\n"
             "  health_check; } }",
             3, "\"health_check\" needs \"proxy_pass\" to an upstream group in its location");
    load_bad("upstream u { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:1;\n"
             " location / { proxy_pass http://u;\n health_check match=nope; } }",
             4, "match \"nope\" not found");
    load_bad("upstream u { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:1;\n"
             " location / { proxy_pass http://u;\n health_check interval=0; } }",
             4, "invalid parameter \"interval=0\"");
    load_bad("upstream u { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:1;\n"
             " location / { proxy_pass http://u;\n health_check; health_check; } }",
             4, "\"health_check\" directive is duplicate");
    load_bad("match m {\n status 2xx;\n}", 2,
             "invalid status in \"status\" directive (code, lo-hi, or ! before them)");
    load_bad("match m {\n header X ^ y;\n}", 2,
             "invalid operator \"^\" in \"header\" (=, !=, ~ or !~)");
    load_bad("match m { body = x; }", 1, "invalid operator \"=\" in \"body\" (~ or !~)");
    load_bad("match m { status 200; }\nmatch m { }", 2, "duplicate match \"m\"");
    load_bad("match m {\n\n body ~ \"(\"; }", 3,
             "pcre2_compile() failed: missing closing parenthesis in \"(\" at offset 1");
    load_bad("server { listen 127.0.0.1:1; location / { status 200; } }", 1,
             "\"status\" directive is not allowed here");
    load_bad("match m { status 200; }\nupstream u { server 127.0.0.1:1; }\n"
             "server { listen 127.0.0.1:1; location / { proxy_pass http://u;\n"
             " health_check type=tcp match=m; } }",
             4,
             "a \"type=tcp\" health check cannot use match \"m\" (it has conditions on the "
             "HTTP response)");
    load_bad("server { listen 127.0.0.1:1; location /api {\n api write=on; } }", 2,
             "\"write=on\" is not supported: the api is read-only (only \"write=off\")");
}

/* ---- the checker thread against loopback sockets ---- */

static bool wait_until(_Atomic int *v, int want, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (atomic_load(v) == want)
            return true;
        poll(NULL, 0, 10);
    }
    return atomic_load(v) == want;
}

static int listen_any(int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    cr_assert_eq(listen(fd, backlog), 0);
    return fd;
}

static int port_of(int fd)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    return ntohs(sin.sin_port);
}

Test(check_live, tcp_and_http_probes)
{
    /* a listening socket nobody accepts on: the kernel completes connects */
    int lfd = listen_any(16);
    int open_port = port_of(lfd);
    /* a port with nothing listening */
    int cfd = listen_any(1);
    int closed_port = port_of(cfd);
    close(cfd);

    char conf[1024];
    snprintf(conf, sizeof(conf),
             "upstream t { server 127.0.0.1:%d; server 127.0.0.1:%d; }\n"
             "upstream h { server 127.0.0.1:%d; }\n"
             "server { listen 127.0.0.1:1;\n"
             "  location /t { proxy_pass http://t; health_check type=tcp interval=100ms; }\n"
             "  location /h { proxy_pass http://h; health_check interval=200ms mandatory; } }\n",
             open_port, closed_port, open_port);
    struct snapshot *s = load(conf);
    struct ups_group *t = group_named(s, "t"), *h = group_named(s, "h");
    cr_assert_eq(check_start(s->groups, s->ngroups), 0);
    cr_assert(wait_until(&t->servers[1].hc.down, 1, 3000), "refused connect: unhealthy");
    cr_assert_eq(atomic_load(&t->servers[0].hc.down), 0);
    cr_assert_geq(atomic_load(&t->servers[0].hc.checks), 1);
    /* the HTTP check gets no answer within its interval: still down, now checked */
    struct timespec ts0, ts1;
    clock_gettime(CLOCK_MONOTONIC, &ts0);
    for (int i = 0; i < 300 && !atomic_load(&h->servers[0].hc.checks); i++)
        poll(NULL, 0, 10);
    clock_gettime(CLOCK_MONOTONIC, &ts1);
    cr_assert_geq(atomic_load(&h->servers[0].hc.checks), 1);
    cr_assert_eq(atomic_load(&h->servers[0].hc.down), 1);
    cr_assert_not(atomic_load(&h->servers[0].hc.last_ok));

    /* reload onto a copy: the verdicts carry over by group name and address */
    struct snapshot *s2 = load(conf);
    struct ups_group *t2 = group_named(s2, "t");
    cr_assert_eq(atomic_load(&group_named(s2, "h")->servers[0].hc.down), 1, "mandatory");
    check_reload(s2->groups, s2->ngroups);
    cr_assert_eq(atomic_load(&t2->servers[1].hc.down), 1, "carried over");
    cr_assert_geq(atomic_load(&t2->servers[0].hc.checks), 1, "counters carried over");
    snapshot_unref(s);
    poll(NULL, 0, 150); /* the checker keeps running on s2 only */
    check_stop();
    snapshot_unref(s2);
    close(lfd);
}
