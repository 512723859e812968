// The OpenAI chat-completions dialect over the kit's HTTP engine: one server,
// its requests, and what comes back, for any plugin that speaks the dialect.
import Glibc

/// One chat-completions server: where it is and how to talk to it.
public struct ChatServer: Sendable {
    /// The API base, e.g. "https://api.openai.com/v1"; paths are appended.
    public var baseURL: String
    /// Headers on every request, credentials included (never logged).
    public var headers: [(String, String)]
    /// The credential in those headers, scrubbed from every message that
    /// could echo it.
    public var secret: String?
    public var caBundle: String?
    public var proxy: String?
    /// The largest response body read (a stream's total too).
    public var maxResponseBytes: Int
    /// Time limits of calls that carry no deadlines (list, health).
    public var defaultTimeouts: HTTPTimeouts
    public var requestOptions: ChatRequestOptions
    /// Top-level members of chunks kept in the Finish metadata.
    public var captureKeys: [StaticString]
    /// The model list's path relative to `baseURL` ("models"), or a whole
    /// URL.
    public var modelsPath: String
    /// Appended to every URL as its query (Azure's `api-version=...`), or nil.
    public var query: String?
    /// The path of an operation ("chat/completions", "embeddings") for a
    /// model, relative to `baseURL`: the operation itself, except where the
    /// server puts the model in the path (Azure's deployment form).
    public var modelPath: @Sendable (_ model: String?, _ operation: String) -> String
    /// Members of `choices[0]` kept in the Finish metadata, as last seen
    /// non-empty (Azure's `content_filter_results`).
    public var choiceCaptureKeys: [StaticString]
    /// Turns a non-2xx answer's error into a more telling one (Azure's
    /// content-filter refusals); gets the mapped error and the body.
    public var refineError: (@Sendable (ProviderError, [UInt8]) -> ProviderError)?

    public init(
        baseURL: String, headers: [(String, String)] = [], secret: String? = nil, caBundle: String? = nil,
        proxy: String? = nil, maxResponseBytes: Int = 64 << 20,
        defaultTimeouts: HTTPTimeouts = HTTPTimeouts(connect: 10_000, total: 60_000),
        requestOptions: ChatRequestOptions = ChatRequestOptions(), captureKeys: [StaticString] = [],
        modelsPath: String = "models", query: String? = nil,
        modelPath: @escaping @Sendable (_ model: String?, _ operation: String) -> String = { _, operation in operation },
        choiceCaptureKeys: [StaticString] = [], refineError: (@Sendable (ProviderError, [UInt8]) -> ProviderError)? = nil
    ) {
        self.modelsPath = modelsPath
        self.query = query
        self.modelPath = modelPath
        self.choiceCaptureKeys = choiceCaptureKeys
        self.refineError = refineError
        self.baseURL = baseURL
        self.headers = headers
        self.secret = secret
        self.caBundle = caBundle
        self.proxy = proxy
        self.maxResponseBytes = maxResponseBytes
        self.defaultTimeouts = defaultTimeouts
        self.requestOptions = requestOptions
        self.captureKeys = captureKeys
    }

    /// `baseURL` + `path` (a path that is a whole URL as it is), with
    /// `query` appended.
    public func url(_ path: String) -> String {
        let lower = path.lowercased()
        let u = lower.hasPrefix("https://") || lower.hasPrefix("http://") ? path : ProviderHTTP.join(baseURL, path)
        guard let query, !query.isEmpty else { return u }
        return u + (u.contains("?") ? "&" : "?") + query
    }

    /// An HTTP request to `path` with this server's headers and transport settings.
    public func request(
        _ method: String, _ path: String, body: [UInt8] = [], accept: String = "application/json",
        timeouts: HTTPTimeouts? = nil
    ) -> HTTPRequest {
        var h = headers
        if !body.isEmpty { h.append(("Content-Type", "application/json")) }
        h.append(("Accept", accept))
        return HTTPRequest(
            method: method, url: url(path), headers: h, body: body, timeouts: timeouts ?? defaultTimeouts,
            maxResponseBytes: maxResponseBytes, caBundle: caBundle, proxy: proxy)
    }

    /// `message` without the credential.
    public func scrub(_ message: String) -> String {
        guard let secret, secret.utf8.count >= 4 else { return message }
        return ChatServer.replacing(secret, with: "[REDACTED]", in: message)
    }

    /// `e` with the credential scrubbed from its message.
    public func scrub(_ e: ProviderError) -> ProviderError {
        var e = e
        e.message = scrub(e.message)
        return e
    }

    static func replacing(_ target: String, with replacement: String, in text: String) -> String {
        let t = Array(target.utf8)
        let s = Array(text.utf8)
        guard !t.isEmpty, s.count >= t.count else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(s.count)
        var i = 0
        var changed = false
        while i < s.count {
            if i + t.count <= s.count, s[i] == t[0], Array(s[i..<(i + t.count)]) == t {
                out.append(contentsOf: replacement.utf8)
                i += t.count
                changed = true
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return changed ? String(decoding: out, as: UTF8.self) : text
    }

    /// The error for a non-2xx answer: the kit's mapping, with the model
    /// and the URL named for a 404 that does not name them (an unknown
    /// model, or an endpoint without `/v1`), and the credential scrubbed.
    public func httpError(status: Int, headers: HTTPHeaders, body: [UInt8], method: String, path: String, model: String?) -> ProviderError {
        var e = ProviderHTTP.error(status: status, headers: headers, body: body, endpoint: baseURL)
        if let refineError { e = refineError(e, body) }
        if status == 404 {
            var notes: [String] = []
            if let model, !e.message.contains(model) { notes.append("model '\(model)'") }
            notes.append("\(method) \(url(path))")
            e.message += " (\(notes.joined(separator: ", ")))"
        }
        e.message = scrub(e.message)
        return e
    }
}

/// Runs chat-completions calls against one server on one `HTTPClient`.
///
/// Every method starts a transfer and returns at once; the call is answered
/// from the client's loop thread. Cancelling the call aborts its transfer.
public final class ChatClient: Sendable {
    public let server: ChatServer
    public let http: HTTPClient

    public init(server: ChatServer, http: HTTPClient) {
        self.server = server
        self.http = http
    }

    // MARK: Completions

    /// `POST /chat/completions` with `stream: true`; events as they arrive.
    public func stream(_ request: ModelRequest, _ call: PluginCall, _ options: ChatCallOptions = ChatCallOptions()) {
        exchange(request, call, stream: true, options)
    }

    /// `POST /chat/completions` without streaming: the whole answer at once
    /// (one TEXT event, one start/delta/end per tool call).
    public func complete(_ request: ModelRequest, _ call: PluginCall, _ options: ChatCallOptions = ChatCallOptions()) {
        exchange(request, call, stream: false, options)
    }

    /// Both, through the kit's exchange engine: a streamed answer as server-sent
    /// events, a whole one as one document.
    func exchange(_ request: ModelRequest, _ call: PluginCall, stream: Bool, _ options: ChatCallOptions) {
        let body = ChatRequest.encode(request, stream: stream, options: server.requestOptions)
        let model = request.model ?? server.requestOptions.defaultModel
        let path = server.modelPath(model, "chat/completions")
        let consumer = ChatStreamConsumer(call: call, server: server, model: model, path: path, options: options)
        let req = server.request(
            "POST", path, body: body, accept: stream ? "text/event-stream" : "application/json",
            timeouts: HTTPTimeouts(request.deadlines))
        StreamResponseHandler(
            call: call, endpoint: server.baseURL, framing: stream ? .serverSentEvents : .document, notReady: options.notReady,
            consumer: consumer
        ).start(req, on: http)
    }

    // MARK: Models and health

    /// `GET /models` (`modelsPath`): `{"data": [{"id", "owned_by", ...}]}`
    /// or a bare array (GitHub's catalog). A context size
    /// is taken from `context_length` (OpenRouter) or `max_model_len` (vLLM).
    public func listModels(_ call: PluginCall) {
        fetchModels(call) { models, _ in call.finish(json: Wire.encode(models: models)) }
    }

    /// A real authenticated call, the cheapest one the dialect has:
    /// `GET /models`. Healthy when it answers 2xx with a model list;
    /// otherwise the error says why (wrong key, unreachable, ...).
    public func healthCheck(_ call: PluginCall, provider: String) {
        let start = ContinuousClock.now
        let server = self.server
        fetchModels(call) { models, status in
            let ms = (ContinuousClock.now - start).milliseconds
            call.finish(result: [
                "message": .string("\(provider): GET \(server.url(server.modelsPath)) answered \(status) in \(ms) ms with \(models.count) model\(models.count == 1 ? "" : "s")"),
                "details": ["endpoint": .string(server.baseURL), "status": .integer(status), "models": .integer(models.count), "latency_ms": .integer(ms)],
            ])
        }
    }

    func fetchModels(_ call: PluginCall, _ done: @escaping @Sendable ([ModelInfo], Int) -> Void) {
        let server = self.server
        let transfer = http.fetch(server.request("GET", server.modelsPath)) { result in
            switch result {
            case .failure(let e):
                call.fail(e.providerError(endpoint: server.baseURL))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(server.httpError(status: r.status, headers: r.headers, body: r.body, method: "GET", path: server.modelsPath, model: nil))
                    return
                }
                guard let doc = try? JSONValue.parse(bytes: r.body), let data = doc["data"]?.arrayValue ?? doc.arrayValue else {
                    call.fail(ProviderError(
                        .invalidResponse, "GET \(server.url(server.modelsPath)): not a model list: \(ProviderHTTP.excerpt(r.body))", status: r.status))
                    return
                }
                let models = data.compactMap { m -> ModelInfo? in
                    guard let id = m["id"]?.stringValue else { return nil }
                    var details = JSONObject()
                    if let c = m["created"]?.intValue { details["created"] = .integer(c) }
                    if let n = m["name"]?.stringValue { details["name"] = .string(n) }
                    return ModelInfo(
                        id: id, contextLength: m["context_length"]?.intValue ?? m["max_model_len"]?.intValue,
                        ownedBy: m["owned_by"]?.stringValue, details: details)
                }
                done(models, r.status)
            }
        }
        call.onCancel { transfer.cancel() }
    }
}

/// What a plugin adds to a chat-completions call beyond the dialect (a local
/// server's: llama.cpp's).
public struct ChatCallOptions: Sendable {
    /// How to wait for a server that is not ready yet (loading its model).
    public var notReady: NotReadyPolicy?
    /// The error when nothing answers at the address (say how to start the
    /// server); nil keeps the kit's.
    public var unreachable: (@Sendable (HTTPError) -> ProviderError)?
    /// Counts an answer whose server reported no usage (llama-cpp-python
    /// streams none): given the answer as the client saw it, returns the
    /// usage and how it was counted (kept as `usage_counted` in the
    /// metadata). The call ends once it returns. Nil: such an answer has no
    /// usage.
    public var countUsage: (@Sendable (ChatAnswer) async -> (Usage, String))?

    public init(
        notReady: NotReadyPolicy? = nil, unreachable: (@Sendable (HTTPError) -> ProviderError)? = nil,
        countUsage: (@Sendable (ChatAnswer) async -> (Usage, String))? = nil
    ) {
        self.notReady = notReady
        self.unreachable = unreachable
        self.countUsage = countUsage
    }
}

/// An answer as the client received it, for counting what the server did not.
public struct ChatAnswer: Sendable {
    /// The text, as it arrived.
    public var text: [UInt8] = []
    /// How many pieces of text the stream brought (a llama.cpp server sends
    /// one a token).
    public var textChunks = 0
    public var reasoningBytes = 0
}

/// Forwards the dialect's events to an `EventBatcher`, keeping the answer's
/// text (`ChatCallOptions.countUsage`).
final class CountingSink: ChatEventSink {
    let events: EventBatcher
    var answer = ChatAnswer()

    init(_ events: EventBatcher) { self.events = events }

    func start(id: String?, model: String?) { events.start(id: id, model: model) }
    func text(bytes: UnsafeRawBufferPointer) {
        answer.textChunks += 1
        answer.text.append(contentsOf: bytes)
        events.text(bytes: bytes)
    }
    func reasoning(bytes: UnsafeRawBufferPointer) {
        answer.reasoningBytes += bytes.count
        events.reasoning(bytes: bytes)
    }
    func toolCallStart(index: Int, id: String, name: String) { events.toolCallStart(index: index, id: id, name: name) }
    func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) { events.toolCallDelta(index: index, bytes: bytes) }
    func toolCallEnd(index: Int) { events.toolCallEnd(index: index) }
}

/// A chat-completions answer, streamed or whole, for `StreamResponseHandler`.
///
/// Fragments go through an `EventBatcher`: the text of all the chunks one
/// network read carried reaches the host as one event.
final class ChatStreamConsumer: StreamConsumer, @unchecked Sendable {
    let events: EventBatcher
    let server: ChatServer
    let model: String?
    let path: String
    let options: ChatCallOptions
    /// Only when usage may have to be counted.
    let counter: CountingSink?
    var parser: ChatResponseParser

    init(call: PluginCall, server: ChatServer, model: String?, path: String, options: ChatCallOptions) {
        events = EventBatcher(call: call)
        self.server = server
        self.model = model
        self.path = path
        self.options = options
        counter = options.countUsage == nil ? nil : CountingSink(events)
        parser = ChatResponseParser(captureKeys: server.captureKeys, choiceCaptureKeys: server.choiceCaptureKeys)
    }

    func flush() { events.flush() }

    func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool {
        if event.isDone { return true }
        do throws(ProviderError) {
            if let counter { try parser.parse(event.data, counter) } else { try parser.parse(event.data, events) }
        } catch {
            throw server.scrub(error)
        }
        return false
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        let outcome = body.withUnsafeBytes { b in
            Result { () throws(ProviderError) in
                if let counter { try parser.parse(b, counter) } else { try parser.parse(b, events) }
            }
        }
        if case .failure(let e) = outcome { throw server.scrub(e) }
        if let why = parser.emptiness { throw ProviderError(.invalidResponse, "HTTP 200, but \(why)") }
        return result()
    }

    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        // Some compatible servers end the body without `[DONE]`; a finish
        // reason seen says the answer is whole. Without either it was cut.
        if !sawTerminal && parser.rawFinishReason == nil {
            throw ProviderError(.streamClosed, "the stream ended before its last event (no finish_reason and no [DONE])")
        }
        if let why = parser.emptiness { throw ProviderError(.invalidResponse, "HTTP 200, but \(why)") }
        return result()
    }

    /// The result; the requested model when the server named none.
    private func result() -> Wire.Finish {
        var f = parser.finish(events)
        if f.model == nil { f.model = model }
        return f
    }

    func deliver(_ finish: Wire.Finish, to call: PluginCall) {
        guard finish.usage == nil, let count = options.countUsage, let answer = counter?.answer else {
            call.finish(finish)
            return
        }
        Task {
            var f = finish
            let (usage, how) = await count(answer)
            f.usage = usage
            f.metadata["usage_counted"] = .string(how)
            call.finish(f)
        }
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        server.httpError(status: status, headers: headers, body: body, method: "POST", path: path, model: model)
    }

    func transportError(_ error: HTTPError, mapped: ProviderError) -> ProviderError {
        if case .unreachable = error.kind, let unreachable = options.unreachable { return unreachable(error) }
        return server.scrub(mapped)
    }
}
