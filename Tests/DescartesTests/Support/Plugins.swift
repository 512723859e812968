import CProcessShim
import Descartes
import Glibc
import DescartesSupport

extension PluginDir {
    /// A Swift plugin built by this package (`libdescartes-<library>.so`)
    /// with the repository's manifest `manifests/<provider>.yaml`, exactly
    /// as `make install` lays them out.
    @discardableResult
    func addBuilt(provider: String, library: String? = nil) -> PluginDir {
        let lib = "libdescartes-\(library ?? provider).so"
        if !FileSystem.exists(dir.file(lib)) { dir.symlink(TestEnv.swiftPlugin(library ?? provider), lib) }
        let manifest = try! FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/\(provider).yaml"), limit: 1 << 20)
        dir.write("\(provider).yaml", manifest)
        return self
    }
}

/// When each piece of a child's stdout arrived: proves that a command
/// streams (writes words as they come) rather than printing at the end.
struct TimedOutput {
    var pieces: [(at: Duration, text: String)] = []
    var stderr = ""
    var status: Int32 = -1
    var text: String { pieces.map(\.text).joined() }
}

extension Proc {
    /// Runs the CLI and records the arrival time of every stdout read.
    static func descartesTimed(_ args: [String], env: [String: String] = [:], timeout: Duration = .seconds(60)) async -> TimedOutput {
        var e = Environment.current()
        e["NO_COLOR"] = "1"
        e["DESCARTES_PLUGIN_PATH"] = nil
        for (k, v) in env { e[k] = v }
        let environment = e
        return await withCheckedContinuation { c in
            onThread { c.resume(returning: timedBlocking([TestEnv.descartes] + args, env: environment, timeout: timeout)) }
        }
    }

    private static func timedBlocking(_ argv: [String], env: [String: String], timeout: Duration) -> TimedOutput {
        let start = ContinuousClock.now
        var outPipe: [Int32] = [0, 0]
        var errPipe: [Int32] = [0, 0]
        // Close-on-exec from the start (see Proc.runBlocking).
        dsc_pipe(&outPipe)
        dsc_pipe(&errPipe)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        let cargs = argv.map { strdup($0) } + [nil]
        let cenv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, cenv)
        for p in cargs { free(p) }
        for p in cenv { free(p) }
        posix_spawn_file_actions_destroy(&actions)
        close(outPipe[1])
        close(errPipe[1])
        var out = TimedOutput()
        guard rc == 0 else {
            close(outPipe[0])
            close(errPipe[0])
            out.stderr = "spawn failed: \(rc)"
            return out
        }
        var fds = [pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        var open = 2
        var buf = [UInt8](repeating: 0, count: 65536)
        var errBytes: [UInt8] = []
        while open > 0 {
            if ContinuousClock.now - start > timeout {
                kill(pid, SIGKILL)
                break
            }
            let r = poll(&fds, 2, 200)
            if r < 0 && errno == EINTR { continue }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &buf, buf.count)
                if n <= 0 {
                    close(fds[i].fd)
                    fds[i].fd = -1
                    open -= 1
                } else if i == 0 {
                    out.pieces.append((ContinuousClock.now - start, String(decoding: buf[0..<n], as: UTF8.self)))
                } else {
                    errBytes.append(contentsOf: buf[0..<n])
                }
            }
        }
        for f in fds where f.fd >= 0 { close(f.fd) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        out.status = status & 0x7f == 0 ? (status >> 8) & 0xff : -1
        out.stderr = String(decoding: errBytes, as: UTF8.self)
        return out
    }
}
