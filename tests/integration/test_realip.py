"""set_real_ip_from, real_ip_header, real_ip_recursive (nginx's realip
module): behind a trusted proxy, $remote_addr is the client the proxy names.
The behavioural cases pass against nginx too (PROXY_UNDER_TEST=nginx)."""
import socket

import pytest

from conftest import IS_NGINX, Conn, build_request, get, parse_one

SHOW = 'return 200 "$remote_addr|$realip_remote_addr|$remote_port\\n";'


@pytest.fixture(scope="module")
def rp(mres):
    # a return answers in the rewrite phase, before a location's own realip
    # settings apply (nginx's order), so each header setup is a server here
    o = mres.origin()
    return mres.proxy("""
        set_real_ip_from 127.0.0.1;
        set_real_ip_from 10.0.0.0/8;
        server {
            listen 127.0.0.1:{port};
            location /real/ { %(show)s }
            location /up/ {
                real_ip_header X-Forwarded-For;
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                proxy_pass http://127.0.0.1:%(o)d;
            }
        }
        server {
            listen 127.0.0.1:{port2};
            if ($remote_addr = 192.0.2.9) { return 403; }
            location / { return 200 "in\\n"; }
        }
        server {
            listen 127.0.0.1:{port3};
            real_ip_header X-Forwarded-For;
            location /xff/ { %(show)s }
        }
        server {
            listen 127.0.0.1:{port4};
            real_ip_header X-Forwarded-For;
            real_ip_recursive on;
            location /rec/ { %(show)s }
        }
    """ % {"show": SHOW, "o": o.port})


def addr(port, path, headers):
    return get(port, path, headers=headers).text.strip().split("|")


def xff(rp):
    return rp.fields["port3"]


def rec(rp):
    return rp.fields["port4"]


def test_x_real_ip_from_a_trusted_peer(rp):
    assert addr(rp.port, "/real/", [("X-Real-IP", "203.0.113.7")])[:2] == ["203.0.113.7", "127.0.0.1"]
    assert addr(rp.port, "/real/", [])[0] == "127.0.0.1"  # no field: unchanged


def test_forwarded_for_last_or_recursive(rp):
    h = [("X-Forwarded-For", "198.51.100.1, 10.0.0.5")]
    assert addr(xff(rp), "/xff/", h)[0] == "10.0.0.5"
    assert addr(rec(rp), "/rec/", h)[0] == "198.51.100.1"
    # every address trusted: the leftmost one
    assert addr(rec(rp), "/rec/", [("X-Forwarded-For", "10.0.0.1, 10.0.0.2")])[0] == "10.0.0.1"
    # two fields are one list
    two = [("X-Forwarded-For", "198.51.100.2"), ("X-Forwarded-For", "10.1.1.1")]
    assert addr(rec(rp), "/rec/", two)[0] == "198.51.100.2"


def test_ports_ipv6_and_garbage(rp):
    a = addr(xff(rp), "/xff/", [("X-Forwarded-For", "192.0.2.5:8080")])
    assert a[0] == "192.0.2.5" and a[2] == "8080"
    assert addr(xff(rp), "/xff/", [("X-Forwarded-For", "[2001:db8::1]:443")])[0] == "2001:db8::1"
    assert addr(xff(rp), "/xff/", [("X-Forwarded-For", "2001:db8::2")])[0] == "2001:db8::2"
    assert addr(xff(rp), "/xff/", [("X-Forwarded-For", "not-an-ip")])[0] == "127.0.0.1"


def test_an_untrusted_peer_is_not_believed(rp):
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", rp.port))
    s.sendall(build_request("GET", "/real/", headers=[("X-Real-IP", "203.0.113.7")], close=True))
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    r = parse_one(data, True)[0]
    assert r.body.decode().split("|")[0] == "127.0.0.2"


def test_forwarded_header_and_rewrite_see_the_real_address(rp):
    r = get(rp.port, "/up/x", headers=[("X-Forwarded-For", "198.51.100.1")])
    xff = [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-for"]
    assert xff == ["198.51.100.1, 198.51.100.1"]  # the incoming list + $remote_addr
    port2 = rp.fields["port2"]
    assert get(port2, "/", headers=[("X-Real-IP", "192.0.2.9")]).status == 403
    assert get(port2, "/", headers=[("X-Real-IP", "192.0.2.10")]).status == 200


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("set_real_ip_from 10.0.0.0/33;", 'invalid address or network "10.0.0.0/33"'),
    ("set_real_ip_from unix:;", '"unix:" is not supported'),
    ("real_ip_header X-Bad:Name;", 'invalid header name "X-Bad:Name"'),
])
def test_bad_realip_directives(res, text, msg):
    p = res.proxy_unstarted(text + "\nserver { listen 127.0.0.1:{port}; }")
    out = p.run_cmd("-t").output
    assert msg in out and "portico.conf:8:" in out, out


@pytest.mark.parametrize("kind,headers,want", [
    ("xff", [("X-Forwarded-For", "198.51.100.1, ")], "198.51.100.1"),  # empty entries skipped
    ("xff", [("X-Forwarded-For", "198.51.100.1,,")], "198.51.100.1"),
    ("xff", [("X-Forwarded-For", "198.51.100.1 198.51.100.2")], "198.51.100.2"),  # spaces separate
    ("rec", [("X-Forwarded-For", "bogus, 10.0.0.2")], "10.0.0.2"),  # a bad entry stops the walk
    ("real", [("X-Real-IP", "198.51.100.1"), ("X-Real-IP", "198.51.100.2")], "198.51.100.1"),
    ("real", [("X-Real-IP", " 198.51.100.4 ")], "198.51.100.4"),
])
def test_list_forms_as_nginx(rp, kind, headers, want):
    port = {"real": rp.port, "xff": xff(rp), "rec": rec(rp)}[kind]
    path = {"real": "/real/", "xff": "/xff/", "rec": "/rec/"}[kind]
    assert addr(port, path, headers)[0] == want
