import Descartes
import DescartesCommandLine
@preconcurrency import Dispatch
import Glibc
import DescartesSupport

enum CompleteCommand {
    /// `--image FILE|URL`: a file's bytes (PNG, JPEG, GIF or WebP, read from
    /// its first bytes) or an http(s) URL the provider fetches.
    static func image(_ arg: String) throws(ToolsFile.Problem) -> ImageInput {
        if arg.hasPrefix("https://") || arg.hasPrefix("http://") { return .url(arg) }
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(arg, limit: 20 << 20) } catch {
            throw ToolsFile.Problem(message: "--image \(arg): \(error)")
        }
        do { return try ImageInput(bytes: bytes) } catch { throw ToolsFile.Problem(message: "--image \(arg): \(error)") }
    }

    /// PROMPT (or TEXT): the words joined, or stdin for '-'. The parser
    /// made sure there is at least one.
    static func readPrompt(_ args: Arguments) -> String {
        if args.positional == ["-"] {
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(0, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                bytes.append(contentsOf: buf[0..<n])
            }
            var text = String(decoding: bytes, as: UTF8.self)
            while text.hasSuffix("\n") { text.removeLast() }
            return text
        }
        return args.positional.joined(separator: " ")
    }

    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        var globals = globals
        let prompt: String
        let settings: [String: JSONValue]
        var request: ModelRequest
        let reliability: ReliabilityOptions
        // --isolate: -p's plugin runs in a descartes-plugin-host helper
        // process; a crash there is a `process` error, not this process's end.
        // (Without it, the policy files may still isolate it: docs/isolation.md.)
        var isolation: ProviderFactory.Isolation? = nil
        do throws(UsageError) {
            reliability = try ReliabilityOptions(args, globals: globals)
            if args.flag(.continueConversation) && args.value(.conversation) != nil {
                throw args.mistake("-c continues the most recent conversation, --conversation ID the one named: give one of them")
            }
            if args.value(.continueSession) != nil && (args.flag(.continueConversation) || args.value(.conversation) != nil) {
                throw args.mistake("--session continues an agent's session, -c and --conversation a conversation: give one of them")
            }
            if args.flag(.isolate) || args.value(.memoryLimit) != nil {
                var limits = ProcessLimits.isolatedPlugin
                if let mb = try args.int(.memoryLimit) {
                    guard mb >= 64 else { throw args.mistake("--memory-limit is in MiB, at least 64") }
                    limits.memoryBytes = mb << 20
                }
                isolation = .process(limits)
            }
            prompt = readPrompt(args)
            settings = try Commands.settings(args)
            request = ModelRequest(prompt: prompt, model: args.value(.model))
            if let t = try args.double(.timeout) {
                guard t > 0 else { throw args.mistake("--timeout must be positive") }
                request.deadlines.total = .milliseconds(Int(t * 1000))
                globals.timeout = t
            }
            request.systemPrompt = args.value(.systemPrompt)
            // --label KEY=VALUE: the request's metadata, recorded in the audit ledger.
            for l in args.all(.label) {
                guard let eq = l.firstIndex(of: "="), eq != l.startIndex else { throw args.mistake("--label needs KEY=VALUE, got '\(l)'") }
                request.metadata[String(l[..<eq])] = String(l[l.index(after: eq)...])
            }
            let approvals = args.all(.approve)
            if !approvals.isEmpty { request.approval = try approvalPolicy(approvals, args) }
            (request.maxTokens, request.temperature) = try Commands.sampling(args)
            if let c = args.value(.toolChoice) {
                switch c {
                case "auto": request.toolChoice = .auto
                case "none": request.toolChoice = ToolChoice.none
                case "required": request.toolChoice = .required
                case "": throw args.mistake("--tool-choice needs auto, none, required or a tool name")
                default: request.toolChoice = .tool(c)
                }
            }
        } catch { usageFailure(error) }
        if let file = args.value(.tools) {
            do throws(ToolsFile.Problem) { request.tools = try ToolsFile.load(file) } catch {
                Out.err("Error: \(error.message)")
                exit(ExitCode.dataError.rawValue)
            }
        }
        if let s = args.value(.schema) {
            do throws(ToolsFile.Problem) { request.responseFormat = try SchemaArgument.load(s) } catch {
                Out.err("Error: \(error.message)")
                exit(ExitCode.dataError.rawValue)
            }
        }
        do throws(ToolsFile.Problem) {
            for arg in args.all(.image) { request.messages[request.messages.count - 1].images.append(try image(arg)) }
        } catch {
            Out.err("Error: \(error.message)")
            exit(ExitCode.dataError.rawValue)
        }
        let provider = args.value(.provider)!
        let json = args.flag(.json)
        let streaming = args.flag(.stream)
        // -c, --conversation ID: the conversation this turn continues.
        let store = ConversationStore(file: ConversationStore.defaultFile())
        let continuing: (StoredConversation, [Message])?
        do throws(ProviderError) { continuing = try ConversationThread.continued(args, store: store) } catch { failure(error, json: json) }
        let asked = request.messages[request.messages.count - 1]
        // --session: an agent's conversation kept between invocations.
        let session: StoredSession?
        if let s = args.value(.continueSession) {
            do { session = try sessionTurn(s, provider: provider, request: &request, globals: globals) } catch { failure(error, json: json) }
        } else {
            session = nil
        }

        let built: ReliabilityOptions.Built
        do { built = try reliability.build(provider, config: settings, globals: globals, isolation: isolation) } catch { failure(error, json: json) }
        let backend = built.backend
        // Every completion is recorded as a conversation (docs/conversations.md).
        var thread = ConversationThread(
            store: store, provider: provider, agentSessions: built.agentSessions && session == nil, sessionFromTheStart: false, continuing: continuing, system: request.systemPrompt)
        if session == nil { request = thread.request(request) }

        let task = Task { () async -> Result<ModelResponse, ProviderError> in
            do {
                if streaming {
                    return .success(try await streamOut(backend, request, json: json))
                }
                // --stats streams underneath, to see the first token arrive.
                return .success(reliability.stats ? try await backend.collect(request) : try await backend.complete(request))
            } catch let e as ProviderError {
                return .failure(e)
            } catch {
                return .failure(ProviderError(.backend, "\(error)", provider: provider))
            }
        }
        let interrupts = Interrupts { task.cancel() }
        let result = await task.value
        interrupts.stop()
        await built.providers.shutdown()
        interrupts.exitIfTerminated()
        let stats = built.meter?.last
        let cacheStats = built.providers.cache?.stats
        if let stats, !json { ReliabilityOptions.print(stats, cache: cacheStats) }

        switch result {
        case .failure(let e):
            if streaming && !json { Out.line() }
            if json && streaming {
                if let stats { Out.line(JSONValue.object(["type": "stats", "stats": ReliabilityOptions.json(stats, cache: cacheStats)]).jsonText) }
                Out.line(JSONValue.object(["type": "error", "error": Wire.json(e)]).jsonText)
                Out.err("Error: \(e)")
                return ExitCode.for(e)
            }
            failure(e, json: json)
        case .success(let r):
            var conversationID: JSONValue = .null
            // --no-history (or DESCARTES_NO_HISTORY): nothing is written; a continued conversation is only read.
            if !args.flag(.noHistory) && !ConversationStore.recordingOff() {
                do { conversationID = .string(try thread.record(asked, r).id) } catch {
                    Out.err("descartes: the conversation was not recorded: \(error)")
                }
            }
            if json {
                var doc = Wire.json(r)
                if let stats { doc = ReliabilityOptions.with(stats: stats, cache: cacheStats, doc) }
                if case .object(var o) = doc {
                    o["conversation_id"] = conversationID
                    doc = .object(o)
                }
                if !streaming {
                    Out.line(doc.prettyText())
                } else if let stats {
                    Out.line(JSONValue.object(["type": "stats", "stats": ReliabilityOptions.json(stats, cache: cacheStats)]).jsonText)
                }
            } else {
                if !streaming { Out.write(r.content) }
                if !r.content.hasSuffix("\n") { Out.line() }
                for c in r.toolCalls { Out.line(Out.dim("tool call \(c.id): \(c.name)(\(c.arguments))")) }
                if r.finishReason == .maxTokens { Out.err("descartes: the answer was cut at the token limit") }
            }
            if var session {
                guard let id = r.metadata["session_id"]?.stringValue, SessionStore.isValidID(id) else {
                    Out.err("descartes: \(provider) returned no session id: the session was not saved")
                    return .software
                }
                if session.turns == 0 { session.id = id }
                session.turns += 1
                session.updated = SessionStore.now
                session.messages += [.user(prompt), .assistant(r.content)]
                do { try SessionStore.save(session) } catch { failure(error, json: json) }
                if !json {
                    Out.err("descartes: session \(id), turn \(session.turns) (continue: descartes complete -p \(provider) --session \(id) ...)")
                }
            }
            if r.finishReason == .toolDenied {
                let names = (r.metadata["permission_denials"]?.arrayValue ?? []).compactMap { $0["tool_name"]?.stringValue }
                Out.err("descartes: \(provider): the agent was denied \(names.isEmpty ? "a tool" : names.joined(separator: ", ")) (finish_reason tool_denied)")
                return .noPermission
            }
            return .ok
        }
    }

    /// `--session new|ID`: the provider must be an agent with sessions (its
    /// manifest says `sessions`). `new` asks it to start one; an id loads the
    /// stored conversation, which goes before the prompt (Claude Code
    /// replays it in a new process; Codex resumes its saved thread and
    /// needs only the prompt), and asks to continue it.
    static func sessionTurn(_ arg: String, provider: String, request: inout ModelRequest, globals: Globals) throws(ProviderError) -> StoredSession {
        var stored: StoredSession? = nil
        if arg != "new" {
            let s = try SessionStore.load(arg)
            guard s.provider == provider else {
                throw ProviderError(.config, "--session \(arg) belongs to provider '\(s.provider)', not '\(provider)'", provider: provider)
            }
            stored = s
        }
        let setup = Commands.setup(globals)
        let plugin: String
        switch try setup.factory.resolveName(provider, settings: setup.settings) {
        case .plugin(let p), .instance(_, let p): plugin = p
        default: throw ProviderError(.config, "--session needs one agent provider, not a fallback chain or a route ('\(provider)')", provider: provider)
        }
        let manifest = try setup.factory.manifest(for: plugin)
        guard manifest.capabilities.contains("sessions") else {
            let agents = setup.factory.catalog.availableProviders.filter {
                (try? setup.factory.manifest(for: $0))?.capabilities.contains("sessions") == true
            }
            throw ProviderError(
                .unsupportedFeature,
                "--session: \(plugin) has no sessions (its manifest lacks the capability 'sessions'; agents with sessions: \(agents.joined(separator: ", ")))",
                provider: provider)
        }
        guard let stored else {
            request.options["session"] = true
            return StoredSession(id: "", provider: provider, plugin: plugin, now: SessionStore.now)
        }
        request.messages = stored.messages + request.messages
        request.options["session_id"] = .string(arg)
        return stored
    }

    /// `--approve` values as a policy: `allow`, `deny`, `ask`, or rules
    /// (with `ask`: what no rule allows is asked on the terminal).
    static func approvalPolicy(_ values: [String], _ args: Arguments) throws(UsageError) -> ApprovalPolicy {
        let words = Set(values.filter { ["allow", "deny", "ask"].contains($0) })
        let patterns = values.filter { !["allow", "deny", "ask"].contains($0) }
        if words.count > 1 || (!words.isEmpty && !patterns.isEmpty && !words.contains("ask")) {
            throw args.mistake("--approve: allow and deny stand alone; combine rules only with each other or with ask, got \(values.joined(separator: " "))")
        }
        if words == ["allow"] { return .allowAll }
        if words == ["deny"] { return .denyAll }
        let rules: ApprovalPolicy?
        do throws(ProviderError) { rules = patterns.isEmpty ? nil : try ApprovalPolicy.rules(patterns) } catch {
            throw args.mistake("--approve: \(error.message)")
        }
        guard words.contains("ask") else { return rules! }
        guard isatty(0) != 0 else {
            throw args.mistake("--approve ask asks on the terminal, but stdin is not a terminal; use allow, deny or rules such as 'Bash(git *)'")
        }
        return .handler { q in
            if let rules, case .allow = await rules.decide(q) { return .allow }
            return await TerminalApproval.ask(q)
        }
    }

    /// Streams events to stdout as they arrive; returns the final response.
    /// Text and reasoning go through a `StreamRedactor` each, so a secret
    /// the model repeats is masked even when it is cut across two deltas.
    static func streamOut(_ backend: any ModelBackend, _ request: ModelRequest, json: Bool) async throws -> ModelResponse {
        var text = StreamRedactor(Out.logSink.redactor)
        var reasoning = StreamRedactor(Out.logSink.redactor)
        func flush() {
            let (t, r) = (text.finish(), reasoning.finish())
            if json {
                if !r.isEmpty { Out.line(Wire.json(.reasoningDelta(r)).jsonText) }
                if !t.isEmpty { Out.line(Wire.json(.textDelta(t)).jsonText) }
            } else {
                if !r.isEmpty { Out.write(Out.dim(r), to: 2) }
                if !t.isEmpty { Out.write(t) }
            }
        }
        // Text held back for redaction is shown (masked) before an error
        // is: the caller sees everything the plugin sent before the failure.
        do {
            for try await event in backend.stream(request) {
                var event = event
                switch event {
                case .textDelta(let t):
                    let shown = text.push(t)
                    if shown.isEmpty { continue }
                    event = .textDelta(shown)
                case .reasoningDelta(let t):
                    let shown = reasoning.push(t)
                    if shown.isEmpty { continue }
                    event = .reasoningDelta(shown)
                case .toolCallStart, .reasoningSignature, .reasoningRedacted, .finish:
                    flush()
                default: break
                }
                if json {
                    Out.line(Wire.json(event).jsonText)
                    if case .finish(let r) = event { return r }
                    continue
                }
                switch event {
                case .textDelta(let t): Out.write(t)
                case .reasoningDelta(let t): Out.write(Out.dim(t), to: 2)
                case .notice(let level, let message): Out.err("descartes: \(backend.name): \(level): \(message)")
                case .finish(let r): return r
                default: break
                }
            }
        } catch {
            flush()
            throw error
        }
        flush()
        throw ProviderError(.streamClosed, "the stream ended without a finish event", provider: backend.name)
    }
}

/// Ctrl-C, SIGTERM and SIGHUP cancel the request (the plugin stops its
/// transfer or ends its child's process group); a second one exits at once.
/// After a SIGTERM or SIGHUP the command exits with 128 + the signal once
/// the backends are shut down (`exitIfTerminated`). Children the plugins
/// started never outlive the process either way: a reaper kills their
/// groups when it dies (Sources/CProcessShim).
final class Interrupts: @unchecked Sendable {
    static let handled: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    private let sources: [DispatchSourceSignal]
    private let received = Lock<Int32>(0)

    private let signals: [Int32]

    convenience init(_ signals: [Int32] = Interrupts.handled, _ onInterrupt: @escaping @Sendable () -> Void) {
        self.init(signals, each: false) { _ in onInterrupt() }
    }

    /// With `each`, every signal calls `onInterrupt` (with the signal) and
    /// none exits on its own: `descartes chat`, where Ctrl-C cancels one
    /// answer and the session goes on.
    init(_ signals: [Int32], each: Bool, _ onInterrupt: @escaping @Sendable (Int32) -> Void) {
        let count = Lock(0)
        let received = self.received
        self.signals = signals
        sources = signals.map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                received.withLock { if $0 == 0 || each { $0 = sig } }
                if !each && count.withLock({ c in c += 1; return c }) > 1 { exit(128 + sig) }
                onInterrupt(sig)
            }
            source.resume()
            return source
        }
    }

    func stop() {
        for s in sources { s.cancel() }
        for sig in signals { signal(sig, SIG_DFL) }
    }

    /// The first signal received, 0 for none.
    var receivedSignal: Int32 { received.withLock { $0 } }

    /// Exits with 128 + the signal when the command was ended by SIGTERM or
    /// SIGHUP (Ctrl-C keeps the command's own `interrupted` status).
    func exitIfTerminated() {
        let s = receivedSignal
        if s == SIGTERM || s == SIGHUP {
            Out.err("descartes: ended by \(signalName(s))")
            exit(128 + s)
        }
    }
}

/// The `--tools FILE.json` of `complete`: a JSON array of
/// `{"name", "description"?, "parameters"?}`, `parameters` a JSON Schema
/// object (default: an object with no properties).
enum ToolsFile {
    struct Problem: Error {
        var message: String
    }

    static func load(_ path: String) throws(Problem) -> [Tool] {
        let text: String
        do { text = try FileSystem.readText(path, limit: 16 << 20) } catch { throw Problem(message: "--tools: \(error)") }
        let doc: JSONValue
        do { doc = try JSONValue.parse(text) } catch { throw Problem(message: "\(path): not JSON: \(error)") }
        guard case .array(let items) = doc else {
            throw Problem(message: "\(path): expected a JSON array of {\"name\", \"description\", \"parameters\"}, got \(doc.typeName)")
        }
        var tools: [Tool] = []
        var names: Set<String> = []
        for (i, item) in items.enumerated() {
            let at = "\(path): item \(i)"
            guard case .object(let o) = item else { throw Problem(message: "\(at): expected an object, got \(item.typeName)") }
            for k in o.keys where !["name", "description", "parameters"].contains(k) {
                throw Problem(message: "\(at): unknown key \"\(k)\" (name, description, parameters)")
            }
            guard let name = o["name"]?.stringValue, !name.isEmpty else { throw Problem(message: "\(at): \"name\" must be a non-empty string") }
            guard name.utf8.allSatisfy({ $0 == 0x5F || $0 == 0x2D || ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) }) else {
                throw Problem(message: "\(at) (\"\(name)\"): a tool name is letters, digits, '_' and '-'")
            }
            guard names.insert(name).inserted else { throw Problem(message: "\(at): the name \"\(name)\" is used twice") }
            var description = ""
            if let d = o["description"] {
                guard let s = d.stringValue else { throw Problem(message: "\(at) (\"\(name)\"): \"description\" must be a string") }
                description = s
            }
            var parameters: JSONValue = ["type": "object", "properties": [:]]
            if let p = o["parameters"] {
                guard case .object(let schema) = p else {
                    throw Problem(message: "\(at) (\"\(name)\"): \"parameters\" must be a JSON Schema object, got \(p.typeName)")
                }
                if let t = schema["type"], t != "object" {
                    throw Problem(message: "\(at) (\"\(name)\"): \"parameters\" must describe an object (\"type\": \"object\"), got \(t.jsonText)")
                }
                parameters = p
            }
            tools.append(Tool(name: name, description: description, parameters: parameters))
        }
        return tools
    }
}

/// The `--schema FILE|FIELDS` of `complete`: the response format
/// `.jsonSchema`. FILE holds a JSON Schema (a JSON object) or the concise
/// form; an argument that is no file is a JSON Schema when it starts with
/// `{`, else the concise form, which simonw/llm's users know:
///
///     name, age int, bio: their biography
///
/// fields separated by commas (or by newlines, when any description has a
/// comma: then every line is one field), each `NAME [TYPE][: DESCRIPTION]`,
/// TYPE one of `str` (the default), `int`, `float`, `bool`. It becomes an
/// object whose fields are all required and which allows no others (what
/// OpenAI's strict mode requires, so it is sent strict).
enum SchemaArgument {
    static let types: [String: String] = ["str": "string", "int": "integer", "float": "number", "bool": "boolean"]

    static func load(_ arg: String) throws(ToolsFile.Problem) -> ResponseFormat {
        var text = arg
        var name = "answer"
        var source = "--schema"
        if FileSystem.exists(arg) || arg.hasSuffix(".json") {
            do { text = try FileSystem.readText(arg, limit: 4 << 20) } catch { throw ToolsFile.Problem(message: "--schema: \(error)") }
            source = "--schema \(arg)"
            let base = arg.split(separator: "/").last.map(String.init) ?? arg
            let stem = base.split(separator: ".").first.map(String.init) ?? base
            let clean = String(stem.map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" ? $0 : "_" }.filter(\.isASCII))
            if !clean.isEmpty { name = String(clean.prefix(64)) }
        }
        let schema: JSONValue
        if text.drop(while: \.isWhitespace).hasPrefix("{") {
            do { schema = try JSONValue.parse(text) } catch { throw ToolsFile.Problem(message: "\(source): not JSON: \(error)") }
            do { _ = try JSONSchema(schema) } catch { throw ToolsFile.Problem(message: "\(source): \(error)") }
        } else {
            schema = try concise(text, source: source)
        }
        return .jsonSchema(name: name, schema: schema, strict: JSONSchema.meetsStrictMode(schema))
    }

    /// The concise form as a JSON Schema.
    static func concise(_ text: String, source: String) throws(ToolsFile.Problem) -> JSONValue {
        let separator: Character = text.contains("\n") ? "\n" : ","
        var properties = JSONObject()
        var required: [JSONValue] = []
        for (i, raw) in text.split(separator: separator, omittingEmptySubsequences: false).enumerated() {
            let field = raw.trimmingCharacters()
            if field.isEmpty { continue }
            var spec = field
            var description: String? = nil
            if let colon = field.firstIndex(of: ":") {
                spec = String(field[..<colon]).trimmingCharacters()
                description = String(field[field.index(after: colon)...]).trimmingCharacters()
            }
            let words = spec.split(whereSeparator: \.isWhitespace).map(String.init)
            let at = "\(source): field \(i + 1) ('\(field)')"
            guard let fieldName = words.first else { throw ToolsFile.Problem(message: "\(at): no name before the ':'") }
            guard fieldName.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                throw ToolsFile.Problem(message: "\(at): '\(fieldName)' is not a field name (letters, digits, '_' and '-')")
            }
            guard words.count <= 2 else {
                throw ToolsFile.Problem(message: "\(at): expected NAME [TYPE][: DESCRIPTION], got \(words.count) words before the description")
            }
            let typeName = words.count == 2 ? words[1] : "str"
            guard let type = types[typeName] else {
                throw ToolsFile.Problem(message: "\(at): unknown type '\(typeName)' (expected str, int, float or bool)")
            }
            guard properties[fieldName] == nil else { throw ToolsFile.Problem(message: "\(at): '\(fieldName)' is named twice") }
            var p: JSONObject = ["type": .string(type)]
            if let d = description, !d.isEmpty { p["description"] = .string(d) }
            properties[fieldName] = .object(p)
            required.append(.string(fieldName))
        }
        guard !properties.isEmpty else { throw ToolsFile.Problem(message: "\(source): no fields (expected e.g. 'name, age int, bio: their biography')") }
        return ["type": "object", "properties": .object(properties), "required": .array(required), "additionalProperties": false]
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }), let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}
