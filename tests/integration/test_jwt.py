"""auth_jwt with a JWK set: HS256, RS256, PS256, ES256, EdDSA; exp/nbf with
leeway; kid; a token from a cookie; auth_jwt_require; $jwt_claim_/
$jwt_header_ variables (tokens made with PyJWT). Portico-only: NGINX Plus
has auth_jwt, the nginx under test does not."""
import json
import time

import pytest

from conftest import IS_NGINX, get

jwt = pytest.importorskip("jwt")
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402

pytestmark = pytest.mark.skipif(IS_NGINX, reason="auth_jwt is an NGINX Plus module")

SECRET = b"0123456789abcdef0123456789abcdef"


def b64u(b):
    import base64
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    k = {
        "rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ec521": ec.generate_private_key(ec.SECP521R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    jwks = [
        {"kty": "oct", "kid": "hs", "k": b64u(SECRET)},
        dict(json.loads(RSAAlgorithm.to_jwk(k["rsa1"].public_key())), kid="r1"),
        dict(json.loads(RSAAlgorithm.to_jwk(k["rsa2"].public_key())), kid="r2"),
        dict(json.loads(ECAlgorithm.to_jwk(k["ec"].public_key())), kid="e1"),
        dict(json.loads(ECAlgorithm.to_jwk(k["ec384"].public_key())), kid="e384"),
        dict(json.loads(ECAlgorithm.to_jwk(k["ec521"].public_key())), kid="e521"),
        dict(json.loads(OKPAlgorithm.to_jwk(k["ed"].public_key())), kid="ed"),
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},  # not for signatures: skipped
    ]
    d = tmp_path_factory.mktemp("jwks")
    (d / "keys.jwk").write_text(json.dumps({"keys": jwks}))
    k["file"] = d / "keys.jwk"
    return k


def token(keys, alg="HS256", kid=None, **claims):
    claims.setdefault("sub", "ann")
    claims.setdefault("exp", int(time.time()) + 300)
    ec_key = {"ES256": "ec", "ES384": "ec384", "ES512": "ec521"}.get(alg, "ec")
    key = {"HS": SECRET, "RS": keys["rsa1"], "PS": keys["rsa1"], "ES": keys[ec_key],
           "Ed": keys["ed"]}[alg[:2]]
    if kid is None:
        kid = {"HS": "hs", "RS": "r1", "PS": "r1", "Ed": "ed",
               "ES": {"ec": "e1", "ec384": "e384", "ec521": "e521"}[ec_key]}[alg[:2]]
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(t):
    return [("Authorization", "Bearer " + t)]


@pytest.fixture(scope="module")
def origin(mres):
    return mres.origin()


@pytest.fixture(scope="module")
def jp(mres, origin, keys):
    return mres.proxy("""
        map $jwt_claim_role $is_admin { admin 1; default 0; }
        server {
            listen 127.0.0.1:{port};
            auth_jwt_key_file %(f)s;
            location /api/ {
                auth_jwt "api";
                proxy_set_header X-User $jwt_claim_sub;
                proxy_set_header X-Kid $jwt_header_kid;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /cookie/ {
                auth_jwt "web" token=$cookie_session;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /admin/ {
                auth_jwt "admin";
                auth_jwt_require $is_admin error=403;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /lenient/ {
                auth_jwt "l";
                auth_jwt_leeway 60s;
                proxy_pass http://127.0.0.1:%(o)d;
            }
            location /open/ { proxy_pass http://127.0.0.1:%(o)d; }
        }
    """ % {"o": origin.port, "f": keys["file"]})


def header(origin, name):
    return {k.lower(): v for k, v in origin.last()["headers"]}.get(name.lower())


def test_no_token_is_401(jp, origin):
    origin.clear()
    r = get(jp.port, "/api/x")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Bearer realm="api"'
    assert origin.requests == []
    assert get(jp.port, "/open/x").status == 200


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
                                 "PS512", "ES256", "ES384", "ES512", "EdDSA"])
def test_every_algorithm(jp, origin, keys, alg):
    r = get(jp.port, "/api/x", headers=bearer(token(keys, alg)))
    assert r.status == 200, alg
    assert header(origin, "X-User") == "ann"


@pytest.mark.parametrize("case", ["tampered", "wrong_key", "none", "expired", "future",
                                  "garbage", "kid_mismatch"])
def test_rejected_tokens(jp, keys, case):
    if case == "tampered":
        h, p, s = token(keys).split(".")
        p = b64u(json.dumps({"sub": "root", "exp": int(time.time()) + 300}).encode())
        t = ".".join([h, p, s])
    elif case == "wrong_key":
        t = jwt.encode({"sub": "x"}, b"another secret another secret!!", algorithm="HS256")
    elif case == "none":
        t = jwt.encode({"sub": "x"}, None, algorithm="none")
    elif case == "expired":
        t = token(keys, exp=int(time.time()) - 10)
    elif case == "future":
        t = token(keys, nbf=int(time.time()) + 3600)
    elif case == "garbage":
        t = "not.a.token"
    else:  # signed by r2's private key but naming r1
        t = jwt.encode({"sub": "x"}, keys["rsa2"], algorithm="RS256", headers={"kid": "r1"})
    r = get(jp.port, "/api/x", headers=bearer(t))
    assert r.status == 401, case
    assert r.header("WWW-Authenticate") == 'Bearer realm="api",error="invalid_token"'


def test_kid_picks_the_key(jp, origin, keys):
    t = jwt.encode({"sub": "bob"}, keys["rsa2"], algorithm="RS256", headers={"kid": "r2"})
    assert get(jp.port, "/api/x", headers=bearer(t)).status == 200
    assert header(origin, "X-Kid") == "r2"
    # without a kid every key of the right type is tried
    t = jwt.encode({"sub": "bob"}, keys["rsa2"], algorithm="RS256")
    assert get(jp.port, "/api/x", headers=bearer(t)).status == 200


def test_leeway(jp, keys):
    t = token(keys, exp=int(time.time()) - 10)
    assert get(jp.port, "/lenient/x", headers=bearer(t)).status == 200
    assert get(jp.port, "/api/x", headers=bearer(t)).status == 401


def test_token_from_cookie(jp, keys):
    assert get(jp.port, "/cookie/x").status == 401
    r = get(jp.port, "/cookie/x", headers=[("Cookie", "a=1; session=" + token(keys))])
    assert r.status == 200


def test_require_with_a_claim(jp, keys):
    assert get(jp.port, "/admin/x", headers=bearer(token(keys, role="user"))).status == 403
    assert get(jp.port, "/admin/x", headers=bearer(token(keys, role="admin"))).status == 200
    assert get(jp.port, "/admin/x").status == 401


@pytest.mark.parametrize("text,msg", [
    ('{"keys": [{"kty": "oct"}]}', 'an "oct" key without a valid "k"'),
    ('{"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]}', "unknown curve"),
    ('{"nope": 1}', "not a JWK set"),
    ('{"keys": [', "not a JWK set"),
])
def test_bad_key_files(res, tmp_path, text, msg):
    f = tmp_path / "bad.jwk"
    f.write_text(text)
    p = res.proxy_unstarted("server { listen 127.0.0.1:{port}; auth_jwt_key_file %s; }" % f)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output


def test_only_signed_tokens(res):
    p = res.proxy_unstarted("server { listen 127.0.0.1:{port}; auth_jwt_type encrypted; }")
    assert 'only "signed" tokens' in p.run_cmd("-t").output


def test_limit_req_keyed_by_a_claim(res, origin, keys):
    """limit_req runs before the access phase (as nginx's preaccess), yet a
    $jwt_claim_* key works: the token is checked when the key reads it. A
    forged token's claims are never used: it falls in the address's bucket."""
    p = res.proxy("""
        map $jwt_claim_sub $who { "" $binary_remote_addr; default $jwt_claim_sub; }
        limit_req_zone $who zone=per_sub:1m rate=1r/m;
        server {
            listen 127.0.0.1:{port};
            auth_jwt_key_file %(f)s;
            location /api/ {
                limit_req zone=per_sub burst=1 nodelay;
                auth_jwt "api";
                proxy_pass http://127.0.0.1:%(o)d;
            }
        }
    """ % {"o": origin.port, "f": keys["file"]})
    ann, bob = bearer(token(keys, sub="ann")), bearer(token(keys, sub="bob"))
    assert [get(p.port, "/api/x", headers=ann).status for _ in range(3)] == [200, 200, 503]
    assert get(p.port, "/api/x", headers=bob).status == 200  # another subject, another bucket
    forged = token(keys, sub="carol")[:-4] + "AAAA"
    codes = [get(p.port, "/api/x", headers=bearer(forged)).status for _ in range(3)]
    assert codes == [401, 401, 503]  # the address's bucket, not carol's
