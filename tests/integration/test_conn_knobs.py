"""nginx's connection and header knobs: underscores_in_headers /
ignore_invalid_headers (request fields named with '_' are dropped on arrival
unless allowed), reset_timedout_connection, lingering_close / _time /
_timeout. The cases pass against nginx too (PROXY_UNDER_TEST=nginx) except
where marked. Names with bytes outside the token characters are refused with
400 by Portico (nginx drops them): tested in test_reject.py."""
import socket
import subprocess
import time

import pytest

from conftest import IS_NGINX, get


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def px(mres, origin):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location / {
                proxy_pass http://127.0.0.1:%(o)d;
                proxy_set_header X-Seen "$http_x_under_score";
            }
        }
        server {
            listen 127.0.0.1:{port2};
            underscores_in_headers on;
            location / { proxy_pass http://127.0.0.1:%(o)d; }
        }
        server {
            listen 127.0.0.1:{port3};
            ignore_invalid_headers off;
            location / { proxy_pass http://127.0.0.1:%(o)d; }
        }
    """ % {"o": origin.port})


def seen(origin):
    return {k.lower(): v for k, v in origin.requests[-1]["headers"]}


def test_underscore_fields_dropped_by_default(px, origin):
    r = get(px.port, "/a", headers=[("X_Real_IP", "6.6.6.6"), ("X-Under_Score", "1"),
                                     ("X-Fine", "ok")])
    assert r.status == 200
    h = seen(origin)
    assert "x_real_ip" not in h and "x-under_score" not in h
    assert h["x-fine"] == "ok"
    assert "x-seen" not in h  # empty: not visible to variables either (an empty value is not sent)


def test_underscores_in_headers_on(px, origin):
    r = get(px.ports["port2"], "/b", headers=[("X_Real_IP", "6.6.6.6")])
    assert r.status == 200
    assert seen(origin)["x_real_ip"] == "6.6.6.6"


def test_ignore_invalid_headers_off_passes_underscores(px, origin):
    r = get(px.ports["port3"], "/c", headers=[("X_Thing", "v")])
    assert r.status == 200
    assert seen(origin)["x_thing"] == "v"


# ---- reset_timedout_connection (nginx's http core module, like the above)

@pytest.fixture(scope="module")
def rst(mres, origin):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            client_body_timeout 300ms;
            location /quiet { return 444; }
            location /reset {
                reset_timedout_connection on;
                location /reset/quiet { return 444; }
                location /reset/body { proxy_pass http://127.0.0.1:%(o)d; }
            }
        }
    """ % {"o": origin.port})


def outcome(port, data, timeout=5.0):
    """what the client sees after sending `data`: the bytes and "eof" or "reset" """
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                return got, "eof"
            got += b
    except ConnectionResetError:
        return got, "reset"
    finally:
        s.close()


def test_444_closes_or_resets(rst):
    assert outcome(rst.port, b"GET /quiet HTTP/1.1\r\nHost: a\r\n\r\n") == (b"", "eof")
    assert outcome(rst.port, b"GET /reset/quiet HTTP/1.1\r\nHost: a\r\n\r\n") == (b"", "reset")


def test_body_timeout_resets(rst):
    # the body never comes: client_body_timeout ends the connection with a reset
    got, how = outcome(rst.port, b"POST /reset/body HTTP/1.1\r\nHost: a\r\n"
                                 b"Content-Length: 10\r\n\r\nab")
    assert how == "reset"


@pytest.mark.skipif(IS_NGINX, reason="h2c listener variant")
def test_http2_underscore_fields_dropped(mres, origin):
    p = mres.proxy("""
        server {
            listen 127.0.0.1:{port} http2;
            location / { proxy_pass http://127.0.0.1:%d; }
        }
    """ % origin.port)
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "X_Real_IP: 6.6.6.6",
                          "-H", "X-Ok: 1", f"http://127.0.0.1:{p.port}/h2"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0
    h = seen(origin)
    assert "x_real_ip" not in h and h["x-ok"] == "1"


# ---- lingering_close

@pytest.fixture(scope="module")
def lg(mres):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            lingering_timeout 300ms;
            location /on { return 200 "on"; }
            location /always { lingering_close always; return 200 "always"; }
            location /off { lingering_close off; return 200 "off"; }
        }
    """)


def after_close(port, data, then=b"more bytes\r\n"):
    """send `data` (the server answers and closes), read to EOF, then send more:
    "lingering" if the server still reads them, "reset" if it had closed"""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        s.sendall(then)
        # a closed server answers the bytes with a reset, which shows as an error
        # on a later call (EPIPE: a reset in CLOSE_WAIT); a lingering one drops them
        deadline = time.monotonic() + 0.25
        try:
            while time.monotonic() < deadline:
                s.recv(1)  # EOF (b"") again until the reset is in
                s.sendall(b"x")
                time.sleep(0.01)
            return got, "lingering"
        except (ConnectionResetError, BrokenPipeError):
            return got, "reset"
    except (ConnectionResetError, BrokenPipeError):
        return b"", "reset"
    finally:
        s.close()


def test_lingering_close_always_keeps_reading(lg):
    got, how = after_close(lg.port, b"GET /always HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert got.endswith(b"always") and how == "lingering"


def test_lingering_close_on_closes_when_nothing_is_unread(lg):
    got, how = after_close(lg.port, b"GET /on HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert got.endswith(b"on") and how == "reset"


def test_lingering_close_off_closes_with_bytes_unread(lg):
    # a pipelined request left unread: "on" lingers then, "off" has closed
    nxt = b"GET /on HTTP/1.1\r\nHost: a\r\n\r\n"
    got, how = after_close(lg.port, b"GET /off HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                                    + nxt)
    assert got.endswith(b"off") and how == "reset"
    got, how = after_close(lg.port, b"GET /on HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                                    + nxt)
    assert got.endswith(b"on") and how == "lingering"
