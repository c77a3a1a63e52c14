"""sub_filter (nginx's sub module): strings replaced in response bodies,
across the pieces the body comes in. The cases pass against nginx 1.22 too
(PROXY_UNDER_TEST=nginx)."""
import gzip
import socket
import threading

import pytest

from conftest import _Server, get


class PageOrigin(_Server):
    """GET /page/<n>: an HTML page sent in small pieces (a chunk per 7
    bytes) so that every pattern straddles pieces; /css: text/css; /gz: a
    gzip-encoded page; /lm: with Last-Modified and ETag."""

    PAGE = (b"<html><head><link href='http://backend.internal/style.css'></head>"
            b"<body>Hello WORLD, hello world. <a href=\"http://backend.internal/x\">x</a>"
            b"</body></html>")

    def __init__(self):
        super().__init__("pages")

    def handle(self, s, cid, peer):
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            while f.readline() not in (b"\r\n", b""):
                pass
            target = line.split(b" ")[1].decode()
            ctype, body, extra = b"text/html", self.PAGE, b""
            if target.startswith("/css"):
                ctype = b"text/css"
            if target.startswith("/gz"):
                body, extra = gzip.compress(self.PAGE), b"Content-Encoding: gzip\r\n"
            if target.startswith("/lm"):
                extra = b'Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nETag: "abc"\r\n'
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype +
                      b"\r\nTransfer-Encoding: chunked\r\n" + extra + b"\r\n")
            for i in range(0, len(body), 7):
                piece = body[i:i + 7]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def origin(mres):
    return mres.add(PageOrigin())


@pytest.fixture(scope="module")
def px(mres, origin):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location / {
                proxy_pass http://127.0.0.1:%(o)d;
                proxy_buffering off;
                sub_filter 'http://backend.internal/' 'https://$host/';
                sub_filter 'hello world' 'bye';
            }
            location /all/ {
                proxy_pass http://127.0.0.1:%(o)d/;
                sub_filter 'hello' 'HI';
                sub_filter_once off;
                sub_filter_types text/css;
            }
            location /keep/ {
                proxy_pass http://127.0.0.1:%(o)d/;
                sub_filter 'world' 'there';
                sub_filter_last_modified on;
            }
        }
    """ % {"o": origin.port})


def test_replaced_across_pieces_once_each(px):
    r = get(px.port, "/page/1", host="shop.test")
    assert r.status == 200 and not r.has("Content-Length")
    body = r.body
    # the first occurrence of each string, whatever its case
    assert body.count(b"https://shop.test/") == 1 and body.count(b"http://backend.internal/") == 1
    assert b"Hello WORLD" not in body and b"bye, hello world." in body


def test_once_off_and_types(px):
    r = get(px.port, "/all/css")
    assert r.body.count(b"HI") == 2 and b"hello" not in r.body.lower()


def test_encoded_answers_are_left_alone(px):
    r = get(px.port, "/gz", headers=[("Accept-Encoding", "gzip")])
    assert gzip.decompress(r.body) == PageOrigin.PAGE


def test_validators(px):
    r = get(px.port, "/lm")
    assert not r.has("Last-Modified") and not r.has("ETag")
    r = get(px.port, "/keep/lm")
    assert r.header("Last-Modified") and r.header("ETag") == 'W/"abc"'
    assert b"Hello there" in r.body
