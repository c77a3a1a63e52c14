"""The lines of a stock nginx.conf (Debian's) load and mean what they mean
in nginx: user, multi_accept, sendfile, tcp_nopush, tcp_nodelay, the
*_hash_* sizes, include mime.types, and the default site's root/index/
try_files."""
import os
import shutil
import tempfile

import pytest

from conftest import IS_NGINX, get

MIME = "/etc/nginx/mime.types"


def test_debian_stock_config_shape(res, tmp_path):
    www = tmp_path / "html"
    www.mkdir()
    (www / "index.nginx-debian.html").write_bytes(b"<p>Welcome</p>\n" + b" " * 40)
    (www / "logo.png").write_bytes(b"\x89PNG")
    include = f"include {MIME};" if os.path.exists(MIME) else ""
    p = res.proxy("""
        sendfile on;
        tcp_nopush on;
        tcp_nodelay on;
        types_hash_max_size 2048;
        server_names_hash_bucket_size 64;
        %s
        default_type application/octet-stream;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        gzip on;
        server {
            listen 127.0.0.1:{port} default_server;
            root %s;
            index index.html index.htm index.nginx-debian.html;
            server_name _;
            location / {
                try_files $uri $uri/ =404;
            }
        }
    """ % (include, www))
    r = get(p.port, "/")
    assert r.status == 200 and r.body.startswith(b"<p>Welcome</p>\n")
    assert r.header("Content-Type") == "text/html"
    r = get(p.port, "/", headers=[("Accept-Encoding", "gzip")])
    assert r.header("Content-Encoding") == "gzip"  # text/html, at least 20 bytes
    r = get(p.port, "/logo.png")
    assert r.status == 200 and r.header("Content-Type") == "image/png"
    assert get(p.port, "/nope").status == 404


@pytest.mark.skipif(IS_NGINX, reason="Portico's main context")
def test_multi_accept_and_events(res):
    p = res.proxy("""
        pid {tmp}/p.pid;
        error_log {tmp}/error.log info;
        events { multi_accept on; worker_connections 512; }
        http { server { listen 127.0.0.1:{port}; location / { return 200 ok; } } }
    """, full=True)
    for _ in range(5):
        assert get(p.port, "/").body == b"ok"


@pytest.mark.skipif(IS_NGINX or os.geteuid() != 0, reason="needs root to drop privileges")
def test_user_drops_privileges(res, tmp_path, request):
    body_dir = tmp_path / "body"
    # pytest's own directories are 0700: the user needs a path it may walk
    www = tempfile.mkdtemp(prefix="portico-www-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(www, ignore_errors=True))
    os.chmod(www, 0o755)
    with open(os.path.join(www, "f.txt"), "wb") as f:
        f.write(b"file\n")
    p = res.proxy("""
        client_body_temp_path %s;
        server {
            listen 127.0.0.1:{port};
            root %s;
            location /echo { return 200 "$request_method\\n"; }
        }
    """ % (body_dir, www), main="user nobody nogroup;")
    # the listeners are up a moment before the drop: wait for its log line
    p.wait_error_log(r'running as user "nobody"')
    status = open(f"/proc/{p.pid}/status").read()
    uid_line = [l for l in status.splitlines() if l.startswith("Uid:")][0]
    assert uid_line.split()[1:] == ["65534"] * 4, uid_line
    assert os.stat(body_dir).st_uid == 65534
    assert get(p.port, "/f.txt").body == b"file\n"


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
@pytest.mark.parametrize("main,msg", [
    ("user no_such_user_zz;", 'getpwnam("no_such_user_zz") failed'),
    ("user root no_such_group_zz;", 'getgrnam("no_such_group_zz") failed'),
])
def test_user_refused(res, main, msg):
    p = res.proxy_unstarted("server { listen 127.0.0.1:{port}; }", main=main)
    out = p.run_cmd("-t")
    assert out.returncode != 0 and msg in out.output and "portico.conf:" in out.output, out.output


@pytest.mark.skipif(IS_NGINX, reason="Portico's messages")
def test_hash_size_checked(res):
    p = res.proxy_unstarted("types_hash_max_size lots; server { listen 127.0.0.1:{port}; }")
    out = p.run_cmd("-t")
    assert 'invalid value "lots" in "types_hash_max_size" directive' in out.output
