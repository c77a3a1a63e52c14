"""secure_link / secure_link_md5 / secure_link_secret and $secure_link,
$secure_link_expires (nginx's secure link module): signed, expiring URLs.
The cases pass against nginx 1.22 too (PROXY_UNDER_TEST=nginx)."""
import base64
import hashlib
import time

import pytest

from conftest import get


@pytest.fixture(scope="module")
def px(mres, tmp_path_factory):
    d = tmp_path_factory.mktemp("sl")
    (d / "report.pdf").write_bytes(b"%PDF secret")
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /dl/ {
                alias %(d)s/;
                secure_link $arg_md5,$arg_expires;
                secure_link_md5 "$secure_link_expires$uri$remote_addr s3cret";
                if ($secure_link = "") { return 403; }
                if ($secure_link = "0") { return 410; }
            }
            location /p/ {
                secure_link_secret word;
                if ($secure_link = "") { return 403; }
                return 200 "link=$secure_link";
            }
        }
    """ % {"d": d})


def sign(uri, expires, addr="127.0.0.1", secret="s3cret"):
    h = hashlib.md5(f"{expires}{uri}{addr} {secret}".encode()).digest()
    return base64.urlsafe_b64encode(h).decode().rstrip("=")


def test_valid_link(px):
    exp = int(time.time()) + 300
    r = get(px.port, f"/dl/report.pdf?md5={sign('/dl/report.pdf', exp)}&expires={exp}")
    assert r.status == 200 and r.body == b"%PDF secret"


def test_expired_link(px):
    exp = int(time.time()) - 10
    assert get(px.port, f"/dl/report.pdf?md5={sign('/dl/report.pdf', exp)}&expires={exp}").status == 410


@pytest.mark.parametrize("query", [
    "", "md5=&expires=1", "md5=garbage&expires=99999999999",
    "md5={other}&expires={exp}", "md5={good}&expires={exp_plus}", "md5={good}&expires=x1",
])
def test_bad_links(px, query):
    exp = int(time.time()) + 300
    q = query.format(good=sign("/dl/report.pdf", exp), other=sign("/dl/other.pdf", exp),
                     exp=exp, exp_plus=exp + 1)
    assert get(px.port, f"/dl/report.pdf?{q}").status == 403


def test_secret_form(px):
    h = hashlib.md5(b"files/a.txt" + b"word").hexdigest()
    r = get(px.port, f"/p/{h}/files/a.txt")
    assert r.status == 200 and r.body == b"link=files/a.txt"
    assert get(px.port, f"/p/{'0' * 32}/files/a.txt").status == 403
    assert get(px.port, "/p/short/files/a.txt").status == 403
