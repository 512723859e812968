import DescartesCore
import Glibc
internal import CProcessShim

/// What to start: never a shell. `path` is the absolute path given to
/// `execve` (see `Spawner.search`), `arguments` the whole argv.
package struct SpawnRequest: Sendable {
    package var path: String
    package var arguments: [String]
    /// The complete environment.
    package var environment: [String: String]
    package var workingDirectory: String?
    /// The child's 0, 1 and 2 (any descriptors; the caller keeps them).
    /// stdin -1: /dev/null.
    package var stdin: Int32
    package var stdout: Int32
    package var stderr: Int32
    /// A descriptor the child gets as its fd 3, or -1.
    package var fd3: Int32
    package var limits: ProcessLimits

    package init(
        path: String, arguments: [String], environment: [String: String], workingDirectory: String? = nil,
        stdin: Int32, stdout: Int32, stderr: Int32, fd3: Int32 = -1, limits: ProcessLimits = ProcessLimits()
    ) {
        self.path = path
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.fd3 = fd3
        self.limits = limits
    }
}

/// Why a child could not be started: the step that failed and the system's
/// reason ("chdir /x: No such file or directory").
package struct SpawnError: Error, Sendable, CustomStringConvertible {
    package var errno: Int32
    package var step: String
    package init(errno: Int32, step: String) {
        self.errno = errno
        self.step = step
    }
    package var description: String { "\(step): \(String(cString: strerror(errno)))" }
}

/// The one way the project starts a child process: the kit's process runtime
/// (headless plugins), the isolation helper and credential helpers all come
/// here. Over `dsc_spawn` (Sources/CProcessShim): the child runs in a new
/// process group with default signal dispositions, an empty signal mask,
/// only the descriptors it is given, and its limits applied between fork
/// and exec. It gets SIGKILL when the host dies (PR_SET_PDEATHSIG), and a
/// reaper process kills its whole group if the host dies before reaping it.
package enum Spawner {
    /// Starts the child and returns its pid once it has called `execve`.
    /// A script written a moment ago may still be open for writing in a
    /// child another thread is starting ("text file busy"): that is retried
    /// for half a second.
    package static func spawn(_ r: SpawnRequest) throws(SpawnError) -> Int32 {
        // dsc_spawn takes descriptors >= 3 for 0, 1, 2 (so installing one can
        // never clobber another): copies of any below.
        var copies: [Int32] = []
        defer { for fd in copies { close(fd) } }
        func above2(_ fd: Int32) throws(SpawnError) -> Int32 {
            if fd >= 3 { return fd }
            let c = dsc_dup_above(fd, 3)
            guard c >= 0 else { throw SpawnError(errno: Glibc.errno, step: "dup") }
            copies.append(c)
            return c
        }
        if r.stdin < 0 {
            let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard null >= 0 else { throw SpawnError(errno: Glibc.errno, step: "open /dev/null") }
            copies.append(null)
        }
        let (stdin, stdout, stderr) = (try above2(r.stdin < 0 ? copies[0] : r.stdin), try above2(r.stdout), try above2(r.stderr))
        let envp = r.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = -1
        var stage: Int32 = 0
        var rc: Int32 = 0
        for attempt in 0..<21 {
            if attempt > 0 { usleep(25_000) }
            rc = withCStrings(r.arguments) { argv in
                withCStrings(envp) { env in
                    r.path.withCString { path in
                        withOptionalCString(r.workingDirectory) { cwd in
                            var q = dsc_spawn_request_t(
                                path: path, argv: argv, envp: env, cwd: cwd, stdin_fd: stdin, stdout_fd: stdout, stderr_fd: stderr,
                                fd3: r.fd3, no_new_privs: r.limits.noNewPrivileges ? 1 : 0,
                                cpu_seconds: UInt64(max(0, r.limits.cpuSeconds ?? 0)),
                                address_space: UInt64(max(0, r.limits.memoryBytes ?? 0)),
                                open_files: UInt64(max(0, r.limits.openFiles ?? 0)),
                                file_size: UInt64(max(0, r.limits.fileSizeBytes ?? 0)),
                                processes: UInt64(max(0, r.limits.processes ?? 0)),
                                nice: Int32(min(19, max(0, r.limits.niceness ?? 0))))
                            return dsc_spawn(&q, &pid, &stage)
                        }
                    }
                }
            }
            if !(rc == ETXTBSY && Int(stage) == DSC_STAGE_EXEC) { break }
        }
        guard rc == 0 else { throw SpawnError(errno: rc, step: stepName(stage, r)) }
        return pid
    }

    /// Call before reaping a child started here with your own `waitpid`:
    /// withdraws it from the reaper that kills the process group of every
    /// unreaped child when the host dies (see `dsc_spawn`).
    package static func forget(_ pid: Int32) { dsc_forget(pid) }

    /// Whether the child `pid` has exited, without reaping it; nil when it
    /// is no unreaped child of this process.
    package static func exited(_ pid: Int32) -> Bool? {
        let r = dsc_exited(pid)
        return r < 0 ? nil : r == 1
    }

    static func stepName(_ stage: Int32, _ r: SpawnRequest) -> String {
        switch Int(stage) {
        case DSC_STAGE_CLONE: return "fork"
        case DSC_STAGE_SETPGID: return "setpgid"
        case DSC_STAGE_DUP2: return "dup2"
        case DSC_STAGE_CHDIR: return "chdir \(r.workingDirectory ?? "")"
        case DSC_STAGE_RLIMIT: return "setrlimit"
        case DSC_STAGE_NO_NEW_PRIVS: return "prctl(PR_SET_NO_NEW_PRIVS)"
        case DSC_STAGE_EXEC: return "execve"
        case DSC_STAGE_NICE: return "setpriority"
        case DSC_STAGE_PDEATHSIG: return "prctl(PR_SET_PDEATHSIG)"
        default: return "spawn"
        }
    }

    /// A pipe, both ends close-on-exec and at descriptors >= 3.
    package static func pipe() throws(SpawnError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard dsc_pipe(&fds) == 0 else { throw SpawnError(errno: Glibc.errno, step: "pipe") }
        return (fds[0], fds[1])
    }

    /// The absolute path of the program `command` names: an absolute path as
    /// it is, a bare name looked up in the absolute entries of `searchPath`
    /// (a `PATH` value; empty and relative entries, which would mean the
    /// current directory, are skipped). Nil when there is none (see
    /// `problem` for why a path cannot run).
    package static func search(_ command: String, in searchPath: String?) -> String? {
        if command.hasPrefix("/") { return problem(command) == nil ? command : nil }
        guard !command.isEmpty, !command.contains("/") else { return nil }
        for dir in (searchPath ?? "").split(separator: ":", omittingEmptySubsequences: false).map(String.init) where dir.hasPrefix("/") {
            let candidate = dir.hasSuffix("/") ? dir + command : dir + "/" + command
            if problem(candidate) == nil { return candidate }
        }
        return nil
    }

    /// Why `path` cannot be executed, or nil when it can.
    package static func problem(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return String(cString: strerror(Glibc.errno)) }
        guard st.st_mode & S_IFMT == S_IFREG else { return "not a regular file" }
        guard access(path, X_OK) == 0 else { return "not executable (\(String(cString: strerror(Glibc.errno))))" }
        return nil
    }
}

/// "SIGSEGV", "SIGTERM", ... ("signal 34" for the others).
package func signalName(_ s: Int32) -> String {
    switch s {
    case SIGHUP: return "SIGHUP"
    case SIGINT: return "SIGINT"
    case SIGQUIT: return "SIGQUIT"
    case SIGILL: return "SIGILL"
    case SIGTRAP: return "SIGTRAP"
    case SIGABRT: return "SIGABRT"
    case SIGBUS: return "SIGBUS"
    case SIGFPE: return "SIGFPE"
    case SIGKILL: return "SIGKILL"
    case SIGSEGV: return "SIGSEGV"
    case SIGPIPE: return "SIGPIPE"
    case SIGALRM: return "SIGALRM"
    case SIGTERM: return "SIGTERM"
    case SIGXCPU: return "SIGXCPU"
    case SIGXFSZ: return "SIGXFSZ"
    default: return "signal \(s)"
    }
}

/// A NULL-terminated C string array valid during `body`.
package func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let copies = strings.map { strdup($0) } + [nil]
    defer { for c in copies { free(c) } }
    return copies.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// `s` as a C string during `body`, or NULL.
package func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}
