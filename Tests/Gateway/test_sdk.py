#!/usr/bin/env python3
"""The official OpenAI and Anthropic Python SDKs against `descartes serve`.

Run by Tests/DescartesTests/GatewayTests.swift (or by hand):

    DESCARTES=.build/debug/descartes DESCARTES_PLUGIN_PATH=DIR python3 Tests/Gateway/test_sdk.py -v

DIR holds the echo, scripted, openai and anthropic plugins (manifest and
library). One gateway and one scripted upstream
(Tests/Servers/scripted_server.py) are started for the whole suite, both on
127.0.0.1; the `upstream` provider is the OpenAI plugin and the `claude`
provider the Anthropic plugin, both pointed at the scripted server, whose
answers each test scripts. Everything is loopback; nothing is recorded from elsewhere.
"""
import base64
import json
import os
import re
import select
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import anthropic
import httpx
import openai

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KEY_A = "gw-test-key-team-a-0123456789"
KEY_B = "gw-test-key-team-b-0123456789"
KEY_C = "gw-test-key-team-c-0123456789"
KEY_D = "gw-test-key-team-d-0123456789"
UPSTREAM_KEY = "sk-upstream-test-key-abcdef"

state = {}


def read_line(proc, timeout=30.0):
    """One stdout line of `proc`, or fail after `timeout` seconds."""
    deadline = time.time() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            if proc.poll() is not None:
                break
            continue
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch == b"\n":
            return buf.decode()
        buf += ch
    raise RuntimeError(f"no line from {proc.args[0]} within {timeout} s (got {buf!r})")


class Upstream:
    """The scripted server, controlled over its stdin."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.join(ROOT, "Tests/Servers/scripted_server.py"), "--port", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = read_line(self.proc)
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])

    def command(self, doc):
        self.proc.stdin.write((json.dumps(doc) + "\n").encode())
        self.proc.stdin.flush()
        reply = read_line(self.proc)
        if reply.startswith("ERROR"):
            raise RuntimeError(reply)
        return reply

    def script(self, *responses, route="POST /v1/chat/completions"):
        self.command({"cmd": "reset"})
        self.command({"cmd": "script", "routes": {route: list(responses)}})

    def requests(self):
        return json.loads(self.command({"cmd": "requests"}))

    def closed(self):
        return json.loads(self.command({"cmd": "closed"}))

    def stop(self):
        try:
            self.command({"cmd": "quit"})
        except Exception:
            pass
        self.proc.kill()
        self.proc.wait()


def setUpModule():
    upstream = Upstream()
    tmp = tempfile.TemporaryDirectory(prefix="descartes-gateway-")
    config = os.path.join(tmp.name, "providers.yaml")
    with open(config, "w") as f:
        f.write(f"""\
providers:
  upstream:
    plugin: openai
    endpoint: http://127.0.0.1:{upstream.port}/v1
    api_key: ${{UPSTREAM_KEY}}
  claude:
    plugin: anthropic
    endpoint: http://127.0.0.1:{upstream.port}/v1
    api_key: ${{UPSTREAM_KEY}}
retry: {{max_attempts: 1}}
audit:
  enabled: true
  file: {os.path.join(tmp.name, "audit.jsonl")}
server:
  listen: 127.0.0.1:0
  keys_database: {os.path.join(tmp.name, "keys.sqlite3")}
  responses_database: {os.path.join(tmp.name, "responses.sqlite3")}
  cors_origins: ["http://app.test"]
  keys:
    team-a: ${{GW_KEY_A}}
    team-b:
      secret: ${{GW_KEY_B}}
      models: ["echo", "echo/*"]
    team-d:
      secret: ${{GW_KEY_D}}
      rpm: 1
      labels: {{team: d}}
""")
    env = dict(os.environ)
    env.update({"GW_KEY_A": KEY_A, "GW_KEY_B": KEY_B, "GW_KEY_C": KEY_C, "GW_KEY_D": KEY_D, "UPSTREAM_KEY": UPSTREAM_KEY, "NO_COLOR": "1"})
    with open(config) as f:
        state.update(config=config, env=env, config_text=f.read())
    # Keys issued by the CLI before the gateway starts (others are issued and
    # revoked while it runs).
    issued = {}
    for name, args in ISSUED.items():
        issued[name] = keys_cli("create", "--name", name, *args).stdout.strip()
    state["issued"] = issued
    log = open(os.path.join(tmp.name, "access.log"), "w+")
    gateway = subprocess.Popen(
        [os.environ.get("DESCARTES", "descartes"), "serve", "--config", config],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp.name)
    try:
        line = read_line(gateway)
    except RuntimeError:
        gateway.kill()
        log.seek(0)
        raise RuntimeError("descartes serve did not start: " + log.read())
    assert line.startswith("listening on http://127.0.0.1:"), line
    state.update(upstream=upstream, tmp=tmp, gateway=gateway, log=log, url=line.split()[-1])


def tearDownModule():
    gateway = state["gateway"]
    gateway.terminate()  # SIGTERM: graceful shutdown
    try:
        status = gateway.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gateway.kill()
        status = "hung"
    state["upstream"].stop()
    state["log"].seek(0)
    log = state["log"].read()
    # The access log names keys, never their secrets (nor the upstream's).
    for secret in (KEY_A, KEY_B, KEY_C, KEY_D, UPSTREAM_KEY, *state["issued"].values(), *state.get("more_issued", [])):
        assert secret not in log, "a secret reached the access log"
    assert '"key":"team-a"' in log, log[-2000:]
    assert status == 0, f"descartes serve exited {status} after SIGTERM:\n{log[-2000:]}"
    state["tmp"].cleanup()


# Keys issued with `descartes keys create` (server.keys_database), by name: their options.
ISSUED = {
    "issued-a": ["--models", "echo,echo/*,scripted", "--label", "team=a", "--label", "agent=sdk-test"],
    "issued-rpm": ["--rpm", "2"],
    "issued-tpm": ["--tpm", "40"],
    "issued-budget": ["--budget-usd", "0.001", "--models", "upstream*"],
}


def keys_cli(*args, check=True):
    """`descartes keys ARGS` against the suite's providers.yaml."""
    p = subprocess.run([os.environ.get("DESCARTES", "descartes"), "keys", *args, "--config", state["config"]],
                       env=state["env"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"descartes keys {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


def oai(key=KEY_A, **kw):
    return openai.OpenAI(base_url=state["url"] + "/v1", api_key=key, max_retries=0, timeout=30, **kw)


def ant(key=KEY_A, **kw):
    return anthropic.Anthropic(base_url=state["url"], api_key=key, max_retries=0, timeout=30, **kw)


def sse(*docs):
    return "".join(f"data: {json.dumps(d)}\n\n" for d in docs) + "data: [DONE]\n\n"


def chunk(delta, finish=None, usage=None):
    d = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        d["choices"] = []
        d["usage"] = usage
    return d


TOOL_STREAM = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
    chunk({}, finish="tool_calls"),
    chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}),
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def sse_response(body, **kw):
    r = {"status": 200, "headers": {"content-type": "text/event-stream"}, "body": body}
    r.update(kw)
    return r


class OpenAISDK(unittest.TestCase):
    def test_complete_through_echo(self):
        r = oai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello there gateway"}])
        self.assertEqual(r.choices[0].message.content, "hello there gateway")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.object, "chat.completion")
        self.assertGreater(r.usage.total_tokens, 0)

    def test_stream_with_usage(self):
        chunks = list(oai().chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "one two three")
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"])
        self.assertEqual(chunks[-1].choices, [])
        self.assertGreater(chunks[-1].usage.completion_tokens, 0)

    def test_models_list(self):
        ids = [m.id for m in oai().models.list()]
        for name in ("echo", "upstream", "upstream/gpt-4o-mini"):
            self.assertIn(name, ids)
        # team-b sees only what it may use.
        self.assertEqual(sorted(m.id for m in oai(KEY_B).models.list()), ["echo", "echo/echo-1"])

    def test_tool_call_complete(self):
        state["upstream"].script({"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}})})
        r = oai().chat.completions.create(
            model="upstream", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER_TOOL])
        msg = r.choices[0].message
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        self.assertEqual(msg.tool_calls[0].id, "call_9")
        self.assertEqual(msg.tool_calls[0].function.name, "get_weather")
        self.assertEqual(json.loads(msg.tool_calls[0].function.arguments), {"city": "Oslo"})
        self.assertEqual(r.usage.prompt_tokens, 20)
        # The gateway sent the tools on, and not its own key nor the client's.
        sent = state["upstream"].requests()[-1]
        body = json.loads(sent["body"])
        self.assertEqual(body["tools"][0]["function"]["name"], "get_weather")
        auth = [v for k, v in sent["headers"] if k.lower() == "authorization"]
        self.assertEqual(auth, ["Bearer " + UPSTREAM_KEY])

    def test_structured_output_reaches_the_upstream_and_is_checked(self):
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

        def answer(content):
            return {"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
                "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}})}
        state["upstream"].script(answer('{"name": "Ada", "age": 36}'))
        r = oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "Ada, 36"}], response_format=fmt)
        self.assertEqual(json.loads(r.choices[0].message.content), {"name": "Ada", "age": 36})
        self.assertEqual(json.loads(state["upstream"].requests()[-1]["body"])["response_format"], fmt)
        # An upstream answer that does not match: the gateway's host checks it (502, the path named).
        state["upstream"].script(answer('{"name": "Ada", "age": "36"}'))
        with self.assertRaises(openai.InternalServerError) as e:
            oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "Ada, 36"}], response_format=fmt)
        self.assertEqual(e.exception.status_code, 502)
        self.assertIn('$.age: expected integer, got string "36"', str(e.exception))

    def test_streamed_tool_call_deltas(self):
        state["upstream"].script(sse_response(TOOL_STREAM, split="bytes:13"))
        stream = oai().chat.completions.create(
            model="upstream/gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL],
            stream=True, stream_options={"include_usage": True})
        args = ""
        names = []
        finish = None
        usage = None
        for c in stream:
            if c.usage:
                usage = c.usage
            if not c.choices:
                continue
            for tc in c.choices[0].delta.tool_calls or []:
                if tc.function.name:
                    names.append((tc.index, tc.id, tc.function.name))
                args += tc.function.arguments or ""
            finish = c.choices[0].finish_reason or finish
        self.assertEqual(names, [(0, "call_1", "get_weather")])
        self.assertEqual(json.loads(args), {"city": "Paris"})
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(usage.completion_tokens, 7)
        self.assertEqual(json.loads(state["upstream"].requests()[-1]["body"])["model"], "gpt-4o-mini")

    def test_errors_are_the_sdks_exceptions(self):
        with self.assertRaises(openai.AuthenticationError):
            oai(key="not-a-key-of-this-gateway").chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(openai.PermissionDeniedError) as e:
            oai(KEY_B).chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}])
        self.assertIn("team-b", str(e.exception))
        with self.assertRaises(openai.NotFoundError) as e:
            oai().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.code, "model_not_found")
        with self.assertRaises(openai.BadRequestError):
            oai().chat.completions.create(model="echo", messages=[])

    def test_upstream_errors_map_to_statuses(self):
        up = state["upstream"]
        up.script({"status": 429, "headers": {"retry-after": "7", "content-type": "application/json"},
                   "body": json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})})
        with self.assertRaises(openai.RateLimitError) as e:
            oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.response.headers.get("retry-after"), "7")
        # The upstream refusing the gateway's key is the gateway's problem (502), not the client's (401).
        up.script({"status": 401, "headers": {"content-type": "application/json"},
                   "body": json.dumps({"error": {"message": "bad key", "type": "invalid_request_error"}})})
        with self.assertRaises(openai.APIStatusError) as e:
            oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.status_code, 502)
        self.assertNotIn(UPSTREAM_KEY, str(e.exception))

    def test_error_mid_stream(self):
        body = "data: " + json.dumps(chunk({"role": "assistant", "content": "partial "})) + "\n\n"
        state["upstream"].script(sse_response(body + "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"more\"}}]}\n\n",
                                              close_after=len(body) + 10))
        got = ""
        with self.assertRaises(openai.APIError):
            for c in oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}], stream=True):
                if c.choices:
                    got += c.choices[0].delta.content or ""
        self.assertEqual(got, "partial ")

    def test_client_disconnect_cancels_upstream(self):
        up = state["upstream"]
        first = "data: " + json.dumps(chunk({"role": "assistant", "content": "tick "})) + "\n\n"
        pieces = [{"data": first}] + [{"data": "data: " + json.dumps(chunk({"content": "tick "})) + "\n\n", "delay_ms": 300}] * 40
        up.script({"status": 200, "headers": {"content-type": "text/event-stream"}, "chunks": pieces, "framing": "chunked"})
        stream = oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}], stream=True)
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                break
        stream.close()
        conn = up.requests()[-1]["connection"]
        deadline = time.time() + 8
        while time.time() < deadline and conn not in up.closed():
            time.sleep(0.1)
        self.assertIn(conn, up.closed(), "the upstream request was not cancelled when the client went away")


RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


class OpenAIResponses(unittest.TestCase):
    def test_response_through_echo(self):
        r = oai().responses.create(model="echo", input="hello responses api", instructions="Answer briefly.")
        self.assertEqual(r.object, "response")
        self.assertTrue(r.id.startswith("resp_"), r.id)
        self.assertEqual(r.status, "completed")
        self.assertEqual(r.output_text, "hello responses api")
        self.assertEqual(r.output[0].type, "message")
        self.assertEqual(r.output[0].content[0].type, "output_text")
        self.assertEqual(r.instructions, "Answer briefly.")
        self.assertEqual(r.model, "echo")
        self.assertGreater(r.usage.total_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens)

    def test_stream_event_sequence(self):
        events = list(oai().responses.create(model="echo", input=[{"role": "user", "content": "a b c"}], stream=True))
        types = [e.type for e in events]
        self.assertEqual(types[:4], ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"])
        self.assertEqual(types[4:7], ["response.output_text.delta"] * 3)
        self.assertEqual(types[7:], ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                                     "response.completed"])
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        self.assertEqual("".join(e.delta for e in events if e.type == "response.output_text.delta"), "a b c")
        item_id = events[2].item.id
        self.assertTrue(all(e.item_id == item_id for e in events if e.type == "response.output_text.delta"))
        self.assertEqual(events[7].text, "a b c")
        done = events[-1].response
        self.assertEqual((done.status, done.output_text, done.id), ("completed", "a b c", events[0].response.id))
        self.assertGreater(done.usage.output_tokens, 0)
        # The SDK's own accumulating helper.
        with oai().responses.stream(model="echo", input="x y z") as s:
            final = s.get_final_response()
        self.assertEqual(final.output_text, "x y z")

    def test_streamed_function_call(self):
        state["upstream"].script(sse_response(TOOL_STREAM, split="bytes:11"))
        events = list(oai().responses.create(model="upstream", input="Weather in Paris?", tools=[RESPONSES_TOOL], stream=True))
        types = [e.type for e in events]
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        added = [e for e in events if e.type == "response.output_item.added"]
        self.assertEqual(len(added), 1)
        self.assertEqual((added[0].item.type, added[0].item.call_id, added[0].item.name), ("function_call", "call_1", "get_weather"))
        deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
        self.assertGreaterEqual(len(deltas), 1)
        self.assertEqual(json.loads("".join(deltas)), {"city": "Paris"})
        self.assertEqual(types[-3:], ["response.function_call_arguments.done", "response.output_item.done", "response.completed"])
        call = events[-1].response.output[0]
        self.assertEqual((call.type, call.call_id, call.name, json.loads(call.arguments)), ("function_call", "call_1", "get_weather", {"city": "Paris"}))
        self.assertEqual(events[-1].response.usage.output_tokens, 7)
        sent = json.loads(state["upstream"].requests()[-1]["body"])
        self.assertEqual(sent["tools"][0]["function"]["name"], "get_weather")

    def test_function_call_output_turn(self):
        state["upstream"].script({"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "It is sunny."}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}})})
        r = oai().responses.create(model="upstream/gpt-4o-mini", instructions="You report weather.", tools=[RESPONSES_TOOL], input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"}])
        self.assertEqual(r.output_text, "It is sunny.")
        self.assertEqual(r.usage.input_tokens, 30)
        sent = json.loads(state["upstream"].requests()[-1]["body"])
        self.assertEqual(sent["model"], "gpt-4o-mini")
        self.assertEqual([m["role"] for m in sent["messages"]], ["system", "user", "assistant", "tool"])
        self.assertEqual(sent["messages"][0]["content"], "You report weather.")
        self.assertEqual(sent["messages"][2]["tool_calls"][0]["id"], "call_1")
        self.assertEqual(sent["messages"][3]["tool_call_id"], "call_1")
        self.assertEqual(sent["messages"][3]["content"], "sunny, 21 C")

    def test_errors(self):
        with self.assertRaises(openai.NotFoundError) as e:
            oai().responses.create(model="echo", input="x", previous_response_id="resp_123")
        self.assertIn("Previous response with id 'resp_123' not found", str(e.exception))
        self.assertEqual(e.exception.body["param"], "previous_response_id")
        with self.assertRaises(openai.BadRequestError) as e:
            oai().responses.create(model="echo", input="x", tools=[RESPONSES_TOOL, RESPONSES_TOOL])
        self.assertIn("a second tool named 'get_weather'", str(e.exception))
        with self.assertRaises(openai.NotFoundError):
            oai().responses.create(model="no-such-model", input="x")
        with self.assertRaises(openai.PermissionDeniedError):
            oai(KEY_B).responses.create(model="upstream", input="x")
        up = state["upstream"]
        up.script({"status": 429, "headers": {"retry-after": "5", "content-type": "application/json"},
                   "body": json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})})
        with self.assertRaises(openai.RateLimitError) as e:
            oai().responses.create(model="upstream", input="x", stream=True)
        self.assertEqual(e.exception.response.headers.get("retry-after"), "5")
        # After the stream began: an error event, then response.failed with the output so far.
        body = "data: " + json.dumps(chunk({"role": "assistant", "content": "partial "})) + "\n\n"
        up.script(sse_response(body + "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"more\"}}]}\n\n",
                               close_after=len(body) + 10))
        events = list(oai().responses.create(model="upstream", input="x", stream=True))
        self.assertEqual([e.type for e in events[-2:]], ["error", "response.failed"])
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        failed = events[-1].response
        self.assertEqual(failed.status, "failed")
        self.assertEqual(failed.error.code, "server_error")
        self.assertEqual(failed.output[0].content[0].text, "partial ")

    def test_namespaced_function_and_hosted_tools(self):
        # Codex sends functions grouped in a namespace tool and OpenAI's hosted web_search on every request.
        state["upstream"].script({"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}})})
        ns = {"type": "namespace", "name": "weather", "description": "Weather tools", "tools": [
            {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": False,
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}
        r = oai().responses.create(model="upstream", input="Weather in Rome?", tools=[ns, {"type": "web_search"}])
        call = r.output[0]
        self.assertEqual((call.type, call.call_id, call.name, call.namespace), ("function_call", "call_7", "get_weather", "weather"))
        sent = json.loads(state["upstream"].requests()[-1]["body"])
        self.assertEqual([t["function"]["name"] for t in sent["tools"]], ["get_weather"])
        with self.assertRaises(openai.BadRequestError) as e:
            oai().responses.create(model="echo", input="x", tools=[{"type": "custom", "name": "apply_patch"}])
        self.assertIn("'custom'", str(e.exception))

    def test_client_disconnect_cancels_upstream_on_every_stream(self):
        # The chat completions case is test_client_disconnect_cancels_upstream; the same for Responses and Messages.
        up = state["upstream"]
        first = "data: " + json.dumps(chunk({"role": "assistant", "content": "tick "})) + "\n\n"
        pieces = [{"data": first}] + [{"data": "data: " + json.dumps(chunk({"content": "tick "})) + "\n\n", "delay_ms": 300}] * 80

        def responses():
            stream = oai().responses.create(model="upstream", input="x", stream=True)
            for e in stream:
                if e.type == "response.output_text.delta":
                    break
            stream.close()

        def messages():
            stream = ant().messages.create(model="upstream", max_tokens=100, messages=[{"role": "user", "content": "x"}], stream=True)
            for e in stream:
                if e.type == "content_block_delta":
                    break
            stream.close()

        for name, run in (("responses", responses), ("messages", messages)):
            up.script({"status": 200, "headers": {"content-type": "text/event-stream"}, "chunks": pieces, "framing": "chunked"})
            run()
            conn = up.requests()[-1]["connection"]
            deadline = time.time() + 10
            while time.time() < deadline and conn not in up.closed():
                time.sleep(0.1)
            self.assertIn(conn, up.closed(), f"{name}: the upstream request was not cancelled when the client went away")

def upstream_answer(text):
    return {"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})}


def upstream_turns():
    """What the upstream was sent in its last request: (role, content) of each message."""
    sent = json.loads(state["upstream"].requests()[-1]["body"])
    return [(m["role"], m["content"]) for m in sent["messages"]]


class StoredResponses(unittest.TestCase):
    """`store` and `previous_response_id` (server.responses_database)."""

    def test_previous_response_id_continues_retrieve_delete(self):
        state["upstream"].script(upstream_answer("Paris."), upstream_answer("About 2.1 million."), upstream_answer("Rome."))
        r1 = oai().responses.create(model="upstream", instructions="Answer briefly.", input="Capital of France?")
        self.assertEqual((r1.output_text, r1.store, r1.previous_response_id), ("Paris.", True, None))
        self.assertEqual(upstream_turns(), [("system", "Answer briefly."), ("user", "Capital of France?")])
        r2 = oai().responses.create(model="upstream", input="Its population?", previous_response_id=r1.id)
        self.assertEqual((r2.output_text, r2.previous_response_id), ("About 2.1 million.", r1.id))
        # The first turn went upstream again; its instructions did not (as in OpenAI's API).
        self.assertEqual(upstream_turns(), [("user", "Capital of France?"), ("assistant", "Paris."), ("user", "Its population?")])
        # Continuing r1 again branches from it: r2's turn is not part of it.
        r3 = oai().responses.create(model="upstream", input=[{"role": "user", "content": "And of Italy?"}], previous_response_id=r1.id)
        self.assertEqual(r3.output_text, "Rome.")
        self.assertEqual(upstream_turns(), [("user", "Capital of France?"), ("assistant", "Paris."), ("user", "And of Italy?")])
        got = oai().responses.retrieve(r2.id)
        self.assertEqual((got.id, got.output_text, got.previous_response_id, got.usage.total_tokens), (r2.id, "About 2.1 million.", r1.id, 13))
        # Another key's responses do not exist for it.
        with self.assertRaises(openai.NotFoundError):
            oai(KEY_B).responses.retrieve(r2.id)
        with self.assertRaises(openai.NotFoundError):
            oai(KEY_B).responses.create(model="echo", input="x", previous_response_id=r1.id)
        with self.assertRaises(openai.NotFoundError):
            oai(KEY_B).responses.delete(r2.id)
        self.assertEqual(oai().responses.retrieve(r2.id).id, r2.id)
        # Deleted: gone for retrieve, delete and previous_response_id; the others stay.
        raw = httpx.delete(state["url"] + "/v1/responses/" + r2.id, headers={"Authorization": "Bearer " + KEY_A}, timeout=30)
        self.assertEqual((raw.status_code, raw.json()), (200, {"id": r2.id, "object": "response", "deleted": True}))
        with self.assertRaises(openai.NotFoundError) as e:
            oai().responses.retrieve(r2.id)
        self.assertEqual(e.exception.body["message"], f"Response with id '{r2.id}' not found.")
        self.assertEqual(e.exception.body["type"], "invalid_request_error")
        with self.assertRaises(openai.NotFoundError):
            oai().responses.delete(r2.id)
        with self.assertRaises(openai.NotFoundError):
            oai().responses.create(model="upstream", input="x", previous_response_id=r2.id)
        self.assertEqual(oai().responses.retrieve(r3.id).output_text, "Rome.")
        # One metrics series for every stored response's path, not one per id.
        metrics = httpx.get(state["url"] + "/metrics", headers={"Authorization": "Bearer " + KEY_A}, timeout=30).text
        self.assertIn('endpoint="/v1/responses/{id}"', metrics)
        self.assertNotIn(r3.id, metrics)
        oai().responses.delete(r1.id)
        oai().responses.delete(r3.id)
        with self.assertRaises(openai.NotFoundError):
            oai().responses.retrieve(r1.id)

    def test_streamed_responses_are_stored(self):
        def stream(text):
            return sse_response(sse(chunk({"role": "assistant", "content": text}), chunk({}, finish="stop"),
                                    chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})))
        state["upstream"].script(stream("Blue."), stream("Black."))
        events = list(oai().responses.create(model="upstream", input="Colour of the sky?", stream=True))
        first = events[-1].response
        self.assertEqual((events[-1].type, first.output_text, first.store), ("response.completed", "Blue.", True))
        # Continued at once: it was stored before response.completed was sent.
        with oai().responses.stream(model="upstream", input="And at night?", previous_response_id=first.id) as s:
            second = s.get_final_response()
        self.assertEqual((second.output_text, second.previous_response_id), ("Black.", first.id))
        self.assertEqual(upstream_turns(), [("user", "Colour of the sky?"), ("assistant", "Blue."), ("user", "And at night?")])
        got = oai().responses.retrieve(second.id)
        self.assertEqual((got.output_text, got.status, got.usage.output_tokens), ("Black.", "completed", 1))

    def test_store_false_keeps_nothing(self):
        r = oai().responses.create(model="echo", input="not kept", store=False)
        self.assertEqual((r.output_text, r.store), ("not kept", False))
        with self.assertRaises(openai.NotFoundError):
            oai().responses.retrieve(r.id)
        events = list(oai().responses.create(model="echo", input="nor this", store=False, stream=True))
        self.assertFalse(events[-1].response.store)
        with self.assertRaises(openai.NotFoundError):
            oai().responses.retrieve(events[-1].response.id)
        with self.assertRaises(openai.BadRequestError) as e:
            oai().responses.create(model="echo", input="x", store="yes")
        self.assertIn("'store' is true or false", str(e.exception))


class AnthropicSDK(unittest.TestCase):
    def test_message_through_echo(self):
        m = ant().messages.create(model="echo", max_tokens=100, messages=[{"role": "user", "content": "hello from claude sdk"}])
        self.assertEqual(m.type, "message")
        self.assertEqual(m.content[0].text, "hello from claude sdk")
        self.assertEqual(m.stop_reason, "end_turn")
        self.assertGreater(m.usage.output_tokens, 0)

    def test_stream_event_sequence(self):
        # The event names on the wire (the SDK drops pings, so read them raw).
        with httpx.stream("POST", state["url"] + "/v1/messages", headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
                          json={"model": "echo", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "a b c"}]}) as r:
            self.assertEqual(r.headers["content-type"], "text/event-stream")
            names = [line[len("event: "):] for line in r.iter_lines() if line.startswith("event: ")]
        self.assertEqual(names[:3], ["message_start", "content_block_start", "ping"])
        self.assertEqual(names[-3:], ["content_block_stop", "message_delta", "message_stop"])
        self.assertEqual(names[3:-3], ["content_block_delta"] * 3)
        events = list(ant().messages.create(
            model="echo", max_tokens=100, messages=[{"role": "user", "content": "a b c"}], stream=True))
        self.assertEqual("".join(e.delta.text for e in events if e.type == "content_block_delta"), "a b c")
        with ant().messages.stream(model="echo", max_tokens=100, messages=[{"role": "user", "content": "x y"}]) as s:
            self.assertEqual("".join(s.text_stream), "x y")
            self.assertEqual(s.get_final_message().stop_reason, "end_turn")

    def test_tool_use_with_input_json_delta(self):
        state["upstream"].script(sse_response(TOOL_STREAM, split="bytes:17"))
        tools = [{"name": "get_weather", "description": "Weather in a city",
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
        with ant().messages.stream(model="upstream", max_tokens=100, tools=tools,
                                   messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
            deltas = [e.delta.partial_json for e in s if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
            final = s.get_final_message()
        self.assertEqual(json.loads("".join(deltas)), {"city": "Paris"})
        self.assertEqual(final.stop_reason, "tool_use")
        block = final.content[-1]
        self.assertEqual((block.type, block.id, block.name, block.input), ("tool_use", "call_1", "get_weather", {"city": "Paris"}))
        sent = json.loads(state["upstream"].requests()[-1]["body"])
        self.assertEqual(sent["tools"][0]["function"]["name"], "get_weather")

    def test_tool_result_turn(self):
        state["upstream"].script({"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "It is sunny."}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}})})
        m = ant().messages.create(model="upstream", max_tokens=100, messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"}]}])
        self.assertEqual(m.content[0].text, "It is sunny.")
        sent = json.loads(state["upstream"].requests()[-1]["body"])
        roles = [x["role"] for x in sent["messages"]]
        self.assertEqual(roles, ["user", "assistant", "tool"])
        self.assertEqual(sent["messages"][2]["tool_call_id"], "call_1")

    def test_count_tokens(self):
        r = ant().messages.count_tokens(model="echo", messages=[{"role": "user", "content": "count these words please"}])
        self.assertGreater(r.input_tokens, 0)

    def test_errors(self):
        with self.assertRaises(anthropic.AuthenticationError):
            ant(key="wrong-key-for-this-gateway").messages.create(model="echo", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(anthropic.NotFoundError):
            ant().messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(anthropic.PermissionDeniedError):
            ant(KEY_B).messages.create(model="upstream", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        state["upstream"].script({"status": 429, "headers": {"retry-after": "3", "content-type": "application/json"},
                                  "body": json.dumps({"error": {"message": "slow down"}})})
        with self.assertRaises(anthropic.RateLimitError) as e:
            ant().messages.create(model="upstream", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.response.headers.get("retry-after"), "3")
        self.assertEqual(e.exception.body["error"]["type"], "rate_limit_error")


def anthropic_message(content, stop_reason="end_turn", usage=None):
    """A scripted upstream answer of Anthropic's Messages API (not streamed)."""
    return {"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": content,
        "stop_reason": stop_reason, "stop_sequence": None,
        "usage": usage or {"input_tokens": 10, "output_tokens": 5}})}


def anthropic_stream(*events):
    """A scripted upstream answer of Anthropic's Messages API, streamed: (name, data) pairs."""
    body = "".join(f"event: {name}\ndata: {json.dumps(dict(data, type=name))}\n\n" for name, data in events)
    return sse_response(body, split="bytes:23")


SIGNATURE = "EqQBCkgIARABGAIiQL6yPDx8Kxlp/8n4Rnrq+zv5nhbY1wbMdGEF8zEnM8sd"
THINKING = {"type": "enabled", "budget_tokens": 1024}
WEATHER_TOOL_ANT = {"name": "get_weather", "description": "Weather in a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


class AnthropicBackend(unittest.TestCase):
    """The Anthropic SDK through the gateway to the `claude` provider (the
    Anthropic plugin): what the client marks for prompt caching and the
    thinking signatures reach the upstream request as the client sent them."""

    def upstream_body(self):
        reqs = [r for r in state["upstream"].requests() if r["path"] == "/v1/messages"]
        self.assertTrue(reqs, "the upstream got no POST /v1/messages")
        return json.loads(reqs[-1]["body"])

    def test_cache_control_reaches_the_upstream_at_its_blocks(self):
        state["upstream"].script(anthropic_message(
            [{"type": "text", "text": "It says hello."}],
            usage={"input_tokens": 12, "cache_creation_input_tokens": 1800, "cache_read_input_tokens": 2400, "output_tokens": 5}),
            route="POST /v1/messages")
        hour = {"type": "ephemeral", "ttl": "1h"}
        m = ant().messages.create(
            model="claude", max_tokens=100,
            system=[{"type": "text", "text": "Long rules.", "cache_control": hour}, {"type": "text", "text": "Be brief."}],
            tools=[dict(WEATHER_TOOL_ANT, cache_control={"type": "ephemeral"}), {"name": "noop", "input_schema": {"type": "object"}}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "A long document.", "cache_control": {"type": "ephemeral"}},
                                             {"type": "text", "text": "What does it say?"}]},
                {"role": "assistant", "content": "Let me read it."},
                {"role": "user", "content": [{"type": "text", "text": "Go on.", "cache_control": hour}]},
            ])
        self.assertEqual(m.content[0].text, "It says hello.")
        # The client's cache reads and writes, counted apart from input_tokens as Anthropic does.
        self.assertEqual((m.usage.input_tokens, m.usage.cache_creation_input_tokens, m.usage.cache_read_input_tokens), (12, 1800, 2400))
        sent = self.upstream_body()
        self.assertEqual(sent["system"], [{"type": "text", "text": "Long rules.", "cache_control": hour}, {"type": "text", "text": "Be brief."}])
        self.assertEqual(sent["tools"][0]["cache_control"], {"type": "ephemeral"})
        self.assertNotIn("cache_control", sent["tools"][1])
        self.assertEqual(sent["messages"], [
            {"role": "user", "content": [{"type": "text", "text": "A long document.", "cache_control": {"type": "ephemeral"}},
                                         {"type": "text", "text": "What does it say?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me read it."}]},
            {"role": "user", "content": [{"type": "text", "text": "Go on.", "cache_control": hour}]},
        ])
        # Four breakpoints sent, four received: none dropped, none added.
        self.assertEqual(json.dumps(sent).count('"cache_control"'), 4)
        # A malformed one is the client's error, named.
        with self.assertRaises(anthropic.BadRequestError) as e:
            ant().messages.create(model="claude", max_tokens=10, messages=[
                {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": "ephemeral"}]}])
        self.assertIn("messages.0.content.0.cache_control", e.exception.body["error"]["message"])

    def test_structured_output_reaches_the_upstream_and_is_checked(self):
        fmt = {"type": "json_schema", "schema": PERSON}
        state["upstream"].script(anthropic_message([{"type": "text", "text": '{"name": "Ada", "age": 36}'}]), route="POST /v1/messages")
        m = ant().messages.create(model="claude", max_tokens=100, messages=[{"role": "user", "content": "Ada, 36"}],
                                  output_config={"effort": "low", "format": fmt})
        self.assertEqual(json.loads(m.content[0].text), {"name": "Ada", "age": 36})
        self.assertEqual(self.upstream_body()["output_config"], {"effort": "low", "format": fmt})
        state["upstream"].script(anthropic_message([{"type": "text", "text": '{"name": "Ada"}'}]), route="POST /v1/messages")
        with self.assertRaises(anthropic.InternalServerError) as e:
            ant().messages.create(model="claude", max_tokens=100, messages=[{"role": "user", "content": "Ada, 36"}],
                                  output_config={"format": fmt})
        self.assertEqual(e.exception.status_code, 502)
        self.assertIn("$.age: required property is missing", str(e.exception))
        # A format the gateway cannot read is the client's error, named.
        with self.assertRaises(anthropic.BadRequestError) as e:
            ant().messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                  output_config={"format": {"type": "json_schema"}})
        self.assertIn("output_config.format.schema", str(e.exception))

    def test_a_failed_tool_result_stays_marked(self):
        state["upstream"].script(anthropic_message([{"type": "text", "text": "Which city?"}]), route="POST /v1/messages")
        ant().messages.create(model="claude", max_tokens=100, tools=[WEATHER_TOOL_ANT], messages=[
            {"role": "user", "content": "Weather in Atlantis?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Atlantis"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city", "is_error": True}]}])
        self.assertEqual(self.upstream_body()["messages"][2]["content"], [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Error: no such city", "is_error": True}])

    def test_tool_result_breakpoint_and_usage_of_a_stream(self):
        state["upstream"].script(anthropic_stream(
            ("message_start", {"message": {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
                                           "stop_reason": None, "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0,
                                                                          "cache_read_input_tokens": 5000, "output_tokens": 1}}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Sunny."}}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}}),
            ("message_stop", {})), route="POST /v1/messages")
        with ant().messages.stream(model="claude", max_tokens=100, tools=[WEATHER_TOOL_ANT], messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
                                              "cache_control": {"type": "ephemeral"}}]}]) as s:
            self.assertEqual("".join(s.text_stream), "Sunny.")
            final = s.get_final_message()
        self.assertEqual((final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.cache_creation_input_tokens), (3, 5000, 0))
        sent = self.upstream_body()
        self.assertEqual(sent["messages"][2]["content"],
                         [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny", "cache_control": {"type": "ephemeral"}}])

    def test_thinking_and_tool_use_over_two_turns(self):
        """Turn 1 answers with thinking (and its signature) and a tool call;
        turn 2 sends that assistant content back with the tool's result: the
        upstream gets the thinking block with the same signature, as
        Anthropic requires when thinking and tool use mix."""
        up = state["upstream"]
        up.script(anthropic_message([
            {"type": "thinking", "thinking": "I should look it up.", "signature": SIGNATURE},
            {"type": "tool_use", "id": "toolu_w", "name": "get_weather", "input": {"city": "Paris"}}], stop_reason="tool_use"),
            anthropic_message([{"type": "text", "text": "21 C and sunny."}]), route="POST /v1/messages")
        question = {"role": "user", "content": "Weather in Paris?"}
        first = ant().messages.create(model="claude", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL_ANT], messages=[question])
        self.assertEqual(first.stop_reason, "tool_use")
        self.assertEqual([b.type for b in first.content], ["thinking", "tool_use"])
        self.assertEqual((first.content[0].thinking, first.content[0].signature), ("I should look it up.", SIGNATURE))
        self.assertEqual(self.upstream_body()["thinking"], THINKING)
        second = ant().messages.create(model="claude", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL_ANT], messages=[
            question, {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_w", "content": "21 C, sunny"}]}])
        self.assertEqual(second.content[-1].text, "21 C and sunny.")
        sent = self.upstream_body()
        self.assertEqual(sent["messages"][1]["content"], [
            {"type": "thinking", "thinking": "I should look it up.", "signature": SIGNATURE},
            {"type": "tool_use", "id": "toolu_w", "name": "get_weather", "input": {"city": "Paris"}}])
        self.assertEqual(sent["messages"][2]["content"], [{"type": "tool_result", "tool_use_id": "toolu_w", "content": "21 C, sunny"}])

    def test_streamed_thinking_ends_with_its_signature(self):
        """A streamed thinking block ends as Anthropic's does: thinking_delta,
        then signature_delta, then content_block_stop, before the tool_use
        block; the SDK's final message has the signature, and the next turn
        sends it back upstream."""
        up = state["upstream"]
        turn1 = anthropic_stream(
            ("message_start", {"message": {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
                                           "stop_reason": None, "usage": {"input_tokens": 20, "output_tokens": 1}}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "I should "}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "look it up."}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
            ("content_block_stop", {"index": 0}),
            ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_s", "name": "get_weather", "input": {}}}),
            ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
            ("content_block_stop", {"index": 1}),
            ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 30}}),
            ("message_stop", {}))
        up.script(turn1, turn1, anthropic_message([{"type": "text", "text": "21 C."}]), route="POST /v1/messages")
        question = {"role": "user", "content": "Weather in Paris?"}
        body = {"model": "claude", "max_tokens": 2048, "stream": True, "thinking": THINKING, "tools": [WEATHER_TOOL_ANT], "messages": [question]}
        with httpx.stream("POST", state["url"] + "/v1/messages", headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
                          json=body, timeout=30) as r:
            events = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]
        seq = []
        for e in events:
            step = (e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type"))
            if e["type"].startswith("content_block") and (not seq or seq[-1] != step):  # one thinking_delta or several
                seq.append(step)
        self.assertEqual(seq, [
            ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
            ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, None),
            ("content_block_start", 1, "tool_use"), ("content_block_delta", 1, "input_json_delta"), ("content_block_stop", 1, None)])
        self.assertEqual([e["delta"]["signature"] for e in events if e.get("delta", {}).get("type") == "signature_delta"], [SIGNATURE])
        with ant().messages.stream(model="claude", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL_ANT], messages=[question]) as s:
            final = s.get_final_message()
        self.assertEqual([b.type for b in final.content], ["thinking", "tool_use"])
        self.assertEqual((final.content[0].thinking, final.content[0].signature), ("I should look it up.", SIGNATURE))
        ant().messages.create(model="claude", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL_ANT], messages=[
            question, {"role": "assistant", "content": final.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_s", "content": "21 C"}]}])
        self.assertEqual(self.upstream_body()["messages"][1]["content"][0],
                         {"type": "thinking", "thinking": "I should look it up.", "signature": SIGNATURE})

    def test_interleaved_thinking_blocks_come_back_exactly(self):
        """Two signed thinking blocks and a redacted_thinking block between
        them, then a tool call: the SDK gets every block, in order, streamed
        (a signature_delta ending each thinking block, the redacted block's
        data in its content_block_start) and not; the next turn sends them
        back and the upstream receives them byte for byte as Anthropic sent
        them, each signature with its own block."""
        up = state["upstream"]
        sig1, sig2 = SIGNATURE, "ErcBCkgIBhABGAIiQHv1o+2/Ts9c5Y0bq3k1fXq8pT0mH1lQ9aJ6eZ2wC8sV7dR4gN0uK3yI9bL5tE6hM2jW1oP8cA4fG7xS2nD0vXQ"
        data = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9URj2pLmN3kF8/dW5hR7xJ0aP1oLs9=="
        blocks = [
            {"type": "thinking", "thinking": "First the city, \u00e9t\u00e9 included.", "signature": sig1},
            {"type": "redacted_thinking", "data": data},
            {"type": "thinking", "thinking": "Then the tool.", "signature": sig2},
            {"type": "tool_use", "id": "toolu_i", "name": "get_weather", "input": {"city": "Paris"}}]
        start = ("message_start", {"message": {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                                               "content": [], "stop_reason": None, "usage": {"input_tokens": 20, "output_tokens": 1}}})
        streamed = anthropic_stream(
            start,
            ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "First the city, "}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "\u00e9t\u00e9 included."}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": sig1}}),
            ("content_block_stop", {"index": 0}),
            ("content_block_start", {"index": 1, "content_block": {"type": "redacted_thinking", "data": data}}),
            ("content_block_stop", {"index": 1}),
            ("content_block_start", {"index": 2, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ("content_block_delta", {"index": 2, "delta": {"type": "thinking_delta", "thinking": "Then the tool."}}),
            ("content_block_delta", {"index": 2, "delta": {"type": "signature_delta", "signature": sig2}}),
            ("content_block_stop", {"index": 2}),
            ("content_block_start", {"index": 3, "content_block": {"type": "tool_use", "id": "toolu_i", "name": "get_weather", "input": {}}}),
            ("content_block_delta", {"index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
            ("content_block_stop", {"index": 3}),
            ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 30}}),
            ("message_stop", {}))
        up.script(anthropic_message(blocks, stop_reason="tool_use"), streamed, streamed,
                  anthropic_message([{"type": "text", "text": "21 C."}]), route="POST /v1/messages")
        question = {"role": "user", "content": "Weather in Paris?"}
        kw = dict(model="claude", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL_ANT])

        whole = ant().messages.create(messages=[question], **kw)
        self.assertEqual([b.model_dump(exclude_none=True) for b in whole.content], blocks)

        # The stream as Anthropic's: each thinking block ends with its own signature_delta.
        body = dict(kw, stream=True, messages=[question])
        with httpx.stream("POST", state["url"] + "/v1/messages", headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
                          json=body, timeout=30) as r:
            events = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]
        seq = []
        for e in events:
            step = (e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type"))
            if e["type"].startswith("content_block") and (not seq or seq[-1] != step):
                seq.append(step)
        self.assertEqual(seq, [
            ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
            ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, None),
            ("content_block_start", 1, "redacted_thinking"), ("content_block_stop", 1, None),
            ("content_block_start", 2, "thinking"), ("content_block_delta", 2, "thinking_delta"),
            ("content_block_delta", 2, "signature_delta"), ("content_block_stop", 2, None),
            ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"), ("content_block_stop", 3, None)])
        self.assertEqual([(e["index"], e["delta"]["signature"]) for e in events if e.get("delta", {}).get("type") == "signature_delta"],
                         [(0, sig1), (2, sig2)])

        with ant().messages.stream(messages=[question], **kw) as s:
            final = s.get_final_message()
        self.assertEqual([b.model_dump(exclude_none=True) for b in final.content], blocks)

        ant().messages.create(messages=[
            question, {"role": "assistant", "content": final.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_i", "content": "21 C"}]}], **kw)
        reqs = [r for r in up.requests() if r["path"] == "/v1/messages"]
        sent = json.loads(reqs[-1]["body"])
        self.assertEqual(sent["messages"][1]["content"], blocks)
        # Byte for byte: every signature and the redacted data appear in the upstream's body exactly as Anthropic sent them.
        raw = reqs[-1]["body"]
        for exact in (sig1, sig2, data):
            self.assertEqual(raw.count(json.dumps(exact)), 1, exact)
        # A block the gateway could not pass on unmodified is the client's error, named.
        for bad, said in (({"type": "thinking", "signature": sig1}, "messages.1.content.0.thinking"),
                          ({"type": "redacted_thinking"}, "messages.1.content.0.data")):
            with self.assertRaises(anthropic.BadRequestError) as e:
                ant().messages.create(messages=[question, {"role": "assistant", "content": [bad]}, {"role": "user", "content": "go on"}], **kw)
            self.assertIn(said, e.exception.body["error"]["message"])


class Keys(unittest.TestCase):
    def test_bearer_and_x_api_key_and_none(self):
        url = state["url"] + "/v1/models"
        self.assertEqual(httpx.get(url, headers={"Authorization": "Bearer " + KEY_A}).status_code, 200)
        self.assertEqual(httpx.get(url, headers={"x-api-key": KEY_A}).status_code, 200)
        r = httpx.get(url)
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json()["error"]["code"], "invalid_api_key")
        self.assertEqual(httpx.get(state["url"] + "/health").status_code, 200)

    def test_body_limit_and_unknown_path(self):
        r = httpx.post(state["url"] + "/v1/chat/completions", headers={"x-api-key": KEY_A}, content=b"x" * (33 << 20))
        self.assertEqual(r.status_code, 413)
        r = httpx.get(state["url"] + "/v1/nothing", headers={"x-api-key": KEY_A})
        self.assertEqual(r.status_code, 404)


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def scrape(key=KEY_A):
    """GET /metrics parsed: {(name, frozenset(labels)): value}, every line checked against the text format."""
    r = httpx.get(state["url"] + "/metrics", headers={"Authorization": "Bearer " + key})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers["content-type"]
    samples = {}
    types = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        samples[(m.group(1), labels)] = float(m.group(4))
    return r.text, samples, types


def value(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


class Operations(unittest.TestCase):
    def test_metrics(self):
        _, before, _ = scrape()
        oai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "count me in"}])
        list(oai().responses.create(model="echo", input="and me too", stream=True))
        with self.assertRaises(openai.NotFoundError):
            oai().chat.completions.create(model="no-such-model-for-metrics", messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(openai.AuthenticationError):
            oai(key="not-a-key-of-this-gateway-at-all").models.list()
        text, after, types = scrape()
        # Every family is typed; histograms have buckets, _sum and _count.
        for (name, _) in after:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            self.assertTrue(name in types or base in types, name)
        chat = dict(endpoint="/v1/chat/completions", provider="echo", model="echo", key="team-a")
        self.assertEqual(value(after, "descartes_gateway_requests_total", status="200", **chat)
                         - value(before, "descartes_gateway_requests_total", status="200", **chat), 1)
        resp = dict(endpoint="/v1/responses", provider="echo", model="echo", key="team-a")
        self.assertEqual(value(after, "descartes_gateway_requests_total", **resp) - value(before, "descartes_gateway_requests_total", **resp), 1)
        # An unknown model is not a label value (a client cannot make up series).
        self.assertNotIn("no-such-model-for-metrics", text)
        self.assertEqual(value(after, "descartes_gateway_errors_total", kind="not_found", key="team-a", model="")
                         - value(before, "descartes_gateway_errors_total", kind="not_found", key="team-a", model=""), 1)
        self.assertEqual(value(after, "descartes_gateway_errors_total", kind="unauthorized")
                         - value(before, "descartes_gateway_errors_total", kind="unauthorized"), 1)
        for t in ("input", "output"):
            self.assertGreater(value(after, "descartes_gateway_tokens_total", provider="echo", key="team-a", type=t)
                               - value(before, "descartes_gateway_tokens_total", provider="echo", key="team-a", type=t), 0)
        # The stream's time to first token; histogram buckets are cumulative and end at the count.
        ttft = dict(endpoint="/v1/responses", provider="echo", model="echo")
        self.assertEqual(value(after, "descartes_gateway_time_to_first_token_seconds_count", **ttft)
                         - value(before, "descartes_gateway_time_to_first_token_seconds_count", **ttft), 1)
        buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in after.items()
                          if n == "descartes_gateway_request_duration_seconds_bucket" and set(ttft.items()) <= set(ls)))
        self.assertEqual([v for _, v in buckets], sorted(v for _, v in buckets))
        self.assertEqual(buckets[-1], (float("inf"), value(after, "descartes_gateway_request_duration_seconds_count", **ttft)))
        self.assertGreaterEqual(value(after, "descartes_gateway_requests_in_flight"), 1)
        # Key names, never secrets; without a key, 401.
        for secret in (KEY_A, KEY_B, UPSTREAM_KEY):
            self.assertNotIn(secret, text)
        self.assertEqual(httpx.get(state["url"] + "/metrics").status_code, 401)

    def test_ready(self):
        up = state["upstream"]
        up.command({"cmd": "reset"})
        up.command({"cmd": "script", "routes": {"GET /v1/models": [{"status": 200, "headers": {"content-type": "application/json"},
                                                                    "body": json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini"}]})}]}})
        r = httpx.get(state["url"] + "/ready", headers={"x-api-key": KEY_A}, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["status"], "ready")
        self.assertEqual(r.json()["providers"]["upstream"]["status"], "ok")
        self.assertEqual(up.requests()[-1]["path"], "/v1/models")
        # The upstream refusing its health check: not ready (503), the error kind named.
        up.command({"cmd": "reset"})
        up.command({"cmd": "script", "routes": {"GET /v1/models": [{"status": 500, "headers": {"content-type": "application/json"},
                                                                    "body": json.dumps({"error": {"message": "down"}})}]}})
        r = httpx.get(state["url"] + "/ready", headers={"x-api-key": KEY_A}, timeout=30)
        self.assertEqual(r.status_code, 503, r.text)
        self.assertEqual(r.json()["status"], "unavailable")
        self.assertEqual(r.json()["providers"]["upstream"]["status"], "unavailable")
        self.assertNotIn(UPSTREAM_KEY, r.text)
        self.assertEqual(httpx.get(state["url"] + "/ready").status_code, 401)


def decode_base64_floats(text):
    raw = base64.b64decode(text)
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


class Embeddings(unittest.TestCase):
    """POST /v1/embeddings through the scripted plugin, whose vectors are
    [characters, words, vowels] of each text and whose usage is the words."""

    def test_a_string_and_a_list_through_the_sdk(self):
        sent = []
        client = oai(http_client=httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read()))]}))
        r = client.embeddings.create(model="scripted", input="hello world")
        # openai==3.63.0 asks for base64 when encoding_format is not given, and decodes it.
        self.assertEqual(sent[-1]["encoding_format"], "base64")
        self.assertEqual(r.object, "list")
        self.assertEqual(r.model, "scripted")
        self.assertEqual([(d.object, d.index, d.embedding) for d in r.data], [("embedding", 0, [11.0, 2.0, 3.0])])
        self.assertEqual((r.usage.prompt_tokens, r.usage.total_tokens), (2, 2))
        r = client.embeddings.create(model="scripted", input=["hello world", "a", "one two three"], encoding_format="float")
        self.assertEqual(sent[-1]["input"], ["hello world", "a", "one two three"])
        self.assertEqual([d.index for d in r.data], [0, 1, 2])
        self.assertEqual([d.embedding for d in r.data], [[11.0, 2.0, 3.0], [1.0, 1.0, 1.0], [13.0, 3.0, 5.0]])
        self.assertEqual((r.usage.prompt_tokens, r.usage.total_tokens), (6, 6))

    def test_base64_is_little_endian_float32(self):
        r = oai().embeddings.create(model="scripted", input=["a b", "hello world"], encoding_format="base64")
        self.assertEqual([decode_base64_floats(d.embedding) for d in r.data], [[3.0, 2.0, 1.0], [11.0, 2.0, 3.0]])
        raw = httpx.post(state["url"] + "/v1/embeddings", headers={"x-api-key": KEY_A},
                         json={"model": "scripted", "input": "hello world"}).json()
        # Without encoding_format: floats, as OpenAI answers.
        self.assertEqual(raw["data"], [{"object": "embedding", "index": 0, "embedding": [11.0, 2.0, 3.0]}])
        self.assertEqual(raw["usage"], {"prompt_tokens": 2, "total_tokens": 2})

    def test_model_and_dimensions_reach_the_backend(self):
        r = oai().embeddings.create(model="scripted/tiny", input="hello world", dimensions=2, encoding_format="float")
        self.assertEqual(r.model, "scripted/tiny")
        self.assertEqual(r.data[0].embedding, [11.0, 2.0])
        with open(os.path.join(state["tmp"].name, "audit.jsonl")) as f:
            lines = [json.loads(line) for line in f if '"embed"' in line]
        self.assertTrue(any(d["operation"] == "embed" and d["model"] == "tiny" and d["tokens"]["input"] == 2 for d in lines), lines)

    def test_errors(self):
        # A backend that cannot embed: 400 in OpenAI's shape, naming the model.
        with self.assertRaises(openai.BadRequestError) as e:
            oai().embeddings.create(model="echo", input="text")
        self.assertIn("'echo'", e.exception.body["message"])
        self.assertEqual(e.exception.body["type"], "invalid_request_error")
        self.assertEqual(e.exception.body["param"], "model")
        # Token arrays are refused clearly.
        for tokens in ([1, 2, 3], [[1, 2], [3]]):
            r = httpx.post(state["url"] + "/v1/embeddings", headers={"x-api-key": KEY_A}, json={"model": "scripted", "input": tokens})
            self.assertEqual(r.status_code, 400, r.text)
            self.assertIn("token", r.json()["error"]["message"])
            self.assertEqual(r.json()["error"]["param"], "input")
        for body, param in (({"model": "scripted"}, "input"), ({"input": "x"}, "model"), ({"model": "scripted", "input": []}, "input"),
                            ({"model": "scripted", "input": "x", "encoding_format": "int8"}, "encoding_format"),
                            ({"model": "scripted", "input": "x", "dimensions": 0}, "dimensions")):
            r = httpx.post(state["url"] + "/v1/embeddings", headers={"x-api-key": KEY_A}, json=body)
            self.assertEqual((r.status_code, r.json()["error"]["param"]), (400, param), r.text)
        # Keys and their model globs apply; unknown models are 404; the backend's errors map as for chat.
        with self.assertRaises(openai.PermissionDeniedError):
            oai(KEY_B).embeddings.create(model="scripted", input="x")
        with self.assertRaises(openai.NotFoundError):
            oai().embeddings.create(model="no-such-embedder", input="x")
        with self.assertRaises(openai.RateLimitError):
            oai().embeddings.create(model="scripted", input=["fine", "error:rate_limited:too many texts"])
        with self.assertRaises(openai.AuthenticationError):
            oai(key="not-a-key-of-this-gateway-at-all").embeddings.create(model="scripted", input="x")

    def test_metrics(self):
        _, before, _ = scrape()
        oai().embeddings.create(model="scripted", input=["one two three", "four"])
        _, after, _ = scrape()
        who = dict(endpoint="/v1/embeddings", provider="scripted", model="scripted", key="team-a", status="200")
        self.assertEqual(value(after, "descartes_gateway_requests_total", **who) - value(before, "descartes_gateway_requests_total", **who), 1)
        tokens = dict(provider="scripted", key="team-a", type="input")
        self.assertEqual(value(after, "descartes_gateway_tokens_total", **tokens) - value(before, "descartes_gateway_tokens_total", **tokens), 4)


def answer_costing(prompt_tokens, completion_tokens):
    """An upstream chat completion of gpt-4o-mini with this usage (its manifest prices it)."""
    return {"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "priced"}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}})}


class IssuedKeys(unittest.TestCase):
    """Keys from `descartes keys create`: their models, labels, limits, budget and revocation."""

    def test_models_and_labels(self):
        key = state["issued"]["issued-a"]
        self.assertRegex(key, r"^dsk-[0-9a-f]{64}$")
        r = oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "labelled issued request"}])
        self.assertEqual(r.choices[0].message.content, "labelled issued request")
        self.assertEqual(ant(key).messages.create(model="echo", max_tokens=20, messages=[{"role": "user", "content": "hi"}]).content[0].text, "hi")
        with self.assertRaises(openai.PermissionDeniedError) as e:
            oai(key).chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}])
        self.assertIn("'issued-a' may not use the model 'upstream'", str(e.exception))
        with self.assertRaises(anthropic.PermissionDeniedError):
            ant(key).messages.create(model="upstream", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        # The key's labels (over the client's own metadata of the same name) and its name reach the audit log.
        oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "with metadata"}],
                                         metadata={"team": "forged", "ticket": "T-1"})
        with open(os.path.join(state["tmp"].name, "audit.jsonl")) as f:
            mine = [json.loads(line) for line in f if '"issued-a"' in line]
        self.assertTrue(any(d.get("labels") == {"team": "a", "agent": "sdk-test"} for d in mine), mine)
        self.assertTrue(any(d.get("labels") == {"team": "a", "agent": "sdk-test", "ticket": "T-1"} for d in mine), mine)
        self.assertTrue(all(d["gateway_key"] == "issued-a" for d in mine), mine)
        # The list shows names, limits and spend; never a key.
        listed = keys_cli("list")
        self.assertIn("issued-a", listed.stdout)
        for k in state["issued"].values():
            self.assertNotIn(k, listed.stdout + listed.stderr)
            self.assertNotIn(k[4:], open(os.path.join(state["tmp"].name, "keys.sqlite3"), "rb").read().decode("latin-1"))

    def test_requests_per_minute(self):
        key = state["issued"]["issued-rpm"]
        for _ in range(2):
            oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(openai.RateLimitError) as e:
            oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        self.assertGreaterEqual(int(e.exception.response.headers["retry-after"]), 1)
        self.assertIn("'issued-rpm' is over its rate limit (2 requests/min)", str(e.exception))
        self.assertEqual(e.exception.body["type"], "rate_limit_error")
        with self.assertRaises(anthropic.RateLimitError) as e:
            ant(key).messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        self.assertGreaterEqual(int(e.exception.response.headers["retry-after"]), 1)
        # GET /v1/models is not a request to a model: not counted, not refused.
        self.assertEqual(httpx.get(state["url"] + "/v1/models", headers={"x-api-key": key}).status_code, 200)

    def test_tokens_per_minute(self):
        key = state["issued"]["issued-tpm"]
        words = " ".join(f"word{i}" for i in range(60))
        r = oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": words}])
        self.assertGreater(r.usage.total_tokens, 40)
        with self.assertRaises(openai.RateLimitError) as e:
            oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        self.assertIn("40 tokens/min", str(e.exception))
        self.assertGreaterEqual(int(e.exception.response.headers["retry-after"]), 1)

    def test_budget(self):
        key = state["issued"]["issued-budget"]
        # 2,000 input and 1,000 output tokens of gpt-4o-mini: $0.0003 + $0.0006 = $0.0009, under the $0.001 budget.
        state["upstream"].script(answer_costing(2000, 1000), answer_costing(2000, 1000))
        self.assertEqual(oai(key).chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}]).choices[0].message.content, "priced")
        self.assertEqual(oai(key).chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}]).choices[0].message.content, "priced")
        # $0.0018 spent: refused, in each protocol's own shape, and not retried by the SDKs.
        with self.assertRaises(openai.RateLimitError) as e:
            openai.OpenAI(base_url=state["url"] + "/v1", api_key=key, max_retries=2, timeout=30).chat.completions.create(
                model="upstream", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.code, "insufficient_quota")
        self.assertEqual(e.exception.body["type"], "insufficient_quota")
        self.assertIn("'issued-budget' has spent its budget of $0.001", str(e.exception))
        with self.assertRaises(anthropic.APIStatusError) as e:
            ant(key).messages.create(model="upstream", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.status_code, 402)
        self.assertEqual(e.exception.body["error"]["type"], "billing_error")
        self.assertEqual(len(state["upstream"].requests()), 2)  # the refused ones never went upstream
        # The spend is kept in the store, where `keys list` reads it.
        listed = json.loads(keys_cli("list", "--json").stdout)
        spent = {k["name"]: k["spent_usd"] for k in listed["keys"]}
        self.assertAlmostEqual(spent["issued-budget"], 0.0018, places=6)

    def test_a_configured_key_with_limits_and_labels(self):
        r = oai(KEY_D).chat.completions.create(model="echo", messages=[{"role": "user", "content": "team d"}])
        self.assertEqual(r.choices[0].message.content, "team d")
        with self.assertRaises(openai.RateLimitError) as e:
            oai(KEY_D).chat.completions.create(model="echo", messages=[{"role": "user", "content": "again"}])
        self.assertIn("'team-d' is over its rate limit (1 requests/min)", str(e.exception))
        with open(os.path.join(state["tmp"].name, "audit.jsonl")) as f:
            mine = [json.loads(line) for line in f if '"team-d"' in line]
        self.assertTrue(mine and all(d.get("labels") == {"team": "d"} for d in mine), mine)

    def test_revocation_applies_without_a_restart(self):
        key = keys_cli("create", "--name", "short-lived").stdout.strip()
        state.setdefault("more_issued", []).append(key)
        self.assertEqual(oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}]).choices[0].message.content, "x")
        keys_cli("revoke", "short-lived")
        with self.assertRaises(openai.AuthenticationError):
            oai(key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(anthropic.AuthenticationError):
            ant(key).messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        listed = json.loads(keys_cli("list", "--json").stdout)
        self.assertTrue(any(k["name"] == "short-lived" and k["revoked"] for k in listed["keys"]), listed)
        # A configured key's name cannot be issued; revoking an unknown name fails.
        p = keys_cli("create", "--name", "team-a", check=False)
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn("configures a gateway key named 'team-a'", p.stderr)
        p = keys_cli("revoke", "short-lived", check=False)
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn("no active gateway key named 'short-lived'", p.stderr)


def log_text():
    with open(state["log"].name) as f:
        return f.read()


def sighup_and_wait(what):
    """Sends SIGHUP and waits for the gateway's line about it (`what`), counting from the lines already there."""
    before = log_text().count(what)
    state["gateway"].send_signal(signal.SIGHUP)
    deadline = time.time() + 30
    while time.time() < deadline:
        if log_text().count(what) > before:
            return
        time.sleep(0.05)
    raise AssertionError(f"no '{what}' in the gateway's log after SIGHUP:\n{log_text()[-2000:]}")


class ReloadAndCORS(unittest.TestCase):
    def test_sighup_reloads_and_keeps_a_bad_file_out(self):
        config = state["config"]
        try:
            # A keep-alive connection opened before the reloads is still served after them.
            client = httpx.Client(base_url=state["url"], headers={"x-api-key": KEY_A})
            self.assertEqual(client.get("/v1/models").status_code, 200)
            # A bad file: reported (file:line), the running configuration kept.
            with open(config, "w") as f:
                f.write(state["config_text"].replace("retry: {max_attempts: 1}", "retry: {max_attempts: [oops}"))
            sighup_and_wait("still serving the previous one")
            # Each problem at its file:line:column.
            self.assertRegex(log_text().split("still serving the previous one")[-1][:2000], re.escape(config) + r":\d+:\d+")
            self.assertEqual(oai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "still here"}]).choices[0].message.content,
                             "still here")
            # A good one: a new key and a new provider instance, without a restart,
            # while a stream begun before it is still running: that stream ends whole.
            up = state["upstream"]
            piece = lambda d: "data: " + json.dumps(d) + "\n\n"
            pieces = [{"data": piece(chunk({"role": "assistant", "content": "tick "}))}]
            pieces += [{"data": piece(chunk({"content": "tock "})), "delay_ms": 300}] * 8
            pieces += [{"data": piece(chunk({}, finish="stop")) + "data: [DONE]\n\n"}]
            up.script({"status": 200, "headers": {"content-type": "text/event-stream"}, "chunks": pieces, "framing": "chunked"})
            got, times, failed = [], [], []
            started = threading.Event()

            def read_stream():
                try:
                    for c in oai().chat.completions.create(model="upstream", messages=[{"role": "user", "content": "x"}], stream=True):
                        if c.choices and c.choices[0].delta.content:
                            got.append(c.choices[0].delta.content)
                            times.append(time.monotonic())
                            started.set()
                except Exception as e:  # reported below
                    failed.append(e)
                    started.set()

            reader = threading.Thread(target=read_stream)
            reader.start()
            self.assertTrue(started.wait(30), "the stream did not begin")
            with open(config, "w") as f:
                f.write(state["config_text"].replace("  keys:\n", "  keys:\n    team-c: ${GW_KEY_C}\n").replace(
                    "retry:", "  echo-again:\n    plugin: echo\nretry:"))
            sighup_and_wait("reloaded the configuration")
            reloaded = time.monotonic()
            reader.join(30)
            self.assertFalse(reader.is_alive(), "the stream begun before the reload did not end")
            self.assertEqual(failed, [])
            self.assertEqual("".join(got), "tick " + "tock " * 8)
            self.assertGreater(times[-1], reloaded, "the stream ended before the reload: it did not test one in flight")
            r = oai(KEY_C).chat.completions.create(model="echo-again", messages=[{"role": "user", "content": "new key, new instance"}])
            self.assertEqual(r.choices[0].message.content, "new key, new instance")
            self.assertEqual(client.get("/v1/models").status_code, 200)
            # Back to the original: team-c is gone.
            with open(config, "w") as f:
                f.write(state["config_text"])
            sighup_and_wait("reloaded the configuration")
            with self.assertRaises(openai.AuthenticationError):
                oai(KEY_C).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
            self.assertEqual(client.get("/v1/models").status_code, 200)
            client.close()
        finally:
            with open(config, "w") as f:
                f.write(state["config_text"])

    def test_cors_for_the_configured_origins_only(self):
        url = state["url"] + "/v1/chat/completions"
        pre = httpx.options(url, headers={"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(pre.status_code, 204, pre.text)
        self.assertEqual(pre.headers["access-control-allow-origin"], "http://app.test")
        self.assertEqual(pre.headers["access-control-allow-headers"], "authorization, content-type")
        self.assertIn("POST", pre.headers["access-control-allow-methods"])
        # The answers to that origin carry it (errors too); other origins and no origin get no CORS header.
        ok = httpx.post(url, headers={"Origin": "http://app.test", "Authorization": "Bearer " + KEY_A},
                        json={"model": "echo", "messages": [{"role": "user", "content": "cors"}]})
        self.assertEqual((ok.status_code, ok.headers.get("access-control-allow-origin")), (200, "http://app.test"))
        denied = httpx.post(url, headers={"Origin": "http://app.test"}, json={})
        self.assertEqual((denied.status_code, denied.headers.get("access-control-allow-origin")), (401, "http://app.test"))
        other = httpx.options(url, headers={"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST"})
        self.assertEqual(other.status_code, 405)
        self.assertNotIn("access-control-allow-origin", other.headers)
        plain = httpx.post(url, headers={"Authorization": "Bearer " + KEY_A}, json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
        self.assertNotIn("access-control-allow-origin", plain.headers)
        # Reloaded with "*": any origin, answered with "*".
        config = state["config"]
        try:
            with open(config, "w") as f:
                f.write(state["config_text"].replace('cors_origins: ["http://app.test"]', 'cors_origins: ["*"]'))
            sighup_and_wait("reloaded the configuration")
            anyone = httpx.options(url, headers={"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST"})
            self.assertEqual((anyone.status_code, anyone.headers.get("access-control-allow-origin")), (204, "*"))
        finally:
            with open(config, "w") as f:
                f.write(state["config_text"])
            sighup_and_wait("reloaded the configuration")
        self.assertEqual(httpx.options(url, headers={"Origin": "http://elsewhere.test"}).status_code, 405)


class TLS(unittest.TestCase):
    """A second gateway with server.tls, a self-signed certificate made by openssl here, no CORS."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="descartes-gateway-tls-")
        d = cls.tmp.name
        cls.cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        cls.key = key
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", key, "-out", cls.cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        config = os.path.join(d, "providers.yaml")
        with open(config, "w") as f:
            f.write(f"server:\n  listen: 127.0.0.1:0\n  keys_database: {d}/keys.sqlite3\n  tls: {{cert: cert.pem, key: key.pem}}\n"
                    "  responses_database: state/responses.sqlite3\n")
        cls.log = open(os.path.join(d, "access.log"), "w+")
        cls.proc = subprocess.Popen([os.environ.get("DESCARTES", "descartes"), "serve", "--config", config],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=cls.log, env=state["env"], cwd=d)
        try:
            line = read_line(cls.proc)
        except RuntimeError:
            cls.proc.kill()
            cls.log.seek(0)
            raise RuntimeError("descartes serve (TLS) did not start: " + cls.log.read())
        assert line.startswith("listening on https://127.0.0.1:"), line
        cls.url = line.split()[-1]

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        status = cls.proc.wait(timeout=20)
        cls.tmp.cleanup()
        assert status == 0, f"the TLS gateway exited {status}"

    def test_https_with_the_certificate_and_not_plain_http(self):
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=30,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=self.cert)))
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "over tls"}])
        self.assertEqual(r.choices[0].message.content, "over tls")
        with self.assertRaises(httpx.HTTPError):
            httpx.get(self.url + "/health")  # the certificate is not trusted without verify=
        with self.assertRaises(httpx.HTTPError):
            httpx.get(self.url.replace("https://", "http://") + "/health", timeout=5)
        # CORS is off without cors_origins: a preflight is an ordinary 405.
        pre = httpx.options(self.url + "/v1/chat/completions", headers={"Origin": "http://app.test"},
                            verify=ssl.create_default_context(cafile=self.cert))
        self.assertEqual(pre.status_code, 405)
        self.assertNotIn("access-control-allow-origin", pre.headers)
        # The private key never reaches the log.
        with open(self.key) as f:
            secret_lines = [l for l in f.read().splitlines() if l and not l.startswith("-----")]
        deadline = time.time() + 10
        while True:  # the access-log line is written just after the answer
            self.log.seek(0)
            log = self.log.read()
            if '"status":200' in log or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertIn('"status":200', log)
        for l in secret_lines:
            self.assertNotIn(l, log)

    def test_store_false_opens_no_database(self):
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=30,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=self.cert)))
        database = os.path.join(self.tmp.name, "state", "responses.sqlite3")
        r = client.responses.create(model="echo", input="not kept", store=False)
        list(client.responses.create(model="echo", input="nor this", store=False, stream=True))
        self.assertEqual((r.output_text, r.store), ("not kept", False))
        self.assertFalse(os.path.exists(os.path.dirname(database)), "a store: false request made the response store")
        # Without keys a stored response is every caller's; the relative path is the config file's directory's.
        stored = client.responses.create(model="echo", input="kept")
        self.assertTrue(stored.store)
        self.assertTrue(os.path.exists(database))
        self.assertEqual(client.responses.retrieve(stored.id).output_text, "kept")


if __name__ == "__main__":
    unittest.main()
