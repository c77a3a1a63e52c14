#!/usr/bin/env bash
# Run the HTTP caching tests of https://github.com/http-tests/cache-tests
# against Portico (or nginx, for a reference number), both on loopback.
#   scripts/cache-tests.sh PATH_TO_CACHE_TESTS [--proxy portico|nginx]
#                          [--no-cache] [--out FILE] [--id TEST_ID]
# Bring the suite's source yourself and run `npm install` in it. Starts its
# test server and the proxy in front of it on free 127.0.0.1 ports, runs its
# client against the proxy, saves the JSON results (default
# /tmp/cache-tests-results-<proxy>.json) and prints a summary of the required
# tests. --no-cache leaves the cache directives out (plumbing baseline);
# --id runs one test and prints its requests and responses.
# Uses build/portico (PORTICO_BIN to override) and /usr/sbin/nginx (NGINX_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/cache-tests.sh PATH_TO_CACHE_TESTS [--proxy portico|nginx] [--no-cache] [--out FILE] [--id TEST_ID]"
SUITE=$(realpath "${1:?$usage}")
shift
PROXY=portico NOCACHE=0 OUT="" TEST_ID=""
while [ $# -gt 0 ]; do
  case "$1" in
    --proxy) PROXY=${2:?$usage}; shift 2 ;;
    --no-cache) NOCACHE=1; shift ;;
    --out) OUT=${2:?$usage}; shift 2 ;;
    --id) TEST_ID=${2:?$usage}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
case "$PROXY" in portico|nginx) ;; *) echo "$usage" >&2; exit 2 ;; esac
suffix=$PROXY; [ "$NOCACHE" = 1 ] && suffix=$PROXY-nocache
OUT=${OUT:-/tmp/cache-tests-results-$suffix.json}
[ -f "$SUITE/tests/index.mjs" ] || { echo "$SUITE: no tests/index.mjs" >&2; exit 2; }
[ -d "$SUITE/node_modules" ] || { echo "$SUITE: run 'npm install' there first" >&2; exit 2; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# wait_port PORT PID NAME LOG: poll until PORT accepts, for at most 10 s
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; its log:" >&2; cat "$4" >&2; exit 1; }
    sleep 0.05
  done
  echo "$3 is not listening on 127.0.0.1:$1 after 10 s; its log:" >&2; cat "$4" >&2; exit 1
}

# The suite's test server (the origin). Its server.mjs listens on every
# interface; this shim makes that listen() bind 127.0.0.1 only.
ORIGIN_PORT=$(free_port)
cat >"$tmp/origin.mjs" <<'JS'
import net from 'node:net'
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (port) { return listen.call(this, port, '127.0.0.1') }
await import(process.argv[2])
JS
npm_config_protocol=http npm_config_port=$ORIGIN_PORT npm_config_pidfile=$tmp/origin.pid \
  node "$tmp/origin.mjs" "$SUITE/test-engine/server/server.mjs" >"$tmp/origin.log" 2>&1 &
pids+=($!)
wait_port "$ORIGIN_PORT" "${pids[-1]}" "cache-tests server" "$tmp/origin.log"

# The proxy. The same configuration for both: no proxy_cache_valid, so only
# the origin's headers decide freshness; revalidation with validators on;
# a stale response may answer when the origin fails (the usual production
# setting; must-revalidate and friends still forbid it); X-Cache-Status
# shows HIT/MISS/... in --id dumps.
PORT=$(free_port)
cache_http="" cache_loc=""
if [ "$NOCACHE" = 0 ]; then
  cache_http="proxy_cache_path $tmp/cache levels=1:2 keys_zone=cachetests:10m max_size=100m inactive=60m;"
  cache_loc="proxy_cache cachetests; proxy_cache_revalidate on;
      proxy_cache_use_stale error timeout;
      add_header X-Cache-Status \$upstream_cache_status always;"
fi
server="server {
    listen 127.0.0.1:$PORT;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT;
      proxy_http_version 1.1;
      $cache_loc
    }
  }"
if [ "$PROXY" = portico ]; then
  cat >"$tmp/proxy.conf" <<CONF
worker_processes 1;
error_log $tmp/proxy.log info;
pid $tmp/proxy.pid;
events {}
http {
  access_log $tmp/access.log;
  $cache_http
  $server
}
CONF
  "${PORTICO_BIN:-build/portico}" -c "$tmp/proxy.conf" >>"$tmp/proxy.log" 2>&1 &
else
  mkdir -p "$tmp/logs"
  cat >"$tmp/proxy.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
error_log $tmp/proxy.log info;
pid $tmp/proxy.pid;
events { worker_connections 1024; }
http {
  access_log $tmp/access.log;
  client_body_temp_path $tmp/client_body;
  proxy_temp_path $tmp/proxy_temp;
  fastcgi_temp_path $tmp/fastcgi_temp;
  uwsgi_temp_path $tmp/uwsgi_temp;
  scgi_temp_path $tmp/scgi_temp;
  $cache_http
  $server
}
CONF
  "${NGINX_BIN:-/usr/sbin/nginx}" -p "$tmp" -e "$tmp/proxy.log" -c "$tmp/proxy.conf" >>"$tmp/proxy.log" 2>&1 &
fi
pids+=($!)
wait_port "$PORT" "${pids[-1]}" "$PROXY" "$tmp/proxy.log"

# The client: one test with its exchanges dumped, or all of them as JSON.
# Each request has a 10 s timeout of its own; the whole run is bounded too.
# cli.mjs reads npm_config_id, falling back to npm_package_config_id if empty
export npm_config_base="http://127.0.0.1:$PORT" npm_config_id="$TEST_ID" npm_package_config_id="$TEST_ID"
if [ -n "$TEST_ID" ]; then
  (cd "$SUITE" && timeout 120 node --no-warnings test-engine/cli.mjs)
  exit
fi
echo "cache-tests: $PROXY$([ "$NOCACHE" = 1 ] && echo ' (no cache)') on 127.0.0.1:$PORT, origin 127.0.0.1:$ORIGIN_PORT" >&2
# in the background so that INT/TERM end the run at once (wait is interruptible)
(cd "$SUITE" && exec timeout 900 node --no-warnings test-engine/cli.mjs) >"$tmp/results.json" 2>"$tmp/client.log" &
pids+=($!)
wait "${pids[-1]}" || { echo "the cache-tests client failed:" >&2; cat "$tmp/client.log" >&2; exit 1; }
cp "$tmp/results.json" "$OUT"
echo "results: $OUT" >&2
/usr/bin/python3 scripts/cache_tests_summary.py "$SUITE" "$OUT" --label "$suffix"
