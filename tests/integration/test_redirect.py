"""proxy_redirect and the absolute form of redirects (absolute_redirect,
port_in_redirect, server_name_in_redirect). The cases pass against nginx
1.22 too (PROXY_UNDER_TEST=nginx)."""
import urllib.parse

import pytest

from conftest import IS_NGINX, get


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


def loc(port, path, value, name="Location", host="localhost", status=302):
    """Ask the origin for `status` with header name: value; return the
    Location/Refresh the client gets."""
    q = urllib.parse.urlencode({"h": f"{name}:{value}"})
    r = get(port, f"{path}status/{status}?{q}", host=host)
    assert r.status == status, r
    return r.header(name)


@pytest.fixture(scope="module")
def rp(mres, origin):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            server_name primary.test;
            location /one/ { proxy_pass http://127.0.0.1:%(o)d/two/; }
            location /plain/ { proxy_pass http://127.0.0.1:%(o)d; }
            location /off/ { proxy_pass http://127.0.0.1:%(o)d/two/; proxy_redirect off; }
            location /explicit/ {
                proxy_pass http://127.0.0.1:%(o)d/two/;
                proxy_redirect http://127.0.0.1:%(o)d/two/ https://public.example/;
                proxy_redirect http://backend.internal/ $scheme://$host:$server_port/b/;
            }
            location /re/ {
                proxy_pass http://127.0.0.1:%(o)d/two/;
                proxy_redirect ~^http://[^/]+/two/(.*)$ /r/$1;
                proxy_redirect ~*^HTTPS://CI\\.example/(?<rest>.*)$ /ci/$rest;
            }
            location /rel/ {
                proxy_pass http://127.0.0.1:%(o)d/two/;
                absolute_redirect off;
            }
            location /noport/ {
                proxy_pass http://127.0.0.1:%(o)d/two/;
                port_in_redirect off;
            }
            location /byname/ {
                proxy_pass http://127.0.0.1:%(o)d/two/;
                server_name_in_redirect on;
            }
            location = /local { return 301 /target; }
            location = /local-rel { absolute_redirect off; return 301 /target; }
        }
    """ % {"o": origin.port})


def test_default_maps_the_upstream_url_to_the_location(rp, origin):
    o, p = origin.port, rp.port
    assert loc(p, "/one/", f"http://127.0.0.1:{o}/two/x?y=1") == f"http://localhost:{p}/one/x?y=1"
    # without a URI part: "http://host:port/" -> "/"
    assert loc(p, "/plain/", f"http://127.0.0.1:{o}/a/b") == f"http://localhost:{p}/a/b"


def test_what_does_not_match_is_left_alone(rp, origin):
    p = rp.port
    assert loc(p, "/one/", "http://other.example/x") == "http://other.example/x"
    assert loc(p, "/one/", "/relative/x") == "/relative/x"  # never made absolute
    assert loc(p, "/off/", f"http://127.0.0.1:{origin.port}/two/x") == \
        f"http://127.0.0.1:{origin.port}/two/x"


def test_explicit_rules_first_match_and_variables(rp, origin):
    p = rp.port
    assert loc(p, "/explicit/", f"http://127.0.0.1:{origin.port}/two/z") == "https://public.example/z"
    assert loc(p, "/explicit/", "http://backend.internal/q") == f"http://localhost:{p}/b/q"
    # this level replaces the inherited default
    assert loc(p, "/explicit/", "http://elsewhere/two/x") == "http://elsewhere/two/x"


def test_regex_rules_with_captures(rp):
    p = rp.port
    assert loc(p, "/re/", "http://anything:81/two/deep/x") == f"http://localhost:{p}/r/deep/x"
    assert loc(p, "/re/", "https://ci.EXAMPLE/k") == f"http://localhost:{p}/ci/k"


def test_refresh_field(rp, origin):
    v = loc(rp.port, "/one/", f"5; url=http://127.0.0.1:{origin.port}/two/page", name="Refresh",
            status=200)
    assert v == "5; url=/one/page"


def test_absolute_port_and_name(rp, origin):
    o, p = origin.port, rp.port
    assert loc(p, "/rel/", f"http://127.0.0.1:{o}/two/x") == "/rel/x"
    assert loc(p, "/noport/", f"http://127.0.0.1:{o}/two/x") == "http://localhost/noport/x"
    assert loc(p, "/byname/", f"http://127.0.0.1:{o}/two/x", host="other.test") == \
        f"http://primary.test:{p}/byname/x"


def test_local_redirects(rp):
    r = get(rp.port, "/local", host="h.test")
    assert r.status == 301 and r.header("Location") == f"http://h.test:{rp.port}/target"
    assert get(rp.port, "/local-rel").header("Location") == "/target"


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("proxy_redirect sideways;", 'invalid parameter "sideways"'),
    ("proxy_redirect ~^(x /y;", "pcre2_compile() failed"),
    ("proxy_redirect off; proxy_redirect / /x;", '"proxy_redirect off" with other'),
    ("proxy_redirect / $nope_zzz;", 'unknown "nope_zzz" variable'),
])
def test_bad_proxy_redirect_is_refused(res, text, msg):
    p = res.proxy_unstarted("server {\n listen 127.0.0.1:{port};\n location / { %s }\n}" % text)
    out = p.run_cmd("-t").output
    assert msg in out and "portico.conf:10:" in out, out
