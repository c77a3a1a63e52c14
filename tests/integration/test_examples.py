"""Every config in examples/ runs: started for real (its loopback ports moved to
free ones, its pid/log files moved to a temp dir) and answering as its comments
promise."""
import os
import re
import signal
import subprocess

import pytest

from conftest import IS_NGINX, PORTICO_BIN, REPO, free_port, get, port_open, request, wait_for

pytestmark = pytest.mark.skipif(IS_NGINX, reason="examples are Portico configs")

ADDR_RE = re.compile(r"127\.0\.0\.1:(\d+)")
PATH_RE = re.compile(r"(/tmp/[A-Za-z0-9_.-]+)")


def start_example(name, tmp_path):
    text = open(os.path.join(REPO, "examples", name)).read()
    ports = {}
    for m in ADDR_RE.finditer(text):
        ports.setdefault(m.group(1), str(free_port()))
    text = ADDR_RE.sub(lambda m: "127.0.0.1:" + ports[m.group(1)], text)
    text = PATH_RE.sub(lambda m: str(tmp_path / os.path.basename(m.group(1))), text)
    conf = tmp_path / name
    conf.write_text(text)
    out = open(tmp_path / "out.txt", "wb")
    proc = subprocess.Popen([PORTICO_BIN, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    listen = [ports[p] for p in re.findall(r"listen\s+127\.0\.0\.1:(\d+)",
                                           open(os.path.join(REPO, "examples", name)).read())]
    try:
        wait_for(lambda: all(port_open(int(p)) for p in listen), 10, what=f"{name} listening")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise AssertionError(open(tmp_path / "out.txt").read())
    return proc, ports


@pytest.fixture
def example(tmp_path):
    procs = []

    def run(name):
        proc, ports = start_example(name, tmp_path)
        procs.append(proc)
        return lambda p: int(ports[str(p)])
    yield run
    for p in procs:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_quickstart_round_robin(example):
    port = example("quickstart.conf")
    seen = set()
    for _ in range(4):
        r = get(port(8080), "/hello?x=1")
        assert r.status == 200
        assert "uri: /hello?x=1" in r.text and "x-forwarded-for: 127.0.0.1" in r.text
        assert re.search(r"x-request-id: [0-9a-f]{32}", r.text)
        seen.add(r.text.splitlines()[0])
    assert seen == {"origin A", "origin B"}
    assert get(port(8080), "/healthz").text == "ok\n"
    # an upload larger than client_body_buffer_size, chunked: buffered whole
    body = os.urandom(3 << 20)
    r = request(port(8080), "POST", "/upload", headers=[("Transfer-Encoding", "chunked")],
                body=b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    assert r.status == 200 and "uri: /upload" in r.text


def test_load_balancing_weights_and_backup(example):
    port = example("load_balancing.conf")
    bodies = [get(port(8081), "/").text for _ in range(30)]
    assert bodies.count("app-1\n") == 20 and bodies.count("app-2\n") == 10
    assert "backup\n" not in bodies
    r = get(port(8091), "/")
    cookie = r.header("Set-Cookie").split(";")[0]
    assert cookie.startswith("srv=")
    sticky = {get(port(8091), "/", headers=[("Cookie", cookie)]).text for _ in range(6)}
    assert sticky == {r.text}


def test_routing(example):
    port = example("routing.conf")
    assert get(port(8082), "/").text == "exact /\n"
    assert get(port(8082), "/x").text == "prefix / for /x\n"
    assert get(port(8082), "/documents/a.pdf").text == "a pdf inside /documents/\n"
    assert get(port(8082), "/images/a.png").text.startswith("images")
    assert get(port(8082), "/docs/a.JPG").text == "an image by regex: JPG\n"
    assert get(port(8082), "/", host="api.example.com").text == "wildcard server: api.example.com\n"
    assert get(port(8082), "/", host="shop-eu.example.net").text == "shop shop in region eu\n"
    r = get(port(8082), "/old/x")
    assert r.status == 301 and r.header("Location").endswith("/documents/")
    # rewrite ... last, if, return in order
    assert get(port(8082), "/legacy/a.php").text == "documents\n"
    assert get(port(8082), "/legacy/a", headers=[("User-Agent", "Googlebot")]).status == 403
    assert get(port(8082), "/legacy/a").status == 410
    # map: the release cookie picks the upstream group
    r = get(port(8083), "/")
    assert r.text == "stable release\n" and r.header("X-Pool") == "stable_pool"
    r = get(port(8083), "/", headers=[("Cookie", "release=Beta")])
    assert r.text == "canary release\n" and r.header("X-Pool") == "canary_pool"
    assert get(port(8083), "/", headers=[("Cookie", "release=pin-1")]).header("X-Pool") == "pinned_1"


def test_logging(example, tmp_path):
    port = example("logging.conf")
    r = get(port(8083), "/", headers=[("User-Agent", "example-test"),
                                      ("X-Forwarded-For", "198.51.100.23")])
    assert r.status == 200 and re.search(r"seen by the origin: [0-9a-f]{32}", r.text)
    combined = tmp_path / "portico-access.log"
    wait_for(lambda: combined.exists() and "example-test" in combined.read_text(), 5,
             what="combined log line")
    # realip: the client the load balancer named
    assert [ln for ln in combined.read_text().splitlines()
            if "example-test" in ln][0].startswith("198.51.100.23 - ")
    # the JSON log is buffered (flush=1s)
    js = tmp_path / "portico-access.json"
    wait_for(lambda: js.exists() and '"ua":"example-test"' in js.read_text(), 5,
             what="json log line")
    # if=: only the failure reaches the errors log
    assert get(port(8083), "/missing", headers=[("User-Agent", "failing-test")]).status == 404
    errors = tmp_path / "portico-errors.log"
    wait_for(lambda: errors.exists() and "failing-test" in errors.read_text(), 5,
             what="errors log line")
    assert "example-test" not in errors.read_text()


def test_errors(example):
    port = example("errors.conf")
    r = get(port(8084), "/gone")
    assert r.status == 503 and r.text == "down for maintenance, back soon\n"
    r = get(port(8084), "/old-path")
    assert r.status == 301 and r.header("Location").endswith("/new-path")
    r = get(port(8084), "/")
    assert r.status == 200 and r.text == "nothing here, but a friendly page\n"
    assert get(port(8084), "/teapot").status == 418
    assert get(port(8084), "/").header("Server") == "portico"


def test_health_checks_and_api(example):
    port = example("health_checks.conf")
    api = lambda: get(port(8082), "/api/upstreams/app").json()  # noqa: E731
    states = lambda: [p["state"] for p in api()["peers"]]  # noqa: E731
    # mandatory: every server is checked once before it gets traffic
    wait_for(lambda: states() == ["up", "up", "unhealthy"], 10, what="first checks")
    seen = set()
    for _ in range(12):
        r = get(port(8082), "/")
        assert r.status == 200
        seen.add(r.text.strip())
    assert seen == {"app-1", "app-2"}
    doc = get(port(8082), "/api").json()
    assert doc["upstreams"]["app"]["health_checks"][0]["match"] == "healthy"
    sick = api()["peers"][2]["health_checks"]
    assert sick["last_status"] == 503 and sick["last_passed"] is False
    assert doc["responses"]["2xx"] >= 12
    metrics = get(port(8082), "/api/metrics").text
    up = re.findall(r'portico_upstream_peer_up\{upstream="app",peer="127\.0\.0\.1:\d+"\} (\d)',
                    metrics)
    assert up == ["1", "1", "0"]
    assert get(port(8082), "/api/dashboard").header("Content-Type").startswith("text/html")
    assert get(port(8082), "/basic_status").text.startswith("Active connections: ")


def make_example_certs(d):
    """The files examples/tls.conf names (/tmp/portico-example-*, remapped to d):
    a CA, ECDSA and RSA certificates for the front, one for the backend."""
    def ossl(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "30", "-subj", "/CN=example-ca", "-keyout", "portico-example-ca.key",
         "-out", "portico-example-ca.pem")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, alg in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                      ("rsa", ["-newkey", "rsa:2048"]),
                      ("backend", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        ossl("req", "-new", *alg, "-nodes", "-subj", f"/CN={name}.localhost",
             "-keyout", f"portico-example-{name}.key", "-out", f"{name}.csr")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "portico-example-ca.pem", "-CAkey",
             "portico-example-ca.key", "-CAcreateserial", "-days", "30", "-extfile", "san.ext",
             "-out", f"portico-example-{name}.pem")


def test_tls(example, tmp_path):
    import socket
    import ssl
    make_example_certs(tmp_path)
    port = example("tls.conf")
    r = get(port(8080), "/some/path?q=1", host="localhost")
    assert r.status == 301 and r.header("Location") == "https://localhost/some/path?q=1"

    ctxs = {}

    def https(path, ciphers=None, session=None):
        if ciphers not in ctxs:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "portico-example-ca.pem"))
            if ciphers:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                ctx.set_ciphers(ciphers)
            ctxs[ciphers] = ctx
        ctx = ctxs[ciphers]
        with socket.create_connection(("127.0.0.1", port(8443)), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close"
                          "\r\n\r\n".encode())
                data = b""
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
                cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
                return data.decode(), cn, s.session
    text, cn, _ = https("/")
    assert text.startswith("HTTP/1.1 200")
    assert "Strict-Transport-Security: max-age=63072000" in text
    assert "backend over TLSv1.3, sni=localhost" in text and "x-forwarded-proto: https" in text
    assert https("/", "ECDHE-ECDSA-AES128-GCM-SHA256")[1] == "ecdsa.localhost"
    assert https("/", "ECDHE-RSA-AES128-GCM-SHA256")[1] == "rsa.localhost"
    text, _, sess = https("/tls", "ECDHE-RSA-AES128-GCM-SHA256")
    assert "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 resumed=." in text
    assert "resumed=r" in https("/tls", "ECDHE-RSA-AES128-GCM-SHA256", session=sess)[0]


def test_cache(example):
    port = example("cache.conf")
    first = get(port(8083), "/news")
    assert (first.status, first.header("x-cache-status")) == (200, "MISS")
    hit = get(port(8083), "/news")
    assert (hit.header("x-cache-status"), hit.body) == ("HIT", first.body)
    r = get(port(8083), "/news", headers=[("Range", "bytes=0-3")])
    assert (r.status, r.body) == (206, b"news")
    assert get(port(8083), "/news", headers=[("If-None-Match", '"v1"')]).status == 304
    from conftest import request
    assert request(port(8083), "PURGE", "/news").json() == {"purged": 1}
    assert get(port(8083), "/news").header("x-cache-status") == "MISS"
    get(port(8083), "/private")
    assert get(port(8083), "/private").header("x-cache-status") == "MISS"


def test_edge(example):
    import socket
    from conftest import parse_one
    port = example("edge.conf")

    def via_lb(client, path):
        s = socket.create_connection(("127.0.0.1", port(8090)), timeout=5)
        s.sendall(b"PROXY TCP4 %s 127.0.0.1 5555 8090\r\n" % client.encode()
                  + b"GET %s HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n"
                  % path.encode())
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        return parse_one(data, True)[0]

    r = via_lb("198.51.100.7", "/whoami")
    assert re.fullmatch(r"client 198\.51\.100\.7 via 127\.0\.0\.1, release (canary|stable)\n",
                        r.text), r.text
    assert via_lb("198.51.100.7", "/admin/").status == 200
    assert via_lb("203.0.113.5", "/admin/").status == 403
    r = via_lb("203.0.113.5", "/app/x?y=1")
    assert re.fullmatch(r"app: /internal/x\?y=1, release (canary|stable)\n", r.text), r.text
    r = via_lb("203.0.113.5", "/app/login")
    assert r.status == 302 and r.header("Location") == f"http://edge.test:{port(8090)}/app/home"
    r = via_lb("203.0.113.5", "/old/page")
    assert r.status == 301 and r.header("Location").endswith("/app/page")
    # the app's own links are rewritten in its pages (sub_filter)
    r = via_lb("203.0.113.5", "/app/menu")
    assert r.body == b'<a href="/app/home">home</a> <a href="/app/cart">cart</a>\n', r.body
    # the same client always lands in the same release
    assert len({via_lb("192.0.2.1", "/whoami").text for _ in range(5)}) == 1


def test_static_files(example, tmp_path):
    www = tmp_path / "portico-www"
    (www / "assets").mkdir(parents=True)
    (www / "index.html").write_bytes(b"<h1>hello</h1>\n")
    (www / "assets" / "site.css").write_bytes(b"body{}\n")
    port = example("static.conf")
    r = get(port(8090), "/")
    assert r.status == 200 and r.body == b"<h1>hello</h1>\n"
    assert r.header("Content-Type") == "text/html" and r.header("ETag")
    r = get(port(8090), "/assets/site.css")
    assert r.header("Content-Type") == "text/css"
    assert r.header("Cache-Control") == "max-age=3600" and r.header("Expires")
    r = get(port(8090), "/staff/")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Basic realm="Staff"'
    (tmp_path / "portico-htpasswd").write_text("ann:{PLAIN}s3cret\n")
    import base64
    cred = base64.b64encode(b"ann:s3cret").decode()
    r = get(port(8090), "/staff/", headers=[("Authorization", "Basic " + cred)])
    assert r.status == 200 and r.body == b"app saw GET /staff/\n"
    r = get(port(8090), "/assets/site.css", headers=[("Range", "bytes=0-3")])
    assert r.status == 206 and r.body == b"body"
    # a precompressed twin, served as is; a listing
    import gzip
    (www / "assets" / "site.css.gz").write_bytes(gzip.compress(b"body{}\n"))
    r = get(port(8090), "/assets/site.css", headers=[("Accept-Encoding", "gzip")])
    assert r.header("Content-Encoding") == "gzip" and gzip.decompress(r.body) == b"body{}\n"
    (www / "downloads").mkdir()
    (www / "downloads" / "v1.tar").write_bytes(b"t" * 3000)
    r = get(port(8090), "/downloads/")
    assert r.status == 200 and b'<a href="v1.tar">v1.tar</a>' in r.body
    assert get(port(8090), "/favicon.ico").status == 404
    # the application hands out a file by X-Accel-Redirect; clients cannot ask for it
    (www / "private").mkdir()
    (www / "private" / "report.txt").write_bytes(b"42\n")
    r = get(port(8090), "/app/reports/q3")
    assert r.status == 200 and r.body == b"42\n"
    assert r.header("Content-Disposition") == "attachment; filename=report.txt"
    assert get(port(8090), "/private/report.txt").status == 404
    # a signed, expiring link to the same file
    import hashlib
    import time
    e = int(time.time()) + 3600
    h = base64.urlsafe_b64encode(hashlib.md5(f"{e}/dl/report.txt s3cret".encode()).digest())
    r = get(port(8090), f"/dl/report.txt?md5={h.decode().rstrip('=')}&expires={e}")
    assert r.status == 200 and r.body == b"42\n"
    assert get(port(8090), f"/dl/report.txt?md5=AAAA&expires={e}").status == 403
    import gzip
    (www / "big.html").write_bytes(b"<p>hello</p>\n" * 500)
    r = get(port(8090), "/big.html", headers=[("Accept-Encoding", "gzip")])
    assert r.header("Content-Encoding") == "gzip" and r.header("Vary") == "Accept-Encoding"
    assert gzip.decompress(r.body) == b"<p>hello</p>\n" * 500
    r = get(port(8090), "/big.html", headers=[("Accept-Encoding", "gzip, br, zstd")])
    assert r.header("Content-Encoding") == "zstd"
    r = request(port(8090), "POST", "/app/orders", body="x=1")
    assert r.status == 200 and r.body == b"app saw POST /app/orders\n"
    r = get(port(8090), "/spa/deep/link")
    assert r.status == 200 and r.body == b"<h1>hello</h1>\n"
    r = get(port(8090), "/missing")
    assert r.status == 404 and r.body == b"nothing here\n"


def test_api_gateway(example, tmp_path):
    import base64
    import hashlib
    import hmac
    import json
    import time
    secret = b"a-demo-secret-of-32-bytes-long!!"

    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    (tmp_path / "portico-jwks.json").write_text(
        json.dumps({"keys": [{"kty": "oct", "kid": "demo", "k": b64u(secret)}]}))

    def token(**claims):
        h = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "demo"}).encode())
        p = b64u(json.dumps(dict(claims, exp=int(time.time()) + 60)).encode())
        sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
        return f"{h}.{p}.{b64u(sig)}"

    port = example("api_gateway.conf")
    r = get(port(8095), "/v1/orders")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="orders"'
    auth = [("Authorization", "Bearer " + token(sub="ann", scope="read"))]
    r = get(port(8095), "/v1/orders", headers=auth)
    assert r.status == 200 and r.body == b"orders: user=ann scope=read uri=/v1/orders\n"
    assert get(port(8095), "/v1/admin/", headers=auth).status == 403
    admin = [("Authorization", "Bearer " + token(sub="root", role="admin"))]
    assert get(port(8095), "/v1/admin/", headers=admin).status == 200
    # 20 more than the rate in a burst, then 429, per subject
    codes = [get(port(8095), "/v1/orders", headers=auth).status for _ in range(25)]
    assert 429 in codes and codes.count(200) >= 20
    assert get(port(8095), "/v1/orders", headers=admin).status == 200  # another subject
    # auth_request in front of a web app: the sign-on service decides, its user goes on
    assert get(port(8095), "/app/").status == 401
    r = get(port(8095), "/app/home", headers=[("Cookie", "sso=alice")])
    assert r.status == 200 and r.body == b"orders: user=alice scope= uri=/app/home\n"
    assert get(port(8095), "/_sso").status == 404
    m = get(port(8095), "/status/metrics").text
    assert 'portico_http_responses_total{code="4xx"}' in m
