"""limit_rate / limit_rate_after / $limit_rate, and $limit_req_status /
$limit_conn_status (nginx's core and limit modules). Rates are checked with
lower bounds only: a response cannot come faster than its limit allows, however
slow the machine. The behavioural cases pass against nginx too
(PROXY_UNDER_TEST=nginx)."""
import subprocess
import time

import pytest

from conftest import IS_NGINX, get, pattern

RATE = 64 * 1024


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def px(mres, origin, tmp_path_factory):
    d = tmp_path_factory.mktemp("lr")
    (d / "f.bin").write_bytes(pattern(2 * RATE))
    return mres.proxy("""
        limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;
        server {
            listen 127.0.0.1:{port} %(h2)s;
            location /slow/ { limit_rate 64k; proxy_pass http://127.0.0.1:%(o)d; }
            location /after/ {
                limit_rate 64k;
                limit_rate_after 64k;
                proxy_pass http://127.0.0.1:%(o)d;
                location /after/off/ { limit_rate 0; proxy_pass http://127.0.0.1:%(o)d; }
            }
            location /var/ {
                set $limit_rate 64k;
                add_header X-Rate $limit_rate;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /files/ { alias %(d)s/; limit_rate 64k; }
            location /lim/ {
                limit_req zone=one;
                add_header X-Req $limit_req_status always;
                proxy_pass http://127.0.0.1:%(o)d;
            }
        }
    """ % {"o": origin.port, "d": d, "h2": "" if IS_NGINX else "http2"})


def timed_get(port, path):
    t = time.monotonic()
    r = get(port, path, timeout=30)
    return r, time.monotonic() - t


def test_limit_rate_paces_a_response(px):
    # 128 KiB at 64 KiB/s: the first second's worth at once, the rest over a second
    r, took = timed_get(px.port, "/slow/bytes/%d" % (2 * RATE))
    assert r.status == 200 and r.body == pattern(2 * RATE)
    assert took >= 0.8


def test_limit_rate_after_goes_at_full_speed_first(px):
    # 192 KiB: 64 KiB free, 64 KiB of the first second, 64 KiB more over a second
    r, took = timed_get(px.port, "/after/bytes/%d" % (3 * RATE))
    assert r.body == pattern(3 * RATE)
    assert took >= 0.8
    # a limit of 0 in a nested location lifts it (no lower bound to check: it simply arrives)
    r = get(px.port, "/after/off/bytes/%d" % (3 * RATE), timeout=30)
    assert r.body == pattern(3 * RATE)


def test_set_limit_rate(px):
    r, took = timed_get(px.port, "/var/bytes/%d" % (2 * RATE))
    assert r.body == pattern(2 * RATE)
    assert r.header("X-Rate") == str(RATE)
    assert took >= 0.8


def test_static_file_is_paced_too(px):
    r, took = timed_get(px.port, "/files/f.bin")
    assert r.body == pattern(2 * RATE)
    assert took >= 0.8


@pytest.mark.skipif(IS_NGINX, reason="the nginx under test has no http2 on this listener")
def test_http2_stream_is_paced(px):
    t = time.monotonic()
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge",
                          f"http://127.0.0.1:{px.port}/slow/bytes/{2 * RATE}"],
                         capture_output=True, timeout=30)
    took = time.monotonic() - t
    assert out.stdout == pattern(2 * RATE)
    assert took >= 0.8


def test_limit_req_status_variable(px):
    statuses = [get(px.port, "/lim/x").header("X-Req") for _ in range(3)]
    assert statuses[0] == "PASSED"
    assert "REJECTED" in statuses[1:]
