"""Upgrade (WebSocket) tunnels over HTTP/1.1: the client's Upgrade goes to
the upstream; its 101 switches the connection to a byte tunnel both ways
until either side closes or it stays quiet for proxy_read_timeout."""
import socket
import threading

import pytest

from conftest import IS_NGINX, _Server, get, wait_for

UPGRADE_REQ = (b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def read_head(s):
    """An HTTP head from socket s: (head, bytes after it), or None at EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            return None
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class TunnelOrigin(_Server):
    """Answers an upgrade with 101 and then echoes bytes upper-cased; a line
    "bye\\n" makes it close. A request without Upgrade gets a 426."""

    def __init__(self):
        self.heads = []
        self.closed = threading.Event()
        super().__init__("tunnel")

    def handle(self, s, cid, peer):
        got = read_head(s)
        if not got:
            return
        head, rest = got
        with self.lock:
            self.heads.append(head.decode("latin-1"))
        low = head.lower()
        if b"\r\nupgrade: websocket" not in low or b"connection: upgrade" not in low:
            s.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
            return
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        data = rest
        try:
            while True:
                if data:
                    if b"bye\n" in data:
                        s.sendall(data.split(b"bye\n")[0].upper())
                        return
                    s.sendall(data.upper())
                data = s.recv(65536)
                if not data:
                    return
        finally:
            self.closed.set()


CONF = """
server {{
    listen 127.0.0.1:{{port}};
    location / {{
        proxy_pass http://127.0.0.1:{o};
        {extra}
    }}
}}
"""


def open_tunnel(port, early=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(UPGRADE_REQ + early)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return s, head.decode("latin-1"), rest


def recv_exactly(s, n, have=b""):
    while len(have) < n:
        d = s.recv(1 << 20)
        assert d, f"closed after {len(have)} of {n}"
        have += d
    return have


def start(res, extra=""):
    o = res.add(TunnelOrigin())
    return res.proxy(CONF.format(o=o.port, extra=extra)), o


@pytest.mark.skipif(IS_NGINX, reason="nginx forwards Upgrade only when proxy_set_header says so")
def test_tunnel_echo_both_ways(res):
    p, o = start(res)
    s, head, rest = open_tunnel(p.port, early=b"early ")
    assert head.startswith("HTTP/1.1 101 ")
    assert "\r\nUpgrade: websocket" in head and "\r\nConnection: upgrade" in head
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    # what the client sent right behind its request arrives too
    assert recv_exactly(s, 6, rest) == b"EARLY "
    big = bytes(range(97, 123)) * 40000  # ~1 MB each way, through backpressure
    sender = threading.Thread(target=s.sendall, args=(big,))
    sender.start()
    assert recv_exactly(s, len(big)) == big.upper()
    sender.join()
    s.sendall(b"bye\n")  # the origin closes: so does the client connection
    s.settimeout(5)
    assert s.recv(10) == b""
    s.close()
    assert "upgrade: websocket" in o.heads[0].lower() and "connection: upgrade" in o.heads[0].lower()
    line = p.wait_access_lines(1)[-1]
    assert '"GET /chat HTTP/1.1" 101 ' in line, line


def test_nginx_recipe_with_map(res):
    o = res.add(TunnelOrigin())
    p = res.proxy("map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n"
                  + CONF.format(o=o.port, extra="""proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;"""))
    s, head, rest = open_tunnel(p.port)
    assert head.startswith("HTTP/1.1 101 ")
    s.sendall(b"abc")
    assert recv_exactly(s, 3, rest) == b"ABC"
    s.close()
    wait_for(o.closed.is_set, what="the upstream side closed after the client")
    # a plain request on the same location is a plain exchange
    assert get(p.port, "/plain").status == 426


@pytest.mark.skipif(IS_NGINX, reason="nginx forwards Upgrade only when proxy_set_header says so")
def test_client_close_closes_the_upstream(res):
    p, o = start(res)
    s, head, rest = open_tunnel(p.port)
    s.sendall(b"x")
    assert recv_exactly(s, 1, rest) == b"X"
    s.close()
    wait_for(o.closed.is_set, what="the upstream connection closed")
    assert p.alive()


@pytest.mark.skipif(IS_NGINX, reason="nginx forwards Upgrade only when proxy_set_header says so")
def test_idle_tunnel_meets_proxy_read_timeout(res):
    p, o = start(res, extra="proxy_read_timeout 300ms;")
    s, head, rest = open_tunnel(p.port)
    s.settimeout(10)
    assert s.recv(10) == b""  # closed by the proxy after 300 ms of silence
    s.close()
    wait_for(o.closed.is_set, what="the upstream connection closed")


@pytest.mark.skipif(IS_NGINX, reason="nginx forwards Upgrade only when proxy_set_header says so")
def test_upgrade_is_never_cached(res, tmp_path):
    o = res.add(TunnelOrigin())
    p = res.proxy(f"proxy_cache_path {tmp_path}/c keys_zone=c:1m;\n"
                  + CONF.format(o=o.port, extra="proxy_cache c; proxy_cache_valid any 10m;"))
    for _ in range(2):
        s, head, rest = open_tunnel(p.port)
        assert head.startswith("HTTP/1.1 101 ")
        s.close()
    wait_for(lambda: len(o.heads) == 2, what="both upgrades at the origin")


@pytest.mark.skipif(IS_NGINX, reason="nginx waits on such an upstream instead")
def test_a_101_nobody_asked_for_is_502(res):
    """An upstream that switches protocols unasked is broken (never tunnelled)."""
    class Rogue(_Server):
        def handle(self, s, cid, peer):
            if not read_head(s):
                return
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\nrogue bytes")
    o = res.add(Rogue("rogue"))
    p = res.proxy(CONF.format(o=o.port, extra=""))
    assert get(p.port, "/").status == 502


# ---- second review: tunnel endings ----

class ResetAfter101(_Server):
    """101, reads a little of the tunnel, then resets the connection."""

    def handle(self, s, cid, peer):
        if not read_head(s):
            return
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        got = 0
        while got < 100_000:
            d = s.recv(65536)
            if not d:
                return
            got += len(d)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.mark.skipif(IS_NGINX, reason="nginx forwards Upgrade only when proxy_set_header says so")
@pytest.mark.parametrize("extra", ["", "error_page 502 /err;"])
def test_upstream_failure_in_a_tunnel_is_a_cut_not_a_second_response(res, extra):
    o = res.add(ResetAfter101("rst"))
    p = res.proxy(CONF.format(o=o.port, extra=extra).replace(
        "server {", "server {\n    location /err { return 200 \"error page\\n\"; }", 1))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(UPGRADE_REQ)

    def flood():
        try:
            for _ in range(64):
                s.sendall(b"z" * 65536)
        except OSError:
            pass
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except OSError:
        pass
    s.close()
    assert out.startswith(b"HTTP/1.1 101 ")
    assert out.count(b"HTTP/1.1 ") == 1, out[:400]


class Sink(_Server):
    """101 (after the whole, possibly chunked, request), then counts what
    arrives until EOF, reading slowly so the proxy has to queue."""

    def __init__(self, slow=True):
        self.got = b""
        self.done = threading.Event()
        self.slow = slow
        super().__init__("sink")

    def handle(self, s, cid, peer):
        got = read_head(s)
        if not got:
            return
        head, rest = got
        if b"chunked" in head.lower():
            while not rest.endswith(b"0\r\n\r\n"):
                rest += s.recv(65536)
            rest = b""
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        data = bytearray(rest)
        try:
            while True:
                d = s.recv(16384)
                if not d:
                    break
                data += d
                if self.slow:
                    self.stopping.wait(0.001)
        finally:
            self.got = bytes(data)
            self.done.set()


@pytest.mark.skipif(IS_NGINX, reason="nginx forwards Upgrade only when proxy_set_header says so")
def test_client_close_delivers_everything_it_sent(res):
    o = res.add(Sink())
    p = res.proxy(CONF.format(o=o.port, extra=""))
    s, head, rest = open_tunnel(p.port)
    n = 3_000_000
    s.sendall(b"y" * n)
    s.shutdown(socket.SHUT_WR)
    wait_for(o.done.is_set, timeout=60, what="the upstream side finished")
    s.close()
    assert len(o.got) == n


def test_chunked_upgrade_request_tunnels_raw_bytes(res):
    o = res.add(Sink(slow=False))
    p = res.proxy(CONF.format(o=o.port, extra="""proxy_request_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection upgrade;"""))
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, buf
        buf += d
    assert buf.startswith(b"HTTP/1.1 101 ")
    s.sendall(b"hello")
    s.shutdown(socket.SHUT_WR)
    wait_for(o.done.is_set, timeout=10, what="the upstream side finished")
    s.close()
    assert o.got == b"hello"
