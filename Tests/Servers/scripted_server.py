#!/usr/bin/env python3
"""A scripted HTTP/1.1 server for the test suite (Python standard library only).

It serves exactly the bytes a test scripts, with the faults a test asks for,
so each provider's wire format (including its ugly parts) can be replayed
byte for byte: SSE lines split across reads, CRLF, comments, pings, errors
mid-stream, connection resets, hangs, trickles, redirects.

Usage:
    python3 scripted_server.py [--host 127.0.0.1] [--port 0] [--tls-cert CERT.pem --tls-key KEY.pem]

It prints "PORT <n>" on stdout once listening. Control is line-delimited
JSON on stdin, one reply line on stdout per command:

    {"cmd": "script", "routes": {"POST /v1/chat/completions": [RESPONSE, ...]}, "default": RESPONSE?}
        -> "OK". Responses of a route are served in order; the last repeats.
           A route key is "METHOD /path" or "* /path" (path without query).
           A route whose responses have "match" is a choice instead: each
           request gets the first response whose "match" text its body
           contains (or that has no "match"); none is used up.
    {"cmd": "requests"}  -> a JSON array of the requests received so far:
           {"method", "path", "query", "headers": [[k, v]...], "body", "connection", "time"}
    {"cmd": "closed"}    -> a JSON array of the ids of connections that have ended
                            (the client closed or reset them, or the server did)
    {"cmd": "reset"}     -> "OK" (forget scripts and requests)
    {"cmd": "quit"}      -> exits

RESPONSE (every member optional):
    status (200), reason, headers: [[name, value], ...] or {name: value}
    body: str | body_b64: str | body_file: path
    chunks: [{"data": str | "b64": str, "delay_ms": int}]   explicit pieces, in order
    split: "lines" | "bytes:N"     cut the body into pieces (each piece one send)
    chunk_delay_ms: int            pause between pieces
    framing: "length" (default) | "chunked" | "close"   how the body is delimited
    delay_ms: int                  pause before the status line
    action: "hang"                 read the request, never answer (until the client goes)
            "close"                close without answering
            "reset"                RST without answering
    reset_after: N                 send headers and N body bytes, then RST
    close_after: N                 send headers and N body bytes, then close cleanly
    hang_after: N                  send headers and N body bytes, then stall forever
    trickle_ms: int                send the body one byte at a time, this far apart
    keep_alive: bool (true)        allow another request on the connection
    match: str                     answer only requests whose body contains this (see "script")
    sigv4: {"secret_key", "session_token"?}   verify the request's AWS Signature
                                   Version 4 with botocore's own signer (imported only
                                   then) before answering; a request signed wrongly gets
                                   AWS's 403 InvalidSignatureException instead. The
                                   request's log entry gets "sigv4": "ok" or why not.
    azure: {"api_key" | "bearer", "api_version"?}   answer as Azure OpenAI does a
                                   request without the scripted credential (401 with
                                   Azure's body for the api-key header or the Entra ID
                                   bearer token) or, when api_version is given, without
                                   ?api-version=THAT (404 "Resource not found"). The
                                   request's log entry gets "azure": "ok" or why not.
"""
import argparse
import asyncio
import base64
import json
import socket
import struct
import sys
import time


class State:
    def __init__(self):
        self.routes = {}
        self.default = None
        self.requests = []
        self.connections = 0
        self.closed = []

    def next_response(self, method, path, body=b""):
        for key in (f"{method} {path}", f"* {path}"):
            queue = self.routes.get(key)
            if queue and any("match" in r for r in queue):
                text = body.decode("utf-8", "replace")
                chosen = next((r for r in queue if r.get("match", "") in text), None)
                if chosen is not None:
                    return chosen
            elif queue:
                return queue.pop(0) if len(queue) > 1 else queue[0]
        if self.default is not None:
            return self.default
        return {"status": 404, "headers": [["content-type", "application/json"]],
                "body": json.dumps({"error": {"message": f"no script for {method} {path}", "type": "not_found"}})}


STATE = State()


def body_bytes(r):
    if "body_b64" in r:
        return base64.b64decode(r["body_b64"])
    if "body_file" in r:
        with open(r["body_file"], "rb") as f:
            return f.read()
    b = r.get("body", "")
    return b.encode("utf-8") if isinstance(b, str) else bytes(b)


def pieces(r, body):
    if "chunks" in r:
        out = []
        for c in r["chunks"]:
            data = base64.b64decode(c["b64"]) if "b64" in c else c.get("data", "").encode("utf-8")
            out.append((data, c.get("delay_ms", r.get("chunk_delay_ms", 0))))
        return out
    split = r.get("split")
    delay = r.get("chunk_delay_ms", 0)
    if split == "lines":
        parts = body.splitlines(keepends=True)
        return [(p, delay) for p in parts] or [(b"", 0)]
    if isinstance(split, str) and split.startswith("bytes:"):
        n = max(1, int(split.split(":", 1)[1]))
        return [(body[i:i + n], delay) for i in range(0, len(body), n)] or [(b"", 0)]
    return [(body, 0)]


def header_list(r):
    h = r.get("headers", [])
    if isinstance(h, dict):
        return list(h.items())
    return [tuple(x) for x in h]


def reset(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def read_request(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        headers.append([k.strip(), v.strip()])
    lower = {k.lower(): v for k, v in headers}
    if lower.get("expect", "").lower() == "100-continue":
        return method, target, headers, lower, True
    return method, target, headers, lower, False


async def read_body(reader, writer, lower, expect):
    if expect:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if lower.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    n = int(lower.get("content-length", "0") or 0)
    return await reader.readexactly(n) if n else b""


async def serve(reader, writer):
    STATE.connections += 1
    conn_id = STATE.connections
    try:
        while True:
            try:
                method, target, headers, lower, expect = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
                return  # the client closed, or the server is exiting
            body = await read_body(reader, writer, lower, expect)
            path, _, query = target.partition("?")
            STATE.requests.append({"method": method, "path": path, "query": query, "headers": headers,
                                   "body": body.decode("utf-8", "replace"), "connection": conn_id,
                                   "time": time.monotonic()})
            r = STATE.next_response(method, path, body)
            if r.get("sigv4") is not None:
                problem = sigv4_problem(method, target, headers, body, r["sigv4"])
                STATE.requests[-1]["sigv4"] = problem or "ok"
                if problem:
                    r = {"status": 403, "headers": [["content-type", "application/json"],
                                                    ["x-amzn-ErrorType", "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"]],
                         "body": json.dumps({"message": "The request signature we calculated does not match the signature you provided. " + problem})}
            if r.get("azure") is not None:
                problem, r2 = azure_problem(query, headers, r["azure"])
                STATE.requests[-1]["azure"] = problem or "ok"
                if problem:
                    r = r2
            try:
                keep = await respond(reader, writer, r, method)
            except ConnectionError:
                return  # the client went away (a test that cancels or aborts)
            if not keep:
                return
    finally:
        STATE.closed.append(conn_id)
        try:
            writer.close()
        except Exception:
            pass


def azure_problem(query, headers, expect):
    """(None, None) when the request carries Azure OpenAI's scripted credential
    and API version, else (why not, Azure's answer)."""
    from urllib.parse import parse_qs
    lower = {}
    for k, v in headers:
        lower.setdefault(k.lower(), v)
    version = expect.get("api_version")
    got = parse_qs(query).get("api-version")
    if version is not None and got != [version]:
        return ("api-version is %r, not %r" % (got, version),
                {"status": 404, "headers": [["content-type", "application/json"]],
                 "body": '{"error":{"code":"404","message": "Resource not found"}}'})
    if "api_key" in expect and lower.get("api-key") != expect["api_key"]:
        return ("no or a wrong api-key header",
                {"status": 401, "headers": [["content-type", "application/json"]],
                 "body": json.dumps({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}})})
    if "bearer" in expect and lower.get("authorization") != "Bearer " + expect["bearer"]:
        return ("no or a wrong bearer token",
                {"status": 401, "headers": [["content-type", "application/json"], ["www-authenticate", "Bearer"]],
                 "body": json.dumps({"error": {"code": "401", "message": "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}})})
    return (None, None)


def sigv4_problem(method, target, headers, body, expect):
    """None when the request carries a valid SigV4 signature for the scripted
    secret key (and session token), else what is wrong. The signature is
    recomputed by botocore's SigV4Auth from the request as received, over the
    headers the request says it signed, at the time it says it signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    lower = {}
    for k, v in headers:
        lower.setdefault(k.lower(), v)
    auth = lower.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no AWS4-HMAC-SHA256 Authorization header"
    fields = {}
    for part in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = part.strip().partition("=")
        fields[k] = v
    try:
        access_key, date, region, service, terminal = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError):
        return "a malformed Authorization header"
    stamp = lower.get("x-amz-date")
    if not stamp or not stamp.startswith(date) or terminal != "aws4_request":
        return "X-Amz-Date and the credential scope disagree"
    if "host" not in signed or "x-amz-date" not in signed:
        return "host and x-amz-date must be signed"
    token = expect.get("session_token")
    if token is not None and (lower.get("x-amz-security-token") != token or "x-amz-security-token" not in signed):
        return "the session token is missing or not signed"
    if "access_key" in expect and access_key != expect["access_key"]:
        return "unknown access key"
    for k in ("region", "service"):
        if k in expect and expect[k] != {"region": region, "service": service}[k]:
            return "the credential scope names %s %r" % (k, {"region": region, "service": service}[k])
    request = AWSRequest(method=method, url="http://" + lower.get("host", "") + target,
                         headers={k: v for k, v in headers if k.lower() in signed}, data=body)
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, expect["secret_key"], token), service, region)
    wanted = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if wanted != signature:
        return "(botocore computed %s for canonical request %r)" % (wanted, signer.canonical_request(request))
    return None


async def stall(reader):
    # Wait until the client goes away.
    try:
        while await reader.read(65536):
            pass
    except Exception:
        pass


async def respond(reader, writer, r, method):
    if r.get("delay_ms"):
        await asyncio.sleep(r["delay_ms"] / 1000)
    action = r.get("action")
    if action == "hang":
        await stall(reader)
        return False
    if action == "close":
        return False
    if action == "reset":
        reset(writer)
        return False

    body = body_bytes(r)
    status = r.get("status", 200)
    reason = r.get("reason", {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                              404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
                              502: "Bad Gateway", 503: "Service Unavailable", 529: "Overloaded",
                              302: "Found", 301: "Moved Permanently"}.get(status, "Status"))
    framing = r.get("framing", "length")
    keep = r.get("keep_alive", True) and framing != "close"
    head = [f"HTTP/1.1 {status} {reason}"]
    names = set()
    for k, v in header_list(r):
        head.append(f"{k}: {v}")
        names.add(k.lower())
    if framing == "length" and "content-length" not in names:
        head.append(f"Content-Length: {len(body)}")
    if framing == "chunked":
        head.append("Transfer-Encoding: chunked")
    if not keep:
        head.append("Connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    if method == "HEAD":
        return keep

    limit = None
    after = None
    for key in ("reset_after", "close_after", "hang_after"):
        if key in r:
            limit, after = r[key], key
    sent = 0
    trickle = r.get("trickle_ms")
    for data, delay in pieces(r, body):
        if delay:
            await asyncio.sleep(delay / 1000)
        if limit is not None and sent + len(data) > limit:
            data = data[: max(0, limit - sent)]
        if data:
            if trickle:
                for i in range(len(data)):
                    await send(writer, data[i:i + 1], framing)
                    await asyncio.sleep(trickle / 1000)
            else:
                await send(writer, data, framing)
            sent += len(data)
        if limit is not None and sent >= limit:
            break
    if after == "reset_after":
        reset(writer)
        return False
    if after == "close_after":
        return False
    if after == "hang_after":
        await stall(reader)
        return False
    if framing == "chunked":
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return keep


async def send(writer, data, framing):
    if framing == "chunked":
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    else:
        writer.write(data)
    await writer.drain()


async def control(out):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            cmd = json.loads(line)
        except ValueError as e:
            out(f"ERROR {e}")
            continue
        c = cmd.get("cmd")
        if c == "script":
            for key, responses in cmd.get("routes", {}).items():
                STATE.routes[key] = list(responses) if isinstance(responses, list) else [responses]
            if "default" in cmd:
                STATE.default = cmd["default"]
            out("OK")
        elif c == "requests":
            out(json.dumps(STATE.requests))
        elif c == "closed":
            out(json.dumps(STATE.closed))
        elif c == "reset":
            STATE.routes, STATE.default, STATE.requests = {}, None, []
            out("OK")
        elif c == "quit":
            out("OK")
            return
        else:
            out(f"ERROR unknown command {c!r}")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate")
    p.add_argument("--tls-key", help="the certificate's PEM private key")
    args = p.parse_args()
    ctx = None
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)

    def out(s):
        sys.stdout.write(s + "\n")
        sys.stdout.flush()

    server = await asyncio.start_server(serve, args.host, args.port, limit=1 << 24, backlog=2048, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    out(f"PORT {port}")
    async with server:
        await control(out)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
