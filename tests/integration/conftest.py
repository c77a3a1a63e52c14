"""Shared harness for Portico's integration tests.

A real proxy process (Portico, or nginx when PROXY_UNDER_TEST=nginx, to check
the harness and the expectations), real origins on 127.0.0.1, real sockets.
Everything waits on a condition with a deadline; nothing sleeps blindly.
"""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PORTICO_BIN = os.environ.get("PORTICO_BIN", os.path.join(REPO, "build", "portico"))
NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
UNDER_TEST = os.environ.get("PROXY_UNDER_TEST", "portico")
IS_NGINX = UNDER_TEST == "nginx"
START_TIMEOUT = float(os.environ.get("PORTICO_START_TIMEOUT", "10"))

# What the harness assumes of Portico's error log (see README of the suite):
# a finished reload logs a line with "reload" and "done"; a refused one a line
# with "reload" and "fail" (plus the file:line of the error).
RELOAD_DONE_RE = re.compile(r"reload.*\bdone\b|\bdone\b.*reload", re.I)
RELOAD_FAIL_RE = re.compile(r"reload.*fail|fail.*reload", re.I)
NGINX_RELOAD_DONE_RE = re.compile(r"start worker process")
NGINX_RELOAD_FAIL_RE = re.compile(r"\[emerg\]")


def wait_for(pred, timeout=5.0, interval=0.01, what="condition"):
    """Poll `pred` until it returns a truthy value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)  # polling interval, not a wait for an outcome


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def closed_port():
    """A loopback port with nothing listening (connect gets ECONNREFUSED)."""
    return free_port()


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


PATTERN = bytes(range(256)) * 64  # 16 KiB


def pattern(n):
    """Deterministic payload of n bytes (what /bytes/N and /chunked/N send)."""
    reps = n // len(PATTERN) + 1
    return (PATTERN * reps)[:n]


# --------------------------------------------------------------------------
# HTTP response parsing / raw client
# --------------------------------------------------------------------------

class Response:
    def __init__(self, version, status, reason, headers, body=b"", trailers=None,
                 raw_head=b""):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), original case
        self.body = body
        self.trailers = trailers or []
        self.raw_head = raw_head
        self.complete = True

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def has(self, name):
        return any(k.lower() == name.lower() for k, _ in self.headers)

    @property
    def text(self):
        return self.body.decode("latin-1")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body={self.body[:200]!r}>"


class Incomplete(Exception):
    pass


def _parse_head(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete()
    head = buf[:end]
    lines = head.split(b"\r\n")
    m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = []
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
    return (m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"),
            headers, end + 4, head)


def parse_one(buf, eof, head_request=False):
    """Parse one response from the start of buf. Returns (Response, consumed).
    Raises Incomplete if more bytes are needed."""
    version, status, reason, headers, off, head = _parse_head(buf)
    r = Response(version, status, reason, headers, raw_head=head)
    if 100 <= status < 200 or status in (204, 304) or head_request:
        return r, off
    te = ",".join(r.header_all("Transfer-Encoding")).lower()
    if "chunked" in te:
        pos = off
        body = bytearray()
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                raise Incomplete()
            size = int(buf[pos:nl].split(b";")[0].strip(), 16)
            pos = nl + 2
            if size == 0:
                break
            if len(buf) < pos + size + 2:
                raise Incomplete()
            body += buf[pos:pos + size]
            pos += size + 2
        trailers = []
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                raise Incomplete()
            line = buf[pos:nl]
            pos = nl + 2
            if not line:
                break
            k, _, v = line.partition(b":")
            trailers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        r.body = bytes(body)
        r.trailers = trailers
        return r, pos
    cl = r.header("Content-Length")
    if cl is not None:
        n = int(cl)
        if len(buf) < off + n:
            raise Incomplete()
        r.body = bytes(buf[off:off + n])
        return r, off + n
    # close-delimited
    if not eof:
        raise Incomplete()
    r.body = bytes(buf[off:])
    return r, len(buf)


class Conn:
    """A client connection speaking raw bytes, with an incremental reader."""

    def __init__(self, port, timeout=5.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline")
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            d = b""
        if not d:
            self.eof = True
        else:
            self.buf += d
        return d

    def read_response(self, head_request=False, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                r, used = parse_one(self.buf, self.eof, head_request)
                del self.buf[:used]
                return r
            except Incomplete:
                if self.eof:
                    raise AssertionError(
                        f"connection closed before a full response; got {bytes(self.buf[:300])!r}")
                self._recv(deadline)

    def read_final(self, head_request=False, timeout=None):
        """Read responses, skipping 1xx; returns (interim_list, final)."""
        interim = []
        while True:
            r = self.read_response(head_request, timeout)
            if 100 <= r.status < 200:
                interim.append(r)
                continue
            return interim, r

    def read_until_close(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while not self.eof:
                self._recv(deadline)
        except socket.timeout:
            pass
        return bytes(self.buf)

    def closed(self, timeout=3.0):
        """True if the peer closes (EOF/RST) within `timeout` seconds.
        Unread data is kept in self.buf."""
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                self._recv(deadline)
        except socket.timeout:
            return False
        except OSError:
            return True
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def build_request(method="GET", target="/", host="localhost", headers=(), body=None,
                  version="HTTP/1.1", close=False):
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers:
        lines.append(f"{k}: {v}")
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        data += body if isinstance(body, bytes) else body.encode("latin-1")
    return data


def request(port, method="GET", target="/", host="localhost", headers=(), body=None,
            version="HTTP/1.1", timeout=5.0):
    """One request on a fresh connection; returns the final Response."""
    with Conn(port, timeout=timeout) as c:
        c.send(build_request(method, target, host, headers, body, version))
        _, r = c.read_final(head_request=(method == "HEAD"), timeout=timeout)
        return r


def get(port, target="/", host="localhost", **kw):
    return request(port, "GET", target, host, **kw)


def raw_exchange(port, data, timeout=3.0):
    """Send exact bytes, read until the server closes or `timeout`.
    Returns (bytes_received, closed_by_server)."""
    c = Conn(port, timeout=timeout)
    try:
        c.send(data)
        c.read_until_close(timeout)
        return bytes(c.buf), c.eof
    finally:
        c.close()


def status_lines(data):
    return [int(m.group(1)) for m in re.finditer(rb"(?m)^HTTP/1\.[01] (\d{3})", data)]


# --------------------------------------------------------------------------
# Origins
# --------------------------------------------------------------------------

class _Server:
    def __init__(self, name):
        self.name = name
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.accepted = 0
        self.socks = set()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                s, peer = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                cid = self.accepted
                self.socks.add(s)
            threading.Thread(target=self._conn_main, args=(s, cid, peer), daemon=True).start()

    def _conn_main(self, s, cid, peer):
        try:
            self.handle(s, cid, peer)
        except (OSError, ValueError):
            pass
        finally:
            with self.lock:
                self.socks.discard(s)
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _read_head(rfile):
    line = rfile.readline(65537)
    if not line:
        return None
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
        line = rfile.readline(65537)
        if not line:
            return None
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3:
        raise ValueError(f"bad request line {line!r}")
    headers = []
    while True:
        h = rfile.readline(65537)
        if not h:
            raise ValueError("eof in head")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.rstrip(b"\r\n").partition(b":")
        headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
    return [p.decode("latin-1") for p in parts], headers


def _hget(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


class FakeDns:
    """Answers every A query with `self.ip` (UDP on 127.0.0.1)."""

    def __init__(self):
        import socket
        self.ip = "127.0.0.1"
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        import socket
        while True:
            try:
                q, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.queries += 1
            end = q.index(b"\0", 12) + 5
            ans = (q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:end] +
                   b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04" +
                   socket.inet_aton(self.ip))
            self.sock.sendto(ans, peer)

    def stop(self):
        self.sock.close()


class HttpOrigin(_Server):
    """Threaded HTTP/1.1 origin. Records every request it received.

    Paths (matched anywhere in the path, so prefixes survive proxy_pass):
      .../status/N      answer N with the JSON echo
      .../delay/MS      sleep MS milliseconds then echo
      .../bytes/N       N pattern bytes with Content-Length
      .../chunked/N     N pattern bytes chunked (?trailers=1 adds a trailer)
      .../close         echo with Connection: close, then close
      .../hang          read the request, never answer
      .../early         send a 103 before the echo
      anything else     200 with the JSON echo
    Query ?h=Name:Value (repeatable) adds response headers.
    With tls=(certfile, keyfile) it speaks HTTPS: records then have
    "session_reused" and "tls_version"; .sni lists the server_names received.
    """

    def __init__(self, name="o1", tls=None):
        self.requests = []
        self.tls_ctx = None
        self.sni = []  # every server_name received, in handshake order
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            ctx.sni_callback = lambda sock, name, c: self.sni.append(name) and None
            self.tls_ctx = ctx
        super().__init__(name)

    def clear(self):
        with self.lock:
            self.requests.clear()

    def handle(self, s, cid, peer):
        tls_info = {}
        if self.tls_ctx:
            raw = s
            s = self.tls_ctx.wrap_socket(raw, server_side=True)
            with self.lock:
                self.socks.discard(raw)
                self.socks.add(s)
            tls_info = {"session_reused": s.session_reused, "tls_version": s.version()}
            try:
                return self._serve(s, cid, peer, tls_info)
            finally:
                with self.lock:
                    self.socks.discard(s)
                s.close()
        return self._serve(s, cid, peer, tls_info)

    def _serve(self, s, cid, peer, tls_info):
        rfile = s.makefile("rb")
        while not self.stopping.is_set():
            got = _read_head(rfile)
            if got is None:
                return
            (method, target, version), headers = got
            if (_hget(headers, "expect") or "").lower() == "100-continue":
                s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            te = (_hget(headers, "transfer-encoding") or "").lower()
            h = hashlib.sha256()
            blen = 0
            trailers = []
            if "chunked" in te:
                while True:
                    szl = rfile.readline(1024)
                    size = int(szl.split(b";")[0].strip(), 16)
                    if size == 0:
                        while True:
                            t = rfile.readline(65537)
                            if t in (b"\r\n", b"\n", b""):
                                break
                            k, _, v = t.rstrip(b"\r\n").partition(b":")
                            trailers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
                        break
                    left = size
                    while left:
                        d = rfile.read(min(left, 1 << 20))
                        if not d:
                            raise ValueError("eof in chunk")
                        h.update(d)
                        blen += len(d)
                        left -= len(d)
                    rfile.readline(8)
            else:
                cl = _hget(headers, "content-length")
                left = int(cl) if cl else 0
                while left:
                    d = rfile.read(min(left, 1 << 20))
                    if not d:
                        raise ValueError("eof in body")
                    h.update(d)
                    blen += len(d)
                    left -= len(d)
            rec = {
                "origin": self.name, "method": method, "target": target,
                "version": version, "headers": headers, "body_len": blen,
                "body_sha256": h.hexdigest(), "trailers": trailers, "conn_id": cid,
                "peer_port": peer[1], "peer_ip": peer[0], **tls_info,
            }
            with self.lock:
                self.requests.append(rec)
            keep = self._respond(s, rec)
            conn_hdr = (_hget(headers, "connection") or "").lower()
            if not keep or "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr):
                return

    def _respond(self, s, rec):
        u = urllib.parse.urlsplit(rec["target"])
        path = u.path
        q = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
        extra = [tuple(v.split(":", 1)) for k, v in q if k == "h" and ":" in v]
        head_only = rec["method"] == "HEAD"
        status = 200
        keep = True
        m = re.search(r"(?:^|/)(status|delay|bytes|chunked)/(\d+)", path)
        word = re.search(r"(?:^|/)(close|hang|early)(?:/|$)", path)
        if word and word.group(1) == "hang":
            self.stopping.wait(60)
            return False
        if word and word.group(1) == "early":
            s.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        if word and word.group(1) == "close":
            keep = False
            extra.append(("Connection", "close"))
        if m and m.group(1) == "bytes":
            body = pattern(int(m.group(2)))
            self._send(s, 200, extra + [("Content-Type", "application/octet-stream")],
                       body, head_only)
            return keep
        if m and m.group(1) == "chunked":
            n = int(m.group(2))
            hdrs = extra + [("Content-Type", "application/octet-stream"),
                            ("Transfer-Encoding", "chunked")]
            with_tr = ("trailers", "1") in q
            if with_tr:
                hdrs.append(("Trailer", "X-Trailer"))
            out = self._head(200, hdrs)
            if not head_only:
                body = pattern(n)
                for i in range(0, n, 1000):
                    piece = body[i:i + 1000]
                    out += b"%x\r\n" % len(piece) + piece + b"\r\n"
                out += b"0\r\n" + (b"X-Trailer: t\r\n" if with_tr else b"") + b"\r\n"
            s.sendall(out)
            return keep
        if m and m.group(1) == "status":
            status = int(m.group(2))
        if m and m.group(1) == "delay":
            if self.stopping.wait(int(m.group(2)) / 1000.0):
                return False
        body = json.dumps(rec).encode()
        if status in (204, 304) or status < 200:
            body = b""
        self._send(s, status, extra + [("Content-Type", "application/json"),
                                       ("Server", "test-origin")], body, head_only)
        return keep

    @staticmethod
    def _head(status, headers):
        out = f"HTTP/1.1 {status} X\r\n"
        for k, v in headers:
            out += f"{k}: {v}\r\n"
        return (out + "\r\n").encode("latin-1")

    def _send(self, s, status, headers, body, head_only):
        if status not in (204, 304):
            headers = headers + [("Content-Length", str(len(body)))]
        s.sendall(self._head(status, headers) + (b"" if head_only else body))

    # helpers for tests
    def targets(self):
        with self.lock:
            return [r["target"] for r in self.requests]

    def last(self):
        with self.lock:
            return self.requests[-1]


class ScriptedOrigin(_Server):
    """Reads a request head, replies with exact bytes, then `after`:
    'close' (FIN), 'rst' (RST), 'hold' (keep open). With reply=None and
    after='rst' it resets right after reading the head."""

    def __init__(self, reply, after="close", read_request=True, name="scripted"):
        self.reply = reply
        self.after = after
        self.read_request = read_request
        self.heads = []
        super().__init__(name)

    def handle(self, s, cid, peer):
        if self.read_request:
            buf = b""
            s.settimeout(10)
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
            with self.lock:
                self.heads.append(buf)
        if self.reply:
            s.sendall(self.reply)
        if self.after == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif self.after == "hold":
            self.stopping.wait(60)


class ResetOrigin(ScriptedOrigin):
    """Accepts and immediately resets (RST) without reading."""

    def __init__(self, read_request=False):
        super().__init__(None, after="rst", read_request=read_request, name="reset")


# --------------------------------------------------------------------------
# The proxy under test
# --------------------------------------------------------------------------

_FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(text, fields):
    """Replace {name} for names in `fields` only (so regex braces survive)."""
    return _FIELD_RE.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in fields
                         else m.group(0), text)


class Proxy:
    """One running Portico (or nginx) with a config written into `tmp`.

    `conf` is the body of the http{} block unless full=True, in which case it
    is the whole file. Fields {port}, {port2}, ... are given free ports;
    {tmp} is the instance's directory; other fields come from **fields."""

    def __init__(self, tmp, conf, full=False, main="", start=True, **fields):
        self.tmp = str(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        self.fields = dict(fields)
        self.fields.setdefault("tmp", self.tmp)
        for name in set(_FIELD_RE.findall(conf + main)):
            if re.fullmatch(r"port\d*", name) and name not in self.fields:
                self.fields[name] = free_port()
        # nginx-only knobs that Portico does by default (tests may use them)
        self.fields.setdefault("ngx_keepalive", 'proxy_http_version 1.1; proxy_set_header Connection "";'
                               if IS_NGINX else "")
        self.conf_path = os.path.join(self.tmp, "portico.conf")
        self.error_log_path = os.path.join(self.tmp, "error.log")
        self.access_log_path = os.path.join(self.tmp, "access.log")
        self.pid_path = os.path.join(self.tmp, "portico.pid")
        self.proc = None
        self.write_config(conf, full=full, main=main)
        if start:
            self.start()

    # -- config
    def compose(self, conf, full=False, main=""):
        body = render(conf, self.fields)
        if full:
            text = body
        else:
            text = (f"worker_processes 1;\nerror_log {self.error_log_path} info;\n"
                    f"pid {self.pid_path};\n{render(main, self.fields)}\nevents {{}}\n"
                    f"http {{\n    access_log {self.access_log_path};\n")
            if IS_NGINX:
                text += "".join(f"    {d}_temp_path {self.tmp}/{d}_temp;\n" for d in
                                ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            text += body + "\n}\n"
        if IS_NGINX and os.geteuid() == 0 and not re.search(r"(?m)^\s*user\s", text):
            text = "user root;\n" + text
        return text

    def write_config(self, conf, full=False, main=""):
        self.conf_text = self.compose(conf, full=full, main=main)
        tmpf = self.conf_path + ".new"
        with open(tmpf, "w") as f:
            f.write(self.conf_text)
        os.replace(tmpf, self.conf_path)

    @property
    def port(self):
        return self.fields["port"]

    @property
    def ports(self):
        """{"port": N, "port2": M, ...}: every allocated listen port field."""
        return {k: v for k, v in self.fields.items() if re.fullmatch(r"port\d*", k)}

    def listen_ports(self):
        return [int(p) for p in sorted(set(int(p) for p in re.findall(r"\blisten\s+127\.0\.0\.1:(\d+)", self.conf_text)))]

    # -- process
    def cmd(self, *args):
        if IS_NGINX:
            return [NGINX_BIN, "-p", self.tmp + "/", "-c", self.conf_path, "-g", "daemon off;", *args]
        return [PORTICO_BIN, "-c", self.conf_path, *args]

    def run_cmd(self, *args, timeout=20):
        """Run a one-shot command (-t, -T, -s ...). Returns CompletedProcess
        with .output = stdout+stderr."""
        if not IS_NGINX and not os.path.exists(PORTICO_BIN):
            pytest.fail(f"portico binary not found at {PORTICO_BIN} (set PORTICO_BIN or run make)")
        cmd = self.cmd(*args)
        if IS_NGINX and args and args[0] in ("-t", "-T", "-s", "-v"):
            cmd = [c for c in cmd if c not in ("-g", "daemon off;")]
        cp = subprocess.run(cmd, capture_output=True, timeout=timeout)
        cp.output = (cp.stdout + cp.stderr).decode("utf-8", "replace")
        return cp

    def start(self):
        if not IS_NGINX and not os.path.exists(PORTICO_BIN):
            pytest.fail(f"portico binary not found at {PORTICO_BIN} (set PORTICO_BIN or run make)")
        self.stdout = open(os.path.join(self.tmp, "stdout.txt"), "wb")
        self.stderr = open(os.path.join(self.tmp, "stderr.txt"), "wb")
        self.proc = subprocess.Popen(self.cmd(), stdout=self.stdout, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL, cwd=self.tmp)
        ports = self.listen_ports()
        deadline = time.monotonic() + START_TIMEOUT
        for p in ports:
            while not port_open(p):
                if self.proc.poll() is not None:
                    raise AssertionError(f"proxy exited with {self.proc.returncode} at start:\n"
                                         + self.diag())
                if time.monotonic() > deadline:
                    raise AssertionError(f"proxy not listening on {p} after {START_TIMEOUT}s\n"
                                         + self.diag())
                time.sleep(0.01)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    @property
    def error_log(self):
        return self._read(self.error_log_path)

    @property
    def access_log(self):
        return self._read(self.access_log_path)

    def access_lines(self):
        return [ln for ln in self.access_log.splitlines() if ln.strip()]

    def wait_access_lines(self, n, timeout=5.0):
        return wait_for(lambda: len(self.access_lines()) >= n and self.access_lines(),
                        timeout, what=f"{n} access log lines")

    def wait_error_log(self, pattern, timeout=5.0, since=0):
        rx = re.compile(pattern, re.I) if isinstance(pattern, str) else pattern
        return wait_for(lambda: rx.search(self.error_log[since:]), timeout,
                        what=f"error log matching {rx.pattern!r}")

    def diag(self):
        out = ""
        for name in ("stdout.txt", "stderr.txt"):
            out += f"--- {name}\n" + self._read(os.path.join(self.tmp, name))[-3000:]
        out += "--- error.log\n" + self.error_log[-3000:]
        return out

    def reload(self, conf=None, until=None, expect_fail=False, timeout=10.0, **kw):
        """Optionally rewrite the config, send SIGHUP and wait: on `until()`
        if given, else on the error-log line that says the reload finished
        (or failed, with expect_fail)."""
        if conf is not None:
            self.write_config(conf, **kw)
        since = len(self.error_log)
        self.signal(signal.SIGHUP)
        if until is not None:
            return wait_for(until, timeout, what="reload to take effect")
        if IS_NGINX:
            rx = NGINX_RELOAD_FAIL_RE if expect_fail else NGINX_RELOAD_DONE_RE
        else:
            rx = RELOAD_FAIL_RE if expect_fail else RELOAD_DONE_RE
        return self.wait_error_log(rx, timeout, since=since)

    @property
    def graceful_signal(self):
        # Portico: SIGTERM is graceful (issue 3). nginx: SIGQUIT is graceful.
        return signal.SIGQUIT if IS_NGINX else signal.SIGTERM

    def stop(self, sig=None, timeout=15.0):
        """Signal (default: graceful stop) and wait for exit; returns the code."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.signal(sig or self.graceful_signal)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"proxy did not exit within {timeout}s after stop")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()  # by PID
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if IS_NGINX:
            # nginx workers are our grandchildren; kill them by pid too
            for pid in _children_of(self.proc.pid if self.proc else -1):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for f in ("stdout", "stderr"):
            if hasattr(self, f):
                getattr(self, f).close()

    def rss_kib(self, field="VmRSS"):
        """Sum of `field` (kB) over the process and its children (nginx workers)."""
        total = 0
        for pid in [self.proc.pid] + _children_of(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for ln in f:
                        if ln.startswith(field + ":"):
                            total += int(ln.split()[1])
            except OSError:
                pass
        return total


def _children_of(ppid):
    out = []
    try:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        st = f.read()
                    fields = st[st.rindex(")") + 2:].split()
                    if int(fields[1]) == ppid:
                        out.append(int(d))
                except (OSError, ValueError):
                    pass
    except OSError:
        pass
    return out


class Resources:
    """Everything a test starts, torn down (killed by PID) at the end."""

    def __init__(self, tmp_factory, name):
        self.tmp_factory = tmp_factory
        self.name = re.sub(r"[^A-Za-z0-9_]", "_", name)[:40]
        self.items = []

    def proxy(self, conf, **kw):
        p = Proxy(self.tmp_factory.mktemp(self.name), conf, start=False, **kw)
        self.items.append(p)
        p.start()
        return p

    def proxy_unstarted(self, conf, **kw):
        p = Proxy(self.tmp_factory.mktemp(self.name), conf, start=False, **kw)
        self.items.append(p)
        return p

    def origin(self, name="o1", tls=None):
        o = HttpOrigin(name, tls=tls)
        self.items.append(o)
        return o

    def scripted(self, reply, **kw):
        o = ScriptedOrigin(reply, **kw)
        self.items.append(o)
        return o

    def reset_origin(self, read_request=False):
        o = ResetOrigin(read_request)
        self.items.append(o)
        return o

    def add(self, obj):
        self.items.append(obj)
        return obj

    def close(self):
        for it in reversed(self.items):
            try:
                if isinstance(it, Proxy):
                    it.kill()
                else:
                    it.stop()
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def res(tmp_path_factory, request):
    r = Resources(tmp_path_factory, request.node.name)
    yield r
    r.close()


@pytest.fixture(scope="module")
def mres(tmp_path_factory, request):
    r = Resources(tmp_path_factory, request.module.__name__)
    yield r
    r.close()


def pytest_report_header(config):
    return f"proxy under test: {UNDER_TEST} ({NGINX_BIN if IS_NGINX else PORTICO_BIN})"


def pytest_collection_modifyitems(config, items):
    if not IS_NGINX:
        return
    for item in items:
        m = item.get_closest_marker("nginx_differs")
        if m:
            item.add_marker(pytest.mark.xfail(reason="nginx is laxer than Portico's spec "
                                              + (m.args[0] if m.args else ""), strict=False))


class Background:
    """Run fn() in a thread; .result(timeout) returns its value or re-raises."""

    def __init__(self, fn):
        self.value = None
        self.exc = None
        self.t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.t.start()

    def _run(self, fn):
        try:
            self.value = fn()
        except BaseException as e:  # noqa: BLE001
            self.exc = e

    def result(self, timeout=15):
        self.t.join(timeout)
        if self.t.is_alive():
            raise AssertionError(f"background call still running after {timeout}s")
        if self.exc:
            raise AssertionError(f"background call failed: {self.exc!r}") from self.exc
        return self.value


class RawRecorder:
    """A one-shot origin on 127.0.0.1: accepts one connection, reads until one
    of `ends` appears (or EOF), keeps the raw bytes in .raw and answers
    200 "ok". For checking exactly what the proxy sent upstream."""

    def __init__(self, *ends):
        self.ends = ends
        self.raw = b""
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        c, _ = self.sock.accept()
        c.settimeout(10)
        buf = b""
        while not any(e in buf for e in self.ends):
            d = c.recv(65536)
            if not d:
                break
            buf += d
        self.raw = buf
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        c.close()

    def wait(self, timeout=10):
        self.thread.join(timeout)
        self.sock.close()
        return self.raw
