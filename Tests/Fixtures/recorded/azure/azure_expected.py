#!/usr/bin/env python3
"""Reference extractor for Azure OpenAI chat-completions transcripts (stdlib only).

The OpenAI chat-completions dialect plus Azure's content-filter reports:

  text          choices[0].delta.content (stream) or message.content (whole)
  tool_calls    choice 0's tool calls; a streamed call is keyed by "index",
                id and name are the first non-empty values, arguments the
                concatenation of every function.arguments string; in order of
                first appearance
  finish_reason the last non-null choices[0].finish_reason
  usage         the last non-null top-level "usage"
  error         the "error" member of an error body
  response_id   the first non-empty top-level "id"
  model         the first non-empty top-level "model"
  prompt_filter_results   the last top-level prompt_filter_results seen
  content_filter_results  the last non-empty choices[0].content_filter_results
  content_filter_error    for an error whose code is content_filter, the names
                of innererror.content_filter_result's categories with
                "filtered": true, sorted

SSE: lines split on CR, LF or CRLF, "data:" joined per event, a blank line
dispatches, "[DONE]" ignored, each data parsed as JSON.

Usage:
  azure_expected.py FILE...          print results as JSON
  azure_expected.py --write FILE...  write FILE's <name>.expected.json
  azure_expected.py --check FILE...  compare with the stored sidecars
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
    return [json.loads(e) for e in events if e != "[DONE]"]


def extract(path):
    out = {"text": "", "tool_calls": [], "finish_reason": None, "usage": None, "error": None, "response_id": None,
           "model": None, "prompt_filter_results": None, "content_filter_results": None, "content_filter_error": None}
    with open(path, encoding="utf-8") as f:
        body = f.read()
    objs = sse_events(body) if path.endswith(".sse") else [json.loads(body)]
    calls = {}
    for o in objs:
        if "error" in o and "choices" not in o:
            out["error"] = o["error"]
            if o["error"].get("code") == "content_filter":
                res = (o["error"].get("innererror") or {}).get("content_filter_result") or {}
                out["content_filter_error"] = sorted(k for k, v in res.items() if v.get("filtered") is True)
            continue
        if o.get("id") and out["response_id"] is None:
            out["response_id"] = o["id"]
        if o.get("model") and out["model"] is None:
            out["model"] = o["model"]
        if o.get("prompt_filter_results") is not None:
            out["prompt_filter_results"] = o["prompt_filter_results"]
        if o.get("usage") is not None:
            out["usage"] = o["usage"]
        choices = [c for c in o.get("choices") or [] if c.get("index", 0) == 0]
        if not choices:
            continue
        c = choices[0]
        if c.get("content_filter_results"):
            out["content_filter_results"] = c["content_filter_results"]
        if c.get("finish_reason") is not None:
            out["finish_reason"] = c["finish_reason"]
        part = c.get("delta") if "delta" in c else c.get("message") or {}
        if isinstance(part.get("content"), str):
            out["text"] += part["content"]
        for i, t in enumerate(part.get("tool_calls") or []):
            key = t.get("index", i)
            if key not in calls:
                calls[key] = {"id": None, "name": None, "arguments": ""}
                out["tool_calls"].append(calls[key])
            call, fn = calls[key], t.get("function") or {}
            if t.get("id") and not call["id"]:
                call["id"] = t["id"]
            if fn.get("name") and not call["name"]:
                call["name"] = fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["arguments"] += fn["arguments"]
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from expected_cli import run

    sys.exit(run(sys.argv[1:], extract, ("sse", "json")))
