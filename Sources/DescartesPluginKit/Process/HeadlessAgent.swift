/// The skeleton of a backend that runs an agent program as a child process
/// (a coding-agent CLI, any command speaking lines in and out): what
/// `claude-code-cli` and `headless-cli` share, and what the next ones
/// (Codex, the Agent Client Protocol, dialects declared in YAML) build on.
///
/// It holds the configuration every headless backend reads
/// (`HeadlessConfig`: command, args, env, cwd, limits, deadline, grace
/// periods), what the plugin adds to every child's environment (a secret
/// config key reaches the child there, never in argv), and one
/// `ProcessRunner` for all the backend's children. On it a backend:
///
/// - finds its program (`program()`), answers `initialize` with it
///   (`initialize(_:_:)`), and runs a short command for `health_check`
///   (`probe`);
/// - starts a child for one call (`start`): its input written to stdin
///   (then closed, unless kept open), stdout read as lines (or chunks), the
///   stderr tail kept for errors, the request's deadline applied, and the
///   child's process group terminated when the call is cancelled;
/// - or starts a child kept for several calls (`spawn`: a session, or an
///   agent spoken to over JSON-RPC), whose output the backend routes to the
///   call in flight and which it cancels its own way;
/// - reads a turn's output with `HeadlessOutput`;
/// - ends every child with `shutdown`.
///
/// Every child's exit is reported once, after its last output; the
/// runner's guarantees (process groups, rlimits, no zombies) are
/// `ProcessRunner`'s.
public final class HeadlessAgent: Sendable {
    public let config: HeadlessConfig
    public let runner: ProcessRunner
    /// Set in every child's environment after the `env` map.
    public let extraEnvironment: [String: String]

    /// Reads the shared keys (see `HeadlessConfig`).
    ///
    /// - Parameters:
    ///   - defaultCommand: the program when `command` is not set; nil makes
    ///     `command` required.
    ///   - environment: variables the plugin sets for every child.
    /// - Throws: `config` naming the key and the value at fault.
    public init(_ context: BackendContext, defaultCommand: String?, environment: [String: String] = [:]) throws(ProviderError) {
        config = try HeadlessConfig(context, defaultCommand: defaultCommand ?? "")
        guard !config.command.isEmpty else {
            throw ProviderError(.config, "key 'command' is required: the program to run (a name in PATH or an absolute path)")
        }
        extraEnvironment = environment
        runner = ProcessRunner(name: context.instance)
    }

    deinit { runner.close() }

    /// The program and the environment it runs with: the host's scrubbed,
    /// `pass_env` kept, then `env`, then `extraEnvironment`; the program
    /// looked up in that environment's `PATH`.
    ///
    /// - Throws: `config` or `providerUnavailable` (`Executable.resolve`).
    public func program() throws(ProviderError) -> HeadlessProgram {
        let environment = config.environment(extraEnvironment)
        return HeadlessProgram(path: try config.executable(environment), environment: environment)
    }

    /// Answers `initialize`: the program is found (else the error saying
    /// where it was looked for), the message is `describe(program)`.
    public func initialize(_ call: PluginCall, _ describe: (HeadlessProgram) -> String) {
        do { call.finish(result: ["message": .string(describe(try program()))]) } catch { call.fail(error) }
    }

    /// Runs the program with `arguments` and nothing on stdin (a version or
    /// status command) under a deadline of `timeout`, then hands `done` the
    /// program, its exit and the start of its stdout (4 KiB, escape codes
    /// removed). Cancelling the call terminates it; a program that cannot be
    /// found or started fails the call.
    public func probe(
        _ call: PluginCall, arguments: [String], timeout: Duration = .seconds(30),
        _ done: @escaping @Sendable (HeadlessProgram, ChildExit, String) -> Void
    ) {
        do {
            let p = try program()
            let out = Lock<[UInt8]>([])
            try start(call, spec(p, arguments: arguments, deadline: .now + timeout)) { _ in
                ChildHandlers(
                    stdout: { line in
                        out.withLock {
                            if $0.count < 4096 {
                                $0.append(contentsOf: line)
                                $0.append(0x0A)
                            }
                        }
                    },
                    exit: { exit in done(p, exit, out.withLock { o in o.withUnsafeBytes { ANSIStripper.clean($0) } }) })
            }
        } catch {
            call.fail(error)
        }
    }

    /// A process spec for `program` with this backend's working directory
    /// (unless `cwd` is given), limits and kill grace.
    ///
    /// - Parameters:
    ///   - input: written to stdin first.
    ///   - keepInputOpen: stdin stays open after `input` (a session);
    ///     otherwise it is closed once `input` is written.
    ///   - deadline: when the child is terminated (`config.deadline(request)`
    ///     for a call; nil for a session between turns).
    public func spec(
        _ program: HeadlessProgram, arguments: [String], input: [UInt8] = [], keepInputOpen: Bool = false,
        deadline: ContinuousClock.Instant? = nil, cwd: String? = nil, framing: ProcessSpec.Framing = .lines
    ) -> ProcessSpec {
        config.spec(
            executable: program.path, arguments: arguments, environment: program.environment, input: input,
            keepInputOpen: keepInputOpen, deadline: deadline, cwd: cwd, framing: framing)
    }

    /// Starts a child that serves `call`: `handlers(link)` reads its output
    /// (the link lets it ask the child to exit once the answer is complete,
    /// `ChildLink.done`), and cancelling the call terminates the child's
    /// process group.
    ///
    /// - Throws: `process` naming the step that failed, `backend` after
    ///   `shutdown` (the call is the caller's to fail).
    @discardableResult
    public func start(_ call: PluginCall, _ spec: ProcessSpec, _ handlers: (ChildLink) -> ChildHandlers) throws(ProviderError) -> ChildLink {
        let link = ChildLink()
        try spawn(spec, link: link, handlers: handlers(link))
        call.onCancel { link.terminate() }
        return link
    }

    /// Starts a child that outlives calls (a session: stdin kept open,
    /// `keepInputOpen`), tied to `link`. Cancelling a call is the backend's
    /// business here (an interrupt written to the child, say).
    public func spawn(_ spec: ProcessSpec, link: ChildLink, handlers: ChildHandlers) throws(ProviderError) {
        link.attach(try runner.spawn(spec, handlers: handlers))
    }

    /// Runs `attempt` now and, while it answers false (what it needs is
    /// busy: a session's turn in flight, its process starting or exiting),
    /// again every 20 ms on a detached task, until it answers true (it took
    /// the call), throws (the call fails with that), `deadline` passes
    /// (`timeout`: "`what` was still busy ...") or the call is cancelled.
    /// One turn at a time per session, without refusing the caller as busy.
    public func whenFree(
        _ call: PluginCall, deadline: ContinuousClock.Instant?, _ what: String,
        _ attempt: @escaping @Sendable () throws(ProviderError) -> Bool
    ) throws(ProviderError) {
        if try attempt() { return }
        let task = Task.detached {
            while true {
                do {
                    try await Task.sleep(for: .milliseconds(20))
                } catch {
                    return call.fail(ProviderError(.cancelled, "the request was cancelled while waiting for \(what)"))
                }
                if let deadline, ContinuousClock.now >= deadline {
                    return call.fail(
                        ProviderError(.timeout, "\(what) was still busy with another turn when the deadline passed", deadline: "total"))
                }
                do throws(ProviderError) {
                    if try attempt() { return }
                } catch {
                    return call.fail(error)
                }
            }
        }
        call.onCancel { task.cancel() }
    }

    /// Ends every child (stdin closed, SIGTERM, SIGKILL after the kill
    /// grace) and answers once all are reaped.
    public func shutdown(_ call: PluginCall) {
        runner.shutdown { call.finish(result: [:]) }
    }
}

/// A program found for a headless backend, with the environment it runs in.
public struct HeadlessProgram: Sendable {
    /// The absolute path given to `execve`.
    public var path: String
    public var environment: [String: String]

    public init(path: String, environment: [String: String]) {
        self.path = path
        self.environment = environment
    }

    /// The file name, for messages ("claude").
    public var name: String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}

/// Reads one child's output on the runner's thread (see `ChildHandlers`):
/// stdout as lines (or chunks), stderr as lines, then the exit, once.
public protocol ChildReader: AnyObject, Sendable {
    func stdout(_ bytes: UnsafeRawBufferPointer)
    func stderr(_ bytes: UnsafeRawBufferPointer)
    func exited(_ exit: ChildExit)
}

extension ChildHandlers {
    /// Handlers that hand everything to `reader`.
    public init(_ reader: some ChildReader) {
        self.init(stdout: { reader.stdout($0) }, stderr: { reader.stderr($0) }, exit: { reader.exited($0) })
    }
}
