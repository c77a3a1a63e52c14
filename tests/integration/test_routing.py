"""Routing precedence: locations and server names, as nginx documents them.

Every location answers `return 200 "name"`, so no origin is involved.
https://nginx.org/en/docs/http/ngx_http_core_module.html#location
https://nginx.org/en/docs/http/server_names.html
"""
import pytest

from conftest import Conn, build_request, get

LOCATIONS = r"""
server {
    listen 127.0.0.1:{port};
    server_name loc.test;

    location = / { return 200 "exact-root"; }
    location / { return 200 "prefix-root"; }
    location /docs/ { return 200 "prefix-docs"; }
    location /docs/api/ { return 200 "prefix-docs-api"; }
    location ^~ /static/ { return 200 "caret-static"; }
    location = /exact { return 200 "exact"; }
    location /exact { return 200 "prefix-exact"; }
    location = /x.php { return 200 "exact-php"; }
    location /img/ { return 200 "prefix-img"; }
    location ^~ /pre/ { return 200 "caret-pre"; }
    location /pre/longer/ { return 200 "prefix-pre-longer"; }
    location /ab { return 200 "prefix-ab"; }
    location /nest/ {
        location ~ \.js$ { return 200 "nested-regex-js"; }
        location /nest/inner/ { return 200 "nested-prefix-inner"; }
        return 200 "prefix-nest";
    }
    location ~ \.php$ { return 200 "regex-php"; }
    location ~* \.(gif|jpg)$ { return 200 "regex-img-ci"; }
    location ~ ^/docs/.*\.txt$ { return 200 "regex-docs-txt"; }
    location ~ \.txt$ { return 200 "regex-txt"; }
    location ~ ^/order/ { return 200 "order-first"; }
    location ~ ^/order/x { return 200 "order-second"; }
    location ~ ^/cap/(\w+)/(\d+)$ { return 200 "cap-$1-$2"; }
}
"""

LOCATION_CASES = [
    ("/", "exact-root"),                           # = beats everything
    ("/index.html", "prefix-root"),
    ("/docs/", "prefix-docs"),
    ("/docs/intro", "prefix-docs"),
    ("/docs/api/v1", "prefix-docs-api"),           # longest prefix
    ("/docsx", "prefix-root"),                     # prefix is byte-wise, /docs/ needs the slash
    ("/DOCS/", "prefix-root"),                     # prefixes are case-sensitive
    ("/exact", "exact"),
    ("/exact?a=1", "exact"),                       # args do not take part
    ("/exact/", "prefix-exact"),                   # = needs the whole URI
    ("/exactly", "prefix-exact"),
    ("/x.php", "exact-php"),                       # = beats regex
    ("/y.php", "regex-php"),
    ("/docs/a.php", "regex-php"),                  # regex beats a plain longest prefix
    ("/static/a.php", "caret-static"),             # ^~ stops the regex search
    ("/static/a.gif", "caret-static"),
    ("/img/a.gif", "regex-img-ci"),
    ("/img/a.GIF", "regex-img-ci"),                # ~* ignores case
    ("/img/a.PHP", "prefix-img"),                  # ~ is case-sensitive
    ("/pre/a.php", "caret-pre"),
    ("/pre/longer/a.php", "regex-php"),            # ^~ only counts when it is the longest
    ("/pre/longer/a", "prefix-pre-longer"),
    ("/abc", "prefix-ab"),
    ("/docs/a.txt", "regex-docs-txt"),             # first matching regex in file order
    ("/b.txt", "regex-txt"),
    ("/order/x", "order-first"),
    ("/nest/a.js", "nested-regex-js"),             # nested regex of the chosen prefix
    ("/nest/a.css", "prefix-nest"),
    ("/nest/inner/b", "nested-prefix-inner"),      # nested prefix
    ("/nest/a.php", "regex-php"),                  # nested regex misses -> top-level regex
    ("/cap/abc/42", "cap-abc-42"),                 # captures usable in return text
    ("/%65xact", "exact"),                         # matching uses the decoded URI
    ("/docs/../exact", "exact"),                   # dot segments resolved
    ("/docs/./api/x", "prefix-docs-api"),
    ("//docs//api/x", "prefix-docs-api"),          # merge_slashes on
]


@pytest.fixture(scope="module")
def loc_proxy(mres):
    return mres.proxy(LOCATIONS)


@pytest.mark.parametrize("target,expected", LOCATION_CASES, ids=[c[0] for c in LOCATION_CASES])
def test_location(loc_proxy, target, expected):
    r = get(loc_proxy.port, target, host="loc.test")
    assert r.status == 200, r
    assert r.text == expected


SERVERS = r"""
server { listen 127.0.0.1:{port}; server_name first.test; return 200 "srv-first"; }
server { listen 127.0.0.1:{port} default_server; server_name _; return 200 "srv-default"; }
server { listen 127.0.0.1:{port}; server_name example.com www.example.com; return 200 "srv-exact"; }
server { listen 127.0.0.1:{port}; server_name *.example.com; return 200 "srv-wild-front"; }
server { listen 127.0.0.1:{port}; server_name *.a.example.com; return 200 "srv-wild-front-longer"; }
server { listen 127.0.0.1:{port}; server_name mail.*; return 200 "srv-wild-back"; }
server { listen 127.0.0.1:{port}; server_name ~^(?<sub>[a-z]+)\.regex\.test$; return 200 "srv-regex-$sub"; }
server { listen 127.0.0.1:{port}; server_name ~^www\..+\.org$; return 200 "srv-regex-first"; }
server { listen 127.0.0.1:{port}; server_name ~^www\.x\.org$; return 200 "srv-regex-second"; }
server { listen 127.0.0.1:{port}; server_name .dot.test; return 200 "srv-dot"; }
server { listen 127.0.0.1:{port}; server_name ~^mail\.regex-vs-wild\.com$; return 200 "srv-regex-mail"; }
server { listen 127.0.0.1:{port2}; server_name one.test; return 200 "p2-first-implicit-default"; }
server { listen 127.0.0.1:{port2}; server_name two.test; return 200 "p2-two"; }
"""

SERVER_CASES = [
    ("example.com", "srv-exact"),
    ("www.example.com", "srv-exact"),               # exact beats *.example.com
    ("EXAMPLE.COM", "srv-exact"),                   # names are case-insensitive
    ("example.com:8080", "srv-exact"),              # port is not part of the name
    ("example.com.", "srv-exact"),                  # trailing dot dropped
    ("foo.example.com", "srv-wild-front"),
    ("x.a.example.com", "srv-wild-front-longer"),   # longest leading wildcard
    ("mail.example.com", "srv-wild-front"),         # leading wildcard beats trailing
    ("mail.foo.net", "srv-wild-back"),
    ("mail.regex-vs-wild.com", "srv-wild-back"),    # trailing wildcard beats regex
    ("abc.regex.test", "srv-regex-abc"),            # named capture in return
    ("www.x.org", "srv-regex-first"),               # first regex in file order
    ("dot.test", "srv-dot"),                        # .name = name and *.name
    ("a.b.dot.test", "srv-dot"),
    ("first.test", "srv-first"),
    ("unknown.test", "srv-default"),                # default_server, not the first one
    ("example.com.evil", "srv-default"),
]


@pytest.fixture(scope="module")
def srv_proxy(mres):
    return mres.proxy(SERVERS)


@pytest.mark.parametrize("host,expected", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_name(srv_proxy, host, expected):
    r = get(srv_proxy.port, "/", host=host)
    assert r.status == 200, r
    assert r.text == expected


def test_server_name_http10_without_host_goes_to_default(srv_proxy):
    with Conn(srv_proxy.port) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.text == "srv-default"


def test_server_name_absolute_form_uses_its_host(srv_proxy):
    with Conn(srv_proxy.port) as c:
        c.send(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.text == "srv-exact"


def test_first_server_is_implicit_default(srv_proxy):
    p2 = srv_proxy.fields["port2"]
    assert get(p2, "/", host="nope.test").text == "p2-first-implicit-default"
    assert get(p2, "/", host="two.test").text == "p2-two"


def test_routing_per_request_on_keepalive(srv_proxy):
    """Each request on one connection is routed by its own Host."""
    with Conn(srv_proxy.port) as c:
        c.send(build_request(host="example.com") + build_request(host="foo.example.com")
               + build_request(host="unknown.test"))
        got = [c.read_response().text for _ in range(3)]
    assert got == ["srv-exact", "srv-wild-front", "srv-default"]
