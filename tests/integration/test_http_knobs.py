"""nginx http-core and referer knobs: valid_referers / $invalid_referer,
if_modified_since, max_ranges, recursive_error_pages and
chunked_transfer_encoding. The cases pass against nginx 1.22 too
(PROXY_UNDER_TEST=nginx), except where marked."""
import email.utils
import os

import pytest

from conftest import Conn, build_request, get


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("knobs")
    (d / "img.png").write_bytes(b"P" * 100)
    os.utime(d / "img.png", (1700000000, 1700000000))
    return d


@pytest.fixture(scope="module")
def px(mres, origin, files):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            server_name pics.test;
            location /img/ {
                alias %(d)s/;
                valid_referers none blocked server_names *.friend.test www.partner.* other.test/gallery/ ~\\.example\\.org/;
                if ($invalid_referer) { return 403; }
            }
            location /exact/ { alias %(d)s/; if_modified_since exact; }
            location /before/ { alias %(d)s/; if_modified_since before; }
            location /noims/ { alias %(d)s/; if_modified_since off; }
            location /noranges/ { alias %(d)s/; max_ranges 0; }
            location /err/ {
                error_page 404 /missing1;
                return 404;
            }
            location /rec/ {
                recursive_error_pages on;
                error_page 404 /rec-missing;
                return 404;
            }
            location = /rec-missing {
                error_page 404 =200 /found;
                return 404;
            }
            location = /missing1 { error_page 404 =200 /found; return 404; }
            location = /found { return 200 "found"; }
            location /chunky/ { proxy_pass http://127.0.0.1:%(o)d; chunked_transfer_encoding off; }
        }
    """ % {"d": files, "o": origin.port})


@pytest.mark.parametrize("referer,status", [
    (None, 200), ("", 200), ("garbage", 200),  # none / blocked
    ("http://pics.test/page", 200),  # server_names
    ("https://www.friend.test/x", 200), ("http://friend.test/x", 403),
    ("http://www.partner.co.uk/", 200), ("http://partner.com/", 403),
    ("http://other.test/gallery/2", 200), ("http://other.test/blog", 403),
    ("http://cdn.example.org/a", 200),
    ("http://evil.test/", 403), ("http://evil.test:8080/x", 403),
])
def test_valid_referers(px, referer, status):
    hdrs = [] if referer is None else [("Referer", referer)]
    assert get(px.port, "/img/img.png", host="pics.test", headers=hdrs).status == status


def test_if_modified_since_modes(px):
    lm = email.utils.formatdate(1700000000, usegmt=True)
    later = email.utils.formatdate(1700000100, usegmt=True)
    ims = lambda v: [("If-Modified-Since", v)]
    assert get(px.port, "/exact/img.png", headers=ims(lm)).status == 304
    assert get(px.port, "/exact/img.png", headers=ims(later)).status == 200
    assert get(px.port, "/before/img.png", headers=ims(later)).status == 304
    assert get(px.port, "/noims/img.png", headers=ims(lm)).status == 200


def test_max_ranges_zero(px):
    r = get(px.port, "/noranges/img.png", headers=[("Range", "bytes=0-9")])
    assert r.status == 200 and len(r.body) == 100 and not r.has("Accept-Ranges")


def test_recursive_error_pages(px):
    # without it the error page's own 404 is the answer; with it, its error_page applies
    assert get(px.port, "/err/x").status == 404
    r = get(px.port, "/rec/x")
    assert r.status == 200 and r.body == b"found"


def test_chunked_transfer_encoding_off(px):
    with Conn(px.port) as c:
        c.send(build_request("GET", "/chunky/chunked/3000", "x"))
        _, r = c.read_final()
        assert len(r.body) == 3000 and not r.has("Transfer-Encoding")
        c.read_until_close(5)
        assert c.eof  # the end of the body is the end of the connection
