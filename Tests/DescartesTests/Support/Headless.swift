import Descartes
import Glibc
import Testing
import DescartesSupport

extension PluginDir {
    /// A plugin of this repository with its manifest from `manifests/`,
    /// pointed at the library SwiftPM built (loaded through the C ABI, like
    /// any third-party plugin).
    @discardableResult
    func addRepositoryPlugin(_ provider: String, library: String) -> PluginDir {
        let text = try! FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/\(provider).yaml"), limit: 1 << 20)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            line.hasPrefix("library:") ? "library: \(TestEnv.swiftPlugin(library))" : String(line)
        }
        dir.write("\(provider).yaml", lines.joined(separator: "\n"))
        return self
    }
}

enum HeadlessFixtures {
    static func path(_ name: String) -> String { FileSystem.join(TestEnv.root, "Tests/Fixtures/headless/\(name)") }
}

/// Looks at processes through /proc: what a test needs to prove that a
/// process group is gone and that nothing was left unreaped.
enum ProcScan {
    /// A value unique to one test, to put in a child's environment.
    static func newMark() -> String { "mark-\(getpid())-\(UInt64.random(in: 0...UInt64.max))" }

    static func pids() -> [Int32] {
        guard let d = opendir("/proc") else { return [] }
        defer { closedir(d) }
        var out: [Int32] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let pid = Int32(name) { out.append(pid) }
        }
        return out
    }

    static func read(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return out
    }

    /// Live (not zombie) processes whose environment holds `DESCARTES_TEST_MARK=mark`.
    static func marked(_ mark: String) -> [Int32] {
        let needle = Array("DESCARTES_TEST_MARK=\(mark)".utf8)
        return pids().filter { pid in
            guard let env = read("/proc/\(pid)/environ") else { return false }
            let found = env.split(separator: 0).contains { $0.elementsEqual(needle) }
            return found && state(pid) != "Z"
        }
    }

    /// (state, ppid) from /proc/<pid>/stat.
    static func stat(_ pid: Int32) -> (String, Int32)? {
        guard let bytes = read("/proc/\(pid)/stat") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let ppid = Int32(fields[1]) else { return nil }
        return (String(fields[0]), ppid)
    }

    static func state(_ pid: Int32) -> String? { stat(pid)?.0 }

    /// Zombie children of this test process; with `named`, only those whose
    /// command name (`/proc/PID/comm`, at most 15 bytes) is that (other
    /// tests running beside the caller have children of their own).
    static func zombieChildren(named: String? = nil) -> [Int32] {
        let me = getpid()
        return pids().filter { pid in
            guard let (s, ppid) = stat(pid), ppid == me && s == "Z" else { return false }
            guard let named else { return true }
            let comm = read("/proc/\(pid)/comm").map { Array($0.prefix { $0 != 10 }) } ?? []
            return comm == Array(named.utf8.prefix(15))
        }
    }

    /// Threads of this process with the given name.
    static func threads(named name: String) -> Int {
        guard let d = opendir("/proc/self/task") else { return 0 }
        defer { closedir(d) }
        var n = 0
        while let e = readdir(d) {
            let tid = withUnsafeBytes(of: e.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int32(tid) != nil, let comm = read("/proc/self/task/\(tid)/comm") else { continue }
            if String(decoding: comm, as: UTF8.self).trimmingCharacters() == name { n += 1 }
        }
        return n
    }

    /// Waits up to `timeout` for `condition`, polling every 50 ms.
    static func eventually(_ timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }
}

/// Collects a stream: its events in order, and the response or the error.
struct Collected {
    var events: [StreamEvent] = []
    var response: ModelResponse?
    var error: ProviderError?

    var text: String {
        events.reduce(into: "") { acc, e in if case .textDelta(let t) = e { acc += t } }
    }
    var notices: [String] {
        events.compactMap { if case .notice(_, let m) = $0 { return m } else { return nil } }
    }
    var textDeltas: Int { events.filter { if case .textDelta = $0 { return true } else { return false } }.count }
}

func collect(_ stream: ModelStream) async -> Collected {
    var c = Collected()
    do {
        for try await e in stream {
            c.events.append(e)
            if case .finish(let r) = e { c.response = r }
        }
    } catch {
        // The stream's Failure is ProviderError: nothing else can arrive.
        c.error = error
    }
    return c
}
