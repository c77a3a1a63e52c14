"""Client connection lifetime, return/error_page/server_tokens, connect
timeout, trailers, listeners removed at reload."""
import socket
import time

import pytest

from conftest import Conn, IS_NGINX, build_request, get, port_open, wait_for


def test_keepalive_requests_limit(res):
    p = res.proxy('keepalive_requests 3;\nserver { listen 127.0.0.1:{port}; location / { return 200 "k"; } }')
    with Conn(p.port) as c:
        for i in range(3):
            c.send(build_request(target=f"/{i}"))
            r = c.read_response()
            assert r.status == 200
        assert (r.header("Connection") or "").lower() == "close"
        assert c.closed(3)


def test_keepalive_timeout_closes_idle(res):
    p = res.proxy('keepalive_timeout 1s;\nserver { listen 127.0.0.1:{port}; location / { return 200 "k"; } }')
    with Conn(p.port) as c:
        c.send(build_request())
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.closed(4), "idle keep-alive connection must be closed after keepalive_timeout"
        assert 0.7 < time.monotonic() - t0 < 3.5


def test_keepalive_timeout_zero_disables_keepalive(res):
    p = res.proxy('keepalive_timeout 0;\nserver { listen 127.0.0.1:{port}; location / { return 200 "k"; } }')
    with Conn(p.port) as c:
        c.send(build_request())
        r = c.read_response()
        assert (r.header("Connection") or "").lower() == "close"
        assert c.closed(3)


RETURNS = r"""
server {
    listen 127.0.0.1:{port};
    server_tokens off;
    location = /moved { return 301 https://example.com/new; }
    location = /teapot { return 418; }
    location = /text { return 403 "no way"; }
    location = /missing { return 404; }
    location = /custom404 { return 200 "custom-404-page"; }
    location /ep/ { error_page 404 /custom404; return 404; }
    location /ep2/ { error_page 404 =200 /custom404; return 404; }
}
"""


@pytest.fixture(scope="module")
def ret(mres):
    return mres.proxy(RETURNS)


def test_return_redirect(ret):
    r = get(ret.port, "/moved")
    assert r.status == 301 and r.header("Location") == "https://example.com/new"


def test_return_code_only(ret):
    assert get(ret.port, "/teapot").status == 418


def test_return_code_text(ret):
    r = get(ret.port, "/text")
    assert r.status == 403 and r.text == "no way"


def test_server_tokens_off(ret):
    server = get(ret.port, "/text").header("Server") or ""
    assert server and not any(ch.isdigit() for ch in server), server


def test_error_page_keeps_status(ret):
    r = get(ret.port, "/ep/x")
    assert r.status == 404 and r.text == "custom-404-page"


def test_error_page_changes_status(ret):
    r = get(ret.port, "/ep2/x")
    assert r.status == 200 and r.text == "custom-404-page"


def test_date_header(ret):
    assert get(ret.port, "/text").header("Date", "").endswith(" GMT")


# ---------------------------------------------------------------- connect timeout
class Blackhole:
    """A listening socket whose accept queue is full: further SYNs are dropped,
    so connect() hangs (all on 127.0.0.1)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(s)

    def stop(self):
        for s in self.fillers + [self.lsock]:
            s.close()


def test_connect_timeout_504(res):
    bh = res.add(Blackhole())
    p = res.proxy("upstream u { server 127.0.0.1:{bh}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; "
                  "proxy_connect_timeout 1s; } }", bh=bh.port)
    t0 = time.monotonic()
    r = get(p.port, "/ct", timeout=8)
    assert r.status == 504
    assert time.monotonic() - t0 < 3.5
    line = p.wait_error_log(rf"[^\n]*{bh.port}[^\n]*").group(0).lower()
    assert "connect" in line and ("timed out" in line or "timeout" in line), line


# ---------------------------------------------------------------- trailers
@pytest.mark.nginx_differs  # nginx drops upstream trailers
def test_response_trailers_forwarded(res):
    o = res.origin()
    p = res.proxy("upstream u { server {o}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }", o=o.addr)
    r = get(p.port, "/chunked/3000?trailers=1", headers=[("TE", "trailers")])
    assert r.status == 200 and len(r.body) == 3000
    assert ("X-Trailer", "t") in r.trailers, (r.headers, r.trailers)


# ---------------------------------------------------------------- listeners at reload
def test_reload_removes_listener_keeps_others(res):
    conf = ('server { listen 127.0.0.1:{port}; return 200 "one"; }\n'
            'server { listen 127.0.0.1:{port2}; return 200 "two"; }\n')
    p = res.proxy(conf)
    with Conn(p.port) as kept:
        kept.send(build_request())
        assert kept.read_response().text == "one"
        p.reload('server { listen 127.0.0.1:{port}; return 200 "one"; }\n',
                 until=(lambda: not port_open(p.fields["port2"])) if IS_NGINX else None)
        wait_for(lambda: not port_open(p.fields["port2"]), 5, what="port2 closed")
        if not IS_NGINX:  # nginx closes idle keep-alive connections at reload
            kept.send(build_request())
            assert kept.read_response().text == "one"
    assert get(p.port).text == "one"
