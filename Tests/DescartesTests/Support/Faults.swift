import Descartes
import Glibc
import Testing
import DescartesSupport

// Drivers of the fault matrix (FaultMatrixTests.swift): how each fault is
// produced for each kind of provider.

/// An HTTP provider's wire format, enough to script its faults.
struct HTTPDialect: Sendable {
    let provider: String
    /// The variable the CLI reads the key from.
    let keyVariable: String
    /// Not key-shaped: only the host's registration of secret config values
    /// can mask it.
    let key: String
    let route: String
    let start: String
    let end: String
    let textEvent: @Sendable (String) -> String
    /// A text event whose JSON is cut short (quoting `secret`).
    let brokenEvent: @Sendable (String) -> String
    let errorEvent: @Sendable (String) -> String
    let errorBody: @Sendable (Int, String) -> String
    /// Appended to the slot's URL to make the endpoint.
    var endpointSuffix = "/v1"
    var contentType = "text/event-stream"
    /// Routes every case scripts besides the faulted one (metadata the
    /// plugin reads first), and config every case sets.
    var routes: [String: [ScriptedServer.Response]] = [:]
    var config: [String: String] = [:]

    static let openai: HTTPDialect = {
        @Sendable func chunk(_ delta: String, finish: String? = nil) -> String {
            #"data: {"id":"chatcmpl-f","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":\#(delta),"finish_reason":\#(finish.map { "\"\($0)\"" } ?? "null")}]}"# + "\n\n"
        }
        return HTTPDialect(
            provider: "openai", keyVariable: "OPENAI_API_KEY", key: "fm-openai-secret-4Q7x9ZpL2c0v", route: "POST /v1/chat/completions",
            start: chunk(#"{"role":"assistant","content":""}"#),
            end: chunk("{}", finish: "stop") + "data: [DONE]\n\n",
            textEvent: { chunk(#"{"content":"\#($0)"}"#) },
            brokenEvent: { #"data: {"id":"chatcmpl-f","choices":[{"index":0,"delta":{"content":"\#($0)"# + "\n\n" },
            errorEvent: { #"data: {"error":{"message":"The server had an error (key \#($0))","type":"server_error"}}"# + "\n\n" },
            errorBody: { _, key in #"{"error":{"message":"Incorrect API key provided: \#(key).","type":"fault_error","code":"fault"}}"# })
    }()

    static let anthropic: HTTPDialect = {
        @Sendable func event(_ name: String, _ data: String) -> String { "event: \(name)\ndata: \(data)\n\n" }
        let start =
            event("message_start", #"{"type":"message_start","message":{"id":"msg_f","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}"#)
            + event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
        let end =
            event("content_block_stop", #"{"type":"content_block_stop","index":0}"#)
            + event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":5}}"#)
            + event("message_stop", #"{"type":"message_stop"}"#)
        return HTTPDialect(
            provider: "anthropic", keyVariable: "ANTHROPIC_API_KEY", key: "fm-anthropic-secret-8R3y0AqM5d1w", route: "POST /v1/messages",
            start: start, end: end,
            textEvent: { event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\#($0)"}}"#) },
            brokenEvent: { event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\#($0)"#) },
            errorEvent: { event("error", #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded (key \#($0))"}}"#) },
            errorBody: { _, key in #"{"type":"error","error":{"type":"fault_error","message":"invalid x-api-key \#(key)"}}"# })
    }()
}

extension HTTPDialect {
    static let ollama: HTTPDialect = {
        @Sendable func line(_ content: String, done: String = "") -> String {
            #"{"model":"gemma3:1b","created_at":"2026-01-28T18:30:00.000Z","message":{"role":"assistant","content":"\#(content)"},\#(done)"done":\#(done.isEmpty ? "false" : "true")}"# + "\n"
        }
        let tags = #"{"models":[{"name":"gemma3:1b","model":"gemma3:1b","modified_at":"2026-01-28T18:30:00.000000000Z","size":815319791,"digest":"8648f39d","details":{"format":"gguf","family":"gemma3"}}]}"#
        let show = #"{"modelfile":"FROM gemma3\n","parameters":"","template":"{{ .Prompt }}","details":{"format":"gguf","family":"gemma3"},"model_info":{"general.architecture":"gemma3","gemma3.context_length":32768},"capabilities":["completion","tools"]}"#
        return HTTPDialect(
            provider: "ollama", keyVariable: "OLLAMA_API_KEY", key: "fm-ollama-secret-2M5z8XcQ7b", route: "POST /api/chat",
            start: line(""), end: line("", done: #""done_reason":"stop","prompt_eval_count":3,"eval_count":2,"#),
            textEvent: { line($0) },
            brokenEvent: { #"{"model":"gemma3:1b","message":{"role":"assistant","content":"\#($0)"# + "\n" },
            errorEvent: { #"{"error":"an error mid-stream (key \#($0))"}"# + "\n" },
            errorBody: { _, key in #"{"error":"unauthorized: key \#(key)"}"# },
            endpointSuffix: "", contentType: "application/x-ndjson",
            routes: ["GET /api/version": [.json(#"{"version":"0.12.6"}"#)], "GET /api/tags": [.json(tags)], "POST /api/show": [.json(show)]],
            config: ["model": "gemma3:1b"])
    }()
}

enum HTTPFault: Sendable {
    case status(Int)
    case redirect, refused, resetBeforeHeaders, closeBeforeHeaders, resetMidStream, closeMidEvent, noTerminal
    case malformedJSON, invalidUTF8, endlessLine, oversized, errorEvent, html
    case hang, trickleIdle, tricklePastTotal

    var isOversized: Bool {
        if case .oversized = self { return true }
        return false
    }

    var isTimeout: Bool {
        switch self {
        case .hang, .trickleIdle, .tricklePastTotal: return true
        default: return false
        }
    }
}

enum HTTPFaults {
    static let plugins = PluginDir().addManifest("openai").addManifest("anthropic").addBuilt(provider: "ollama")

    static func run(_ d: HTTPDialect, _ f: HTTPFault, complete: Bool, case c: FaultCase) async throws -> FaultObservation {
        let slot = try await ServerSlot.make()
        var endpoint = slot.url + d.endpointSuffix
        var sets: [String] = d.config.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var deadlines = FaultMatrix.httpDeadlines
        var other: ServerSlot?
        let files = TempDir("descartes-faults")
        let words = (0..<20).map { d.textEvent("word \($0) ") }.joined()
        let sse = d.contentType
        func chunked(file: String) -> ScriptedServer.Response {
            ScriptedServer.Response([
                "status": 200, "body_file": .string(file), "framing": "chunked", "split": "bytes:65536",
                "headers": [["content-type", .string(sse)]],
            ])
        }
        let response: ScriptedServer.Response?
        switch f {
        case .status(let s):
            response = .error(s, d.errorBody(s, d.key), headers: s == 429 ? [("retry-after", "1")] : [])
        case .redirect:
            let o = try await ServerSlot.make()
            try await o.script([d.route: [.stream(d.start + d.textEvent("elsewhere") + d.end, contentType: sse)]])
            other = o
            try await o.script(d.routes)
            let path = String(d.route.split(separator: " ")[1])
            response = ScriptedServer.Response([
                "status": 302, "body": "",
                "headers": [["location", .string("http://localhost:\(o.server.port)\(o.prefix)\(path)")]],
            ])
        case .refused:
            let port: Int
            do { port = try await ScriptedServer.start().port }  // started, then stopped: nothing listens
            endpoint = "http://127.0.0.1:\(port)" + d.endpointSuffix
            response = nil
        case .resetBeforeHeaders: response = .reset
        case .closeBeforeHeaders: response = .close
        case .resetMidStream:
            response = .stream(d.start + words + d.end, contentType: sse).with(["reset_after": .integer((d.start + words).utf8.count / 2)])
        case .closeMidEvent:
            let cut = (d.start + d.textEvent("a")).utf8.count + 10
            response = .stream(d.start + d.textEvent("a") + words + d.end, contentType: sse).with(["close_after": .integer(cut)])
        case .noTerminal: response = .stream(d.start + words, contentType: sse)
        case .malformedJSON: response = .stream(d.start + d.textEvent("fine ") + d.brokenEvent(d.key) + d.end, contentType: sse)
        case .invalidUTF8:
            var bytes = Array((d.start + d.textEvent("bad \u{1}\u{2} bytes") + d.end).utf8)
            let i = bytes.firstIndex(of: 1)!
            bytes[i] = 0xFF
            bytes[i + 1] = 0xFE
            response = .pieces([bytes], contentType: sse)
        case .endlessLine:
            let file = files.file("endless")
            writeFile(file, Array((d.start + "data: ").utf8) + [UInt8](repeating: UInt8(ascii: "x"), count: 20 << 20))
            response = chunked(file: file)
        case .oversized:
            let event = d.textEvent(String(repeating: "y", count: 1000))
            let file = files.file("oversized")
            if d.provider == "ollama" {
                // No size key: a whole (non-streamed) answer is read up to 64 MiB.
                writeFile(file, Array(("{\"model\":\"gemma3:1b\",\"message\":{\"role\":\"assistant\",\"content\":\"" + String(repeating: "y", count: 65 << 20) + "\"},\"done\":true}").utf8))
                response = ScriptedServer.Response(["status": 200, "body_file": .string(file), "headers": [["content-type", "application/json"]]])
            } else {
                writeFile(file, Array((d.start + String(repeating: event, count: 2100) + d.end).utf8))
                response = chunked(file: file)
                sets.append("max_response_mb=1")
            }
        case .errorEvent: response = .stream(d.start + d.textEvent("partial ") + d.errorEvent(d.key) + d.end, contentType: sse)
        case .html:
            response = .stream("<html><body>Gateway error for key \(d.key)</body></html>", contentType: "text/html")
        case .hang:
            response = .hang
            deadlines.firstToken = .milliseconds(500)
        case .trickleIdle:
            let first = d.start + d.textEvent("first ")
            let rest = Array(d.textEvent("never completed").utf8)
            var chunks: [JSONValue] = [["data": .string(first)]]
            for b in rest.prefix(30) { chunks.append(["b64": .string(Base64.encode([b])), "delay_ms": 1000]) }
            response = ScriptedServer.Response(["status": 200, "framing": "chunked", "headers": [["content-type", .string(sse)]], "chunks": .array(chunks)])
            deadlines.idle = .milliseconds(500)
        case .tricklePastTotal:
            response = .stream(String(repeating: "x", count: 200)).with(["trickle_ms": 100])
            deadlines.total = .seconds(1)
        }
        var routes = d.routes
        if let response { routes[d.route] = [response] }
        try await slot.script(routes)

        var config: [String: JSONValue] = ["endpoint": .string(endpoint), "api_key": .string(d.key)]
        let complete = complete || (f.isOversized && d.provider == "ollama")
        for s in sets {
            let kv = s.split(separator: "=", maxSplits: 1)
            config[String(kv[0])] = Int(kv[1]).map { .integer($0) } ?? .string(String(kv[1]))
        }
        var obs = FaultObservation()
        let b = try plugins.factory().create(d.provider, config: config)
        var request = ModelRequest(prompt: "x")
        request.deadlines = deadlines
        let start = ContinuousClock.now
        let o = complete ? await Observed.complete(b, request) : await Observed.stream(b, request)
        obs.elapsed = ContinuousClock.now - start
        await b.shutdown()
        obs.events = o.events
        obs.response = o.response
        obs.error = o.error
        if !f.isTimeout && !complete {
            let total = Int(FaultMatrix.httpDeadlines.total!.components.seconds)
            var args = ["complete", "-p", d.provider, "--stream", "--timeout", "\(total)", "--set", "endpoint=\(endpoint)"]
            for s in sets { args += ["--set", s] }
            obs.cli = await Proc.descartes(args + ["x"], env: [d.keyVariable: d.key, "DESCARTES_PLUGIN_PATH": plugins.path])
        }
        if let other { obs.elsewhere = try await other.requests() }
        _ = files
        return obs
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        precondition(fd >= 0)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            precondition(n > 0)
            off += n
        }
        close(fd)
    }
}

/// A headless plugin with the misbehaving child in place of its program.
enum HeadlessFlavor: Sendable {
    /// headless-cli speaking json-lines.
    case jsonLines
    /// claude-code-cli with the child standing in for `claude`.
    case claudeStandIn

    var provider: String { self == .jsonLines ? "headless-cli" : "claude-code-cli" }

    /// headless-cli declares no secret config, so its child gets a
    /// key-shaped value (masked by shape); claude-code-cli's `api_key` is a
    /// declared secret, so its value is not key-shaped.
    var secret: String { self == .jsonLines ? "sk-fault-headless-7Q2x9ZpL4c" : "fm-claude-secret-3K8w1BnV6e" }

    /// Lines that are not JSON, then exit 0: headless-cli calls that an
    /// invalid response; Claude Code's stream ends without its result.
    var garbageOutcome: FaultOutcome { self == .jsonLines ? .error(.invalidResponse) : .error(.streamClosed) }
}

enum RealClaudeFault: Sendable { case status401, status529, hang }

enum HeadlessFaults {
    static let plugins = PluginDir().addRepositoryPlugin("headless-cli", library: "headless-cli")
        .addRepositoryPlugin("claude-code-cli", library: "claude-code")
    static let child = FileSystem.join(TestEnv.root, "Tests/Fixtures/faults/child.sh")

    static func run(_ flavor: HeadlessFlavor, _ fault: String, case c: FaultCase) async throws -> FaultObservation {
        let mark = ProcScan.newMark()
        let work = TempDir("descartes-faults")
        let command = fault == "missing" ? work.file("no-such-program") : child
        var env: JSONObject = ["FAULT": .string(fault), "DESCARTES_TEST_MARK": .string(mark)]
        var config: [String: JSONValue] = [
            "command": .string(command), "kill_grace_ms": 300, "max_output_mb": 8, "cwd": .string(work.path),
        ]
        var cliEnv: [String: String] = ["DESCARTES_PLUGIN_PATH": plugins.path]
        switch flavor {
        case .jsonLines:
            env["FAULT_PROTOCOL"] = "jsonl"
            env["FAULT_SECRET"] = .string(flavor.secret)
            config["protocol"] = "json-lines"
        case .claudeStandIn:
            env["FAULT_PROTOCOL"] = "claude"
            config["api_key"] = .string(flavor.secret)
            cliEnv["ANTHROPIC_API_KEY"] = flavor.secret
        }
        config["env"] = .object(env)
        var request = ModelRequest(prompt: "x")
        request.deadlines.total = FaultMatrix.headlessTotal
        if fault == "hang" { request.deadlines.total = .milliseconds(1500) }
        if fault == "trickle" { request.deadlines.idle = .milliseconds(500) }

        var obs = FaultObservation()
        let start = ContinuousClock.now
        let created = Result { try plugins.factory().create(flavor.provider, config: config) }
        switch created {
        case .success(let b):
            let o = await Observed.stream(b, request)
            obs.elapsed = ContinuousClock.now - start
            await b.shutdown()
            obs.events = o.events
            obs.response = o.response
            obs.error = o.error
        case .failure(let e):
            obs.elapsed = ContinuousClock.now - start
            obs.error = (e as? ProviderError) ?? ProviderError(.backend, "\(e)")
        }
        _ = await ProcScan.eventually(.seconds(3)) { ProcScan.marked(mark).isEmpty }
        obs.leftoverProcesses = ProcScan.marked(mark)
        if fault != "hang" && fault != "trickle" {
            var args = ["complete", "-p", flavor.provider, "--stream", "--timeout", "\(FaultMatrix.headlessTotal.components.seconds)"]
            for (k, v) in config where k != "env" && k != "api_key" {
                args += ["--set", "\(k)=\(v.stringValue ?? v.jsonText)"]
            }
            let pairs = env.map { "\($0.key)=\($0.value.stringValue ?? "")" }.sorted().joined(separator: ",")
            args += ["--set", "env=\(pairs)", "x"]
            obs.cli = await Proc.descartes(args, env: cliEnv)
            _ = await ProcScan.eventually(.seconds(3)) { ProcScan.marked(mark).isEmpty }
            obs.leftoverProcesses = ProcScan.marked(mark)
        }
        _ = work
        return obs
    }

    static func runRealClaude(_ f: RealClaudeFault, case c: FaultCase) async throws -> FaultObservation {
        let h = try await ClaudeHarness()
        var request = ModelRequest(prompt: "x")
        switch f {
        case .status401:
            try await h.serve([ClaudeHarness.error(401, type: "authentication_error", "invalid x-api-key \(ClaudeHarness.apiKey)")])
            request.deadlines.total = .seconds(60)
        case .status529:
            try await h.serve([ClaudeHarness.error(529, type: "overloaded_error", "Overloaded")])
            request.deadlines.total = .seconds(60)
        case .hang:
            try await h.serve([.hang])
            request.deadlines.total = .seconds(6)
        }
        let b = try h.backend()
        let start = ContinuousClock.now
        let o = await Observed.stream(b, request)
        let elapsed = ContinuousClock.now - start
        await b.shutdown()
        var obs = FaultObservation(events: o.events, response: o.response, error: o.error)
        obs.elapsed = elapsed
        _ = await ProcScan.eventually(.seconds(5)) { ProcScan.marked(h.mark).isEmpty }
        obs.leftoverProcesses = ProcScan.marked(h.mark)
        return obs
    }
}
