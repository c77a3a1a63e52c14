"""gzip_static, autoindex (html, xml, json, jsonp) and log_not_found, as
nginx's modules of those names; the behavioural cases pass against nginx 1.22
too (PROXY_UNDER_TEST=nginx), except where marked."""
import gzip
import json
import os
import re

import pytest

from conftest import IS_NGINX, get, request


@pytest.fixture(scope="module")
def docroot(tmp_path_factory):
    d = tmp_path_factory.mktemp("static2")
    (d / "pub").mkdir()
    (d / "pub" / "app.js").write_bytes(b"console.log('plain');\n" * 50)
    (d / "pub" / "app.js.gz").write_bytes(gzip.compress(b"console.log('gz');\n" * 50))
    (d / "pub" / "only.css").write_bytes(b"body{}\n")
    (d / "list").mkdir()
    (d / "list" / "sub dir").mkdir()
    (d / "list" / "a&b <x>.txt").write_bytes(b"12345")
    (d / "list" / "zeta.bin").write_bytes(b"z" * 20000)
    (d / "list" / ".hidden").write_bytes(b"h")
    (d / "list" / ("long" * 20 + ".txt")).write_bytes(b"l")
    os.utime(d / "list" / "zeta.bin", (1700000000, 1700000000))
    (d / "list" / "sub dir" / "inner.txt").write_bytes(b"in")
    return d


@pytest.fixture(scope="module")
def sp(mres, docroot):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            root %(d)s;
            location /pub/ { gzip_static on; gzip_vary on; }
            location /always/ { alias %(d)s/pub/; gzip_static always; }
            location /list/ { autoindex on; }
            location /human/ { alias %(d)s/list/; autoindex on; autoindex_exact_size off; }
            location /xml/ { alias %(d)s/list/; autoindex on; autoindex_format xml; }
            location /json/ { alias %(d)s/list/; autoindex on; autoindex_format json; }
            location /jsonp/ { alias %(d)s/list/; autoindex on; autoindex_format jsonp; }
            location /quiet/ { alias %(d)s/pub/; log_not_found off; }
            location /loud/ { alias %(d)s/pub/; }
        }
    """ % {"d": docroot})


def gz_accept():
    return [("Accept-Encoding", "gzip, deflate")]


def test_gzip_static_serves_the_gz_to_those_who_take_it(sp):
    r = get(sp.port, "/pub/app.js", headers=gz_accept())
    assert r.status == 200
    assert r.header("Content-Encoding") == "gzip"
    assert r.header("Vary") == "Accept-Encoding"
    assert gzip.decompress(r.body) == b"console.log('gz');\n" * 50
    plain = get(sp.port, "/pub/app.js")
    assert not plain.has("Content-Encoding") and plain.body.startswith(b"console.log('plain')")
    assert r.header("Content-Type") == plain.header("Content-Type")  # app.js's, not .gz's
    refused = get(sp.port, "/pub/app.js", headers=[("Accept-Encoding", "gzip;q=0, br")])
    assert not refused.has("Content-Encoding")


def test_gzip_static_falls_back_without_a_gz(sp):
    r = get(sp.port, "/pub/only.css", headers=gz_accept())
    assert r.status == 200 and r.body == b"body{}\n" and not r.has("Content-Encoding")


def test_gzip_static_keeps_validators_and_ranges(sp):
    r = get(sp.port, "/pub/app.js", headers=gz_accept())
    etag = r.header("ETag")
    again = get(sp.port, "/pub/app.js", headers=gz_accept() + [("If-None-Match", etag)])
    assert again.status == 304
    part = get(sp.port, "/pub/app.js", headers=gz_accept() + [("Range", "bytes=0-9")])
    if IS_NGINX:
        assert part.status == 200  # nginx 1.22 ignores ranges on a .gz it stands in
    else:
        assert part.status == 206 and part.body == r.body[:10]
    head = request(sp.port, "HEAD", "/pub/app.js", headers=gz_accept())
    assert head.header("Content-Length") == str(len(r.body))


def test_gzip_static_always(sp):
    r = get(sp.port, "/always/app.js")
    assert r.header("Content-Encoding") == "gzip"
    assert gzip.decompress(r.body).startswith(b"console.log('gz')")


def test_autoindex_html(sp):
    r = get(sp.port, "/list/")
    assert r.status == 200 and r.header("Content-Type").startswith("text/html")
    body = r.body.decode()
    assert "<title>Index of /list/</title>" in body
    assert '<a href="../">../</a>' in body
    # escaped in text, encoded in the link; directories first with a '/'
    assert '<a href="a%26b%20%3Cx%3E.txt">a&amp;b &lt;x&gt;.txt</a>' in body
    assert body.index('href="sub%20dir/"') < body.index('href="a%26b')
    assert ".hidden" not in body
    assert "..&gt;</a>" in body  # a name over 50 columns is cut
    line = [ln for ln in body.split("\r\n") if "zeta.bin" in ln][0]
    assert re.search(r"14-Nov-2023 22:13 +20000$", line), line
    assert get(sp.port, "/list/sub%20dir/").body.count(b"inner.txt") == 2


def test_autoindex_human_sizes(sp):
    body = get(sp.port, "/human/").body.decode()
    line = [ln for ln in body.split("\r\n") if "zeta.bin" in ln][0]
    assert line.endswith("20K"), line


def test_autoindex_json_and_jsonp(sp):
    r = get(sp.port, "/json/")
    assert r.header("Content-Type").startswith("application/json")
    items = json.loads(r.body)
    assert items[0] == {"name": "sub dir", "type": "directory",
                        "mtime": items[0]["mtime"]}
    z = [i for i in items if i["name"] == "zeta.bin"][0]
    assert z["size"] == 20000 and z["type"] == "file"
    assert z["mtime"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    r = get(sp.port, "/jsonp/?callback=show")
    assert r.body.startswith(b"/* callback */\r\nshow([") and r.body.rstrip().endswith(b"]);")
    assert r.header("Content-Type").startswith("application/javascript")


def test_autoindex_xml(sp):
    r = get(sp.port, "/xml/")
    assert r.body.startswith(b'<?xml version="1.0"?>')
    assert b'<file mtime="2023-11-14T22:13:20Z" size="20000">zeta.bin</file>' in r.body
    assert b'<directory mtime="' in r.body and b"a&amp;b &lt;x&gt;.txt" in r.body


def test_log_not_found(sp):
    assert get(sp.port, "/quiet/nothing-here-1.txt").status == 404
    assert get(sp.port, "/loud/nothing-here-2.txt").status == 404
    sp.wait_error_log(r"nothing-here-2\.txt")
    assert "nothing-here-1" not in sp.error_log


# ---- open_file_cache (Portico-only checks of what is cached: nginx behaves alike)

@pytest.fixture(scope="module")
def ofc(mres, tmp_path_factory):
    d = tmp_path_factory.mktemp("ofc")
    (d / "v.txt").write_bytes(b"version 1\n")
    return d, mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /c/ {
                alias %(d)s/;
                open_file_cache max=100 inactive=30s;
                open_file_cache_valid 3s;
                open_file_cache_errors on;
            }
            location /n/ { alias %(d)s/; }
        }
    """ % {"d": d})


def test_open_file_cache_keeps_the_open_file_until_valid_runs_out(ofc):
    from conftest import wait_for
    d, p = ofc
    assert get(p.port, "/c/v.txt").body == b"version 1\n"
    # a deploy replaces the file (a new inode): the cached one serves on a while
    (d / "v.new").write_bytes(b"version 2!\n")
    os.replace(d / "v.new", d / "v.txt")
    assert get(p.port, "/n/v.txt").body == b"version 2!\n"  # uncached location: at once
    r = get(p.port, "/c/v.txt")
    assert r.body == b"version 1\n"  # the kept descriptor: the old inode, its length
    wait_for(lambda: get(p.port, "/c/v.txt").body == b"version 2!\n", 15,
             what="the new version after open_file_cache_valid")
    r = get(p.port, "/c/v.txt")
    assert r.header("Content-Length") == "11"


def test_open_file_cache_errors(ofc):
    from conftest import wait_for
    d, p = ofc
    assert get(p.port, "/c/late.txt").status == 404
    (d / "late.txt").write_bytes(b"here now\n")
    assert get(p.port, "/c/late.txt").status == 404  # the error is remembered
    wait_for(lambda: get(p.port, "/c/late.txt").status == 200, 15,
             what="the file found after open_file_cache_valid")
