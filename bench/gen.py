#!/usr/bin/env python3
"""Pre-generates the bodies the benchmark server (nginx) serves, and the text
each stream must join to.

    bench/gen.py OUT_DIR

Layout of OUT_DIR (a URL path maps to a file; nginx picks the Content-Type
by location, see bench/nginx.conf.in):

    www/openai/complete/v1/chat/completions        one non-streamed chat completion (JSON)
    www/anthropic/complete/v1/messages             one non-streamed Anthropic message (JSON)
    answers.conf                                   nginx locations answering those two POSTs from
                                                   memory (`return 200`; included by bench/nginx.conf.in)
    www/openai/stream-N/v1/chat/completions        an SSE stream of N text chunks
    www/anthropic/stream-N/v1/messages             an SSE stream of N content_block_delta events
    www/ollama/stream-N/api/chat                   N NDJSON lines (+ /api/version, /api/tags, /api/show)
    www/claude/v1/messages                         a short Anthropic stream for the real claude CLI
    expected/complete.txt                          the completion's text
    expected/{openai,anthropic,ollama}-N.txt       what the N chunks join to, byte for byte
    claude-replay.jsonl                            (written by run.py from a real claude run)

The chunks copy the shape of recorded provider answers
(../shared/fixtures/provider-transcripts): every member a real server sends,
at its real size. The text deltas are drawn, with a fixed seed, from tokens
that exercise the ugly parts: multi-byte UTF-8 (2, 3 and 4 bytes), JSON
escapes (\\n, \\", \\\\, \\t and \\uXXXX forms), and plain words.
"""
import json
import os
import random
import sys

# Bump when the bodies change, so run.py regenerates them.
VERSION = "5"

STREAM_SIZES = [100_000, 2_000, 50]

TOKENS = (
    [" the", " model", " streams", " tokens", " quickly", ",", ".", " and", " a", " of", " to", " in",
     " Descartes", " plugin", " host", " benchmark", " 42", " 2025", " is", " it", " that", "ing", "ed",
     " über", " café", " naïve", " façade", " 日本語", " 中文", " 한국어", " Ελληνικά", " 🙂", " 🚀", "—",
     "\n", "\n\n", " \"quoted\"", " back\\slash", "\ttab", " {json}", " <tag>", " ok"]
)


def token_stream(n, seed):
    rnd = random.Random(seed)
    return [rnd.choice(TOKENS) for _ in range(n)]


def js(s, ascii_escapes=False):
    """A JSON string literal: raw UTF-8 (as the providers send), or with
    \\uXXXX escapes for every non-ASCII character."""
    return json.dumps(s, ensure_ascii=ascii_escapes)


def openai_stream(tokens):
    head = ('{"id":"chatcmpl-BENCHd0c4rt3s5tr34m1ng","object":"chat.completion.chunk","created":1755691077,'
            '"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_560af6e559",'
            '"choices":[{"index":0,"delta":')
    out = []
    out.append('data: ' + head + '{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],'
               '"usage":null,"obfuscation":"bZuWwpMP"}\n\n')
    for i, t in enumerate(tokens):
        # One chunk in 50 uses \uXXXX escapes, as some compatible servers do.
        lit = js(t, ascii_escapes=(i % 50 == 49))
        out.append('data: ' + head + '{"content":' + lit + '},"logprobs":null,"finish_reason":null}],'
                   '"usage":null,"obfuscation":"XjUSo1V9S"}\n\n')
    out.append('data: ' + head + '{},"logprobs":null,"finish_reason":"stop"}],"usage":null,"obfuscation":"k3"}\n\n')
    out.append('data: {"id":"chatcmpl-BENCHd0c4rt3s5tr34m1ng","object":"chat.completion.chunk","created":1755691077,'
               '"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_560af6e559",'
               '"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d,'
               '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
               '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,'
               '"rejected_prediction_tokens":0}},"obfuscation":"Qx"}\n\n' % (len(tokens), len(tokens) + 12))
    out.append('data: [DONE]\n\n')
    return ''.join(out)


def anthropic_stream(tokens):
    out = []
    out.append('event: message_start\ndata: {"type":"message_start","message":{"model":"claude-haiku-4-5-20251001",'
               '"id":"msg_01BENCHd0c4rt3s5tr34m","type":"message","role":"assistant","content":[],"stop_reason":null,'
               '"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,'
               '"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,'
               '"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}\n\n')
    out.append('event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n')
    out.append('event: ping\ndata: {"type": "ping"}\n\n')
    for i, t in enumerate(tokens):
        lit = js(t, ascii_escapes=(i % 50 == 49))
        out.append('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                   '"delta":{"type":"text_delta","text":' + lit + '}}\n\n')
    out.append('event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n')
    out.append('event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
               '"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":%d}}\n\n'
               % len(tokens))
    out.append('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return ''.join(out)


def ollama_stream(tokens):
    out = []
    for i, t in enumerate(tokens):
        lit = js(t, ascii_escapes=(i % 50 == 49))
        out.append('{"model":"llama3.2:1b","created_at":"2026-01-28T18:34:16.110694939Z",'
                   '"message":{"role":"assistant","content":' + lit + '},"done":false}\n')
    out.append('{"model":"llama3.2:1b","created_at":"2026-01-28T18:34:17.177747459Z","message":{"role":"assistant","content":""},'
               '"done":true,"done_reason":"stop","total_duration":667241489,"load_duration":53155186,"prompt_eval_count":12,'
               '"prompt_eval_duration":21874000,"eval_count":%d,"eval_duration":590130000}\n' % len(tokens))
    return ''.join(out)


COMPLETE_TEXT = "Hello! I'm a benchmark answer: short, like most agent turns \u2014 with a caf\u00e9 and a \U0001F680."


def openai_complete():
    return json.dumps({
        "id": "chatcmpl-BENCHc0mpl3t3",
        "object": "chat.completion",
        "created": 1755691077,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": COMPLETE_TEXT, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": 12, "completion_tokens": 24, "total_tokens": 36,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_560af6e559",
    }, ensure_ascii=False, separators=(",", ":"))


def anthropic_complete():
    return json.dumps({
        "model": "claude-haiku-4-5-20251001",
        "id": "msg_01BENCHc0mpl3t3",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": COMPLETE_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 24, "service_tier": "standard",
        },
    }, ensure_ascii=False, separators=(",", ":"))


def answers_conf(bodies):
    """nginx locations that answer a POST to each path with its body from
    memory: nginx's static module answers a POST to a file 405, and turning
    that into a GET (error_page 405 =200) held the server to about 2,300
    requests/s here, slower than either client. `return 200` costs nginx
    next to nothing, so the clients' own cost shows."""
    out = ["# Written by bench/gen.py: the non-streamed answers, from memory (see bench/nginx.conf.in)."]
    for path, body in bodies:
        if "$" in body:
            sys.exit(f"gen.py: the body for {path} contains '$', which nginx's return would read as a variable")
        lit = body.replace("\\", "\\\\").replace("'", "\\'")
        out.append(f"location = {path} {{\n    default_type application/json;\n    return 200 '{lit}';\n}}")
    return "\n".join(out) + "\n"


def claude_stream():
    # What the real claude CLI asks for: a short text answer.
    return anthropic_stream(["Hello", " from", " the", " benchmark", " server", "."])


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def main():
    out = sys.argv[1]
    stamp = os.path.join(out, "VERSION")
    if os.path.exists(stamp) and open(stamp).read().strip() == VERSION:
        return
    www = os.path.join(out, "www")
    write(os.path.join(www, "openai/complete/v1/chat/completions"), openai_complete())
    write(os.path.join(www, "anthropic/complete/v1/messages"), anthropic_complete())
    write(os.path.join(out, "answers.conf"), answers_conf([
        ("/openai/complete/v1/chat/completions", openai_complete()),
        ("/anthropic/complete/v1/messages", anthropic_complete())]))
    write(os.path.join(out, "expected/complete.txt"), COMPLETE_TEXT)
    for n in STREAM_SIZES:
        tokens = token_stream(n, seed=n)
        text = "".join(tokens)
        write(os.path.join(www, f"openai/stream-{n}/v1/chat/completions"), openai_stream(tokens))
        write(os.path.join(www, f"anthropic/stream-{n}/v1/messages"), anthropic_stream(tokens))
        base = os.path.join(www, f"ollama/stream-{n}")
        write(os.path.join(base, "api/chat"), ollama_stream(tokens))
        write(os.path.join(base, "api/version"), '{"version":"0.12.3"}')
        write(os.path.join(base, "api/tags"), json.dumps({"models": [{
            "name": "llama3.2:1b", "model": "llama3.2:1b", "modified_at": "2026-01-28T18:00:00Z", "size": 1321098329,
            "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "1.2B", "quantization_level": "Q8_0"}}]}))
        write(os.path.join(base, "api/show"), json.dumps({
            "capabilities": ["completion", "tools"], "model_info": {"llama.context_length": 131072},
            "details": {"family": "llama"}, "parameters": ""}))
        for fmt in ("openai", "anthropic", "ollama"):
            write(os.path.join(out, f"expected/{fmt}-{n}.txt"), text)
    write(os.path.join(www, "claude/v1/messages"), claude_stream())
    write(stamp, VERSION + "\n")


if __name__ == "__main__":
    main()
