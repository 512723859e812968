import Glibc

/// The configuration every headless backend shares, read from the keys its
/// manifest declares (docs/headless.md lists them):
///
/// | key | type | meaning |
/// | --- | --- | --- |
/// | `command` | string | program: a bare name looked up in the absolute `PATH` entries, or an absolute path |
/// | `args` | list | extra arguments |
/// | `timeout_secs` | integer | total deadline of a request (the host enforces it too) |
/// | `cwd` | string | absolute working directory (default: the host's) |
/// | `env` | map | variables set for the child |
/// | `pass_env` | list | inherited variables kept although they look like credentials (`NAME` or `PREFIX*`) |
/// | `no_new_privs` | boolean | `PR_SET_NO_NEW_PRIVS` in the child (default true) |
/// | `limit_cpu_seconds`, `limit_memory_mb`, `limit_open_files`, `limit_processes`, `limit_file_size_mb` | integer | rlimits applied in the child |
/// | `nice` | integer | scheduling niceness of the child (1-19) |
/// | `max_output_mb` | integer | stdout + stderr before the child is killed |
/// | `kill_grace_ms` | integer | SIGTERM to SIGKILL |
/// | `exit_grace_ms` | integer | how long a child may linger after its final event |
public struct HeadlessConfig: Sendable {
    public var command: String
    public var args: [String]
    public var cwd: String?
    public var env: [String: String]
    public var passEnv: [String]
    public var timeout: Duration?
    public var limits: ProcessLimits
    public var killGrace: Duration
    public var exitGrace: Duration

    /// Reads and checks the shared keys.
    /// - Throws: `config` naming the key and the value at fault.
    public init(_ c: BackendContext, defaultCommand: String) throws(ProviderError) {
        func nonNegative(_ key: String) throws(ProviderError) -> Int? {
            guard let v = c.int(key) else { return nil }
            guard v >= 0 else { throw ProviderError(.config, "key '\(key)': must not be negative, got \(v)") }
            return v == 0 ? nil : v
        }
        command = c.string("command").flatMap { $0.isEmpty ? nil : $0 } ?? defaultCommand
        if command.contains("/") && !command.hasPrefix("/") {
            throw ProviderError(
                .config,
                "key 'command': '\(command)' is a relative path; give an absolute path or a bare name looked up in PATH (the current directory is never searched)"
            )
        }
        args = c.list("args") ?? []
        if let dir = c.string("cwd"), !dir.isEmpty {
            guard dir.hasPrefix("/") else {
                throw ProviderError(.config, "key 'cwd': '\(dir)' is not an absolute path")
            }
            cwd = dir
        } else {
            cwd = nil
        }
        env = c.map("env") ?? [:]
        for name in env.keys where name.isEmpty || name.contains("=") {
            throw ProviderError(.config, "key 'env': '\(name)' is not a valid variable name")
        }
        passEnv = c.list("pass_env") ?? []
        timeout = try nonNegative("timeout_secs").map { .seconds($0) }
        let mb = 1 << 20
        limits = ProcessLimits(
            noNewPrivileges: c.bool("no_new_privs") ?? true,
            cpuSeconds: try nonNegative("limit_cpu_seconds"),
            memoryBytes: try nonNegative("limit_memory_mb").map { $0 * mb },
            openFiles: try nonNegative("limit_open_files"),
            fileSizeBytes: try nonNegative("limit_file_size_mb").map { $0 * mb },
            processes: try nonNegative("limit_processes"),
            maxOutputBytes: (try nonNegative("max_output_mb") ?? 256) * mb,
            niceness: try nonNegative("nice"))
        if let n = limits.niceness, n > 19 { throw ProviderError(.config, "key 'nice': must be 0 to 19, got \(n)") }
        killGrace = .milliseconds(try nonNegative("kill_grace_ms") ?? 2000)
        exitGrace = .milliseconds(try nonNegative("exit_grace_ms") ?? 2000)
    }

    /// The child's environment: the host's, scrubbed, with `pass_env` kept,
    /// then `env`, then `extra` (what the plugin sets, secrets included).
    public func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var set = env
        for (k, v) in extra { set[k] = v }
        return ChildEnvironment.build(base: ChildEnvironment.host(), passEnv: passEnv, set: set)
    }

    /// The executable, looked up in the child's own `PATH`.
    public func executable(_ environment: [String: String]) throws(ProviderError) -> String {
        try Executable.resolve(command, searchPath: environment["PATH"])
    }

    /// When a request must be over: the earlier of its total deadline (the
    /// host puts its effective deadlines in every request) and `timeout_secs`.
    public func deadline(_ request: ModelRequest, from start: ContinuousClock.Instant = .now) -> ContinuousClock.Instant? {
        switch (request.deadlines.total, timeout) {
        case (let a?, let b?): return start + min(a, b)
        case (let a?, nil): return start + a
        case (nil, let b?): return start + b
        default: return nil
        }
    }

    /// A process spec with this configuration's directory and limits.
    public func spec(
        executable: String, arguments: [String], environment: [String: String], input: [UInt8] = [],
        keepInputOpen: Bool = false, deadline: ContinuousClock.Instant? = nil, cwd: String? = nil,
        framing: ProcessSpec.Framing = .lines
    ) -> ProcessSpec {
        ProcessSpec(
            executable: executable, arguments: arguments, environment: environment, workingDirectory: cwd ?? self.cwd,
            input: input, keepInputOpen: keepInputOpen, limits: limits, deadline: deadline, killGrace: killGrace,
            stdoutFraming: framing)
    }
}
