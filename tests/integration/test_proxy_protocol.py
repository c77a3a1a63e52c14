"""listen ... proxy_protocol: a PROXY protocol v1/v2 header names the client
($proxy_protocol_addr; with real_ip_header proxy_protocol, $remote_addr),
then the connection speaks HTTP/1.1, TLS or HTTP/2 as usual."""
import socket
import struct

import pytest

from conftest import IS_NGINX, parse_one, wait_for

pytestmark = pytest.mark.skipif(IS_NGINX, reason="Portico's log lines")

CONF = """
server {
    listen 127.0.0.1:{port} proxy_protocol;
    location / {
        return 200 "$remote_addr|$proxy_protocol_addr|$proxy_protocol_port|$proxy_protocol_server_addr\\n";
    }
}
server {
    listen 127.0.0.1:{port2} proxy_protocol;
    set_real_ip_from 127.0.0.1;
    real_ip_header proxy_protocol;
    location / { return 200 "$remote_addr|$realip_remote_addr\\n"; }
}
server {
    listen 127.0.0.1:{port3} proxy_protocol http2 h2c_only;
    location / { return 200 "h2 $proxy_protocol_addr\\n"; }
}
"""

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def exchange(port, data, pieces=1):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        s.sendall(data[i:i + step])
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:  # closed with our bytes unread: a reset
            break
        if not d:
            break
        out += d
    s.close()
    return out


def body(raw):
    return parse_one(raw, True)[0].body.decode().strip()


def v2(src, sport, dst, dport, cmd=0x21):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([cmd, 0x11]) + struct.pack("!H", len(addrs)) + addrs


@pytest.fixture(scope="module")
def pp(mres):
    return mres.proxy(CONF)


def test_v1_and_v2_headers(pp):
    raw = exchange(pp.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n" + GET)
    assert body(raw) == "127.0.0.1|203.0.113.7|56324|10.0.0.1"
    raw = exchange(pp.port, b"PROXY TCP6 2001:db8::9 ::1 4000 80\r\n" + GET, pieces=7)
    assert body(raw) == "127.0.0.1|2001:db8::9|4000|::1"
    raw = exchange(pp.port, v2("198.51.100.9", 8080, "10.0.0.1", 443) + GET, pieces=5)
    assert body(raw) == "127.0.0.1|198.51.100.9|8080|10.0.0.1"
    # LOCAL (a balancer's health check) and UNKNOWN: the connection's address
    assert body(exchange(pp.port, v2("1.1.1.1", 1, "2.2.2.2", 2, cmd=0x20) + GET)) == "127.0.0.1|||"
    assert body(exchange(pp.port, b"PROXY UNKNOWN\r\n" + GET)) == "127.0.0.1|||"


def test_real_ip_header_proxy_protocol(pp):
    raw = exchange(pp.fields["port2"], b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n" + GET)
    assert body(raw) == "203.0.113.7|127.0.0.1"


def test_broken_or_missing_header_closes(pp):
    assert exchange(pp.port, GET) == b""  # no header: closed, nothing answered
    assert exchange(pp.port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n" + GET) == b""
    pp.wait_error_log(r"broken PROXY protocol header from 127\.0\.0\.1:\d+: closing")
    assert body(exchange(pp.port, b"PROXY UNKNOWN\r\n" + GET)).startswith("127.0.0.1")


def test_h2c_after_the_header(pp):
    import h2.connection
    import h2.config
    import h2.events
    s = socket.create_connection(("127.0.0.1", pp.fields["port3"]), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                       (":authority", "x")], end_stream=True)
    s.sendall(b"PROXY TCP4 192.0.2.44 10.0.0.1 1 2\r\n" + c.data_to_send())
    got, done = b"", False
    while not done:
        d = s.recv(65536)
        assert d
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.DataReceived):
                got += ev.data
            if isinstance(ev, h2.events.StreamEnded):
                done = True
        s.sendall(c.data_to_send())
    s.close()
    assert got == b"h2 192.0.2.44\n"
