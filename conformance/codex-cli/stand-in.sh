#!/bin/sh
# Stands in for `codex` in the conformance suite (conformance/codex-cli.yaml).
# It ignores the arguments the plugin passes, reads the prompt (stdin) to the
# end, and plays what STAND_IN (from the plugin's `env` config) names, from
# lines the real codex 0.147.0 printed for `codex exec --json` against
# `descartes serve` on 127.0.0.1 (text: the scripted test plugin answering
# with the prompt; auth-error: a wrong gateway key, its URL's port set to 8080):
#   text         a turn answering "hello from codex through the gateway", then turn.completed
#   slow         thread.started and turn.started, then an agent_message item
#                "tick" every 200 ms for a minute, no turn.completed
#   hang         nothing, for ten minutes
#   auth         the turn.failed codex prints for an HTTP 401, exit 1
#   crash        exits with status 3 and a message on stderr, no output
#   truncated    the turn without its turn.completed line, exit 0
here=$(dirname "$0")
if [ "$1" = "--version" ]; then echo "codex-cli 0.147.0"; exit 0; fi
cat >/dev/null
case "$STAND_IN" in
  text) cat "$here/text.jsonl" ;;
  slow)
    cat "$here/slow-head.jsonl"
    i=0
    while [ $i -lt 300 ]; do
      printf '{"type":"item.completed","item":{"id":"item_%d","type":"agent_message","text":"tick"}}\n' $((i + 1))
      sleep 0.2
      i=$((i + 1))
    done ;;
  hang) exec sleep 600 ;;
  auth) cat "$here/auth-error.jsonl"; exit 1 ;;
  crash) echo "codex: fatal: the stand-in was told to crash" >&2; exit 3 ;;
  truncated) grep -v '"type":"turn.completed"' "$here/text.jsonl" ;;
  *) echo "stand-in: unknown STAND_IN '$STAND_IN'" >&2; exit 2 ;;
esac
