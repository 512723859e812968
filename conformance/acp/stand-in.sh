#!/bin/sh
# Stands in for an Agent Client Protocol agent in the conformance suite
# (conformance/acp.yaml): JSON-RPC 2.0, one message per line, on stdin and
# stdout. It answers initialize and session/new, then plays the prompt turn
# STAND_IN (from the plugin's `env` config) names:
#   text         an agent_message_chunk "Hello there", stopReason end_turn
#   slow         "tick " every 200 ms for a minute; session/cancel ends it
#                with stopReason cancelled
#   hang         never answers the prompt (nor session/cancel)
#   auth         JSON-RPC error -32000 (authentication required)
#   overloaded   JSON-RPC error -32603 with data {"status": 529}
#   crash        exits with status 3 and a message on stderr
#   truncated    a chunk, then exits 0 without answering the prompt
#   tools        as text, except that a prompt asking to commit or to clean
#                first asks permission (session/request_permission, kind
#                execute) to run `git commit -am fix` or `rm -rf build`, and
#                says "ran: COMMAND" or "not allowed: COMMAND" (the doc
#                examples of approvals, DocExamplesTests)
# The plugin is tested against an agent built on the official ACP Python SDK
# in ACPTests; this script only needs /bin/sh, as the suite runs with a bare PATH.
field() { printf '%s' "$1" | sed -n "s/.*\"$2\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p"; }
send() { printf '%s\n' "$1"; }
chunk() { send '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"'"$1"'"}}}}'; }
ticker=
prompt=
command=
while IFS= read -r line; do
  method=$(field "$line" method)
  id=$(field "$line" id)
  case "$method" in
    initialize)
      send '{"jsonrpc":"2.0","id":'"$id"',"result":{"protocolVersion":1,"agentCapabilities":{},"agentInfo":{"name":"stand-in","version":"1.0.0"}}}' ;;
    session/new)
      send '{"jsonrpc":"2.0","id":'"$id"',"result":{"sessionId":"s1"}}' ;;
    session/prompt)
      prompt=$id
      case "$STAND_IN" in
        text) chunk "Hello there"; send '{"jsonrpc":"2.0","id":'"$id"',"result":{"stopReason":"end_turn"}}' ;;
        slow) ( i=0; while [ $i -lt 300 ]; do chunk "tick "; sleep 0.2; i=$((i + 1)); done ) & ticker=$! ;;
        hang) ;;
        auth) send '{"jsonrpc":"2.0","id":'"$id"',"error":{"code":-32000,"message":"Authentication required"}}' ;;
        overloaded) send '{"jsonrpc":"2.0","id":'"$id"',"error":{"code":-32603,"message":"Internal error","data":{"status":529}}}' ;;
        crash) echo "stand-in: fatal: told to crash" >&2; exit 3 ;;
        truncated) chunk "Hello"; exit 0 ;;
        tools)
          case "$line" in
            *Commit*) command="git commit -am fix" ;;
            *Clean*) command="rm -rf build" ;;
            *) command= ;;
          esac
          if [ -z "$command" ]; then
            chunk "Hello there"; send '{"jsonrpc":"2.0","id":'"$id"',"result":{"stopReason":"end_turn"}}'
          else
            send '{"jsonrpc":"2.0","id":900,"method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"call_1","title":"'"$command"'","kind":"execute","rawInput":{"command":"'"$command"'"}},"options":[{"optionId":"yes","name":"Allow once","kind":"allow_once"},{"optionId":"no","name":"Reject","kind":"reject_once"}]}}'
          fi ;;
        *) echo "stand-in: unknown STAND_IN '$STAND_IN'" >&2; exit 2 ;;
      esac ;;
    "")
      # The answer to the permission request of STAND_IN=tools.
      if [ "$id" = 900 ] && [ -n "$command" ]; then
        case "$line" in *'"optionId":"yes"'*) chunk "ran: $command" ;; *) chunk "not allowed: $command" ;; esac
        send '{"jsonrpc":"2.0","id":'"$prompt"',"result":{"stopReason":"end_turn"}}'
        command=
      fi ;;
    session/cancel)
      if [ -n "$ticker" ]; then
        kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null; ticker=
        send '{"jsonrpc":"2.0","id":'"$prompt"',"result":{"stopReason":"cancelled"}}'
      fi ;;
  esac
done
[ -n "$ticker" ] && kill "$ticker" 2>/dev/null
exit 0
