"""descartes serve: time from SIGHUP to the reloaded configuration answering, over N reloads.

Each reload swaps the configured key team-x to a new secret (KEY_i); the
time is from os.kill(SIGHUP) until GET /v1/models with the new secret is 200
(polled over one keep-alive connection). Usage: python3 reload_time.py DESCARTES [N]
"""
import os, signal, statistics, subprocess, sys, tempfile, time
import httpx

descartes, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20
tmp = tempfile.TemporaryDirectory(prefix="descartes-reload-")
config = os.path.join(tmp.name, "providers.yaml")
def write(i):
    with open(config, "w") as f:
        f.write(f"server:\n  listen: 127.0.0.1:0\n  keys_database: {tmp.name}/keys.sqlite3\n  keys:\n    team-x: ${{KEY_{i}}}\n")
env = dict(os.environ, **{f"KEY_{i}": f"reload-bench-key-{i:04d}-abcdefgh" for i in range(n + 1)})
write(0)
gw = subprocess.Popen([descartes, "serve", "--config", config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                      stdin=subprocess.DEVNULL, env=env, cwd=tmp.name)
url = gw.stdout.readline().decode().split()[-1]
c = httpx.Client(base_url=url, timeout=10)
assert c.get("/v1/models", headers={"x-api-key": env["KEY_0"]}).status_code == 200
times, polls = [], []
for i in range(1, n + 1):
    write(i)
    h = {"x-api-key": env[f"KEY_{i}"]}
    t0 = time.perf_counter()
    os.kill(gw.pid, signal.SIGHUP)
    k = 0
    while True:
        k += 1
        if c.get("/v1/models", headers=h).status_code == 200:
            break
        if time.perf_counter() - t0 > 10:
            raise SystemExit(f"reload {i}: the new key was not accepted within 10 s")
    times.append((time.perf_counter() - t0) * 1000)
    polls.append(k)
    time.sleep(0.2)
gw.terminate()
gw.wait(timeout=20)
times.sort()
print(f"{n} reloads: min {times[0]:.1f} ms, p50 {statistics.median(times):.1f} ms, "
      f"max {times[-1]:.1f} ms, mean {statistics.mean(times):.1f} ms; polls per reload p50 {statistics.median(polls)}")
print("all (sorted):", " ".join(f"{t:.1f}" for t in times))
