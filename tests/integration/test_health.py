"""Active health checks and the api endpoint (issue 5): a server failing its
checks gets no traffic within about two intervals and comes back after
`passes`; a killed origin is seen by the checks; the api location shows the
states as JSON; bad health_check/match configs are refused with file:line."""
import json
import socket
import threading

import pytest

from conftest import IS_NGINX, HttpOrigin, get, request, wait_for

pytestmark = pytest.mark.skipif(IS_NGINX, reason="NGINX Plus directives")


class HealthOrigin(HttpOrigin):
    """An origin whose /health answers `health` (a status), and which can be
    stopped and started again on the same port."""

    def __init__(self, name, port=0):
        self.health = 200
        self.health_hits = 0
        super().__init__(name)
        if port:
            # move to the given port: a fresh listening socket and accept loop
            old = self.lsock
            new = socket.socket()
            new.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            new.bind(("127.0.0.1", port))
            new.listen(256)
            self.lsock, self.port, self.addr = new, port, f"127.0.0.1:{port}"
            try:
                old.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            old.close()
            threading.Thread(target=self._accept_loop, daemon=True).start()

    def _respond(self, s, rec):
        if rec["target"].startswith("/health"):
            with self.lock:
                self.health_hits += 1
            self._send(s, self.health, [("Content-Type", "application/json"),
                                        ("X-Health", "yes")], b'{"ok": true}', False)
            return True
        return super()._respond(s, rec)

    def app_requests(self):
        with self.lock:
            return [r for r in self.requests if not r["target"].startswith("/health")]


def restart(old):
    """A new origin on the port of a stopped one."""
    return HealthOrigin(old.name, port=old.port)


CONF = """
match healthy {
    status 200-399;
    header X-Health = yes;
    body ~ "\\"ok\\": *true";
}
upstream u {
    server {o1};
    server {o2};
    server {o3};
    keepalive 8;
}
server {
    listen 127.0.0.1:{port};
    location / {
        proxy_pass http://u;
        health_check interval=200ms fails=1 passes=2 uri=/health match=healthy;
        add_header X-Up $upstream_addr always;
    }
    location /api { api write=off; }
}
"""


def serve(res, origins, conf=CONF):
    fields = {f"o{i + 1}": o.addr for i, o in enumerate(origins)}
    return res.proxy(conf, **fields)


def peers(p, group="u"):
    r = get(p.port, f"/api/upstreams/{group}")
    assert r.status == 200, r
    assert r.header("Content-Type") == "application/json"
    return {x["server"]: x for x in r.json()["peers"]}


def state(p, addr):
    return peers(p)[addr]["state"]


def test_origin_failing_its_check_is_taken_out_and_comes_back(res):
    os_ = [HealthOrigin(f"o{i}") for i in (1, 2, 3)]
    for o in os_:
        res.add(o)
    p = serve(res, os_)
    sick = os_[1]
    wait_for(lambda: all(peers(p)[o.addr]["health_checks"]["checks"] >= 1 for o in os_), 5,
             what="first checks")
    assert {get(p.port, "/").status for _ in range(12)} == {200}
    sick.health = 500
    # out within about two intervals (200ms each) of the first failing check
    wait_for(lambda: state(p, sick.addr) == "unhealthy", 2, what="unhealthy")
    before = len(sick.app_requests())
    resps = [get(p.port, "/") for _ in range(30)]
    assert [r.status for r in resps if r.status != 200] == []
    assert len(sick.app_requests()) == before, "no traffic to an unhealthy server"
    assert all(sick.addr not in r.header("X-Up") for r in resps)
    peer = peers(p)[sick.addr]
    assert peer["health_checks"]["last_passed"] is False
    assert peer["health_checks"]["last_status"] == 500
    assert peer["health_checks"]["unhealthy"] == 1
    p.wait_error_log(rf"{sick.addr} of \"u\" is unhealthy")

    sick.health = 200
    wait_for(lambda: state(p, sick.addr) == "up", 3, what="back up after passes=2")
    wait_for(lambda: any(get(p.port, "/").header("X-Up") == sick.addr for _ in range(6)), 5,
             what="traffic to the recovered server")


def test_killed_origin_is_detected_and_restarted_one_returns(res):
    os_ = [res.add(HealthOrigin(f"o{i}")) for i in (1, 2)]
    p = serve(res, os_, CONF.replace("server {o3};", ""))
    wait_for(lambda: all(peers(p)[o.addr]["health_checks"]["checks"] >= 1 for o in os_), 5,
             what="first checks")
    dead = os_[0]
    dead.stop()
    wait_for(lambda: state(p, dead.addr) == "unhealthy", 2, what="killed origin unhealthy")
    resps = [get(p.port, "/") for _ in range(20)]
    assert [r.status for r in resps if r.status != 200] == []
    assert all(r.header("X-Up") == os_[1].addr for r in resps)
    back = res.add(restart(dead))
    wait_for(lambda: state(p, dead.addr) == "up", 3, what="restarted origin back")
    wait_for(lambda: any(get(p.port, "/").header("X-Up") == dead.addr for _ in range(4)), 5,
             what="traffic to the restarted origin")
    assert back.health_hits >= 2


def test_mandatory_servers_wait_for_a_first_pass(res):
    good, bad = res.add(HealthOrigin("good")), res.add(HealthOrigin("bad"))
    bad.health = 503
    p = serve(res, [good, bad], CONF.replace("server {o3};", "").replace(
        "match=healthy;", "match=healthy mandatory;"))
    wait_for(lambda: state(p, good.addr) == "up", 3, what="good up")
    # the two first checks end in either order (jitter, a loaded machine)
    wait_for(lambda: state(p, bad.addr) == "unhealthy", 3, what="bad unhealthy")
    assert {get(p.port, "/").header("X-Up") for _ in range(10)} == {good.addr}
    assert bad.app_requests() == []


def test_tcp_checks(res):
    o1, o2 = res.add(HealthOrigin("o1")), res.add(HealthOrigin("o2"))
    conf = CONF.replace("server {o3};", "").replace(
        "uri=/health match=healthy", "type=tcp")
    p = serve(res, [o1, o2], conf)
    o2.stop()
    wait_for(lambda: state(p, o2.addr) == "unhealthy", 2, what="tcp check fails")
    assert state(p, o1.addr) == "up"
    assert o1.health_hits == 0, "a TCP check sends nothing"
    g = get(p.port, "/api/upstreams/u").json()
    assert g["health_checks"][0]["type"] == "tcp"


def test_api_json(res):
    o1, o2 = res.add(HealthOrigin("o1")), res.add(HealthOrigin("o2"))
    conf = CONF.replace("server {o3};", "server 127.0.0.1:9 down;") + """
upstream other {
    least_conn;
    server {o2} weight=3 max_conns=10 slow_start=30s;
    server {o1} backup;
}
"""
    p = serve(res, [o1, o2], conf)
    r = get(p.port, "/api")
    assert r.status == 200 and r.header("Content-Type") == "application/json"
    doc = r.json()
    assert set(doc["upstreams"]) == {"u", "other"}
    assert doc["portico"]
    u = doc["upstreams"]["u"]
    assert u["algorithm"] == "round_robin"
    assert u["health_checks"][0] == {"type": "http", "uri": "/health", "interval_ms": 200,
                                     "jitter_ms": 0, "fails": 1, "passes": 2, "port": 0,
                                     "mandatory": False, "match": "healthy"}
    st = {x["server"]: x["state"] for x in u["peers"]}
    assert st["127.0.0.1:9"] == "down"
    other = get(p.port, "/api/upstreams/other/").json()
    assert other["algorithm"] == "least_conn"
    assert other["health_checks"] == []
    a, b = other["peers"]
    assert (a["weight"], a["max_conns"], a["slow_start_ms"], a["backup"]) == (3, 10, 30000, False)
    assert b["backup"] is True and b["state"] == "up"
    assert set(get(p.port, "/api/upstreams").json()) == {"u", "other"}
    # requests are counted per server
    for _ in range(4):
        assert get(p.port, "/").status == 200
    reqs = sum(x["requests"] for x in peers(p).values())
    assert reqs >= 4
    nf = get(p.port, "/api/upstreams/nope")
    assert nf.status == 404 and nf.json()["error"]["status"] == 404
    assert get(p.port, "/api/other").status == 404
    post = request(p.port, "POST", "/api/upstreams/u", body="x")
    assert post.status == 405
    json.dumps(doc)


def test_state_survives_a_reload(res):
    os_ = [res.add(HealthOrigin(f"o{i}")) for i in (1, 2, 3)]
    p = serve(res, os_)
    os_[2].health = 500
    wait_for(lambda: state(p, os_[2].addr) == "unhealthy", 2, what="unhealthy")
    checks = peers(p)[os_[2].addr]["health_checks"]["checks"]
    p.reload()
    after = peers(p)[os_[2].addr]
    assert after["state"] == "unhealthy"
    assert after["health_checks"]["checks"] >= checks
    assert {get(p.port, "/").header("X-Up") for _ in range(10)} <= {os_[0].addr, os_[1].addr}


@pytest.mark.parametrize("conf,line,msg", [
    ("server { listen 127.0.0.1:{port};\n location / {\n return 200;\n health_check; } }",
     4, "\"health_check\" needs \"proxy_pass\" to an upstream group"),
    ("upstream u { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port};\n"
     " location / { proxy_pass http://u;\n  health_check match=missing; } }",
     4, "match \"missing\" not found"),
    ("match m {\n  status 2xx;\n}", 2, "invalid status"),
    ("match m {\n  header X ?? y;\n}", 2, "invalid operator"),
    ("upstream u { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port};\n"
     " location / { proxy_pass http://u;\n  health_check fails=zero; } }",
     4, "invalid parameter \"fails=zero\""),
])
def test_bad_config_is_refused_with_file_and_line(res, conf, line, msg):
    p = res.proxy_unstarted(conf)
    cp = p.run_cmd("-t")
    assert cp.returncode != 0
    # the body of http {} starts after the harness's access_log line
    lines = p.conf_text.splitlines()
    body_start = lines.index("    access_log " + p.access_log_path + ";") + 2
    assert f"{p.conf_path}:{body_start + line - 1}: " in cp.output, cp.output
    assert msg in cp.output, cp.output
