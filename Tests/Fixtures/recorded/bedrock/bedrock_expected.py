#!/usr/bin/env python3
"""Reference extractor for Amazon Bedrock Converse / ConverseStream transcripts
(stdlib only).

.eventstream: the raw application/vnd.amazon.eventstream body of
ConverseStream. Each message is: total length (4 bytes, big-endian), headers
length (4), prelude CRC32 (4), headers, payload, message CRC32 (4); both
CRCs are checked (a mismatch is an error, not a skipped frame). Headers are
name-length (1), name, type (1; only 7 = string is expected here),
value-length (2), value. The payload of an ":message-type" "event" message is
JSON, by ":event-type":

  text          contentBlockDelta.delta.text, concatenated
  reasoning     contentBlockDelta.delta.reasoningContent.text, concatenated
  tool_calls    per contentBlockIndex, contentBlockStart.start.toolUse gives
                {id: toolUseId, name}; arguments = the concatenation of every
                contentBlockDelta.delta.toolUse.input string; in order of start
  finish_reason messageStop.stopReason
  usage         metadata.usage, as sent
  error         an "exception" message: {type: ":exception-type", message}

.json: a Converse answer (output.message.content[]: text, reasoningContent
.reasoningText.text, toolUse with arguments = compact JSON of "input", key
order kept; stopReason; usage), or, without "output", an error body: error
= the whole body.

Usage:
  bedrock_expected.py FILE...          print results as JSON
  bedrock_expected.py --write FILE...  write FILE's <name>.expected.json
  bedrock_expected.py --check FILE...  compare with the stored sidecars
"""
import json
import os
import struct
import sys
import zlib


def messages(b):
    out, i = [], 0
    while i < len(b):
        if len(b) - i < 16:
            raise ValueError("truncated message at byte %d" % i)
        total, hlen, pcrc = struct.unpack(">III", b[i:i + 12])
        if zlib.crc32(b[i:i + 8]) != pcrc:
            raise ValueError("prelude CRC mismatch at byte %d" % i)
        if zlib.crc32(b[i:i + total - 4]) != struct.unpack(">I", b[i + total - 4:i + total])[0]:
            raise ValueError("message CRC mismatch at byte %d" % i)
        h, headers, j = b[i + 12:i + 12 + hlen], {}, 0
        while j < len(h):
            n = h[j]
            name = h[j + 1:j + 1 + n].decode()
            j += 1 + n
            if h[j] != 7:
                raise ValueError("header %s has type %d, not string" % (name, h[j]))
            (length,) = struct.unpack(">H", h[j + 1:j + 3])
            headers[name] = h[j + 3:j + 3 + length].decode()
            j += 3 + length
        out.append((headers, b[i + 12 + hlen:i + total - 4]))
        i += total
    return out


def extract(path):
    out = {"text": "", "reasoning": "", "tool_calls": [], "finish_reason": None, "usage": None, "error": None}
    with open(path, "rb") as f:
        body = f.read()
    if path.endswith(".eventstream"):
        calls = {}
        for headers, payload in messages(body):
            if headers.get(":message-type") == "exception":
                out["error"] = {"type": headers.get(":exception-type"), "message": json.loads(payload).get("message")}
                continue
            e, kind = json.loads(payload), headers.get(":event-type")
            if kind == "contentBlockStart" and "toolUse" in (e.get("start") or {}):
                t = e["start"]["toolUse"]
                calls[e["contentBlockIndex"]] = {"id": t.get("toolUseId"), "name": t.get("name"), "arguments": ""}
                out["tool_calls"].append(calls[e["contentBlockIndex"]])
            elif kind == "contentBlockDelta":
                d = e.get("delta") or {}
                if isinstance(d.get("text"), str):
                    out["text"] += d["text"]
                if isinstance((d.get("reasoningContent") or {}).get("text"), str):
                    out["reasoning"] += d["reasoningContent"]["text"]
                if "toolUse" in d:
                    calls[e["contentBlockIndex"]]["arguments"] += d["toolUse"].get("input") or ""
            elif kind == "messageStop":
                out["finish_reason"] = e.get("stopReason")
            elif kind == "metadata":
                out["usage"] = e.get("usage")
    else:
        doc = json.loads(body.decode("utf-8"))
        if "output" not in doc:
            out["error"] = doc
            return out
        for c in ((doc["output"].get("message") or {}).get("content")) or []:
            if isinstance(c.get("text"), str):
                out["text"] += c["text"]
            elif "reasoningContent" in c:
                out["reasoning"] += ((c["reasoningContent"].get("reasoningText")) or {}).get("text") or ""
            elif "toolUse" in c:
                t = c["toolUse"]
                out["tool_calls"].append({"id": t.get("toolUseId"), "name": t.get("name"),
                                          "arguments": json.dumps(t.get("input"), separators=(",", ":"), ensure_ascii=False)})
        out["finish_reason"] = doc.get("stopReason")
        out["usage"] = doc.get("usage")
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from expected_cli import run

    sys.exit(run(sys.argv[1:], extract, ("eventstream", "json")))
