#!/usr/bin/env python3
"""A real agent CLI against `descartes serve`: `claude` (Claude Code, over
Anthropic's Messages) or `codex` (OpenAI's Codex, over the Responses API).

Run by Tests/DescartesTests/RealAgentTests.swift (or by hand):

    DESCARTES=.build/debug/descartes DESCARTES_PLUGIN_PATH=DIR AGENT_BIN=/path/to/claude \\
        python3 Tests/Gateway/agent_cli.py claude

DIR holds the echo plugin and the scripted test plugin. One gateway on 127.0.0.1 with one key; the agent
runs headless with its base URL pointed at the gateway and the key as its
API key, a fresh HOME and working directory, and everything that would reach
another host turned off. Prints one JSON line: the agent's exit status and
output, the gateway's access log and exit status.
"""
import json
import os
import subprocess
import sys
import tempfile

AGENT = sys.argv[1]
PROMPT = f"hello from {AGENT} through the gateway"
KEY = "gw-agent-cli-key-0123456789abcdef"

tmp = tempfile.TemporaryDirectory(prefix="descartes-agent-gw-")
home = os.path.join(tmp.name, "home")
work = os.path.join(tmp.name, "work")
os.makedirs(home)
os.makedirs(work)
config = os.path.join(tmp.name, "providers.yaml")
with open(config, "w") as f:
    # Claude Code sends no tools with --tools "": the echo plugin answers it. Codex always sends
    # tools, which echo does not take: the scripted test plugin (a manifest with tools) streams
    # the last user message back instead.
    f.write(f"providers:\n  agent:\n    plugin: scripted\n    default_script: [words]\n"
            f"server:\n  keys:\n    {AGENT}-cli: ${{GW_KEY}}\n")
MODEL = "echo" if AGENT == "claude" else "agent"
env = dict(os.environ, GW_KEY=KEY, NO_COLOR="1")
log = open(os.path.join(tmp.name, "access.log"), "w+")
gateway = subprocess.Popen([os.environ["DESCARTES"], "serve", "--listen", "127.0.0.1:0", "--config", config],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp.name)
summary = {"agent": AGENT, "prompt": PROMPT}
try:
    line = gateway.stdout.readline().decode()
    if not line.startswith("listening on http://127.0.0.1:"):
        raise SystemExit(f"descartes serve did not start: {line!r}")
    url = line.split()[-1]
    agent_env = {"PATH": "/usr/bin:/bin", "HOME": home}
    if AGENT == "claude":
        agent_env.update({
            "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
            # An error must show as one (no silent non-streaming retry, no minutes of retries).
            "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1", "CLAUDE_CODE_MAX_RETRIES": "1", "API_TIMEOUT_MS": "60000",
        })
        argv = [os.environ["AGENT_BIN"], "-p", PROMPT, "--model", "echo", "--tools", "", "--output-format", "stream-json", "--verbose"]
    elif AGENT == "codex":
        codex_home = os.path.join(home, ".codex")
        os.makedirs(codex_home)
        with open(os.path.join(codex_home, "config.toml"), "w") as f:
            f.write(f'model_provider = "gateway"\nmodel = "{MODEL}"\n[model_providers.gateway]\nname = "gateway"\n'
                    f'base_url = "{url}/v1"\nenv_key = "GATEWAY_KEY"\nwire_api = "responses"\n'
                    'request_max_retries = 0\nstream_max_retries = 0\n')
        agent_env.update({"CODEX_HOME": codex_home, "GATEWAY_KEY": KEY})
        argv = [os.environ["AGENT_BIN"], "exec", "--skip-git-repo-check", "--ephemeral", "--json", "-m", MODEL, "--", PROMPT]
    else:
        raise SystemExit(f"unknown agent {AGENT!r} (claude, codex)")
    try:
        r = subprocess.run(argv, env=agent_env, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, timeout=240)
        summary["exit"] = r.returncode
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        summary["exit"] = "timeout"
        out, err = (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace")
    docs = []
    for l in out.splitlines():
        try:
            docs.append(json.loads(l))
        except ValueError:
            pass
    summary["lines"] = docs
    summary["stderr"] = err[-3000:]
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
    print(json.dumps(summary))
