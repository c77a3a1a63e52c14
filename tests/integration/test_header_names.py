"""underscores_in_headers / ignore_invalid_headers: request fields named with
'_' are dropped on arrival unless allowed, as nginx does (passes against nginx
too, PROXY_UNDER_TEST=nginx). Names with bytes outside the token characters
are refused with 400 by Portico (nginx drops them): tested in test_reject.py."""
import socket
import subprocess

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
