"""Request bodies on their way upstream: proxy_request_buffering on (the
default) reads the whole body first, in memory up to client_body_buffer_size
and then in an unnamed file in client_body_temp_path, so a slow client never
holds an upstream connection and a retry can replay the body."""
import hashlib
import os
import shutil

import pytest

from conftest import IS_NGINX, Conn, ScriptedOrigin, build_request, get, pattern

pytestmark = pytest.mark.skipif(IS_NGINX, reason="Portico's log lines and temp path checks")

CONF = """
client_max_body_size 0;
client_body_buffer_size 16k;
{extra}
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://127.0.0.1:{oport}; {loc} }}
}}
"""

SPOOL_LINE = r"a client request body is buffered to a temporary file"


def proxy(res, o, extra="", loc=""):
    return res.proxy(CONF.format(oport=o.port, extra=extra, loc=loc))


def chunked(body, piece=7000):
    out = b""
    for i in range(0, len(body), piece):
        c = body[i:i + piece]
        out += b"%x\r\n" % len(c) + c + b"\r\n"
    return out + b"0\r\n\r\n"


def test_large_body_is_spooled_whole_before_the_upstream_sees_it(res):
    o = res.origin()
    p = proxy(res, o)
    body = pattern(300_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/up", headers=[("Content-Length", str(len(body)))])
               + body[:100_000])
        # a request on another connection goes through the same worker: once
        # it is answered, the first 100 kB have been read, and nothing of that
        # request may have reached the origin yet
        assert get(p.port, "/probe").status == 200
        assert o.targets() == ["/probe"]
        c.send(body[100_000:])
        r = c.read_response()
    assert r.status == 200
    rec = o.last()
    assert rec["target"] == "/up"
    assert rec["body_len"] == len(body)
    assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()
    p.wait_error_log(SPOOL_LINE)


def test_chunked_body_goes_upstream_with_content_length(res):
    """Buffered whole, a chunked body gets its length (as nginx does): an
    origin that takes no chunked bodies still works."""
    o = res.origin()
    p = proxy(res, o)
    for size in (5_000, 200_000):  # in memory, then in the file
        body = pattern(size)
        with Conn(p.port) as c:
            c.send(build_request("POST", "/c", headers=[("Transfer-Encoding", "chunked")])
                   + chunked(body))
            r = c.read_response()
        assert r.status == 200
        rec = o.last()
        hdrs = {k.lower(): v for k, v in rec["headers"]}
        assert hdrs.get("content-length") == str(size)
        assert "transfer-encoding" not in hdrs
        assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_small_body_stays_in_memory(res):
    o = res.origin()
    p = proxy(res, o)
    body = pattern(10_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/s", headers=[("Content-Length", str(len(body)))]) + body)
        assert c.read_response().status == 200
    assert o.last()["body_len"] == len(body)
    p.wait_access_lines(1)
    assert "temporary file" not in p.error_log


def test_spooled_body_is_replayed_on_the_next_server(res):
    """The first server resets after the request head; with non_idempotent
    retries allowed the whole body goes again, from the file, to the next."""
    bad = res.add(ScriptedOrigin(None, after="rst"))
    o = res.origin()
    p = res.proxy("""
        client_max_body_size 0;
        upstream g { server 127.0.0.1:%d; server 127.0.0.1:%d; }
        server {
            listen 127.0.0.1:{port};
            location / { proxy_pass http://g; proxy_next_upstream error non_idempotent; }
        }""" % (bad.port, o.port))
    body = pattern(500_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/r", headers=[("Content-Length", str(len(body)))]) + body)
        r = c.read_response(timeout=20)
    assert r.status == 200, r
    assert len(bad.heads) == 1
    rec = o.last()
    assert rec["body_len"] == len(body)
    assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_buffering_off_streams_without_a_file(res):
    o = res.origin()
    p = proxy(res, o, loc="proxy_request_buffering off;")
    body = pattern(300_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/c", headers=[("Transfer-Encoding", "chunked")])
               + chunked(body))
        assert c.read_response().status == 200
    hdrs = {k.lower(): v for k, v in o.last()["headers"]}
    assert "chunked" in hdrs.get("transfer-encoding", "")
    assert o.last()["body_len"] == len(body)
    p.wait_access_lines(1)
    assert "temporary file" not in p.error_log


def test_temp_path_gone_is_500_and_logged(res):
    o = res.origin()
    p = res.proxy(CONF.format(oport=o.port, extra="client_body_temp_path {tmp}/body;", loc=""))
    shutil.rmtree(os.path.join(p.tmp, "body"))
    body = pattern(100_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/x", headers=[("Content-Length", str(len(body)))]) + body)
        r = c.read_response()
        assert r.status == 500
        assert c.closed()  # the body was half read: the framing is spent
    p.wait_error_log(r"cannot buffer the request body in .*/body: No such file or directory")
    assert not o.requests


@pytest.mark.parametrize("arg,msg", [
    ("{tmp}/portico.conf", "is not a directory"),
    ("{tmp}/no/such/dir", "cannot create it: No such file or directory"),
    ("{tmp} 3", 'invalid level "3"'),
])
def test_bad_temp_path_is_refused_with_file_and_line(res, arg, msg):
    p = res.proxy_unstarted("client_body_temp_path %s;\nserver { listen 127.0.0.1:{port}; }" % arg)
    out = p.run_cmd("-t").output
    assert msg in out, out
    assert "portico.conf:8:" in out, out


def test_temp_path_is_created(res):
    o = res.origin()
    p = res.proxy(CONF.format(oport=o.port, extra="client_body_temp_path {tmp}/made;", loc=""))
    assert os.path.isdir(os.path.join(p.tmp, "made"))
    body = pattern(50_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/m", headers=[("Content-Length", str(len(body)))]) + body)
        assert c.read_response().status == 200
    assert o.last()["body_len"] == len(body)
    assert os.listdir(os.path.join(p.tmp, "made")) == []  # unnamed: nothing left behind
