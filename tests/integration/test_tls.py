"""TLS termination and upstream TLS (issue 6): SNI, ECDSA/RSA selection,
protocols, resumption by cache and by ticket, ticket key rotation, OCSP
stapling, client certificates, proxy_pass https://, reload of certificates.

Certificates are made once per module with the openssl CLI in a temp dir."""
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from conftest import IS_NGINX, Conn, FakeDns, ScriptedOrigin, parse_one, Incomplete, wait_for

pytestmark = [pytest.mark.skipif(IS_NGINX, reason="Portico's TLS"),
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")]


def openssl(*args, cwd=None, input=None):
    cp = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, input=input,
                        timeout=60)
    assert cp.returncode == 0, (args, cp.stderr.decode())
    return cp


class Pki:
    """A CA, another CA, server, origin, client and OCSP certificates."""

    def __init__(self, d):
        self.d = str(d)
        self.ca("ca", "Portico Test CA")
        self.ca("otherca", "Other Test CA")
        self.leaf("a", "a.test", ["DNS:a.test"], "rsa")
        self.leaf("b", "b.test", ["DNS:b.test"], "ec")
        self.leaf("rsa", "rsa.localhost", ["DNS:localhost", "IP:127.0.0.1"], "rsa")
        self.leaf("ecdsa", "ecdsa.localhost", ["DNS:localhost", "IP:127.0.0.1"], "ec")
        self.leaf("rsa2", "rsa2.localhost", ["DNS:localhost", "IP:127.0.0.1"], "rsa")
        self.leaf("origin", "origin.test", ["DNS:origin.test", "IP:127.0.0.1"], "ec")
        self.leaf("client", "client1", None, "ec", client=True)
        self.leaf("badclient", "intruder", None, "ec", ca="otherca", client=True)
        self.leaf("ocsp", "OCSP responder", None, "ec", ocsp=True)
        # an OCSP response for rsa.pem, made by `openssl ocsp` acting as responder
        with open(self.p("index.txt"), "w") as f:
            serial = openssl("x509", "-in", self.p("rsa.pem"), "-noout", "-serial") \
                .stdout.decode().strip().split("=")[1]
            f.write(f"V\t301231235959Z\t\t{serial}\tunknown\t/CN=rsa.localhost\n")
        openssl("ocsp", "-index", self.p("index.txt"), "-rsigner", self.p("ocsp.pem"),
                "-rkey", self.p("ocsp.key"), "-CA", self.p("ca.pem"), "-issuer",
                self.p("ca.pem"), "-cert", self.p("rsa.pem"), "-respout",
                self.p("rsa.ocsp.der"), "-ndays", "2")
        for k in ("k1", "k2", "k3"):
            with open(self.p(k + ".key"), "wb") as f:
                f.write(os.urandom(80))

    def p(self, name):
        return os.path.join(self.d, name)

    def newkey(self, name, kind):
        if kind == "ec":
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", self.p(name + ".key"))
        else:
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", self.p(name + ".key"))

    def ca(self, name, cn):
        self.newkey(name, "ec")
        openssl("req", "-x509", "-new", "-key", self.p(name + ".key"), "-subj", f"/CN={cn}",
                "-days", "30", "-out", self.p(name + ".pem"),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(self, name, cn, san, kind, ca="ca", client=False, ocsp=False):
        self.newkey(name, kind)
        openssl("req", "-new", "-key", self.p(name + ".key"), "-subj", f"/O=Portico/CN={cn}",
                "-out", self.p(name + ".csr"))
        ext = ["basicConstraints=CA:FALSE"]
        if san:
            ext.append("subjectAltName=" + ",".join(san))
        if client:
            ext.append("extendedKeyUsage=clientAuth")
        elif ocsp:
            ext.append("extendedKeyUsage=OCSPSigning")
        else:
            ext.append("extendedKeyUsage=serverAuth")
        with open(self.p(name + ".ext"), "w") as f:
            f.write("\n".join(ext) + "\n")
        openssl("x509", "-req", "-in", self.p(name + ".csr"), "-CA", self.p(ca + ".pem"),
                "-CAkey", self.p(ca + ".key"), "-CAcreateserial", "-days", "30",
                "-extfile", self.p(name + ".ext"), "-out", self.p(name + ".pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def client_ctx(pki, minv=None, maxv=None, ciphers=None, cert=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.p("ca.pem"))
    ctx.check_hostname = False
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    if ciphers:
        ctx.set_ciphers(ciphers)
    if cert:
        ctx.load_cert_chain(pki.p(cert + ".pem"), pki.p(cert + ".key"))
    return ctx


class TlsConn(Conn):
    """Conn over TLS (keep-alive requests on one handshake)."""

    def __init__(self, port, ctx, sni="localhost", session=None, timeout=5.0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def get(self, target="/", host="localhost", headers=()):
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self.read_response()

    def subject_cn(self):
        return dict(x[0] for x in self.sock.getpeercert()["subject"])["commonName"]


class Done:
    """What is left of a closed TLS connection."""

    def __init__(self, sock):
        self.session = sock.session
        self.session_reused = sock.session_reused


def tls_get(port, ctx, target="/", sni="localhost", host="localhost", session=None,
            headers=()):
    """One request on a fresh TLS connection: (response, Done)."""
    c = TlsConn(port, ctx, sni=sni, session=session)
    try:
        r = c.get(target, host, headers)
        return r, Done(c.sock)
    finally:
        c.close()


def s_client(port, *args, input=b"Q\n", timeout=20):
    cp = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                        input=input, capture_output=True, timeout=timeout)
    return cp.stdout.decode("utf-8", "replace") + cp.stderr.decode("utf-8", "replace")


SERVER = """
    server {{
        listen 127.0.0.1:{{port}} ssl default_server;
        server_name localhost;
        ssl_certificate {d}/rsa.pem;
        ssl_certificate_key {d}/rsa.key;
        {extra}
        location / {{ return 200 "$ssl_protocol $ssl_session_reused $ssl_server_name"; }}
    }}
"""


def server(pki, extra=""):
    return SERVER.format(d=pki.d, extra=extra)


# ---- certificates and protocols ----

def test_sni_picks_the_servers_certificate(res, pki):
    p = res.proxy(server(pki) + f"""
    server {{
        listen 127.0.0.1:{{port}} ssl;
        server_name a.test;
        ssl_certificate {pki.d}/a.pem;
        ssl_certificate_key {pki.d}/a.key;
        location / {{ return 200 "a $ssl_server_name"; }}
    }}
    server {{
        listen 127.0.0.1:{{port}} ssl;
        server_name *.b.test b.test;
        ssl_certificate {pki.d}/b.pem;
        ssl_certificate_key {pki.d}/b.key;
        location / {{ return 200 "b"; }}
    }}""")
    ctx = client_ctx(pki)
    for sni, cn in (("a.test", "a.test"), ("b.test", "b.test"), ("x.b.test", "b.test"),
                    ("unknown.test", "rsa.localhost"), ("localhost", "rsa.localhost")):
        c = TlsConn(p.port, ctx, sni=sni)
        try:
            assert c.subject_cn() == cn, sni
        finally:
            c.close()
    r, _ = tls_get(p.port, ctx, sni="a.test", host="a.test")
    assert r.status == 200 and r.text == "a a.test"


def test_ecdsa_or_rsa_by_what_the_client_supports(res, pki):
    p = res.proxy(f"""
    server {{
        listen 127.0.0.1:{{port}} ssl;
        ssl_certificate {pki.d}/ecdsa.pem;
        ssl_certificate_key {pki.d}/ecdsa.key;
        ssl_certificate {pki.d}/rsa.pem;
        ssl_certificate_key {pki.d}/rsa.key;
        location / {{ return 200 "ok"; }}
    }}""")
    tls12 = ssl.TLSVersion.TLSv1_2
    for ciphers, cn in (("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa.localhost"),
                        ("ECDHE-RSA-AES128-GCM-SHA256", "rsa.localhost")):
        c = TlsConn(p.port, client_ctx(pki, maxv=tls12, ciphers=ciphers))
        try:
            assert c.subject_cn() == cn
            assert c.get().status == 200
        finally:
            c.close()
    # TLS 1.3: by signature algorithms
    for sigalgs, cn in (("ecdsa_secp256r1_sha256", "ecdsa.localhost"),
                        ("rsa_pss_rsae_sha256", "rsa.localhost")):
        out = s_client(p.port, "-tls1_3", "-sigalgs", sigalgs, "-servername", "localhost")
        assert re.search(r"subject=.*CN\s*=\s*" + re.escape(cn), out), out[-2000:]


def test_tls12_and_tls13_ok_tls10_tls11_refused(res, pki):
    p = res.proxy(server(pki))
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        r, c = tls_get(p.port, client_ctx(pki, minv=v, maxv=v))
        assert r.status == 200 and r.text.startswith(
            "TLSv1.2" if v == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = client_ctx(pki, minv=v, maxv=v, ciphers="DEFAULT:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls_get(p.port, ctx)
    out = s_client(p.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "Cipher is (NONE)" in out or "alert" in out.lower(), out[-1500:]


def test_plain_http_to_tls_port_gets_400(res, pki):
    p = res.proxy(server(pki))
    with Conn(p.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = c.read_response()
    assert r.status == 400
    assert "The plain HTTP request was sent to HTTPS port" in r.text


def test_handshake_timeout_closes(res, pki):
    p = res.proxy(server(pki, "ssl_handshake_timeout 300ms;"))
    with Conn(p.port) as c:
        t0 = time.monotonic()
        assert c.closed(timeout=5)
        assert time.monotonic() - t0 < 4
    # a stalled half handshake too
    with Conn(p.port) as c:
        c.send(b"\x16\x03\x01\x00\x50")  # a record header, then nothing
        assert c.closed(timeout=5)


# ---- resumption ----

def resumed(p, ctx, sni="localhost"):
    """Two connections, the second offering the first one's session."""
    r1, c1 = tls_get(p.port, ctx, sni=sni)
    assert r1.status == 200 and r1.text.split()[1] == "."
    sess = c1.session
    assert sess is not None
    r2, c2 = tls_get(p.port, ctx, sni=sni, session=sess)
    return r2.text.split()[1] == "r" and c2.session_reused


def test_resumption_by_session_cache(res, pki):
    p = res.proxy(server(pki, "ssl_session_cache shared:T1:1m; ssl_session_tickets off;"))
    assert resumed(p, client_ctx(pki, maxv=ssl.TLSVersion.TLSv1_2))
    # TLS 1.3 without tickets: OpenSSL's stateful tickets point into the cache
    assert resumed(p, client_ctx(pki, minv=ssl.TLSVersion.TLSv1_3))


def test_no_resumption_without_cache_or_tickets(res, pki):
    p = res.proxy(server(pki, "ssl_session_tickets off;"))
    assert not resumed(p, client_ctx(pki, maxv=ssl.TLSVersion.TLSv1_2))


def test_resumption_by_ticket(res, pki):
    p = res.proxy(server(pki, "ssl_session_cache off;"))
    assert resumed(p, client_ctx(pki, maxv=ssl.TLSVersion.TLSv1_2))
    assert resumed(p, client_ctx(pki, minv=ssl.TLSVersion.TLSv1_3))


def test_ticket_key_files_rotate_on_reload(res, pki):
    keys = lambda *ks: "ssl_session_cache off; " + " ".join(  # noqa: E731
        f"ssl_session_ticket_key {pki.d}/{k}.key;" for k in ks)
    p = res.proxy(server(pki, keys("k1", "k2")))
    ctx = client_ctx(pki, maxv=ssl.TLSVersion.TLSv1_2)
    _, c = tls_get(p.port, ctx)
    old = c.session  # a ticket sealed with k1
    # k2 now encrypts; k1 still decrypts: the old ticket resumes
    p.reload(server(pki, keys("k2", "k1")))
    r, c = tls_get(p.port, ctx, session=old)
    assert r.text.split()[1] == "r" and c.session_reused
    newer = c.session
    # k1 dropped: the old ticket no longer resumes, a k2 ticket does
    p.reload(server(pki, keys("k2", "k3")))
    r, c = tls_get(p.port, ctx, session=old)
    assert r.text.split()[1] == "."
    r, c = tls_get(p.port, ctx, session=newer)
    assert r.text.split()[1] == "r"


# ---- OCSP ----

def test_ocsp_staple_from_file(res, pki):
    p = res.proxy(server(pki, f"ssl_stapling on; ssl_stapling_file {pki.d}/rsa.ocsp.der;"))
    out = s_client(p.port, "-status", "-servername", "localhost", "-CAfile", pki.p("ca.pem"))
    assert "OCSP Response Status: successful" in out, out[-2000:]
    assert "Cert Status: good" in out


@pytest.mark.parametrize("via_resolver", [False, True], ids=["ip", "resolver"])
def test_ocsp_staple_fetched_from_a_local_responder(res, pki, tmp_path, via_resolver):
    """ssl_stapling on without a file: the responder named in the certificate
    (AIA) is asked in the background; `openssl ocsp` plays the responder.
    With `resolver`, the AIA names a host only that DNS server knows."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    rport = port.getsockname()[1]
    port.close()
    d = str(tmp_path)
    aia_host, resolver = "127.0.0.1", ""
    if via_resolver:
        dns = res.add(FakeDns())  # answers 127.0.0.1 to every name
        aia_host, resolver = "ocsp.portico-test.invalid", f"resolver 127.0.0.1:{dns.port};"
    # a certificate naming the local responder
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", f"{d}/aia.key")
    openssl("req", "-new", "-key", f"{d}/aia.key", "-subj", "/CN=aia.localhost",
            "-out", f"{d}/aia.csr")
    with open(f"{d}/aia.ext", "w") as f:
        f.write("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"
                f"authorityInfoAccess=OCSP;URI:http://{aia_host}:{rport}/\n")
    openssl("x509", "-req", "-in", f"{d}/aia.csr", "-CA", pki.p("ca.pem"), "-CAkey",
            pki.p("ca.key"), "-CAcreateserial", "-days", "30", "-extfile", f"{d}/aia.ext",
            "-out", f"{d}/aia.pem")
    serial = openssl("x509", "-in", f"{d}/aia.pem", "-noout", "-serial").stdout.decode() \
        .strip().split("=")[1]
    with open(f"{d}/index.txt", "w") as f:
        f.write(f"V\t301231235959Z\t\t{serial}\tunknown\t/CN=aia.localhost\n")
    # chain file: leaf + CA, so the issuer is known
    with open(f"{d}/chain.pem", "w") as f:
        f.write(open(f"{d}/aia.pem").read() + open(pki.p("ca.pem")).read())
    log = open(f"{d}/responder.log", "wb")
    responder = subprocess.Popen(
        ["openssl", "ocsp", "-index", f"{d}/index.txt", "-port", str(rport),
         "-rsigner", pki.p("ocsp.pem"), "-rkey", pki.p("ocsp.key"), "-CA", pki.p("ca.pem"),
         "-ndays", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        # not by connecting: the responder serves one connection at a time
        wait_for(lambda: b"waiting for OCSP client" in open(f"{d}/responder.log", "rb").read(),
                 10, what="OCSP responder")
        p = res.proxy(f"""
        server {{
            listen 127.0.0.1:{{port}} ssl;
            ssl_certificate {d}/chain.pem;
            ssl_certificate_key {d}/aia.key;
            ssl_stapling on;
            ssl_stapling_verify on;
            ssl_trusted_certificate {pki.d}/ca.pem;
            {resolver}
            location / {{ return 200 "ok"; }}
        }}""")

        def stapled():
            out = s_client(p.port, "-status", "-servername", "localhost")
            return "OCSP Response Status: successful" in out and "Cert Status: good" in out
        wait_for(stapled, 15, interval=0.3, what="an OCSP staple")
    finally:
        responder.kill()
        responder.wait()
        log.close()


# ---- client certificates ----

MTLS = """
    server {{
        listen 127.0.0.1:{{port}} ssl;
        ssl_certificate {d}/rsa.pem;
        ssl_certificate_key {d}/rsa.key;
        ssl_client_certificate {d}/ca.pem;
        ssl_verify_client on;
        location / {{
            proxy_pass http://127.0.0.1:{{oport}};
            proxy_set_header X-Client-DN $ssl_client_s_dn;
            proxy_set_header X-Client-Verify $ssl_client_verify;
        }}
    }}
"""


def test_mtls_no_certificate_is_400(res, pki):
    o = res.origin()
    p = res.proxy(MTLS.format(d=pki.d), oport=o.port)
    r, _ = tls_get(p.port, client_ctx(pki))
    assert r.status == 400
    assert "No required SSL certificate was sent" in r.text
    assert not o.requests


def test_mtls_certificate_of_another_ca_is_refused(res, pki):
    o = res.origin()
    p = res.proxy(MTLS.format(d=pki.d), oport=o.port)
    try:
        r, _ = tls_get(p.port, client_ctx(pki, cert="badclient"))
        assert r.status == 400
        assert "The SSL certificate error" in r.text
    except (ssl.SSLError, ConnectionResetError):
        pass  # refused in the handshake is fine too
    assert not o.requests


def test_mtls_subject_dn_forwarded(res, pki):
    o = res.origin()
    p = res.proxy(MTLS.format(d=pki.d), oport=o.port)
    r, _ = tls_get(p.port, client_ctx(pki, cert="client"))
    assert r.status == 200, r
    hdrs = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert hdrs["x-client-dn"] == "CN=client1,O=Portico"
    assert hdrs["x-client-verify"] == "SUCCESS"


# ---- upstream TLS ----

UPS = """
    server {{
        listen 127.0.0.1:{{port}};
        location / {{
            proxy_pass https://{target};
            {extra}
        }}
    }}
"""


def ups_conf(pki, target, extra=""):
    return UPS.format(target=target, extra=extra.replace("{d}", pki.d))


def http_get(port, target="/"):
    from conftest import get
    return get(port, target)


def test_upstream_tls_wrong_ca_is_502_with_a_clear_log_line(res, pki):
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}",
                           "proxy_ssl_verify on; proxy_ssl_trusted_certificate {d}/otherca.pem;"))
    r = http_get(p.port, "/x")
    assert r.status == 502
    p.wait_error_log(r"upstream SSL certificate verify error: \(20:unable to get local issuer "
                     r"certificate\) while SSL handshaking to upstream, client: 127\.0\.0\.1, "
                     r".*upstream: \"https://127\.0\.0\.1:\d+/x\"")
    assert not o.requests


def test_upstream_tls_name_mismatch_is_502(res, pki):
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}",
                           "proxy_ssl_verify on; proxy_ssl_trusted_certificate {d}/ca.pem;"
                           "proxy_ssl_name wrong.test;"))
    assert http_get(p.port).status == 502
    p.wait_error_log(r"upstream SSL certificate verify error: \(62:hostname mismatch\)")


def test_upstream_tls_right_ca_200_sni_sent_and_session_reused(res, pki):
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}",
                           "proxy_ssl_verify on; proxy_ssl_trusted_certificate {d}/ca.pem;"
                           "proxy_ssl_server_name on; proxy_ssl_name origin.test;"))
    for i in range(3):
        r = http_get(p.port, f"/r{i}")
        assert r.status == 200, r
        assert r.json()["target"] == f"/r{i}"
    assert o.sni[:3] == ["origin.test"] * 3
    reused = [rec["session_reused"] for rec in o.requests]
    assert reused[0] is False and all(reused[1:]), reused


def test_upstream_tls_no_sni_by_default_and_verify_off(res, pki):
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}", "proxy_ssl_session_reuse off;"))
    for _ in range(2):
        assert http_get(p.port).status == 200
    assert o.sni == [None, None]
    assert [rec["session_reused"] for rec in o.requests] == [False, False]


def test_upstream_tls_spooled_request_body(res, pki):
    """A body buffered to a file cannot go out with sendfile over TLS: it is
    read back in segments. Whole, in order, with its length."""
    import hashlib
    from conftest import build_request, pattern
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}", "client_max_body_size 0;"))
    body = pattern(700_000)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/big", headers=[("Transfer-Encoding", "chunked")])
               + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        r = c.read_response(timeout=20)
    assert r.status == 200, r
    rec = o.last()
    assert rec["body_len"] == len(body)
    assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ("Content-Length", str(len(body))) in [(k.title(), v) for k, v in rec["headers"]]
    if not IS_NGINX:
        p.wait_error_log(r"a client request body is buffered to a temporary file")


def test_upstream_tls_pooled_connections(res, pki):
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    p = res.proxy(f"""
    upstream tls_pool {{
        server 127.0.0.1:{o.port};
        keepalive 4;
    }}
    server {{
        listen 127.0.0.1:{{port}};
        location / {{ proxy_pass https://tls_pool; }}
        location /plain/ {{ proxy_pass http://tls_pool; }}
    }}""")
    for i in range(4):
        r = http_get(p.port, f"/k{i}")
        assert r.status == 200 and r.json()["target"] == f"/k{i}"
        from conftest import get
        r = get(p.port, "/k/bytes/100000")
        assert r.status == 200 and len(r.body) == 100000
    assert len({rec["conn_id"] for rec in o.requests}) == 1
    # a plain location on the same group does not get the TLS connection
    assert http_get(p.port, "/plain/x").status == 502


def test_upstream_tls_mtls_to_the_backend(res, pki, tmp_path):
    o = res.origin(tls=(pki.p("origin.pem"), pki.p("origin.key")))
    o.tls_ctx.verify_mode = ssl.CERT_REQUIRED
    o.tls_ctx.load_verify_locations(pki.p("ca.pem"))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}",
                           "proxy_ssl_certificate {d}/client.pem;"
                           "proxy_ssl_certificate_key {d}/client.key;"), )
    assert http_get(p.port).status == 200
    p2 = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}"))
    assert http_get(p2.port).status == 502


def test_upstream_tls_handshake_timeout(res, pki):
    o = res.add(ScriptedOrigin(None, after="hold", read_request=False))
    p = res.proxy(ups_conf(pki, f"127.0.0.1:{o.port}", "proxy_connect_timeout 300ms;"))
    t0 = time.monotonic()
    r = http_get(p.port)
    assert r.status == 504
    assert time.monotonic() - t0 < 3
    p.wait_error_log(r"upstream timed out .* while SSL handshaking to upstream")


def test_upstream_tls_bad_files_refused_with_file_line(res, pki):
    p = res.proxy_unstarted(ups_conf(pki, "127.0.0.1:1",
                                     "proxy_ssl_verify on;"))
    cp = p.run_cmd("-t")
    assert cp.returncode != 0
    assert re.search(r"portico\.conf:\d+: no proxy_ssl_trusted_certificate", cp.output), cp.output


# ---- reload ----

def test_certificate_swap_on_reload_keeps_old_connections(res, pki):
    p = res.proxy(server(pki, "keepalive_timeout 30s;"))
    ctx = client_ctx(pki)
    old = TlsConn(p.port, ctx)
    try:
        assert old.get().status == 200
        assert old.subject_cn() == "rsa.localhost"
        p.reload(server(pki).replace("/rsa.pem", "/rsa2.pem").replace("/rsa.key", "/rsa2.key"))
        new = TlsConn(p.port, ctx)
        try:
            assert new.subject_cn() == "rsa2.localhost"
            assert new.get().status == 200
        finally:
            new.close()
        r = old.get()  # the old connection keeps working on its handshake
        assert r.status == 200
    finally:
        old.close()


def test_mismatched_key_refused_with_file_line(res, pki):
    p = res.proxy_unstarted(server(pki).replace("/rsa.key", "/a.key"))
    cp = p.run_cmd("-t")
    assert cp.returncode != 0
    assert re.search(r"portico\.conf:\d+: .*key values mismatch", cp.output), cp.output


def test_large_cache_hit_from_disk_over_tls(res, pki, tmp_path):
    """An object over the memory tier's limit is served from its cache file;
    TLS cannot sendfile, so the file is read in pieces (it used to be read
    through a descriptor that was never opened)."""
    o = res.origin()
    p = res.proxy(f"""
    proxy_cache_path {tmp_path}/c keys_zone=t:1m;
    server {{
        listen 127.0.0.1:{{port}} ssl;
        ssl_certificate {pki.d}/rsa.pem;
        ssl_certificate_key {pki.d}/rsa.key;
        location / {{
            proxy_cache t;
            proxy_cache_valid 200 1m;
            proxy_pass http://127.0.0.1:{o.port};
        }}
    }}""")
    from conftest import pattern
    n = 3 * 1024 * 1024
    for _ in range(2):
        c = TlsConn(p.port, client_ctx(pki))
        try:
            r = c.get(f"/bytes/{n}", "localhost", ())
        finally:
            c.close()
        assert r.status == 200 and r.body == pattern(n)
    assert len(o.requests) == 1


# ---- ssl_reject_handshake, ssl_buffer_size, ssl_password_file (nginx's; also pass on nginx)

def test_reject_handshake_default_server_needs_no_certificate(res, pki):
    p = res.proxy(f"""
    server {{
        listen 127.0.0.1:{{port}} ssl default_server;
        ssl_reject_handshake on;
    }}
    server {{
        listen 127.0.0.1:{{port}} ssl;
        server_name localhost;
        ssl_certificate {pki.d}/rsa.pem;
        ssl_certificate_key {pki.d}/rsa.key;
        location / {{ return 200 "known"; }}
    }}""")
    r, _ = tls_get(p.port, client_ctx(pki), sni="localhost")
    assert r.status == 200 and r.body == b"known"
    for sni in ("other.test", None):
        with pytest.raises(ssl.SSLError) as e:
            tls_get(p.port, client_ctx(pki), sni=sni)
        assert "UNRECOGNIZED_NAME" in str(e.value).upper() or "unrecognized name" in str(e.value)


def tls_record_sizes(port, pki, path):
    """Application data record lengths of one response (TLS 1.3), read off the
    wire before the TLS layer sees them."""
    ctx = client_ctx(pki, minv=ssl.TLSVersion.TLSv1_3)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)  # (bounds every recv)
    raw = bytearray()
    sizes = []

    def pump():
        data = out.read()
        if data:
            s.sendall(data)

    def feed():
        b = s.recv(65536)
        if not b:
            raise EOFError
        raw.extend(b)
        while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
            n = int.from_bytes(raw[3:5], "big")
            if raw[0] == 23:
                sizes.append(n)
            inc.write(bytes(raw[:5 + n]))
            del raw[:5 + n]
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                feed()
        pump()
        obj.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        pump()
        body = b""
        sizes.clear()  # (the session tickets travel as application data too)
        while True:
            try:
                chunk = obj.read(65536)
                if not chunk:
                    break  # close_notify
                body += chunk
            except ssl.SSLWantReadError:
                try:
                    feed()
                except EOFError:
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        return sizes, body
    finally:
        s.close()


def test_buffer_size_caps_records(res, pki, tmp_path):
    (tmp_path / "big").write_bytes(b"z" * 100000)
    p = res.proxy(server(pki, f"ssl_buffer_size 4k; location /f/ {{ alias {tmp_path}/; }}"))
    sizes, body = tls_record_sizes(p.port, pki, "/f/big")
    assert body.endswith(b"z" * 1000)
    assert sizes and max(sizes) <= 4096 + 256  # content + type byte + AEAD tag
    p2 = res.proxy(server(pki, f"location /f/ {{ alias {tmp_path}/; }}"))
    sizes, _ = tls_record_sizes(p2.port, pki, "/f/big")
    assert max(sizes) > 8192  # 16k by default


def test_password_file_unlocks_an_encrypted_key(res, pki, tmp_path):
    d = str(tmp_path)
    openssl("pkey", "-in", pki.p("rsa.key"), "-aes256", "-passout", "pass:s3cret",
            "-out", f"{d}/enc.key")
    (tmp_path / "pw").write_text("wrong\nalso-wrong\ns3cret\n")
    conf = f"""
    server {{
        listen 127.0.0.1:{{port}} ssl;
        ssl_certificate {pki.d}/rsa.pem;
        ssl_certificate_key {d}/enc.key;
        ssl_password_file {d}/%s;
        location / {{ return 200 "unlocked"; }}
    }}"""
    p = res.proxy(conf % "pw")
    r, _ = tls_get(p.port, client_ctx(pki))
    assert r.body == b"unlocked"
    (tmp_path / "bad").write_text("nope\n")
    q = res.proxy_unstarted(conf % "bad")
    r = q.run_cmd("-t")
    assert r.returncode != 0
