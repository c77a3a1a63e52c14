"""auth_basic with an htpasswd file (every form nginx reads: crypt(3)
schemes, Apache's $apr1$, {SHA}, {SSHA}, {PLAIN}), and `satisfy` with
allow/deny. The behavioural cases pass against nginx too
(PROXY_UNDER_TEST=nginx)."""
import base64
import hashlib
import subprocess
import warnings

import pytest

from conftest import IS_NGINX, get

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def openssl_passwd(*args):
    return subprocess.run(["openssl", "passwd", *args, "pw-" + args[0].strip("-")],
                          capture_output=True, text=True, check=True).stdout.strip()


def ssha(pw, salt=b"NaCl"):
    return "{SSHA}" + base64.b64encode(hashlib.sha1(pw.encode() + salt).digest() + salt).decode()


USERS = {
    # user: (password, stored form)
    "apr": ("pw-apr1", None),
    "md5": ("pw-1", None),
    "sha256": ("pw-5", None),
    "sha512": ("pw-6", None),
    "bcrypt": ("pw-bcrypt", None),
    "sha": ("pw-sha", "{SHA}" + base64.b64encode(hashlib.sha1(b"pw-sha").digest()).decode()),
    "ssha": ("pw-ssha", ssha("pw-ssha")),
    "plain": ("pw-plain", "{PLAIN}pw-plain"),
}


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    forms = dict(USERS)
    forms["apr"] = ("pw-apr1", openssl_passwd("-apr1"))
    forms["md5"] = ("pw-1", openssl_passwd("-1"))
    forms["sha256"] = ("pw-5", openssl_passwd("-5"))
    forms["sha512"] = ("pw-6", openssl_passwd("-6"))
    forms["bcrypt"] = ("pw-bcrypt", crypt.crypt("pw-bcrypt",
                                                crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))
    lines = ["# team", ""] + [f"{u}:{h}" for u, (_, h) in forms.items()]
    lines.append("commented:{PLAIN}x:a comment field")
    path = d / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def au(mres, origin, htpasswd):
    return mres.proxy("""
        server {
            listen 127.0.0.1:{port};
            location /private/ {
                auth_basic "Staff only";
                auth_basic_user_file %(f)s;
                proxy_pass http://127.0.0.1:%(o)d;
                location /private/open/ {
                    auth_basic off;
                    proxy_pass http://127.0.0.1:%(o)d;
                }
            }
            location /any/ {
                satisfy any;
                allow 10.0.0.0/8;
                deny all;
                auth_basic "office or password";
                auth_basic_user_file %(f)s;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /lan-any/ {
                satisfy any;
                allow 127.0.0.1;
                deny all;
                auth_basic "x";
                auth_basic_user_file %(f)s;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /all/ {
                deny all;
                auth_basic "x";
                auth_basic_user_file %(f)s;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /missing/ {
                auth_basic "x";
                auth_basic_user_file %(f)s.nope;
            }
        }
    """ % {"o": origin.port, "f": htpasswd})


def basic(user, pw):
    return [("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())]


def test_challenge_without_credentials(au, origin):
    origin.clear()
    r = get(au.port, "/private/x")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="Staff only"'
    assert origin.requests == []


@pytest.mark.parametrize("user", sorted(USERS))
def test_every_password_form(au, user):
    pw = USERS[user][0]
    r = get(au.port, "/private/x", headers=basic(user, pw))
    assert r.status == 200, user
    r = get(au.port, "/private/x", headers=basic(user, pw + "x"))
    assert r.status == 401, user


def test_unknown_user_and_junk(au):
    assert get(au.port, "/private/x", headers=basic("nobody", "pw")).status == 401
    assert get(au.port, "/private/x", headers=[("Authorization", "Basic !!!")]).status == 401
    assert get(au.port, "/private/x", headers=[("Authorization", "Bearer abc")]).status == 401
    # a third field is a comment
    assert get(au.port, "/private/x", headers=basic("commented", "x")).status == 200
    if not IS_NGINX:
        au.wait_error_log(r'user "nobody" was not found in')
        au.wait_error_log(r'user "md5": password mismatch')


def test_authorization_is_passed_upstream(au, origin):
    origin.clear()
    r = get(au.port, "/private/who", headers=basic("plain", "pw-plain"))
    assert r.status == 200
    hdrs = {k.lower(): v for k, v in origin.last()["headers"]}
    assert hdrs["authorization"].startswith("Basic ")  # passed on, as nginx


def test_nested_auth_off(au):
    assert get(au.port, "/private/open/x").status == 200


def test_satisfy_any(au):
    # 127.0.0.1 is not in 10/8: the password decides
    assert get(au.port, "/any/x").status == 401
    assert get(au.port, "/any/x", headers=basic("sha", "pw-sha")).status == 200
    # the address alone is enough
    assert get(au.port, "/lan-any/x").status == 200


def test_satisfy_all_denies_first(au):
    r = get(au.port, "/all/x", headers=basic("sha", "pw-sha"))
    assert r.status == 403


def test_missing_file_is_403(au):
    r = get(au.port, "/missing/x", headers=basic("sha", "pw-sha"))
    assert r.status == 403  # nginx's answer for a user file that does not exist
    assert get(au.port, "/missing/x").status == 401  # no credentials: nothing to check yet


def test_file_changes_apply_without_reload(au, htpasswd):
    text = htpasswd.read_text()
    try:
        htpasswd.write_text(text + "late:{PLAIN}pw-late\n")
        assert get(au.port, "/private/x", headers=basic("late", "pw-late")).status == 200
    finally:
        htpasswd.write_text(text)
    assert get(au.port, "/private/x", headers=basic("late", "pw-late")).status == 401


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("text,msg", [
    ("auth_basic_user_file htpasswd;", "needs an absolute path"),
    ("satisfy some;", 'invalid value "some" in "satisfy"'),
    ('auth_basic "a\\"b";', "cannot hold"),
])
def test_bad_auth_directives(res, text, msg):
    p = res.proxy_unstarted("server {\n listen 127.0.0.1:{port};\n %s\n}" % text)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output
