"""proxy_cache: RFC 9111 freshness, Vary, revalidation, conditionals, ranges,
HEAD, stale answers, the update lock, purge, invalidation, persistence across
restarts, eviction, the memory tier, and $upstream_cache_status."""
import email.utils
import glob
import hashlib
import os
import threading
import time
import urllib.parse

import pytest

from conftest import Background, Conn, _Server, _read_head, _hget, pattern, request, wait_for




class CacheOrigin(_Server):
    """An origin whose answers are driven by the query string:
      status=N  cc=Cache-Control  exp=SECONDS (Expires from now)  etag=TAG
      lm=SECONDS_AGO (Last-Modified)  vary=Vary  cookie=1  size=N (pattern
      body)  delay=MS  h=Name:Value (repeatable)  loc=Location
    A request whose If-None-Match names the etag gets a 304. The body is
    "<path> #<n>" where n counts the requests for that target, so a test can
    tell a cached answer from a fresh one. `mode` breaks it: "close" (drop
    the connection), "500", "stall"."""

    def __init__(self):
        self.requests = []
        self.counts = {}
        self.mode = None
        super().__init__("cache-origin")

    def handle(self, s, cid, peer):
        rfile = s.makefile("rb")
        while not self.stopping.is_set():
            got = _read_head(rfile)
            if got is None:
                return
            (method, target, version), headers = got
            cl = int(_hget(headers, "content-length") or 0)
            if cl:
                rfile.read(cl)
            with self.lock:
                self.requests.append({"method": method, "target": target, "headers": headers})
                n = self.counts.get(target, 0) + 1
                self.counts[target] = n
            mode = self.mode
            if mode == "close":
                return
            if mode == "stall":
                self.stopping.wait(30)
                return
            s.sendall(self.answer(method, target, headers, n, mode))

    def answer(self, method, target, headers, n, mode):
        u = urllib.parse.urlsplit(target)
        q = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
        d = {}
        extra = []
        for k, v in q:
            if k == "h":
                extra.append(tuple(v.split(":", 1)))
            else:
                d[k] = v
        if "delay" in d:
            time.sleep(int(d["delay"]) / 1000.0)
        status = 500 if mode == "500" else int(d.get("status", 200))
        hdrs = [("Date", email.utils.formatdate(usegmt=True))]
        if "cc" in d:
            hdrs.append(("Cache-Control", d["cc"]))
        if "exp" in d:
            hdrs.append(("Expires", email.utils.formatdate(time.time() + int(d["exp"]), usegmt=True)))
        if "etag" in d:
            hdrs.append(("ETag", '"%s"' % d["etag"]))
        if "lm" in d:
            hdrs.append(("Last-Modified", email.utils.formatdate(time.time() - int(d["lm"]), usegmt=True)))
        if "vary" in d:
            hdrs.append(("Vary", d["vary"]))
        if "cookie" in d:
            hdrs.append(("Set-Cookie", "s=1"))
        if "loc" in d:
            hdrs.append(("Location", d["loc"]))
        hdrs += extra
        inm = _hget(headers, "if-none-match")
        if "etag" in d and inm == '"%s"' % d["etag"] and status == 200:
            status, body = 304, b""
        elif "size" in d:
            body = pattern(int(d["size"]))
        else:
            body = ("%s #%d" % (u.path, n)).encode()
        if status != 304:
            hdrs.append(("Content-Length", str(len(body))))
        out = "HTTP/1.1 %d X\r\n" % status + "".join("%s: %s\r\n" % h for h in hdrs) + "\r\n"
        return out.encode("latin-1") + (b"" if method == "HEAD" or status == 304 else body)

    def count(self, target):
        with self.lock:
            return self.counts.get(target, 0)

    def last(self):
        with self.lock:
            return self.requests[-1]


CONF = r"""
proxy_cache_path {tmp}/cache levels=1:2 keys_zone=main:1m inactive=1h;
proxy_cache_path {tmp}/small levels=1 keys_zone=small:1m max_size=100k memory=0;
upstream o { server {origin}; keepalive 8; }
server {
    listen 127.0.0.1:{port};
    add_header X-Cache $upstream_cache_status always;
    proxy_cache main;

    location / { proxy_pass http://o; }
    location /valid/ { proxy_pass http://o; proxy_cache_valid 200 1h; proxy_cache_valid 404 1m; }
    location /rev/ { proxy_pass http://o; proxy_cache_revalidate on; }
    location /stale/ {
        proxy_pass http://o;
        proxy_cache_use_stale error timeout http_500;
        proxy_read_timeout 300ms;
    }
    location /swr/ { proxy_pass http://o; proxy_cache_revalidate on; }
    location /upd/ {
        proxy_pass http://o;
        proxy_cache_use_stale updating;
        proxy_cache_background_update on;
    }
    location /lock/ { proxy_pass http://o; proxy_cache_lock on; proxy_cache_lock_timeout 5s; }
    location /twice/ { proxy_pass http://o; proxy_cache_min_uses 2; }
    location /byp/ {
        proxy_pass http://o;
        proxy_cache_bypass $http_x_bypass;
        proxy_no_cache $http_x_nostore;
    }
    location /cookie/ { proxy_pass http://o; proxy_ignore_headers Set-Cookie; }
    location /small/ { proxy_pass http://o; proxy_cache small; }
    location /nocache/ { proxy_pass http://o; proxy_cache off; }
    location /nohead/ { proxy_pass http://o; proxy_cache_convert_head off; }
    location /p/ { proxy_pass http://o; proxy_cache_purge PURGE from 127.0.0.0/8; }
    location /deny/ { proxy_pass http://o; proxy_cache_purge PURGE from 10.0.0.0/8; }
}
"""


@pytest.fixture(scope="module")
def env(mres):
    o = mres.add(CacheOrigin())
    p = mres.proxy(CONF, origin=o.addr)
    return p, o


_seq = [0]


def uniq(path):
    """A target of its own per test (the cache is shared by the module)."""
    _seq[0] += 1
    sep = "&" if "?" in path else "?"
    return f"{path}{sep}u={_seq[0]}"


def get(p, target, headers=(), method="GET"):
    return request(p.port, method, target, headers=headers)


def xc(r):
    return r.header("x-cache")


def test_miss_then_hit_with_age(env):
    p, o = env
    t = uniq("/a?cc=max-age=60")
    r1 = get(p, t)
    r2 = get(p, t)
    assert (r1.status, xc(r1), xc(r2)) == (200, "MISS", "HIT")
    assert r1.body == r2.body and o.count(t) == 1
    assert r2.header("age") is not None and int(r2.header("age")) >= 0


# Dates have whole seconds: a response stored across a second boundary is up
# to 1 s old at once (RFC 9111 4.2.3), so a test that wants a HIT right after
# a refresh uses max-age=2.


def test_expired_after_max_age(env):
    p, o = env
    t = uniq("/a?cc=max-age=2")
    assert xc(get(p, t)) == "MISS"
    time.sleep(2.1)  # the freshness lifetime has to pass: there is no event to wait on
    r = get(p, t)
    assert xc(r) == "EXPIRED" and o.count(t) == 2
    assert xc(get(p, t)) == "HIT"


@pytest.mark.parametrize("q", ["cc=no-store", "cc=private", "cc=max-age=60&cookie=1", "",
                               "cc=max-age=60&vary=*", "cc=max-age=60&status=206"])
def test_not_stored(env, q):
    p, o = env
    t = uniq("/a?" + q)
    get(p, t)
    r = get(p, t)
    assert xc(r) == "MISS" and o.count(t) == 2


def test_set_cookie_ignored_by_config(env):
    p, o = env
    t = uniq("/cookie/?cc=max-age=60&cookie=1")
    get(p, t)
    assert xc(get(p, t)) == "HIT" and o.count(t) == 1


def test_s_maxage_wins_over_max_age(env):
    p, o = env
    t = uniq("/a?cc=max-age=0,s-maxage=60")
    get(p, t)
    assert xc(get(p, t)) == "HIT"


def test_expires_and_heuristic(env):
    p, o = env
    t = uniq("/a?exp=60")
    get(p, t)
    assert xc(get(p, t)) == "HIT"
    t = uniq("/a?exp=-10")
    get(p, t)
    assert xc(get(p, t)) == "MISS"
    t = uniq("/a?lm=100000")  # 10% of a day old: fresh for hours
    get(p, t)
    assert xc(get(p, t)) == "HIT"


def test_proxy_cache_valid_when_origin_is_silent(env):
    p, o = env
    t = uniq("/valid/x")
    get(p, t)
    assert xc(get(p, t)) == "HIT"
    t = uniq("/valid/y?status=404")
    get(p, t)
    r = get(p, t)
    assert (r.status, xc(r)) == (404, "HIT")
    t = uniq("/valid/z?cc=no-store")
    get(p, t)
    assert xc(get(p, t)) == "MISS"


def test_authorization_needs_public(env):
    p, o = env
    auth = [("Authorization", "Basic dTpw")]
    t = uniq("/a?cc=max-age=60")
    get(p, t, auth)
    assert xc(get(p, t, auth)) == "MISS"
    t = uniq("/a?cc=max-age=60,public")
    get(p, t, auth)
    assert xc(get(p, t, auth)) == "HIT"


def test_vary_keeps_variants(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&vary=Accept-Language")
    en, fr = [("Accept-Language", "en")], [("Accept-Language", "fr")]
    r_en = get(p, t, en)
    r_fr = get(p, t, fr)
    assert (xc(r_en), xc(r_fr)) == ("MISS", "MISS")
    h_en, h_fr = get(p, t, en), get(p, t, fr)
    assert (xc(h_en), xc(h_fr)) == ("HIT", "HIT")
    assert h_en.body == r_en.body and h_fr.body == r_fr.body and r_en.body != r_fr.body
    # whitespace differences select the same variant
    assert xc(get(p, t, [("Accept-Language", " en ")])) == "HIT"
    assert xc(get(p, t)) == "MISS"  # no Accept-Language: a third variant


def test_request_directives(env):
    p, o = env
    t = uniq("/a?cc=max-age=60")
    get(p, t)
    assert xc(get(p, t, [("Cache-Control", "no-cache")])) == "EXPIRED"
    assert xc(get(p, t, [("Pragma", "no-cache")])) == "EXPIRED"
    assert xc(get(p, t, [("Cache-Control", "max-age=0")])) == "EXPIRED"
    assert xc(get(p, t, [("Cache-Control", "min-fresh=120")])) == "EXPIRED"
    assert xc(get(p, t, [("Cache-Control", "max-age=30")])) == "HIT"
    miss = uniq("/a?cc=max-age=60")
    r = get(p, miss, [("Cache-Control", "only-if-cached")])
    assert r.status == 504 and o.count(miss) == 0


def test_max_stale_accepts_stale(env):
    p, o = env
    t = uniq("/a?cc=max-age=1")
    get(p, t)
    time.sleep(1.1)
    r = get(p, t, [("Cache-Control", "max-stale=60")])
    assert xc(r) == "STALE" and o.count(t) == 1
    t = uniq("/a?cc=max-age=1,must-revalidate")
    get(p, t)
    time.sleep(1.1)
    assert xc(get(p, t, [("Cache-Control", "max-stale")])) == "EXPIRED"


def test_revalidation_304_refreshes(env):
    p, o = env
    t = uniq("/rev/?cc=max-age=2&etag=v1&h=X-Gen:1")
    first = get(p, t)
    time.sleep(2.1)
    r = get(p, t)
    assert xc(r) == "REVALIDATED" and r.status == 200 and r.body == first.body
    assert _hget(o.last()["headers"], "if-none-match") == '"v1"'
    assert xc(get(p, t)) == "HIT"  # the 304 made it fresh again


def test_client_conditionals_from_cache(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&etag=e1&lm=3600")
    get(p, t)
    r = get(p, t, [("If-None-Match", '"e1"')])
    assert r.status == 304 and r.header("etag") == '"e1"' and r.body == b""
    assert get(p, t, [("If-None-Match", 'W/"e1", "x"')]).status == 304
    assert get(p, t, [("If-None-Match", '"other"')]).status == 200
    ims = email.utils.formatdate(time.time(), usegmt=True)
    assert get(p, t, [("If-Modified-Since", ims)]).status == 304
    old = email.utils.formatdate(time.time() - 7200, usegmt=True)
    assert get(p, t, [("If-Modified-Since", old)]).status == 200
    assert o.count(t) == 1
    # the client's conditionals never reach the origin on a miss
    t2 = uniq("/a?cc=max-age=60&etag=e2")
    r = get(p, t2, [("If-None-Match", '"e2"')])
    assert _hget(o.last()["headers"], "if-none-match") is None and r.status == 200


def test_ranges_and_head_from_cache(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&size=1000")
    get(p, t)
    r = get(p, t, [("Range", "bytes=10-19")])
    assert r.status == 206 and r.body == pattern(1000)[10:20]
    assert r.header("content-range") == "bytes 10-19/1000"
    r = get(p, t, [("Range", "bytes=-5")])
    assert r.status == 206 and r.body == pattern(1000)[-5:]
    r = get(p, t, [("Range", "bytes=5000-")])
    assert r.status == 416 and r.header("content-range") == "bytes */1000"
    r = get(p, t, [("Range", "bytes=0-1,5-6")])  # several ranges: the whole body
    assert r.status == 200 and len(r.body) == 1000
    h = get(p, t, method="HEAD")
    assert h.status == 200 and h.header("content-length") == "1000" and xc(h) == "HIT"
    assert o.count(t) == 1


def test_head_miss_is_fetched_with_get(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&size=300")
    h = get(p, t, method="HEAD")
    assert h.status == 200 and h.body == b"" and xc(h) == "MISS"
    assert o.last()["method"] == "GET"
    g = get(p, t)
    assert xc(g) == "HIT" and g.body == pattern(300)


def test_head_not_converted_is_not_stored(env):
    p, o = env
    t = uniq("/nohead/?cc=max-age=60&size=300")
    h = get(p, t, method="HEAD")
    assert h.status == 200 and o.last()["method"] == "HEAD"
    g = get(p, t)
    assert xc(g) == "MISS" and g.body == pattern(300)


def test_stale_if_origin_errors(env):
    p, o = env
    t = uniq("/stale/?cc=max-age=1")
    first = get(p, t)
    time.sleep(1.1)
    try:
        for mode in ("close", "500", "stall"):
            o.mode = mode
            r = get(p, t)
            assert (r.status, xc(r), r.body) == (200, "STALE", first.body), mode
    finally:
        o.mode = None
    assert xc(get(p, t)) == "EXPIRED"


def test_stale_if_error_from_cache_control(env):
    p, o = env
    t = uniq("/a?cc=max-age=1,stale-if-error=60")
    first = get(p, t)
    time.sleep(1.1)
    o.mode = "500"
    try:
        r = get(p, t)
    finally:
        o.mode = None
    assert (r.status, xc(r), r.body) == (200, "STALE", first.body)
    # without stale-if-error the error goes through
    t = uniq("/a?cc=max-age=1")
    get(p, t)
    time.sleep(1.1)
    o.mode = "500"
    try:
        assert get(p, t).status == 500
    finally:
        o.mode = None


def test_stale_while_revalidate_updates_in_background(env):
    p, o = env
    t = uniq("/swr/?cc=max-age=1,stale-while-revalidate=60")
    first = get(p, t)
    time.sleep(1.1)
    r = get(p, t)
    assert (xc(r), r.body) == ("STALE", first.body)
    wait_for(lambda: o.count(t) == 2, what="the background update")
    wait_for(lambda: xc(get(p, t)) == "HIT", what="the refreshed response")
    assert get(p, t).body != first.body


def test_use_stale_updating_with_background_update(env):
    p, o = env
    t = uniq("/upd/?cc=max-age=1&delay=200")
    first = get(p, t)
    time.sleep(1.1)
    r = get(p, t)
    assert (xc(r), r.body) == ("STALE", first.body)
    wait_for(lambda: o.count(t) == 2, what="the background update")
    wait_for(lambda: get(p, t).body != first.body, what="the refreshed response")


def test_lock_collapses_concurrent_misses(env):
    p, o = env
    t = uniq("/lock/?cc=max-age=60&delay=300")
    jobs = [Background(lambda: get(p, t)) for _ in range(8)]
    rs = [j.result() for j in jobs]
    assert all(r.status == 200 for r in rs)
    assert o.count(t) == 1
    assert len({r.body for r in rs}) == 1
    assert sorted(xc(r) for r in rs).count("MISS") == 1


def test_without_lock_every_miss_goes_upstream(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&delay=300")
    jobs = [Background(lambda: get(p, t)) for _ in range(4)]
    [j.result() for j in jobs]
    assert o.count(t) == 4


def test_min_uses(env):
    p, o = env
    t = uniq("/twice/?cc=max-age=60")
    get(p, t)
    get(p, t)
    assert xc(get(p, t)) == "HIT" and o.count(t) == 2


def test_bypass_and_no_cache(env):
    p, o = env
    t = uniq("/byp/?cc=max-age=60")
    get(p, t, [("X-Nostore", "1")])
    assert xc(get(p, t)) == "MISS"  # not stored
    assert xc(get(p, t)) == "HIT"
    r = get(p, t, [("X-Bypass", "1")])
    assert xc(r) == "BYPASS" and o.count(t) == 3


def test_cache_off(env):
    p, o = env
    t = uniq("/nocache/?cc=max-age=60")
    get(p, t)
    r = get(p, t)
    assert r.header("x-cache") in (None, "") and o.count(t) == 2


def test_purge_exact_and_wildcard(env):
    p, o = env
    a, b = uniq("/p/one?cc=max-age=60"), uniq("/p/two?cc=max-age=60")
    for t in (a, b):
        get(p, t)
        assert xc(get(p, t)) == "HIT"
    r = get(p, a, method="PURGE")
    assert r.status == 200 and r.json()["purged"] == 1
    assert xc(get(p, a)) == "MISS"
    assert get(p, "/p/nothing-here", method="PURGE").status == 404
    r = get(p, "/p/*", method="PURGE")
    assert r.status == 200 and r.json()["purged"] >= 2
    assert xc(get(p, b)) == "MISS" and xc(get(p, a)) == "MISS"


def test_purge_refused_outside_the_acl(env):
    p, o = env
    t = uniq("/deny/?cc=max-age=60")
    get(p, t)
    assert get(p, t, method="PURGE").status == 403
    assert xc(get(p, t)) == "HIT"


def test_unsafe_methods_invalidate(env):
    p, o = env
    other = uniq("/a/other?cc=max-age=60")
    t = uniq("/a?cc=max-age=60&loc=" + urllib.parse.quote(other, safe="/"))
    get(p, t)
    get(p, other)
    assert (xc(get(p, t)), xc(get(p, other))) == ("HIT", "HIT")
    r = request(p.port, "POST", t, body=b"x")
    assert r.status == 200
    assert xc(get(p, t)) == "MISS"
    assert xc(get(p, other)) == "MISS"
    # an error answer invalidates nothing
    get(p, t)
    request(p.port, "DELETE", t + "&status=500")
    assert xc(get(p, t)) == "HIT"


def test_large_object_streams_while_stored(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&size=3000000")
    r1 = get(p, t)
    r2 = get(p, t)
    assert (xc(r1), xc(r2)) == ("MISS", "HIT")
    assert hashlib.sha256(r2.body).digest() == hashlib.sha256(pattern(3000000)).digest()
    # too large for the memory tier: served from the file (sendfile), ranges too
    r = get(p, t, [("Range", "bytes=1000000-1199999")])
    assert r.status == 206 and r.body == pattern(3000000)[1000000:1200000]


def test_eviction_keeps_max_size(env):
    p, o = env
    ts = [uniq("/small/?cc=max-age=600&size=30000") for _ in range(8)]
    for t in ts:
        get(p, t)
    files = [f for f in glob.glob(os.path.join(p.tmp, "small", "*", "*")) if os.path.isfile(f)]
    assert sum(os.path.getsize(f) for f in files) <= 100 * 1024
    assert xc(get(p, ts[-1])) == "HIT"
    assert xc(get(p, ts[0])) == "MISS"  # the least recently used went first


def test_memory_tier_serves_without_the_file(env):
    p, o = env
    t = uniq("/a?cc=max-age=60&size=2000")
    get(p, t)
    assert xc(get(p, t)) == "HIT"  # in memory now
    for f in glob.glob(os.path.join(p.tmp, "cache", "*", "*", "*")):
        os.unlink(f)
    r = get(p, t)
    assert xc(r) == "HIT" and r.body == pattern(2000)


def test_disk_only_zone_serves_from_file(env):
    p, o = env
    t = uniq("/small/?cc=max-age=60&size=5000")
    get(p, t)
    r = get(p, t)
    assert xc(r) == "HIT" and r.body == pattern(5000)


def test_access_log_has_cache_status(res):
    o = res.add(CacheOrigin())
    p = res.proxy(r"""
        log_format c '$request_uri $upstream_cache_status';
        proxy_cache_path {tmp}/c keys_zone=z:1m;
        server { listen 127.0.0.1:{port}; access_log {tmp}/c.log c;
                 location / { proxy_pass http://{origin}; proxy_cache z; } }
    """, origin=o.addr)
    get(p, "/x?cc=max-age=60")
    get(p, "/x?cc=max-age=60")
    path = os.path.join(p.tmp, "c.log")
    wait_for(lambda: os.path.exists(path) and open(path).read().count("\n") >= 2, what="log lines")
    assert open(path).read().split("\n")[:2] == ["/x?cc=max-age=60 MISS", "/x?cc=max-age=60 HIT"]


RESTART_CONF = r"""
proxy_cache_path {tmp}/cache levels=1:2 keys_zone=r:1m;
server {
    listen 127.0.0.1:{port};
    add_header X-Cache $upstream_cache_status always;
    location / { proxy_pass http://{origin}; proxy_cache r; }
}
"""


def test_restart_keeps_the_cache(res):
    o = res.add(CacheOrigin())
    p = res.proxy(RESTART_CONF, origin=o.addr)
    first = get(p, "/k?cc=max-age=600&size=7000")
    small = get(p, "/s?cc=max-age=600")
    loaded = p.error_log.count("entries loaded")
    p.stop()
    # a crash mid-write leaves a temp file; a foreign file is not ours
    open(os.path.join(p.tmp, "cache", "tmp.1.1"), "wb").write(b"half")
    p.start()
    wait_for(lambda: p.error_log.count("entries loaded") > loaded, what="the index rebuild")
    r = get(p, "/k?cc=max-age=600&size=7000")
    assert (xc(r), r.body) == ("HIT", first.body)
    assert get(p, "/s?cc=max-age=600").body == small.body
    assert o.count("/k?cc=max-age=600&size=7000") == 1
    assert not os.path.exists(os.path.join(p.tmp, "cache", "tmp.1.1"))
    # the first hit after the restart promoted the object to the memory tier
    for f in glob.glob(os.path.join(p.tmp, "cache", "*", "*", "*")):
        os.unlink(f)
    r = get(p, "/k?cc=max-age=600&size=7000")
    assert (xc(r), r.body) == ("HIT", first.body)


def test_reload_keeps_the_zone(res):
    o = res.add(CacheOrigin())
    p = res.proxy(RESTART_CONF, origin=o.addr)
    get(p, "/k?cc=max-age=600")
    p.reload(RESTART_CONF + "\n# reloaded\n")
    assert xc(get(p, "/k?cc=max-age=600")) == "HIT"


def test_purged_stays_purged_after_restart(res):
    o = res.add(CacheOrigin())
    p = res.proxy(RESTART_CONF.replace("proxy_cache r;", "proxy_cache r; proxy_cache_purge on;"),
                  origin=o.addr)
    get(p, "/g?cc=max-age=600")
    assert get(p, "/g?cc=max-age=600", method="PURGE").status == 200
    loaded = p.error_log.count("entries loaded")
    p.stop()
    p.start()
    wait_for(lambda: p.error_log.count("entries loaded") > loaded, what="the index rebuild")
    assert xc(get(p, "/g?cc=max-age=600")) == "MISS"


@pytest.mark.parametrize("conf, msg", [
    ("server { listen 127.0.0.1:{port}; location / { proxy_pass http://127.0.0.1:1; "
     "proxy_cache nope; } }", 'zone "nope" is unknown'),
    ("proxy_cache_path {tmp}/a keys_zone=z:1m; proxy_cache_path {tmp}/b keys_zone=z:1m;",
     'duplicate zone "z"'),
    ("proxy_cache_path {tmp}/a levels=3 keys_zone=z:1m;", 'invalid "levels"'),
    ("proxy_cache_path {tmp}/a max_size=1m;", 'must have "keys_zone"'),
    ("proxy_cache_path {tmp}/a keys_zone=z:1m; server { listen 127.0.0.1:{port}; "
     "proxy_cache_use_stale sometimes; }", 'invalid value "sometimes"'),
    ("server { listen 127.0.0.1:{port}; location / { proxy_cache_purge PURGE from 300.1.1.1; } }",
     'invalid address "300.1.1.1"'),
    ("server { listen 127.0.0.1:{port}; location / { proxy_cache_purge GET; } }",
     '"GET" cannot be the purge method'),
])
def test_bad_cache_config_is_refused(res, conf, msg):
    p = res.proxy_unstarted(conf)
    out = p.run_cmd("-t")
    assert out.returncode != 0
    assert msg in out.output and "portico.conf:" in out.output


def test_hits_over_http2(res):
    import subprocess
    o = res.add(CacheOrigin())
    p = res.proxy(r"""
        proxy_cache_path {tmp}/c keys_zone=h2:1m;
        server { listen 127.0.0.1:{port} http2;
                 add_header X-Cache $upstream_cache_status always;
                 location / { proxy_pass http://{origin}; proxy_cache h2; } }
    """, origin=o.addr)
    url = f"http://127.0.0.1:{p.port}/h?cc=max-age=60&size=20000"
    outs = [subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", url],
                           capture_output=True, timeout=10).stdout for _ in range(2)]
    assert b"x-cache: MISS" in outs[0] and b"x-cache: HIT" in outs[1]
    assert outs[1].endswith(pattern(20000)) and o.count("/h?cc=max-age=60&size=20000") == 1


def test_api_lists_cache_zones(res):
    o = res.add(CacheOrigin())
    p = res.proxy(r"""
        proxy_cache_path {tmp}/c keys_zone=apiz:1m max_size=1m;
        server { listen 127.0.0.1:{port};
                 location / { proxy_pass http://{origin}; proxy_cache apiz; }
                 location /api { api; } }
    """, origin=o.addr)
    get(p, "/x?cc=max-age=60")
    # the object is stored once the response is complete, which on a busy
    # machine may be a moment after the client has read it
    wait_for(lambda: get(p, "/api/caches").json()["apiz"]["stores"] == 1, what="the store")
    wait_for(lambda: not get(p, "/api/caches").json()["apiz"]["loading"], what="the loader")
    get(p, "/x?cc=max-age=60")
    z = get(p, "/api/caches").json()["apiz"]
    assert (z["entries"], z["hits"], z["stores"], z["max_size"]) == (1, 1, 1, 1048576)
    assert z["disk_bytes"] > 0 and z["loading"] is False
    assert "apiz" in get(p, "/api").json()["caches"]


def test_reload_renamed_zone_reads_the_same_files(res):
    o = res.add(CacheOrigin())
    p = res.proxy(RESTART_CONF, origin=o.addr)
    first = get(p, "/k?cc=max-age=600")
    renamed = RESTART_CONF.replace("keys_zone=r:", "keys_zone=r2:").replace("proxy_cache r;",
                                                                           "proxy_cache r2;")
    p.reload(renamed)
    wait_for(lambda: 'cache "r2"' in p.error_log, what="the new zone's index")
    r = get(p, "/k?cc=max-age=600")
    assert (xc(r), r.body) == ("HIT", first.body)
    p.reload(RESTART_CONF.replace("proxy_cache r;", "proxy_cache off;"))
    assert xc(get(p, "/k?cc=max-age=600")) in (None, "")


def test_background_update_after_a_rewrite_fetches_the_same_uri(res):
    """The refresh is a copy of the routed request: the rewrite is not run a
    second time (it used to fetch /app/app/... and cache that)."""
    o = res.add(CacheOrigin())
    p = res.proxy(r"""
        proxy_cache_path {tmp}/c keys_zone=rw:1m;
        server { listen 127.0.0.1:{port};
                 add_header X-Cache $upstream_cache_status always;
                 location / {
                     rewrite ^/(.*)$ /app/$1 break;
                     proxy_pass http://{origin};
                     proxy_cache rw;
                     proxy_cache_use_stale updating;
                     proxy_cache_background_update on;
                 }
        }
    """, origin=o.addr)
    first = get(p, "/x?cc=max-age=1")
    time.sleep(1.1)
    r = get(p, "/x?cc=max-age=1")
    assert xc(r) == "STALE"
    wait_for(lambda: len(o.requests) == 2, what="the background update")
    assert [q["target"] for q in o.requests] == ["/app/x?cc=max-age=1"] * 2
    assert first.status == 200
