"""Response compression: gzip (nginx's gzip_* directives), brotli and zstd,
chosen by Accept-Encoding, over proxied, cached, static and local answers,
HTTP/1.1 and HTTP/2. The gzip cases pass against nginx too
(PROXY_UNDER_TEST=nginx; nginx-light has no brotli or zstd)."""
import gzip
import subprocess

import pytest

from conftest import IS_NGINX, Conn, build_request, get, pattern, request

try:
    import brotli
    import zstandard
except ImportError:  # scripts/deps.sh installs python3-brotli, python3-zstandard
    brotli = zstandard = None

portico_only = pytest.mark.skipif(IS_NGINX, reason="nginx-light has no brotli or zstd")


def gunzip(b):
    return gzip.decompress(b)


def unzstd(b):
    return zstandard.ZstdDecompressor().decompressobj().decompress(b)


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def docroot(tmp_path_factory):
    d = tmp_path_factory.mktemp("zroot")
    (d / "page.html").write_bytes(b"<p>" + b"hello compressible world " * 400 + b"</p>\n")
    return d


@pytest.fixture(scope="module")
def zp(mres, origin, docroot, tmp_path_factory):
    cache = tmp_path_factory.mktemp("zcache")
    br = "" if IS_NGINX else "brotli on; brotli_types *; zstd on; zstd_types *;"
    return mres.proxy("""
        proxy_cache_path %(c)s keys_zone=z:1m;
        server {
            listen 127.0.0.1:{port};
            gzip on;
            gzip_types application/json application/octet-stream;
            gzip_min_length 100;
            gzip_vary on;
            location /css/ {
                gzip_types text/css;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /plain/ {
                gzip off;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /br/ {
                %(br)s
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /via/ {
                gzip_proxied any;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /ua/ {
                gzip_disable "BadBrowser";
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /stream/ {
                proxy_buffering off;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /cached/ {
                proxy_cache z;
                proxy_cache_valid 200 1m;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /files/ { alias %(d)s/; }
            location /local { return 200 "%(text)s"; }
            location / { proxy_pass http://127.0.0.1:%(o)d; }
        }
    """ % {"o": origin.port, "c": cache, "d": docroot, "br": br, "text": "x" * 300})


def gz(port, target, **kw):
    headers = [("Accept-Encoding", "gzip")] + list(kw.pop("headers", []))
    return get(port, target, headers=headers, **kw)


def test_proxied_json_is_gzipped(zp):
    r = gz(zp.port, "/api/echo?pad=" + "a" * 200)
    assert r.status == 200
    assert r.header("Content-Encoding") == "gzip"
    assert r.header("Vary") == "Accept-Encoding"
    assert not r.has("Content-Length")
    body = gunzip(r.body)
    assert b'"target": "/api/echo' in body


def test_big_body_roundtrip(zp):
    r = gz(zp.port, "/bytes/1000000", timeout=20)
    assert r.header("Content-Encoding") == "gzip"
    assert gunzip(r.body) == pattern(1000000)
    assert len(r.body) < 1000000


def test_no_accept_encoding_is_identity_with_vary(zp):
    r = get(zp.port, "/bytes/5000")
    assert not r.has("Content-Encoding")
    assert r.header("Content-Length") == "5000" and r.body == pattern(5000)
    assert r.header("Vary") == "Accept-Encoding"


@pytest.mark.parametrize("ae", ["gzip;q=0", "identity", "deflate", "*;q=0"])
def test_refused_codings(zp, ae):
    r = get(zp.port, "/bytes/5000", headers=[("Accept-Encoding", ae)])
    assert not r.has("Content-Encoding") and r.body == pattern(5000)


def test_type_not_listed_and_too_short(zp):
    r = gz(zp.port, "/bytes/50")  # under gzip_min_length 100
    assert not r.has("Content-Encoding") and r.body == pattern(50)
    r = gz(zp.port, "/css/bytes/5000")  # application/octet-stream is not listed there
    assert not r.has("Content-Encoding") and r.body == pattern(5000)
    assert not r.has("Vary")


def test_already_encoded_passes_untouched(zp):
    r = gz(zp.port, "/x?h=Content-Encoding:br&pad=" + "a" * 200)
    assert r.header("Content-Encoding") == "br"
    assert b'"target"' in r.body  # the origin's bytes, not re-encoded


def test_head_and_errors_are_not_compressed(zp):
    # HEAD: the fields a GET would get, as nginx
    r = request(zp.port, "HEAD", "/bytes/5000", headers=[("Accept-Encoding", "gzip")])
    assert r.header("Content-Encoding") == "gzip" and not r.has("Content-Length")
    assert r.body == b""
    r = gz(zp.port, "/status/500?pad=" + "a" * 200)
    assert r.status == 500 and not r.has("Content-Encoding")
    r = gz(zp.port, "/status/404?pad=" + "a" * 200)
    assert r.status == 404 and r.header("Content-Encoding") == "gzip"


def test_gzip_off_location(zp):
    r = gz(zp.port, "/plain/bytes/5000")
    assert not r.has("Content-Encoding") and not r.has("Vary")


def test_via_needs_gzip_proxied(zp):
    r = gz(zp.port, "/bytes/5000", headers=[("Via", "1.1 cdn")])
    assert not r.has("Content-Encoding")
    r = gz(zp.port, "/via/bytes/5000", headers=[("Via", "1.1 cdn")])
    assert r.header("Content-Encoding") == "gzip"


def test_gzip_disable_by_user_agent(zp):
    r = gz(zp.port, "/ua/bytes/5000", headers=[("User-Agent", "Mozilla BadBrowser/1")])
    assert not r.has("Content-Encoding")
    r = gz(zp.port, "/ua/bytes/5000", headers=[("User-Agent", "Mozilla/5.0")])
    assert r.header("Content-Encoding") == "gzip"


def test_http10_request_is_not_compressed(zp):
    r = request(zp.port, "GET", "/bytes/5000", headers=[("Accept-Encoding", "gzip")],
                version="HTTP/1.0")
    assert not r.has("Content-Encoding") and r.body == pattern(5000)


def test_streaming_chunked_upstream(zp):
    r = gz(zp.port, "/stream/chunked/200000", timeout=20)
    assert r.header("Content-Encoding") == "gzip"
    assert gunzip(r.body) == pattern(200000)


def test_cache_keeps_identity_and_compresses_each_hit(zp, origin):
    origin.clear()
    r1 = gz(zp.port, "/cached/bytes/8000")
    r2 = get(zp.port, "/cached/bytes/8000")
    r3 = gz(zp.port, "/cached/bytes/8000")
    assert len([t for t in origin.targets() if t.startswith("/cached/")]) == 1
    assert r1.header("Content-Encoding") == "gzip" and gunzip(r1.body) == pattern(8000)
    assert not r2.has("Content-Encoding") and r2.body == pattern(8000)
    assert r3.header("Content-Encoding") == "gzip" and gunzip(r3.body) == pattern(8000)


def test_large_cache_hit_from_disk_is_compressed(zp, origin):
    """Over the memory tier's object limit (2 MiB of the default 16m) a hit is
    served from the cache file: the filter refuses sendfile and the file is
    read in pieces instead."""
    n = 3 * 1024 * 1024
    for _ in range(2):
        r = gz(zp.port, f"/cached/bytes/{n}", timeout=30)
        assert r.status == 200 and r.header("Content-Encoding") == "gzip"
        assert gunzip(r.body) == pattern(n)
    r = get(zp.port, f"/cached/bytes/{n}", timeout=30)
    assert r.body == pattern(n)


def test_static_file_and_local_answer(zp, docroot):
    raw = (docroot / "page.html").read_bytes()
    r = gz(zp.port, "/files/page.html")
    assert r.header("Content-Encoding") == "gzip" and gunzip(r.body) == raw
    assert r.header("ETag", "").startswith('W/"')
    assert not r.has("Accept-Ranges")
    # a range asks for identity bytes: 206, not compressed (nginx ignores the
    # range and sends the whole file compressed; both are allowed)
    r = gz(zp.port, "/files/page.html", headers=[("Range", "bytes=0-9")])
    if not IS_NGINX:
        assert r.status == 206 and r.body == raw[:10] and not r.has("Content-Encoding")
    r = gz(zp.port, "/local")
    if not IS_NGINX:  # default_type text/plain is not in gzip_types: only text/html is implied
        assert not r.has("Content-Encoding")


def test_keepalive_after_compressed_response(zp):
    with Conn(zp.port, timeout=10) as c:
        for n in (3000, 70000, 10):
            c.send(build_request("GET", f"/bytes/{n}", headers=[("Accept-Encoding", "gzip")]))
            _, r = c.read_final()
            body = gunzip(r.body) if r.has("Content-Encoding") else r.body
            assert body == pattern(n)


@portico_only
@pytest.mark.skipif(brotli is None, reason="python3-brotli missing")
def test_brotli_and_zstd_negotiation(zp):
    r = get(zp.port, "/br/bytes/20000", headers=[("Accept-Encoding", "br")])
    assert r.header("Content-Encoding") == "br"
    assert brotli.decompress(r.body) == pattern(20000)
    r = get(zp.port, "/br/bytes/20000", headers=[("Accept-Encoding", "zstd")])
    assert r.header("Content-Encoding") == "zstd" and unzstd(r.body) == pattern(20000)
    # the client's q decides; on a tie zstd, then br, then gzip
    r = get(zp.port, "/br/bytes/20000", headers=[("Accept-Encoding", "gzip, br;q=0.9")])
    assert r.header("Content-Encoding") == "gzip"
    r = get(zp.port, "/br/bytes/20000", headers=[("Accept-Encoding", "gzip, deflate, br, zstd")])
    assert r.header("Content-Encoding") == "zstd"
    r = get(zp.port, "/br/bytes/20000", headers=[("Accept-Encoding", "gzip, br")])
    assert r.header("Content-Encoding") == "br"
    r = get(zp.port, "/br/bytes/20000", headers=[("Accept-Encoding", "*")])
    assert r.header("Content-Encoding") == "zstd"
    r = get(zp.port, "/br/bytes/2000000", headers=[("Accept-Encoding", "br")], timeout=30)
    assert brotli.decompress(r.body) == pattern(2000000)


@portico_only
def test_http2_client(res, origin):
    p = res.proxy("""
        server {
            listen 127.0.0.1:{port} http2;
            gzip on;
            gzip_types application/octet-stream;
            location / { proxy_pass http://127.0.0.1:%d; }
        }
    """ % origin.port)
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--compressed",
                          "-D", "-", f"http://127.0.0.1:{p.port}/bytes/300000"],
                         capture_output=True, timeout=20)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body == pattern(300000)


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("gzip_comp_level 10;", '"gzip_comp_level" must be between 1 and 9'),
    ("brotli_comp_level 12;", '"brotli_comp_level" must be between 0 and 11'),
    ("gzip_proxied sometimes;", 'invalid value "sometimes" in "gzip_proxied"'),
    ("gzip_types html;", 'invalid MIME type "html"'),
    ("gzip_disable \"(\";", "missing closing parenthesis"),
    ("gzip maybe;", 'it must be "on" or "off"'),
])
def test_bad_directives_are_refused(res, text, msg):
    p = res.proxy_unstarted("server {\n listen 127.0.0.1:{port};\n %s\n}" % text)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output



def words(n, seed=1):
    """Text that compresses like real text (about 3:1): bursts of encoder
    output then span several segments."""
    import random
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
             for _ in range(20000)]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(vocab).encode() + b" "
    return bytes(out[:n])


@pytest.fixture(scope="module")
def wp(mres, tmp_path_factory):
    d = tmp_path_factory.mktemp("words")
    (d / "words.html").write_bytes(words(2_000_000))
    codings = "gzip on;" if IS_NGINX else "gzip on; brotli on; zstd on;"
    p = mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            root %(d)s;
            %(c)s
            location /via/ { proxy_pass http://127.0.0.1:{port2}/; }
        }
        server { listen 127.0.0.1:{port2}; root %(d)s; }
    """ % {"d": d, "c": codings})
    p.words = (d / "words.html").read_bytes()
    return p


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("path", ["/words.html", "/via/words.html"])
def test_large_text_compressed_intact(wp, coding, path):
    """Regression: output bursts overflowed the HTTP/1 queue, and later
    pieces went out raw inside a compressed response (or it hung)."""
    if IS_NGINX and coding != "gzip":
        pytest.skip("nginx-light has no brotli or zstd")
    dec = {"gzip": gunzip, "br": lambda b: brotli.decompress(b), "zstd": unzstd}[coding]
    r = get(wp.port, path, headers=[("Accept-Encoding", coding)], timeout=30)
    assert r.status == 200 and r.header("Content-Encoding") == coding
    assert dec(r.body) == wp.words
