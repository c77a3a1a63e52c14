"""auth_request / auth_request_set (nginx's auth request module): access
decided by a subrequest to an authentication service. The cases pass against
nginx 1.22 too (PROXY_UNDER_TEST=nginx), except where marked."""
import threading

import pytest

from conftest import IS_NGINX, _Server, get, request


class AuthService(_Server):
    """Answers by the request's Authorization: "ok <user>" 200 with X-User,
    "expired" 401 with a challenge, "banned" 403, "broken" 500; records the
    requests it saw (method, target, headers, body length)."""

    def __init__(self):
        self.seen = []
        self.hung_up = 0
        super().__init__("auth")

    def handle(self, s, cid, peer):
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            method, target, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                h = f.readline()
                if h in (b"\r\n", b""):
                    break
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0") or 0)
            body = f.read(n) if n else b""
            with self.lock:
                self.seen.append({"method": method, "target": target, "headers": headers,
                                  "body": body})
            auth = headers.get("authorization", "")
            if auth == "hang":
                while f.read(1):  # never answers; returns when the proxy lets go
                    pass
                with self.lock:
                    self.hung_up += 1
                return
            if auth.startswith("ok "):
                head = b"HTTP/1.1 200 OK\r\nX-User: %s\r\n" % auth[3:].encode()
            elif auth == "expired":
                head = b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="sso"\r\n'
            elif auth == "banned":
                head = b"HTTP/1.1 403 Forbidden\r\n"
            else:
                head = b"HTTP/1.1 500 Oops\r\n"
            s.sendall(head + b"Content-Length: 4\r\n\r\nbody")


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def auth(mres):
    return mres.add(AuthService())


@pytest.fixture(scope="module")
def px(mres, origin, auth):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /private/ {
                auth_request /_auth;
                auth_request_set $user $upstream_http_x_user;
                auth_request_set $auth_status $upstream_status;
                proxy_set_header X-User $user;
                add_header X-Auth-Status $auth_status always;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /login-page/ {
                auth_request /_auth;
                error_page 401 = /signin;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location = /signin { return 200 "please sign in"; }
            location = /_auth {
                internal;
                proxy_pass http://127.0.0.1:%(a)d/check;
                proxy_pass_request_body off;
                proxy_set_header Content-Length "";
                proxy_set_header X-Original-URI $request_uri;
            }
            location /public/ { proxy_pass http://127.0.0.1:%(o)d; }
        }
    """ % {"o": origin.port, "a": auth.port})


def seen_header(origin, name):
    return {k.lower(): v for k, v in origin.requests[-1]["headers"]}.get(name.lower())


def test_allowed_with_variables_from_the_service(px, origin, auth):
    r = get(px.port, "/private/doc?x=1", headers=[("Authorization", "ok ann")])
    assert r.status == 200
    assert seen_header(origin, "X-User") == "ann"
    assert r.header("X-Auth-Status") == "200"
    sub = auth.seen[-1]
    assert sub["method"] == "GET" and sub["target"] == "/check"
    assert sub["headers"]["x-original-uri"] == "/private/doc?x=1"
    assert sub["headers"]["authorization"] == "ok ann"


def test_401_and_403_are_passed_on(px, origin):
    n = len(origin.requests)
    r = get(px.port, "/private/doc", headers=[("Authorization", "expired")])
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="sso"'
    r = get(px.port, "/private/doc", headers=[("Authorization", "banned")])
    assert r.status == 403 and not r.has("WWW-Authenticate")
    assert len(origin.requests) == n  # nothing reached the application


def test_other_statuses_are_errors(px):
    assert get(px.port, "/private/doc").status == 500


def test_the_request_body_stays_with_the_request(px, origin, auth):
    body = b"x" * 10000
    r = request(px.port, "POST", "/private/upload", body=body,
                headers=[("Authorization", "ok bob"), ("Content-Length", str(len(body)))])
    assert r.status == 200
    assert auth.seen[-1]["body"] == b"" and auth.seen[-1]["method"] == "GET"
    assert origin.requests[-1]["body_len"] == len(body)
    assert origin.requests[-1]["method"] == "POST"


def test_error_page_for_a_denied_request(px):
    r = get(px.port, "/login-page/x", headers=[("Authorization", "expired")])
    assert r.status == 200 and r.body == b"please sign in"


def test_the_auth_location_is_internal(px):
    assert get(px.port, "/_auth").status == 404
    assert get(px.port, "/public/x").status == 200


def test_many_at_once(px, origin):
    results = []

    def one(i):
        r = get(px.port, f"/private/{i}", headers=[("Authorization", f"ok u{i}")])
        results.append(r.status)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [200] * 20


def test_client_leaving_ends_the_subrequest(px, auth):
    """the client goes while the service thinks: the subrequest's connection
    is closed too, and the proxy goes on serving"""
    import socket
    from conftest import wait_for
    c = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    c.sendall(b"GET /private/slow HTTP/1.1\r\nHost: x\r\nAuthorization: hang\r\n\r\n")
    wait_for(lambda: any(s["headers"].get("authorization") == "hang" for s in auth.seen), 5,
             what="the subrequest at the service")
    c.close()
    wait_for(lambda: auth.hung_up == 1, 5, what="the subrequest's connection closed")
    assert get(px.port, "/private/after", headers=[("Authorization", "ok ann")]).status == 200
