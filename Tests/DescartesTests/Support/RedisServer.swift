import Descartes
import Glibc
import DescartesSupport

/// A real `redis-server` (Debian's, support/deps.sh test) on a free port of
/// 127.0.0.1, for the shared-state tests: no persistence, no service, the
/// process killed when the value goes (and the suite's shared one at exit).
final class RedisServer: @unchecked Sendable {
    let port: Int
    private let state = Lock<pid_t>(0)
    private let dir = TempDir("descartes-redis")

    var pid: pid_t { state.withLock { $0 } }
    var url: String { "redis://127.0.0.1:\(port)/0" }

    struct StartError: Error, CustomStringConvertible { var description: String }

    /// One server for a whole suite (each test uses its own key prefix).
    static let suite: Result<RedisServer, StartError> = {
        do {
            let s = try RedisServer()
            atexit { if case .success(let s) = RedisServer.suite { s.kill() } }
            return .success(s)
        } catch { return .failure(error as! StartError) }
    }()

    static func shared() throws -> RedisServer { try suite.get() }

    init() throws {
        port = Self.freePort()
        try start()
    }

    deinit { kill() }

    /// A port nothing listens on now (bound, then released).
    static func freePort() -> Int { RefusingPort().port }

    /// Starts (or restarts, after `kill`) the server on `port` and waits
    /// until it answers PING.
    func start() throws {
        let argv = [
            "redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", dir.path, "--logfile", "",
        ]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, "redis-server", &actions, nil, cargs, environ)
        guard rc == 0 else {
            throw StartError(description: "cannot start redis-server (\(String(cString: strerror(rc)))); support/deps.sh test installs it")
        }
        state.withLock { $0 = pid }
        var settings = SharedSettings()
        settings.port = port
        settings.retryInterval = .milliseconds(20)
        let probe = SharedStore(settings: settings, logSink: LogSink(handler: { _, _, _ in }))
        for _ in 0..<200 {
            if case .success = probe.ping() { return }
            usleep(25_000)
        }
        kill()
        throw StartError(description: "redis-server on 127.0.0.1:\(port) did not answer PING within 5 s")
    }

    /// SIGKILL, by pid, and reaped.
    func kill() {
        let pid = state.withLock { p -> pid_t in
            let old = p
            p = 0
            return old
        }
        guard pid > 0 else { return }
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// A store on this server for the test's own checks.
    func store(prefix: String) -> SharedStore {
        var s = SharedSettings()
        s.port = port
        s.prefix = prefix
        return SharedStore(settings: s, logSink: LogSink(handler: { _, _, _ in }))
    }
}
