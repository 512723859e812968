import CProcessShim
import Descartes
import Glibc
import Testing
import DescartesSupport

/// Where things are when the tests run.
enum TestEnv {
    /// The package root (this file is Tests/DescartesTests/Support/Support.swift).
    static let root: String = {
        var p = #filePath
        for _ in 0..<4 { p = FileSystem.directory(of: p) }
        return p
    }()

    /// SwiftPM's bin directory: the test runner lives there, beside the
    /// plugin libraries and the `descartes` executable.
    static let binDir: String = FileSystem.directory(of: FileSystem.executablePath()!)

    static var descartes: String { FileSystem.join(binDir, "descartes") }

    /// The prefix `make test` installed into, if the tests run through it.
    static let prefix: String? = Environment.get("DESCARTES_TEST_PREFIX").flatMap { $0.isEmpty ? nil : $0 }

    static func swiftPlugin(_ name: String) -> String { FileSystem.join(binDir, "libdescartes-\(name).so") }
}

/// A finished child process.
struct ProcResult: CustomStringConvertible {
    var status: Int32
    var signal: Int32?
    var stdout: String
    var stderr: String
    var duration: Duration
    /// When each piece of stdout arrived, from the start.
    var stdoutTimeline: [(at: Duration, text: String)] = []
    var description: String { "status \(status)\(signal.map { " signal \($0)" } ?? "")\nstdout: \(stdout)\nstderr: \(stderr)" }
}

/// Runs programs for tests: argv (no shell), environment, stdin, a deadline.
///
/// `run` waits on a thread of its own and the test awaits it, so tests never
/// block Swift's cooperative pool (whose threads the host's callers share).
enum Proc {
    static func run(
        _ argv: [String], env: [String: String]? = nil, stdin: String? = nil, timeout: Duration = .seconds(120)
    ) async -> ProcResult {
        await withCheckedContinuation { c in
            onThread { c.resume(returning: runBlocking(argv, env: env, stdin: stdin, timeout: timeout)) }
        }
    }

    /// Runs `body` on a new detached thread.
    static func onThread(_ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> Void
            init(_ b: @escaping @Sendable () -> Void) { body = b }
        }
        var tid = pthread_t()
        let arg = Unmanaged.passRetained(Box(body)).toOpaque()
        pthread_create(&tid, nil, { p in
            Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().body()
            return nil
        }, arg)
        pthread_detach(tid)
    }

    static func runBlocking(
        _ argv: [String], env: [String: String]? = nil, stdin: String? = nil,
        timeout: Duration = .seconds(120)
    ) -> ProcResult {
        let start = ContinuousClock.now
        var inPipe: [Int32] = [0, 0]
        var outPipe: [Int32] = [0, 0]
        var errPipe: [Int32] = [0, 0]
        for i in 0..<3 {
            var fds: [Int32] = [0, 0]
            // Close-on-exec from the start: with pipe() then fcntl(), a
            // spawn on another thread in between inherits the write end and
            // this read never sees its end of file.
            dsc_pipe(&fds)
            if i == 0 { inPipe = fds } else if i == 1 { outPipe = fds } else { errPipe = fds }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attr, 0)
        let environment = env ?? Environment.current()
        let envStrings = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let cargs = argv.map { strdup($0) } + [nil]
        let cenv = envStrings.map { strdup($0) } + [nil]
        let rc = posix_spawnp(&pid, argv[0], &actions, &attr, cargs, cenv)
        for p in cargs { free(p) }
        for p in cenv { free(p) }
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attr)
        close(inPipe[0])
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            close(errPipe[0])
            return ProcResult(status: 127, signal: nil, stdout: "", stderr: "spawn \(argv[0]): \(String(cString: strerror(rc)))", duration: .zero)
        }
        if let stdin {
            var bytes = Array(stdin.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(inPipe[1], $0.baseAddress! + off, $0.count - off) }
                if n <= 0 { break }
                off += n
            }
        }
        close(inPipe[1])
        var out: [UInt8] = []
        var err: [UInt8] = []
        var timeline: [(at: Duration, text: String)] = []
        var fds = [pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        var open = 2
        var buf = [UInt8](repeating: 0, count: 65536)
        var killed = false
        while open > 0 {
            let remaining = timeout - (ContinuousClock.now - start)
            if remaining <= .zero && !killed {
                kill(-pid, SIGKILL)
                killed = true
            }
            let ms = killed ? 1000 : max(1, min(1000, remaining.milliseconds))
            let r = poll(&fds, 2, Int32(ms))
            if r < 0 && errno == EINTR { continue }
            if r == 0 && killed { break }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &buf, buf.count)
                if n <= 0 {
                    close(fds[i].fd)
                    fds[i].fd = -1
                    open -= 1
                } else if i == 0 {
                    out.append(contentsOf: buf[0..<n])
                    timeline.append((ContinuousClock.now - start, String(decoding: buf[0..<n], as: UTF8.self)))
                } else {
                    err.append(contentsOf: buf[0..<n])
                }
            }
        }
        for f in fds where f.fd >= 0 { close(f.fd) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        return ProcResult(
            status: exited ? (status >> 8) & 0xff : -1, signal: exited ? nil : status & 0x7f,
            stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self),
            duration: ContinuousClock.now - start, stdoutTimeline: timeline)
    }

    /// Runs the `descartes` CLI built by this package.
    static func descartes(_ args: [String], env: [String: String] = [:], stdin: String? = nil, timeout: Duration = .seconds(60)) async -> ProcResult {
        var e = Environment.current()
        e["NO_COLOR"] = "1"
        e["DESCARTES_PLUGIN_PATH"] = nil
        for (k, v) in env { e[k] = v }
        return await run([TestEnv.descartes] + args, env: e, stdin: stdin, timeout: timeout)
    }
}

/// A temporary directory, removed when the value is deinitialized.
final class TempDir: @unchecked Sendable {
    let path: String

    init(_ tag: String = "descartes-test") {
        var template = Array("/tmp/\(tag)-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    // Removed with system calls, not by spawning `rm`: a deinit runs on
    // whatever thread dropped the last reference, often one of the
    // cooperative pool's few threads, which other tests' timing depends on.
    deinit { TempDir.removeTree(path) }

    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            for name in (try? FileSystem.list(path)) ?? [] { removeTree(FileSystem.join(path, name)) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    func file(_ name: String) -> String { FileSystem.join(path, name) }

    @discardableResult
    func write(_ name: String, _ text: String, mode: mode_t = 0o644) -> String {
        let p = file(name)
        try! FileSystem.makeDirectories(FileSystem.directory(of: p))
        // A plain write (no fsync): a test's files need not survive a crash.
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        precondition(fd >= 0, "cannot write \(p)")
        var bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 && errno == EINTR { continue }
            precondition(n > 0, "cannot write \(p)")
            off += n
        }
        fchmod(fd, mode)
        close(fd)
        return p
    }

    func symlink(_ target: String, _ name: String) {
        Glibc.symlink(target, file(name))
    }
}

enum CCompiler {
    /// Compiles C sources into a shared library (awaiting the compiler on a
    /// thread of its own, not the cooperative pool).
    static func sharedLibrary(_ sources: [String], output: String, flags: [String] = [], compiler: String = "cc") async -> ProcResult {
        await Proc.run(
            [compiler, "-std=c11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread",
             "-I", FileSystem.join(TestEnv.root, "Sources/CDescartesPlugin/include"), "-I", CCompiler.helpers] + flags + sources + ["-o", output], timeout: .seconds(120))
    }

    /// Where the helpers for C plugins (descartes/json.h, descartes/sse.h)
    /// are in the checkout; `make install` puts them beside plugin.h.
    static let helpers = FileSystem.join(TestEnv.root, "Plugins/CKit/include")

    /// The C example plugin (Plugins/EchoC/echo.c): the one `make test`
    /// built with the installed header, else compiled once for this run.
    static let echoLibrary: String = {
        if let prefix = TestEnv.prefix {
            let built = "\(prefix)/lib/descartes/plugins/libdescartes-echo.so"
            if FileSystem.exists(built) { return built }
        }
        let dir = TempDir("descartes-echo")
        let out = dir.file("libdescartes-echo.so")
        let r = Proc.runBlocking(
            ["cc", "-std=c11", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread", "-I", FileSystem.join(TestEnv.root, "Sources/CDescartesPlugin/include"),
             "-I", helpers, FileSystem.join(TestEnv.root, "Plugins/EchoC/echo.c"), "-o", out], env: nil, stdin: nil, timeout: .seconds(120))
        precondition(r.status == 0, "cannot compile the echo plugin: \(r)")
        keep.withLock { $0.append(dir) }
        return out
    }()

    /// The C example plugin as of ABI 1.0, compiled against the frozen 1.0
    /// header (Tests/Fixtures/abi-1.0), never the current one: what a third
    /// party built before 1.1 existed. Compiled once for this run.
    static let abi10EchoLibrary: String = {
        let dir = TempDir("descartes-abi10")
        let out = dir.file("libdescartes-echo10.so")
        let fixture = FileSystem.join(TestEnv.root, "Tests/Fixtures/abi-1.0")
        let r = Proc.runBlocking(
            ["cc", "-std=c11", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread", "-I", fixture,
             FileSystem.join(fixture, "echo.c"), "-o", out], env: nil, stdin: nil, timeout: .seconds(120))
        precondition(r.status == 0, "cannot compile the ABI 1.0 echo plugin: \(r)")
        keep.withLock { $0.append(dir) }
        return out
    }()

    /// Keeps compiled fixtures' directories alive for the whole run.
    static let keep = Lock<[TempDir]>([])
}

/// A plugin directory for a test, holding chosen manifests and libraries.
final class PluginDir: @unchecked Sendable {
    let dir = TempDir("descartes-plugins")
    var path: String { dir.path }

    /// The scripted test plugin with its manifest, under `provider`.
    @discardableResult
    func addScripted(provider: String = "scripted", extraConfig: String = "", prices: Bool = true) -> PluginDir {
        let lib = TestEnv.swiftPlugin("scripted")
        dir.write(
            "\(provider).yaml",
            """
            manifest_version: 1
            provider: \(provider)
            version: 0.1.0
            description: scripted test fixture
            library: \(lib)
            factory: scripted
            abi: 1
            mode: local
            capabilities: [stream, tools]
            default_model: scripted-small
            models:
              - id: scripted-small
                context: 4096
            \(prices ? "    price: {input: 1.0, output: 2.0, cache_read: 0.1}" : "")
            config:
              greeting: {type: string, default: hello}
              init_delay_ms: {type: integer, default: 0}
              fail_init: {type: string}
              token: {type: string, secret: true, env: SCRIPTED_TEST_TOKEN}
              timeout_secs: {type: integer}
              default_script: {type: list}
            \(extraConfig)
            """)
        return self
    }

    /// The C echo plugin with the repository's manifest.
    @discardableResult
    func addEcho() -> PluginDir {
        dir.symlink(CCompiler.echoLibrary, "libdescartes-echo.so")
        let manifest = try! FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/echo.yaml"), limit: 1 << 20)
        dir.write("echo.yaml", manifest)
        return self
    }

    /// The ABI 1.0 echo plugin (`CCompiler.abi10EchoLibrary`) as provider
    /// `provider`, with the echo manifest.
    @discardableResult
    func addEcho10(provider: String = "echo10") -> PluginDir {
        dir.symlink(CCompiler.abi10EchoLibrary, "libdescartes-\(provider).so")
        let manifest = try! FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/echo.yaml"), limit: 1 << 20)
        let lines = manifest.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            if line == "provider: echo" { return "provider: \(provider)" }
            if line.hasPrefix("library: ") { return "library: libdescartes-\(provider).so" }
            return String(line)
        }
        dir.write("\(provider).yaml", lines.joined(separator: "\n"))
        return self
    }

    /// A repository manifest (`manifests/<provider>.yaml`) with the Swift
    /// plugin library it names, built by this package, beside it.
    @discardableResult
    func addManifest(_ provider: String) -> PluginDir {
        let manifest = try! FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/\(provider).yaml"), limit: 1 << 20)
        dir.write("\(provider).yaml", manifest)
        for line in manifest.split(separator: "\n") where line.hasPrefix("library: ") {
            let lib = String(line.dropFirst("library: ".count)).split(separator: " ")[0]
            let name = String(lib.dropFirst("libdescartes-".count).dropLast(".so".count))
            if access(dir.file(String(lib)), F_OK) != 0 { dir.symlink(TestEnv.swiftPlugin(name), String(lib)) }
        }
        return self
    }

    func factory(environment: [String: String] = [:], clock: DescartesClock = .continuous) -> ProviderFactory {
        let search = PluginSearch(directories: [.init(path: path, origin: "test")])
        return ProviderFactory(catalog: .discover(search), environment: environment, clock: clock, logSink: LogCapture.shared.sink)
    }
}

extension ModelRequest {
    /// A request scripted for the test plugin.
    static func script(_ steps: [String], prompt: String = "hello scripted world", deadlines: Deadlines = Deadlines(), options: JSONObject = [:]) -> ModelRequest {
        var o = options
        o["script"] = .array(steps.map { .string($0) })
        return ModelRequest(messages: [.user(prompt)], options: o, deadlines: deadlines)
    }
}

/// The error a throwing expression threw, as a ProviderError.
func providerError(_ body: () async throws -> Void) async -> ProviderError? {
    do {
        try await body()
        return nil
    } catch let e as ProviderError {
        return e
    } catch {
        Issue.record("expected a ProviderError, got \(error)")
        return nil
    }
}
