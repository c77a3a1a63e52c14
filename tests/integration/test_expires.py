"""expires (nginx's headers module): Expires and Cache-Control on 2xx/3xx
answers, replacing the upstream's. The behavioural cases pass against nginx
too (PROXY_UNDER_TEST=nginx)."""
import email.utils
import os

import pytest

from conftest import IS_NGINX, get


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def ep(mres, origin, tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    (d / "f.css").write_bytes(b"body{}\n")
    os.utime(d / "f.css", (1700000000, 1700000000))
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            expires 1h;
            location /up/ { proxy_pass http://127.0.0.1:%(o)d; }
            location /epoch/ { expires epoch; proxy_pass http://127.0.0.1:%(o)d; }
            location /max/ { expires max; proxy_pass http://127.0.0.1:%(o)d; }
            location /past/ { expires -1; proxy_pass http://127.0.0.1:%(o)d; }
            location /off/ { expires off; proxy_pass http://127.0.0.1:%(o)d; }
            location /daily/ { expires @3h30m; proxy_pass http://127.0.0.1:%(o)d; }
            location /files/ { alias %(d)s/; expires modified 10d; }
            location /ret/ { return 301 /elsewhere; }
        }
    """ % {"o": origin.port, "d": d})


def when(r, name):
    return email.utils.parsedate_to_datetime(r.header(name)).timestamp()


def test_relative_time_replaces_upstream_caching(ep):
    r = get(ep.port, "/up/x?h=Cache-Control:no-store&h=Expires:0")
    assert r.status == 200
    assert r.header_all("Cache-Control") == ["max-age=3600"]
    assert len(r.header_all("Expires")) == 1
    assert when(r, "Expires") - when(r, "Date") == pytest.approx(3600, abs=2)


def test_epoch_max_and_past(ep):
    r = get(ep.port, "/epoch/x")
    assert r.header("Expires") == "Thu, 01 Jan 1970 00:00:01 GMT"
    assert r.header("Cache-Control") == "no-cache"
    r = get(ep.port, "/max/x")
    assert r.header("Expires") == "Thu, 31 Dec 2037 23:55:55 GMT"
    assert r.header("Cache-Control") == "max-age=315360000"
    r = get(ep.port, "/past/x")
    assert r.header("Cache-Control") == "no-cache"
    assert when(r, "Expires") < when(r, "Date") + 1


def test_off_and_statuses(ep):
    r = get(ep.port, "/off/x?h=Cache-Control:private")
    assert r.header("Cache-Control") == "private" and not r.has("Expires")
    r = get(ep.port, "/up/status/404")
    assert r.status == 404 and not r.has("Expires")
    r = get(ep.port, "/up/status/500")
    assert not r.has("Expires")
    r = get(ep.port, "/ret/")
    assert r.status == 301 and r.header("Cache-Control") == "max-age=3600"


def test_daily(ep):
    r = get(ep.port, "/daily/x")
    age = int(r.header("Cache-Control").split("=")[1])
    assert 0 < age <= 86400


def test_modified_counts_from_last_modified(ep):
    r = get(ep.port, "/files/f.css")
    assert r.status == 200
    assert when(r, "Expires") == 1700000000 + 10 * 86400
    # long past: no-cache
    assert r.header("Cache-Control") == "no-cache"


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("expires soon;", 'invalid value "soon"'),
    ("expires @25h;", "less than 24 hours"),
    ("expires modified epoch;", 'invalid value "epoch"'),
    ("expires later 1h;", 'invalid value "later"'),
])
def test_bad_expires_refused(res, text, msg):
    p = res.proxy_unstarted("server {\n listen 127.0.0.1:{port};\n %s\n}" % text)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output
