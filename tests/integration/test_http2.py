"""HTTP/2 on the client side (issue 7): h2c with prior knowledge on a
`listen ... http2` listener, streams translated to HTTP/1.1 exchanges, flow
control tied to the corridor, and the abuse protections.

Clients: Python h2 (python3-h2) over plain sockets, hand-made frames
(hyperframe) for the abuse cases, curl --http2-prior-knowledge and h2load.
"""
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame)

from conftest import IS_NGINX, RawRecorder, pattern, raw_exchange, wait_for

pytestmark = pytest.mark.skipif(IS_NGINX, reason="Portico's HTTP/2 limits and messages")

PROTOCOL_ERROR = 0x1
ENHANCE_YOUR_CALM = 0xB
NO_ERROR = 0x0

CONF = """
client_max_body_size 0;
upstream o1 {{ server 127.0.0.1:{oport}; keepalive 8; }}
server {{
    listen 127.0.0.1:{{port}} http2;
    {extra}
    location / {{ proxy_pass http://o1; proxy_set_header Host $host; }}
    location /local {{ return 200 "hello h2\\n"; }}
}}
server {{
    listen 127.0.0.1:{{port}} http2;
    server_name vhost.example;
    location / {{ return 200 "vhost\\n"; }}
}}
"""


def start(res, extra="", origin=None):
    o = origin or res.origin()
    p = res.proxy(CONF.format(oport=o.port, extra=extra))
    if not speaks_h2c(p.port):
        pytest.skip("h2c hand-off on `listen ... http2` is not wired in session.c yet")
    return p, o


def speaks_h2c(port):
    """Does the listener answer the client preface with a SETTINGS frame?"""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        try:
            d = s.recv(9)
        except OSError:
            return False
        return len(d) == 9 and d[3] == 0x4


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------

class H2Client:
    """python-h2 over a socket: send, then pump events until a condition."""

    def __init__(self, port, settings=None, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False)
        self.c = h2.connection.H2Connection(cfg)
        self.c.initiate_connection()
        if settings:
            self.c.update_settings(settings)
        self.events = []
        self.data = {}
        self.closed = False
        self.auto_ack = True
        self.flush()

    def flush(self):
        out = self.c.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(self, method="GET", path="/", authority="localhost", headers=(), end=True):
        sid = self.c.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":path", path),
                (":authority", authority), *headers]
        if method == "CONNECT":
            hdrs = [(":method", "CONNECT"), (":authority", authority)]
        self.c.send_headers(sid, hdrs, end_stream=end)
        self.flush()
        return sid

    def pump(self, until, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timeout; events: {self.events[-10:]!r}")
            if self.closed:
                raise AssertionError(f"connection closed; events: {self.events[-10:]!r}")
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(1 << 20)
            except (ConnectionResetError, socket.timeout):
                d = b""
            if not d:
                self.closed = True
                continue
            for ev in self.c.receive_data(d):
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived):
                    self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if self.auto_ack:
                        self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.flush()

    def ended(self, sid):
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and
                   e.stream_id == sid for e in self.events)

    def response(self, sid, timeout=10.0):
        self.pump(lambda: self.ended(sid), timeout)
        heads = [dict(e.headers) for e in self.events
                 if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
        return heads[0] if heads else None, bytes(self.data.get(sid, b""))

    def reset_of(self, sid):
        for e in self.events:
            if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                return e.error_code
        return None

    def send_body(self, sid, body, end=True):
        """Send respecting flow control, pumping for WINDOW_UPDATEs."""
        off = 0
        while off < len(body):
            win = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size)
            if win <= 0:
                self.pump(lambda: self.c.local_flow_control_window(sid) > 0)
                continue
            chunk = body[off:off + win]
            self.c.send_data(sid, chunk)
            off += len(chunk)
            self.flush()
        if end:
            self.c.end_stream(sid)
            self.flush()

    def close(self):
        self.sock.close()


class RawH2:
    """Hand-made frames, for what a well-behaved client library refuses to send."""

    def __init__(self, port, settings=None, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sf = SettingsFrame(0)
        for k, v in (settings or {}).items():
            sf.settings[k] = v
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + sf.serialize())
        self.buf = b""
        self.frames = []
        self.eof = False

    def send(self, *frames):
        try:
            self.sock.sendall(b"".join(f.serialize() if isinstance(f, Frame) else f
                                       for f in frames))
        except (BrokenPipeError, ConnectionResetError):
            self.eof = True

    def read_until(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            while len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                f.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                self.frames.append(f)
                if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                    self.send(SettingsFrame(0, flags=["ACK"]))
            hit = pred()
            if hit or self.eof:
                return hit
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(1 << 20)
            except socket.timeout:
                return None
            except ConnectionResetError:
                d = b""
            if not d:
                self.eof = True
            self.buf += d

    def goaway(self, timeout=10.0):
        return self.read_until(
            lambda: next((f for f in self.frames if isinstance(f, GoAwayFrame)), None), timeout)

    def close(self):
        self.sock.close()


def hpack_int(v, prefix_bits, first=0):
    top = (1 << prefix_bits) - 1
    if v < top:
        return bytes([first | v])
    out = [first | top]
    v -= top
    while v >= 128:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def hpack_literal(name, value, index=False):
    """Literal field with a literal name (with or without incremental indexing)."""
    n, v = name.encode(), value.encode()
    return (b"\x40" if index else b"\x00") + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


# :method GET, :scheme http, :path /, :authority localhost (without indexing)
GET_ROOT = b"\x82\x86\x84" + b"\x01" + hpack_int(9, 7) + b"localhost"
POST_ROOT = b"\x83\x86\x84" + b"\x01" + hpack_int(9, 7) + b"localhost"


def fresh_settings(raw):
    raw.read_until(lambda: any(isinstance(f, SettingsFrame) and "ACK" in f.flags
                               for f in raw.frames), 5)


# --------------------------------------------------------------------------
# requests and translation
# --------------------------------------------------------------------------

def test_curl_prior_knowledge_and_access_log(res):
    p, _ = start(res)
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "-", "-w",
                          "\n%{http_version} %{http_code}",
                          f"http://127.0.0.1:{p.port}/local"], capture_output=True, timeout=10)
    assert out.stdout.decode() == "hello h2\n\n2 200"
    lines = p.wait_access_lines(1)
    assert '"GET /local HTTP/2.0" 200' in lines[-1]


def test_translation_to_http11(res):
    p, o = start(res)
    c = H2Client(p.port)
    sid = c.request(path="/echo?q=1", authority="Example.COM:8080",
                    headers=[("cookie", "a=1"), ("x-test", "yes"), ("cookie", "b=2"),
                             ("te", "trailers")])
    head, body = c.response(sid)
    assert head[":status"] == "200"
    assert "connection" not in head and "keep-alive" not in head
    rec = o.requests[-1]
    hdrs = {k.lower(): v for k, v in rec["headers"]}
    assert rec["version"] == "HTTP/1.1"
    assert rec["target"] == "/echo?q=1"
    assert hdrs["host"] == "example.com"  # $host from :authority
    assert hdrs["cookie"] == "a=1; b=2"
    assert hdrs["x-test"] == "yes"
    assert "te" not in hdrs
    # :authority wins over Host, and routes by name
    sid = c.request(path="/", authority="vhost.example", headers=[("host", "other.example")])
    head, body = c.response(sid)
    assert body == b"vhost\n"
    c.close()


def test_concurrent_streams(res):
    p, o = start(res)
    c = H2Client(p.port)
    sids = [c.request(path=f"/delay/200?n={i}") for i in range(20)]
    t0 = time.monotonic()
    for sid in sids:
        head, _ = c.response(sid)
        assert head[":status"] == "200"
    assert time.monotonic() - t0 < 3.0  # in parallel, not 20 x 200 ms
    c.close()


@pytest.mark.skipif(not shutil.which("h2load"), reason="h2load (nghttp2-client) missing")
def test_h2load(res):
    p, _ = start(res)
    for path, n in (("/local", 1000), ("/x", 300)):
        out = subprocess.run(["h2load", "-n", str(n), "-c", "10", "-m", "10",
                              f"http://127.0.0.1:{p.port}{path}"],
                             capture_output=True, timeout=60).stdout.decode()
        assert f"{n} succeeded, 0 failed, 0 errored" in out, out
        assert f"status codes: {n} 2xx" in out, out


def test_large_bodies_both_ways(res):
    p, o = start(res)
    up = pattern(6 << 20)
    c = H2Client(p.port)
    sid = c.request("POST", "/upload", headers=[("content-length", str(len(up)))], end=False)
    c.send_body(sid, up)
    head, body = c.response(sid, timeout=30)
    rec = json.loads(body)
    assert rec["body_len"] == len(up)
    assert rec["body_sha256"] == hashlib.sha256(up).hexdigest()
    # without content-length: buffered whole (proxy_request_buffering on, in a
    # file past client_body_buffer_size), so the origin gets a Content-Length
    sid = c.request("POST", "/upload2", end=False)
    c.send_body(sid, up[:3 << 20])
    head, body = c.response(sid, timeout=30)
    rec = json.loads(body)
    assert rec["body_len"] == 3 << 20
    assert ["Content-Length", str(3 << 20)] in [[k.title(), v] for k, v in rec["headers"]]
    sid = c.request(path=f"/bytes/{8 << 20}")
    head, body = c.response(sid, timeout=30)
    assert head["content-length"] == str(8 << 20)
    assert body == pattern(8 << 20)
    c.close()


def test_slow_reader_memory_stays_bounded(res):
    from test_stream_big import BigOrigin
    big = res.add(BigOrigin())
    p, _ = start(res, origin=big)
    size = 48 << 20
    c = H2Client(p.port)
    c.auto_ack = False  # never reopen the windows: Portico must stop reading the origin
    sid = c.request(path=f"/big/{size}")
    c.pump(lambda: len(c.data.get(sid, b"")) >= 65535, timeout=10)
    base = p.rss_kib()
    time.sleep(1.0)  # give a buffering proxy the time to swallow the body
    grown = p.rss_kib() - base
    assert len(c.data[sid]) <= 65535
    assert grown < 16 * 1024, f"RSS grew {grown} KiB while the client read nothing"
    # now read it all
    c.auto_ack = True
    c.c.acknowledge_received_data(len(c.data[sid]), sid)
    c.flush()
    head, body = c.response(sid, timeout=60)
    assert len(body) == size
    c.close()


def test_trailers_head_and_100_continue(res):
    p, o = start(res)
    c = H2Client(p.port)
    sid = c.request(path="/chunked/5000?trailers=1", headers=[("te", "trailers")])
    head, body = c.response(sid)
    assert body == pattern(5000)
    tr = [dict(e.headers) for e in c.events
          if isinstance(e, h2.events.TrailersReceived) and e.stream_id == sid]
    assert tr and "x-trailer" in tr[0], c.events
    sid = c.request("HEAD", "/bytes/1000")
    head, body = c.response(sid)
    assert head["content-length"] == "1000" and body == b""
    sid = c.request("POST", "/cont", headers=[("expect", "100-continue"),
                                              ("content-length", "5")], end=False)
    c.pump(lambda: any(isinstance(e, h2.events.InformationalResponseReceived) and
                       e.stream_id == sid for e in c.events))
    c.send_body(sid, b"hello")
    head, body = c.response(sid)
    assert json.loads(body)["body_len"] == 5
    c.close()


def test_connect_refused_and_malformed_requests(res):
    p, o = start(res)
    n0 = len(o.requests)
    c = H2Client(p.port)
    sid = c.request("CONNECT", authority="example.com:443", end=False)
    head, _ = c.response(sid)
    assert head[":status"] == "405"
    for bad in (("connection", "keep-alive"), ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"), ("te", "gzip"), ("keep-alive", "5")):
        sid = c.request(path="/bad", headers=[bad])
        c.pump(lambda: c.ended(sid))
        assert c.reset_of(sid) == PROTOCOL_ERROR, bad
    # content-length that the DATA frames contradict
    sid = c.request("POST", "/cl", headers=[("content-length", "10")], end=False)
    c.send_body(sid, b"12345")
    c.pump(lambda: c.ended(sid))
    assert c.reset_of(sid) == PROTOCOL_ERROR
    sid = c.request(path="/still-fine")
    head, _ = c.response(sid)
    assert head[":status"] == "200"
    assert [r["target"] for r in o.requests[n0:]] == ["/still-fine"]
    c.close()


def test_header_list_over_limit_is_431(res):
    p, _ = start(res, extra="http2_max_header_size 4k;")
    raw = RawH2(p.port)
    block = GET_ROOT + hpack_literal("x-big", "a" * 6000)
    raw.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
    hit = raw.read_until(lambda: any(isinstance(f, HeadersFrame) and f.stream_id == 1
                                     for f in raw.frames))
    assert hit
    h = next(f for f in raw.frames if isinstance(f, HeadersFrame))
    import hpack
    assert dict(hpack.Decoder().decode(h.data))[":status"] == "431"
    raw.close()


# --------------------------------------------------------------------------
# abuse: each ends in GOAWAY, memory and CPU stay bounded
# --------------------------------------------------------------------------

def test_rapid_reset(res):
    p, _ = start(res)
    raw = RawH2(p.port)
    frames = []
    for i in range(1000):
        sid = 1 + 2 * i
        frames += [HeadersFrame(sid, GET_ROOT, flags=["END_HEADERS", "END_STREAM"]),
                   RstStreamFrame(sid, error_code=0x8)]
    raw.send(*frames)
    g = raw.goaway()
    assert g is not None and g.error_code == ENHANCE_YOUR_CALM
    p.wait_error_log("rapid reset")
    raw.close()


def test_continuation_flood(res):
    p, _ = start(res)
    raw = RawH2(p.port)
    frames = [HeadersFrame(1, GET_ROOT)]
    frames += [ContinuationFrame(1, hpack_literal("x-c", "v" * 100)) for _ in range(100)]
    raw.send(*frames)
    g = raw.goaway()
    assert g is not None and g.error_code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR)
    raw.close()


def test_hpack_bomb(res):
    p, _ = start(res)
    raw = RawH2(p.port)
    # one 4000-byte entry in the dynamic table, then 3000 one-byte references
    block = GET_ROOT + hpack_literal("x-bomb", "b" * 4000, index=True) + b"\xbe" * 3000
    raw.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
    g = raw.goaway()
    assert g is not None and g.error_code == ENHANCE_YOUR_CALM
    assert p.alive()
    raw.close()


@pytest.mark.parametrize("kind", ["ping", "settings", "empty_data"])
def test_control_frame_floods(res, kind):
    p, _ = start(res)
    raw = RawH2(p.port)
    if kind == "ping":
        frames = [PingFrame(0, opaque_data=struct.pack(">Q", i)) for i in range(500)]
    elif kind == "settings":
        frames = [SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}) for _ in range(500)]
    else:
        frames = [HeadersFrame(1, POST_ROOT, flags=["END_HEADERS"])]
        frames += [DataFrame(1, b"") for _ in range(500)]
    raw.send(*frames)
    g = raw.goaway()
    assert g is not None and g.error_code == ENHANCE_YOUR_CALM, kind
    raw.close()


def test_zero_window_stall_times_out(res):
    p, _ = start(res, extra="send_timeout 1s;")
    raw = RawH2(p.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    raw.send(HeadersFrame(1, b"\x82\x86" + hpack_literal(":path", "/bytes/100000")
                          + b"\x01" + hpack_int(9, 7) + b"localhost",
                          flags=["END_HEADERS", "END_STREAM"]))
    g = raw.goaway(timeout=10)
    assert g is not None and g.error_code == ENHANCE_YOUR_CALM
    raw.close()


def test_too_many_streams(res):
    p, o = start(res, extra="http2_max_concurrent_streams 4;")
    raw = RawH2(p.port)
    fresh_settings(raw)
    raw.read_until(lambda: any(isinstance(f, SettingsFrame) and "ACK" not in f.flags
                               for f in raw.frames), 5)
    frames = [HeadersFrame(1 + 2 * i, b"\x82\x86" + hpack_literal(":path", "/hang")
                           + b"\x01" + hpack_int(9, 7) + b"localhost",
                           flags=["END_HEADERS", "END_STREAM"]) for i in range(10)]
    raw.send(*frames)
    g = raw.goaway()
    assert g is not None and g.error_code in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)
    raw.close()


def test_idle_timeout(res):
    p, _ = start(res, extra="http2_idle_timeout 300ms;")
    raw = RawH2(p.port)
    g = raw.goaway(timeout=5)
    assert g is not None and g.error_code == NO_ERROR


def test_no_request_goes_after_client_header_timeout(res):
    # the idle timeout is long; a connection that never asks for anything
    # still goes after client_header_timeout, as an HTTP/1 one does
    p, _ = start(res, extra="http2_idle_timeout 1h; client_header_timeout 300ms;")
    raw = RawH2(p.port)
    g = raw.goaway(timeout=5)
    assert g is not None and g.error_code == NO_ERROR


# --------------------------------------------------------------------------
# graceful stop and reload
# --------------------------------------------------------------------------

def test_graceful_stop_finishes_streams(res):
    p, o = start(res)
    raw = RawH2(p.port)
    raw.send(HeadersFrame(1, b"\x82\x86" + hpack_literal(":path", "/delay/800")
                          + b"\x01" + hpack_int(9, 7) + b"localhost",
                          flags=["END_HEADERS", "END_STREAM"]))
    wait_for(lambda: any(r["target"] == "/delay/800" for r in o.requests), 5,
             what="the request at the origin")
    p.signal(p.graceful_signal)
    g = raw.goaway()
    assert g is not None and g.error_code == NO_ERROR and g.last_stream_id == 1
    done = raw.read_until(lambda: any(isinstance(f, DataFrame) and "END_STREAM" in f.flags
                                      for f in raw.frames))
    assert done, raw.frames
    heads = [f for f in raw.frames if isinstance(f, HeadersFrame)]
    import hpack
    assert dict(hpack.Decoder().decode(heads[0].data))[":status"] == "200"
    assert p.proc.wait(10) == 0


def test_reload_sends_goaway(res):
    p, _ = start(res)
    c = H2Client(p.port)
    sid = c.request(path="/local")
    c.response(sid)
    p.reload()
    c.pump(lambda: any(isinstance(e, h2.events.ConnectionTerminated) for e in c.events),
           timeout=5)
    assert [e.error_code for e in c.events
            if isinstance(e, h2.events.ConnectionTerminated)] == [NO_ERROR]
    # a new connection works with the new configuration
    c2 = H2Client(p.port)
    head, body = c2.response(c2.request(path="/local"))
    assert body == b"hello h2\n"


def test_lower_stream_id_is_a_connection_error(res):
    """RFC 9113 5.1.1 (h2spec 5.1.1/2): opening stream 3 after stream 5 is a
    connection error; nghttp2 alone would ignore the frame."""
    p, _ = start(res)
    raw = RawH2(p.port)
    raw.send(HeadersFrame(5, GET_ROOT, flags=["END_HEADERS", "END_STREAM"]),
             HeadersFrame(3, GET_ROOT, flags=["END_HEADERS", "END_STREAM"]))
    g = raw.goaway()
    assert g is not None and g.error_code == PROTOCOL_ERROR
    raw.close()


def test_trailers_on_an_open_stream_are_not_an_error(res):
    """The check above must not catch trailers: a second HEADERS on a stream
    that is still open (request body with trailers) is answered normally."""
    p, _ = start(res)
    c = H2Client(p.port)
    sid = c.request("POST", "/", end=False)
    c.c.send_data(sid, b"x" * 10)
    c.c.send_headers(sid, [("x-check", "1")], end_stream=True)
    c.flush()
    head, _ = c.response(sid)
    assert head is not None and head[":status"] == "200"
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in c.events)


def test_request_trailers_reach_the_upstream(res):
    """HTTP/2 request trailers go upstream after the last chunk when the body
    is streamed (proxy_request_buffering off)."""
    up = RawRecorder(b"x-check: abc\r\n\r\n", b"\r\n0\r\n\r\n")
    p = res.proxy("server { listen 127.0.0.1:{port} http2; location / { proxy_pass "
                  "http://127.0.0.1:%d; proxy_request_buffering off; } }" % up.port)
    c = H2Client(p.port)
    sid = c.request("POST", "/t", end=False)
    c.c.send_data(sid, b"hello")
    c.c.send_headers(sid, [("x-check", "abc")], end_stream=True)
    c.flush()
    head, _ = c.response(sid)
    raw = up.wait()
    assert head is not None and head[":status"] == "200"
    assert b"Transfer-Encoding: chunked" in raw
    assert raw.endswith(b"0\r\nx-check: abc\r\n\r\n"), raw[-80:]


# --------------------------------------------------------------------------
# h2c-only listeners (`listen ... http2 h2c_only`)
# --------------------------------------------------------------------------

H2C_ONLY = """
server {
    listen 127.0.0.1:{port} http2 h2c_only;
    location / { return 200 "only h2\\n"; }
}
server {
    listen 127.0.0.1:{port2} http2;
    location / { return 200 "both\\n"; }
}
"""


def goaway_then_close(port, data):
    """Send `data` as the first bytes; read frames until the server closes.
    Returns (frames, bytes received)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while True:
            d = s.recv(65536)  # a timeout fails the test: the server must close
            if not d:
                break
            buf += d
    frames, off = [], 0
    while off + 9 <= len(buf):
        f, length = Frame.parse_frame_header(memoryview(buf[off:off + 9]))
        f.parse_body(memoryview(buf[off + 9:off + 9 + length]))
        frames.append(f)
        off += 9 + length
    return frames, buf


@pytest.mark.parametrize("first", [b"INVALID CONNECTION PREFACE\r\n\r\n",
                                   b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
                                   b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"],
                         ids=["h2spec-3.5-2", "http1", "broken-pri"])
def test_h2c_only_refuses_anything_but_the_preface(res, first):
    """h2spec 3.5/2 over h2c: an invalid preface is a connection error
    (PROTOCOL_ERROR): GOAWAY, then close. HTTP/1.1 gets no HTTP/1 answer."""
    p = res.proxy(H2C_ONLY)
    frames, buf = goaway_then_close(p.port, first)
    assert not buf.startswith(b"HTTP/1"), buf[:40]
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [PROTOCOL_ERROR], frames


def test_h2c_only_serves_http2(res):
    p = res.proxy(H2C_ONLY)
    c = H2Client(p.port)
    head, body = c.response(c.request(path="/"))
    assert head[":status"] == "200" and body == b"only h2\n"
    c.close()


def test_plain_http2_listener_still_serves_http11(res):
    """Without h2c_only, `listen ... http2` is nginx's: HTTP/1.1 and h2c with
    prior knowledge on the same port."""
    p = res.proxy(H2C_ONLY)
    port2 = p.ports["port2"]
    data, closed = raw_exchange(port2, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200"), data[:60]
    assert data.endswith(b"both\n")
    c = H2Client(port2)
    head, body = c.response(c.request(path="/"))
    assert head[":status"] == "200" and body == b"both\n"
    c.close()


def test_h2c_only_with_ssl_is_refused(res):
    p = res.proxy_unstarted("server {\n listen 127.0.0.1:{port} ssl h2c_only;\n"
                            " location / { return 200; }\n}\n")
    line = 1 + p.conf_text.splitlines().index(f" listen 127.0.0.1:{p.port} ssl h2c_only;")
    cp = p.run_cmd("-t")
    assert cp.returncode != 0, cp.output
    assert f"{p.conf_path}:{line}: \"h2c_only\"" in cp.output, cp.output
