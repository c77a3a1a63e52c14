"""The lines of a stock nginx.conf (Debian's) load and mean what they mean
in nginx: user, multi_accept, sendfile, tcp_nopush, tcp_nodelay, the
*_hash_* sizes, include mime.types, and the default site's root/index/
try_files."""
import os
import shutil
import signal
import tempfile

import pytest

from conftest import IS_NGINX, get, wait_for

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
    # the logs and the pid file are handed to the user
    for f in (p.error_log_path, p.access_log_path, p.pid_path):
        assert os.stat(f).st_uid == 65534, f


@pytest.mark.skipif(IS_NGINX or os.geteuid() != 0, reason="needs root to drop privileges")
def test_log_reopen_after_the_drop(res, request):
    """Logs rotated away (logrotate's create mode makes the new files the
    user's, or Portico's own reopen creates them in a directory the user
    may write): SIGUSR1 reopens them as the user."""
    logs = tempfile.mkdtemp(prefix="portico-logs-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(logs, ignore_errors=True))
    os.chmod(logs, 0o755)
    p = res.proxy("""
        user nobody nogroup;
        pid %(l)s/p.pid;
        error_log %(l)s/error.log info;
        events {}
        http {
            access_log %(l)s/access.log;
            server { listen 127.0.0.1:{port}; location / { return 200 "ok\\n"; } }
        }
    """ % {"l": logs}, full=True)
    err = os.path.join(logs, "error.log")
    wait_for(lambda: 'running as user "nobody"' in open(err).read(), 5, what="the drop")
    assert get(p.port, "/").status == 200
    os.rename(os.path.join(logs, "access.log"), os.path.join(logs, "access.log.1"))
    open(os.path.join(logs, "access.log"), "w").close()
    os.chown(os.path.join(logs, "access.log"), 65534, 65534)  # logrotate's "create"
    p.signal(signal.SIGUSR1)
    wait_for(lambda: "reopened log files" in open(err).read(), 5, what="the reopen")
    assert "failed" not in open(err).read()
    assert get(p.port, "/").status == 200
    wait_for(lambda: "GET / HTTP/1.1" in open(os.path.join(logs, "access.log")).read(), 5,
             what="a line in the new access log")


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
