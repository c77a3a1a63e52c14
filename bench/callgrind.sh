#!/bin/sh
# Instructions per request of one proxy under callgrind (repeatable, noise-free).
#   bench/callgrind.sh portico [--requests 5000] [--path /1k] [--conns 10]
#   bench/callgrind.sh nginx --tool perf      # perf stat instead (syscalls, ctx switches)
# See bench/instr.py --help.
set -e
if [ $# -lt 1 ]; then
    echo "usage: $0 portico|nginx|haproxy|h2o [instr.py options]" >&2
    exit 2
fi
exec /usr/bin/python3 "$(dirname "$0")/instr.py" "$@"
