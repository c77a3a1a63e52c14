"""Broken and slow upstreams (502/504), client timeouts (408), retries,
round-robin."""
import time

import pytest

from conftest import Background, Conn, build_request, closed_port, get, raw_exchange, request, status_lines

SIMPLE = """
upstream u { server {up}; }
server {
    listen 127.0.0.1:{port};
    location / { proxy_pass http://u; }
}
"""


def test_connection_refused_502_and_logged(res):
    cp = closed_port()
    p = res.proxy(SIMPLE, up=f"127.0.0.1:{cp}")
    r = get(p.port, "/refused")
    assert r.status == 502
    line = p.wait_error_log(rf"[^\n]*127\.0\.0\.1:{cp}[^\n]*")
    text = line.group(0).lower()
    assert "connect" in text, f"error log line should name the phase: {text}"
    assert "refused" in text, f"error log line should say why: {text}"


def test_connection_reset_on_accept_502(res):
    o = res.reset_origin(read_request=False)
    p = res.proxy(SIMPLE, up=o.addr)
    assert get(p.port, "/reset").status == 502
    p.wait_error_log(rf"[^\n]*{o.port}[^\n]*")


def test_connection_reset_after_request_502(res):
    o = res.reset_origin(read_request=True)
    p = res.proxy(SIMPLE, up=o.addr)
    assert get(p.port, "/reset").status == 502


def test_upstream_closes_without_answer_502(res):
    o = res.scripted(b"", after="close")
    p = res.proxy(SIMPLE, up=o.addr)
    assert get(p.port, "/empty").status == 502


BAD_RESPONSES = {
    "garbage": b"garbage\r\n\r\n",
    "bad-status-code": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "http09-ish": b"hello world",
    "dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "header-no-colon": b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "truncated-head": b"HTTP/1.1 200 OK\r\nContent-Len",
}
# nginx 1.22 accepts these (it ignores invalid header lines, takes "+5"...)
NGINX_LAX = {"garbage", "bad-status-code", "dup-cl", "cl-and-te", "bad-cl", "http09-ish"}


@pytest.mark.parametrize("name", [pytest.param(k, marks=pytest.mark.nginx_differs)
                                  if k in NGINX_LAX else k for k in BAD_RESPONSES])
def test_malformed_upstream_response_502(res, name):
    o = res.scripted(BAD_RESPONSES[name], after="close")
    p = res.proxy(SIMPLE, up=o.addr)
    data, _ = raw_exchange(p.port, build_request(target="/bad", close=True), timeout=5)
    codes = status_lines(data)
    assert codes and codes[0] == 502, data[:300]


@pytest.mark.nginx_differs  # nginx closes without sending anything
def test_bad_chunk_midstream_closes_client_connection(res):
    """Head already sent: the client must see the connection cut, not a clean end
    (or a 502 if nothing was sent yet)."""
    o = res.scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n", after="hold")
    p = res.proxy("upstream u { server {up}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; proxy_buffering off; } }",
                  up=o.addr)
    with Conn(p.port) as c:
        c.send(build_request(target="/midstream"))
        data = c.read_until_close(5)
        assert c.eof, "client connection must be closed"
    if data.startswith(b"HTTP/1.1 502"):
        return
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert not data.endswith(b"0\r\n\r\n"), "a truncated body must not look complete"


def test_framing_error_connection_not_reused(res):
    """Upstream sends more bytes than Content-Length: that connection is dropped,
    the next request does not see the excess as its response."""
    o = res.scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", after="hold")
    p = res.proxy("upstream u { server {up}; keepalive 4; }\n"
                  "server { listen 127.0.0.1:{port}; {ngx_keepalive} location / { proxy_pass http://u; } }",
                  up=o.addr)
    r1 = get(p.port, "/1")
    r2 = get(p.port, "/2")
    assert r1.body == b"ok"
    assert b"smuggled" not in r2.body
    assert o.accepted >= 2


def test_read_timeout_504(res):
    o = res.origin()
    p = res.proxy("upstream u { server {up}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; proxy_read_timeout 1s; } }",
                  up=o.addr)
    t0 = time.monotonic()
    r = get(p.port, "/delay/4000", timeout=8)
    took = time.monotonic() - t0
    assert r.status == 504
    assert 0.8 <= took < 3.5, took
    line = p.wait_error_log(rf"[^\n]*{o.port}[^\n]*").group(0).lower()
    assert "timed out" in line or "timeout" in line


def test_hang_upstream_504(res):
    o = res.origin()
    p = res.proxy("upstream u { server {up}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; proxy_read_timeout 1s; } }",
                  up=o.addr)
    assert get(p.port, "/hang", timeout=8).status == 504


def test_client_header_timeout_408_or_close(res):
    o = res.origin()
    p = res.proxy("client_header_timeout 1s;\nupstream u { server {up}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }",
                  up=o.addr)
    t0 = time.monotonic()
    with Conn(p.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        data = c.read_until_close(5)
        assert c.eof, "connection must be closed after client_header_timeout"
    assert time.monotonic() - t0 < 4
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
    assert o.requests == []


def test_client_body_timeout_408_or_close(res):
    o = res.origin()
    p = res.proxy("client_body_timeout 1s;\nupstream u { server {up}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }",
                  up=o.addr)
    with Conn(p.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
        data = c.read_until_close(5)
        assert c.eof
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]


# ---------------------------------------------------------------- retries, balancing
def retry_conf(a, b):
    return ("upstream u { server %s; server %s; }\n"
            "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; "
            "proxy_next_upstream error timeout; } }" % (a, b))


def test_get_retried_when_a_server_refuses(res):
    o = res.origin("good")
    p = res.proxy(retry_conf(f"127.0.0.1:{closed_port()}", o.addr))
    for i in range(6):
        assert get(p.port, f"/r{i}").status == 200
    assert len(o.requests) == 6


def test_get_retried_when_a_server_resets_after_request(res):
    bad = res.reset_origin(read_request=True)
    o = res.origin("good")
    p = res.proxy(retry_conf(bad.addr, o.addr))
    for i in range(4):
        assert get(p.port, f"/r{i}").status == 200


def test_post_not_retried_after_request_sent(res):
    bad = res.reset_origin(read_request=True)
    o = res.origin("good")
    p = res.proxy(retry_conf(bad.addr, o.addr))
    codes = [request(p.port, "POST", f"/p{i}", body=b"data").status for i in range(4)]
    assert 502 in codes, f"with round-robin the resetting server gets a POST: {codes}"
    assert codes.count(200) == len([r for r in o.requests if r["method"] == "POST"]), \
        "a POST that failed on one server must not be replayed on another"


def test_retry_nothing_if_all_servers_fail(res):
    p = res.proxy(retry_conf(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"))
    assert get(p.port, "/x").status == 502


def test_round_robin_two_servers(res):
    a, b = res.origin("a"), res.origin("b")
    p = res.proxy("upstream u { server {a}; server {b}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }",
                  a=a.addr, b=b.addr)
    names = [get(p.port, f"/rr{i}").json()["origin"] for i in range(10)]
    assert names.count("a") == 5 and names.count("b") == 5, names
    assert all(names[i] != names[i + 1] for i in range(9)), names


def test_round_robin_weights(res):
    a, b = res.origin("a"), res.origin("b")
    p = res.proxy("upstream u { server {a} weight=3; server {b}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }",
                  a=a.addr, b=b.addr)
    names = [get(p.port, f"/w{i}").json()["origin"] for i in range(8)]
    assert names.count("a") == 6 and names.count("b") == 2, names


def test_concurrent_requests_while_one_hangs(res):
    """A slow exchange does not block others on the same worker."""
    o = res.origin()
    p = res.proxy(SIMPLE, up=o.addr)
    bgr = Background(lambda: get(p.port, "/delay/1500", timeout=8))
    t0 = time.monotonic()
    assert get(p.port, "/fast").status == 200
    assert time.monotonic() - t0 < 1.0
    assert bgr.result().status == 200


def test_client_leaving_frees_a_waiting_upstream_at_once(res):
    """the client closes while the upstream thinks: 499 in the log and the
    upstream connection closed now, not at proxy_read_timeout (as nginx)"""
    import socket
    o = res.origin()
    p = res.proxy(SIMPLE, up=o.addr)
    c = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    c.sendall(build_request("GET", "/hang", "x"))
    from conftest import wait_for
    wait_for(lambda: any(r["target"] == "/hang" for r in o.requests), 5,
             what="the request at the origin")
    c.close()
    lines = p.wait_access_lines(1, timeout=5)
    assert " 499 " in lines[-1], lines
