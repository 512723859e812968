// libdescartes-anthropic.so: the Anthropic Messages API (provider
// "anthropic"), over the plugin kit's libcurl engine.
//
//   POST {endpoint}/messages                 complete (whole message) and stream (SSE)
//   POST {endpoint}/messages/count_tokens    estimate_tokens (exact), else a heuristic
//   GET  {endpoint}/models                   list_models (paged), health_check (limit=1)
//
// Headers: x-api-key, anthropic-version (config `anthropic_version`),
// anthropic-beta (config `beta`), content-type, accept, user-agent.
import DescartesPluginKit

final class AnthropicBackend: DescartesBackend {
    static let version = "1.0.0"

    let context: BackendContext
    let settings: HTTPSettings
    let http: HTTPClient
    let headers: [(String, String)]
    let defaultModel: String?
    let maxTokens: Int

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        settings = try HTTPSettings(context, defaultEndpoint: "https://api.anthropic.com/v1")
        let version = context.string("anthropic_version") ?? "2023-06-01"
        guard !version.isEmpty, !version.contains("\n") else {
            throw ProviderError(.config, "key 'anthropic_version': '\(version)' is not a version date")
        }
        var h: [(String, String)] = [("User-Agent", "descartes-anthropic/\(Self.version)"), ("anthropic-version", version)]
        if let key = settings.apiKey { h.append(("x-api-key", key)) }
        if let beta = context.list("beta"), !beta.isEmpty { h.append(("anthropic-beta", beta.joined(separator: ","))) }
        headers = h + settings.extraHeaders
        defaultModel = context.string("model")
        maxTokens = context.int("max_tokens") ?? 4096
        guard maxTokens > 0 else { throw ProviderError(.config, "key 'max_tokens': must be positive, got \(maxTokens)") }
        http = HTTPClient(name: "anthropic:\(context.instance)")
        if let warning = settings.plainHTTPWarning { context.log(.warning, warning) }
    }

    // MARK: HTTP

    func request(_ method: String, _ path: String, body: [UInt8] = [], accept: String = "application/json", timeouts: HTTPTimeouts? = nil) -> HTTPRequest {
        settings.request(method, path, headers: headers, body: body, accept: accept, timeouts: timeouts)
    }

    /// The error for a non-2xx answer; a 404 names the model and the URL.
    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8], path: String, model: String?) -> ProviderError {
        settings.explained(ProviderHTTP.error(status: status, headers: headers, body: body, endpoint: settings.endpoint), status: status, path: path, model: model)
    }

    // MARK: Operations

    func stream(_ request: ModelRequest, _ call: PluginCall) {
        if let e = Self.refusedFormat(request) { return call.fail(e) }
        let body = AnthropicRequest.encode(request, purpose: .stream, defaultModel: defaultModel, defaultMaxTokens: maxTokens)
        let consumer = MessageStreamConsumer(backend: self, call: call, model: request.model ?? defaultModel)
        StreamResponseHandler(call: call, endpoint: settings.endpoint, consumer: consumer).start(
            self.request("POST", "messages", body: body, accept: "text/event-stream", timeouts: HTTPTimeouts(request.deadlines)), on: http)
    }

    /// `.json` without a schema: Anthropic's structured outputs take only a
    /// JSON Schema (whose objects must all say `additionalProperties:
    /// false`), so "any JSON object" has no native form, and an emulation by
    /// prompt is not offered. (`.jsonSchema` is sent as `output_config.format`.)
    static func refusedFormat(_ r: ModelRequest) -> ProviderError? {
        guard r.responseFormat == .json else { return nil }
        return ProviderError(
            .unsupportedFeature,
            "Anthropic's structured outputs take a JSON Schema, not \"any JSON\": ask for a schema (responseFormat .jsonSchema; on the command line, --schema)")
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) {
        if let e = Self.refusedFormat(request) { return call.fail(e) }
        let body = AnthropicRequest.encode(request, purpose: .complete, defaultModel: defaultModel, defaultMaxTokens: maxTokens)
        let model = request.model ?? defaultModel
        let endpoint = settings.endpoint
        let transfer = http.fetch(self.request("POST", "messages", body: body, timeouts: HTTPTimeouts(request.deadlines))) { [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: endpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(httpError(status: r.status, headers: r.headers, body: r.body, path: "messages", model: model))
                    return
                }
                let events = EventBatcher(call: call)
                do throws(ProviderError) {
                    let f = try AnthropicStream.whole(r.body, events)
                    events.flush()
                    call.finish(f)
                } catch {
                    call.fail(error)
                }
            }
        }
        call.onCancel { transfer.cancel() }
    }

    /// Exact, from `POST /messages/count_tokens`, when the API answers.
    /// When it does not (unreachable, a deadline, a server error, a gateway
    /// without the endpoint) the kit's heuristic (about four characters per
    /// token) is returned instead, with `exact: false` and a method naming
    /// the heuristic and why. An authentication failure is reported, not
    /// papered over.
    func estimateTokens(_ request: ModelRequest, _ call: PluginCall) {
        let body = AnthropicRequest.encode(request, purpose: .countTokens, defaultModel: defaultModel, defaultMaxTokens: maxTokens)
        let model = request.model ?? defaultModel
        let endpoint = settings.endpoint
        var timeouts = HTTPTimeouts(request.deadlines)
        if timeouts.total == nil || timeouts.total! > 30_000 { timeouts.total = 30_000 }
        let transfer = http.fetch(self.request("POST", "messages/count_tokens", body: body, timeouts: timeouts)) { [self] result in
            func fallback(_ why: String) {
                context.log(.info, "count_tokens unavailable (\(why)); estimating with the heuristic")
                var t = Heuristics.tokens(request)
                t.method += " (count_tokens: \(why))"
                call.finish(json: Wire.encode(t))
            }
            switch result {
            case .failure(let e):
                let pe = e.providerError(endpoint: endpoint)
                if e.kind == .cancelled { call.fail(pe) } else { fallback(pe.kind.rawValue + (pe.deadline.map { " (\($0))" } ?? "")) }
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    let e = httpError(status: r.status, headers: r.headers, body: r.body, path: "messages/count_tokens", model: model)
                    if e.kind == .authentication { call.fail(e) } else { fallback("HTTP \(r.status)") }
                    return
                }
                guard let n = (try? JSONValue.parse(bytes: r.body))?["input_tokens"]?.intValue else {
                    fallback("unreadable answer")
                    return
                }
                call.finish(json: Wire.encode(TokenEstimate(tokens: n, exact: true, method: "api:count_tokens")))
            }
        }
        call.onCancel { transfer.cancel() }
    }

    /// Every model, following `has_more`/`last_id` pages (at most 20).
    func listModels(_ call: PluginCall) {
        fetchModels(call, afterID: nil, pages: 0, into: [])
    }

    func fetchModels(_ call: PluginCall, afterID: String?, pages: Int, into models: [ModelInfo]) {
        let path = "models?limit=1000" + (afterID.map { "&after_id=\(ProviderHTTP.percentEncoded($0))" } ?? "")
        let endpoint = settings.endpoint
        let transfer = http.fetch(request("GET", path)) { [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: endpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(httpError(status: r.status, headers: r.headers, body: r.body, path: "models", model: nil))
                    return
                }
                guard let doc = try? JSONValue.parse(bytes: r.body), let data = doc["data"]?.arrayValue else {
                    call.fail(ProviderError(.invalidResponse, "GET \(ProviderHTTP.join(endpoint, "models")): not a model list: \(ProviderHTTP.excerpt(r.body))", status: r.status))
                    return
                }
                var all = models
                for m in data {
                    guard let id = m["id"]?.stringValue else { continue }
                    var details = JSONObject()
                    if let n = m["display_name"]?.stringValue { details["display_name"] = .string(n) }
                    if let c = m["created_at"]?.stringValue { details["created_at"] = .string(c) }
                    all.append(ModelInfo(id: id, contextLength: m["max_input_tokens"]?.intValue, ownedBy: "anthropic", details: details))
                }
                if doc["has_more"]?.boolValue == true, let last = doc["last_id"]?.stringValue, pages < 19 {
                    fetchModels(call, afterID: last, pages: pages + 1, into: all)
                } else {
                    call.finish(json: Wire.encode(models: all))
                }
            }
        }
        call.onCancel { transfer.cancel() }
    }

    /// An authenticated `GET /models?limit=1`: proves the endpoint answers
    /// and the key is accepted; the error says which of the two failed.
    func healthCheck(_ call: PluginCall) {
        let start = ContinuousClock.now
        let endpoint = settings.endpoint
        let instance = context.instance
        let transfer = http.fetch(request("GET", "models?limit=1")) { [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: endpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(httpError(status: r.status, headers: r.headers, body: r.body, path: "models", model: nil))
                    return
                }
                guard let doc = try? JSONValue.parse(bytes: r.body), doc["data"]?.arrayValue != nil else {
                    call.fail(ProviderError(.invalidResponse, "GET \(ProviderHTTP.join(endpoint, "models")): not a model list: \(ProviderHTTP.excerpt(r.body))", status: r.status))
                    return
                }
                call.finish(result: settings.healthReport(instance: instance, "GET", "models", status: r.status, since: start))
            }
        }
        call.onCancel { transfer.cancel() }
    }

    func shutdown(_ call: PluginCall) {
        http.shutdown()
        call.finish(result: [:])
    }
}

/// One streamed message, for `StreamResponseHandler`.
/// Fragments go through an `EventBatcher`: the deltas of all the events one
/// network read carried reach the host as one event per run of a kind.
final class MessageStreamConsumer: StreamConsumer, @unchecked Sendable {
    let backend: AnthropicBackend
    let call: EventBatcher
    let model: String?
    var state = AnthropicStream()

    init(backend: AnthropicBackend, call: PluginCall, model: String?) {
        self.backend = backend
        self.call = EventBatcher(call: call)
        self.model = model
    }

    func flush() { call.flush() }

    func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool {
        try state.event(event, call)
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        try AnthropicStream.whole(body, call)
    }

    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        guard sawTerminal else {
            throw ProviderError(.streamClosed, "the stream ended before message_stop")
        }
        return try state.finish(call)
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        backend.httpError(status: status, headers: headers, body: body, path: "messages", model: model)
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(abi: abi, host: host, name: "anthropic", version: AnthropicBackend.version, factories: [
        BackendFactory(id: "anthropic", description: "Anthropic Messages API") { try AnthropicBackend($0) }
    ])
}
