"""Access log formats (combined, custom, escape=json), access_log off, and
SIGUSR1 reopen."""
import json
import os
import re
import signal

from conftest import get, wait_for

COMBINED_RE = re.compile(
    r'^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
    r'"GET /logged\?q=1 HTTP/1\.1" 200 (\d+) "http://ref\.test/" "test-agent/1\.0"$')


def test_default_combined_format(res):
    p = res.proxy('server { listen 127.0.0.1:{port}; location / { return 200 "hello"; } }')
    r = get(p.port, "/logged?q=1", headers=[("Referer", "http://ref.test/"),
                                            ("User-Agent", "test-agent/1.0")])
    assert r.status == 200
    line = p.wait_access_lines(1)[-1]
    m = COMBINED_RE.match(line)
    assert m, line
    assert int(m.group(1)) == 5  # $body_bytes_sent


def test_combined_escapes_quotes(res):
    p = res.proxy('server { listen 127.0.0.1:{port}; location / { return 200 "x"; } }')
    get(p.port, "/q", headers=[("User-Agent", 'a"b\\c')])
    line = p.wait_access_lines(1)[-1]
    assert '"a\\x22b\\x5Cc"' in line, line


CUSTOM = r"""
log_format custom '$request_id|$status|$upstream_addr|$upstream_status|$request_time|'
                  '$upstream_response_time|$request_method|$uri|$args|$host|$server_port|'
                  '$remote_addr|$body_bytes_sent|$request_length|$msec|$time_iso8601|$http_x_tag';
log_format js escape=json '{"ua":"$http_user_agent","uri":"$request_uri","status":$status}';
upstream u { server {origin}; }
server {
    listen 127.0.0.1:{port};
    location /j/ { proxy_pass http://u; access_log {tmp}/json.log js; }
    location /off/ { proxy_pass http://u; access_log off; }
    location / {
        proxy_pass http://u;
        proxy_set_header X-Request-ID $request_id;
        access_log {tmp}/custom.log custom;
    }
}
"""


def read(path):
    try:
        with open(path) as f:
            return [ln for ln in f.read().splitlines() if ln]
    except FileNotFoundError:
        return []


def test_custom_format_variables(res):
    o = res.origin()
    p = res.proxy(CUSTOM, origin=o.addr)
    r = get(p.port, "/path/x?a=1", host="h.test", headers=[("X-Tag", "t1")])
    assert r.status == 200
    path = os.path.join(p.tmp, "custom.log")
    line = wait_for(lambda: read(path), 5, what="custom log line")[-1]
    f = line.split("|")
    assert len(f) == 17, line
    rid = f[0]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert {k.lower(): v for k, v in o.last()["headers"]}["x-request-id"] == rid
    assert f[1] == "200"
    assert f[2] == o.addr
    assert f[3] == "200"
    assert re.fullmatch(r"\d+\.\d{3}", f[4]) and re.fullmatch(r"\d+\.\d{3}", f[5])
    assert f[6:12] == ["GET", "/path/x", "a=1", "h.test", str(p.port), "127.0.0.1"]
    assert int(f[12]) == len(r.body)
    assert int(f[13]) > 40  # request line + headers
    assert re.fullmatch(r"\d{10}\.\d{3}", f[14])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}", f[15])
    assert f[16] == "t1"


def test_upstream_status_on_error(res):
    o = res.origin()
    p = res.proxy(CUSTOM, origin=o.addr)
    assert get(p.port, "/status/503").status == 503
    path = os.path.join(p.tmp, "custom.log")
    f = wait_for(lambda: read(path), 5, what="custom log line")[-1].split("|")
    assert f[1] == "503" and f[3] == "503"


def test_escape_json(res):
    o = res.origin()
    p = res.proxy(CUSTOM, origin=o.addr)
    ua = 'quote" back\\ tab\t é'  # HTAB and obs-text are legal in a field value
    get(p.port, "/j/a?b=c", headers=[("User-Agent", ua.encode("utf-8").decode("latin-1"))])
    path = os.path.join(p.tmp, "json.log")
    line = wait_for(lambda: read(path), 5, what="json log line")[-1]
    obj = json.loads(line)
    assert obj["uri"] == "/j/a?b=c"
    assert obj["status"] == 200
    assert obj["ua"].startswith('quote" back\\ tab\t')


def test_access_log_off(res):
    o = res.origin()
    p = res.proxy(CUSTOM, origin=o.addr)
    get(p.port, "/off/x")
    get(p.port, "/x")  # a logged one afterwards, to know logging has happened
    wait_for(lambda: read(os.path.join(p.tmp, "custom.log")), 5, what="custom log")
    assert read(os.path.join(p.tmp, "json.log")) == []
    assert not any("/off/" in ln for ln in p.access_lines())
    assert not any("/off/" in ln for ln in read(os.path.join(p.tmp, "custom.log")))


def test_sigusr1_reopens_logs(res):
    p = res.proxy('server { listen 127.0.0.1:{port}; location / { return 200 "x"; } }')
    get(p.port, "/before")
    p.wait_access_lines(1)
    rotated = p.access_log_path + ".1"
    os.rename(p.access_log_path, rotated)
    p.signal(signal.SIGUSR1)
    wait_for(lambda: os.path.exists(p.access_log_path), 5, what="access log reopened")
    get(p.port, "/after")
    lines = p.wait_access_lines(1)
    assert any("/after" in ln for ln in lines)
    with open(rotated) as f:
        old = f.read()
    assert "/before" in old and "/after" not in old


def test_conditional_logging_with_a_map(res):
    """The nginx recipe: log only what is not 2xx/3xx (map + if=)."""
    p = res.proxy("""
        map $status $loggable {
            ~^[23]  0;
            default 1;
        }
        log_format short '$request_uri $status';
        server {
            listen 127.0.0.1:{port};
            access_log {tmp}/errors.log short if=$loggable;
            location /ok { return 200 "ok"; }
            location /gone { return 410; }
            location /moved { return 301 /ok; }
        }
    """)
    for path in ("/ok", "/gone", "/moved", "/ok?again", "/gone?2"):
        get(p.port, path)
    log = os.path.join(p.tmp, "errors.log")
    wait_for(lambda: len(read(log)) >= 2, 5, what="two lines")
    get(p.port, "/gone?3")  # a last logged one: everything before it is written
    wait_for(lambda: len(read(log)) >= 3, 5, what="three lines")
    assert read(log) == ["/gone 410", "/gone?2 410", "/gone?3 410"]
