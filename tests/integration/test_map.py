"""`map` (nginx's ngx_http_map_module): variables looked up from another
string, usable anywhere a variable is (headers, return, proxy_pass, logs)."""
import pytest

from conftest import IS_NGINX, get, wait_for

MAPS = r"""
map $http_upgrade $connection_upgrade {
    default upgrade;
    ""      close;
}
map $http_user_agent $agent {
    default                 other;
    ~*(google|bing)bot      bot;
    ~^curl/(?<major>\d+)    curl-$major;
    ~^Wget/(\d+)\.(\d+)     wget-$1-$2;
    ~^curl                  never-reached;
}
map $host $site {
    hostnames;
    default            other;
    .example.com       dot;
    *.api.example.com  api;
    www.example.*      www;
    exact.example.net  exact;
}
map "$request_method:$arg_k" $pair {
    GET:1     get-one;
    \default  escaped;
    default   none;
}
map $agent $agent_class {
    bot       crawler;
    default   "human ($agent)";
}
"""


def body(r):
    return r.text.strip()


@pytest.fixture(scope="module")
def maps_proxy(mres):
    # the server comes first: maps may be used before they are written
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location / {
                return 200 "$connection_upgrade|$agent|$site|$pair|$agent_class\\n";
            }
        }
    """ + MAPS)


def test_exact_and_empty_keys(maps_proxy):
    p = maps_proxy
    assert body(get(p.port, "/")).split("|")[0] == "close"
    assert body(get(p.port, "/", headers=[("Upgrade", "websocket")])).split("|")[0] == "upgrade"


@pytest.mark.parametrize("ua,want", [
    ("Mozilla/5.0 (compatible; Googlebot/2.1)", "bot"),
    ("BINGBOT", "bot"),  # ~* is caseless
    ("curl/8.1.2", "curl-8"),  # named capture in the value; first regex wins
    ("Wget/1.21", "wget-1-21"),
    ("lynx", "other"),
])
def test_regex_keys_and_captures(maps_proxy, ua, want):
    assert body(get(maps_proxy.port, "/", headers=[("User-Agent", ua)])).split("|")[1] == want


@pytest.mark.parametrize("host,want", [
    ("example.com", "dot"),  # ".example.com" is the domain and all under it
    ("shop.example.com", "dot"),
    ("Exact.EXAMPLE.net.", "exact"),  # case and the trailing dot do not matter
    ("a.b.api.example.com", "api"),  # the longest wildcard wins
    ("www.example.org", "www"),
    ("example.org", "other"),
])
def test_hostnames(maps_proxy, host, want):
    assert body(get(maps_proxy.port, "/", host=host)).split("|")[2] == want


def test_complex_source_escaped_key_and_chained_maps(maps_proxy):
    p = maps_proxy
    assert body(get(p.port, "/?k=1")).split("|")[3] == "get-one"
    assert body(get(p.port, "/?k=2")).split("|")[3] == "none"
    # a map whose source is another map; its value uses a variable
    assert body(get(p.port, "/", headers=[("User-Agent", "Googlebot")])).split("|")[4] == "crawler"
    assert body(get(p.port, "/", headers=[("User-Agent", "lynx")])).split("|")[4] == "human (other)"


def test_map_picks_the_upstream_and_sets_headers(res):
    """Canary routing: a cookie picks the upstream group of proxy_pass; the
    same map feeds a header to the origin and the access log."""
    stable = res.origin("stable")
    canary = res.origin("canary")
    p = res.proxy("""
        log_format m '$request_uri pool=$pool';
        access_log {tmp}/map.log m;
        upstream stable_pool { server 127.0.0.1:%d; }
        upstream canary_pool { server 127.0.0.1:%d; }
        map $cookie_release $pool {
            default  stable_pool;
            beta     canary_pool;
        }
        server {
            listen 127.0.0.1:{port};
            location / {
                proxy_pass http://$pool;
                proxy_set_header X-Pool $pool;
            }
        }
    """ % (stable.port, canary.port))
    assert get(p.port, "/a").json()["origin"] == "stable"
    r = get(p.port, "/b", headers=[("Cookie", "release=BETA")])
    assert r.json()["origin"] == "canary"
    assert ["X-Pool", "canary_pool"] in r.json()["headers"]
    if not IS_NGINX:
        wait_for(lambda: open(f"{p.tmp}/map.log").read().count("\n") >= 2)
        assert open(f"{p.tmp}/map.log").read().splitlines() == [
            "/a pool=stable_pool", "/b pool=canary_pool"]


def test_reload_changes_the_map(res):
    conf = """
        map $arg_x $y { default %s; }
        server { listen 127.0.0.1:{port}; location / { return 200 "$y"; } }
    """
    p = res.proxy(conf % "one")
    assert get(p.port, "/").text == "one"
    p.reload(conf % "two", until=lambda: get(p.port, "/").text == "two")


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ('map $nope_zzz $x { default 1; }', 'unknown "nope_zzz" variable'),
    ('map $uri $x { ~(unclosed 1; }', "pcre2_compile() failed"),
    ('map $uri $x { a 1; A 2; }', 'conflicting parameter "a"'),
    ('map $uri $x { default 1; default 2; }', "duplicate default map parameter"),
    ('map $uri $host { default 1; }', 'the variable "$host" is built in'),
    ('map $uri $x { default 1; }\nmap $uri $x { default 2; }', 'the duplicate "x" variable'),
    ('map $uri $x { a 1 2; }', "invalid number of the map parameters"),
    ('map $host $x { hostnames; example.com 1; .example.com 2; }',
     'conflicting parameter ".example.com"'),
    ('map $uri x { a 1; }', 'invalid variable name "x"'),
    ('map $uri $x { a $nope_zzz; }', 'unknown "nope_zzz" variable'),
])
def test_bad_maps_are_refused_with_file_and_line(res, text, msg):
    p = res.proxy_unstarted(text + "\nserver { listen 127.0.0.1:{port}; }")
    out = p.run_cmd("-t").output
    assert msg in out, out
    assert "portico.conf:8:" in out or "portico.conf:9:" in out, out


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
def test_map_outside_http_is_refused(res):
    p = res.proxy_unstarted("server { listen 127.0.0.1:{port}; map $uri $x { default 1; } }")
    out = p.run_cmd("-t").output
    assert '"map" directive is not allowed here' in out, out


@pytest.mark.skipif(IS_NGINX, reason="Portico's log line")
def test_a_cycle_is_empty_and_logged(res):
    p = res.proxy("""
        map $b $a { default "a$b"; }
        map $a $b { default "b$a"; }
        server { listen 127.0.0.1:{port}; location / { return 200 "[$a]"; } }
    """)
    r = get(p.port, "/")
    assert r.status == 200
    p.wait_error_log(r'cycle while evaluating variable "a"')


def murmur2(data: bytes) -> int:
    """nginx's ngx_murmur_hash2, for the expected split_clients buckets."""
    m, mask = 0x5bd1e995, 0xffffffff
    h = len(data) & mask
    i = 0
    while len(data) - i >= 4:
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
        i += 4
    rest = len(data) - i
    if rest == 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest >= 1:
        h ^= data[i]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def test_split_clients_buckets_match_nginx(res):
    p = res.proxy("""
        split_clients "${arg_id}salt" $bucket {
            10%     a;
            25.5%   b;
            0.5%    c;
            *       d;
        }
        server { listen 127.0.0.1:{port}; location / { return 200 "$bucket"; } }
    """)
    bounds, last = [], 0
    for pct in (1000, 2550, 50):
        last += pct * 0xffffffff // 10000
        bounds.append(last)
    seen = set()
    for i in range(300):
        h = murmur2(b"%dsalt" % i)
        want = next((v for b, v in zip(bounds, "abc") if h < b), "d")
        got = get(p.port, f"/?id={i}").text
        assert got == want, (i, got, want)
        seen.add(got)
    assert seen >= {"a", "b", "d"}


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ('split_clients $uri $x { 60% a; 50% b; }', "percent total is greater than 100%"),
    ('split_clients $uri $x { 1.234% a; }', 'invalid percent value "1.234%"'),
    ('split_clients $uri $x { 0% a; }', 'invalid percent value "0%"'),
    ('split_clients $uri $x { 10% a b; }', "invalid number of the split_clients parameters"),
])
def test_bad_split_clients(res, text, msg):
    p = res.proxy_unstarted(text + "\nserver { listen 127.0.0.1:{port}; }")
    out = p.run_cmd("-t").output
    assert msg in out and "portico.conf:8:" in out, out


def test_geo_longest_network_and_realip(res):
    p = res.proxy("""
        set_real_ip_from 127.0.0.1;
        geo $net {
            default      0;
            127.0.0.0/8  loop;
            10.0.0.0/8   ten;
            10.1.0.0/16  ten-one;
            ::1          v6loop;
        }
        geo $http_x_ip $region {
            default        none;
            192.0.2.0/24   test-net;
            2001:db8::/32  doc6;
        }
        server {
            listen 127.0.0.1:{port};
            location /deny { if ($net = 0) { return 403; } return 200 "ok"; }
            location / { return 200 "$net|$region"; }
        }
    """)

    def val(headers=()):
        return get(p.port, "/", headers=list(headers)).text

    assert val() == "loop|none"
    assert val([("X-Real-IP", "10.1.2.3")]) == "ten-one|none"  # the longest network
    assert val([("X-Real-IP", "10.2.0.1")]) == "ten|none"
    assert val([("X-Real-IP", "198.51.100.1")]) == "0|none"
    assert val([("X-Ip", "192.0.2.77")]).endswith("|test-net")
    assert val([("X-Ip", "2001:db8::5")]).endswith("|doc6")
    assert val([("X-Ip", "junk")]).endswith("|none")
    assert get(p.port, "/deny", headers=[("X-Real-IP", "198.51.100.1")]).status == 403
    assert get(p.port, "/deny").status == 200


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ('geo $x { 10.0.0.0/40 a; }', 'invalid network "10.0.0.0/40" in geo'),
    ('geo $x { 10.0.0.0/8 a; 10.0.0.0/8 b; }', 'duplicate network "10.0.0.0/8" in geo'),
    ('geo $x { ranges; }', '"ranges" is not supported in geo'),
    ('geo $x { default a; default b; }', "duplicate default geo parameter"),
])
def test_bad_geo(res, text, msg):
    p = res.proxy_unstarted(text + "\nserver { listen 127.0.0.1:{port}; }")
    out = p.run_cmd("-t").output
    assert msg in out and "portico.conf:8:" in out, out


def test_geo_mapped_addresses_and_non_addresses_as_nginx(res):
    p = res.proxy("""
        geo $arg_ip $g {
            default      dflt;
            10.1.0.0/16  ten-one;
            0.0.0.0/0    any4;
            ::ffff:0:0/96 mapped;
        }
        server { listen 127.0.0.1:{port}; location / { return 200 "$g"; } }
    """)
    assert get(p.port, "/?ip=::ffff:10.1.2.3").text == "ten-one"  # looked up as IPv4
    assert get(p.port, "/?ip=foo").text == "any4"  # as 255.255.255.255
    assert get(p.port, "/?ip=2001:db8::1").text == "dflt"
