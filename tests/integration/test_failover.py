"""Failover under load (issue 5 acceptance): three origins, a bounded load of
keep-alive GETs from a pool of client threads, and one origin that is
SIGKILLed and restarted, one that hangs, one that answers 500s. Clients must
see no non-2xx answer. The figures are printed (pytest -s shows them)."""
import collections
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import IS_NGINX, Conn, HttpOrigin, build_request, get, wait_for

pytestmark = pytest.mark.skipif(IS_NGINX, reason="Portico's balancing directives")

# An origin in its own process, so that it can really be SIGKILLed.
ORIGIN = r"""
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536              # head and body in one write (flushed per request)
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class ProcOrigin:
    def __init__(self, port):
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-c", ORIGIN, str(port)])
        wait_for(lambda: self._up(), 5, what=f"origin on {port}")

    def _up(self):
        try:
            return get(self.port, "/health", timeout=1).status == 200
        except OSError:
            return False

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self):
        self.kill()


class Load:
    """`threads` clients, each one keep-alive connection sending GETs one at
    a time until stopped; every answer is kept as (time, status, X-Up)."""

    def __init__(self, port, threads=4, target="/"):
        self.port, self.target = port, target
        self.recs = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.ts = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.ts:
            t.start()

    def _run(self):
        while not self.done.is_set():
            try:
                with Conn(self.port, timeout=10) as c:
                    for _ in range(100):
                        if self.done.is_set():
                            return
                        c.send(build_request(target=self.target))
                        r = c.read_response()
                        with self.lock:
                            self.recs.append((time.monotonic(), r.status, r.header("X-Up", "")))
            except Exception as e:  # noqa: BLE001 -- a transport error counts as a failure
                with self.lock:
                    self.recs.append((time.monotonic(), repr(e), ""))

    def stop(self):
        self.done.set()
        for t in self.ts:
            t.join(20)
        return self.recs


def last_up(xup):
    return xup.split(",")[-1].strip()


def figures(label, recs, origins):
    bad = [s for _, s, _ in recs if s != 200]
    share = collections.Counter(last_up(x) for _, s, x in recs if s == 200)
    total = max(1, sum(share.values()))
    per = ", ".join(f"{o.addr}: {share[o.addr]} ({100.0 * share[o.addr] / total:.1f}%)"
                    for o in origins)
    print(f"\n[{label}] requests={len(recs)} non-2xx={len(bad)} share: {per}")
    return bad, share


KILL = """
upstream u {
    server {o1} max_fails=1 fail_timeout=3s slow_start=3s;
    server {o2} max_fails=1 fail_timeout=3s slow_start=3s;
    server {o3} max_fails=1 fail_timeout=3s slow_start=3s;
    keepalive 16;
}
server {
    listen 127.0.0.1:{port};
    location / {
        proxy_pass http://u;
        proxy_next_upstream error timeout;
        proxy_connect_timeout 500ms;
        health_check interval=200ms fails=1 passes=1 uri=/health;
        add_header X-Up $upstream_addr always;
    }
    location /api { api; }
}
"""


def test_killed_origin_restarted_under_load(res, tmp_path):
    from conftest import free_port
    os_ = [ProcOrigin(free_port()) for _ in range(3)]
    for o in os_:
        res.add(o)
    p = res.proxy(KILL, **{f"o{i + 1}": o.addr for i, o in enumerate(os_)})
    load = Load(p.port)
    time.sleep(1.0)
    dead = os_[1]
    t_kill = time.monotonic()
    dead.kill()
    time.sleep(2.0)
    t_restart = time.monotonic()
    os_[1] = ProcOrigin(dead.port)
    res.add(os_[1])
    # active checks bring it back; slow_start (3s) ramps its share
    wait_for(lambda: any(t > t_restart and last_up(x) == dead.addr
                         for t, _, x in list(load.recs)), 5, what="the origin back")
    t_back = min(t for t, _, x in list(load.recs) if t > t_restart and last_up(x) == dead.addr)
    time.sleep(4.0)
    recs = load.stop()
    bad, _ = figures("SIGKILL + restart", recs, os_)
    assert bad == []
    # after the first failure it is out: only the tries under way then touch it
    touched = [t for t, _, x in recs if t_kill < t < t_restart and dead.addr in x]
    print(f"[SIGKILL + restart] tries on the dead origin while down: {len(touched)}, "
          f"back {t_back - t_restart:.2f}s after restart")
    assert len(touched) <= 8, len(touched)

    def share(t0, t1):
        win = [x for t, s, x in recs if t0 <= t < t1 and s == 200]
        return sum(1 for x in win if last_up(x) == dead.addr) / max(1, len(win)), len(win)
    first, n1 = share(t_back, t_back + 1.0)
    last, n2 = share(t_back + 3.0, t_back + 4.0)
    print(f"[SIGKILL + restart] share of the restarted origin: first second {100 * first:.1f}% "
          f"({n1} requests), fourth second {100 * last:.1f}% ({n2} requests)")
    assert first < last
    assert last > 0.2


class HangOrigin(HttpOrigin):
    """Reads the request and never answers."""

    def _respond(self, s, rec):
        self.stopping.wait(30)
        return False


class ErrorOrigin(HttpOrigin):
    def _respond(self, s, rec):
        self._send(s, 500, [("Content-Type", "text/plain")], b"broken\n", False)
        return True


HANG = """
upstream u {
    server {o1};
    server {o2};
    server {o3};
    keepalive 16;
}
server {
    listen 127.0.0.1:{port};
    location / {
        proxy_pass http://u;
        # long enough that the (Python) good origins never hit it on a
        # loaded machine; the hanging one is marked failed after one try
        proxy_read_timeout 1s;
        proxy_next_upstream error timeout;
        add_header X-Up $upstream_addr always;
    }
}
"""

ERRORS = """
upstream u {
    server {o1} max_fails=0;
    server {o2} max_fails=0;
    server {o3} max_fails=0;
    outlier_detection consecutive=3 interval=30s;
    keepalive 16;
}
server {
    listen 127.0.0.1:{port};
    location / {
        proxy_pass http://u;
        proxy_next_upstream error timeout http_500;
        add_header X-Up $upstream_addr always;
    }
}
"""


@pytest.mark.parametrize("label,conf,bad_cls", [
    ("hanging origin", HANG, HangOrigin),
    ("origin answering 500", ERRORS, ErrorOrigin),
])
def test_broken_origin_under_load(res, label, conf, bad_cls):
    good = [res.origin("g1"), res.origin("g3")]
    bad = res.add(bad_cls("bad"))
    os_ = [good[0], bad, good[1]]
    p = res.proxy(conf, **{f"o{i + 1}": o.addr for i, o in enumerate(os_)})
    load = Load(p.port)
    time.sleep(3.0)
    recs = load.stop()
    errs, share = figures(label, recs, os_)
    tries_bad = sum(1 for _, _, x in recs if bad.addr in x)
    print(f"[{label}] tries on the broken origin: {tries_bad}")
    assert errs == []
    assert share[bad.addr] == 0
    assert tries_bad <= 8, tries_bad
