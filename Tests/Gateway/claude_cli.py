#!/usr/bin/env python3
"""The real `claude` CLI (Claude Code) against `descartes serve`.

Run by Tests/DescartesTests/GatewayRealAgentTests.swift (or by hand):

    DESCARTES=.build/debug/descartes DESCARTES_PLUGIN_PATH=DIR CLAUDE=/path/to/claude python3 Tests/Gateway/claude_cli.py

DIR holds the echo plugin. One gateway on 127.0.0.1 with one key; claude
runs headless (`-p`, stream-json) with ANTHROPIC_BASE_URL pointed at it, a
fresh HOME and working directory, no tools, and everything that would reach
another host turned off. Prints one JSON line: claude's exit status, its
`result` line, the gateway's access log and exit status.
"""
import json
import os
import subprocess
import sys
import tempfile

PROMPT = "hello from claude through the gateway"
KEY = "gw-claude-cli-key-0123456789abcdef"

tmp = tempfile.TemporaryDirectory(prefix="descartes-claude-gw-")
home = os.path.join(tmp.name, "home")
work = os.path.join(tmp.name, "work")
os.makedirs(home)
os.makedirs(work)
config = os.path.join(tmp.name, "providers.yaml")
with open(config, "w") as f:
    f.write("providers: {}\nserver:\n  keys:\n    claude-cli: ${GW_KEY}\n")
env = dict(os.environ, GW_KEY=KEY, NO_COLOR="1")
log = open(os.path.join(tmp.name, "access.log"), "w+")
gateway = subprocess.Popen([os.environ["DESCARTES"], "serve", "--listen", "127.0.0.1:0", "--config", config],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp.name)
summary = {}
try:
    line = gateway.stdout.readline().decode()
    if not line.startswith("listening on http://127.0.0.1:"):
        raise SystemExit(f"descartes serve did not start: {line!r}")
    url = line.split()[-1]
    claude_env = {
        "PATH": "/usr/bin:/bin", "HOME": home, "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # An error must show as one (no silent non-streaming retry, no 3 minutes of retries).
        "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1", "CLAUDE_CODE_MAX_RETRIES": "1", "API_TIMEOUT_MS": "60000",
    }
    try:
        r = subprocess.run([os.environ["CLAUDE"], "-p", PROMPT, "--model", "echo", "--tools", "", "--output-format", "stream-json",
                            "--verbose"], env=claude_env, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, timeout=240)
        summary["claude_exit"] = r.returncode
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        summary["claude_exit"] = "timeout"
        out, err = (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace")
    docs = []
    for l in out.splitlines():
        try:
            docs.append(json.loads(l))
        except ValueError:
            pass
    results = [d for d in docs if d.get("type") == "result"]
    summary["result"] = results[-1] if results else None
    summary["assistant"] = [d["message"] for d in docs if d.get("type") == "assistant"]
    summary["claude_stderr"] = err[-2000:]
finally:
    gateway.terminate()
    try:
        summary["gateway_exit"] = gateway.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gateway.kill()
        summary["gateway_exit"] = "hung"
    log.seek(0)
    text = log.read()
    summary["access"] = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    summary["key_in_log"] = KEY in text
    summary["prompt"] = PROMPT
    print(json.dumps(summary))
