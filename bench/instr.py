#!/usr/bin/python3
"""Repeatable per-request costs of one proxy: a fixed number of requests (h2load --h1,
not a timed run) through the proxy, measured either under callgrind (instructions/request,
independent of machine noise) or with perf stat (syscalls, context switches, CPU time and,
where the CPU exposes them, instructions/cycles per request).

    bench/callgrind.sh portico                     # callgrind, 5000 requests of /1k
    /usr/bin/python3 bench/instr.py nginx --tool perf --requests 200000
    /usr/bin/python3 bench/instr.py haproxy --path /100k --conns 50
    bench/callgrind.sh portico --cache             # cache hits (the g scenarios' config)

With --cache the proxy gets the configuration of the cache scenarios (bench/run.py g1/g100:
@IF_CACHE@ lines), the warm-up fills the cache, and the run fails unless the origin saw no
request during the measured ones (every one a hit). varnish works with --tool perf only
(its worker threads live in a child process, which callgrind is not told to follow).

The proxy is warmed up first, then its counters are zeroed (callgrind_control -z) or perf
attaches (perf stat -p), so start-up and warm-up cost are excluded. The callgrind profile is
kept (path printed) for callgrind_annotate / kcachegrind.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def h2load(port, path, n, conns):
    out = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(conns), "-m", "1",
                          f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=max(120, n // 20))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    if not m:
        raise RuntimeError("h2load: " + out.stdout[-400:] + out.stderr[-400:])
    return int(m.group(1))


def tcp_segments():
    """TCP segments sent by the whole machine so far (loopback: every hop of client, proxy
    and origin, data and pure ACKs), -1 when nstat is missing"""
    try:
        out = subprocess.run(["nstat", "-az", "--json", "TcpOutSegs"], capture_output=True,
                             text=True, timeout=10).stdout
        return int(re.search(r'"TcpOutSegs":\s*(\d+)', out).group(1))
    except (OSError, AttributeError, subprocess.SubprocessError):
        return -1


def wrk(port, path, seconds, conns):
    """a timed wrk run (the load shape of bench/run.py), pinned like it; returns requests"""
    pre = ["taskset", "-c", "1"] if os.cpu_count() > 1 else []
    out = subprocess.run(pre + ["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s",
                                f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"(\d+) requests in", out.stdout)
    if not m or "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
        raise RuntimeError("wrk: " + out.stdout[-400:] + out.stderr[-400:])
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("proxy", choices=["portico", "nginx", "haproxy", "h2o", "varnish"])
    ap.add_argument("--tool", choices=["callgrind", "perf", "record"], default="callgrind",
                    help="record: perf record -g of the proxy, top symbols printed")
    ap.add_argument("--requests", type=int, default=None,
                    help="measured requests (default 5000 callgrind, 100000 perf/record)")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--path", default="/1k")
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--client", choices=["h2load", "wrk"], default="h2load",
                    help="wrk: a timed run (--seconds) shaped like bench/run.py's; perf only")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--cache", action="store_true",
                    help="cache scenarios' config; measure hits (origin must see none)")
    a = ap.parse_args()
    if a.proxy == "varnish" and a.tool == "callgrind":
        ap.error("varnish: use --tool perf (callgrind would only see the manager process)")
    if a.proxy == "varnish" and not a.cache:
        ap.error("varnish is a cache: use --cache")
    if a.cache and a.proxy == "h2o":
        ap.error("h2o 2.2 has no proxy cache")
    if a.client == "wrk" and a.tool == "callgrind":
        ap.error("--client wrk is timed: use --tool perf or record")
    sc = dict(cache=True) if a.cache else None
    n = a.requests or (5000 if a.tool == "callgrind" else 100000)
    run.raise_nofile()

    if not run.proxy_binary(a.proxy):
        print(run.missing_note(a.proxy))
        return 0
    work = tempfile.mkdtemp(prefix="portico-instr-")
    origin_bin = os.path.join(work, "origin")
    subprocess.run(["cc", "-O2", "-pthread", "-o", origin_bin,
                    os.path.join(run.BENCH, "origin.c")], check=True)
    oport = run.free_port()
    origin = run.Proc("origin", [origin_bin, "-p", str(oport)], "1" if os.cpu_count() > 1 else None,
                      os.path.join(work, "origin.out"))
    if not origin.wait_ready(oport):
        sys.exit("origin failed to start")
    wrapper = None
    cg_out = os.path.join(work, "callgrind.out.%p")
    if a.tool == "callgrind":
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}",
                   "--vgdb=yes", "--trace-children=no"]
    proc, port = run.start_proxy(a.proxy, oport, work, "0", 1, False, wrapper=wrapper,
                                 ready_timeout=90, sc=sc)
    if not proc:
        origin.stop()
        print(f"{a.proxy}: {port}")
        return 1
    perf = None
    try:
        h2load(port, a.path, a.warmup, a.conns)
        if a.cache:
            ok, note = run.check_hits(oport, port, a.path)
            print(f"{a.proxy} {a.path}: {note}")
            if not ok:
                raise RuntimeError("cache hits are not hits")
            o0 = run.origin_settle(oport)
        if a.tool == "callgrind":
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True, timeout=60)
            ok = h2load(port, a.path, n, a.conns)
            if a.cache:
                print(f"  origin requests during the measured ones: {run.origin_settle(oport) - o0}")
            for f in glob.glob(cg_out.replace("%p", str(proc.pid)) + "*"):
                os.unlink(f)
            subprocess.run(["callgrind_control", "-d", "measured", str(proc.pid)], check=True,
                           capture_output=True, timeout=120)
            time.sleep(0.5)
            dumps = sorted(glob.glob(cg_out.replace("%p", str(proc.pid)) + "*"),
                           key=os.path.getmtime)
            if not dumps:
                raise RuntimeError("no callgrind dump written")
            ir = None
            with open(dumps[-1]) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        ir = int(line.split()[1])
            print(f"{a.proxy} {a.path}: {ok} requests, {ir} instructions (Ir), "
                  f"{ir / ok:,.0f} instructions/request")
            print(f"profile: {dumps[-1]}  (callgrind_annotate {dumps[-1]} | head -40)")
            a.keep = True
        elif a.tool == "record":
            pd = os.path.join(work, "perf.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-o", pd, "-p",
                                     ",".join(map(str, run.tree(proc.pid)))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            ok = (wrk(port, a.path, a.seconds, a.conns) if a.client == "wrk"
                  else h2load(port, a.path, n, a.conns))
            perf.send_signal(signal.SIGINT)
            perf.wait(30)
            rep = subprocess.run(["perf", "report", "-i", pd, "--no-children", "--stdio",
                                  "-g", "none", "--percent-limit", "0.7", "--sort", "sym"],
                                 capture_output=True, text=True, timeout=300)
            print(f"{a.proxy} {a.path}: {ok} requests, self time by symbol (perf record):")
            for line in rep.stdout.splitlines():
                if line.strip() and not line.startswith("#"):
                    print("  " + line.strip())
            print(f"profile: {pd}  (perf report -i {pd})")
            a.keep = True
        else:
            pf = os.path.join(work, "perf.txt")
            perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", pf, "-e",
                                     "task-clock,context-switches,raw_syscalls:sys_enter,"
                                     "instructions,cycles", "-p",
                                     ",".join(map(str, run.tree(proc.pid)))])
            time.sleep(0.3)
            seg0 = tcp_segments()
            ok = (wrk(port, a.path, a.seconds, a.conns) if a.client == "wrk"
                  else h2load(port, a.path, n, a.conns))
            segs = tcp_segments() - seg0
            perf.send_signal(signal.SIGINT)
            perf.wait(10)
            if a.cache:
                print(f"  origin requests during the measured ones: {run.origin_settle(oport) - o0}")
            print(f"{a.proxy} {a.path}: {ok} requests, per request:")
            with open(pf) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) < 3 or line.startswith("#"):
                        continue
                    val, unit, ev = parts[0], parts[1], parts[2]
                    try:
                        v = float(val)
                    except ValueError:
                        print(f"  {ev:28s} {val}")
                        continue
                    if ev == "task-clock":  # msec
                        print(f"  {'CPU time':28s} {v * 1000 / ok:10.2f} µs")
                    else:
                        print(f"  {ev:28s} {v / ok:10.2f}")
            if segs >= 0:
                print(f"  {'TCP segments (all hosts)':28s} {segs / ok:10.2f}")
    finally:
        if perf and perf.poll() is None:
            perf.kill()
        proc.stop()
        origin.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
