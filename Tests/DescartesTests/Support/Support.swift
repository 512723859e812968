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
    /// Set when the run reached its timeout: what was still running or
    /// holding the output pipes then (each killed), e.g. "12345 (sleep)".
    var timedOut: [String]? = nil
    var description: String {
        let limit = timedOut.map { " (killed at its timeout; still there then: \($0.isEmpty ? "nothing" : $0.joined(separator: ", ")))" } ?? ""
        return "status \(status)\(signal.map { " signal \($0)" } ?? "")\(limit)\nstdout: \(stdout)\nstderr: \(stderr)"
    }
}

/// Runs programs for tests: argv (no shell), environment, stdin, a deadline.
///
/// `run` waits on a thread of its own and the test awaits it, so tests never
/// block Swift's cooperative pool (whose threads the host's callers share).
///
/// The timeout is absolute: at it, the program's process group, every
/// process descended from it (an isolation helper has a group of its own)
/// and every process still holding its output pipes (a grandchild that left
/// the tree, such as a crash reporter) are killed, and the run returns with
/// what it read so far. Nothing is waited for past it: not the pipes' end
/// of file, not the exit, not a child that never reads its stdin.
enum Proc {
    static func run(
        _ argv: [String], env: [String: String]? = nil, stdin: String? = nil, timeout: Duration = .seconds(120)
    ) async -> ProcResult {
        await withCheckedContinuation { c in
            onThread { c.resume(returning: runBlocking(argv, env: env, stdin: stdin, timeout: timeout)) }
        }
    }

    /// Runs `body` on a new detached thread; where no thread can be started
    /// (the process is at its thread limit), on this one: late beats never.
    static func onThread(_ body: @escaping @Sendable () -> Void) {
        if !detachThread(body) { body() }
    }

    /// How long a killed program may take to be reaped before the run
    /// gives up on its exit status (a process in uninterruptible sleep).
    static let reapWithin: Duration = .seconds(5)

    static func runBlocking(
        _ argv: [String], env: [String: String]? = nil, stdin: String? = nil,
        timeout: Duration = .seconds(120)
    ) -> ProcResult {
        let start = ContinuousClock.now
        let deadline = start + timeout
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
        // The pipes' inode: what a process holding them points at in /proc.
        var st = stat()
        let pipeInodes: Set<UInt64> = Set([outPipe[0], errPipe[0]].compactMap { fstat($0, &st) == 0 ? UInt64(st.st_ino) : nil })
        // stdin is written as the child takes it, in the same loop: a child
        // that never reads it, or writes a full pipe of output first, cannot
        // block the run.
        let input = Array((stdin ?? "").utf8)
        var written = 0
        if input.isEmpty {
            close(inPipe[1])
            inPipe[1] = -1
        } else {
            _ = fcntl(inPipe[1], F_SETFL, fcntl(inPipe[1], F_GETFL) | O_NONBLOCK)
        }
        // A child that exits without reading all of it: EPIPE, not SIGPIPE
        // (blocked on this thread for the run; one raised is taken back).
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        var previousMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &previousMask)
        defer {
            var now = timespec(tv_sec: 0, tv_nsec: 0)
            while sigtimedwait(&pipeSignal, nil, &now) == SIGPIPE {}
            pthread_sigmask(SIG_SETMASK, &previousMask, nil)
        }
        // The child's exit, seen in the same poll (a child that closes its
        // output and keeps running must not block the run either).
        let pidfd = dsc_pidfd_open(pid)
        var exited = false
        var out: [UInt8] = []
        var err: [UInt8] = []
        var timeline: [(at: Duration, text: String)] = []
        // 0: stdout, 1: stderr, 2: stdin, 3: the child's pidfd (-1: done or absent).
        var fds = [
            pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0),
            pollfd(fd: inPipe[1], events: Int16(POLLOUT), revents: 0), pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0),
        ]
        var buf = [UInt8](repeating: 0, count: 65536)
        func take(_ i: Int) {
            let n = read(fds[i].fd, &buf, buf.count)
            if n < 0 && (errno == EINTR || errno == EAGAIN) { return }
            if n <= 0 {
                close(fds[i].fd)
                fds[i].fd = -1
            } else if i == 0 {
                out.append(contentsOf: buf[0..<n])
                timeline.append((ContinuousClock.now - start, String(decoding: buf[0..<n], as: UTF8.self)))
            } else {
                err.append(contentsOf: buf[0..<n])
            }
        }
        var timedOut: [String]? = nil
        while fds[0].fd >= 0 || fds[1].fd >= 0 || !exited {
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                timedOut = killTree(pid, holding: pipeInodes)
                // What is already in the pipes, without waiting for more.
                for i in 0..<2 where fds[i].fd >= 0 {
                    _ = fcntl(fds[i].fd, F_SETFL, fcntl(fds[i].fd, F_GETFL) | O_NONBLOCK)
                    for _ in 0..<64 where fds[i].fd >= 0 {
                        let before = out.count + err.count
                        take(i)
                        if out.count + err.count == before { break }
                    }
                }
                break
            }
            if !exited && pidfd < 0 && dsc_exited(pid) == 1 { exited = true }
            // Without a pidfd (kernels before 5.3) the exit is checked between polls.
            let ms = max(1, min(pidfd < 0 ? 50 : 1000, remaining.milliseconds))
            let r = poll(&fds, 4, Int32(ms))
            if r < 0 && errno == EINTR { continue }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 { take(i) }
            if fds[2].fd >= 0 && fds[2].revents != 0 {
                let n = input.withUnsafeBytes { write(fds[2].fd, $0.baseAddress! + written, $0.count - written) }
                if n > 0 { written += n }
                if (n < 0 && errno != EAGAIN && errno != EINTR) || written == input.count {
                    close(fds[2].fd)
                    fds[2].fd = -1
                }
            }
            if fds[3].fd >= 0 && fds[3].revents != 0 {
                exited = true
                fds[3].fd = -1
            }
        }
        for i in 0..<3 where fds[i].fd >= 0 { close(fds[i].fd) }
        if pidfd >= 0 { close(pidfd) }
        // Reaped at once when it exited; killed, within `reapWithin`.
        var status: Int32 = 0
        var unreaped: String? = nil
        let reapBy = ContinuousClock.now + reapWithin
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno == EINTR { continue }
            if r < 0 {
                unreaped = "waitpid: \(String(cString: strerror(errno)))"
                break
            }
            if ContinuousClock.now >= reapBy {
                unreaped = "still not reaped \(reapWithin) after its end"
                break
            }
            usleep(10_000)
        }
        if let unreaped {
            return ProcResult(
                status: -1, signal: nil, stdout: String(decoding: out, as: UTF8.self),
                stderr: String(decoding: err, as: UTF8.self) + "\n[Proc: pid \(pid) (\(argv[0])): \(unreaped)]",
                duration: ContinuousClock.now - start, stdoutTimeline: timeline, timedOut: timedOut)
        }
        let exitedNormally = status & 0x7f == 0
        return ProcResult(
            status: exitedNormally ? (status >> 8) & 0xff : -1, signal: exitedNormally ? nil : status & 0x7f,
            stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self),
            duration: ContinuousClock.now - start, stdoutTimeline: timeline, timedOut: timedOut)
    }

    /// A long-running child (a test server) on two pipes: `toChild` is its
    /// stdin (closing it is how these servers are told to stop), `fromChild`
    /// its stdout, where it says it is ready.
    struct PipedChild {
        let pid: pid_t
        let toChild: Int32
        let fromChild: Int32
    }

    struct SpawnError: Error, CustomStringConvertible { var description: String }

    /// Spawns `argv` (looked up on PATH) with pipes on stdin and stdout,
    /// both close-on-exec here from the start (see `runBlocking`); stderr is
    /// inherited, or appended to `stderrFile`; `env` nil: this process's.
    static func spawnPiped(_ argv: [String], env: [String: String]? = nil, stderrFile: String? = nil) throws(SpawnError) -> PipedChild {
        var inPipe: [Int32] = [0, 0]
        var outPipe: [Int32] = [0, 0]
        dsc_pipe(&inPipe)
        dsc_pipe(&outPipe)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        if let stderrFile { posix_spawn_file_actions_addopen(&actions, 2, stderrFile, O_WRONLY | O_CREAT | O_APPEND, 0o644) }
        defer { posix_spawn_file_actions_destroy(&actions) }
        let cargs = argv.map { strdup($0) } + [nil]
        let cenv = (env ?? Environment.current()).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in cargs { free(p) }
            for p in cenv { free(p) }
        }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, cargs, cenv)
        close(inPipe[0])
        close(outPipe[1])
        guard rc == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            throw SpawnError(description: "cannot start \(argv[0]): \(String(cString: strerror(rc)))")
        }
        return PipedChild(pid: pid, toChild: inPipe[1], fromChild: outPipe[0])
    }

    /// Reads one line (without its newline) from `fd`, keeping what came
    /// after it in `pending` for the next call; nil at end of file, on an
    /// error, or when `deadline` passes first.
    static func readLine(_ fd: Int32, _ pending: inout [UInt8], until deadline: ContinuousClock.Instant) -> String? {
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeFirst(nl + 1)
                return line
            }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(max(1, min(1000, remaining.milliseconds))))
            if r < 0 && errno == EINTR { continue }
            if r < 0 { return nil }
            if r == 0 { continue }
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            pending.append(contentsOf: buf[0..<n])
        }
    }

    /// Kills `pid`'s process group, every process descended from `pid` (with
    /// its group, when that is not the test runner's) and every other
    /// process holding a pipe whose inode is in `pipes`; returns them as
    /// "PID (name)", the holders marked. Never this process or its group.
    static func killTree(_ pid: pid_t, holding pipes: Set<UInt64>) -> [String] {
        let me = getpid()
        let myGroup = getpgrp()
        // pid -> (parent, group, name) from /proc/PID/stat: "pid (name) state ppid pgrp ...".
        var procs: [pid_t: (ppid: pid_t, pgrp: pid_t, name: String)] = [:]
        for entry in (try? FileSystem.list("/proc")) ?? [] {
            guard let p = pid_t(entry), let line = try? FileSystem.readText("/proc/\(p)/stat", limit: 4096),
                let nameStart = line.firstIndex(of: "("), let nameEnd = line.lastIndex(of: ")")
            else { continue }
            let fields = line[line.index(after: nameEnd)...].split(separator: " ")
            guard fields.count >= 3, let ppid = pid_t(fields[1]), let pgrp = pid_t(fields[2]) else { continue }
            procs[p] = (ppid, pgrp, String(line[line.index(after: nameStart)..<nameEnd]))
        }
        var tree: [pid_t] = [pid]
        var i = 0
        while i < tree.count {
            let parent = tree[i]
            let known = tree
            let children = procs.filter { $0.value.ppid == parent && !known.contains($0.key) }.map(\.key).sorted()
            tree += children
            i += 1
        }
        var holders: [pid_t] = []
        for (p, _) in procs where p != me && !tree.contains(p) {
            let fdDir = "/proc/\(p)/fd"
            for fd in (try? FileSystem.list(fdDir)) ?? [] {
                var link = [CChar](repeating: 0, count: 64)
                let n = readlink(FileSystem.join(fdDir, fd), &link, link.count - 1)
                guard n > 0 else { continue }
                let target = String(decoding: link[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                guard target.hasPrefix("pipe:["),
                    let inode = UInt64(target.dropFirst(6).dropLast()), pipes.contains(inode)
                else { continue }
                holders.append(p)
                break
            }
        }
        kill(-pid, SIGKILL)
        var named: [String] = []
        for p in tree + holders where p != me {
            if let g = procs[p]?.pgrp, g != myGroup, g > 1 { kill(-g, SIGKILL) }
            kill(p, SIGKILL)
            named.append("\(p) (\(procs[p]?.name ?? "?"))\(holders.contains(p) ? " holding its output" : "")")
        }
        return named
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

/// A loopback port that refuses connections and that no other test can take
/// while this lives: a socket bound to it that never listens. (A port freed
/// for the test was seen bound again by another test's server running beside
/// it, which then answered instead of refusing.)
final class RefusingPort: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = 0
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.port = Int(UInt16(bigEndian: a.sin_port))
    }

    deinit { close(fd) }
}
