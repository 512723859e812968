#!/usr/bin/env python3
"""Runs a README/docs shell example that cannot run as a plain script
(DocExamplesTests.theShellExamplesRun, its `serve` and `terminal` lines).

  doc_block.py serve SCRIPT
      Every command of the example is a server that runs until stopped
      (`descartes serve ...`). For each one in turn: wait (20 s at most) for
      the `listening on http://HOST:PORT` line it prints first, ask it
      `GET /v1/models` and a chat completion of the echo plugin, and stop it
      with SIGTERM; bash then runs the next command (`set -e`: a server that
      does not exit 0 ends the example there). Prints one line per server.

  doc_block.py terminal ANSWER SCRIPT
      Runs the example in a pseudo-terminal (stdin, stdout and stderr), and
      answers ANSWER to each `[y/N]` question printed on it. Prints what the
      terminal showed, then how many questions were answered.

The exit status is the example's (bash's), or 1 when this runner gave up.
"""
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

PROBE_PROMPT = "hello from the doc test"


def fail(message: str) -> None:
    print(f"doc_block: {message}", file=sys.stderr, flush=True)


def server_pid(shell: int) -> int | None:
    """The `descartes serve` process bash runs now: a child of bash, or bash
    itself when it exec'd its last command."""
    candidates = [shell]
    try:
        with open(f"/proc/{shell}/task/{shell}/children") as f:
            candidates += [int(p) for p in f.read().split()]
    except OSError:
        return None
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and os.path.basename(argv[0]) == b"descartes" and b"serve" in argv[1:]:
            return pid
    return None


def probe(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        models = json.load(r)
    names = [m["id"] for m in models.get("data", [])]
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": PROBE_PROMPT}]}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        answer = json.load(r)["choices"][0]["message"]["content"]
    return f"GET /v1/models: {len(names)} models ({', '.join(names[:3])}, ...); POST /v1/chat/completions (echo): {answer!r}"


def serve(script: str) -> int:
    shell = subprocess.Popen(["bash", script], stdout=subprocess.PIPE, start_new_session=False)
    assert shell.stdout is not None
    servers = 0
    buffered = b""
    deadline = time.monotonic() + 20
    while True:
        ready, _, _ = select.select([shell.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            fail(f"no 'listening on' line in 20 s after server {servers}; stopping the example")
            shell.kill()
            shell.wait()
            return 1
        chunk = os.read(shell.stdout.fileno(), 4096)
        if not chunk:
            break
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            text = line.decode(errors="replace")
            print(text, flush=True)
            m = re.match(r"listening on (http://\S+)$", text)
            if not m:
                continue
            servers += 1
            try:
                answer = probe(m.group(1))
            except Exception as e:  # the example fails below: the server is stopped all the same
                answer = f"probe failed: {e}"
            pid = server_pid(shell.pid)
            if pid is None:
                fail(f"server {servers} at {m.group(1)}: no 'descartes serve' process under bash {shell.pid}")
                shell.kill()
                shell.wait()
                return 1
            print(f"doc_block: server {servers} at {m.group(1)}: {answer}; SIGTERM", flush=True)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
    status = shell.wait()
    print(f"doc_block: {servers} servers answered and stopped, exit status {status}", flush=True)
    return status


def terminal(answer: str, script: str) -> int:
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("bash", ["bash", script])
    shown = b""
    unanswered = b""
    answered = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's last process ended
            break
        if not chunk:
            break
        shown += chunk
        unanswered += chunk
        if b"[y/N] " in unanswered:
            unanswered = unanswered.split(b"[y/N] ", 1)[1]
            os.write(fd, answer.encode() + b"\n")
            answered += 1
    else:
        fail("the example ran for 60 s; stopping it")
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    sys.stdout.write(shown.decode(errors="replace").replace("\r\n", "\n"))
    code = os.waitstatus_to_exitcode(status)
    print(f"\ndoc_block: {answered} questions answered {answer!r}, exit status {code}", flush=True)
    return code


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        return serve(sys.argv[2])
    if len(sys.argv) == 4 and sys.argv[1] == "terminal":
        return terminal(sys.argv[2], sys.argv[3])
    fail("usage: doc_block.py serve SCRIPT | doc_block.py terminal ANSWER SCRIPT")
    return 2


if __name__ == "__main__":
    sys.exit(main())
