"""Files from the file system: root, alias, index, try_files, types, with
validators, ranges and sendfile. The behavioural cases pass against nginx
too (PROXY_UNDER_TEST=nginx), except where marked."""
import http.client
import os

import pytest

from conftest import IS_NGINX, Conn, build_request, get, request

BIG = 3 * 1024 * 1024 + 17


@pytest.fixture(scope="module")
def docroot(tmp_path_factory):
    d = tmp_path_factory.mktemp("docroot")
    www = d / "www"
    (www / "sub").mkdir(parents=True)
    (www / "noindex").mkdir()
    (www / "app").mkdir()
    (www / "app" / "hello.txt").write_bytes(b"from disk\n")
    (www / "idx2").mkdir()
    (www / "index.html").write_bytes(b"<h1>home</h1>\n")
    (www / "style.CSS").write_bytes(b"body{}\n")
    (www / "app.js").write_bytes(b"let a;\n")
    (www / "data.weird").write_bytes(b"?\n")
    (www / "sub" / "index.html").write_bytes(b"sub index\n")
    (www / "idx2" / "default.htm").write_bytes(b"second index\n")
    (www / "big.bin").write_bytes(bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256))
    (www / "sp ace.txt").write_bytes(b"spaced\n")
    (www / "secret.txt").write_bytes(b"top secret\n")
    os.chmod(www / "secret.txt", 0)
    assets = d / "assets"
    assets.mkdir()
    (assets / "logo.svg").write_bytes(b"<svg/>\n")
    (d / "outside.txt").write_bytes(b"must not be served\n")
    (d / "mime.types").write_text("types {\n text/html html;\n text/x-weird weird;\n}\n")
    return d


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def sp(mres, docroot, origin):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            root %(d)s/www;
            location /assets/ { alias %(d)s/assets/; }
            location ~ ^/img/(.+\\.svg)$ { alias %(d)s/assets/$1; }
            location /typed/ {
                include %(d)s/mime.types;
                default_type application/x-default;
                alias %(d)s/www/;
            }
            location /idx2/ { index nothere.html default.htm; }
            location /app/ { try_files $uri $uri/ @backend; }
            location @backend { proxy_pass http://127.0.0.1:%(o)d; }
            location /spa/ { try_files $uri /index.html; }
            location /code/ { try_files $uri =418; }
            location /cached/ {
                alias %(d)s/www/;
                add_header Cache-Control "max-age=60";
                etag off;
            }
            location /nosf/ { alias %(d)s/www/; sendfile off; }
            location /api/ { proxy_pass http://127.0.0.1:%(o)d; }
            error_page 404 /404.html;
            location = /404.html { return 404 "custom not found\\n"; }
        }
    """ % {"d": docroot, "o": origin.port})


def test_index_and_types(sp):
    r = get(sp.port, "/")
    assert r.status == 200 and r.body == b"<h1>home</h1>\n"
    assert r.header("Content-Type") == "text/html"
    assert r.header("Content-Length") == "14"
    assert r.header("Last-Modified") and r.header("ETag", "").startswith('"')
    assert r.header("Accept-Ranges") == "bytes"
    r = get(sp.port, "/app.js")
    assert r.status == 200
    if not IS_NGINX:  # nginx's built-in table is html, gif and jpg only
        assert r.header("Content-Type") == "application/javascript"
        # the extension is matched case-insensitively
        assert get(sp.port, "/style.CSS").header("Content-Type") == "text/css"


def test_types_block_and_default_type(sp):
    r = get(sp.port, "/typed/data.weird")
    assert r.status == 200 and r.header("Content-Type") == "text/x-weird"
    # a level with a types block uses only it: .js is not in it
    r = get(sp.port, "/typed/app.js")
    assert r.header("Content-Type") == "application/x-default"


def test_directory_without_slash_redirects(sp):
    r = get(sp.port, "/sub?x=1")
    assert r.status == 301
    assert r.header("Location").endswith("/sub/?x=1")
    r = get(sp.port, "/sub/")
    assert r.status == 200 and r.body == b"sub index\n"


def test_index_list_and_forbidden_directory(sp):
    r = get(sp.port, "/idx2/")
    assert r.status == 200 and r.body == b"second index\n"
    r = get(sp.port, "/noindex/")
    assert r.status == 403
    assert "directory index of" in sp.error_log if not IS_NGINX else True


def test_missing_file_goes_to_error_page(sp):
    r = get(sp.port, "/nothing-here")
    assert r.status == 404 and r.body == b"custom not found\n"


def test_unreadable_file_is_403(sp):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    assert get(sp.port, "/secret.txt").status == 403


def test_alias_prefix_and_regex(sp):
    r = get(sp.port, "/assets/logo.svg")
    assert r.status == 200 and r.body == b"<svg/>\n"
    assert IS_NGINX or r.header("Content-Type") == "image/svg+xml"
    r = get(sp.port, "/img/logo.svg")
    assert r.status == 200 and r.body == b"<svg/>\n"


def test_no_escape_from_root(sp):
    # the client's dot segments are resolved before routing: /assets/../outside.txt
    # is /outside.txt under root, which does not exist
    for target in ("/assets/../outside.txt", "/assets/%2e%2e/outside.txt",
                   "/%2e%2e/outside.txt", "/assets/..%2foutside.txt"):
        r = get(sp.port, target)
        assert r.status in (400, 404), (target, r.status)
        assert b"must not be served" not in r.body


def test_percent_encoded_name(sp):
    r = get(sp.port, "/sp%20ace.txt")
    assert r.status == 200 and r.body == b"spaced\n"


def test_conditional_requests(sp):
    r = get(sp.port, "/app.js")
    etag, lm = r.header("ETag"), r.header("Last-Modified")
    r = get(sp.port, "/app.js", headers=[("If-None-Match", etag)])
    assert r.status == 304 and r.body == b""
    assert r.header("ETag") == etag
    r = get(sp.port, "/app.js", headers=[("If-None-Match", '"other"')])
    assert r.status == 200
    r = get(sp.port, "/app.js", headers=[("If-Modified-Since", lm)])
    assert r.status == 304
    r = get(sp.port, "/app.js", headers=[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:01 GMT")])
    assert r.status == 200
    r = get(sp.port, "/app.js", headers=[("If-Match", '"nope"')])
    assert r.status == 412
    r = get(sp.port, "/app.js", headers=[("If-Match", etag)])
    assert r.status == 200
    r = get(sp.port, "/app.js",
            headers=[("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:01 GMT")])
    assert r.status == 412


def test_ranges(sp):
    r = get(sp.port, "/big.bin", headers=[("Range", "bytes=256-511")])
    assert r.status == 206 and r.body == bytes(range(256))
    assert r.header("Content-Range") == f"bytes 256-511/{BIG}"
    r = get(sp.port, "/big.bin", headers=[("Range", "bytes=-5")])
    assert r.status == 206 and r.body == b"x" * 5
    r = get(sp.port, "/big.bin", headers=[("Range", f"bytes={BIG}-")])
    assert r.status == 416 and r.header("Content-Range") == f"bytes */{BIG}"
    # If-Range with another validator: the whole file
    r = get(sp.port, "/app.js", headers=[("Range", "bytes=0-1"), ("If-Range", '"old"')])
    assert r.status == 200 and r.body == b"let a;\n"


@pytest.mark.parametrize("path", ["/big.bin", "/nosf/big.bin"])
def test_big_file_whole(sp, path):
    r = get(sp.port, path, timeout=20)
    assert r.status == 200 and len(r.body) == BIG
    assert r.body[:256] == bytes(range(256)) and r.body.endswith(b"x" * (BIG % 256))


def test_big_file_slow_reader_then_keepalive(sp):
    """Backpressure: a client that reads slowly gets every byte, and the
    connection goes on with the next request."""
    with Conn(sp.port, timeout=20) as c:
        c.send(build_request("GET", "/nosf/big.bin"))
        _, r = c.read_final(timeout=20)
        assert r.status == 200 and len(r.body) == BIG
        c.send(build_request("GET", "/app.js"))
        _, r = c.read_final()
        assert r.status == 200 and r.body == b"let a;\n"


def test_head(sp):
    r = request(sp.port, "HEAD", "/big.bin")
    assert r.status == 200 and r.body == b""
    assert r.header("Content-Length") == str(BIG)


def test_post_to_a_file_is_405(sp):
    r = request(sp.port, "POST", "/app.js", body="x=1")
    assert r.status == 405


def test_try_files_falls_back_to_named_location_with_body(sp, origin):
    origin.clear()
    r = request(sp.port, "POST", "/app/orders?id=7", body="payload")
    assert r.status == 200
    rec = origin.requests[-1]
    assert rec["method"] == "POST" and rec["body_len"] == len("payload")
    assert rec["target"] == "/app/orders?id=7"
    # an existing file is served by try_files itself
    origin.clear()
    r = get(sp.port, "/app/hello.txt")
    assert r.status == 200 and r.body == b"from disk\n"
    # $uri/ matched the directory: index, none there, so 403
    assert get(sp.port, "/app/").status == 403
    assert origin.requests == []


def test_try_files_uri_fallback_and_code(sp):
    r = get(sp.port, "/spa/deep/link")
    assert r.status == 200 and r.body == b"<h1>home</h1>\n"
    assert get(sp.port, "/code/x").status == 418


def test_add_header_and_etag_off(sp):
    r = get(sp.port, "/cached/app.js")
    assert r.status == 200 and r.header("Cache-Control") == "max-age=60"
    assert not r.has("ETag")


def test_proxy_pass_location_is_untouched(sp, origin):
    r = get(sp.port, "/api/x")
    assert r.status == 200 and r.json()["target"] == "/api/x"


@pytest.fixture(scope="module")
def rv(mres, tmp_path_factory, origin):
    """Cases from review: a nested location inheriting alias, an index that
    another location must serve, a file larger than the send queue."""
    d = tmp_path_factory.mktemp("rv")
    (d / "srv" / "pub").mkdir(parents=True)
    (d / "srv" / "secret.txt").write_bytes(b"TOP SECRET\n")
    (d / "srv" / "pub" / "readme.txt").write_bytes(b"public\n")
    (d / "php").mkdir()
    (d / "php" / "index.php").write_bytes(b'<?php $db_password = "hunter2"; ?>\n')
    with open(d / "huge.bin", "wb") as f:
        f.truncate(40 << 30)  # sparse
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /files/ {
                alias %(d)s/srv/;
                deny all;
                location /files/pub/ { allow all; }
            }
            location /big/ { alias %(d)s/; }
        }
        server {
            listen 127.0.0.1:{port2};
            root %(d)s/php;
            index index.php index.html;
            location / { try_files $uri $uri/ /index.php?$args; }
            location ~ \\.php$ { proxy_pass http://127.0.0.1:%(o)d; }
        }
    """ % {"d": d, "o": origin.port})


def test_nested_location_strips_the_alias_locations_prefix(rv):
    # /files/pub/secret.txt is <srv>/pub/secret.txt (absent), never <srv>/secret.txt
    assert get(rv.port, "/files/pub/readme.txt").body == b"public\n"
    r = get(rv.port, "/files/pub/secret.txt")
    assert r.status == 404 and b"TOP SECRET" not in r.body
    assert get(rv.port, "/files/secret.txt").status == 403


def test_index_is_an_internal_redirect(rv, origin):
    origin.clear()
    r = get(rv.fields["port2"], "/?x=1")
    assert b"hunter2" not in r.body
    assert r.status == 200 and origin.last()["target"] == "/index.php?x=1"


def test_file_larger_than_the_send_queue(rv):
    with Conn(rv.port, timeout=10) as c:
        c.send(build_request("GET", "/big/huge.bin"))
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 1 << 20:
            chunk = c.sock.recv(1 << 20)
            assert chunk, "connection closed"
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 42949672960" in head and body[:4096] == bytes(4096)


def test_http_client_keepalive_mix(sp):
    """A real client over one connection: files, a redirect, a 404."""
    c = http.client.HTTPConnection("127.0.0.1", sp.port, timeout=10)
    for path, status in (("/", 200), ("/sub", 301), ("/app.js", 200), ("/missing", 404),
                         ("/assets/logo.svg", 200)):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == status, path
    c.close()


def test_access_log_records_file_bytes(res, docroot):
    p = res.proxy("""
        log_format f '$status $body_bytes_sent $uri';
        server {
            listen 127.0.0.1:{port};
            root %s/www;
            access_log {tmp}/files.log f;
        }
    """ % docroot)
    assert get(p.port, "/app.js").status == 200
    assert get(p.port, "/").status == 200
    import time
    log = os.path.join(p.tmp, "files.log")
    deadline = time.time() + 5
    while time.time() < deadline:
        text = open(log).read() if os.path.exists(log) else ""
        if text.count("\n") >= 2:
            break
        time.sleep(0.02)
    lines = text.splitlines()
    assert lines[0] == "200 7 /app.js"
    assert lines[1] == "200 14 /index.html"


@pytest.mark.skipif(IS_NGINX, reason="Portico's own config checks")
def test_config_errors(res, docroot):
    for conf, msg in (
        ("location / { root www; }", "needs an absolute path"),
        ("location / { root /a; alias /b; }", "\"alias\" directive is duplicate"),
        ("index a/b.html;", "must be a file name"),
        ("location / { try_files $uri =99; }", "invalid code"),
        ("location / { try_files $uri; }", "invalid number of arguments"),
    ):
        p = res.proxy_unstarted("server { listen 127.0.0.1:{port}; %s }" % conf)
        out = p.run_cmd("-t")
        assert out.returncode != 0 and msg in out.output, (conf, out.output)
        assert "portico.conf:" in out.output
