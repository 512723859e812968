/// The client half of JSON-RPC 2.0 over a child's stdin and stdout, one
/// message a line (the stdio transport of the Agent Client Protocol and of
/// `codex app-server`): request ids, the replies waiting for them, and what
/// the other side sends on its own (requests it wants answered,
/// notifications).
///
/// The peer writes through `write` (a child's stdin); the plugin hands it
/// each stdout line it parsed as a JSON object (`receive`), and tells it
/// when the process ended (`ended`), which fails every request still
/// waiting. Replies are called on the thread that called `receive` or
/// `ended` (the process runner's), or at once if the peer has ended.
public final class JSONRPCPeer: Sendable {
    /// An error object the other side answered with.
    public struct Failure: Error, Sendable {
        public var code: Int
        public var message: String
        public var data: JSONValue?
        /// True when the process ended before it answered (`code` is 0).
        public var ended: Bool

        public init(code: Int, message: String, data: JSONValue? = nil, ended: Bool = false) {
            self.code = code
            self.message = message
            self.data = data
            self.ended = ended
        }
    }

    public typealias Reply = @Sendable (Result<JSONValue, Failure>) -> Void

    /// A message that is not the answer to one of ours.
    public enum Incoming: Sendable {
        /// A request: answer it with `respond(_:result:)` or `respond(_:code:message:)`.
        case request(id: JSONValue, method: String, params: JSONObject)
        case notification(method: String, params: JSONObject)
    }

    private struct State {
        var nextID = 0
        var pending: [Int: (method: String, reply: Reply)] = [:]
        var ended = false
    }
    private let state = Lock(State())
    private let write: @Sendable ([UInt8]) -> Void

    public init(write: @escaping @Sendable ([UInt8]) -> Void) { self.write = write }

    private func send(_ message: JSONObject) {
        var line = JSONValue.object(message).jsonBytes
        line.append(0x0A)
        write(line)
    }

    /// Sends request `method`; `reply` gets its result, its error, or (the
    /// process ended first) a failure with `ended` set.
    public func request(_ method: String, _ params: JSONObject, _ reply: @escaping Reply) {
        let id = state.withLock { s -> Int? in
            if s.ended { return nil }
            s.nextID += 1
            s.pending[s.nextID] = (method, reply)
            return s.nextID
        }
        guard let id else { return reply(.failure(Failure(code: 0, message: "the process had ended", ended: true))) }
        send(["jsonrpc": "2.0", "id": .integer(id), "method": .string(method), "params": .object(params)])
    }

    /// `request` for code that awaits.
    public func call(_ method: String, _ params: JSONObject) async -> Result<JSONValue, Failure> {
        await withCheckedContinuation { (c: CheckedContinuation<Result<JSONValue, Failure>, Never>) in
            request(method, params) { c.resume(returning: $0) }
        }
    }

    public func notify(_ method: String, _ params: JSONObject? = nil) {
        var m: JSONObject = ["jsonrpc": "2.0", "method": .string(method)]
        if let params { m["params"] = .object(params) }
        send(m)
    }

    public func respond(_ id: JSONValue, result: JSONValue) {
        send(["jsonrpc": "2.0", "id": id, "result": result])
    }

    public func respond(_ id: JSONValue, code: Int, message: String) {
        send(["jsonrpc": "2.0", "id": id, "error": ["code": .integer(code), "message": .string(message)]])
    }

    /// One message from the other side. The answer to a request of ours
    /// goes to its reply (nil is returned); anything else is returned for
    /// the plugin to handle. A response nobody waits for is dropped.
    public func receive(_ o: JSONObject) -> Incoming? {
        if let method = o["method"]?.stringValue {
            let params = o["params"]?.objectValue ?? [:]
            if let id = o["id"], !id.isNull { return .request(id: id, method: method, params: params) }
            return .notification(method: method, params: params)
        }
        guard let id = o["id"]?.intValue, let p = state.withLock({ $0.pending.removeValue(forKey: id) }) else { return nil }
        if case .object(let e)? = o["error"] {
            p.reply(.failure(Failure(code: e["code"]?.intValue ?? 0, message: e["message"]?.stringValue ?? "", data: e["data"])))
        } else {
            p.reply(.success(o["result"] ?? .null))
        }
        return nil
    }

    /// The process ended: later requests fail at once; the requests still
    /// waiting are returned, oldest first, for the caller to fail (each
    /// with the error that suits its method).
    public func ended() -> [(method: String, reply: Reply)] {
        state.withLock { s in
            s.ended = true
            defer { s.pending = [:] }
            return s.pending.sorted { $0.key < $1.key }.map(\.value)
        }
    }
}
