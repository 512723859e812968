// libdescartes-gemini.so: Google's Gemini models, over the plugin kit's
// libcurl engine, through two factories that share the wire format:
//
// "gemini": the Gemini API (generativelanguage.googleapis.com), key in x-goog-api-key
//   POST {endpoint}/models/{model}:streamGenerateContent?alt=sse   stream (SSE, CRLF line ends)
//   POST {endpoint}/models/{model}:generateContent                 complete
//   POST {endpoint}/models/{model}:countTokens                     estimate_tokens (exact)
//   GET  {endpoint}/models?pageSize=1000[&pageToken=]              list_models, health_check
//
// "vertex": Vertex AI ({location}-aiplatform.googleapis.com), an OAuth access
// token as Authorization: Bearer (config `api_key`, from the host's
// `api_key_helper`, e.g. `gcloud auth print-access-token`)
//   POST {endpoint}/projects/{project}/locations/{location}/publishers/google/models/{model}:<method>
//   (the same methods; health_check is a countTokens of one word)
import DescartesPluginKit

final class GeminiBackend: DescartesBackend {
    static let version = "1.0.0"

    enum Flavor: Sendable {
        case gemini
        case vertex(project: String, location: String)
    }

    let context: BackendContext
    let flavor: Flavor
    let settings: HTTPSettings
    let http: HTTPClient
    let headers: [(String, String)]
    let defaultModel: String?
    let includeThoughts: Bool

    init(_ context: BackendContext, vertex: Bool) throws(ProviderError) {
        self.context = context
        if vertex {
            guard let project = context.string("project"), !project.isEmpty else {
                throw ProviderError(.config, "key 'project': Vertex AI needs the Google Cloud project id (set 'project' or GOOGLE_CLOUD_PROJECT)")
            }
            let location = context.string("location") ?? "us-central1"
            for (key, value) in [("project", project), ("location", location)] where !Self.isPathSegment(value) {
                throw ProviderError(.config, "key '\(key)': '\(value)' is not a Google Cloud \(key) id (letters, digits, '-', '_', '.')")
            }
            flavor = .vertex(project: project, location: location)
            let host = location == "global" ? "aiplatform.googleapis.com" : "\(location)-aiplatform.googleapis.com"
            settings = try HTTPSettings(context, defaultEndpoint: "https://\(host)/v1")
        } else {
            flavor = .gemini
            settings = try HTTPSettings(context, defaultEndpoint: "https://generativelanguage.googleapis.com/v1beta")
        }
        var h: [(String, String)] = [("User-Agent", "descartes-gemini/\(Self.version)")]
        if let key = settings.apiKey {
            if vertex { h.append(("Authorization", "Bearer \(key)")) } else { h.append(("x-goog-api-key", key)) }
        }
        headers = h + settings.extraHeaders
        defaultModel = context.string("model")
        includeThoughts = context.bool("include_thoughts") ?? true
        http = HTTPClient(name: "\(context.provider):\(context.instance)")
        if let warning = settings.plainHTTPWarning { context.log(.warning, warning) }
    }

    static func isPathSegment(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F || b == 0x2E || b == 0x40
        }
    }

    // MARK: HTTP

    /// The resource path of a model, checked (a model id travels in the URL).
    func modelPath(_ requested: String?) throws(ProviderError) -> (model: String, path: String) {
        guard var model = requested ?? defaultModel, !model.isEmpty else {
            throw ProviderError(.api, "no model: the request names none and key 'model' is not set")
        }
        if model.hasPrefix("models/") { model.removeFirst("models/".count) }
        if model.hasPrefix("publishers/google/models/") { model.removeFirst("publishers/google/models/".count) }
        guard Self.isPathSegment(model) else {
            throw ProviderError(.api, "model '\(model)' is not a Gemini model id (letters, digits, '-', '_', '.', '@')")
        }
        switch flavor {
        case .gemini: return (model, "models/\(model)")
        case .vertex(let p, let l): return (model, "projects/\(p)/locations/\(l)/publishers/google/models/\(model)")
        }
    }

    func request(_ method: String, _ path: String, body: [UInt8] = [], accept: String = "application/json", timeouts: HTTPTimeouts? = nil) -> HTTPRequest {
        settings.request(method, path, headers: headers, body: body, accept: accept, timeouts: timeouts)
    }

    /// The error for a non-2xx answer; a 404 names the model and the URL, and
    /// a credential a server echoed back is masked.
    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8], path: String, model: String?) -> ProviderError {
        settings.explained(GeminiErrors.error(status: status, headers: headers, body: body, endpoint: settings.endpoint), status: status, path: path, model: model)
    }

    // MARK: Operations

    func stream(_ request: ModelRequest, _ call: PluginCall) { generate(request, call, streaming: true) }
    func complete(_ request: ModelRequest, _ call: PluginCall) { generate(request, call, streaming: false) }

    func generate(_ request: ModelRequest, _ call: PluginCall, streaming: Bool) {
        let target: (model: String, path: String)
        do throws(ProviderError) { target = try modelPath(request.model) } catch {
            call.fail(error)
            return
        }
        var notes: [String] = []
        let body = GeminiRequest.encode(request, purpose: .generate, includeThoughts: includeThoughts, notes: &notes)
        for n in notes {
            context.log(.info, n)
            call.notice("info", n)
        }
        let path = target.path + (streaming ? ":streamGenerateContent?alt=sse" : ":generateContent")
        let consumer = GeminiStreamConsumer(backend: self, call: call, model: target.model, path: path)
        StreamResponseHandler(call: call, endpoint: settings.endpoint, framing: streaming ? .serverSentEvents : .document, consumer: consumer)
            .start(
                self.request("POST", path, body: body, accept: streaming ? "text/event-stream" : "application/json", timeouts: HTTPTimeouts(request.deadlines)),
                on: http)
    }

    /// Exact, from `countTokens`, when the API answers; the kit's heuristic
    /// otherwise (unreachable, a deadline, a server error), with `exact:
    /// false` and why. An authentication failure is reported.
    func estimateTokens(_ request: ModelRequest, _ call: PluginCall) {
        let target: (model: String, path: String)
        do throws(ProviderError) { target = try modelPath(request.model) } catch {
            call.fail(error)
            return
        }
        var notes: [String] = []
        let purpose: GeminiRequest.Purpose
        if case .gemini = flavor { purpose = .countTokensWrapped(model: target.model) } else { purpose = .countTokensPlain }
        let body = GeminiRequest.encode(request, purpose: purpose, includeThoughts: false, notes: &notes)
        let endpoint = settings.endpoint
        var timeouts = HTTPTimeouts(request.deadlines)
        if timeouts.total == nil || timeouts.total! > 30_000 { timeouts.total = 30_000 }
        let path = target.path + ":countTokens"
        let transfer = http.fetch(self.request("POST", path, body: body, timeouts: timeouts)) { [self] result in
            func fallback(_ why: String) {
                context.log(.info, "countTokens unavailable (\(why)); estimating with the heuristic")
                var t = Heuristics.tokens(request)
                t.method += " (countTokens: \(why))"
                call.finish(json: Wire.encode(t))
            }
            switch result {
            case .failure(let e):
                let pe = e.providerError(endpoint: endpoint)
                if e.kind == .cancelled { call.fail(pe) } else { fallback(pe.kind.rawValue + (pe.deadline.map { " (\($0))" } ?? "")) }
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    let e = httpError(status: r.status, headers: r.headers, body: r.body, path: path, model: target.model)
                    if e.kind == .authentication { call.fail(e) } else { fallback("HTTP \(r.status)") }
                    return
                }
                guard let n = (try? JSONValue.parse(bytes: r.body))?["totalTokens"]?.intValue else {
                    fallback("unreadable answer")
                    return
                }
                call.finish(json: Wire.encode(TokenEstimate(tokens: n, exact: true, method: "api:countTokens")))
            }
        }
        call.onCancel { transfer.cancel() }
    }

    /// Gemini API: every model, following `nextPageToken` (at most 20 pages).
    /// Vertex AI has no list of Google's models in v1: `unsupported_feature`.
    func listModels(_ call: PluginCall) {
        guard case .gemini = flavor else {
            call.fail(ProviderError(.unsupportedFeature, "Vertex AI's v1 API has no list of publisher models; the manifest lists the common ones (descartes plugins info vertex)"))
            return
        }
        fetchModels(call, pageToken: nil, pages: 0, into: [])
    }

    func fetchModels(_ call: PluginCall, pageToken: String?, pages: Int, into models: [ModelInfo]) {
        let path = "models?pageSize=1000" + (pageToken.map { "&pageToken=\(ProviderHTTP.percentEncoded($0))" } ?? "")
        let endpoint = settings.endpoint
        let transfer = http.fetch(request("GET", path)) { [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: endpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(httpError(status: r.status, headers: r.headers, body: r.body, path: "models", model: nil))
                    return
                }
                guard let doc = try? JSONValue.parse(bytes: r.body), doc.objectValue != nil, let list = doc["models"]?.arrayValue ?? (doc.objectValue?.isEmpty == true ? [] : nil) else {
                    call.fail(ProviderError(.invalidResponse, "GET \(ProviderHTTP.join(endpoint, "models")): not a model list: \(ProviderHTTP.excerpt(r.body))", status: r.status))
                    return
                }
                var all = models
                for m in list {
                    guard var id = m["name"]?.stringValue else { continue }
                    if id.hasPrefix("models/") { id.removeFirst("models/".count) }
                    var details = JSONObject()
                    if let n = m["displayName"]?.stringValue { details["display_name"] = .string(n) }
                    if let o = m["outputTokenLimit"]?.intValue { details["max_output"] = .integer(o) }
                    if let methods = m["supportedGenerationMethods"] { details["methods"] = methods }
                    if let t = m["thinking"]?.boolValue { details["thinking"] = .bool(t) }
                    all.append(ModelInfo(id: id, contextLength: m["inputTokenLimit"]?.intValue, ownedBy: "google", details: details))
                }
                if let next = doc["nextPageToken"]?.stringValue, !next.isEmpty, pages < 19 {
                    fetchModels(call, pageToken: next, pages: pages + 1, into: all)
                } else {
                    call.finish(json: Wire.encode(models: all))
                }
            }
        }
        call.onCancel { transfer.cancel() }
    }

    /// Gemini API: an authenticated `GET models?pageSize=1`. Vertex AI: a
    /// `countTokens` of one word on the default model (proves the endpoint,
    /// the project, the token and the model). The error says which failed.
    func healthCheck(_ call: PluginCall) {
        let start = ContinuousClock.now
        let endpoint = settings.endpoint
        let instance = context.instance
        let req: HTTPRequest
        let path: String
        switch flavor {
        case .gemini:
            path = "models?pageSize=1"
            req = request("GET", path)
        case .vertex:
            let target: (model: String, path: String)
            do throws(ProviderError) { target = try modelPath(nil) } catch {
                call.fail(error)
                return
            }
            path = target.path + ":countTokens"
            req = request("POST", path, body: Array(#"{"contents":[{"role":"user","parts":[{"text":"ping"}]}]}"#.utf8))
        }
        let transfer = http.fetch(req) { [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: endpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(httpError(status: r.status, headers: r.headers, body: r.body, path: path, model: defaultModel))
                    return
                }
                guard let doc = try? JSONValue.parse(bytes: r.body), doc.objectValue != nil else {
                    call.fail(ProviderError(.invalidResponse, "\(req.method) \(ProviderHTTP.join(endpoint, path)): not JSON: \(ProviderHTTP.excerpt(r.body))", status: r.status))
                    return
                }
                call.finish(result: settings.healthReport(instance: instance, req.method, path, status: r.status, since: start))
            }
        }
        call.onCancel { transfer.cancel() }
    }

    func shutdown(_ call: PluginCall) {
        http.shutdown()
        call.finish(result: [:])
    }
}

/// One answer, streamed (SSE) or whole, for `StreamResponseHandler`.
final class GeminiStreamConsumer: StreamConsumer, @unchecked Sendable {
    let backend: GeminiBackend
    let call: EventBatcher
    let model: String
    let path: String
    var state = GeminiStream()

    init(backend: GeminiBackend, call: PluginCall, model: String, path: String) {
        self.backend = backend
        self.call = EventBatcher(call: call)
        self.model = model
        self.path = path
    }

    func flush() { call.flush() }

    /// Each event's data is one `GenerateContentResponse`; the stream has no
    /// terminal event of its own: it ends with the body.
    func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool {
        if event.data.count == 0 { return false }
        let v: JSONValue
        do { v = try JSONValue.parse(event.data) } catch {
            throw ProviderError(.invalidResponse, "unreadable event data (\(error)): \(ProviderHTTP.excerpt(Array(event.data)))")
        }
        try state.chunk(v, call)
        return false
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        try GeminiStream.whole(body, call)
    }

    /// A stream must have carried a finish reason (or a blocked prompt)
    /// before the body ended; otherwise it was cut.
    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        guard state.ended else {
            throw ProviderError(.streamClosed, "the stream ended before a chunk with a finishReason")
        }
        return state.finish(call)
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        backend.httpError(status: status, headers: headers, body: body, path: path, model: model)
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(abi: abi, host: host, name: "gemini", version: GeminiBackend.version, factories: [
        BackendFactory(id: "gemini", description: "Google Gemini API (generativelanguage.googleapis.com)") { try GeminiBackend($0, vertex: false) },
        BackendFactory(id: "vertex", description: "Gemini on Google Cloud Vertex AI") { try GeminiBackend($0, vertex: true) },
    ])
}
