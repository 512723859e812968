// Claude Code run headless (provider `claude-code-cli`): every request runs
//
//   claude -p --output-format stream-json --verbose --input-format stream-json
//          [--include-partial-messages] [--model M] [--system-prompt S |
//          --append-system-prompt S] [--max-turns N] [--tools=...]
//          [--allowed-tools=...] [--disallowed-tools=...] [--permission-mode M]
//          [--no-session-persistence] [--session-id ID | --resume TRANSCRIPT]
//
// as a child process of the kit's process runtime, with the user's new
// message(s) as stream-json lines on stdin, the earlier conversation (if
// any) in a transcript file, and the stream-json output parsed into events
// (ClaudeStream.swift). Session mode keeps the process for later turns
// (ClaudeSession.swift). docs/headless.md is the user's guide.
import DescartesPluginKit
import Glibc

final class ClaudeCodeBackend: DescartesBackend {
    let context: BackendContext
    let config: HeadlessConfig
    let settings: ClaudeSettings
    let runner: ProcessRunner
    let sessions = SessionTable()

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        config = try HeadlessConfig(context, defaultCommand: "claude")
        settings = try ClaudeSettings(context)
        runner = ProcessRunner(name: context.instance)
    }

    deinit {
        sessions.closeAll()
        runner.close()
    }

    var environment: [String: String] { config.environment(settings.environment) }

    func initialize(_ call: PluginCall) {
        do {
            let exe = try config.executable(environment)
            call.finish(result: ["message": .string("claude at \(exe)")])
        } catch {
            call.fail(error)
        }
    }

    /// `claude --version`, with the backend's environment.
    func healthCheck(_ call: PluginCall) {
        let env = environment
        let exe: String
        do { exe = try config.executable(env) } catch {
            call.fail(error)
            return
        }
        let out = OutputBox()
        let link = ChildLink()
        do {
            let child = try runner.spawn(
                config.spec(executable: exe, arguments: ["--version"], environment: env, deadline: .now + .seconds(30)),
                handlers: ChildHandlers(
                    stdout: { out.append($0) },
                    exit: { exit in
                        let version = out.text
                        guard exit.succeeded, !version.isEmpty else {
                            call.fail(exit.error("claude --version"))
                            return
                        }
                        call.finish(result: [
                            "message": .string("\(version) at \(exe)"),
                            "details": ["version": .string(version), "path": .string(exe)],
                        ])
                    }))
            link.attach(child)
            call.onCancel { link.terminate() }
        } catch {
            call.fail(error)
        }
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) { run(request, call, partial: false) }

    func stream(_ request: ModelRequest, _ call: PluginCall) { run(request, call, partial: true) }

    func shutdown(_ call: PluginCall) {
        sessions.closeAll()
        runner.shutdown { call.finish(result: [:]) }
    }

    // MARK: Running a turn

    func run(_ request: ModelRequest, _ call: PluginCall, partial: Bool) {
        do {
            let options = try ClaudeOptions(request.options)
            let input = try ClaudeInput(request)
            if options.wantsSession {
                try runInSession(request, call, options, input)
            } else {
                try runOnce(request, call, options, input, partial: partial)
            }
        } catch {
            call.fail(error)
        }
    }

    /// One process for one request: stdin is closed after the user lines,
    /// the answer ends with the `result` line, and the process then has
    /// `exit_grace_ms` to exit before its group is terminated.
    func runOnce(_ request: ModelRequest, _ call: PluginCall, _ options: ClaudeOptions, _ input: ClaudeInput, partial: Bool) throws(ProviderError) {
        let env = environment
        let exe = try config.executable(env)
        var scratch: ScratchDirectory? = nil
        var resume: String? = nil
        if !input.history.isEmpty {
            let dir = try ScratchDirectory()
            scratch = dir
            let id = UUID.random()
            do { resume = try dir.write("\(id).jsonl", ClaudeInput.transcript(input.history, sessionID: id)) } catch {
                dir.remove()
                throw error
            }
        }
        let args = claudeArguments(
            settings: settings, options: options, model: request.model ?? settings.model, system: input.system,
            partial: partial, sessionID: nil, resume: resume, extra: config.args)
        let turn = ClaudeTurn(call: call, partial: partial)
        let link = ChildLink()
        let grace = config.exitGrace
        let transcriptDir = scratch
        turn.onResult = { _ in link.done(exitWithin: grace) }
        let spec = config.spec(
            executable: exe, arguments: args, environment: env, input: input.stdinLines, deadline: config.deadline(request),
            cwd: options.cwd)
        do {
            let child = try runner.spawn(
                spec,
                handlers: ChildHandlers(
                    stdout: { turn.line($0) }, stderr: { turn.stderr($0) },
                    exit: { exit in
                        turn.exited(exit)
                        transcriptDir?.remove()
                    }))
            link.attach(child)
            call.onCancel { link.terminate() }
        } catch {
            scratch?.remove()
            throw error
        }
    }

    /// A turn of a session: continue the live process, or start one (with
    /// the request's earlier conversation when it has one).
    func runInSession(_ request: ModelRequest, _ call: PluginCall, _ options: ClaudeOptions, _ input: ClaudeInput) throws(ProviderError) {
        if let id = options.sessionID, let session = sessions.get(id), session.isAlive {
            let turn = ClaudeTurn(call: call, partial: true, costBefore: session.totalCost)
            turn.metadata = ["session_id": .string(id), "session_spawned": false]
            let n = try session.begin(turn, closeAfter: options.endSession)
            turn.metadata["session_turn"] = .integer(n)
            session.link.child?.write(input.stdinLines)
            call.onCancel { session.interrupt() }
            return
        }
        try sessions.makeRoom(idle: settings.sessionIdle, limit: settings.maxSessions)
        let env = environment
        let exe = try config.executable(env)
        let id = options.sessionID ?? UUID.random()
        var scratch: ScratchDirectory? = nil
        var resume: String? = nil
        if !input.history.isEmpty {
            let dir = try ScratchDirectory()
            scratch = dir
            do { resume = try dir.write("\(id).jsonl", ClaudeInput.transcript(input.history, sessionID: id)) } catch {
                dir.remove()
                throw error
            }
        }
        let args = claudeArguments(
            settings: settings, options: options, model: request.model ?? settings.model, system: input.system,
            partial: true, sessionID: id, resume: resume, extra: config.args)
        let table = sessions
        let session = ClaudeSession(
            id: id, scratch: scratch, interruptGrace: config.killGrace, exitGrace: config.exitGrace,
            onEnd: { table.remove($0) })
        let turn = ClaudeTurn(call: call, partial: true)
        turn.metadata = [
            "session_id": .string(id), "session_spawned": true, "session_restarted": .bool(options.sessionID != nil),
        ]
        let n = try session.begin(turn, closeAfter: options.endSession)
        turn.metadata["session_turn"] = .integer(n)
        let spec = config.spec(
            executable: exe, arguments: args, environment: env, input: input.stdinLines, keepInputOpen: true, cwd: options.cwd)
        do {
            let child = try runner.spawn(spec, handlers: session.handlers)
            session.link.attach(child)
            sessions.add(session)
            call.onCancel { session.interrupt() }
        } catch {
            scratch?.remove()
            throw error
        }
    }
}

/// Collects a little output (a version line).
final class OutputBox: Sendable {
    private let bytes = Lock<[UInt8]>([])
    func append(_ b: UnsafeRawBufferPointer) { bytes.withLock { if $0.count < 4096 { $0.append(contentsOf: b); $0.append(0x0A) } } }
    var text: String { bytes.withLock { b in b.withUnsafeBytes { ANSIStripper.clean($0) } } }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(
        abi: abi, host: host, name: "claude-code", version: "1.0.0",
        factories: [
            BackendFactory(id: "claude-code-cli", description: "Claude Code (the claude CLI) run headless") {
                try ClaudeCodeBackend($0)
            }
        ])
}
