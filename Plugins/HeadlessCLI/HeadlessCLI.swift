// The generic headless adapter (provider `headless-cli`): any program, run
// as a child process through the plugin kit's process runtime, speaking one
// of two documented protocols (docs/headless-cli-protocol.md):
//
//   json-lines  the request as one JSON document on stdin; stdout carries one
//               JSON event per line (text, reasoning, tool calls, usage,
//               notice, then done or error)
//   text        the prompt on stdin or in a templated argument ({prompt});
//               stdout is the answer, streamed as it arrives, unless the
//               instance's dialect (Dialect.swift) says where the answer,
//               the errors and the usage are
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
    /// stdin, exit statuses, error and usage patterns, answer extraction,
    /// variables from config keys.
    let dialect: Dialect

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        let p = context.string("protocol") ?? "json-lines"
        guard let w = WireProtocol(rawValue: p) else {
            throw ProviderError(.config, "key 'protocol': '\(p)' is not a protocol (json-lines, text)")
        }
        wire = w
        dialect = try Dialect(context)
        if w == .jsonLines, let key = dialect.textOnly {
            throw ProviderError(.config, "key '\(key)': applies to protocol text only (a json-lines program reports errors, answer and usage as events)")
        }
        agent = try HeadlessAgent(context, defaultCommand: nil, environment: dialect.environment)
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
            var input: [UInt8] = []
            let stdin: Dialect.Stdin = dialect.stdin ?? (wire == .jsonLines ? .request : usedPrompt ? .closed : .prompt)
            switch stdin {
            case .closed: break
            case .request:
                input = Wire.encode(request)
                input.append(0x0A)
            case .prompt:
                var text = usedSystem || prompt.system.isEmpty ? prompt.conversation : prompt.system + "\n\n" + prompt.conversation
                if !text.hasSuffix("\n") { text += "\n" }
                input = Array(text.utf8)
            }
            switch wire {
            case .jsonLines:
                let grace = agent.config.exitGrace
                try agent.start(call, agent.spec(program, arguments: args, input: input, deadline: deadline)) { link in
                    ChildHandlers(JSONLinesSession(call: call, link: link, program: program.name, exitGrace: grace, ran: ranProgram(program.name)))
                }
            case .text:
                let session = TextSession(
                    call: call, program: program.name, stripANSI: stripANSI, inputTokens: Heuristics.tokens(request).tokens, model: model,
                    ran: ranProgram(program.name), dialect: dialect)
                try agent.start(call, agent.spec(program, arguments: args, input: input, deadline: deadline, framing: .chunks)) { _ in
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

/// One text-protocol call: stdout is the answer, streamed as it arrives
/// (or held and extracted at the end: `Dialect.answer`); with error or
/// usage patterns, every line of stdout and stderr is read for them.
final class TextSession: ChildReader, @unchecked Sendable {
    let call: PluginCall
    let inputTokens: Int
    let model: String
    let dialect: Dialect
    // Runner thread only.
    var out: HeadlessOutput
    var stripper: ANSIStripper?
    var outputBytes = 0
    var scratch: [UInt8] = []
    /// The whole answer, when it is extracted at the end.
    var held: [UInt8] = []
    /// The stdout line not yet ended by a newline (when lines are scanned).
    var partial: [UInt8] = []
    /// The first line that matched an error pattern, and its kind.
    var failure: (kind: ProviderError.Kind, stream: String, line: String)?
    var figures: [Dialect.UsageField: Double] = [:]
    let ran: [String]

    init(call: PluginCall, program: String, stripANSI: Bool, inputTokens: Int, model: String, ran: [String], dialect: Dialect) {
        self.ran = ran
        self.call = call
        self.inputTokens = inputTokens
        self.model = model
        self.dialect = dialect
        out = HeadlessOutput(call: call, program: program, finalEvent: "end of output")
        stripper = stripANSI ? ANSIStripper() : nil
    }

    func stdout(_ bytes: UnsafeRawBufferPointer) {
        if stripper != nil {
            scratch.removeAll(keepingCapacity: true)
            stripper!.strip(bytes, into: &scratch)
            scratch.withUnsafeBytes { take($0) }
        } else {
            take(bytes)
        }
    }

    func take(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        outputBytes += bytes.count
        if dialect.holdsAnswer {
            held.append(contentsOf: bytes)
        } else {
            call.text(bytes: bytes)
        }
        guard dialect.scansStdout else { return }
        var start = 0
        for i in 0..<bytes.count where bytes[i] == 0x0A {
            partial.append(contentsOf: bytes[start..<i])
            scan(String(decoding: partial, as: UTF8.self), "stdout")
            partial.removeAll(keepingCapacity: true)
            start = i + 1
        }
        partial.append(contentsOf: bytes[start...])
    }

    /// One line of output against the error patterns (the first match
    /// decides) and the usage patterns (the last match of each counts).
    func scan(_ line: String, _ stream: String) {
        if failure == nil {
            for p in dialect.errorPatterns where p.pattern.capture(line) != nil {
                failure = (p.kind, stream, line)
                break
            }
        }
        for u in dialect.usagePatterns {
            if let text = u.pattern.capture(line), let n = Dialect.number(text) { figures[u.field] = n }
        }
    }

    func stderr(_ bytes: UnsafeRawBufferPointer) {
        out.stderr(bytes)
        if dialect.scansStderr { scan(ANSIStripper.clean(bytes), "stderr") }
    }

    func exited(_ exit: ChildExit) {
        if !partial.isEmpty {
            scan(String(decoding: partial, as: UTF8.self), "stdout")
            partial = []
        }
        let wrote = outputBytes > 0 && !dialect.holdsAnswer ? ["written text"] : []
        if exit.reason == .exited, let failure {
            var e = ProviderError(
                failure.kind,
                "\(out.program) \(exit.statusDescription), its \(failure.stream) matching error_patterns.\(failure.kind.rawValue): \(Wire.excerpt(failure.line.trimmed, limit: 500))",
                status: exit.signal.map { 128 + Int($0) } ?? exit.status.map(Int.init))
            e.providerType = "error_patterns"
            call.fail(out.marked(e, extra: ran + wrote))
            return
        }
        guard exit.succeeded else {
            var e = exit.error(out.program)
            if exit.reason == .exited, exit.signal == nil, let status = exit.status, let kind = dialect.exitCodes[Int(status)] {
                e.kind = kind
                e.providerType = "exit_codes"
            }
            call.fail(out.marked(e, extra: ran + wrote))
            return
        }
        var answerTokens = outputBytes
        if dialect.holdsAnswer {
            let whole = String(decoding: held, as: UTF8.self)
            let answer: String
            switch dialect.answer {
            case .all: answer = whole
            case .lastBlock: answer = Dialect.lastBlock(whole)
            case .pattern(let p):
                guard let found = p.capture(whole) else {
                    call.fail(
                        out.marked(
                            ProviderError(
                                .invalidResponse,
                                "\(out.program) exited with status 0 but its output does not match answer_pattern '\(p.source)' (output: \(Wire.excerpt(whole.trimmed, limit: 300)))"
                            ), extra: ran))
                    return
                }
                answer = found
            }
            answerTokens = answer.utf8.count
            if !answer.isEmpty { call.text(answer) }
        }
        // What the program printed, else the estimate (four bytes a token).
        let input = figures[.inputTokens].map { Int($0.rounded()) }
        let output = figures[.outputTokens].map { Int($0.rounded()) }
        let usage = Usage(
            inputTokens: input ?? inputTokens, outputTokens: output ?? (answerTokens + 3) / 4, estimated: input == nil || output == nil)
        call.finish(
            Wire.Finish(finishReason: .stop, usage: usage, model: model.isEmpty ? nil : model, costUSD: figures[.costUSD]))
    }
}

extension String {
    /// Without leading and trailing spaces, tabs and line ends.
    var trimmed: String {
        let space: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !space($0) }), let last = lastIndex(where: { !space($0) }) else { return "" }
        return String(self[first...last])
    }

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
