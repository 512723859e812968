import Descartes
import Testing

/// What a caller saw of one streamed (or completed) answer: the text,
/// reasoning and tool calls as the events delivered them, and how it ended.
struct Observed: CustomStringConvertible {
    var text = ""
    var reasoning = ""
    var toolCalls: [ToolCall] = []
    var events: [StreamEvent] = []
    var response: ModelResponse?
    var error: ProviderError?
    var description: String {
        "text=\(text.debugDescription) reasoning=\(reasoning.prefix(60).debugDescription) tools=\(toolCalls) finish=\(response?.finishReason.rawValue ?? "-") usage=\(String(describing: response?.usage)) error=\(String(describing: error))"
    }

    /// Runs `request` as a stream and records every event.
    static func stream(_ backend: any ModelBackend, _ request: ModelRequest) async -> Observed {
        var o = Observed()
        var calls: [Int: ToolCall] = [:]
        var order: [Int] = []
        do {
            for try await e in backend.stream(request) {
                o.events.append(e)
                switch e {
                case .textDelta(let t): o.text += t
                case .reasoningDelta(let t): o.reasoning += t
                case .toolCallStart(let i, let id, let name):
                    calls[i] = ToolCall(id: id, name: name, arguments: "")
                    order.append(i)
                case .toolCallDelta(let i, let a): calls[i]?.arguments += a
                case .finish(let r): o.response = r
                default: break
                }
            }
        } catch {
            o.error = error
        }
        o.toolCalls = order.map { calls[$0]! }
        if let r = o.response { o.toolCalls = r.toolCalls }
        return o
    }

    /// Runs `request` with `complete`.
    static func complete(_ backend: any ModelBackend, _ request: ModelRequest) async -> Observed {
        var o = Observed()
        do {
            let r = try await backend.complete(request)
            o.response = r
            o.text = r.content
            o.reasoning = r.reasoning ?? ""
            o.toolCalls = r.toolCalls
        } catch {
            o.error = error
        }
        return o
    }
}

/// Shorthand for test servers that speak provider dialects.
extension ScriptedServer.Response {
    /// An SSE body in explicit pieces (bytes, so a piece may end inside a UTF-8 sequence).
    static func pieces(_ parts: [[UInt8]], status: Int = 200, contentType: String = "text/event-stream", delayMs: Int = 0) -> Self {
        ScriptedServer.Response([
            "status": .integer(status), "framing": "chunked",
            "headers": [["content-type", .string(contentType)]],
            "chunks": .array(parts.map { ["b64": .string(Base64.encode($0)), "delay_ms": .integer(delayMs)] }),
        ])
    }

    /// An error answer with a JSON body and headers.
    static func error(_ status: Int, _ body: String, headers: [(String, String)] = []) -> Self {
        .json(body, status: status, headers: headers)
    }
}

/// Captures host log records (plugin warnings) during a test: the sink of
/// the factories `PluginDir.factory()` makes (stderr as by default, plus
/// `lines`).
final class LogCapture: Sendable {
    static let shared: LogCapture = {
        let c = LogCapture()
        c.sink.addTap { level, source, message in c.lines.withLock { $0.append("\(level) \(source): \(message)") } }
        return c
    }()
    let sink = LogSink()
    let lines = Lock<[String]>([])
    func contains(_ s: String) -> Bool { lines.withLock { $0.contains { $0.contains(s) } } }
}

extension String {
    /// `self` with every `target` replaced (tests only; no Foundation).
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        let t = Array(target.utf8)
        let s = Array(utf8)
        guard !t.isEmpty else { return self }
        var out: [UInt8] = []
        var i = 0
        while i < s.count {
            if i + t.count <= s.count && Array(s[i..<(i + t.count)]) == t {
                out += Array(replacement.utf8)
                i += t.count
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A test's own part of one scripted server shared by the whole run: its
/// routes live under a path prefix no other test uses, and it sees only its
/// own requests. Far cheaper than a server process per test on a loaded
/// machine. (Tests that need a server to themselves, e.g. to stop it, use
/// `ScriptedServer.start()`.)
struct ServerSlot: Sendable {
    let server: ScriptedServer
    /// "/t17", without a trailing slash.
    let prefix: String

    private static let shared = Lock<Task<ScriptedServer, Error>?>(nil)
    private static let counter = Lock(0)

    /// A fresh slot on the shared server.
    static func make() async throws -> ServerSlot {
        let task = shared.withLock { t -> Task<ScriptedServer, Error> in
            if let t { return t }
            let n = Task { try await ScriptedServer.start() }
            t = n
            return n
        }
        let server = try await task.value
        let n = counter.withLock { c -> Int in
            c += 1
            return c
        }
        return ServerSlot(server: server, prefix: "/t\(n)")
    }

    /// The base URL of this slot ("http://127.0.0.1:PORT/t17").
    var url: String { server.url + prefix }

    /// Scripts routes ("METHOD /path") under this slot's prefix.
    func script(_ routes: [String: [ScriptedServer.Response]]) async throws {
        var r: [String: [ScriptedServer.Response]] = [:]
        for (k, v) in routes {
            let parts = k.split(separator: " ", maxSplits: 1)
            r["\(parts[0]) \(prefix)\(parts[1])"] = v
        }
        try await server.script(r)
    }

    /// This slot's requests, with the prefix taken off their paths.
    func requests() async throws -> [ScriptedServer.Request] {
        try await server.requests().compactMap { q in
            guard q.path.hasPrefix(prefix + "/") else { return nil }
            var q = q
            q.path = String(q.path.dropFirst(prefix.count))
            return q
        }
    }

    func closedConnections() async throws -> [Int] { try await server.closedConnections() }

    /// Waits (up to 30 s) until this slot has received `n` requests.
    func waitForRequests(_ n: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while try await requests().count < n {
            guard ContinuousClock.now < deadline else { return }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
