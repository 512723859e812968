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
package enum CredentialHelper {
    package static let defaultTTL: Duration = .seconds(300)
    package static let defaultTimeout: Duration = .seconds(10)
    static let outputLimit = 64 * 1024

    private static let cache = Lock<[String: (secret: Secret, expires: ContinuousClock.Instant)]>([:])

    package struct Failure: Error, Sendable, CustomStringConvertible {
        package var description: String
        package init(description: String) { self.description = description }
    }

    /// The key the helper prints, from the cache when it is fresh; it is
    /// registered in `redactor` (the caller's factory's), which also masks
    /// the helper's stderr quoted in a failure.
    package static func key(
        _ argv: [String], ttl: Duration = defaultTTL, timeout: Duration = defaultTimeout, redactor: Redactor = Redactor()
    ) throws(Failure) -> Secret {
        let cacheKey = argv.joined(separator: "\u{0}")
        let now = ContinuousClock.now
        if ttl > .zero, let hit = cache.withLock({ $0[cacheKey] }), hit.expires > now {
            redactor.register(hit.secret)
            return hit.secret
        }
        let secret = try run(argv, timeout: timeout, redactor: redactor)
        redactor.register(secret)
        if ttl > .zero { cache.withLock { $0[cacheKey] = (secret, now + ttl) } }
        return secret
    }

    /// Forgets cached keys (tests; a long-lived process after a rotation).
    package static func clearCache() { cache.withLock { $0.removeAll() } }

    static func run(_ argv: [String], timeout: Duration, redactor: Redactor) throws(Failure) -> Secret {
        guard let program = argv.first, !program.isEmpty else { throw Failure(description: "api_key_helper is empty") }
        if Environment.isSecureExecution && !program.hasPrefix("/") {
            throw Failure(description: "api_key_helper '\(program)' must be an absolute path when the process runs setuid/setgid")
        }
        let r: ChildProcess.Result
        do { r = try ChildProcess.run(argv, timeout: timeout, outputLimit: outputLimit) } catch {
            throw Failure(description: "api_key_helper '\(program)': cannot run it: \(error)")
        }
        let tail = redactor.redact(String(decoding: r.stderr.suffix(400), as: UTF8.self).trimmingSpaces)
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

    static func run(_ argv: [String], timeout: Duration, outputLimit: Int) throws(SpawnError) -> Result {
        // A bare name is looked up in PATH's absolute entries (never the
        // current directory); a path is taken as it is.
        guard let path = argv[0].contains("/") ? argv[0] : Spawner.search(argv[0], in: Environment.get("PATH")) else {
            throw SpawnError(errno: ENOENT, step: "not found in PATH")
        }
        let outPipe = try Spawner.pipe()
        let errPipe: (read: Int32, write: Int32)
        do throws(SpawnError) { errPipe = try Spawner.pipe() } catch {
            close(outPipe.read)
            close(outPipe.write)
            throw error
        }
        let pid: pid_t
        do throws(SpawnError) {
            // Its own process group (killed whole at the timeout), no
            // limits, the host's environment.
            pid = try Spawner.spawn(
                SpawnRequest(
                    path: path, arguments: argv, environment: Environment.current(), stdin: -1, stdout: outPipe.write,
                    stderr: errPipe.write, limits: ProcessLimits(noNewPrivileges: false)))
        } catch {
            for fd in [outPipe.read, outPipe.write, errPipe.read, errPipe.write] { close(fd) }
            throw error
        }
        close(outPipe.write)
        close(errPipe.write)
        var out: [UInt8] = []
        var err: [UInt8] = []
        var fds = [pollfd(fd: outPipe.read, events: Int16(POLLIN), revents: 0), pollfd(fd: errPipe.read, events: Int16(POLLIN), revents: 0)]
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
        Spawner.forget(pid)
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        return Result(status: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), stdout: out, stderr: err, timedOut: timedOut)
    }
}
