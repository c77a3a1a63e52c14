"""proxy_buffering on: a response a slow client cannot take yet is read ahead,
proxy_buffers in memory and then up to proxy_max_temp_file_size in an unnamed
file in proxy_temp_path, so the upstream connection is freed (and reused)
long before the client has it all."""
import hashlib
import os
import socket
import threading

import pytest

from conftest import IS_NGINX, Conn, _Server, get, wait_for

pytestmark = pytest.mark.skipif(IS_NGINX, reason="Portico's log lines")

SIZE = 32 << 20  # well beyond what the kernel's socket buffers can hold
BLOCK = hashlib.sha256(b"portico").digest() * 2048  # 64 KiB


def body_of(n):
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


class SenderOrigin(_Server):
    """GET /len/N: N bytes (Content-Length, or chunked with a trailer for
    /chunked/N). Records when each response was handed to the kernel
    whole: an origin whose response is not taken stays blocked in sendall."""

    def __init__(self):
        self.finished = []
        self.conns = []
        super().__init__("sender")

    def handle(self, s, cid, peer):
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            while f.readline() not in (b"\r\n", b""):
                pass
            target = line.split(b" ")[1].decode()
            n = int(target.rsplit("/", 1)[1])
            data = body_of(n)
            with self.lock:
                self.conns.append(cid)
            if target.startswith("/chunked/"):
                s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
                for i in range(0, n, 1 << 20):
                    piece = data[i:i + (1 << 20)]
                    s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                s.sendall(b"0\r\nX-Sum: %s\r\n\r\n" % hashlib.sha256(data).hexdigest().encode())
            else:
                xb = (b"X-Accel-Buffering: yes\r\n" if "/xbyes/" in target else
                      b"X-Accel-Buffering: no\r\n" if "/xbno/" in target else b"")
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (n, xb))
                s.sendall(data)
            with self.lock:
                self.finished.append(target)


CONF = """
upstream o {{ server 127.0.0.1:{oport}; keepalive 4; }}
server {{
    listen 127.0.0.1:{{port}};
    location / {{ proxy_pass http://o; {loc} }}
    location /api {{ api; }}
}}
"""


def start(res, loc=""):
    o = res.add(SenderOrigin())
    p = res.proxy(CONF.format(oport=o.port, loc=loc))
    return p, o


def read_all(c, n):
    """Read one response whose body is n bytes from a raw socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        assert d, buf
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    want = n
    chunks = [body]
    got = len(body)
    while got < want:
        d = c.recv(1 << 20)
        assert d, f"closed after {got} of {want} bytes"
        chunks.append(d)
        got += len(d)
    return head, b"".join(chunks)


def test_slow_client_frees_the_upstream_early(res):
    p, o = start(res)
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        c.sendall(b"GET /len/%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
        # the client reads nothing, yet the origin gets rid of all 32 MiB
        wait_for(lambda: o.finished == ["/len/%d" % SIZE], timeout=20,
                 what="the origin's response taken whole while the client reads nothing")
        p.wait_error_log(r"an upstream response is buffered to a temporary file in /tmp")
        # the response is read whole (the origin may finish a moment before
        # the proxy has read its last bytes): no connection busy any more
        wait_for(lambda: get(p.port, "/api/upstreams/o").json()["peers"][0]["active"] == 0,
                 timeout=20, what="the upstream connection released")
        # and it is back in the pool: the next request reuses it
        r = get(p.port, "/len/10")
        assert r.status == 200 and r.body == body_of(10)
        assert o.conns[1] == o.conns[0]
        head, data = read_all(c, SIZE)
    finally:
        c.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert len(data) == SIZE
    assert data == body_of(SIZE)


def test_chunked_response_with_trailer_through_the_file(res):
    p, o = start(res)
    n = 8 << 20
    with Conn(p.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(b"GET /chunked/%d HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n" % n)
        wait_for(lambda: len(o.finished) == 1, timeout=20, what="origin done")
        r = c.read_response(timeout=30)
    assert r.status == 200
    assert r.body == body_of(n)
    assert (r.trailers or [])  # the trailer survives the wait in the file
    assert dict((k.lower(), v) for k, v in r.trailers)["x-sum"] == hashlib.sha256(r.body).hexdigest()


def test_file_limit_holds_the_upstream_back_then_completes(res, tmp_path):
    """proxy_max_temp_file_size 1m: beyond it the upstream waits for the
    client again; the response still arrives whole."""
    d = tmp_path / "ptemp"
    p, o = start(res, loc="proxy_max_temp_file_size 1m; proxy_temp_path %s;" % d)
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        c.sendall(b"GET /len/%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
        p.wait_error_log(r"an upstream response is buffered to a temporary file in .*ptemp")
        head, data = read_all(c, SIZE)
    finally:
        c.close()
    assert data == body_of(SIZE)
    assert os.listdir(d) == []  # unnamed: nothing on disk


@pytest.mark.parametrize("loc", ["proxy_max_temp_file_size 0;", "proxy_buffering off;",
                                 "proxy_buffers 4 4k;"])
def test_variants_deliver_the_whole_response(res, loc):
    p, o = start(res, loc=loc)
    n = 12 << 20
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        c.sendall(b"GET /len/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        head, data = read_all(c, n)
    finally:
        c.close()
    assert data == body_of(n)
    p.wait_access_lines(1)
    spooled = "temporary file" in p.error_log
    assert spooled == (loc == "proxy_buffers 4 4k;"), p.error_log


def test_client_gone_while_draining_the_file(res):
    p, o = start(res)
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.sendall(b"GET /len/%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
    wait_for(lambda: len(o.finished) == 1, timeout=20, what="origin done")
    c.close()
    p.wait_access_lines(1)
    assert " 499 " in p.access_lines()[-1] or " 200 " in p.access_lines()[-1]
    assert get(p.port, "/len/100").body == body_of(100)
    assert p.alive()


@pytest.mark.parametrize("arg,msg", [
    ("proxy_buffers 1 8k", 'invalid number "1"'),
    ("proxy_buffers 8 0", 'invalid size "0"'),
    ("proxy_temp_path {tmp}/portico.conf", "is not a directory"),
    ("proxy_max_temp_file_size lots", "invalid"),
])
def test_bad_values_are_refused(res, arg, msg):
    p = res.proxy_unstarted("%s;\nserver { listen 127.0.0.1:{port}; }" % arg)
    out = p.run_cmd("-t").output
    assert msg in out and "portico.conf:8:" in out, out


def test_x_accel_buffering_turns_buffering_on_and_off(res):
    """the upstream decides per answer: yes buffers under proxy_buffering off
    (the origin is done while the client reads nothing), no streams under on"""
    p, o = start(res, "proxy_buffering off;")
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        c.sendall(b"GET /xbyes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
        wait_for(lambda: o.finished == ["/xbyes/%d" % SIZE], timeout=20,
                 what="the origin's response taken whole under X-Accel-Buffering: yes")
        head, data = read_all(c, SIZE)
        assert data == body_of(SIZE)
    finally:
        c.close()
    # buffering on, two clients that read nothing: only the answer without
    # X-Accel-Buffering: no goes to a temporary file (the other one, asked
    # first, waits for its client)
    q, o2 = start(res)
    c1 = socket.create_connection(("127.0.0.1", q.port), timeout=30)
    c2 = socket.create_connection(("127.0.0.1", q.port), timeout=30)
    try:
        for c in (c1, c2):
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c1.sendall(b"GET /xbno/%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
        wait_for(lambda: len(o2.conns) == 1, timeout=10, what="the first request upstream")
        c2.sendall(b"GET /len/%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
        wait_for(lambda: o2.finished == ["/len/%d" % SIZE], timeout=20,
                 what="the buffered answer taken whole")
        q.wait_error_log(r"buffered to a temporary file")
        assert q.error_log.count("buffered to a temporary file") == 1
        assert "/xbno/" not in "".join(o2.finished)
        head, data = read_all(c1, SIZE)
        assert data == body_of(SIZE) and b"X-Accel-Buffering" not in head
        head, data = read_all(c2, SIZE)
        assert data == body_of(SIZE)
    finally:
        c1.close()
        c2.close()
