"""limit_req and limit_conn, as nginx's modules: per-key leaky buckets and
counters in zones shared by the workers. The behavioural cases pass against
nginx too (PROXY_UNDER_TEST=nginx)."""
import socket
import threading
import time

import pytest

from conftest import IS_NGINX, get, wait_for


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def lp(mres, origin):
    return mres.proxy("""
        limit_req_zone $binary_remote_addr zone=perip:1m rate=1r/m;
        limit_req_zone $binary_remote_addr zone=fast:1m rate=10r/s;
        limit_req_zone $http_x_key zone=bykey:1m rate=1r/m;
        limit_req_zone $binary_remote_addr zone=dry:1m rate=1r/m;
        limit_req_zone $binary_remote_addr zone=s429:1m rate=1r/m;
        limit_conn_zone $binary_remote_addr zone=addr:1m;
        server {
            listen 127.0.0.1:{port};
            location /burst/ {
                limit_req zone=perip burst=3 nodelay;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /delayed/ {
                limit_req zone=fast burst=5;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /key/ {
                limit_req zone=bykey nodelay;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /dry/ {
                limit_req zone=dry nodelay;
                limit_req_dry_run on;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /s429/ {
                limit_req zone=s429 nodelay;
                limit_req_status 429;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /conn/ {
                limit_conn addr 1;
                limit_conn_status 429;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /ret/ {
                limit_req zone=perip nodelay;
                return 200 "return comes before limit_req\\n";
            }
        }
    """ % {"o": origin.port})


def statuses(port, path, n, **kw):
    return [get(port, path, **kw).status for _ in range(n)]


def test_burst_nodelay(lp, origin):
    origin.clear()
    assert statuses(lp.port, "/burst/x", 6) == [200, 200, 200, 200, 503, 503]
    assert len(origin.requests) == 4
    if not IS_NGINX:
        lp.wait_error_log(r'limiting requests, excess: \d\.\d{3} by zone "perip"')


def test_status_code(lp):
    assert statuses(lp.port, "/s429/x", 2) == [200, 429]


def test_empty_key_is_not_limited(lp):
    assert statuses(lp.port, "/key/x", 3) == [200, 200, 200]
    assert statuses(lp.port, "/key/x", 2, headers=[("X-Key", "k1")]) == [200, 503]
    assert statuses(lp.port, "/key/x", 1, headers=[("X-Key", "k2")]) == [200]


def test_dry_run_counts_but_lets_through(lp):
    assert statuses(lp.port, "/dry/x", 3) == [200, 200, 200]
    if not IS_NGINX:
        lp.wait_error_log(r"limiting requests, dry run")


def test_return_is_not_limited(lp):
    assert statuses(lp.port, "/ret/", 3) == [200, 200, 200]


def test_excess_requests_wait_instead_of_failing(lp):
    """Four at once at 10r/s: the first at once, the others spaced 100 ms
    apart; all succeed. (A lower bound on time: it cannot be faster.)"""
    results = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(get(lp.port, "/delayed/x").status))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 4
    assert time.monotonic() - t0 >= 0.25


def test_limit_conn(lp, origin):
    slow = threading.Thread(target=lambda: get(lp.port, "/conn/delay/800", timeout=10))
    slow.start()
    try:
        wait_for(lambda: any("/conn/delay/800" in t for t in origin.targets()), 5,
                 what="the first request at the origin")
        assert get(lp.port, "/conn/x").status == 429
    finally:
        slow.join(10)
    assert get(lp.port, "/conn/x").status == 200  # its place is free again


def test_limit_conn_place_freed_when_client_leaves(lp, origin):
    s = socket.create_connection(("127.0.0.1", lp.port))
    s.sendall(b"GET /conn/delay/3000 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: any("/conn/delay/3000" in t for t in origin.targets()), 5,
             what="the request at the origin")
    assert get(lp.port, "/conn/x").status == 429
    s.close()
    wait_for(lambda: get(lp.port, "/conn/x").status == 200, 5, what="the place freed")


@pytest.mark.skipif(IS_NGINX, reason="the test harness reloads Portico only")
def test_zone_state_survives_reload(res, origin):
    conf = """
        limit_req_zone $binary_remote_addr zone=keep:1m rate=1r/m;
        server {
            listen 127.0.0.1:{port};
            location / { limit_req zone=keep nodelay; proxy_pass http://127.0.0.1:%d; }
        }
    """ % origin.port
    p = res.proxy(conf)
    assert get(p.port, "/").status == 200
    p.reload(conf)
    assert get(p.port, "/").status == 503


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("limit_req_zone $binary_remote_addr zone=a:1m;", 'must have "rate" parameter'),
    ("limit_req_zone $binary_remote_addr zone=a:1m rate=fast;", 'invalid rate "rate=fast"'),
    ("server { listen 127.0.0.1:{port}; limit_req zone=nope; }",
     'zero size shared memory zone "nope"'),
    ("limit_req_zone $binary_remote_addr zone=a:1m rate=1r/s;\n"
     "server { listen 127.0.0.1:{port}; limit_req zone=a burst=5 nodelay delay=2; }",
     '"nodelay" and "delay" cannot be used together'),
    ("limit_conn_zone $binary_remote_addr zone=c:1m;\n"
     "server { listen 127.0.0.1:{port}; limit_conn c 0; }",
     'invalid number of connections "0"'),
    ("limit_req_zone $binary_remote_addr zone=a:1m rate=1r/s;\n"
     "server { listen 127.0.0.1:{port}; limit_conn a 2; }",
     'zone "a" is a limit_req zone'),
])
def test_bad_limit_directives(res, text, msg):
    if "server" not in text:
        text += "\nserver { listen 127.0.0.1:{port}; }"
    p = res.proxy_unstarted(text)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output


@pytest.mark.skipif(IS_NGINX, reason="Portico's worker threads share one zone")
def test_zone_is_shared_by_workers(res, origin):
    p = res.proxy("""
        worker_processes 2;
        pid {tmp}/p.pid;
        error_log {tmp}/error.log info;
        events {}
        http {
            limit_req_zone $binary_remote_addr zone=w:1m rate=1r/m;
            server {
                listen 127.0.0.1:{port};
                location / { limit_req zone=w burst=3 nodelay; proxy_pass http://127.0.0.1:%d; }
            }
        }
    """ % origin.port, full=True)
    # new connections are spread over both workers' listeners by the kernel
    got = statuses(p.port, "/", 12)
    assert got.count(200) == 4 and got.count(503) == 8, got


def test_a_rejection_does_not_count_in_the_other_rules(res, origin):
    """Two rules: when the second rejects, the first does not keep the
    request counted (nginx)."""
    p = res.proxy("""
        limit_req_zone $binary_remote_addr zone=a:1m rate=1r/m;
        limit_req_zone $http_x_k zone=b:1m rate=1r/m;
        server {
            listen 127.0.0.1:{port};
            location / {
                limit_req zone=a burst=5 nodelay;
                limit_req zone=b nodelay;
                proxy_pass http://127.0.0.1:%d;
            }
        }
    """ % origin.port)
    k = lambda v: [("X-K", v)]  # noqa: E731
    assert get(p.port, "/", headers=k("k1")).status == 200
    assert get(p.port, "/", headers=k("k1")).status == 503  # b rejects
    # a counted only the request that passed: five more fit its burst
    assert [get(p.port, "/", headers=k(f"n{i}")).status for i in range(5)] == [200] * 5
    assert get(p.port, "/", headers=k("n9")).status == 503


def test_failed_logins_count_against_limit_req(res, origin, tmp_path):
    """limits come before access, as nginx's preaccess phase: password
    guesses that fail are counted and throttled too"""
    (tmp_path / "htpasswd").write_text("ann:{PLAIN}s3cret\n")
    p = res.proxy("""
        limit_req_zone $binary_remote_addr zone=login:1m rate=1r/m;
        server {
            listen 127.0.0.1:{port};
            location / {
                limit_req zone=login burst=1 nodelay;
                auth_basic "x";
                auth_basic_user_file %s/htpasswd;
                proxy_pass http://127.0.0.1:%d;
            }
        }
    """ % (tmp_path, origin.port))
    import base64
    bad = [("Authorization", "Basic " + base64.b64encode(b"ann:guess").decode())]
    statuses = [get(p.port, "/x", headers=bad).status for _ in range(4)]
    assert statuses[:2] == [401, 401] and statuses[2:] == [503, 503]
