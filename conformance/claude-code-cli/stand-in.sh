#!/bin/sh
# Stands in for `claude` in the conformance suite (conformance/claude-code-cli.yaml).
# It ignores the arguments the plugin passes, reads the request to the end,
# and plays what STAND_IN (from the plugin's `env` config) names, from lines
# recorded from the real Claude Code (Tests/Fixtures/claude-code):
#   text         a turn answering "Hello", then its result line
#   slow         a turn that streams "tick " every 200 ms for a minute, no result
#   hang         nothing, for ten minutes
#   auth         a result line with api_error_status 401
#   overloaded   a result line with api_error_status 529
#   crash        exits with status 3 and a message on stderr, no output
#   truncated    the turn without its result line, exit 0
here=$(dirname "$0")
if [ "$1" = "--version" ]; then echo "2.1.331 (Claude Code)"; exit 0; fi
cat >/dev/null
case "$STAND_IN" in
  text) cat "$here/text.jsonl" ;;
  slow)
    cat "$here/slow-head.jsonl"
    i=0
    while [ $i -lt 300 ]; do cat "$here/slow-tick.jsonl"; sleep 0.2; i=$((i + 1)); done ;;
  hang) exec sleep 600 ;;
  auth) cat "$here/auth-error.jsonl" ;;
  overloaded) cat "$here/overloaded.jsonl" ;;
  crash) echo "claude: fatal: the stand-in was told to crash" >&2; exit 3 ;;
  truncated) grep -v '"type":"result"' "$here/text.jsonl" ;;
  *) echo "stand-in: unknown STAND_IN '$STAND_IN'" >&2; exit 2 ;;
esac
