"""Workload 7 of the benchmark suite (bench/run.py --only 7): `descartes serve`
against LiteLLM's proxy, both in front of the same nginx upstream, and the
upstream itself with no gateway ("direct"), all driven by one C load
generator (bench/loadgen.c) on 127.0.0.1.

- Fixed offered loads (open loop: a request is due every 1/rate s and its
  latency counts from when it was due) of 100, 500 and 1,000 requests/s
  for GATEWAY_SECONDS each: p50 and p99 latency; the overhead of a gateway
  is its latency minus the direct latency at the same load.
- The highest sustained rate: closed loop, 64 connections, as fast as
  answers come.
- Streaming (2,000-chunk OpenAI SSE): time to the first event and events
  per second, closed loop on 4 connections.
- 1,000 concurrent streams (a 50-chunk stream that nginx sends at 2 KB/s,
  so each lasts about 8 s): the gateway's peak resident memory (every
  process of it, sampled every 50 ms).

LiteLLM runs as its CLI starts it (`litellm --config FILE --port P`, one
uvicorn worker), with a master key, as descartes serve runs with an issued
key: both authenticate every request.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import free_port, log

GATEWAY_SECONDS = 10
RATES = [100, 500, 1000]
HOLD = 1000
LITELLM_VERSION = "1.106.12"
STREAM = 2000
HOLD_STREAM = 50


def wait_http(port, path, headers=None, timeout=120, proc=None):
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode} before answering {path}")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered http://127.0.0.1:{port}{path} within {timeout} s")


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


class Target:
    """A server the load generator talks to: its port, the path of each
    workload and the headers a request needs."""

    def __init__(self, name, port, paths, headers, proc=None):
        self.name, self.port, self.paths, self.headers, self.proc = name, port, paths, headers, proc

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class GatewayBench:
    def __init__(self, suite, root, build, data, descartes, loadgen):
        self.suite, self.root, self.build, self.data, self.descartes, self.loadgen = suite, root, build, data, descartes, loadgen
        self.tmp = tempfile.mkdtemp(prefix="descartes-gwbench-")
        self.results = {}
        self.commands = []
        self.upstream = suite.server.port

    # ---- the three targets ------------------------------------------------------
    def direct(self):
        return Target("direct", self.upstream, {
            "complete": "/openai/complete/v1/chat/completions",
            "stream": f"/openai/stream-{STREAM}/v1/chat/completions",
            "hold": f"/slow/openai/stream-{HOLD_STREAM}/v1/chat/completions",
        }, [])

    def descartes_serve(self):
        base = f"http://127.0.0.1:{self.upstream}"
        config = os.path.join(self.tmp, "providers.yaml")
        with open(config, "w") as f:
            f.write(f"""\
providers:
  bench:
    plugin: openai
    endpoint: {base}/openai/complete/v1
    api_key: ${{OPENAI_API_KEY}}
  bench-stream:
    plugin: openai
    endpoint: {base}/openai/stream-{STREAM}/v1
    api_key: ${{OPENAI_API_KEY}}
  bench-hold:
    plugin: openai
    endpoint: {base}/slow/openai/stream-{HOLD_STREAM}/v1
    api_key: ${{OPENAI_API_KEY}}
retry: {{max_attempts: 1}}
server:
  listen: 127.0.0.1:0
  keys_database: {os.path.join(self.tmp, "keys.sqlite3")}
""")
        env = dict(self.suite.env)
        key = subprocess.run([self.descartes, "keys", "create", "--config", config, "--name", "bench"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout.decode().strip()
        log_file = open(os.path.join(self.tmp, "serve.log"), "w")
        # The access log is one line per request on stderr: to a file, as a deployment would.
        proc = subprocess.Popen([self.descartes, "serve", "--config", config], env=env, stdout=subprocess.PIPE, stderr=log_file,
                                stdin=subprocess.DEVNULL)
        line = proc.stdout.readline().decode().split()
        port = int(line[-1].rsplit(":", 1)[1])
        self.commands.append(("7-descartes", f"descartes keys create --config {config} --name bench; descartes serve --config {config}"))
        return Target("descartes serve", port, {"complete": "/v1/chat/completions", "stream": "/v1/chat/completions",
                                                "hold": "/v1/chat/completions"},
                      ["--header", f"Authorization: Bearer {key}"], proc)

    def litellm(self):
        venv = os.path.join(self.build, f"litellm-{LITELLM_VERSION}")
        exe = os.path.join(venv, "bin", "litellm")
        if not os.path.exists(exe):
            log(f"installing litellm[proxy]=={LITELLM_VERSION} into {os.path.relpath(venv, self.root)} (pip, once)")
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                            f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
        base = f"http://127.0.0.1:{self.upstream}"
        config = os.path.join(self.tmp, "litellm.yaml")
        models = [("bench", "/openai/complete/v1"), ("bench-stream", f"/openai/stream-{STREAM}/v1"),
                  ("bench-hold", f"/slow/openai/stream-{HOLD_STREAM}/v1")]
        with open(config, "w") as f:
            f.write("model_list:\n")
            for name, path in models:
                f.write(f"  - model_name: {name}\n    litellm_params:\n      model: openai/gpt-4o-mini\n"
                        f"      api_base: {base}{path}\n      api_key: os.environ/OPENAI_API_KEY\n")
            f.write("general_settings:\n  master_key: sk-litellm-bench-master-key-0123\n")
        port = free_port()
        env = dict(self.suite.env, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False", LITELLM_LOG="ERROR")
        cmd = [exe, "--config", config, "--host", "127.0.0.1", "--port", str(port)]
        log_file = open(os.path.join(self.tmp, "litellm.log"), "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_http(port, "/health/liveliness", proc=proc)
        self.commands.append(("7-litellm", " ".join(cmd).replace(self.root + "/", "")))
        return Target(f"LiteLLM proxy {LITELLM_VERSION}", port, {"complete": "/v1/chat/completions", "stream": "/v1/chat/completions",
                                                                 "hold": "/v1/chat/completions"},
                      ["--header", "Authorization: Bearer sk-litellm-bench-master-key-0123"], proc)

    # ---- measuring ------------------------------------------------------------------
    def body(self, model, stream):
        path = os.path.join(self.tmp, f"body-{model}-{int(stream)}.json")
        with open(path, "w") as f:
            json.dump({"model": model, "messages": [{"role": "user", "content": "Say hello to the benchmark in one short sentence."}],
                       "stream": stream}, f)
        return path

    def load(self, t, kind, extra, stream=False):
        model = {"complete": "bench", "stream": "bench-stream", "hold": "bench-hold"}[kind]
        cmd = [self.loadgen, "--port", str(t.port), "--path", t.paths[kind], "--body", self.body(model, stream)] + t.headers + extra
        if stream:
            cmd.append("--stream")
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=GATEWAY_SECONDS * 3 + 120)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
        return json.loads(p.stdout)

    def hold(self, t):
        """--hold HOLD streams at once; the peak RSS of the target's processes while they run."""
        model = "bench-hold"
        cmd = [self.loadgen, "--port", str(t.port), "--path", t.paths["hold"], "--body", self.body(model, True),
               "--hold", str(HOLD), "--stream"] + t.headers
        pids = tree(t.proc.pid)
        before = rss_kb(pids)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        peak = 0
        while p.poll() is None:
            peak = max(peak, rss_kb(tree(t.proc.pid)))
            time.sleep(0.05)
        out, err = p.communicate()
        r = json.loads(out)
        r.update(rss_before_kb=before, rss_peak_kb=peak)
        return r

    def run(self):
        targets = [self.direct()]
        try:
            targets.append(self.descartes_serve())
            targets.append(self.litellm())
            for t in targets:
                res = self.results.setdefault(t.name, {})
                log(f"workload 7: {t.name}: warm-up")
                self.load(t, "complete", ["--closed", "8", "--duration", "2"])
                for rate in RATES:
                    log(f"workload 7: {t.name}: {rate} requests/s for {GATEWAY_SECONDS} s")
                    res[f"rate-{rate}"] = self.load(t, "complete", ["--rate", str(rate), "--duration", str(GATEWAY_SECONDS), "--connections", "64"])
                log(f"workload 7: {t.name}: closed loop, 64 connections")
                res["sustained"] = self.load(t, "complete", ["--closed", "64", "--duration", str(GATEWAY_SECONDS)])
                log(f"workload 7: {t.name}: streams of {STREAM} chunks, 4 connections")
                res["stream"] = self.load(t, "stream", ["--closed", "4", "--duration", str(GATEWAY_SECONDS)], stream=True)
                if t.proc is not None:
                    log(f"workload 7: {t.name}: {HOLD} concurrent streams")
                    res["hold"] = self.hold(t)
        finally:
            for t in targets:
                t.stop()
        return self.results

    def table(self):
        """The rows of docs/benchmarks.md's gateway table and the targets."""
        r = self.results
        d, g, l = r.get("direct", {}), r.get("descartes serve", {}), next((v for k, v in r.items() if k.startswith("LiteLLM")), {})
        rows = []

        def ms(us):
            return f"{us / 1000:.2f} ms"

        def over(x, q, rate):
            return x[f"rate-{rate}"]["latency_us"][q] - d[f"rate-{rate}"]["latency_us"][q]

        met = {}
        for rate in RATES:
            for q in ("p50", "p99"):
                row = [f"{rate} req/s offered", f"latency {q}", ms(d[f"rate-{rate}"]["latency_us"][q]),
                       ms(g[f"rate-{rate}"]["latency_us"][q]), ms(l[f"rate-{rate}"]["latency_us"][q]),
                       ms(over(g, q, rate)), ms(over(l, q, rate))]
                rows.append(row)
            rows.append([f"{rate} req/s offered", "answered/s; not answered (errors, never sent)",
                         *(f"{x[f'rate-{rate}']['rate']:,.0f}; {x[f'rate-{rate}']['errors'] + x[f'rate-{rate}']['unsent']}" for x in (d, g, l)), "", ""])
        rows.append(["closed loop, 64 connections", "answered/s", *(f"{x['sustained']['rate']:,.0f}" for x in (d, g, l)), "", ""])
        rows.append(["closed loop, 64 connections", "latency p99", *(ms(x["sustained"]["latency_us"]["p99"]) for x in (d, g, l)), "", ""])
        rows.append([f"streams of {STREAM:,} chunks, 4 connections", "time to first event p50",
                     *(ms(x["stream"]["ttft_us"]["p50"]) for x in (d, g, l)),
                     ms(g["stream"]["ttft_us"]["p50"] - d["stream"]["ttft_us"]["p50"]),
                     ms(l["stream"]["ttft_us"]["p50"] - d["stream"]["ttft_us"]["p50"])])
        rows.append([f"streams of {STREAM:,} chunks, 4 connections", "time to first event p99",
                     *(ms(x["stream"]["ttft_us"]["p99"]) for x in (d, g, l)),
                     ms(g["stream"]["ttft_us"]["p99"] - d["stream"]["ttft_us"]["p99"]),
                     ms(l["stream"]["ttft_us"]["p99"] - d["stream"]["ttft_us"]["p99"])])
        rows.append([f"streams of {STREAM:,} chunks, 4 connections", "events/s", *(f"{x['stream']['events_per_second']:,.0f}" for x in (d, g, l)),
                     "", ""])
        # A gateway may carry several upstream chunks in one event (descartes serve sends the text of what one network
        # read brought as one chunk): the streams completed, times their chunks, is what compares with nginx.
        rows.append([f"streams of {STREAM:,} chunks, 4 connections", "streams/s (upstream chunks/s)",
                     *(f"{x['stream']['rate']:,.0f} ({x['stream']['rate'] * STREAM:,.0f})" for x in (d, g, l)), "", ""])
        rows.append([f"{HOLD:,} concurrent streams", "peak RSS (every process)", "",
                     f"{g['hold']['rss_peak_kb'] / 1024:.0f} MiB", f"{l['hold']['rss_peak_kb'] / 1024:.0f} MiB", "", ""])
        rows.append([f"{HOLD:,} concurrent streams", "streams completed, errors", "",
                     f"{g['hold']['answered']}, {g['hold']['errors']}", f"{l['hold']['answered']}, {l['hold']['errors']}", "", ""])
        p99_500 = over(g, "p99", 500)
        met["p99 overhead < 1 ms at 500 req/s"] = (p99_500 < 1000, f"{p99_500 / 1000:.2f} ms")
        sustained = g["sustained"]["rate"]
        met[">= 2,000 req/s sustained (non-streaming)"] = (sustained >= 2000, f"{sustained:,.0f} req/s")
        lit = over(l, "p99", 500)
        ratio = lit / p99_500 if p99_500 > 0 else float("inf")
        met[">= 10x lower p99 overhead than LiteLLM (at 500 req/s)"] = (ratio >= 10, f"{ratio:,.1f}x ({p99_500 / 1000:.2f} ms against {lit / 1000:.2f} ms)")
        mem = g["hold"]["rss_peak_kb"] * 1024 / 1e6
        met[f"{HOLD:,} concurrent streams under 200 MB resident"] = (mem < 200 and g["hold"]["errors"] == 0,
                                                                  f"{mem:.0f} MB, {g['hold']['errors']} errors")
        return rows, met

    def markdown(self, started, load):
        rows, met = self.table()
        out = ["<!-- gateway: written by bench/run.py --only 7 (workload 7), kept by the other workloads -->",
               "## Workload 7: the gateway against LiteLLM's proxy", "",
               f"- When: {started} UTC; load average before {', '.join(f'{x:.2f}' for x in load)}; {GATEWAY_SECONDS} s per load.",
               "- Upstream: the suite's nginx (bench/nginx.conf.in) serving the fixed OpenAI bodies of bench/gen.py on 127.0.0.1;",
               "  load from bench/loadgen.c (one thread, epoll, HTTP/1.1 keep-alive, open loop at fixed rates: latency counted from when",
               "  each request was due). Overhead = the gateway's latency minus the direct latency at the same offered load.",
               "", "| load | measure | direct (nginx) | descartes serve | LiteLLM proxy | descartes overhead | LiteLLM overhead |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out += ["", "| target | measured | met |", "| --- | --- | --- |"]
        out += [f"| {k} | {v[1]} | {'yes' if v[0] else '**no**'} |" for k, v in met.items()]
        out += ["", "The commands (the suite starts nginx on a free port and fills it in):", "", "```sh no-run: the benchmark (make bench)",
                f"cc -O2 -o build/bench/loadgen bench/loadgen.c"]
        out += [c for _, c in self.commands]
        out += [f"build/bench/loadgen --port PORT --path PATH --body BODY.json --header 'Authorization: Bearer KEY' --rate R "
                f"--duration {GATEWAY_SECONDS} --connections 64   # R = {', '.join(map(str, RATES))}",
                f"build/bench/loadgen ... --closed 64 --duration {GATEWAY_SECONDS}",
                f"build/bench/loadgen ... --closed 4 --duration {GATEWAY_SECONDS} --stream",
                f"build/bench/loadgen ... --hold {HOLD} --stream",
                "```", "<!-- /gateway -->", ""]
        return "\n".join(out)
