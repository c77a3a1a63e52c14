"""Every request rejection of issue 3: right status, connection closed when the
framing cannot be trusted, and nothing reaches the upstream."""
import pytest

from conftest import Conn, build_request, raw_exchange, status_lines, wait_for

CONF = """
large_client_header_buffers 4 1k;
upstream u { server {origin}; }
server {
    listen 127.0.0.1:{port};
    location / { proxy_pass http://u; }
}
"""


@pytest.fixture(scope="module")
def env(mres):
    o = mres.origin("o1")
    p = mres.proxy(CONF, origin=o.addr)
    return p, o


@pytest.fixture
def proxy(env):
    p, o = env
    o.clear()
    yield p, o


def H(extra=b"", start=b"GET / HTTP/1.1\r\n", host=b"Host: a.test\r\n", end=b"\r\n"):
    return start + host + extra + end


def reject(proxy, data, status, closed=True, timeout=3.0):
    p, o = proxy
    got, was_closed = raw_exchange(p.port, data, timeout=timeout)
    codes = status_lines(got)
    assert codes and codes[0] == status, f"expected {status}, got {got[:300]!r}"
    assert len(codes) == 1, f"more than one response: {got[:500]!r}"
    if closed:
        assert was_closed, "connection must be closed after this rejection"
    assert o.requests == [], f"request reached the origin: {o.requests}"
    assert p.alive()


# ---------------------------------------------------------------- framing
POST = b"POST / HTTP/1.1\r\n"


def test_cl_and_te_together(proxy):
    reject(proxy, H(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", start=POST)
           + b"0\r\n\r\n", 400)


def test_te_and_cl_together_reverse_order(proxy):
    reject(proxy, H(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", start=POST)
           + b"0\r\n\r\n", 400)


def test_duplicate_differing_cl(proxy):
    reject(proxy, H(b"Content-Length: 5\r\nContent-Length: 6\r\n", start=POST) + b"hello!", 400)


def test_duplicate_identical_cl(proxy):
    """Issue 3: "several ... Content-Length" is rejected."""
    reject(proxy, H(b"Content-Length: 5\r\nContent-Length: 5\r\n", start=POST) + b"hello", 400)


@pytest.mark.parametrize("value", [b"+5", b"-1", b"5a", b"0x5", b"5, 5", b"", b"5 5",
                                   b"18446744073709551616", b"99999999999999999999999"],
                         ids=["plus", "negative", "trailing-alpha", "hex", "list", "empty",
                              "two-numbers", "2^64", "overflow"])
def test_malformed_cl(proxy, value):
    reject(proxy, H(b"Content-Length: " + value + b"\r\n", start=POST) + b"hello", 400)


@pytest.mark.parametrize("te", [b"gzip", b"chunked, gzip", b"identity", b"xchunked"],
                         ids=["gzip", "chunked-then-gzip", "identity", "xchunked"])
def test_te_last_not_chunked_501(proxy, te):
    reject(proxy, H(b"Transfer-Encoding: " + te + b"\r\n", start=POST) + b"0\r\n\r\n", 501)


def test_te_unknown_coding_501(proxy):
    reject(proxy, H(b"Transfer-Encoding: foo, chunked\r\n", start=POST) + b"0\r\n\r\n", 501)


CHUNKED = b"Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
], ids=["non-hex", "0x-prefix", "negative", "plus", "overflow-64bit", "overflow-huge", "empty"])
def test_bad_chunk_size(proxy, body):
    reject(proxy, H(CHUNKED, start=POST) + body, 400)


def test_chunk_data_longer_than_size(proxy):
    reject(proxy, H(CHUNKED, start=POST) + b"5\r\nhelloEXTRA\r\n0\r\n\r\n", 400)


# ---------------------------------------------------------------- header syntax
def test_obs_fold(proxy):
    reject(proxy, H(b"X-A: a\r\n  folded\r\n"), 400)


def test_obs_fold_tab(proxy):
    reject(proxy, H(b"X-A: a\r\n\tfolded\r\n"), 400)


def test_whitespace_before_colon(proxy):
    reject(proxy, H(b"X-Foo : bar\r\n"), 400)


def test_whitespace_before_colon_host(proxy):
    reject(proxy, b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n", 400)


def test_bare_cr_in_value(proxy):
    reject(proxy, H(b"X-A: a\rb\r\n"), 400)


@pytest.mark.nginx_differs  # nginx accepts "a\r\r\n"
def test_bare_cr_line_ending(proxy):
    reject(proxy, H(b"X-A: a\r", end=b"\r\n\r\n"), 400)


def test_bare_cr_in_request_line(proxy):
    reject(proxy, b"GET /a\rb HTTP/1.1\r\nHost: a.test\r\n\r\n", 400)


@pytest.mark.parametrize("line", [b"X-\x00A: b\r\n", b"X-\x01A: b\r\n", b"X A: b\r\n",
                                  pytest.param(b"X-(A): b\r\n", marks=pytest.mark.nginx_differs)],
                         ids=["nul", "ctl", "space", "separator"])  # nginx ignores "X-(A)"
def test_bad_byte_in_header_name(proxy, line):
    reject(proxy, H(line), 400)


ND = pytest.mark.nginx_differs  # nginx accepts control bytes other than NUL in values


@pytest.mark.parametrize("value", [b"a\x00b", pytest.param(b"a\x01b", marks=ND),
                                   pytest.param(b"a\x7fb", marks=ND), pytest.param(b"a\x1bb", marks=ND)],
                         ids=["nul", "soh", "del", "esc"])
def test_control_in_header_value(proxy, value):
    reject(proxy, H(b"X-A: " + value + b"\r\n"), 400)


@pytest.mark.parametrize("target", [b"/a\x00b", b"/a\x01b", b"/a\x7fb", b"/a\tb"],
                         ids=["nul", "soh", "del", "tab"])
def test_control_in_target(proxy, target):
    reject(proxy, H(start=b"GET " + target + b" HTTP/1.1\r\n"), 400)


# ---------------------------------------------------------------- Host
def test_missing_host_http11(proxy):
    reject(proxy, b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400)


def test_two_hosts(proxy):
    reject(proxy, b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400)


def test_two_identical_hosts(proxy):
    reject(proxy, b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n", 400)


@pytest.mark.nginx_differs  # nginx lets the absolute-form host win (RFC 9112 3.2.2)
def test_absolute_form_host_mismatch(proxy):
    reject(proxy, b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", 400)


def test_absolute_form_same_host_accepted(proxy):
    p, o = proxy
    with Conn(p.port) as c:
        c.send(b"GET http://a.test/abs?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert o.last()["target"] == "/abs?x=1"  # origin-form upstream


# ---------------------------------------------------------------- targets
@pytest.mark.parametrize("target", [b"foo", b"a/b", b"?x", b"*"], ids=["word", "relative", "query", "star-get"])
def test_target_not_origin_form(proxy, target):
    reject(proxy, H(start=b"GET " + target + b" HTTP/1.1\r\n"), 400)


def test_authority_form_for_get(proxy):
    reject(proxy, H(start=b"GET a.test:80 HTTP/1.1\r\n"), 400)


@pytest.mark.nginx_differs  # nginx answers 400 to "OPTIONS *"
def test_options_star_is_accepted(proxy):
    p, o = proxy
    got, _ = raw_exchange(p.port, b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    codes = status_lines(got)
    assert codes and codes[0] != 400, got[:300]


@pytest.mark.nginx_differs  # nginx answers 400 to authority-form
def test_connect_authority_form_not_a_400_and_not_forwarded(proxy):
    p, o = proxy
    got, _ = raw_exchange(p.port, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
    codes = status_lines(got)
    assert codes and codes[0] in (403, 405, 501), got[:300]  # parsed, but no tunnels yet
    assert o.requests == []


# ---------------------------------------------------------------- sizes
def test_request_line_too_long_414(proxy):
    reject(proxy, H(start=b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n"), 414)


@pytest.mark.nginx_differs  # nginx answers 400 "Request Header Or Cookie Too Large"
def test_one_header_too_large_431(proxy):
    reject(proxy, H(b"X-Big: " + b"b" * 2000 + b"\r\n"), 431)


@pytest.mark.nginx_differs  # nginx answers 400
def test_headers_total_too_large_431(proxy):
    hdrs = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 900) for i in range(6))
    reject(proxy, H(hdrs), 431)


def test_body_over_client_max_body_size_413_from_content_length(proxy):
    """Decided from Content-Length: we never send the body."""
    p, o = proxy
    with Conn(p.port) as c:
        c.send(H(b"Content-Length: 2000000\r\n", start=POST))
        r = c.read_response(timeout=3)
    assert r.status == 413
    assert o.requests == []


# ---------------------------------------------------------------- connection
def test_bytes_after_connection_close_are_ignored(proxy):
    p, o = proxy
    data = (b"GET /first HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a.test\r\n\r\n")
    got, closed = raw_exchange(p.port, data)
    assert status_lines(got) == [200], got[:500]
    assert closed
    assert o.targets() == ["/first"]


def test_garbage_after_connection_close_is_ignored(proxy):
    p, o = proxy
    data = b"GET /first HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n\x00\x01garbage\r\n\r\n"
    got, closed = raw_exchange(p.port, data)
    assert status_lines(got) == [200], got[:500]
    assert closed
    assert o.targets() == ["/first"]


HOP_REQUEST_HEADERS = ("upgrade", "http2-settings")


@pytest.mark.nginx_differs  # nginx forwards HTTP2-Settings (named by Connection)
def test_upgrade_h2c_never_forwarded(proxy):
    p, o = proxy
    data = (b"GET /h2c HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    with Conn(p.port) as c:
        c.send(data)
        r = c.read_response()
    assert r.status != 101
    for rec in o.requests:
        names = [k.lower() for k, _ in rec["headers"]]
        for h in HOP_REQUEST_HEADERS:
            assert h not in names, f"{h} forwarded: {rec['headers']}"
        conn = " ".join(v.lower() for k, v in rec["headers"] if k.lower() == "connection")
        assert "upgrade" not in conn


@pytest.mark.nginx_differs("nginx forwards Upgrade only when proxy_set_header says so")
def test_websocket_upgrade_declined_by_the_upstream(proxy):
    """The Upgrade is forwarded (tunnels: test_upgrade.py); an upstream that
    answers with a plain response gives a plain exchange, no 101."""
    p, o = proxy
    data = (b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    with Conn(p.port) as c:
        c.send(data)
        r = c.read_response()
    assert r.status == 200
    rec = [r for r in o.requests if r["target"] == "/ws"][-1]
    hdrs = {k.lower(): v for k, v in rec["headers"]}
    assert hdrs.get("upgrade") == "websocket" and hdrs.get("connection") == "upgrade"


def test_proxy_survives_all_of_the_above(proxy):
    p, o = proxy
    with Conn(p.port) as c:
        c.send(build_request(host="a.test", target="/still-alive"))
        assert c.read_response().status == 200
    wait_for(lambda: o.targets() == ["/still-alive"], 2)
