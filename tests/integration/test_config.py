"""Config check (-t/-T), errors with file:line, include globs, reload (good
and bad), signals through the pid file, graceful stop."""
import glob
import os
import re
import signal
import subprocess

import pytest

from conftest import Background, IS_NGINX, REPO, Conn, build_request, get, port_open, wait_for

GOOD = """
server {
    listen 127.0.0.1:{port};
    location / { return 200 "%s"; }
}
"""


def bad_line(p):
    """1-based line number of the line marked `# BAD` in the written config."""
    for i, ln in enumerate(p.conf_text.splitlines(), 1):
        if "# BAD" in ln:
            return i
    raise AssertionError("no # BAD marker")


def test_check_ok(res):
    p = res.proxy_unstarted(GOOD % "ok")
    cp = p.run_cmd("-t")
    assert cp.returncode == 0, cp.output


BAD_CONFIGS = {
    "unknown-directive": "frobnicate on; # BAD\n" + GOOD % "x",
    "misplaced-directive": "proxy_pass http://127.0.0.1:1; # BAD\n" + GOOD % "x",
    "misplaced-block": "location / { return 200; } # BAD\n" + GOOD % "x",
    "wrong-arg-count": "client_max_body_size 1m 2m; # BAD\n" + GOOD % "x",
    "bad-size-value": "client_max_body_size lots; # BAD\n" + GOOD % "x",
    "bad-time-value": "keepalive_timeout forever; # BAD\n" + GOOD % "x",
    "regex-location-with-uri": "server { listen 127.0.0.1:{port};\n"
                               "location ~ ^/x { proxy_pass http://127.0.0.1:1/y; } # BAD\n}",
    "duplicate-location": "server { listen 127.0.0.1:{port};\nlocation /a { return 200; }\n"
                          "location /a { return 200; } # BAD\n}",
    "bad-regex": "server { listen 127.0.0.1:{port};\nlocation ~ ^/(x { return 200; } # BAD\n}",
    "bad-return-code": "server { listen 127.0.0.1:{port};\nlocation / { return abc; } # BAD\n}",
    "directive-in-wrong-block": "server { listen 127.0.0.1:{port};\n"
                                "upstream u { server 127.0.0.1:1; } # BAD\n}",
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_check_bad_names_file_and_line(res, name):
    p = res.proxy_unstarted(BAD_CONFIGS[name])
    cp = p.run_cmd("-t")
    assert cp.returncode != 0, cp.output
    assert f"{p.conf_path}:{bad_line(p)}" in cp.output, cp.output


@pytest.mark.parametrize("text", ["server {\n listen 127.0.0.1:{port};\n", "server { listen 127.0.0.1:{port}; }\n}"],
                         ids=["unclosed", "extra-close"])
def test_check_unbalanced_braces(res, text):
    p = res.proxy_unstarted(text)
    cp = p.run_cmd("-t")
    assert cp.returncode != 0
    assert p.conf_path in cp.output, cp.output


def test_bad_config_refused_at_start(res):
    p = res.proxy_unstarted(BAD_CONFIGS["unknown-directive"])
    proc = subprocess.run(p.cmd(), capture_output=True, timeout=20)
    out = (proc.stdout + proc.stderr).decode() + p.error_log
    assert proc.returncode != 0
    assert f"{p.conf_path}:{bad_line(p)}" in out, out


def test_dump_config(res):
    inc = res.tmp_factory.mktemp("dump")
    (inc / "extra.conf").write_text('server { listen 127.0.0.1:1; return 200 "from-include-9f3a"; }\n')
    p = res.proxy_unstarted(f"include {inc}/*.conf;\n" + GOOD % "marker-7c1e")
    cp = p.run_cmd("-T")
    assert cp.returncode == 0, cp.output
    assert "marker-7c1e" in cp.output
    assert "from-include-9f3a" in cp.output


def test_version(res):
    p = res.proxy_unstarted(GOOD % "x")
    cp = subprocess.run([p.cmd()[0], "-v"], capture_output=True, timeout=10)
    assert cp.returncode == 0
    assert re.search(rb"\d+\.\d+", cp.stdout + cp.stderr)


def test_include_glob(res):
    d = res.tmp_factory.mktemp("inc")
    p = res.proxy_unstarted(f"include {d}/*.conf;\n")
    ports = []
    for i, name in enumerate(["a", "b"]):
        port = wait_free_port()
        ports.append(port)
        (d / f"{name}.conf").write_text(
            f'server {{ listen 127.0.0.1:{port}; location / {{ return 200 "inc-{name}"; }} }}\n')
    (d / "ignored.txt").write_text("this is not a config\n")
    p.conf_text += "".join(f"# listen 127.0.0.1:{x};\n" for x in ports)  # readiness hint
    p.start()
    for port, name in zip(ports, "ab"):
        assert get(port, "/").text == f"inc-{name}"


def wait_free_port():
    from conftest import free_port
    return free_port()


def test_error_in_included_file_names_that_file(res):
    d = res.tmp_factory.mktemp("incbad")
    f = d / "bad.conf"
    f.write_text("# comment\n\nbogus_directive 1;\n")
    p = res.proxy_unstarted(f"include {d}/*.conf;\n" + GOOD % "x")
    cp = p.run_cmd("-t")
    assert cp.returncode != 0
    assert f"{f}:3" in cp.output, cp.output


EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*.conf")))


@pytest.mark.skipif(IS_NGINX, reason="examples are Portico configs")
@pytest.mark.parametrize("path", EXAMPLES or [None],
                         ids=[os.path.basename(e) for e in EXAMPLES] or ["no-examples"])
def test_examples_pass_check(path, tmp_path):
    from conftest import PORTICO_BIN
    if path is None:
        pytest.skip("examples/ has no .conf files yet")
    text = open(path).read()
    if re.search(r"/tmp/portico-example-\S+\.pem", text):
        # certificates the example names (tls.conf): made first, paths moved
        from test_examples import make_example_certs
        make_example_certs(tmp_path)
        text = text.replace("/tmp/portico-example-", f"{tmp_path}/portico-example-")
        path = str(tmp_path / os.path.basename(path))
        with open(path, "w") as f:
            f.write(text)
    if "/tmp/portico-jwks.json" in text:
        # the JWK set the example reads at load (api_gateway.conf)
        (tmp_path / "jwks.json").write_text('{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}')
        text = text.replace("/tmp/portico-jwks.json", f"{tmp_path}/jwks.json")
        path = str(tmp_path / os.path.basename(path))
        with open(path, "w") as f:
            f.write(text)
    cp = subprocess.run([PORTICO_BIN, "-t", "-c", path], capture_output=True, timeout=20, cwd=REPO)
    assert cp.returncode == 0, (cp.stdout + cp.stderr).decode()


# ---------------------------------------------------------------- reload
def test_reload_switches_behaviour(res):
    p = res.proxy(GOOD % "v1")
    assert get(p.port).text == "v1"
    # nginx: old workers may still accept for a moment, so wait for a run of v2
    p.reload(GOOD % "v2", until=None if not IS_NGINX else
             (lambda: all(get(p.port).text == "v2" for _ in range(10))))
    assert get(p.port).text == "v2"
    assert p.alive()


@pytest.mark.nginx_differs  # nginx closes idle keep-alive connections of old workers
def test_reload_applies_to_existing_keepalive_connection(res):
    p = res.proxy(GOOD % "v1")
    with Conn(p.port) as c:
        c.send(build_request())
        assert c.read_response().text == "v1"
        p.reload(GOOD % "v2")
        c.send(build_request())
        assert c.read_response().text == "v2"


def test_bad_reload_keeps_old_config(res):
    p = res.proxy(GOOD % "v1")
    p.reload("frobnicate on; # BAD\n" + GOOD % "v2", expect_fail=True)
    line = bad_line(p)
    wait_for(lambda: f"{p.conf_path}:{line}" in p.error_log, 5, what="file:line in error log")
    assert p.alive()
    for _ in range(5):
        assert get(p.port).text == "v1"


def test_reload_adds_listener(res):
    p = res.proxy(GOOD % "v1")
    two = GOOD % "v1" + '\nserver { listen 127.0.0.1:{port2}; return 200 "second"; }\n'
    from conftest import free_port
    p.fields["port2"] = free_port()
    p.reload(two, until=lambda: port_open(p.fields["port2"]))
    assert get(p.fields["port2"]).text == "second"
    assert get(p.port).text == "v1"


def test_reload_keeps_inflight_request(res):
    o = res.origin()
    conf = "upstream u { server {origin}; }\nserver { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }"
    p = res.proxy(conf, origin=o.addr)
    bgr = Background(lambda: get(p.port, "/delay/1500", timeout=10))
    wait_for(lambda: o.requests, 5, what="request at origin")
    p.reload(conf.replace("location /", 'location = /new { return 200 "new"; }\nlocation /'),
             until=None if not IS_NGINX else (lambda: get(p.port, "/new").text == "new"))
    assert bgr.result().status == 200
    assert get(p.port, "/new").text == "new"


def test_signal_reload_via_pid_file(res):
    p = res.proxy(GOOD % "v1")
    wait_for(lambda: os.path.exists(p.pid_path), 5, what="pid file")
    p.write_config(GOOD % "v2")
    cp = p.run_cmd("-s", "reload")
    assert cp.returncode == 0, cp.output
    wait_for(lambda: get(p.port).text == "v2", 10, what="reloaded config")


def test_signal_stop_via_pid_file(res):
    p = res.proxy(GOOD % "v1")
    wait_for(lambda: os.path.exists(p.pid_path), 5, what="pid file")
    cp = p.run_cmd("-s", "stop")
    assert cp.returncode == 0, cp.output
    assert p.proc.wait(10) == 0


def test_graceful_stop_finishes_inflight(res):
    o = res.origin()
    p = res.proxy("upstream u { server {origin}; }\n"
                  "server { listen 127.0.0.1:{port}; location / { proxy_pass http://u; } }",
                  origin=o.addr)
    bgr = Background(lambda: get(p.port, "/delay/1500", timeout=10))
    wait_for(lambda: o.requests, 5, what="request at origin")
    p.signal(p.graceful_signal)
    wait_for(lambda: not port_open(p.port), 5, what="listener closed after SIGTERM")
    r = bgr.result()
    assert r.status == 200
    assert r.json()["target"] == "/delay/1500"
    assert p.proc.wait(10) == 0


def test_sigint_stops(res):
    p = res.proxy(GOOD % "v1")
    assert p.stop(signal.SIGINT) == 0


@pytest.mark.skipif(IS_NGINX, reason="Portico's wording")
def test_unwritable_access_log_named_with_file_and_line(res):
    p = res.proxy_unstarted("server {\n    listen 127.0.0.1:{port};\n"
                            "    access_log /nonexistent-dir-7f1/a.log; # BAD\n"
                            "    location / { return 200 \"x\"; }\n}\n")
    cp = p.run_cmd("-t")
    assert cp.returncode != 0
    assert f"{p.conf_path}:{bad_line(p)}: open() \"/nonexistent-dir-7f1/a.log\" failed" in cp.output, \
        cp.output


@pytest.mark.skipif(IS_NGINX, reason="Portico's wording")
def test_unwritable_error_log_refuses_to_start(tmp_path):
    from conftest import PORTICO_BIN, free_port
    conf = tmp_path / "p.conf"
    conf.write_text("error_log /nonexistent-dir-7f1/e.log;\npid %s/p.pid;\nevents {}\n"
                    "http { server { listen 127.0.0.1:%d; return 200; } }\n"
                    % (tmp_path, free_port()))
    cp = subprocess.run([PORTICO_BIN, "-c", str(conf)], capture_output=True, timeout=20)
    out = (cp.stdout + cp.stderr).decode()
    assert cp.returncode != 0
    assert f"{conf}:1: open() \"/nonexistent-dir-7f1/e.log\" failed" in out, out


@pytest.mark.skipif(IS_NGINX, reason="Portico's wording")
def test_zero_worker_connections_refused(tmp_path):
    from conftest import PORTICO_BIN
    conf = tmp_path / "p.conf"
    conf.write_text("events {\n    worker_connections 0;\n}\n"
                    "http { server { listen 127.0.0.1:1; return 200; } }\n")
    cp = subprocess.run([PORTICO_BIN, "-t", "-c", str(conf)], capture_output=True, timeout=20)
    assert cp.returncode != 0
    assert f"{conf}:2: invalid value \"0\" in \"worker_connections\"" in cp.stderr.decode()
