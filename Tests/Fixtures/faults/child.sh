#!/bin/sh
# A headless program that misbehaves as FAULT says, for the fault matrix
# (Tests/DescartesTests/FaultMatrixTests.swift). FAULT_PROTOCOL is "jsonl"
# (headless-cli's json-lines events) or "claude" (Claude Code's stream-json).
# It prints the secret it was given (ANTHROPIC_API_KEY for claude, else
# FAULT_SECRET) on stdout and stderr wherever it can, so the matrix proves the
# host passes it on nowhere.
S="${ANTHROPIC_API_KEY:-$FAULT_SECRET}"
cat >/dev/null

start() {
  if [ "$FAULT_PROTOCOL" = claude ]; then
    echo '{"type":"system","subtype":"init","session_id":"fault-1","model":"claude-fault","tools":[]}'
    echo '{"type":"assistant","message":{"id":"msg_f","model":"claude-fault","content":[{"type":"text","text":"partial answer"}]},"parent_tool_use_id":null}'
  else
    echo '{"type":"start","model":"fault"}'
    echo '{"type":"text","text":"partial answer"}'
  fi
}

case "$FAULT" in
  exit)        echo "error: the model failed (key $S)" >&2; exit 3 ;;
  exit-silent) exit 2 ;;
  segv)        start; echo "about to crash with $S" >&2; kill -SEGV $$ ;;
  abort)       start; kill -ABRT $$ ;;
  kill)        start; kill -KILL $$ ;;
  term)        start; kill -TERM $$ ;;
  garbage)
    printf 'not json at all %s\n\033[31mcoloured %s\033[0m\n{"type":"text","text":\n' "$S" "$S"
    echo "stderr says $S" >&2
    exit 0 ;;
  truncated)   start; exit 0 ;;
  badutf8)
    # A JSON line with invalid UTF-8 inside a string, then one that is not
    # JSON and not UTF-8; then the turn ends properly.
    start
    if [ "$FAULT_PROTOCOL" = claude ]; then
      printf '{"type":"assistant","message":{"id":"msg_g","model":"claude-fault","content":[{"type":"text","text":"bad \377\376 bytes"}]},"parent_tool_use_id":null}\n'
      printf '\377\376\375 %s\n' "$S"
      echo '{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"fault-1","usage":{"input_tokens":1,"output_tokens":1}}'
    else
      printf '{"type":"text","text":"bad \377\376 bytes"}\n'
      printf '\377\376\375 %s\n' "$S"
      echo '{"type":"done","finish_reason":"stop"}'
    fi
    exit 0 ;;
  endless)     start; printf '{"type":"text","text":"'; exec tr '\0' x </dev/zero ;;
  flood)       start; exec yes "$S" ;;
  hang)        start; exec sleep 300 ;;
  trickle)     start; while :; do printf x; sleep 1; done ;;
  *)           echo "unknown FAULT '$FAULT'" >&2; exit 64 ;;
esac
