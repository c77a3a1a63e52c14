/* Unit tests for src/cache: RFC 9111 rules (Cache-Control, dates,
 * storability, freshness, age, reuse, conditionals, ranges) and the store
 * (lookup, variants, lock, purge, eviction, persistence). */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/rules.h"
#include "cache/store.h"

#define SL(s)   slice_cstr(s)
#define F(n, v) ((struct http_field){SL(n), SL(v)})

static const struct cache_policy POL = {0};

/* ---- Cache-Control ---- */

Test(cc, parses_directives)
{
    struct http_field f[] = {F("Cache-Control", "max-age=60, s-maxage=\"30\", no-cache"),
                             F("cache-control", "Private, must-revalidate,stale-if-error=5")};
    struct cc c;
    cc_parse(f, 2, &c);
    cr_assert_eq(c.max_age, 60);
    cr_assert_eq(c.s_maxage, 30);
    cr_assert(c.no_cache && c.private_ && c.must_revalidate);
    cr_assert_eq(c.stale_if_error, 5);
    cr_assert_eq(c.min_fresh, CC_UNSET);
}

Test(cc, first_value_wins_and_junk_is_skipped)
{
    struct http_field f[] = {F("Cache-Control", "max-age=10, max-age=99, x=\"a,b\", ;;, public")};
    struct cc c;
    cc_parse(f, 1, &c);
    cr_assert_eq(c.max_age, 10);
    cr_assert(c.public_);
}

Test(cc, bad_and_huge_values)
{
    struct http_field f[] = {F("Cache-Control", "max-age=abc, s-maxage=99999999999999")};
    struct cc c;
    cc_parse(f, 1, &c);
    cr_assert(c.bad_max_age);
    cr_assert_eq(c.max_age, CC_UNSET);
    cr_assert_eq(c.s_maxage, 2147483648LL);
}

Test(cc, max_stale_without_value)
{
    struct http_field f[] = {F("Cache-Control", "max-stale")};
    struct cc c;
    cc_parse(f, 1, &c);
    cr_assert_eq(c.max_stale, CC_ANY);
}

/* ---- dates ---- */

Test(date, three_formats)
{
    cr_assert_eq(http_date_parse(SL("Sun, 06 Nov 1994 08:49:37 GMT")), 784111777);
    cr_assert_eq(http_date_parse(SL("Sunday, 06-Nov-94 08:49:37 GMT")), 784111777);
    cr_assert_eq(http_date_parse(SL("Sun Nov  6 08:49:37 1994")), 784111777);
}

Test(date, garbage)
{
    cr_assert_eq(http_date_parse(SL("")), -1);
    cr_assert_eq(http_date_parse(SL("0")), -1);
    cr_assert_eq(http_date_parse(SL("Sun, 06 Foo 1994 08:49:37 GMT")), -1);
    cr_assert_eq(http_date_parse(SL("Sun, 06 Nov 1994 25:49:37 GMT")), -1);
    cr_assert_eq(http_date_parse(SL("Sun, 06 Nov 1994 08:49:37 UTC")), -1);
}

/* ---- storing ---- */

static enum cache_store_verdict store(int status, struct http_field *rf, size_t n,
                                      struct http_field *qf, size_t nq, struct cache_fresh *out)
{
    return cache_storable(status, rf, n, qf, nq, &POL, 1000000, 1000000, out);
}

Test(store, max_age_and_s_maxage)
{
    struct cache_fresh fr;
    struct http_field f[] = {F("Cache-Control", "max-age=60")};
    cr_assert_eq(store(200, f, 1, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 60000);
    struct http_field g[] = {F("Cache-Control", "max-age=60, s-maxage=5")};
    cr_assert_eq(store(200, g, 1, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 5000);
    cr_assert(fr.must_revalidate); /* s-maxage implies proxy-revalidate */
}

Test(store, refusals)
{
    struct cache_fresh fr;
    struct http_field ns[] = {F("Cache-Control", "no-store, max-age=60")};
    cr_assert_eq(store(200, ns, 1, NULL, 0, &fr), CACHE_STORE_NO_STORE);
    struct http_field pv[] = {F("Cache-Control", "private, max-age=60")};
    cr_assert_eq(store(200, pv, 1, NULL, 0, &fr), CACHE_STORE_PRIVATE);
    struct http_field ck[] = {F("Cache-Control", "max-age=60"), F("Set-Cookie", "a=1")};
    cr_assert_eq(store(200, ck, 2, NULL, 0, &fr), CACHE_STORE_COOKIE);
    struct http_field vs[] = {F("Cache-Control", "max-age=60"), F("Vary", "Accept, *")};
    cr_assert_eq(store(200, vs, 2, NULL, 0, &fr), CACHE_STORE_VARY_STAR);
    struct http_field ok[] = {F("Cache-Control", "max-age=60")};
    cr_assert_eq(store(206, ok, 1, NULL, 0, &fr), CACHE_STORE_STATUS);
    cr_assert_eq(store(200, NULL, 0, NULL, 0, &fr), CACHE_STORE_NO_LIFETIME);
    struct http_field rq[] = {F("Cache-Control", "no-store")};
    cr_assert_eq(store(200, ok, 1, rq, 1, &fr), CACHE_STORE_NO_STORE);
    struct http_field xa[] = {F("X-Accel-Expires", "0"), F("Cache-Control", "max-age=60")};
    cr_assert_eq(store(200, xa, 2, NULL, 0, &fr), CACHE_STORE_ZERO);
}

Test(store, authorization_rules)
{
    struct cache_fresh fr;
    struct http_field auth[] = {F("Authorization", "Basic x")};
    struct http_field a[] = {F("Cache-Control", "max-age=60")};
    cr_assert_eq(store(200, a, 1, auth, 1, &fr), CACHE_STORE_AUTH);
    struct http_field b[] = {F("Cache-Control", "max-age=60, public")};
    cr_assert_eq(store(200, b, 1, auth, 1, &fr), CACHE_STORE_OK);
    struct http_field c[] = {F("Cache-Control", "s-maxage=60")};
    cr_assert_eq(store(200, c, 1, auth, 1, &fr), CACHE_STORE_OK);
}

Test(store, expires_against_date)
{
    struct cache_fresh fr;
    struct http_field f[] = {F("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                             F("Expires", "Sun, 06 Nov 1994 08:50:37 GMT")};
    cr_assert_eq(store(200, f, 2, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 60000);
    struct http_field bad[] = {F("Expires", "0"), F("ETag", "\"x\"")};
    cr_assert_eq(store(200, bad, 2, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 0); /* an invalid Expires means already expired */
}

Test(store, heuristic_only_for_listed_statuses)
{
    struct cache_fresh fr;
    /* Date 1000 s after Last-Modified: 10% = 100 s */
    struct http_field f[] = {F("Date", "Sun, 06 Nov 1994 09:06:17 GMT"),
                             F("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")};
    cr_assert_eq(store(200, f, 2, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 100000);
    cr_assert(fr.heuristic);
    cr_assert_eq(store(302, f, 2, NULL, 0, &fr), CACHE_STORE_NO_LIFETIME);
}

static int64_t valid_any(const void *ctx, int status)
{
    (void)ctx;
    return status == 404 ? 7000 : -1;
}

Test(store, proxy_cache_valid_after_headers)
{
    struct cache_fresh fr;
    struct cache_policy pol = {.valid_for = valid_any};
    cr_assert_eq(cache_storable(404, NULL, 0, NULL, 0, &pol, 0, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 7000);
    struct http_field f[] = {F("Cache-Control", "max-age=1")};
    cr_assert_eq(cache_storable(404, f, 1, NULL, 0, &pol, 0, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 1000);
    struct cache_policy ign = {.valid_for = valid_any, .ignore_cache_control = true};
    cr_assert_eq(cache_storable(404, f, 1, NULL, 0, &ign, 0, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 7000);
}

Test(store, age_calculation)
{
    struct cache_fresh fr;
    /* Age: 10 and 2 s of delay on the way */
    struct http_field f[] = {F("Cache-Control", "max-age=60"), F("Age", "10")};
    cr_assert_eq(cache_storable(200, f, 2, NULL, 0, &POL, 1000000, 1002000, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.initial_age_ms, 12000);
    cr_assert_eq(cache_age_ms(&fr, 1005000), 15000);
}

/* ---- reuse ---- */

static struct cache_fresh fresh_for(int64_t lifetime_ms)
{
    return (struct cache_fresh){
        .lifetime_ms = lifetime_ms, .response_time_ms = 0, .swr_ms = -1, .sie_ms = -1};
}

static struct cc req(const char *v)
{
    struct http_field f[] = {F("Cache-Control", v)};
    struct cc c;
    cc_parse(f, 1, &c);
    return c;
}

Test(use, fresh_stale_and_request_directives)
{
    struct cache_fresh fr = fresh_for(10000);
    struct cc none = req("");
    cr_assert_eq(cache_usable(&fr, &none, false, 5000), CACHE_USE_FRESH);
    cr_assert_eq(cache_usable(&fr, &none, false, 10000), CACHE_USE_REVALIDATE);
    struct cc c = req("max-age=3");
    cr_assert_eq(cache_usable(&fr, &c, false, 5000), CACHE_USE_REVALIDATE);
    c = req("min-fresh=6");
    cr_assert_eq(cache_usable(&fr, &c, false, 5000), CACHE_USE_REVALIDATE);
    c = req("max-stale=5");
    cr_assert_eq(cache_usable(&fr, &c, false, 14000), CACHE_USE_STALE_OK);
    cr_assert_eq(cache_usable(&fr, &c, false, 16000), CACHE_USE_REVALIDATE);
    c = req("no-cache");
    cr_assert_eq(cache_usable(&fr, &c, false, 1), CACHE_USE_REVALIDATE);
    cr_assert_eq(cache_usable(&fr, &none, true, 1), CACHE_USE_REVALIDATE);
    fr.must_revalidate = true;
    c = req("max-stale");
    cr_assert_eq(cache_usable(&fr, &c, false, 14000), CACHE_USE_REVALIDATE);
}

Test(use, stale_windows)
{
    struct cache_fresh fr = fresh_for(1000);
    cr_assert(cache_stale_within(&fr, 5000, 5000));
    cr_assert_not(cache_stale_within(&fr, 5000, 7000));
    cr_assert_not(cache_stale_within(&fr, -1, 1500));
    fr.must_revalidate = true;
    cr_assert_not(cache_stale_within(&fr, 5000, 1500));
}

Test(cond, etags)
{
    cr_assert(cache_etag_match(SL("\"a\""), SL("\"a\"")));
    cr_assert(cache_etag_match(SL("W/\"a\""), SL("\"a\"")));
    cr_assert(cache_etag_match(SL("\"x\", \"a\""), SL("W/\"a\"")));
    cr_assert(cache_etag_match(SL("*"), SL("\"z\"")));
    cr_assert_not(cache_etag_match(SL("\"b\""), SL("\"a\"")));
    cr_assert_not(cache_etag_match(SL("\"a,b\""), SL("\"a\"")));
}

Test(cond, ranges)
{
    uint64_t a, b;
    cr_assert_eq(cache_range(SL("bytes=0-9"), 100, &a, &b), 1);
    cr_assert(a == 0 && b == 9);
    cr_assert_eq(cache_range(SL("bytes=90-"), 100, &a, &b), 1);
    cr_assert(a == 90 && b == 99);
    cr_assert_eq(cache_range(SL("bytes=-10"), 100, &a, &b), 1);
    cr_assert(a == 90 && b == 99);
    cr_assert_eq(cache_range(SL("bytes=50-500"), 100, &a, &b), 1);
    cr_assert(b == 99);
    cr_assert_eq(cache_range(SL("bytes=100-"), 100, &a, &b), 0);
    cr_assert_eq(cache_range(SL("bytes=-0"), 100, &a, &b), 0);
    cr_assert_eq(cache_range(SL("bytes=1-2,4-5"), 100, &a, &b), -1);
    cr_assert_eq(cache_range(SL("items=1-2"), 100, &a, &b), -1);
    cr_assert_eq(cache_range(SL("bytes=5-2"), 100, &a, &b), -1);
}

/* ---- the store ---- */

static char dir[256];

static struct cache_zone *zone(const char *name, size_t max_size, size_t mem)
{
    snprintf(dir, sizeof(dir), "/tmp/portico-unit-cache-%d-%s", (int)getpid(), name);
    struct cache_zone_conf c = {.name = name,
                                .path = dir,
                                .levels = {1, 2},
                                .nlevels = 2,
                                .keys_size = 1 << 20,
                                .max_size = max_size,
                                .mem_size = mem,
                                .inactive_ms = 3600000,
                                .file = "test",
                                .line = 1};
    char err[256];
    struct cache_zone *z = cache_zone_get(&c, err, sizeof(err));
    cr_assert_not_null(z, "%s", err);
    cache_wait_loaded();
    return z;
}

static struct cache_obj *put(struct cache_zone *z, const char *key, const char *body,
                             const char *primary, const char *vary)
{
    struct cache_fresh fr = fresh_for(60000);
    struct http_field f[] = {F("Content-Type", "text/plain"), F("ETag", "\"1\"")};
    struct cache_writer *w =
        cache_write_begin(z, key, strlen(key), primary, primary ? strlen(primary) : 0, vary,
                          vary ? strlen(vary) : 0, 200, &fr, f, 2);
    cr_assert_not_null(w);
    cr_assert_eq(cache_write_body(w, body, strlen(body)), 0);
    struct cache_obj *o = cache_write_end(w);
    cr_assert_not_null(o);
    return o;
}

static struct cache_obj *find(struct cache_zone *z, const char *key)
{
    struct cache_found f;
    cache_lookup(z, key, strlen(key), NULL, 0, &f);
    return f.obj;
}

static void cleanup(void)
{
    cache_shutdown();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf /tmp/portico-unit-cache-%d-*", (int)getpid());
    cr_assert_eq(system(cmd), 0);
}

Test(zone, store_lookup_and_fields, .fini = cleanup)
{
    struct cache_zone *z = zone("a", 0, 1 << 20);
    cache_obj_unref(put(z, "k1", "hello", NULL, NULL));
    struct cache_obj *o = find(z, "k1");
    cr_assert_not_null(o);
    cr_assert_eq(o->body_len, 5);
    cr_assert_not_null(o->body); /* memory tier */
    cr_assert_eq(memcmp(o->body, "hello", 5), 0);
    cr_assert_eq(o->nfields, 2);
    cr_assert(slice_eq(o->fields[1].value, SL("\"1\"")));
    cache_obj_unref(o);
    cr_assert_null(find(z, "k2"));
}

Test(zone, disk_only_reads_the_file, .fini = cleanup)
{
    struct cache_zone *z = zone("b", 0, 0);
    cache_obj_unref(put(z, "k", "on disk", NULL, NULL));
    struct cache_obj *o = find(z, "k");
    cr_assert_null(o->body);
    int fd = cache_open_body(o);
    cr_assert_geq(fd, 0);
    char buf[16] = {0};
    cr_assert_eq(pread(fd, buf, sizeof(buf), o->file_hdr_len), 7);
    cr_assert_str_eq(buf, "on disk");
    close(fd);
    cache_obj_unref(o);
}

Test(zone, variants_and_purge, .fini = cleanup)
{
    struct cache_zone *z = zone("c", 0, 1 << 20);
    cache_obj_unref(put(z, "k\naccept:a\n", "A", "k", "accept"));
    cache_obj_unref(put(z, "k\naccept:b\n", "B", "k", "accept"));
    struct cache_found f;
    struct arena a;
    arena_init(&a, 1024, 0);
    cache_lookup(z, "k", 1, &a, 0, &f);
    cr_assert_null(f.obj);
    cr_assert_str_eq(f.vary, "accept");
    arena_deinit(&a);
    struct cache_obj *o = find(z, "k\naccept:b\n");
    cr_assert_not_null(o);
    cache_obj_unref(o);
    cr_assert_eq(cache_purge(z, "k", 1), 2);
    cr_assert_null(find(z, "k\naccept:a\n"));
    cr_assert_null(find(z, "k\naccept:b\n"));
}

Test(zone, prefix_purge, .fini = cleanup)
{
    struct cache_zone *z = zone("d", 0, 1 << 20);
    cache_obj_unref(put(z, "http://h/a/1", "1", NULL, NULL));
    cache_obj_unref(put(z, "http://h/a/2", "2", NULL, NULL));
    cache_obj_unref(put(z, "http://h/b/1", "3", NULL, NULL));
    cr_assert_eq(cache_purge_prefix(z, "http://h/a/", 11), 2);
    cr_assert_null(find(z, "http://h/a/1"));
    struct cache_obj *o = find(z, "http://h/b/1");
    cr_assert_not_null(o);
    cache_obj_unref(o);
}

Test(zone, lock_is_exclusive_until_old, .fini = cleanup)
{
    struct cache_zone *z = zone("e", 0, 0);
    cr_assert(cache_lock(z, "k", 1, 1000, 5000));
    cr_assert_not(cache_lock(z, "k", 1, 2000, 5000));
    cr_assert(cache_lock(z, "k", 1, 7000, 5000)); /* the holder is too old */
    cache_unlock(z, "k", 1);
    cr_assert(cache_lock(z, "k", 1, 7001, 5000));
}

Test(zone, eviction_under_max_size, .fini = cleanup)
{
    struct cache_zone *z = zone("f", 4096, 0);
    char body[1000];
    memset(body, 'x', sizeof(body) - 1);
    body[sizeof(body) - 1] = 0;
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cache_obj_unref(put(z, key, body, NULL, NULL));
    }
    struct cache_stats st;
    cache_zone_stats(z, &st);
    cr_assert_leq(st.disk_bytes, 4096);
    cr_assert_gt(st.evictions, 0);
    cr_assert_null(find(z, "k0"));
    struct cache_obj *o = find(z, "k9");
    cr_assert_not_null(o);
    cache_obj_unref(o);
}

Test(zone, index_rebuilt_after_restart, .fini = cleanup)
{
    struct cache_zone *z = zone("g", 0, 0);
    cache_obj_unref(put(z, "persist", "body", NULL, NULL));
    cache_shutdown();
    z = zone("g", 0, 0);
    struct cache_obj *o = find(z, "persist");
    cr_assert_not_null(o);
    cr_assert_eq(o->body_len, 4);
    cr_assert_eq(o->fresh.lifetime_ms, 60000);
    cache_obj_unref(o);
}

Test(cc, cdn_cache_control_replaces_cache_control)
{
    struct cache_fresh fr;
    struct http_field a[] = {F("Cache-Control", "no-store"), F("CDN-Cache-Control", "max-age=60")};
    cr_assert_eq(store(200, a, 2, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 60000);
    struct http_field b[] = {F("Cache-Control", "max-age=60"), F("CDN-Cache-Control", "private")};
    cr_assert_eq(store(200, b, 2, NULL, 0, &fr), CACHE_STORE_PRIVATE);
    /* not a valid Structured Field, or max-age not an integer: ignored */
    struct http_field c[] = {F("Cache-Control", "no-store"),
                             F("CDN-Cache-Control", "max-age=60, &&&")};
    cr_assert_eq(store(200, c, 2, NULL, 0, &fr), CACHE_STORE_NO_STORE);
    struct http_field d[] = {F("Cache-Control", "no-store"),
                             F("CDN-Cache-Control", "max-age=\"60\"")};
    cr_assert_eq(store(200, d, 2, NULL, 0, &fr), CACHE_STORE_NO_STORE);
    struct http_field e[] = {F("CDN-Cache-Control", "foo;a=1, max-age=5")};
    cr_assert_eq(store(200, e, 1, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_eq(fr.lifetime_ms, 5000);
}

Test(date, strict_forms)
{
    /* RFC 850 has a long day name and a 2-digit year */
    cr_assert_eq(http_date_parse(SL("Thu, 18-Aug-2050 02:01:18 GMT")), -1);
    cr_assert_eq(http_date_parse(SL("Thursday, 18 Aug 2050 02:01:18 GMT")), -1);
}

Test(store, age_list_takes_the_first_value)
{
    struct cache_fresh fr;
    struct http_field f[] = {F("Cache-Control", "max-age=60"), F("Age", "7200, 0")};
    cr_assert_eq(store(200, f, 2, NULL, 0, &fr), CACHE_STORE_OK);
    cr_assert_geq(fr.initial_age_ms, 7200000);
}

static int memfd_of(const char *p, size_t len)
{
    int fd = memfd_create("t", 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, p, len), (ssize_t)len);
    return fd;
}

Test(zone, files_read_back_strictly, .fini = cleanup)
{
    struct cache_zone *z = zone("h", 0, 0);
    cache_obj_unref(put(z, "strict", "the body", NULL, NULL));
    char cmd[400], path[512] = "";
    snprintf(cmd, sizeof(cmd), "find %s -type f -name '[0-9a-f]*'", dir);
    FILE *f = popen(cmd, "r");
    cr_assert(fgets(path, sizeof(path), f));
    pclose(f);
    path[strcspn(path, "\n")] = 0;
    char buf[4096];
    FILE *in = fopen(path, "rb");
    size_t n = fread(buf, 1, sizeof(buf), in);
    fclose(in);
    uint64_t size;
    int fd = memfd_of(buf, n);
    struct cache_obj *o = cache_obj_read(fd, &size);
    close(fd);
    cr_assert_not_null(o);
    cr_assert(size == n && o->body_len == 8 && o->key_len == 6);
    cache_obj_unref(o);
    /* one byte short, one byte of garbage more, a bad magic: refused */
    fd = memfd_of(buf, n - 1);
    cr_assert_null(cache_obj_read(fd, &size));
    close(fd);
    buf[n] = 'x';
    fd = memfd_of(buf, n + 1);
    cr_assert_null(cache_obj_read(fd, &size));
    close(fd);
    buf[0] ^= 1;
    fd = memfd_of(buf, n);
    cr_assert_null(cache_obj_read(fd, &size));
    close(fd);
}
