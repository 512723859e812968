#!/usr/bin/env python3
"""The streaming half of workload 7 (bench/gateway.py) on its own, without
LiteLLM, and with the memory of `descartes serve` split by kind: for
working on the gateway's streaming path and rerunning quickly.

    bench/gateway_streams.py [--prefix build/prefix] [--hold 100,300,1000] [--seconds 10] [--no-direct]

- Streams of 2,000 chunks (the suite's nginx, bench/nginx.conf.in), closed
  loop on 4 connections (bench/loadgen.c): direct from nginx and through
  `descartes serve`. Besides the SSE events the client counted, the
  streams completed per second: the gateway may carry several upstream
  chunks in one event (the plugin coalesces what one read brought,
  DescartesPluginKit's EventBatcher), so upstream chunks/s (streams/s x
  2,000) is the number to compare with nginx's.
- For each N of --hold: N concurrent 50-chunk streams that nginx sends at
  2 KB/s; once every one has its first event (loadgen's "HOLDING"), the
  serve process's /proc/PID/smaps split into thread stacks, malloc arenas,
  the main heap, other anonymous memory and file-backed pages, and its
  thread count; and the peak RSS over the whole run (sampled every 50 ms).

Needs the release stage (`make stage-bench`, or --prefix DIR) and the
bodies of bench/gen.py (made here when missing). Prints a JSON object.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as suite_run  # noqa: E402
from gateway import GatewayBench, HOLD_STREAM, RATES, STREAM, rss_kb, tree  # noqa: E402
from common import log  # noqa: E402


class MiniSuite:
    """What GatewayBench reads from bench/run.py's Suite."""

    def __init__(self, server):
        self.server = server
        self.env = dict(os.environ, OPENAI_API_KEY=suite_run.KEY, ANTHROPIC_API_KEY=suite_run.KEY, NO_COLOR="1")
        self.env.pop("DESCARTES_PLUGIN_PATH", None)


def smaps_split(pid):
    """Resident KiB of `pid` by kind. Thread stacks: anonymous mappings of
    8 MiB (glibc's default stack; the guard page is a mapping of its own).
    Malloc arenas: anonymous mappings starting on a 64 MiB boundary (glibc's
    per-thread heaps are aligned to their maximum size)."""
    text = open(f"/proc/{pid}/smaps").read()
    out = {"stacks": 0, "stack_mappings": 0, "arenas": 0, "arena_mappings": 0, "heap": 0, "other_anon": 0, "files": 0, "total": 0}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if m:
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            cur = {"start": start, "size": end - start, "perms": m.group(3), "name": m.group(4)}
            continue
        m = re.match(r"^Rss:\s+(\d+) kB", line)
        if m and cur is not None:
            rss = int(m.group(1))
            out["total"] += rss
            name = cur["name"]
            if name == "[heap]":
                out["heap"] += rss
            elif name and not name.startswith("["):
                out["files"] += rss
            elif name == "" and cur["size"] == 8 << 20:
                out["stacks"] += rss
                out["stack_mappings"] += 1
            elif name == "" and cur["start"] % (64 << 20) == 0:
                out["arenas"] += rss
                out["arena_mappings"] += 1
            else:
                out["other_anon"] += rss
    out["threads"] = len(os.listdir(f"/proc/{pid}/task"))
    return out


def smaps_brief(pid):
    return ", ".join(f"{k} {v / 1024:.1f} MiB" if k not in ("threads", "stack_mappings", "arena_mappings") else f"{k} {v}"
                     for k, v in smaps_split(pid).items())


def hold(bench, t, n):
    cmd = [bench.loadgen, "--port", str(t.port), "--path", t.paths["hold"], "--body", bench.body("bench-hold", True),
           "--hold", str(n), "--stream"] + t.headers
    pid = t.proc.pid
    before = rss_kb(tree(pid))
    threads_before = len(os.listdir(f"/proc/{pid}/task"))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(p.stderr.fileno(), False)
    peak, split, err = 0, None, b""
    while p.poll() is None:
        peak = max(peak, rss_kb(tree(pid)))
        chunk = p.stderr.read() or b""
        err += chunk
        if split is None and b"HOLDING" in err:
            split = smaps_split(pid)
        time.sleep(0.05)
    out, rest = p.communicate()
    r = json.loads(out)
    return {"n": n, "rss_before_kb": before, "rss_peak_kb": peak, "threads_before": threads_before, "at_holding": split,
            "answered": r["answered"], "errors": r["errors"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", default=suite_run.PREFIX)
    ap.add_argument("--hold", default="100,300,1000")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--no-direct", action="store_true")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--sequence", action="store_true",
                    help="first the non-streaming part of workload 7 against descartes serve (warm-up, 100/500/1000 req/s, "
                         "closed loop on 64 connections), as the whole workload runs before its held streams")
    args = ap.parse_args()
    descartes = os.path.join(os.path.abspath(args.prefix), "bin", "descartes")
    os.makedirs(suite_run.BUILD, exist_ok=True)
    if not os.path.exists(suite_run.LOADGEN):
        suite_run.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-Wextra", "-o", suite_run.LOADGEN, os.path.join(HERE, "loadgen.c")])
    if not os.path.exists(os.path.join(suite_run.DATA, "www")):
        suite_run.run([sys.executable, os.path.join(HERE, "gen.py"), suite_run.DATA])
    server = suite_run.Nginx()
    results = {"prefix": args.prefix, "load_before": os.getloadavg()}
    bench = GatewayBench(MiniSuite(server), suite_run.ROOT, suite_run.BUILD, suite_run.DATA, descartes, suite_run.LOADGEN)
    targets = []
    try:
        if not args.no_direct:
            targets.append(bench.direct())
        serve = bench.descartes_serve()
        targets.append(serve)
        if args.sequence:
            bench.load(serve, "complete", ["--closed", "8", "--duration", "2"])
            for rate in RATES:
                bench.load(serve, "complete", ["--rate", str(rate), "--duration", str(args.seconds), "--connections", "64"])
                log(f"after {rate} req/s: {smaps_brief(serve.proc.pid)}")
            r = bench.load(serve, "complete", ["--closed", "64", "--duration", str(args.seconds)])
            log(f"after the closed loop on 64 connections ({r['rate']:,.0f} req/s): {smaps_brief(serve.proc.pid)}")
        if not args.no_stream:
            for t in targets:
                bench.load(t, "stream", ["--closed", "4", "--duration", "2"], stream=True)  # warm-up
                r = bench.load(t, "stream", ["--closed", "4", "--duration", str(args.seconds)], stream=True)
                r["upstream_chunks_per_second"] = r["rate"] * STREAM
                r["events_per_stream"] = r["events"] / max(1, r["answered"])
                results[f"stream {t.name}"] = r
                if t.proc is not None:
                    log(f"after the streams: {smaps_brief(t.proc.pid)}")
                log(f"{t.name}: {r['rate']:.1f} streams/s of {STREAM} chunks ({r['upstream_chunks_per_second']:,.0f} chunks/s), "
                    f"{r['events_per_second']:,.0f} events/s ({r['events_per_stream']:.0f} a stream), "
                    f"first event p50 {r['ttft_us']['p50'] / 1000:.2f} ms p99 {r['ttft_us']['p99'] / 1000:.2f} ms")
        for n in [int(x) for x in args.hold.split(",") if x]:
            h = hold(bench, serve, n)
            results[f"hold {n}"] = h
            s = h["at_holding"] or {}
            log(f"hold {n} ({HOLD_STREAM}-chunk slow streams): peak RSS {h['rss_peak_kb'] / 1024:.1f} MiB (before {h['rss_before_kb'] / 1024:.1f}), "
                f"answered {h['answered']}, errors {h['errors']}; at holding: " +
                ", ".join(f"{k} {v / 1024:.1f} MiB" if k not in ("threads", "stack_mappings", "arena_mappings") else f"{k} {v}"
                          for k, v in s.items()))
            log(f"after hold {n}: {smaps_brief(serve.proc.pid)}")
    finally:
        for t in targets:
            t.stop()
        server.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
