import Glibc
import DescartesSupport

/// Runs a provider's `api_key_helper`: a command (argv, never a shell) that
/// prints the key on its first line, so an OS credential store works without
/// a new dependency:
///
/// ```yaml
/// providers:
///   openai:
///     api_key_helper: [secret-tool, lookup, service, openai]
///     api_key_helper_ttl: 300     # seconds the key is reused; 0: run every time
/// ```
///
/// The command gets stdin from /dev/null and the process environment; it has
/// `timeout` to finish. Its output is a `Secret`, cached in this process for
/// the TTL (never written anywhere). A failure names the command (argv[0]
/// only) and the last lines of its stderr, redacted.
public enum CredentialHelper {
    public static let defaultTTL: Duration = .seconds(300)
    public static let defaultTimeout: Duration = .seconds(10)
    static let outputLimit = 64 * 1024

    private static let cache = Lock<[String: (secret: Secret, expires: ContinuousClock.Instant)]>([:])

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// The key the helper prints, from the cache when it is fresh.
    public static func key(_ argv: [String], ttl: Duration = defaultTTL, timeout: Duration = defaultTimeout) throws(Failure) -> Secret {
        let cacheKey = argv.joined(separator: "\u{0}")
        let now = ContinuousClock.now
        if ttl > .zero, let hit = cache.withLock({ $0[cacheKey] }), hit.expires > now { return hit.secret }
        let secret = try run(argv, timeout: timeout)
        Redactor.shared.register(secret)
        if ttl > .zero { cache.withLock { $0[cacheKey] = (secret, now + ttl) } }
        return secret
    }

    /// Forgets cached keys (tests; a long-lived process after a rotation).
    public static func clearCache() { cache.withLock { $0.removeAll() } }

    static func run(_ argv: [String], timeout: Duration) throws(Failure) -> Secret {
        guard let program = argv.first, !program.isEmpty else { throw Failure(description: "api_key_helper is empty") }
        if Environment.isSecureExecution && !program.hasPrefix("/") {
            throw Failure(description: "api_key_helper '\(program)' must be an absolute path when the process runs setuid/setgid")
        }
        let r: ChildProcess.Result
        do { r = try ChildProcess.run(argv, timeout: timeout, outputLimit: outputLimit) } catch {
            throw Failure(description: "api_key_helper '\(program)': \(error)")
        }
        let tail = Redactor.shared.redact(String(decoding: r.stderr.suffix(400), as: UTF8.self).trimmingSpaces)
        if r.timedOut {
            throw Failure(description: "api_key_helper '\(program)' did not finish within \(format(timeout)) and was killed")
        }
        guard r.status == 0 else {
            throw Failure(description: "api_key_helper '\(program)' exited with status \(r.status)\(tail.isEmpty ? "" : ": \(tail)")")
        }
        let text = String(decoding: r.stdout, as: UTF8.self)
        let first = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let key = first.trimmingSpaces
        guard !key.isEmpty else {
            throw Failure(description: "api_key_helper '\(program)' printed nothing on its first line\(tail.isEmpty ? "" : " (stderr: \(tail))")")
        }
        return Secret(key)
    }
}

/// A child process run to completion: argv without a shell, stdin from
/// /dev/null, stdout and stderr collected up to a limit, its own process
/// group killed when the timeout passes.
enum ChildProcess {
    struct Result {
        var status: Int32
        var stdout: [UInt8]
        var stderr: [UInt8]
        var timedOut: Bool
    }

    struct SpawnError: Error, CustomStringConvertible {
        var description: String
    }

    static func run(_ argv: [String], timeout: Duration, outputLimit: Int) throws(SpawnError) -> Result {
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else {
            throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))")
        }
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attr, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attr, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGINT, SIGTERM, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)

        let cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        var rc = posix_spawnp(&pid, argv[0], &actions, &attr, cargs, environ)
        // A script written a moment ago may still be open for writing in a
        // child another thread is starting ("text file busy"): try again.
        for _ in 0..<20 where rc == ETXTBSY {
            usleep(25_000)
            rc = posix_spawnp(&pid, argv[0], &actions, &attr, cargs, environ)
        }
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0])
            close(errPipe[0])
            throw SpawnError(description: "cannot run it: \(String(cString: strerror(rc)))")
        }
        var out: [UInt8] = []
        var err: [UInt8] = []
        var fds = [pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        var open = 2
        var buf = [UInt8](repeating: 0, count: 16384)
        let deadline = ContinuousClock.now + timeout
        var timedOut = false
        while open > 0 {
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                timedOut = true
                kill(-pid, SIGKILL)
                break
            }
            let r = poll(&fds, 2, Int32(max(1, min(1000, remaining.milliseconds))))
            if r < 0 && errno == EINTR { continue }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &buf, buf.count)
                if n <= 0 {
                    close(fds[i].fd)
                    fds[i].fd = -1
                    open -= 1
                } else if i == 0 {
                    if out.count < outputLimit { out.append(contentsOf: buf[0..<min(n, outputLimit - out.count)]) }
                } else {
                    err.append(contentsOf: buf[0..<n])
                    if err.count > 4096 { err.removeFirst(err.count - 4096) }
                }
            }
        }
        for f in fds where f.fd >= 0 { close(f.fd) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        return Result(status: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), stdout: out, stderr: err, timedOut: timedOut)
    }
}
