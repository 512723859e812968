import json, struct, zlib, sys
def frame(headers, payload):
    h = b""
    for k, v in headers:
        kb, vb = k.encode(), v.encode()
        h += bytes([len(kb)]) + kb + b"\x07" + struct.pack(">H", len(vb)) + vb
    total = 16 + len(h) + len(payload)
    prelude = struct.pack(">II", total, len(h))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + h + payload
    return msg + struct.pack(">I", zlib.crc32(msg))
def ev(name, obj):
    return frame([(":event-type", name), (":content-type", "application/json"), (":message-type", "event")], json.dumps(obj, separators=(",", ":")).encode())
def exc(name, message):
    return frame([(":exception-type", name), (":content-type", "application/json"), (":message-type", "exception")], json.dumps({"message": message}).encode())
P = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"
text = [ev("messageStart", {"p": P[:10], "role": "assistant"})]
text.append(ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": P[:21]}))
text.append(ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there, "}, "p": P[:7]}))
text.append(ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "conformance!"}, "p": P[:33]}))
text.append(ev("contentBlockStop", {"contentBlockIndex": 0, "p": P[:4]}))
text.append(ev("messageStop", {"p": P[:12], "stopReason": "end_turn"}))
text.append(ev("metadata", {"metrics": {"latencyMs": 412}, "p": P[:2], "usage": {"inputTokens": 12, "outputTokens": 6, "totalTokens": 18}}))
d = sys.argv[1]
open(d + "/text.bin", "wb").write(b"".join(text))
open(d + "/cut.bin", "wb").write(b"".join(text[:3]) + text[3][:17])
open(d + "/slow-start.bin", "wb").write(text[0])
open(d + "/slow-tick.bin", "wb").write(ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "tick "}, "p": P[:5]}))
open(d + "/throttled-mid-stream.bin", "wb").write(text[0] + text[1] + exc("throttlingException", "Too many tokens, please wait before trying again."))
whole = {"metrics": {"latencyMs": 380}, "output": {"message": {"content": [{"text": "Hello there, conformance!"}], "role": "assistant"}}, "stopReason": "end_turn", "usage": {"inputTokens": 12, "outputTokens": 6, "totalTokens": 18}}
open(d + "/text.json", "w").write(json.dumps(whole) + "\n")
