// The generic headless adapter (provider `headless-cli`): any program, run
// as a child process through the plugin kit's process runtime, speaking one
// of two documented protocols (docs/headless-cli-protocol.md):
//
//   json-lines  the request as one JSON document on stdin; stdout carries one
//               JSON event per line (text, reasoning, tool calls, usage,
//               notice, then done or error)
//   text        the prompt on stdin or in a templated argument ({prompt});
//               stdout is the answer, streamed as it arrives
import DescartesPluginKit

enum WireProtocol: String {
    case jsonLines = "json-lines"
    case text
}

final class HeadlessCLIBackend: DescartesBackend {
    let context: BackendContext
    let agent: HeadlessAgent
    let wire: WireProtocol
    let defaultModel: String?
    let stripANSI: Bool
    let healthArgs: [String]?
    /// `repeatable`: false (the default) when the program may act (an
    /// agent): a failure after it started carries a side effect, so the
    /// host never runs it again behind the caller's back.
    let repeatable: Bool
    /// `args` with `--` before the argument that starts with `{prompt}`
    /// (`end_options`, default true), so a prompt like `--help` is the
    /// prompt, not an option of the program.
    let arguments: [String]

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        agent = try HeadlessAgent(context, defaultCommand: nil)
        let p = context.string("protocol") ?? "json-lines"
        guard let w = WireProtocol(rawValue: p) else {
            throw ProviderError(.config, "key 'protocol': '\(p)' is not a protocol (json-lines, text)")
        }
        wire = w
        defaultModel = context.string("model").flatMap { $0.isEmpty ? nil : $0 }
        stripANSI = context.bool("strip_ansi") ?? true
        healthArgs = context.list("health_args")
        repeatable = context.bool("repeatable") ?? false
        arguments = try Self.separated(agent.config.args, endOptions: context.bool("end_options") ?? true)
    }

    /// `args` with `--` inserted before the first argument that starts with
    /// `{prompt}` (unless a `--` comes before it already). Options after it
    /// would become operands: refused, as `config`, naming them.
    static func separated(_ args: [String], endOptions: Bool) throws(ProviderError) -> [String] {
        guard endOptions, let i = args.firstIndex(where: { $0.hasPrefix("{prompt}") }), !args[..<i].contains("--") else { return args }
        let later = args[(i + 1)...].filter { $0.hasPrefix("-") }
        if !later.isEmpty {
            throw ProviderError(
                .config,
                "key 'args': \(later.map { "'\($0)'" }.joined(separator: ", ")) after {prompt} would be read as \(later.count == 1 ? "an operand" : "operands") once '--' is inserted before the prompt (so a prompt such as --help is not taken as an option); move \(later.count == 1 ? "it" : "them") before {prompt}, or set end_options: false"
            )
        }
        var out = args
        out.insert("--", at: i)
        return out
    }

    /// The side effect every failure of a started, non-repeatable program has.
    func ranProgram(_ name: String) -> [String] {
        repeatable ? [] : ["started \(name), which may have acted (set repeatable: true if running it twice is harmless)"]
    }

    func initialize(_ call: PluginCall) {
        agent.initialize(call) { "\($0.path) (protocol \(wire.rawValue))" }
    }

    /// Resolves the program; with `health_args`, also runs it with them and
    /// requires exit status 0 (the cheapest real proof for a CLI, such as
    /// `--version`).
    func healthCheck(_ call: PluginCall) {
        guard let healthArgs else {
            do {
                let exe = try agent.program().path
                call.finish(result: ["message": .string("\(exe) is executable"), "details": ["path": .string(exe)]])
            } catch {
                call.fail(error)
            }
            return
        }
        agent.probe(call, arguments: healthArgs) { program, exit, text in
            if exit.succeeded {
                call.finish(result: [
                    "message": .string(text.isEmpty ? "\(program.path) ran" : String(text.split(separator: "\n").first ?? "")),
                    "details": ["path": .string(program.path), "output": .string(Wire.excerpt(text, limit: 500))],
                ])
            } else {
                call.fail(exit.error(program.name))
            }
        }
    }

    func stream(_ request: ModelRequest, _ call: PluginCall) {
        do {
            let program = try agent.program()
            let prompt = TextPrompt(request)
            let model = request.model ?? defaultModel ?? ""
            var usedPrompt = false
            var usedSystem = false
            let args = arguments.map { a -> String in
                if a.contains("{prompt}") { usedPrompt = true }
                if a.contains("{system}") { usedSystem = true }
                return a.replacingAll("{prompt}", with: prompt.conversation)
                    .replacingAll("{system}", with: prompt.system)
                    .replacingAll("{model}", with: model)
            }
            let deadline = agent.config.deadline(request)
            switch wire {
            case .jsonLines:
                var input = Wire.encode(request)
                input.append(0x0A)
                let grace = agent.config.exitGrace
                try agent.start(call, agent.spec(program, arguments: args, input: input, deadline: deadline)) { link in
                    ChildHandlers(JSONLinesSession(call: call, link: link, program: program.name, exitGrace: grace, ran: ranProgram(program.name)))
                }
            case .text:
                var text = ""
                if !usedPrompt {
                    text = usedSystem || prompt.system.isEmpty ? prompt.conversation : prompt.system + "\n\n" + prompt.conversation
                    if !text.hasSuffix("\n") { text += "\n" }
                }
                let session = TextSession(
                    call: call, program: program.name, stripANSI: stripANSI, inputTokens: Heuristics.tokens(request).tokens, model: model,
                    ran: ranProgram(program.name))
                try agent.start(call, agent.spec(program, arguments: args, input: Array(text.utf8), deadline: deadline, framing: .chunks)) { _ in
                    ChildHandlers(session)
                }
            }
        } catch {
            call.fail(error)
        }
    }

    func shutdown(_ call: PluginCall) { agent.shutdown(call) }
}

/// The request as text for a program that takes one prompt.
struct TextPrompt {
    /// The system prompt and system messages, joined.
    var system: String
    /// One user message alone: its text. A conversation: "User: ..." and
    /// "Assistant: ..." paragraphs (a text CLI has no other way to take one).
    var conversation: String

    init(_ r: ModelRequest) {
        var sys: [String] = []
        if let s = r.systemPrompt, !s.isEmpty { sys.append(s) }
        let turns = r.messages.filter { m in
            if m.role == .system {
                sys.append(m.content)
                return false
            }
            return true
        }
        system = sys.joined(separator: "\n\n")
        if turns.count == 1, turns[0].role == .user {
            conversation = turns[0].content
        } else {
            conversation = turns.map { m in
                switch m.role {
                case .user: return "User: \(m.content)"
                case .assistant: return "Assistant: \(m.content)"
                case .tool: return "Tool result (\(m.toolCallID ?? "")): \(m.content)"
                case .system: return m.content
                }
            }.joined(separator: "\n\n")
        }
    }
}

/// One json-lines call: parses the child's stdout on the runner's thread.
final class JSONLinesSession: ChildReader, @unchecked Sendable {
    let call: PluginCall
    let link: ChildLink
    let exitGrace: Duration
    // Runner thread only.
    var out: HeadlessOutput
    var nextToolIndex = 0
    var startedTools: Set<Int> = []
    /// The side effects of any failure of the started program (see `repeatable`).
    let ran: [String]

    init(call: PluginCall, link: ChildLink, program: String, exitGrace: Duration, ran: [String]) {
        self.call = call
        self.link = link
        self.exitGrace = exitGrace
        self.ran = ran
        out = HeadlessOutput(call: call, program: program, finalEvent: "done")
    }

    func fail(_ e: ProviderError) { call.fail(out.marked(e, extra: ran)) }

    func stdout(_ bytes: UnsafeRawBufferPointer) {
        guard !out.ended, let o = out.object(bytes) else { return }
        handle(o)
    }

    func handle(_ o: JSONObject) {
        let type = o["type"]?.stringValue ?? ""
        switch type {
        case "start":
            call.start(id: o["id"]?.stringValue, model: o["model"]?.stringValue)
        case "text":
            if let t = o["text"]?.stringValue, !t.isEmpty {
                call.text(t)
                out.did("written text")
            }
        case "reasoning":
            if let t = o["text"]?.stringValue, !t.isEmpty { call.reasoning(t) }
        case "tool_call":
            let index = o["index"]?.intValue ?? nextToolIndex
            nextToolIndex = max(nextToolIndex, index + 1)
            startedTools.insert(index)
            call.toolCall(
                index: index,
                ToolCall(id: o["id"]?.stringValue ?? "", name: o["name"]?.stringValue ?? "", arguments: arguments(o["arguments"])))
        case "tool_call_start":
            let index = o["index"]?.intValue ?? nextToolIndex
            nextToolIndex = max(nextToolIndex, index + 1)
            startedTools.insert(index)
            call.toolCallStart(index: index, id: o["id"]?.stringValue ?? "", name: o["name"]?.stringValue ?? "")
        case "tool_call_delta", "tool_call_end":
            guard let index = o["index"]?.intValue, startedTools.contains(index) else {
                protocolError("\(type) for tool call \(o["index"]?.jsonText ?? "(no index)") before its tool_call_start")
                return
            }
            if type == "tool_call_end" {
                call.toolCallEnd(index: index)
            } else if let a = o["arguments"]?.stringValue, !a.isEmpty {
                call.toolCallDelta(index: index, a)
            }
        case "usage":
            do { call.usage(try Wire.decodeUsage(.object(o))) } catch {
                protocolError("usage event: \(error)")
            }
        case "notice":
            call.notice(o["level"]?.stringValue ?? "info", o["message"]?.stringValue ?? "")
        case "done":
            var doc = o
            if doc["finish_reason"] == nil { doc["finish_reason"] = "stop" }
            do {
                let finish = try Wire.decodeFinish(.object(doc))
                if out.end() { call.finish(finish) }
                link.done(exitWithin: exitGrace)
            } catch {
                protocolError("done event: \(error)")
            }
        case "error":
            guard out.end() else { return }
            let kind = o["kind"]?.stringValue ?? "backend"
            var e = ProviderError(
                ProviderError.Kind(rawValue: kind.isEmpty ? "backend" : kind), o["message"]?.stringValue ?? "(no message)",
                status: o["status"]?.intValue, providerType: o["provider_type"]?.stringValue)
            if let ms = o["retry_after_ms"]?.intValue { e.retryAfter = .milliseconds(ms) }
            // The program may say what it had done ("side_effects": [...]; an
            // empty list: nothing, the request may be repeated).
            if let said = o["side_effects"]?.arrayValue {
                e.sideEffects = said.compactMap(\.stringValue)
                call.fail(out.marked(e))
            } else {
                fail(e)
            }
            link.done(exitWithin: exitGrace)
        default:
            break  // a type from a later revision of the protocol
        }
    }

    func arguments(_ v: JSONValue?) -> String {
        switch v {
        case nil, .null?: return "{}"
        case .string(let s)?: return s
        case let other?: return other.jsonText
        }
    }

    func protocolError(_ message: String) {
        guard out.end() else { return }
        fail(ProviderError(.invalidResponse, "\(out.program): \(message)"))
        link.terminate()
    }

    func stderr(_ bytes: UnsafeRawBufferPointer) { out.stderr(bytes) }

    func exited(_ exit: ChildExit) {
        // After done or error the answer stands, whatever the exit status.
        guard out.end() else { return }
        if exit.succeeded && out.nonJSONLines > 0 {
            let n = out.nonJSONLines
            fail(
                ProviderError(
                    .invalidResponse,
                    "\(out.program) exited without a done event and wrote \(n) stdout line\(n == 1 ? "" : "s") that \(n == 1 ? "is" : "are") not JSON (first: \(out.diagnostics.first ?? "")); it does not speak the json-lines protocol"
                ))
            return
        }
        fail(out.unfinished(exit))
    }
}

/// One text-protocol call: stdout is the answer, streamed as it arrives.
final class TextSession: ChildReader, @unchecked Sendable {
    let call: PluginCall
    let inputTokens: Int
    let model: String
    // Runner thread only.
    var out: HeadlessOutput
    var stripper: ANSIStripper?
    var outputBytes = 0
    var scratch: [UInt8] = []
    let ran: [String]

    init(call: PluginCall, program: String, stripANSI: Bool, inputTokens: Int, model: String, ran: [String]) {
        self.ran = ran
        self.call = call
        self.inputTokens = inputTokens
        self.model = model
        out = HeadlessOutput(call: call, program: program, finalEvent: "end of output")
        stripper = stripANSI ? ANSIStripper() : nil
    }

    func stdout(_ bytes: UnsafeRawBufferPointer) {
        if stripper != nil {
            scratch.removeAll(keepingCapacity: true)
            stripper!.strip(bytes, into: &scratch)
            outputBytes += scratch.count
            if !scratch.isEmpty { scratch.withUnsafeBytes { call.text(bytes: $0) } }
        } else {
            outputBytes += bytes.count
            call.text(bytes: bytes)
        }
    }

    func stderr(_ bytes: UnsafeRawBufferPointer) { out.stderr(bytes) }

    func exited(_ exit: ChildExit) {
        if exit.succeeded {
            call.finish(
                Wire.Finish(
                    finishReason: .stop,
                    usage: Usage(inputTokens: inputTokens, outputTokens: (outputBytes + 3) / 4, estimated: true),
                    model: model.isEmpty ? nil : model))
        } else {
            call.fail(out.marked(exit.error(out.program), extra: ran + (outputBytes > 0 ? ["written text"] : [])))
        }
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty, contains(target) else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(
        abi: abi, host: host, name: "headless-cli", version: "1.0.0",
        factories: [
            BackendFactory(id: "headless-cli", description: "Any command run headless (json-lines or text protocol)") {
                try HeadlessCLIBackend($0)
            }
        ])
}
