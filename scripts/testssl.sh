#!/usr/bin/env bash
# Run testssl.sh (Debian package testssl.sh) against examples/tls.conf on
# loopback: certificates made in a temp dir as tests/integration/test_examples.py
# makes them, ports moved to 28080/28443/29443. Prints testssl's report.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PORTICO_BIN:-build/portico}
d=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$d"' EXIT
/usr/bin/python3 -c "import sys, pathlib; sys.path.insert(0, 'tests/integration');
import test_examples; test_examples.make_example_certs(pathlib.Path('$d'))"
sed -e "s|/tmp/portico-example|$d/portico-example|g" -e 's|127.0.0.1:8080|127.0.0.1:28080|' \
    -e 's|127.0.0.1:8443|127.0.0.1:28443|' -e 's|127.0.0.1:9443|127.0.0.1:29443|g' \
    examples/tls.conf >"$d/tls.conf"
"$BIN" -c "$d/tls.conf" >"$d/portico.out" 2>&1 &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/28443) 2>/dev/null && break; sleep 0.05; done
testssl --quiet --color 0 --ip=one --nodns=min --warnings=batch "$@" https://127.0.0.1:28443
