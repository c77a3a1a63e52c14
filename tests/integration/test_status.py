"""Traffic counters: stub_status (nginx's format, which monitoring agents
parse), the api's JSON and its Prometheus /metrics. The stub_status cases
pass against nginx too (PROXY_UNDER_TEST=nginx)."""
import json
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest

from conftest import IS_NGINX, Conn, build_request, get, wait_for

STUB = re.compile(r"Active connections: (\d+) \nserver accepts handled requests\n (\d+) (\d+) "
                  r"(\d+) \nReading: (\d+) Writing: (\d+) Waiting: (\d+) \n")


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def sp(mres, origin):
    api = "" if IS_NGINX else "location /api/ { api; }"
    return mres.proxy("""
        upstream back { server 127.0.0.1:%(o)d; }
        server {
            listen 127.0.0.1:{port};
            location = /basic_status { stub_status; }
            %(api)s
            location / { proxy_pass http://back; }
        }
    """ % {"o": origin.port, "api": api})


def stub(port):
    r = get(port, "/basic_status")
    assert r.status == 200 and r.header("Content-Type", "").startswith("text/plain")
    m = STUB.fullmatch(r.text)
    assert m, r.text
    keys = ("active", "accepts", "handled", "requests", "reading", "writing", "waiting")
    return dict(zip(keys, map(int, m.groups())))


def test_stub_status_counts(sp):
    a = stub(sp.port)
    for _ in range(5):
        assert get(sp.port, "/x").status == 200
    b = stub(sp.port)
    assert b["requests"] - a["requests"] == 6  # five, and the status request itself
    assert b["accepts"] - a["accepts"] == 6
    assert b["accepts"] == b["handled"]
    assert b["writing"] >= 1  # this request


def test_reading_writing_waiting(sp):
    idle = Conn(sp.port)
    idle.send(build_request("GET", "/x"))
    idle.read_final()
    partial = socket.create_connection(("127.0.0.1", sp.port))
    partial.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")  # no blank line yet
    slow_done = threading.Event()
    t = threading.Thread(target=lambda: (get(sp.port, "/delay/1500", timeout=10),
                                         slow_done.set()))
    t.start()
    try:
        wait_for(lambda: (lambda s: s["reading"] >= 1 and s["writing"] >= 2 and
                          s["waiting"] >= 1)(stub(sp.port)), 5,
                 what="a reading, two writing and a waiting connection")
    finally:
        partial.close()
        idle.close()
        t.join(10)
    assert slow_done.is_set()
    wait_for(lambda: stub(sp.port)["reading"] == 0, 5, what="reading back to 0")


@pytest.mark.skipif(IS_NGINX, reason="Portico's api")
def test_api_json_traffic(sp):
    a = get(sp.port, "/api/").json()
    assert get(sp.port, "/nope/status/404").status == 404
    b = get(sp.port, "/api/").json()
    assert b["responses"]["4xx"] == a["responses"]["4xx"] + 1
    assert b["requests"]["total"] >= a["requests"]["total"] + 2
    assert b["connections"]["active"] >= 1
    assert b["bytes"]["sent"] > a["bytes"]["sent"]
    assert b["upstreams"]["back"]["peers"][0]["requests"] >= 1


@pytest.mark.skipif(IS_NGINX, reason="Portico's api")
def test_prometheus_metrics(sp):
    get(sp.port, "/x")
    r = get(sp.port, "/api/metrics")
    assert r.status == 200 and r.header("Content-Type").startswith("text/plain; version=0.0.4")
    samples = {}
    line_re = re.compile(r'([a-z_]+)(\{[a-z]+="[^"\\]*"(?:,[a-z]+="[^"\\]*")*\})? (\d+)')
    for line in r.text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = line_re.fullmatch(line)
        assert m, line
        samples[m.group(1) + (m.group(2) or "")] = int(m.group(3))
    assert samples['portico_info{version="0.1.0"}'] == 1
    assert samples["portico_http_requests_total"] >= 2
    assert samples['portico_http_responses_total{code="2xx"}'] >= 1
    peer = [k for k in samples if k.startswith("portico_upstream_peer_requests_total{")]
    assert peer and samples[peer[0]] >= 1
    assert samples[[k for k in samples if k.startswith("portico_upstream_peer_up{")][0]] == 1


@pytest.mark.skipif(IS_NGINX, reason="Portico's api")
def test_http2_streams_are_counted(res, origin):
    p = res.proxy("""
        server {
            listen 127.0.0.1:{port} http2;
            location = /basic_status { stub_status; }
            location / { proxy_pass http://127.0.0.1:%d; }
        }
    """ % origin.port)
    before = stub(p.port)["requests"]
    out = subprocess.run(["h2load", "-n", "3", "-c", "1", "-m", "3", f"http://127.0.0.1:{p.port}/x"],
                         capture_output=True, text=True, timeout=20)
    assert "3 succeeded" in out.stdout, out.stdout
    assert stub(p.port)["requests"] - before == 4  # three streams and this status request


@pytest.mark.skipif(IS_NGINX, reason="Portico's api")
def test_dashboard_page(sp):
    r = get(sp.port, "/api/dashboard")
    assert r.status == 200 and r.header("Content-Type") == "text/html; charset=utf-8"
    assert b"<script>" in r.body and b"fetch(api" in r.body


@pytest.mark.skipif(IS_NGINX or not shutil.which("node"), reason="needs node (Portico's api)")
def test_dashboard_renders_the_api(sp):
    """The page's own script, run by node against this Portico with a
    stand-in document: it renders the upstream peers and the counters."""
    get(sp.port, "/x")
    out = subprocess.run(["node", os.path.join(os.path.dirname(__file__), "js",
                                               "dashboard_smoke.js"),
                          f"http://127.0.0.1:{sp.port}/api/dashboard"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    page = json.loads(out.stdout)
    assert page["err"] == ""
    assert page["meta"].startswith("version 0.1.0")
    assert ">back</td>" in page["ups"] and 'class="up">up</td>' in page["ups"]
    assert "requests/s<b>" in page["cards"]
    assert page["caches"] == "<p>none</p>"
