"""proxy_cookie_domain, proxy_cookie_path, proxy_cookie_flags and
proxy_method (nginx's proxy module). The cases pass against nginx 1.22 too
(PROXY_UNDER_TEST=nginx)."""
import urllib.parse

import pytest

from conftest import get, request


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def px(mres, origin):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /app/ {
                proxy_pass http://127.0.0.1:%(o)d;
                proxy_cookie_domain internal.local $host;
                proxy_cookie_domain ~^(.+)\\.corp$ $1.example;
                proxy_cookie_path /internal/ /app/;
                proxy_cookie_path ~^/legacy/(.*)$ /old/$1;
                proxy_cookie_flags session secure httponly samesite=lax;
                proxy_cookie_flags ~^tmp_ nosecure nohttponly;
            }
            location /off/ {
                proxy_pass http://127.0.0.1:%(o)d;
                proxy_cookie_path off;
                proxy_cookie_flags off;
            }
            location /m/ { proxy_pass http://127.0.0.1:%(o)d; proxy_method POST; }
        }
    """ % {"o": origin.port})


def cookie(px, value, path="/app/x"):
    q = "h=" + urllib.parse.quote("Set-Cookie:" + value, safe="")
    return get(px.port, f"{path}?{q}", host="shop.test").header("Set-Cookie")


@pytest.mark.parametrize("sent,seen", [
    ("a=1; Domain=internal.local; Path=/", "a=1; Domain=shop.test; Path=/"),
    ("a=1; domain=.INTERNAL.local", "a=1; domain=.shop.test"),
    ("a=1; Domain=shop.corp", "a=1; Domain=shop.example"),
    ("a=1; Domain=other.org", "a=1; Domain=other.org"),
    ("a=1; Path=/internal/cart", "a=1; Path=/app/cart"),
    ("a=1; Path=/legacy/x/y", "a=1; Path=/old/x/y"),
    ("a=1; Path=/elsewhere", "a=1; Path=/elsewhere"),
])
def test_domain_and_path(px, sent, seen):
    assert cookie(px, sent) == seen


def test_flags_added_and_removed(px):
    v = cookie(px, "session=abc; Path=/internal/")
    parts = [p.strip().lower() for p in v.split(";")]
    assert parts[0] == "session=abc" and "path=/app/" in parts
    assert "secure" in parts and "httponly" in parts and "samesite=lax" in parts
    v = cookie(px, "tmp_x=1; Secure; HttpOnly; Path=/")
    assert [p.strip() for p in v.split(";")] == ["tmp_x=1", "Path=/"]
    v = cookie(px, "session=abc; SameSite=None; Secure")
    parts = [p.strip().lower() for p in v.split(";")]
    assert parts.count("secure") == 1 and "samesite=lax" in parts and "samesite=none" not in parts


def test_off_cancels_inherited_rules(px):
    assert cookie(px, "session=abc; Path=/internal/", path="/off/x") == "session=abc; Path=/internal/"


def test_proxy_method(px, origin):
    r = request(px.port, "GET", "/m/x")
    assert r.status == 200 and origin.requests[-1]["method"] == "POST"
