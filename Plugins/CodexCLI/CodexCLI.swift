// OpenAI's Codex CLI run headless (provider `codex-cli`): every request runs
//
//   codex exec --json --color never [--skip-git-repo-check] [--ephemeral]
//        [-m M] [--profile P] [-c sandbox_mode=...] [-c approval_policy=...]
//        [-c developer_instructions=...] [-c model_provider=descartes ...]
//        [--output-schema FILE] [args...] [resume THREAD] -
//
// as a child process of the kit's process runtime, the user's new message on
// stdin (`-`: never parsed as an option, never in argv), and the JSON lines
// parsed into events (CodexTurn.swift). A session is a Codex thread saved in
// CODEX_HOME: its later turns run `codex exec resume <thread_id>`, each in a
// process of its own, so a session outlives the backend that started it.
// A request with an approval policy runs `codex app-server` instead, which
// asks before a command or a file change (CodexAppServer.swift).
// docs/headless.md is the user's guide.
import DescartesPluginKit
import Glibc

final class CodexBackend: DescartesBackend {
    let context: BackendContext
    let settings: CodexSettings
    let agent: HeadlessAgent
    /// Threads with a turn in flight in this backend: one turn at a time
    /// per thread (two `codex exec resume` of one thread would both append
    /// to its rollout).
    let busy = Lock<Set<String>>([])

    /// A request with an approval policy runs through `codex app-server`,
    /// whose approval requests go to the host (CodexAppServer.swift).
    var asksApprovals: Bool { true }

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        settings = try CodexSettings(context)
        agent = try HeadlessAgent(context, defaultCommand: "codex", environment: settings.environment)
        // Refused now rather than ignored by codex at the first request.
        try settings.checkProfile(agent.config.environment(settings.environment))
    }

    func initialize(_ call: PluginCall) {
        agent.initialize(call) { "codex at \($0.path)" }
    }

    /// `codex --version`, then one cheap real turn (`exec --ephemeral`, read-only
    /// sandbox, approval never, a one-word answer) with the backend's
    /// provider, key and home: healthy only if Codex reached its model.
    /// `health_turn: false` checks the version only and says so.
    func healthCheck(_ call: PluginCall) {
        let settings = self.settings
        agent.probe(call, arguments: ["--version"]) { [agent] program, exit, version in
            guard exit.succeeded, !version.isEmpty else {
                call.fail(exit.error("codex --version"))
                return
            }
            var details: JSONObject = ["version": .string(version), "path": .string(program.path)]
            guard settings.healthTurn else {
                details["checked"] = "version"
                call.finish(result: [
                    "message": .string("\(version) at \(program.path); only `codex --version` was checked (health_turn: false): the API and the credentials were not"),
                    "details": .object(details),
                ])
                return
            }
            var s = settings
            s.sandbox = "read-only"
            s.approvalPolicy = "never"
            let options = CodexOptions()
            var args = codexArguments(settings: s, options: options, model: settings.model, system: nil, schema: nil, extra: [])
            // The fixed prompt as the last argument: probe writes no stdin.
            args.removeLast()
            args += ["--", "Reply with the single word OK."]
            let started = ContinuousClock.now
            let base = details
            agent.probe(call, arguments: args, timeout: .seconds(60)) { _, turnExit, output in
                var details = base
                var failed: String? = nil
                var completed = false
                for line in output.split(separator: "\n") {
                    guard let o = try? JSONValue.parse(String(line)) else { continue }
                    switch o["type"]?.stringValue {
                    case "turn.completed"?: completed = true
                    case "turn.failed"?: failed = o["error"]?["message"]?.stringValue ?? "a failed turn"
                    default: break
                    }
                }
                if completed {
                    details["checked"] = "turn"
                    details["turn_ms"] = .integer((ContinuousClock.now - started).milliseconds)
                    call.finish(result: [
                        "message": .string("\(version) at \(program.path) answered a one-turn request"), "details": .object(details),
                    ])
                } else if let failed {
                    var e = CodexTurn.error(failed)
                    e.message = "the health turn failed: " + e.message
                    call.fail(e)
                } else {
                    call.fail(turnExit.error("codex exec (health turn)", context: output.isEmpty ? "" : ": " + Wire.excerpt(output, limit: 500)))
                }
            }
        }
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) { run(request, call) }

    /// Codex reports an agent message whole (`item.completed`): a stream
    /// gets each message, reasoning summary and command as it happens, not
    /// token by token.
    func stream(_ request: ModelRequest, _ call: PluginCall) { run(request, call) }

    func shutdown(_ call: PluginCall) { agent.shutdown(call) }

    // MARK: Running a turn

    func run(_ request: ModelRequest, _ call: PluginCall) {
        do {
            let options = try CodexOptions(request.options)
            let input = try CodexInput(request, resuming: options.sessionID != nil)
            guard let id = options.sessionID else {
                try start(request, call, options, input)
                return
            }
            try agent.whenFree(call, deadline: agent.config.deadline(request), "codex thread \(id)") { [self] () throws(ProviderError) -> Bool in
                guard busy.withLock({ $0.insert(id).inserted }) else { return false }
                do throws(ProviderError) {
                    try start(request, call, options, input) { [busy] in _ = busy.withLock { $0.remove(id) } }
                } catch {
                    _ = busy.withLock { $0.remove(id) }
                    throw error
                }
                return true
            }
        } catch {
            call.fail(error)
        }
    }

    /// One `codex exec` for one turn: the prompt on stdin (then closed), the
    /// answer ending with turn.completed, after which codex has
    /// `exit_grace_ms` to exit. `released` runs once the process is gone.
    func start(
        _ request: ModelRequest, _ call: PluginCall, _ options: CodexOptions, _ input: CodexInput,
        released: (@Sendable () -> Void)? = nil
    ) throws(ProviderError) {
        // Only the app server asks (codex exec refuses what needs approval).
        if request.approval?.asksHost == true {
            try startAppServer(request, call, options, input, released: released)
            return
        }
        let program = try agent.program()
        var scratch: ScratchDirectory? = nil
        do throws(ProviderError) {
            var schema: String? = nil
            switch request.responseFormat {
            case .text:
                break
            case .json:
                throw ProviderError(
                    .unsupportedFeature,
                    "codex-cli takes a JSON schema for structured output (--output-schema), not free JSON: give response_format json_schema")
            case .jsonSchema(_, let s, _):
                let dir = try ScratchDirectory(prefix: "descartes-codex")
                scratch = dir
                schema = try dir.write("schema.json", s.jsonBytes)
            }
            let model = request.model ?? settings.model
            let args = codexArguments(
                settings: settings, options: options, model: model, system: input.system, schema: schema, extra: agent.config.args)
            var before: Usage? = nil
            var metadata: JSONObject = [:]
            if let id = options.sessionID {
                before = CodexSettings.home(program.environment).flatMap { CodexRollout.usage(thread: id, home: $0) }
                metadata["session_resumed"] = true
                // Without the thread's earlier total, turn.completed's usage
                // is the whole thread's.
                if before == nil { metadata["usage_scope"] = "thread" }
            } else if options.startSession {
                metadata["session_resumed"] = false
            }
            let turn = CodexTurn(call: call, usageBefore: before)
            turn.model = model
            turn.metadata = metadata
            let grace = agent.config.exitGrace
            let spec = agent.spec(
                program, arguments: args, input: Array(input.prompt.utf8), deadline: agent.config.deadline(request), cwd: options.cwd)
            let cleanup = scratch
            try agent.start(call, spec) { link in
                turn.onEnd = { link.done(exitWithin: grace) }
                return ChildHandlers(
                    stdout: { turn.line($0) }, stderr: { turn.stderr($0) },
                    exit: { exit in
                        turn.exited(exit)
                        cleanup?.remove()
                        released?()
                    })
            }
        } catch {
            scratch?.remove()
            throw error
        }
    }
}

/// A thread's saved rollout (`$CODEX_HOME/sessions/YYYY/MM/DD/rollout-...-<id>.jsonl`).
enum CodexRollout {
    /// The thread's token usage so far: the last `token_count` event's
    /// `total_token_usage` in its rollout (read from the file's last MiB).
    /// Nil when there is no such file or event.
    static func usage(thread: String, home: String) -> Usage? {
        guard let file = find(thread: thread, in: home + "/sessions") else { return nil }
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        let size = Int(st.st_size)
        let start = max(0, size - (1 << 20))
        var bytes = [UInt8](repeating: 0, count: size - start)
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(start + got)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        for line in bytes[0..<got].split(separator: 0x0A).reversed() {
            let text = String(decoding: line, as: UTF8.self)
            guard text.contains("\"token_count\""), text.contains("total_token_usage"),
                let o = try? JSONValue.parse(text), let total = o["payload"]?["info"]?["total_token_usage"]
            else { continue }
            return CodexTurn.usage(total)
        }
        return nil
    }

    /// The rollout file of `thread` under `sessions`, newest days first.
    static func find(thread: String, in sessions: String) -> String? {
        let suffix = "-\(thread).jsonl"
        for year in entries(sessions).reversed() {
            for month in entries("\(sessions)/\(year)").reversed() {
                for day in entries("\(sessions)/\(year)/\(month)").reversed() {
                    let dir = "\(sessions)/\(year)/\(month)/\(day)"
                    if let f = entries(dir).first(where: { $0.hasSuffix(suffix) }) { return "\(dir)/\(f)" }
                }
            }
        }
        return nil
    }

    static func entries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") { out.append(name) }
        }
        return out.sorted()
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(
        abi: abi, host: host, name: "codex", version: "1.0.0",
        factories: [
            BackendFactory(id: "codex-cli", description: "OpenAI's Codex CLI (codex exec --json) run headless") {
                try CodexBackend($0)
            }
        ])
}
