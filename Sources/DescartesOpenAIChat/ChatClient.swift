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
    /// The model list's path relative to `baseURL` ("models").
    public var modelsPath: String

    public init(
        baseURL: String, headers: [(String, String)] = [], secret: String? = nil, caBundle: String? = nil,
        proxy: String? = nil, maxResponseBytes: Int = 64 << 20,
        defaultTimeouts: HTTPTimeouts = HTTPTimeouts(connect: 10_000, total: 60_000),
        requestOptions: ChatRequestOptions = ChatRequestOptions(), captureKeys: [StaticString] = [],
        modelsPath: String = "models"
    ) {
        self.modelsPath = modelsPath
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

    /// `baseURL` + `path`.
    public func url(_ path: String) -> String { ProviderHTTP.join(baseURL, path) }

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
    public func stream(_ request: ModelRequest, _ call: PluginCall) {
        let body = ChatRequest.encode(request, stream: true, options: server.requestOptions)
        let model = request.model ?? server.requestOptions.defaultModel
        let consumer = ChatStreamConsumer(call: call, server: server, model: model)
        let handler = StreamResponseHandler(call: call, endpoint: server.baseURL, consumer: consumer)
        let req = server.request(
            "POST", "chat/completions", body: body, accept: "text/event-stream", timeouts: HTTPTimeouts(request.deadlines))
        let transfer = http.start(req, handler: handler)
        call.onCancel { transfer.cancel() }
    }

    /// `POST /chat/completions` without streaming: the whole answer at once
    /// (one TEXT event, one start/delta/end per tool call).
    public func complete(_ request: ModelRequest, _ call: PluginCall) {
        let body = ChatRequest.encode(request, stream: false, options: server.requestOptions)
        let model = request.model ?? server.requestOptions.defaultModel
        let server = self.server
        let req = server.request("POST", "chat/completions", body: body, timeouts: HTTPTimeouts(request.deadlines))
        let transfer = http.fetch(req) { result in
            switch result {
            case .failure(let e):
                call.fail(e.providerError(endpoint: server.baseURL))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(server.httpError(status: r.status, headers: r.headers, body: r.body, method: "POST", path: "chat/completions", model: model))
                    return
                }
                do throws(ProviderError) {
                    call.finish(try ChatClient.parseWhole(r.body, call, server: server))
                } catch {
                    call.fail(error)
                }
            }
        }
        call.onCancel { transfer.cancel() }
    }

    static func parseWhole<S: ChatEventSink>(_ body: [UInt8], _ call: S, server: ChatServer) throws(ProviderError) -> Wire.Finish {
        var parser = ChatResponseParser(captureKeys: server.captureKeys)
        let outcome = body.withUnsafeBytes { b in Result { () throws(ProviderError) in try parser.parse(b, call) } }
        if case .failure(var e) = outcome {
            e.message = server.scrub(e.message)
            throw e
        }
        return parser.finish(call)
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

/// A streamed chat-completions answer, for `StreamResponseHandler`.
///
/// Fragments go through an `EventBatcher`: the text of all the chunks one
/// network read carried reaches the host as one event.
final class ChatStreamConsumer: StreamConsumer, @unchecked Sendable {
    let events: EventBatcher
    let server: ChatServer
    let model: String?
    var parser: ChatResponseParser

    init(call: PluginCall, server: ChatServer, model: String?) {
        events = EventBatcher(call: call)
        self.server = server
        self.model = model
        parser = ChatResponseParser(captureKeys: server.captureKeys)
    }

    func flush() { events.flush() }

    func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool {
        if event.isDone { return true }
        do throws(ProviderError) { try parser.parse(event.data, events) } catch {
            var e = error
            e.message = server.scrub(e.message)
            throw e
        }
        return false
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        try ChatClient.parseWhole(body, events, server: server)
    }

    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        // Some compatible servers end the body without `[DONE]`; a finish
        // reason seen says the answer is whole. Without either it was cut.
        if !sawTerminal && parser.rawFinishReason == nil {
            throw ProviderError(.streamClosed, "the stream ended before its last event (no finish_reason and no [DONE])")
        }
        return parser.finish(events)
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        server.httpError(status: status, headers: headers, body: body, method: "POST", path: "chat/completions", model: model)
    }
}
