#!/usr/bin/env bash
# Run h2spec (https://github.com/summerwind/h2spec) against a Portico started
# here, over h2c (prior knowledge) and, with --tls, over TLS with ALPN h2.
#   scripts/h2spec.sh /path/to/h2spec [--tls] [extra h2spec args...]
# h2spec is not packaged by Debian: build it from its source with Go and pass
# the binary's path. Uses build/portico (PORTICO_BIN to override).
set -euo pipefail
cd "$(dirname "$0")/.."
H2SPEC=${1:?usage: scripts/h2spec.sh /path/to/h2spec [--tls] [h2spec args]}
shift
TLS=0
if [ "${1:-}" = "--tls" ]; then TLS=1; shift; fi
PORTICO=${PORTICO_BIN:-build/portico}
PORT=${PORT:-18443}
ORIGIN_PORT=$((PORT + 1))
tmp=$(mktemp -d)
trap 'kill $ppid $opid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT

# an origin that answers every request with a small body (at least 5 bytes:
# h2spec skips its negative-window case 6.9.2/2 for shorter ones)
python3 - "$ORIGIN_PORT" >/dev/null 2>&1 <<'PY' &
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _a(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n: self.rfile.read(n)
        body = b"hello from the origin\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_OPTIONS = _a
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
opid=$!

listen="listen 127.0.0.1:$PORT http2 h2c_only;"
tlsconf=""
args=(-h 127.0.0.1 -p "$PORT")
if [ "$TLS" = 1 ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/key.pem" -out "$tmp/cert.pem" \
    -days 2 -subj /CN=localhost >/dev/null 2>&1
  listen="listen 127.0.0.1:$PORT ssl; http2 on;"
  tlsconf="ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;"
  args+=(-t -k)
fi
cat >"$tmp/portico.conf" <<CONF
worker_processes 1;
error_log $tmp/error.log info;
pid $tmp/portico.pid;
events {}
http {
  access_log off;
  server {
    $listen
    $tlsconf
    location / { proxy_pass http://127.0.0.1:$ORIGIN_PORT; }
  }
}
CONF
"$PORTICO" -c "$tmp/portico.conf" &
ppid=$!
# wait for both: a request that reaches the origin before it listens gets a
# 502 page, which changes what h2spec measures
for port in "$ORIGIN_PORT" "$PORT"; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.05
  done
done
"$H2SPEC" "${args[@]}" "$@"
