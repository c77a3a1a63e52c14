"""allow / deny (nginx's access module): in order, the first match decides,
after realip, a level's rules replacing the inherited ones. The behavioural
cases pass against nginx too (PROXY_UNDER_TEST=nginx)."""
import socket

import pytest

from conftest import IS_NGINX, get


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def ap(mres, origin):
    v6 = "listen [::1]:{port};" if has_ipv6_loopback() else ""
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            %(v6)s
            deny 192.0.2.0/24;
            location /closed/ { deny all; proxy_pass http://127.0.0.1:%(o)d; }
            location /lan/ {
                allow 127.0.0.0/8;
                allow ::1;
                deny all;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /order/ {
                deny 127.0.0.1;
                allow all;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /v6only/ {
                allow ::1;
                deny all;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /early/ {
                return 200 "return runs before access\\n";
                deny all;
            }
            location /page/ {
                deny all;
                error_page 403 /denied.html;
            }
            location = /denied.html { return 403 "custom denied\\n"; }
            location /behind/ {
                set_real_ip_from 127.0.0.1;
                real_ip_header X-Forwarded-For;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /behind-open/ {
                set_real_ip_from 127.0.0.1;
                real_ip_header X-Forwarded-For;
                allow all;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location / { proxy_pass http://127.0.0.1:%(o)d; }
        }
    """ % {"o": origin.port, "v6": v6})


def test_deny_all(ap, origin):
    origin.clear()
    r = get(ap.port, "/closed/x")
    assert r.status == 403
    assert origin.requests == []
    if not IS_NGINX:
        ap.wait_error_log(r"access forbidden by rule, client: 127\.0\.0\.1")


def test_allow_then_deny(ap):
    assert get(ap.port, "/lan/x").status == 200


def test_first_match_wins(ap):
    assert get(ap.port, "/order/").status == 403


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
def test_ipv6_rules(ap):
    assert get(ap.port, "/v6only/").status == 403  # over 127.0.0.1
    with socket.create_connection(("::1", ap.port), timeout=5) as s:
        s.sendall(b"GET /v6only/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]


def test_return_comes_before_access(ap):
    r = get(ap.port, "/early/")
    assert r.status == 200


def test_error_page_for_403(ap):
    r = get(ap.port, "/page/x")
    assert r.status == 403 and r.body == b"custom denied\n"


def test_rules_follow_realip(ap):
    r = get(ap.port, "/behind/x", headers=[("X-Forwarded-For", "192.0.2.7")])
    assert r.status == 403  # the server-level deny 192.0.2.0/24, for the real client
    r = get(ap.port, "/behind/x", headers=[("X-Forwarded-For", "198.51.100.7")])
    assert r.status == 200


def test_location_rules_replace_server_rules(ap):
    # rules of its own: the server's deny 192.0.2.0/24 is not added to them
    r = get(ap.port, "/behind-open/x", headers=[("X-Forwarded-For", "192.0.2.7")])
    assert r.status == 200


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("allow everyone;", 'invalid parameter "everyone"'),
    ("deny 10.0.0.0/33;", 'invalid parameter "10.0.0.0/33"'),
    ("allow unix:;", '"unix:" is not supported'),
])
def test_bad_rules_are_refused(res, text, msg):
    p = res.proxy_unstarted("server {\n listen 127.0.0.1:{port};\n %s\n}" % text)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output
