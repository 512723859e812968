#!/usr/bin/env python3
"""Reference extractor for Gemini / Vertex AI transcripts (stdlib only).

Computes what a client must extract from a recorded generateContent or
streamGenerateContent?alt=sse body, independently of any client:

  text          every text part of candidates[0].content.parts that is not
                marked "thought": true, concatenated in order over all chunks
  reasoning     the text parts marked "thought": true, concatenated
  tool_calls    functionCall parts in order as {id: functionCall.id or null,
                name, arguments: compact JSON of args (key order kept)}
  finish_reason the last candidates[0].finishReason seen; when no candidate
                ever carried one and promptFeedback.blockReason is set,
                "blocked:" + blockReason
  usage         the last usageMetadata seen (it is cumulative), as sent
  error         the "error" member of a body or of a chunk (google.rpc.Status)
  response_id   the first responseId seen
  model         the first modelVersion seen

Formats, by file extension: .sse (lines split on CR, LF or CRLF; "data:"
joined per event; a blank line dispatches; each data parsed as JSON);
.json (one GenerateContentResponse, a JSON array of them, or an error body).

Usage:
  gemini_expected.py FILE...          print results as JSON
  gemini_expected.py --write FILE...  write FILE's <name>.expected.json
  gemini_expected.py --check FILE...  compare with the stored sidecars
"""
import json
import os
import re
import sys


def sse_events(text):
    events, data = [], []
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data:
                events.append("\n".join(data))
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
    if data:
        events.append("\n".join(data))
    return [json.loads(e) for e in events]


def chunk(c, out, state):
    if "error" in c:
        out["error"] = c["error"]
        return
    if out["response_id"] is None:
        out["response_id"] = c.get("responseId")
    if out["model"] is None:
        out["model"] = c.get("modelVersion")
    if isinstance(c.get("usageMetadata"), dict):
        out["usage"] = c["usageMetadata"]
    block = (c.get("promptFeedback") or {}).get("blockReason")
    if block:
        state["block"] = block
    cands = c.get("candidates") or []
    if not cands:
        return
    cand = cands[0]
    for p in (cand.get("content") or {}).get("parts") or []:
        if "functionCall" in p:
            fc = p["functionCall"]
            out["tool_calls"].append({
                "id": fc.get("id"), "name": fc.get("name"),
                "arguments": json.dumps(fc.get("args") or {}, separators=(",", ":"), ensure_ascii=False)})
        elif isinstance(p.get("text"), str):
            key = "reasoning" if p.get("thought") is True else "text"
            out[key] += p["text"]
    if cand.get("finishReason"):
        out["finish_reason"] = cand["finishReason"]


def extract(path):
    out = {"text": "", "reasoning": "", "tool_calls": [], "finish_reason": None, "usage": None, "error": None,
           "response_id": None, "model": None}
    state = {}
    with open(path, encoding="utf-8") as f:
        body = f.read()
    if path.endswith(".sse"):
        chunks = sse_events(body)
    else:
        doc = json.loads(body)
        chunks = doc if isinstance(doc, list) else [doc]
    for c in chunks:
        chunk(c, out, state)
    if out["finish_reason"] is None and state.get("block"):
        out["finish_reason"] = "blocked:" + state["block"]
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from expected_cli import run

    sys.exit(run(sys.argv[1:], extract, ("sse", "json")))
