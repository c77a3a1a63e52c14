#!/usr/bin/env bash
# Run every test suite and end with one "N passed, N failed" line.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${BUILD:-build}
ASAN_BUILD=${ASAN_BUILD:-build-asan}
passed=0
failed=0
failures=()

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# 1. C unit tests (Criterion) and fuzz corpus replays, under ASan+UBSan. Each
#    Criterion test case counts once; each replayed corpus file counts once.
log=$(mktemp)
meson test -C "$ASAN_BUILD" --suite unit --suite fuzz --print-errorlogs >"$log" 2>&1
grep -E "^ *[0-9]+/[0-9]+ |Ok:|Fail:|Timeout:" "$log" || true
tlog="$ASAN_BUILD/meson-logs/testlog.txt"
cp=$(grep -h "Synthesis:" "$tlog" | sed -E 's/.*Passing: ([0-9]+).*/\1/' | awk '{s+=$1} END {print s+0}')
cf=$(grep -h "Synthesis:" "$tlog" | sed -E 's/.*Failing: ([0-9]+) \| Crashing: ([0-9]+).*/\1 \2/' | awk '{s+=$1+$2} END {print s+0}')
fr=$(grep -h "^replayed [0-9]* files" "$tlog" | awk '{s+=$2} END {print s+0}')
ko=$(( $(grep -E "^Fail:" "$log" | awk '{print $2}') + $(grep -E "^Timeout:" "$log" | awk '{print $2}') ))
echo "unit: $cp passed, $cf failed; fuzz corpus: $fr inputs replayed"
passed=$((passed + cp + fr))
failed=$((failed + cf))
if [ "$ko" -gt 0 ]; then
  # a crash or a failed replay that Criterion's counts do not show
  [ "$cf" -eq 0 ] && failed=$((failed + ko))
  failures+=("unit/fuzz")
  grep -E "FAIL|TIMEOUT" "$log"
  tail -100 "$tlog"
fi
rm -f "$log"

# 2. The generated directive reference must match the tables.
if diff -u docs/directives.md <("$BUILD/portico" --docs) >/dev/null; then
  passed=$((passed + 1)); echo "docs/directives.md is up to date"
else
  failed=$((failed + 1)); failures+=("docs"); echo "docs/directives.md is stale: run 'make docs'"
fi

# 3. Integration tests: a real portico (the ASan build), real origins, real clients.
log=$(mktemp)
PORTICO_BIN="$PWD/$ASAN_BUILD/portico" PORTICO_RELEASE_BIN="$PWD/$BUILD/portico" \
  "$PYTHON" -m pytest tests/integration -q -p no:cacheprovider -rfE >"$log" 2>&1
rc=$?
tail -40 "$log"
ip=$(grep -oE "[0-9]+ passed" "$log" | tail -1 | awk '{print $1}')
if_=$(grep -oE "[0-9]+ (failed|error|errors)" "$log" | awk '{s+=$1} END {print s+0}')
passed=$((passed + ${ip:-0}))
failed=$((failed + ${if_:-0}))
if [ "$rc" -ne 0 ] && [ "${if_:-0}" -eq 0 ]; then failed=$((failed + 1)); failures+=("pytest rc=$rc"); fi
rm -f "$log"

echo
[ ${#failures[@]} -gt 0 ] && echo "failing suites: ${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
