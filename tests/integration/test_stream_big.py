"""1 GiB up and down through the proxy while its memory stays flat.

The origin is a raw-socket source/sink (fast enough that the proxy is the
bottleneck); RSS is sampled from /proc/PID/status during the transfer."""
import os
import re
import socket
import threading
import time

import pytest

from conftest import _Server

GIB = 1 << 30
SIZE = int(os.environ.get("PORTICO_BIG_BYTES", GIB))
RSS_LIMIT_KIB = int(os.environ.get("PORTICO_RSS_LIMIT_MIB", "64")) * 1024
DEADLINE_S = 60
CHUNK = bytes(range(256)) * 4096  # 1 MiB

pytestmark = pytest.mark.slow


class BigOrigin(_Server):
    """GET /big/N -> N bytes with Content-Length; a request with a body ->
    body is counted and the count returned."""

    def __init__(self):
        self.received = []
        super().__init__("big")

    def handle(self, s, cid, peer):
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                d = s.recv(65536)
                if not d:
                    return
                pending += d
            head, _, rest = pending.partition(b"\r\n\r\n")
            target = head.split(b" ")[1].decode()
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            chunked = re.search(rb"(?im)^transfer-encoding:.*chunked", head)
            if chunked:
                raise ValueError("BigOrigin does not take chunked bodies")
            left = int(m.group(1)) if m else 0
            got = min(left, len(rest))
            pending = rest[got:]
            left -= got
            while left:
                n = s.recv_into(mv[:min(left, len(buf))])
                if not n:
                    return
                got += n
                left -= n
            with self.lock:
                self.received.append(got)
            mm = re.match(r"/big/(\d+)", target)
            if mm:
                n = int(mm.group(1))
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\n\r\n" % n)
                cm = memoryview(CHUNK)
                while n:
                    k = min(n, len(CHUNK))
                    s.sendall(cm[:k])
                    n -= k
            else:
                body = str(got).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class RssSampler:
    def __init__(self, proxy):
        self.proxy = proxy
        self.samples = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.wait(0.05):
            self.samples.append(self.proxy.rss_kib("VmRSS"))

    def finish(self):
        self.stop.set()
        self.t.join(2)
        return max(self.samples or [0]), self.proxy.rss_kib("VmHWM")


CONF = """
client_max_body_size 0;
upstream big { server {origin}; }
server {
    listen 127.0.0.1:{port};
    location / { proxy_pass http://big; proxy_read_timeout 60s; %s }
}
"""


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_download_1gib_flat_rss(res, buffering):
    o = res.add(BigOrigin())
    p = res.proxy(CONF % f"proxy_buffering {buffering};", origin=o.addr)
    sampler = RssSampler(p)
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    try:
        s.sendall(b"GET /big/%d HTTP/1.1\r\nHost: big\r\nConnection: close\r\n\r\n" % SIZE)
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(65536)
            assert d, f"closed before head: {head!r}"
            head += d
        h, _, rest = head.partition(b"\r\n\r\n")
        assert h.startswith(b"HTTP/1.1 200"), h
        got = len(rest)
        buf = bytearray(1 << 20)
        while got < SIZE:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
            assert time.monotonic() - t0 < DEADLINE_S, f"too slow: {got} bytes"
    finally:
        s.close()
    peak, hwm = sampler.finish()
    assert got == SIZE
    assert peak < RSS_LIMIT_KIB, f"RSS peaked at {peak} KiB"
    assert hwm < RSS_LIMIT_KIB, f"VmHWM {hwm} KiB"


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_upload_1gib_flat_rss(res, buffering):
    o = res.add(BigOrigin())
    p = res.proxy(CONF % f"proxy_request_buffering {buffering};", origin=o.addr)
    sampler = RssSampler(p)
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    try:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: big\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % SIZE)
        left = SIZE
        cm = memoryview(CHUNK)
        while left:
            k = min(left, len(CHUNK))
            s.sendall(cm[:k])
            left -= k
            assert time.monotonic() - t0 < DEADLINE_S, f"too slow: {SIZE - left} bytes sent"
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    finally:
        s.close()
    peak, hwm = sampler.finish()
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert data.split(b"\r\n\r\n", 1)[1] == str(SIZE).encode()
    assert o.received == [SIZE]
    assert peak < RSS_LIMIT_KIB, f"RSS peaked at {peak} KiB"
    assert hwm < RSS_LIMIT_KIB, f"VmHWM {hwm} KiB"
