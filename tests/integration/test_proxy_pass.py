"""proxy_pass URI rules, forwarded headers, header rules, hop-by-hop removal,
keep-alive, pipelining, HTTP/1.0, chunked, HEAD, 100-continue, 1xx."""
import hashlib
import re

import pytest

from conftest import IS_NGINX, Conn, RawRecorder, build_request, get, pattern, request

CONF = r"""
upstream u { server {origin}; keepalive 8; }
server {
    listen 127.0.0.1:{port};
    server_name _;
    {ngx_keepalive}

    location /a/ { proxy_pass http://u; }
    location /b/ { proxy_pass http://u/; }
    location /c/ { proxy_pass http://u/x/; }
    location /d { proxy_pass http://u/y; }
    location = /e { proxy_pass http://u/f; }
    location ~ ^/r/(.*)$ { proxy_pass http://u; }
    location ~ ^/v/(.*)$ { proxy_pass http://u/w/$1; }
    location /ru/ { proxy_pass http://u$request_uri; }

    location /fwd/ {
        proxy_pass http://u;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Host $host;
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header X-Vars "$request_method|$uri|$args|$arg_a|$cookie_c|$http_x_custom|$server_port";
        proxy_set_header X-Empty "";
    }
    location /nohdr/ {
        proxy_pass http://u;
        proxy_pass_request_headers off;
        proxy_set_header X-Only yes;
    }
    location /hide/ {
        proxy_pass http://u;
        proxy_hide_header X-Secret;
        proxy_pass_header Server;
    }
    location /add/ {
        proxy_pass http://u;
        add_header X-Add plain;
        add_header X-Always yes always;
    }
    location / { proxy_pass http://u; }
}
"""


@pytest.fixture(scope="module")
def env(mres):
    o = mres.origin("o1")
    p = mres.proxy(CONF, origin=o.addr)
    return p, o


@pytest.fixture
def po(env):
    env[1].clear()
    return env


def upstream_target(po, target, **kw):
    p, o = po
    r = get(p.port, target, **kw)
    assert r.status == 200, r
    return r.json()["target"]


# ---------------------------------------------------------------- URI rules
URI_CASES = [
    ("/a/b?x=1", "/a/b?x=1"),           # no URI part: request URI passed as sent
    ("/a/%41b?q", "/a/%41b?q"),          # ... unnormalized
    ("/b/c?q=1", "/c?q=1"),              # URI "/": location prefix replaced
    ("/b/", "/"),
    ("/c/d/e", "/x/d/e"),
    ("/d/e", "/y/e"),                    # prefix /d, URI /y: plain string replacement
    ("/dzz", "/yzz"),
    ("/e", "/f"),                        # exact location
    ("/e?k=v", "/f?k=v"),
    ("/r/z?k=v", "/r/z?k=v"),            # regex location, no URI: passed unchanged
    ("/v/abc", "/w/abc"),                # variables: URI used as built
    ("/ru/p?q=2", "/ru/p?q=2"),          # $request_uri
    ("/b/%41", "/A"),                    # with a URI part the normalized URI is used
]


@pytest.mark.parametrize("target,expected", URI_CASES, ids=[c[0] for c in URI_CASES])
def test_uri_replacement(po, target, expected):
    assert upstream_target(po, target) == expected


# ---------------------------------------------------------------- forwarded headers
def hdrs(rec):
    return {k.lower(): v for k, v in rec["headers"]}


def test_forwarded_headers(po):
    p, o = po
    r = get(p.port, "/fwd/x?a=1&b=2", host="Example.COM:8080",
            headers=[("X-Forwarded-For", "203.0.113.9"), ("X-Custom", "cv"),
                     ("Cookie", "c=ck; d=2"), ("X-Empty", "client")])
    assert r.status == 200
    h = hdrs(r.json())
    assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["host"] == "example.com"  # $host: lowercased, no port
    assert re.fullmatch(r"[0-9a-f]{32}", h["x-request-id"])
    assert h["x-vars"] == f"GET|/fwd/x|a=1&b=2|1|ck|cv|{p.port}"
    assert "x-empty" not in h  # empty value removes the header


def test_x_forwarded_for_without_incoming(po):
    p, o = po
    h = hdrs(get(p.port, "/fwd/y").json())
    assert h["x-forwarded-for"] == "127.0.0.1"


def test_request_ids_differ(po):
    p, o = po
    a = hdrs(get(p.port, "/fwd/1").json())["x-request-id"]
    b = hdrs(get(p.port, "/fwd/2").json())["x-request-id"]
    assert a != b


def test_default_host_is_proxy_host(po):
    p, o = po
    h = hdrs(get(p.port, "/a/host", host="client.test").json())
    assert h["host"] == "u"


def test_client_headers_passed_by_default(po):
    p, o = po
    h = hdrs(get(p.port, "/a/h", headers=[("X-Custom", "1"), ("Accept", "text/x")]).json())
    assert h["x-custom"] == "1" and h["accept"] == "text/x"


def test_proxy_pass_request_headers_off(po):
    p, o = po
    h = hdrs(get(p.port, "/nohdr/x", headers=[("X-Custom", "1")]).json())
    assert "x-custom" not in h
    assert h["x-only"] == "yes"


def test_proxy_hide_header(po):
    p, o = po
    r = get(p.port, "/hide/x?h=X-Secret:s3&h=X-Visible:v")
    assert not r.has("X-Secret")
    assert r.header("X-Visible") == "v"


def test_proxy_pass_header_server(po):
    p, o = po
    assert get(p.port, "/hide/x").header("Server") == "test-origin"


def test_server_header_hidden_by_default(po):
    p, o = po
    assert get(p.port, "/a/x").header("Server") != "test-origin"


def test_add_header_on_200(po):
    p, o = po
    r = get(p.port, "/add/x")
    assert r.header("X-Add") == "plain" and r.header("X-Always") == "yes"


def test_add_header_not_on_404_unless_always(po):
    p, o = po
    r = get(p.port, "/add/status/404")
    assert r.status == 404
    assert not r.has("X-Add")
    assert r.header("X-Always") == "yes"


# ---------------------------------------------------------------- hop-by-hop
REQ_HOP = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
           ("TE", "trailers, deflate"), ("Trailer", "X-T"), ("Upgrade", "foo/1"),
           ("Proxy-Connection", "keep-alive"), ("X-End-To-End", "kept")]


ND = pytest.mark.nginx_differs  # nginx does not parse Connection tokens, passes these


@pytest.mark.parametrize("name", [pytest.param("X-Hop", marks=ND), "Keep-Alive", "TE",
                                  pytest.param("Trailer", marks=ND), "Upgrade",
                                  pytest.param("Proxy-Connection", marks=ND)])
def test_hop_by_hop_request_header_removed(po, name):
    p, o = po
    r = get(p.port, "/a/hop", headers=REQ_HOP)
    h = hdrs(r.json())
    assert name.lower() not in h, h
    assert h["x-end-to-end"] == "kept"
    assert "x-hop" not in h.get("connection", "").lower()


@pytest.mark.parametrize("name", [pytest.param("X-Resp-Hop", marks=ND), "Keep-Alive",
                                  pytest.param("Proxy-Connection", marks=ND),
                                  pytest.param("Upgrade", marks=ND),
                                  pytest.param("Trailer", marks=ND), pytest.param("TE", marks=ND)])
def test_hop_by_hop_response_header_removed(po, name):
    p, o = po
    q = ("h=Connection:X-Resp-Hop&h=X-Resp-Hop:1&h=Keep-Alive:timeout%3D9&"
         "h=Proxy-Connection:keep-alive&h=Upgrade:foo&h=Trailer:X-T&h=TE:trailers&h=X-E2E:kept")
    r = get(p.port, "/a/resphop?" + q)
    assert r.status == 200
    assert not r.has(name), r.headers
    assert r.header("X-E2E") == "kept"


# ---------------------------------------------------------------- connections
def test_upstream_keepalive_reuse(po):
    p, o = po
    for i in range(3):
        assert get(p.port, f"/a/ka{i}").status == 200
    ids = {r["conn_id"] for r in o.requests}
    assert len(ids) == 1, f"upstream connections not reused: {ids}"


def test_client_keepalive_many_requests(po):
    p, o = po
    with Conn(p.port) as c:
        for i in range(5):
            c.send(build_request(target=f"/a/k{i}"))
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == f"/a/k{i}"


def test_pipelining_in_order(po):
    p, o = po
    with Conn(p.port) as c:
        c.send(build_request(target="/a/delay/300?n=1") + build_request(target="/a/p2")
               + build_request(target="/a/bytes/5000") + build_request(target="/a/p4"))
        r1, r2, r3, r4 = (c.read_response() for _ in range(4))
    assert r1.json()["target"] == "/a/delay/300?n=1"
    assert r2.json()["target"] == "/a/p2"
    assert r3.body == pattern(5000)
    assert r4.json()["target"] == "/a/p4"


def test_http10_client(po):
    p, o = po
    with Conn(p.port) as c:
        c.send(b"GET /a/ten HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert c.closed(3), "HTTP/1.0 without keep-alive must be closed"
    assert r.status == 200 and r.version in ("HTTP/1.0", "HTTP/1.1")
    assert r.json()["target"] == "/a/ten"


def test_http10_keepalive(po):
    p, o = po
    with Conn(p.port) as c:
        for i in range(2):
            c.send(f"GET /a/t{i} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == f"/a/t{i}"


def test_chunked_request_body_forwarded(po):
    p, o = po
    body = pattern(100000)
    chunks = b"".join(b"%x\r\n" % len(body[i:i + 30000]) + body[i:i + 30000] + b"\r\n"
                      for i in range(0, len(body), 30000)) + b"0\r\n\r\n"
    with Conn(p.port) as c:
        c.send(build_request("POST", "/a/up", headers=[("Transfer-Encoding", "chunked")]) + chunks)
        r = c.read_response()
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == len(body)
    assert j["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_content_length_body_forwarded(po):
    p, o = po
    body = pattern(300000)
    r = request(p.port, "POST", "/a/cl", body=body)
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_response_to_http11(po):
    p, o = po
    r = get(p.port, "/a/chunked/20000")
    assert r.status == 200 and r.body == pattern(20000)


def test_chunked_response_to_http10_is_not_chunked(po):
    p, o = po
    with Conn(p.port) as c:
        c.send(b"GET /a/chunked/20000 HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert c.closed(3)
    assert "chunked" not in (r.header("Transfer-Encoding") or "").lower()
    assert r.body == pattern(20000)


def test_head(po):
    p, o = po
    with Conn(p.port) as c:
        c.send(build_request("HEAD", "/a/bytes/1000") + build_request("GET", "/a/after-head"))
        r = c.read_response(head_request=True)
        r2 = c.read_response()
    assert r.status == 200 and r.body == b""
    assert r.header("Content-Length") in (None, "1000")
    assert r2.json()["target"] == "/a/after-head"  # no stray body bytes in between


def test_expect_100_continue(po):
    p, o = po
    body = b"z" * 5000
    with Conn(p.port) as c:
        c.send(build_request("POST", "/a/expect", headers=[("Expect", "100-continue"),
                                                          ("Content-Length", str(len(body)))]))
        interim = c.read_response(timeout=3)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
    assert r.status == 200 and r.json()["body_len"] == len(body)


@pytest.mark.nginx_differs  # nginx does not forward 1xx (other than 101)
def test_1xx_forwarded(po):
    p, o = po
    with Conn(p.port) as c:
        c.send(build_request("GET", "/a/early"))
        interim, final = c.read_final()
    assert [r.status for r in interim] == [103]
    assert interim[0].header("Link") == "</style.css>; rel=preload"
    assert final.status == 200


def test_upstream_connection_close_honoured(po):
    p, o = po
    assert get(p.port, "/a/close").status == 200
    assert get(p.port, "/a/after-close").status == 200
    recs = o.requests
    assert recs[0]["conn_id"] != recs[1]["conn_id"]


def test_request_trailers_forwarded_when_body_streams_chunked(res):
    """A chunked request body that is streamed upstream (proxy_request_buffering
    off) keeps its trailers: the origin sees them after the last chunk."""
    up = RawRecorder(b"X-Check: abc\r\n\r\n", b"\r\n0\r\n\r\n")
    p = res.proxy("server { listen 127.0.0.1:{port}; location / { proxy_pass http://127.0.0.1:%d; "
                  "proxy_request_buffering off; } }" % up.port)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/t", headers=[("Transfer-Encoding", "chunked")])
               + b"5\r\nhello\r\n0\r\nX-Check: abc\r\n\r\n")
        r = c.read_response()
    raw = up.wait()
    assert r.status == 200
    assert b"Transfer-Encoding: chunked" in raw
    assert raw.endswith(b"5\r\nhello\r\n0\r\nX-Check: abc\r\n\r\n"), raw[-80:]


# ---- proxy_bind, proxy_socket_keepalive

def test_proxy_bind_picks_the_local_address(mres):
    o = mres.origin("bind")
    p = mres.proxy("""
        upstream u { server 127.0.0.1:%(o)d; %(ka)s }
        map $http_x_from $bind_from { default ""; two 127.0.0.2; three 127.0.0.3; bad 300.1.1.1; }
        server {
            listen 127.0.0.1:{port};
            {ngx_keepalive}
            location /fixed/ { proxy_pass http://u; proxy_bind 127.0.0.2; proxy_socket_keepalive on; }
            location /var/ { proxy_pass http://u; proxy_bind $bind_from; }
            location /none/ { proxy_pass http://u; }
        }
    """ % {"o": o.port, "ka": "" if IS_NGINX else "keepalive 4;"})
    # (nginx reuses a pooled connection whatever its local address: no pool for it here)
    for path, hdrs, want in [("/fixed/a", [], "127.0.0.2"), ("/var/b", [("X-From", "three")], "127.0.0.3"),
                             ("/var/c", [], "127.0.0.1"), ("/none/d", [], "127.0.0.1"),
                             ("/var/e", [("X-From", "two")], "127.0.0.2"),
                             ("/none/f", [], "127.0.0.1")]:
        r = get(p.port, path, headers=hdrs)
        assert r.status == 200, path
        assert o.requests[-1]["peer_ip"] == want, path  # a pooled connection from elsewhere is not reused
    r = get(p.port, "/var/g", headers=[("X-From", "bad")])
    assert r.status == 200  # logged, and no bind, as nginx
    p.wait_error_log(r'invalid local address "300.1.1.1"')
