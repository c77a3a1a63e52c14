#!/usr/bin/env bash
# Install every Debian package Portico needs to build, test, fuzz and benchmark.
# Idempotent: packages already present are skipped by apt.
set -euo pipefail

PKGS=(
  # build
  build-essential meson ninja-build pkg-config clang lld
  libclang-rt-14-dev llvm
  # libraries
  libssl-dev libnghttp2-dev libpcre2-dev zlib1g-dev libbrotli-dev libzstd-dev libcrypt-dev
  # tests
  libcriterion-dev python3 python3-pytest python3-h2 python3-brotli python3-zstandard
  python3-jwt python3-cryptography curl testssl.sh
  nodejs
  # benchmark peers and load generators
  nginx-light haproxy wrk nghttp2-client
)

if [ "${1:-}" = "--bench" ]; then
  # varnish: the cache peer of the g scenarios (cache hits) only
  PKGS+=(h2o linux-perf valgrind varnish)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The nginx and varnish packages start system services on install; Portico's
# tests and benchmarks start their own instances, so stop them if they came up.
if command -v systemctl >/dev/null 2>&1; then
  for svc in nginx varnish varnishncsa; do
    $SUDO systemctl stop "$svc" 2>/dev/null || true
    $SUDO systemctl disable "$svc" 2>/dev/null || true
  done
fi
