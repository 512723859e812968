#!/usr/bin/python3
# json-lines, behaving well. Reads the request document from stdin and
# streams the last user message back word by word. Request options:
#   "tools": n          n whole tool calls, then finish_reason tool_use
#   "stream_tool": true one tool call as start/delta/end
#   "error": {...}      an error event instead of done
#   "notice": "text"    a notice event first
#   "echo_request": true put the whole request into the done event's metadata
import json, sys
req = json.loads(sys.stdin.readline())
opts = req.get("options", {})
def emit(o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()
emit({"type": "start", "id": "echo-1", "model": req.get("model") or "echo-model"})
if "notice" in opts:
    emit({"type": "notice", "level": "info", "message": opts["notice"]})
if "error" in opts:
    e = dict(opts["error"]); e["type"] = "error"
    emit(e); sys.exit(0)
last = [m for m in req["messages"] if m["role"] == "user"][-1]["content"]
words = last.split(" ")
emit({"type": "reasoning", "text": "echoing %d words" % len(words)})
for i, w in enumerate(words):
    emit({"type": "text", "text": w if i == 0 else " " + w})
reason = "stop"
for i in range(int(opts.get("tools", 0))):
    emit({"type": "tool_call", "id": "call_%d" % i, "name": "tool_%d" % i, "arguments": {"n": i}})
    reason = "tool_use"
if opts.get("stream_tool"):
    emit({"type": "tool_call_start", "index": 0, "id": "call_s", "name": "streamed"})
    emit({"type": "tool_call_delta", "index": 0, "arguments": "{\"a\":"})
    emit({"type": "tool_call_delta", "index": 0, "arguments": "1}"})
    emit({"type": "tool_call_end", "index": 0})
    reason = "tool_use"
emit({"type": "usage", "input_tokens": len(last), "output_tokens": len(words)})
meta = {"argv": sys.argv[1:]}
if opts.get("echo_request"):
    meta["request"] = req
emit({"type": "done", "finish_reason": reason, "cost_usd": 0.001, "metadata": meta})
