"""X-Accel-Redirect and `internal` (nginx's X-Sendfile), with the other
X-Accel-* fields an upstream may send: X-Accel-Limit-Rate, and
proxy_ignore_headers for them. The cases pass against nginx 1.22 too
(PROXY_UNDER_TEST=nginx), except where marked."""
import time
import urllib.parse

import pytest

from conftest import get, pattern, request


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("accel")
    (d / "file.txt").write_bytes(b"the protected file\n")
    (d / "big.bin").write_bytes(pattern(128 * 1024))
    return d


@pytest.fixture(scope="module")
def px(mres, origin, files):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /app/ { proxy_pass http://127.0.0.1:%(o)d; }
            location /ign/ { proxy_pass http://127.0.0.1:%(o)d; proxy_ignore_headers X-Accel-Redirect; }
            location /protected/ { internal; alias %(d)s/; }
            location /echo/ {
                internal;
                return 200 "uri=$uri args=$args method=$request_method xar=$upstream_http_x_accel_redirect";
            }
            location @named { return 200 "named uri=$uri"; }
            location /rw/ { rewrite ^/rw/(.*)$ /protected/$1 last; }
            location /ep/ { error_page 404 = /protected/file.txt; return 404; }
        }
    """ % {"o": origin.port, "d": files})


def via(px, xar, method="GET", extra=(), body=None):
    q = "&".join("h=" + urllib.parse.quote(f"{k}:{v}", safe="") for k, v in
                 [("X-Accel-Redirect", xar)] + list(extra))
    return request(px.port, method, "/app/x?" + q, body=body,
                   headers=[("Content-Length", str(len(body)))] if body else ())


def test_internal_location_is_not_for_clients(px):
    assert get(px.port, "/protected/file.txt").status == 404
    assert get(px.port, "/echo/x").status == 404


def test_x_accel_redirect_serves_the_file_with_kept_fields(px):
    r = via(px, "/protected/file.txt", extra=[("Content-Disposition", "attachment"),
                                             ("Set-Cookie", "a=b"), ("Something", "other")])
    assert r.status == 200 and r.body == b"the protected file\n"
    assert r.header_all("Content-Type") == ["application/json"]  # the upstream's
    assert r.header("Content-Disposition") == "attachment"
    assert r.header("Set-Cookie") == "a=b"
    assert not r.has("Something") and not r.has("X-Accel-Redirect")


def test_x_accel_redirect_is_a_get_with_the_arguments(px, origin):
    r = via(px, "/echo/a%20b?c=1", method="POST", body=b"payload")
    assert r.status == 200
    assert r.body == b"uri=/echo/a b args=c=1 method=GET xar=/echo/a%20b?c=1"
    assert origin.requests[-1]["method"] == "POST"  # the upstream had it as sent


@pytest.mark.parametrize("xar", ["..", "../foo", "/foo/..", "/foo/.%2e", "/a/./b"])
def test_unsafe_targets_are_refused(px, xar):
    assert via(px, xar).status != 200


def test_named_location_keeps_the_uri(px):
    r = via(px, "@named")
    assert r.status == 200 and r.body == b"named uri=/app/x"


def test_rewrite_and_error_page_reach_internal_locations(px):
    assert get(px.port, "/rw/file.txt").body == b"the protected file\n"
    r = get(px.port, "/ep/x")
    assert r.status == 200 and r.body == b"the protected file\n"


def test_ignored_x_accel_redirect_passes_the_answer(px):
    r = request(px.port, "GET", "/ign/x?h=" + urllib.parse.quote("X-Accel-Redirect:/protected/file.txt",
                                                                  safe=""))
    assert r.status == 200 and r.body.startswith(b"{")  # the origin's own JSON echo
    assert not r.has("X-Accel-Redirect")  # hidden from clients, as nginx


def test_x_accel_limit_rate(px):
    t = time.monotonic()
    r = via(px, "/protected/big.bin", extra=[("X-Accel-Limit-Rate", "65536")])
    assert r.body == pattern(128 * 1024)
    assert time.monotonic() - t >= 0.8
