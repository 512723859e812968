#!/usr/bin/env python3
"""Reference extractor for OpenAI Responses API transcripts (stdlib only).

Computes what a client must extract from a recorded /v1/responses body, from
the FINAL state the server reported (the response object of
response.completed / response.incomplete, or the whole body), not from the
deltas, so that a client assembling the deltas is checked against it:

  text          concatenation of output[type=message].content[type=output_text].text
                (refusal parts too), in output order
  reasoning     every output[type=reasoning].summary[].text in order, joined
                with a blank line ("\\n\\n"); reasoning_text content parts appended
  tool_calls    output[type=function_call] as {id: call_id, name, arguments}
  finish_reason the response's status; for "incomplete" the
                incomplete_details.reason ("incomplete:max_output_tokens")
  usage         the response's usage object as sent
  error         an error body's "error", response.failed's response.error,
                or an "error" event's data (the last one seen)
  response_id   the response's id

SSE: lines split on CR, LF or CRLF, "data:" joined per event, blank line
dispatches, each data parsed as JSON.

Usage:
  responses_expected.py FILE...          print results as JSON
  responses_expected.py --write FILE...  write FILE's <name>.expected.json
  responses_expected.py --check FILE...  compare with the stored sidecars
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


def from_response(r, out):
    out["response_id"] = r.get("id")
    for item in r.get("output") or []:
        t = item.get("type")
        if t == "message":
            for c in item.get("content") or []:
                if c.get("type") == "output_text":
                    out["text"] += c.get("text") or ""
                elif c.get("type") == "refusal":
                    out["text"] += c.get("refusal") or ""
        elif t == "reasoning":
            parts = [s.get("text") or "" for s in item.get("summary") or []]
            parts += [c.get("text") or "" for c in item.get("content") or [] if c.get("type") == "reasoning_text"]
            for p in parts:
                if p:
                    out["reasoning"] = (out["reasoning"] + "\n\n" + p) if out["reasoning"] else p
        elif t == "function_call":
            out["tool_calls"].append({"id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments")})
    status = r.get("status")
    if status == "incomplete":
        status = "incomplete:" + ((r.get("incomplete_details") or {}).get("reason") or "")
    out["finish_reason"] = status
    out["usage"] = r.get("usage")
    if r.get("status") == "failed":
        out["error"] = r.get("error")


def extract(path):
    out = {"text": "", "reasoning": "", "tool_calls": [], "finish_reason": None, "usage": None, "error": None, "response_id": None}
    with open(path, encoding="utf-8") as f:
        body = f.read()
    if path.endswith(".sse"):
        for e in sse_events(body):
            t = e.get("type")
            if t in ("response.completed", "response.incomplete", "response.failed"):
                from_response(e["response"], out)
            elif t == "error":
                out["error"] = e.get("error") or {k: v for k, v in e.items() if k not in ("type", "sequence_number")}
    else:
        doc = json.loads(body)
        if "error" in doc and doc.get("object") != "response":
            out["error"] = doc["error"]
        else:
            from_response(doc, out)
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from expected_cli import run

    sys.exit(run(sys.argv[1:], extract, ("sse", "json")))
