#!/usr/bin/env python3
"""The benchmark suite (`make bench`): descartes against a C client doing the
same work (bench/baseline.c, libcurl + cJSON), both against nginx on
127.0.0.1 serving pre-generated bodies (bench/gen.py, bench/nginx.conf.in).
Writes the table to docs/benchmarks.md and every run to
build/bench/results.json.

    bench/run.py [--runs 5] [--only 1,2,3,4,5,6,7,8] [--out docs/benchmarks.md]
                 [--wait-quiet SECONDS] [--skip-build] [--prefix DIR]
    bench/run.py --profile sequential|sequential-anthropic|stream-openai|stream-anthropic|stream-ollama|concurrent [--skip-build]
    bench/run.py --profile one-shot|cold-start|memory [--skip-build]

Run it from the repository (make bench builds the release prefix first).
Each workload runs descartes and the baseline alternately, --runs times
each, and reports medians. See docs/benchmarks.md for what each one measures.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common import free_port, log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "bench")
DATA = os.path.join(BUILD, "data")
PREFIX = os.path.join(ROOT, "build", "prefix")
DESCARTES = os.path.join(PREFIX, "bin", "descartes")
# Staged beside descartes by `make bench` (not installed), so it finds the
# staged plugins the way descartes does.
BENCH = os.path.join(PREFIX, "bin", "descartes-bench")
BASELINE = os.path.join(BUILD, "baseline")
REPLAY = os.path.join(BUILD, "replay")
LOADGEN = os.path.join(BUILD, "loadgen")
KEY = "sk-bench-0123456789abcdef"
PROMPT = "Say hello to the benchmark in one short sentence."

SEQUENTIAL = 2000
LONG_STREAM = 100_000
CONCURRENT_STREAMS = 200
CONCURRENT_CHUNKS = 2000


def run(cmd, env=None, check=True, capture=True, cwd=None, input=None):
    p = subprocess.run(cmd, env=env, cwd=cwd, input=input, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{(p.stderr or b'').decode(errors='replace')[-3000:]}")
    return p


def run_json(cmd, env=None, cwd=None):
    p = run(cmd, env=env, check=False, cwd=cwd)
    out = p.stdout.decode(errors="replace").strip().splitlines()
    if p.returncode != 0 or not out:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\nstdout: {p.stdout.decode(errors='replace')[-2000:]}\n"
                           f"stderr: {p.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(out[-1])


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ---- setup --------------------------------------------------------------------

def ensure_tools():
    """nginx, hyperfine and libcjson-dev from Debian, installed if missing."""
    need = []
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        need.append("nginx-light")
    if not shutil.which("hyperfine"):
        need.append("hyperfine")
    if not os.path.exists("/usr/include/cjson/cJSON.h"):
        need.append("libcjson-dev")
    if not shutil.which("curl"):
        need.append("curl")
    if not need:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: missing Debian packages: {' '.join(need)} (apt-get install them, or run as root)")
    log(f"installing {' '.join(need)} from apt")
    run(["apt-get", "update", "-qq"], capture=False)
    run(["apt-get", "install", "-y", "-qq"] + need, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), capture=False)


def build(skip):
    os.makedirs(BUILD, exist_ok=True)
    if not skip:
        log("building the release prefix with descartes-bench (make stage-bench)")
        run(["make", "--no-print-directory", "stage-bench"], cwd=ROOT, capture=False)
    if not os.path.exists(BENCH):
        sys.exit(f"bench: {BENCH} is missing: run `make stage-bench` (or `make bench`)")
    cc = os.environ.get("CC", "cc")
    run([cc, "-O2", "-Wall", "-Wextra", "-o", BASELINE, os.path.join(ROOT, "bench/baseline.c"), "-lcurl", "-lcjson"])
    run([cc, "-O2", "-Wall", "-Wextra", "-o", REPLAY, os.path.join(ROOT, "bench/replay.c")])
    run([cc, "-O2", "-Wall", "-Wextra", "-o", LOADGEN, os.path.join(ROOT, "bench/loadgen.c")])
    log("generating the bodies (bench/gen.py)")
    run([sys.executable, os.path.join(ROOT, "bench/gen.py"), DATA])


class Nginx:
    def __init__(self):
        self.port = free_port()
        for d in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            os.makedirs(os.path.join(DATA, d), exist_ok=True)
        conf = open(os.path.join(ROOT, "bench/nginx.conf.in")).read()
        conf = conf.replace("@PREFIX@", DATA).replace("@PORT@", str(self.port))
        if os.geteuid() != 0:
            conf = conf.replace("user root;\n", "")
        self.conf = os.path.join(DATA, "nginx.conf")
        open(self.conf, "w").write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", DATA, "-c", self.conf, "-e", os.path.join(DATA, "nginx-error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    sys.exit(f"bench: nginx did not start: {self.proc.stderr.read().decode(errors='replace')}")
                time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        log(f"nginx {self.nginx_version()} on {self.base}")
        self.check_answers()

    def check_answers(self):
        """The answers served from memory (answers.conf) must be the
        generated files byte for byte, as JSON, to a POST."""
        for path in ("/openai/complete/v1/chat/completions", "/anthropic/complete/v1/messages"):
            want = open(os.path.join(DATA, "www", path.lstrip("/")), "rb").read()
            c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            c.sendall(f"POST {path} HTTP/1.0\r\nHost: bench\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 2\r\n\r\n{{}}".encode())
            got = b""
            while chunk := c.recv(65536):
                got += chunk
            c.close()
            head, _, body = got.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or b"\r\nContent-Type: application/json" not in head or body != want:
                self.stop()
                sys.exit(f"bench: nginx answers a POST to {path} with something other than "
                         f"{os.path.relpath(os.path.join(DATA, 'www', path.lstrip('/')), ROOT)} as JSON "
                         f"(bench/gen.py's answers.conf): {head.decode(errors='replace')!r}, {len(body)} bytes of body against {len(want)}")

    @staticmethod
    def nginx_version():
        p = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        return p.stderr.decode().strip().split("/")[-1]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---- measuring --------------------------------------------------------------------

class Suite:
    def __init__(self, args, server):
        self.args = args
        self.server = server
        self.rows = []        # the table
        self.raw = {}         # every run, for results.json
        self.notes = []       # what the table cannot say
        self.commands = []    # one example command line per measurement
        self.env = dict(os.environ, OPENAI_API_KEY=KEY, ANTHROPIC_API_KEY=KEY, NO_COLOR="1")
        self.env.pop("DESCARTES_PLUGIN_PATH", None)

    def url(self, path):
        return self.server.base + path

    def expect(self, name):
        return os.path.join(DATA, "expected", name)

    def pair(self, key, descartes_cmd, baseline_cmd, cwd=None):
        """Runs both commands alternately; returns ([descartes results], [baseline results])."""
        self.commands.append((key, descartes_cmd, baseline_cmd))
        d, b = [], []
        for i in range(self.args.runs):
            order = [(descartes_cmd, d), (baseline_cmd, b)]
            if i % 2:
                order.reverse()
            for cmd, into in order:
                r = run_json(cmd, env=self.env, cwd=cwd)
                if r.get("text_matches") is False:
                    raise RuntimeError(f"{key}: the joined text differs from the expected text: {' '.join(cmd)}")
                into.append(r)
        self.raw[key] = {"descartes": d, "baseline": b}
        return d, b

    def row(self, workload, measure, ours, theirs, unit, target, met, ratio=None, fmt="{:,.0f}"):
        self.rows.append({
            "workload": workload, "measure": measure, "unit": unit,
            "descartes": fmt.format(ours) if isinstance(ours, (int, float)) else ours,
            "reference": fmt.format(theirs) if isinstance(theirs, (int, float)) else theirs,
            "ratio": ratio, "target": target, "met": met,
        })

    def cpu_rows(self, d, b, per, units):
        """CPU time (user + system, the timed part, each side's getrusage) per
        request or per chunk, and the voluntary context switches of a run."""
        ours = median([r["cpu_seconds"] / units for r in d]) * 1e6
        theirs = median([r["cpu_seconds"] / units for r in b]) * 1e6
        self.row("", f"CPU per {per} (ratio: descartes over C)", ours, theirs, "µs", "", None, ours / theirs, fmt="{:.2f} µs")
        self.row("", "voluntary context switches (a run)", median([r["voluntary_switches"] for r in d]),
                 median([r["voluntary_switches"] for r in b]), "", "", None, fmt="{:,.0f}")

    # 1 -------------------------------------------------------------------------------
    def sequential(self):
        for fmt, label, base, tail in (("openai", "OpenAI", "/openai/complete/v1", "/chat/completions"),
                                       ("anthropic", "Anthropic", "/anthropic/complete/v1", "/messages")):
            log(f"workload 1: {SEQUENTIAL} sequential completions, {label}")
            d, b = self.pair(
                f"1-sequential-{fmt}",
                [BENCH, "-p", fmt, "--set", f"endpoint={self.url(base)}", "-n", str(SEQUENTIAL),
                 "--prompt", PROMPT, "--expect", self.expect("complete.txt"), "--json"],
                [BASELINE, "complete", fmt, self.url(base + tail), str(SEQUENTIAL), "--expect", self.expect("complete.txt")])
            ours, theirs = median([r["requests_per_second"] for r in d]), median([r["requests_per_second"] for r in b])
            ratio = ours / theirs
            self.row(f"1. 2,000 sequential non-streaming completions, {label}", "requests/s", ours, theirs, "req/s", ">= 0.8x",
                     ratio >= 0.8, ratio)
            self.row("", "median latency", median([r["latency_ms"]["median"] for r in d]),
                     median([r["latency_ms"]["median"] for r in b]), "ms", "", None, fmt="{:.3f} ms")
            self.cpu_rows(d, b, "request", SEQUENTIAL)

    # 2 -------------------------------------------------------------------------------
    def long_streams(self):
        n = LONG_STREAM
        for fmt, label, path, tail in (
            ("openai", "OpenAI SSE", f"/openai/stream-{n}/v1", "/chat/completions"),
            ("anthropic", "Anthropic SSE", f"/anthropic/stream-{n}/v1", "/messages"),
            ("ollama", "Ollama NDJSON", f"/ollama/stream-{n}", "/api/chat"),
        ):
            if fmt == "ollama" and not self.has_plugin("ollama"):
                self.notes.append("Workload 2, Ollama NDJSON: not run, the ollama plugin is not built in this tree.")
                continue
            log(f"workload 2: one stream of {n:,} chunks, {label}")
            d, b = self.pair(
                f"2-stream-{fmt}",
                [BENCH, "-p", fmt, "--set", f"endpoint={self.url(path)}", "--stream", "-n", "1",
                 "--prompt", PROMPT, "--expect", self.expect(f"{fmt}-{n}.txt"), "--json"] + self.model_args(fmt),
                [BASELINE, "stream", fmt, self.url(path + tail), "1", "--expect", self.expect(f"{fmt}-{n}.txt")])
            ours = n / median([r["seconds"] for r in d])
            theirs = n / median([r["seconds"] for r in b])
            ratio = ours / theirs
            self.row(f"2. one stream of 100,000 chunks, {label}", "chunks/s", ours, theirs, "chunks/s", ">= 0.9x", ratio >= 0.9, ratio)
            rss, brss = median([r["peak_rss_kb"] for r in d]) / 1024, median([r["peak_rss_kb"] for r in b]) / 1024
            self.row("", "peak RSS", rss, brss, "MiB", "< 30 MB", rss * 1.048576 < 30, fmt="{:.1f} MiB")
            self.cpu_rows(d, b, "chunk", n)

    # 3 -------------------------------------------------------------------------------
    def concurrent(self):
        k, n = CONCURRENT_STREAMS, CONCURRENT_CHUNKS
        log(f"workload 3: {k} concurrent streams of {n:,} chunks")
        path = f"/openai/stream-{n}/v1"
        d, b = self.pair(
            "3-concurrent",
            [BENCH, "-p", "openai", "--set", f"endpoint={self.url(path)}", "--stream", "-n", str(k), "-c", str(k),
             "--prompt", PROMPT, "--expect", self.expect(f"openai-{n}.txt"), "--json"],
            [BASELINE, "stream", "openai", self.url(path + "/chat/completions"), str(k), "--concurrency", str(k),
             "--expect", self.expect(f"openai-{n}.txt")])
        total = k * n
        ours, theirs = total / median([r["seconds"] for r in d]), total / median([r["seconds"] for r in b])
        ratio = ours / theirs
        self.row(f"3. {k} concurrent streams of 2,000 chunks (OpenAI SSE)", "total chunks/s", ours, theirs, "chunks/s", ">= 0.9x",
                 ratio >= 0.9, ratio)
        threads = max(r["threads_peak"] for r in d)
        self.row("", "threads (most seen)", threads, max(r["threads_peak"] for r in b), "", "<= 8", threads <= 8, fmt="{}")
        rss, brss = median([r["peak_rss_kb"] for r in d]) / 1024, median([r["peak_rss_kb"] for r in b]) / 1024
        self.row("", "peak RSS", rss, brss, "MiB", "< 3x baseline", rss < 3 * brss, rss / brss, fmt="{:.1f} MiB")
        self.cpu_rows(d, b, "chunk", total)

    # 4, 5 --------------------------------------------------------------------------
    def hyperfine(self, key, commands, runs=None, env=None):
        """Median wall time in ms of each command (hyperfine, no shell)."""
        out = os.path.join(BUILD, f"hyperfine-{key}.json")
        runs = runs or max(30, self.args.runs * 6)
        cmd = ["hyperfine", "-N", "--warmup", "5", "--runs", str(runs), "--export-json", out, "--style", "none"]
        cmd += commands
        run(cmd, env=env or self.env)
        res = json.load(open(out))["results"]
        self.raw[key] = res
        self.commands.append((key, cmd[:-len(commands)] + [f"'{c}'" for c in commands], None))
        return [r["median"] * 1000 for r in res]

    def cold_start(self):
        log("workload 4: cold start")
        version, listing, curl = self.hyperfine("4-cold-start", [
            f"{DESCARTES} --version", f"{DESCARTES} plugins list", "curl --version"])
        manifests = len([f for f in os.listdir(os.path.join(PREFIX, "lib/descartes/plugins")) if f.endswith(".yaml")])
        self.row("4. cold start: `descartes --version`", "wall time", f"{version:.2f} ms", f"{curl:.2f} ms (curl --version)", "ms",
                 "<= 2x", version <= 2 * curl, version / curl)
        # Issue 22's target: no slower than curl --version.
        self.row(f"4. cold start: `descartes plugins list` ({manifests} manifests)", "wall time", f"{listing:.2f} ms",
                 f"{curl:.2f} ms (curl --version)", "ms", "<= 1x", listing <= curl, listing / curl)

    def one_shot(self):
        log("workload 5: one-shot CLI")
        base = self.url("/openai/complete/v1")
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "stream": False})
        # Every `complete` records its turn in the conversation store: one of the run's own (XDG_DATA_HOME), so
        # that the user's history (its size, a WAL that other processes, of other builds, left long) does not move
        # the number. The warm-ups create it; the timed runs find it as a user's second turn onwards does.
        data = tempfile.mkdtemp(prefix="descartes-bench-data-")
        try:
            ours, curl = self.hyperfine("5-one-shot", [
                f"{DESCARTES} complete -p openai --set endpoint={base} '{PROMPT}'",
                f"curl -sS -X POST {base}/chat/completions -H 'Authorization: Bearer {KEY}' -H 'Content-Type: application/json' -d '{body}'",
            ], env=dict(self.env, XDG_DATA_HOME=data))
        finally:
            shutil.rmtree(data, ignore_errors=True)
        # Issue 22's target.
        self.row("5. one-shot `descartes complete` (plugin load included)", "wall time", f"{ours:.2f} ms",
                 f"{curl:.2f} ms (curl, same request)", "ms", "<= 1.5x", ours <= 1.5 * curl, ours / curl)

    # 6 -------------------------------------------------------------------------------
    def headless(self):
        claude_sh = os.path.join(os.path.dirname(ROOT), "shared", "tools", "claude-cli.sh")
        claude = os.environ.get("DESCARTES_CLAUDE")
        if not claude and os.path.exists(claude_sh):
            p = run([claude_sh], check=False)
            if p.returncode == 0:
                claude = p.stdout.decode().strip()
        if not claude or not os.path.exists(claude):
            self.notes.append("Workload 6: not run, no claude binary (set DESCARTES_CLAUDE or provide ../shared/tools/claude-cli.sh).")
            return
        home = tempfile.mkdtemp(prefix="descartes-bench-home-")
        work = tempfile.mkdtemp(prefix="descartes-bench-work-")
        os.makedirs(os.path.join(home, "tmp"))
        quiet = {
            "HOME": home, "TMPDIR": os.path.join(home, "tmp"), "ANTHROPIC_BASE_URL": self.url("/claude"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
        }
        stdin = os.path.join(BUILD, "claude-stdin.jsonl")
        open(stdin, "w").write(json.dumps({"type": "user", "message": {"role": "user", "content": PROMPT}}) + "\n")
        # The command line the plugin runs for a non-streamed request with
        # `tools` set to none (Plugins/ClaudeCode/ClaudeRequest.swift).
        args = ["-p", "--output-format", "stream-json", "--verbose", "--input-format", "stream-json", "--tools=",
                "--no-session-persistence"]
        direct_env = dict(self.env, **quiet)
        direct_env["ANTHROPIC_API_KEY"] = KEY
        # Record a real claude's output once, for the replay stand-in.
        replay_file = os.path.join(BUILD, "claude-replay.jsonl")
        p = run([claude] + args, env=direct_env, cwd=work, input=open(stdin, "rb").read())
        open(replay_file, "wb").write(p.stdout)

        def plugin_cmd(command, n, extra_env, session=False):
            env_map = ",".join(f"{k}={v}" for k, v in dict(quiet, **extra_env).items())
            return [BENCH, "-p", "claude-code-cli", "--set", f"command={command}", "--set", "tools=",
                    "--set", f"cwd={work}", "--set", f"env={env_map}", "--set", "max_retries=0", "-n", str(n),
                    "--prompt", PROMPT, "--json"] + (["--session"] if session else [])

        # (a) The replay stand-in: the plugin's own cost, precisely.
        n = 100
        log(f"workload 6: claude-code-cli over a replayed claude, {n} requests")
        renv = {"DESCARTES_BENCH_REPLAY": replay_file}
        self.env.update(renv)
        d, b = self.pair("6-headless-replay", plugin_cmd(REPLAY, n, renv), [BASELINE, "spawn", str(n), stdin, "--", REPLAY] + args,
                         cwd=work)
        for k in renv:
            self.env.pop(k)
        ours, theirs = median([r["latency_ms"]["median"] for r in d]), median([r["latency_ms"]["median"] for r in b])
        self.row("6. headless: claude-code-cli plugin vs the same command run directly (replayed claude output)",
                 "added per request", f"{ours - theirs:.2f} ms", f"{ours:.2f} vs {theirs:.2f} ms per request", "ms", "< 5 ms",
                 ours - theirs < 5)

        # (b) The real claude: the same comparison, in Claude Code's noise.
        n = 15
        log(f"workload 6: claude-code-cli over the real claude, {n} requests per run")
        saved = dict(self.env)
        self.env.update(direct_env)
        d, b = self.pair("6-headless-claude", plugin_cmd(claude, n, {}), [BASELINE, "spawn", str(n), stdin, "--", claude] + args,
                         cwd=work)
        self.env = saved
        ours = median([x for r in d for x in [r["latency_ms"]["median"]]])
        theirs = median([x for r in b for x in [r["latency_ms"]["median"]]])
        spread = [x for side in (d, b) for r in side for x in (r["latency_ms"]["min"], r["latency_ms"]["max"])]
        self.row("6. headless: the same with the real claude", "added per request", f"{ours - theirs:+.1f} ms",
                 f"{ours:.0f} vs {theirs:.0f} ms per request", "ms", "< 5 ms", None)
        self.notes.append(
            f"Workload 6 with the real claude ({n} requests per run, medians of {self.args.runs} runs): Claude Code takes "
            f"about a second of CPU to start, and single requests ranged from {min(spread):.0f} to {max(spread):.0f} ms, "
            "far wider than 5 ms, on either side; the replayed row measures the plugin's cost without that noise (and is "
            "the one judged), the real row shows the same comparison as a user sees it.")

        # (c) Session mode: a later turn against a fresh spawn.
        log("workload 6: session turns against fresh spawns")
        self.env.update(direct_env)
        turns = [run_json(plugin_cmd(claude, n, {}, session=True), env=self.env) for _ in range(self.args.runs)]
        self.env = saved
        self.raw["6-headless-session"] = turns
        later = median([r["latency_ms"]["median"] for r in turns])
        first = median([r["session_first_turn_ms"] for r in turns])
        self.commands.append(("6-headless-session", plugin_cmd(claude, n, {}, session=True), None))
        self.row("6. headless: session mode, a later turn vs a fresh spawn", "per request", f"{later:.0f} ms",
                 f"{ours:.0f} ms (fresh spawn through the plugin; first session turn {first:.0f} ms)", "ms", "faster",
                 later < ours, later / ours)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    # helpers ------------------------------------------------------------------------
    def has_plugin(self, name):
        return os.path.exists(os.path.join(PREFIX, "lib/descartes/plugins", f"{name}.yaml"))

    @staticmethod
    def model_args(fmt):
        return ["-m", "llama3.2:1b"] if fmt == "ollama" else []


# ---- profiles (callgrind) ------------------------------------------------------------

def profile(name, server):
    """Instruction counts per request (or per chunk) of descartes and the
    baseline under callgrind, and the functions that account for them: each
    side runs a small and a large count, and the difference is divided by the
    extra units, so start-up and plugin loading drop out. Instruction counts
    do not depend on what else the machine is doing."""
    prof = os.path.join(BUILD, "profile-prefix")
    shutil.rmtree(prof, ignore_errors=True)
    shutil.copytree(PREFIX, prof, symlinks=True)
    # valgrind 3.19 cannot read the DWARF 5 that swiftc writes: keep the
    # symbols, drop the debug sections.
    for d, _, files in os.walk(prof):
        for f in files:
            if f.endswith(".so") or d.endswith("/bin"):
                run(["strip", "--strip-debug", os.path.join(d, f)])
    if name in ("one-shot", "cold-start"):
        return profile_start(name, server, prof)
    if name == "memory":
        return profile_memory(server, prof)
    exe = os.path.join(prof, "bin", "descartes-bench")
    u = server.base
    if name in ("sequential", "sequential-anthropic"):
        small, large, unit = 1, 1001, "request"
        fmt, base, tail = (("anthropic", "/anthropic/complete/v1", "/messages") if name == "sequential-anthropic"
                           else ("openai", "/openai/complete/v1", "/chat/completions"))
        ours = lambda n: [exe, "-p", fmt, "--set", f"endpoint={u}{base}", "-n", str(n), "--json"]
        theirs = lambda n: [BASELINE, "complete", fmt, f"{u}{base}{tail}", str(n)]
    elif name.startswith("stream-"):
        fmt = name.split("-", 1)[1]
        path, tail = {"openai": ("/openai/stream-{}/v1", "/chat/completions"),
                      "anthropic": ("/anthropic/stream-{}/v1", "/messages"),
                      "ollama": ("/ollama/stream-{}", "/api/chat")}[fmt]
        small, large, unit = 2000, 100_000, "chunk"
        ours = lambda n: [exe, "-p", fmt, "--set", f"endpoint={u}{path.format(n)}", "--stream", "-n", "1",
                          "--json"] + Suite.model_args(fmt)
        theirs = lambda n: [BASELINE, "stream", fmt, f"{u}{path.format(n)}{tail}", "1"]
    elif name == "concurrent":
        small, large, unit = 1, 200, "stream of 2,000 chunks"
        ours = lambda n: [exe, "-p", "openai", "--set", f"endpoint={u}/openai/stream-2000/v1", "--stream", "-n", str(n),
                          "-c", str(n), "--json"]
        theirs = lambda n: [BASELINE, "stream", "openai", f"{u}/openai/stream-2000/v1/chat/completions", str(n), "--concurrency", str(n)]
    else:
        sys.exit(f"bench: no profile named {name}")
    env = dict(os.environ, OPENAI_API_KEY=KEY, ANTHROPIC_API_KEY=KEY)
    report = []
    for who, cmd in (("descartes", ours), ("baseline", theirs)):
        outs = []
        for n in (small, large):
            out = os.path.join(BUILD, f"callgrind-{name}-{who}-{n}.out")
            p = run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd(n), env=env, check=False)
            if p.returncode != 0:
                sys.exit(f"bench: {' '.join(cmd(n))} under callgrind failed:\n{p.stderr.decode(errors='replace')[-2000:]}")
            outs.append(out)
        a, b = callgrind_functions(outs[0]), callgrind_functions(outs[1])
        units = large - small
        diff = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
        total = sum(diff.values())
        report.append(f"{who}: {total / units:,.0f} instructions per {unit} "
                      f"(callgrind, {large} minus {small}; files {os.path.relpath(outs[1], ROOT)})")
        for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:30 if who == "descartes" else 12]:
            report.append(f"  {v / units:10,.0f}  {k[:150]}")
        report.append("")
    text = "\n".join(report)
    open(os.path.join(BUILD, f"profile-{name}.txt"), "w").write(text)
    print(text)


# What each phase of a one-shot command is, as callgrind_annotate --inclusive names it (the first
# match of each pattern; the phases nest in none of the others).
START_PHASES = [
    ("process start: the dynamic loader maps and relocates the executable's libraries", r"rtld\.c:_dl_start "),
    ("plugin discovery (manifests read and checked)", r"\$s9Descartes13PluginCatalogC(5entry3for|7entries|8discoverACyFZ)"),
    ("dlopen (descartes: the plugin, with libcurl, OpenSSL and their libraries relocated)", r"dlopen\.c:dlopen@@"),
    ("libcurl initialized (OpenSSL's initialization, its configuration file)", r"\?\?\?:curl_global_init "),
]


def profile_start(name, server, prof):
    """Instructions of one whole run of a one-shot command (`one-shot`: descartes complete against curl sending the
    same request; `cold-start`: descartes --version and plugins list against curl --version), split into the phases
    of START_PHASES by their inclusive cost, the rest being everything else (the command's own work, the request,
    the Swift runtime, exit)."""
    exe = os.path.join(prof, "bin", "descartes")
    base = server.base + "/openai/complete/v1"
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "stream": False})
    if name == "one-shot":
        cmds = [("descartes complete", [exe, "complete", "-p", "openai", "--set", f"endpoint={base}", PROMPT]),
                ("curl, the same request", ["curl", "-sS", "-X", "POST", f"{base}/chat/completions", "-H", f"Authorization: Bearer {KEY}",
                                            "-H", "Content-Type: application/json", "-d", body])]
    else:
        cmds = [("descartes --version", [exe, "--version"]),
                ("descartes plugins list, no manifest cache (every manifest read and checked)", [exe, "plugins", "list"]),
                ("descartes plugins list, the manifest cache of the run before", [exe, "plugins", "list"]),
                ("curl --version", ["curl", "--version"])]
    # The manifest cache (ManifestCache) in a directory of its own, empty at the start: the first run that discovers
    # reads every manifest and writes it, the next reads it (a one-shot `complete` is measured after a warm-up run).
    cache = tempfile.mkdtemp(prefix="descartes-bench-cache-")
    # The conversation store too (as workload 5 does): made by a warm-up `complete`, so the profiled one records a
    # second turn into a store of its own.
    data = tempfile.mkdtemp(prefix="descartes-bench-data-")
    env = dict(os.environ, OPENAI_API_KEY=KEY, NO_COLOR="1", XDG_CACHE_HOME=cache, XDG_DATA_HOME=data)
    if name == "one-shot":
        time.sleep(1.1)  # the profile-prefix copy's manifests must be older than a second to be kept (see below)
        run([exe, "plugins", "list"], env=env)
        run(cmds[0][1], env=env)
    report = []
    for i, (label, cmd) in enumerate(cmds):
        if i == 2 and name == "cold-start":
            # Files written less than a second before a run are read again (not kept): the manifests of a fresh
            # profile-prefix copy are kept by the run after next.
            time.sleep(1.1)
            run(cmd, env=env)
        out = os.path.join(BUILD, f"callgrind-{name}-{i}.out")
        p = run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd, env=env, check=False)
        if p.returncode != 0:
            sys.exit(f"bench: {' '.join(cmd)} under callgrind failed:\n{p.stderr.decode(errors='replace')[-2000:]}")
        text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out], capture_output=True, text=True).stdout
        total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
        report.append(f"{label}: {total:,} instructions (callgrind; {os.path.relpath(out, ROOT)})")
        rest = total
        for phase, pattern in START_PHASES:
            m = re.search(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*" + pattern, text, re.M)
            if m:
                n = int(m.group(1).replace(",", ""))
                rest -= n
                report.append(f"  {n:12,}  {phase}")
        report.append(f"  {rest:12,}  the rest: the command's own work, the request, the Swift runtime, exit")
        report.append("")
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    text = "\n".join(report)
    open(os.path.join(BUILD, f"profile-{name}.txt"), "w").write(text)
    print(text)


def smaps_at_peak(cmd, env):
    """Runs cmd, reading /proc/PID/smaps every 5 ms; returns (peak Rss KiB, the smaps text of that peak). The
    sampling can miss a peak shorter than the interval."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    best, text = 0, ""
    while p.poll() is None:
        try:
            snap = open(f"/proc/{p.pid}/smaps").read()
            rss = sum(int(x) for x in re.findall(r"^Rss:\s+(\d+) kB", snap, re.M))
            if rss > best:
                best, text = rss, snap
        except OSError:
            pass
        time.sleep(0.005)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} exited {p.returncode}")
    return best, text


def smaps_breakdown(text):
    """Resident KiB by mapping (a library file, [heap], [stack], or anonymous), and in total: file-backed (shared
    libraries and executables, counted whether or not other processes share the pages) and anonymous (heap, thread
    stacks, malloc arenas, mmap'd buffers)."""
    by, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if m:
            name = m.group(1) or "[anonymous]"
            continue
        m = re.match(r"^(Rss|Anonymous):\s+(\d+) kB", line)
        if m and name is not None:
            by.setdefault(name, {"Rss": 0, "Anonymous": 0})[m.group(1)] += int(m.group(2))
    files = sum(v["Rss"] - v["Anonymous"] for v in by.values())
    anon = sum(v["Anonymous"] for v in by.values())
    return by, files, anon


def profile_memory(server, prof):
    """Where the resident memory of one long OpenAI stream goes (workload 2), descartes-bench against the C baseline:
    /proc/PID/smaps at the sampled peak, split into file-backed pages (libraries, executables) and anonymous ones."""
    n = LONG_STREAM
    url = f"{server.base}/openai/stream-{n}/v1"
    cmds = [("descartes-bench", [os.path.join(prof, "bin", "descartes-bench"), "-p", "openai", "--set", f"endpoint={url}",
                                 "--stream", "-n", "1", "--prompt", PROMPT, "--json"]),
            ("C baseline", [BASELINE, "stream", "openai", url + "/chat/completions", "1"])]
    env = dict(os.environ, OPENAI_API_KEY=KEY)
    report = []
    for label, cmd in cmds:
        peak, text = smaps_at_peak(cmd, env)
        by, files, anon = smaps_breakdown(text)
        report.append(f"{label}: {peak / 1024:.1f} MiB resident at the sampled peak: {files / 1024:.1f} MiB file-backed "
                      f"(libraries and the executable), {anon / 1024:.1f} MiB anonymous (heap, stacks, arenas, buffers)")
        for k, v in sorted(by.items(), key=lambda kv: -kv[1]["Rss"])[:16]:
            report.append(f"  {v['Rss']:7,} KiB  ({v['Anonymous']:6,} anonymous)  {k}")
        report.append("")
    text = "\n".join(report)
    open(os.path.join(BUILD, "profile-memory.txt"), "w").write(text)
    print(text)


def callgrind_functions(path):
    """Self cost of every function in a callgrind output file."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            d[m.group(2)] = d.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return d


# ---- the document -----------------------------------------------------------------

def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def first_line(cmd):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode().splitlines()[0]
        except Exception:
            return "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "swift": first_line(["swift", "--version"]), "curl": first_line(["curl", "--version"]),
        "nginx": Nginx.nginx_version(),
        "cjson": first_line(["dpkg-query", "-W", "-f", "${Version}", "libcjson-dev"]),
        "hyperfine": first_line(["hyperfine", "--version"]),
    }


def shorten(cmd):
    s = " ".join(c if c and " " not in c and "'" not in c else "'" + c.replace("'", "'\\''") + "'" for c in cmd)
    return s.replace(ROOT + "/", "")


MARKER = "<!-- the rest of this file is kept by bench/run.py -->"


def earlier_rows(doc, only):
    """What a run of some workloads (--only) keeps of the table it rewrites:
    the rows, notes and commands of workloads 1-6 it did not run, and for
    each of them the run it came from. Returns (rows, notes, commands,
    provenance), each a dict by workload number."""
    head = doc.split(MARKER, 1)[0]
    rows, notes, commands, provenance = {}, {}, {}, {}
    when = re.search(r"^- When: (\S+ \S+) UTC", head, re.M)
    load = re.search(r"^- Load average \(1, 5, 15 min\): ([\d., ]+?) before", head, re.M)
    default = f"the run of {when.group(1) if when else 'an unknown date'} UTC (load {load.group(1) if load else '?'} before)"
    for m in re.finditer(r"^- Workloads? ([\d, ]+): kept from (the run of .*? before\))", head, re.M):
        for n in m.group(1).split(","):
            provenance[int(n)] = m.group(2)
    cur = None
    for line in head.splitlines():
        if line.startswith("| ") and not line.startswith("| workload ") and not line.startswith("| ---"):
            m = re.match(r"(\d+)\.", line[2:])
            cur = int(m.group(1)) if m else cur
            if cur is not None and cur not in only:
                rows.setdefault(cur, []).append(line)
        m = re.match(r"- Workload (\d+)\b", line)
        # The header's own "- Workload N: kept from ..." is provenance, written
        # again from `provenance`, not a note under the table.
        if m and int(m.group(1)) not in only and ": kept from the run of " not in line:
            notes.setdefault(int(m.group(1)), []).append(line)
    block = re.search(r"^```sh no-run: the commands of one recorded benchmark run.*?\n(.*?)^```", head, re.M | re.S)
    key = None
    for line in (block.group(1).splitlines() if block else []):
        m = re.match(r"# (\d+)-", line)
        if m:
            key = int(m.group(1))
        if key is not None and key not in only:
            commands.setdefault(key, []).append(line)
    return rows, notes, commands, {n: provenance.get(n, default) for n in rows}


def write_doc(suite, path, info, load_before, load_after, started, elapsed):
    doc = open(path).read() if os.path.exists(path) else ""
    only = {int(x) for x in suite.args.only.split(",") if x}
    kept_rows, kept_notes, kept_commands, provenance = earlier_rows(doc, only)
    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("Generated by `make bench` (bench/run.py); do not edit by hand. What each workload measures, how to")
    w("read it and how to rerun one piece is in the sections after the table.")
    w("")
    w(f"- When: {started} UTC, {elapsed:.0f} s for this run, {suite.args.runs} runs of each measurement (medians).")
    w(f"- Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}.")
    w(f"- Load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_before)} before, "
      f"{', '.join(f'{x:.2f}' for x in load_after)} after.")
    w(f"- Toolchain: {info['swift']}; {info['curl']}; nginx {info['nginx']}; cJSON {info['cjson']}; {info['hyperfine']}.")
    by_run = {}
    for n, where in sorted(provenance.items()):
        by_run.setdefault(where, []).append(str(n))
    for where, ns in by_run.items():
        w(f"- Workload{'s' if len(ns) > 1 else ''} {', '.join(ns)}: kept from {where}, not measured in this run.")
    w("")
    w("| workload | measure | descartes | C baseline / reference | ratio | target | met |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    ours = {}
    cur = None
    for r in suite.rows:
        m = re.match(r"(\d+)\.", r["workload"])
        cur = int(m.group(1)) if m else cur
        ratio = f"{r['ratio']:.2f}x" if isinstance(r["ratio"], float) else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        ours.setdefault(cur, []).append(f"| {r['workload']} | {r['measure']} | {r['descartes']} | {r['reference']} | {ratio} | {r['target']} | {met} |")
    for n in sorted(set(ours) | set(kept_rows)):
        for line in ours.get(n) or kept_rows[n]:
            w(line)
    w("")
    notes = [f"- {n}" for n in suite.notes] + [line for n in sorted(kept_notes) for line in kept_notes[n]]
    for n in notes:
        w(n)
    if notes:
        w("")
    w("## The commands that made these numbers")
    w("")
    w("With nginx from bench/nginx.conf.in on the port shown (run.py picks a free one) and the bodies of")
    w("bench/gen.py under build/bench/data; descartes and descartes-bench are the release builds staged by `make bench`.")
    w("")
    w("```sh no-run: the commands of one recorded benchmark run (its ports, its build)")
    commands = {}
    for key, ours_cmd, theirs in suite.commands:
        n = int(key.split("-", 1)[0])
        commands.setdefault(n, []).append(f"# {key}")
        commands[n].append(shorten(ours_cmd))
        if theirs:
            commands[n].append(shorten(theirs))
    for n in sorted(set(commands) | set(kept_commands)):
        for line in commands.get(n) or kept_commands[n]:
            w(line)
    w("```")
    w("")
    rest = doc.split(MARKER, 1)[1] if MARKER in doc else ""
    with open(path, "w") as f:
        f.write("\n".join(lines) + MARKER + rest)


def write_gateway_doc(section, path, name="gateway"):
    """Puts workload 7's (or 8's, name "shared-store") section after the kept marker (replacing the last one), so runs
    of the other workloads keep it."""
    doc = open(path).read()
    marker = "<!-- the rest of this file is kept by bench/run.py -->"
    start, end = f"<!-- {name}: ", f"<!-- /{name} -->\n"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + section + doc[doc.index(end) + len(end):]
    elif name != "gateway" and "<!-- /gateway -->\n" in doc:
        at = doc.index("<!-- /gateway -->\n") + len("<!-- /gateway -->\n")
        doc = doc[:at] + "\n" + section + doc[at:]
    else:
        head, rest = doc.split(marker, 1) if marker in doc else (doc, "")
        doc = head + marker + "\n\n" + section + rest
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8",
                    help="the workloads (7: the gateway against LiteLLM, bench/gateway.py; 8: the shared store, bench/shared.py)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="wait up to this long for a 1-minute load average under 1.5 before measuring")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--profile", metavar="WORKLOAD", help="callgrind instruction counts instead of timings")
    ap.add_argument("--prefix", metavar="DIR",
                    help="measure the descartes staged in DIR instead of build/prefix (a copy of an earlier build, for before/after)")
    args = ap.parse_args()
    if args.prefix:
        global PREFIX, DESCARTES, BENCH
        PREFIX = os.path.abspath(args.prefix)
        DESCARTES = os.path.join(PREFIX, "bin", "descartes")
        BENCH = os.path.join(PREFIX, "bin", "descartes-bench")
    only = {int(x) for x in args.only.split(",") if x}

    t0 = time.time()
    ensure_tools()
    build(args.skip_build)
    if args.profile:
        server = Nginx()
        try:
            profile(args.profile, server)
        finally:
            server.stop()
        return
    if args.wait_quiet > 0:
        end = time.time() + args.wait_quiet
        while os.getloadavg()[0] >= 1.5 and time.time() < end:
            log(f"waiting for a quiet machine (load {os.getloadavg()[0]:.2f})")
            time.sleep(20)
    started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    server = Nginx()
    suite = Suite(args, server)
    try:
        if 1 in only:
            suite.sequential()
        if 2 in only:
            suite.long_streams()
        if 3 in only:
            suite.concurrent()
        if 4 in only:
            suite.cold_start()
        if 5 in only:
            suite.one_shot()
        if 6 in only:
            suite.headless()
        gateway = None
        if 7 in only:
            sys.path.insert(0, os.path.join(ROOT, "bench"))
            from gateway import GatewayBench
            gateway = GatewayBench(suite, ROOT, BUILD, DATA, DESCARTES, LOADGEN)
            gateway.run()
            suite.raw["7-gateway"] = gateway.results
        shared = None
        if 8 in only:
            sys.path.insert(0, os.path.join(ROOT, "bench"))
            from shared import SharedBench
            shared = SharedBench(suite, BENCH, run_json, PROMPT, ROOT)
            shared.run()
            suite.raw["8-shared-store"] = shared.results
    finally:
        server.stop()
    load_after = os.getloadavg()
    elapsed = time.time() - t0
    info = machine()
    with open(os.path.join(BUILD, "results.json"), "w") as f:
        json.dump({"machine": info, "load_before": load_before, "load_after": load_after, "runs": suite.raw,
                   "rows": suite.rows}, f, indent=1)
    if only - {7, 8}:
        write_doc(suite, args.out, info, load_before, load_after, started, elapsed)
    if gateway is not None:
        write_gateway_doc(gateway.markdown(started, load_before), args.out)
        for k, (ok, what) in gateway.table()[1].items():
            print(f"gateway: {k:60} {what:>40} {'ok' if ok else 'MISSED'}")
    if shared is not None:
        write_gateway_doc(shared.markdown(started, load_before, load_after), args.out, name="shared-store")
        rows, met = shared.table()
        for r in rows:
            print("shared: " + " | ".join(r))
        for k, (ok, what) in met.items():
            print(f"shared: {k}: {what}: {'ok' if ok else 'MISSED'}")
    for r in suite.rows:
        ratio = f"{r['ratio']:.2f}x" if isinstance(r["ratio"], float) else ""
        met = {True: "ok", False: "MISSED", None: ""}[r["met"]]
        print(f"{r['workload'][:60]:60} {r['measure']:20} {r['descartes']:>16} {r['reference'][:40]:>40} {ratio:>7} {r['target']:>14} {met}")
    log(f"done in {elapsed:.0f} s; table in {os.path.relpath(args.out, ROOT)}, every run in build/bench/results.json")


if __name__ == "__main__":
    main()
