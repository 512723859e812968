// libdescartes-ollama.so: Ollama over its native API.
//
//   GET  /api/version   health_check, and the first step of initialize
//   GET  /api/tags      the installed models (initialize caches them; list_models)
//   POST /api/show      one model's details: context length, capabilities
//   POST /api/chat      complete ("stream": false) and stream (NDJSON)
//
// Not the OpenAI-compatible shim (/v1): the native API reports load and
// eval timings, takes num_ctx and keep_alive, and says which models exist.
import DescartesPluginKit

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(abi: abi, host: host, name: "ollama", version: "1.0.0", factories: [
        BackendFactory(id: "ollama", description: "Ollama's native API (/api/chat, /api/tags, /api/show)") {
            try OllamaBackend($0)
        }
    ])
}

final class OllamaBackend: DescartesBackend, @unchecked Sendable {
    let context: BackendContext
    /// The server's base URL, e.g. "http://localhost:11434".
    let endpoint: String
    let apiKey: String?
    /// The model used when a request names none (config `model`).
    let defaultModel: String?
    /// How long Ollama keeps the model loaded after a request (config
    /// `keep_alive`: "5m", "-1", "0"), unless the request says.
    let keepAlive: JSONValue?
    /// A fixed context size (config `num_ctx`) instead of the sized one.
    let fixedNumCtx: Int?
    let client: HTTPClient
    /// Limits for the small metadata calls (version, tags, show).
    let metaTimeouts: HTTPTimeouts
    /// The largest answer read, a stream's total too (`max_response_mb`).
    let maxResponseBytes: Int

    private struct Catalog {
        var models: [InstalledModel]? = nil
        var version: String? = nil
        var details: [String: ModelDetails] = [:]
        /// The largest context size asked for per model: Ollama reloads a
        /// model whenever num_ctx changes, so sizes only grow.
        var numCtx: [String: Int] = [:]
    }
    private let catalog = Lock(Catalog())

    /// The smallest context size asked for (what current Ollama releases use
    /// by default; older ones used 2048).
    static let minimumNumCtx = 4096
    /// Output tokens reserved when the request sets no limit.
    static let outputReserve = 1024

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        endpoint = try OllamaWire.normalize(endpoint: context.string("endpoint") ?? "http://localhost:11434")
        apiKey = context.string("api_key").flatMap { $0.isEmpty ? nil : $0 }
        defaultModel = context.string("model").flatMap { $0.isEmpty ? nil : $0 }
        // Ollama reads a number as seconds (negative: forever) and a string
        // as a Go duration ("5m"), so "-1" and "300" travel as numbers.
        switch context.config["keep_alive"] {
        case .string(let s)? where !s.isEmpty: keepAlive = Int(s).map { .integer($0) } ?? .string(s)
        case .integer(let n)?: keepAlive = .integer(n)
        default: keepAlive = nil
        }
        if let n = context.int("num_ctx") {
            guard n > 0 else { throw ProviderError(.config, "key 'num_ctx': must be positive, got \(n)") }
            fixedNumCtx = n
        } else {
            fixedNumCtx = nil
        }
        let secs = context.int("timeout_secs") ?? 300
        guard secs > 0 else { throw ProviderError(.config, "key 'timeout_secs': must be positive, got \(secs)") }
        metaTimeouts = HTTPTimeouts(connect: 10_000, total: min(30, secs) * 1000)
        maxResponseBytes = try HTTPSettings.maxResponseBytes(context)
        client = HTTPClient(name: "ollama \(context.instance)")
        if let w = ProviderHTTP.plainHTTPWarning(endpoint: endpoint, hasCredential: apiKey != nil) {
            context.log(.warning, w)
        }
    }

    func headers(json: Bool) -> [(String, String)] {
        var h: [(String, String)] = [("User-Agent", "descartes-ollama/1.0"), ("Accept", "application/x-ndjson, application/json")]
        if json { h.append(("Content-Type", "application/json")) }
        if let apiKey { h.append(("Authorization", "Bearer \(apiKey)")) }
        return h
    }

    /// The error for a server that does not answer at all.
    func unreachable(_ e: HTTPError) -> ProviderError {
        ProviderError(
            .providerUnavailable,
            "cannot connect to \(endpoint): is Ollama running at \(endpoint)? Start it with `ollama serve`, or point OLLAMA_ENDPOINT (or OLLAMA_HOST, or the `endpoint` key) at it (\(e.message))"
        )
    }

    // MARK: Metadata calls

    /// A small GET/POST whose whole JSON answer is wanted.
    func meta(_ method: String, _ path: String, body: JSONValue? = nil) async -> Result<JSONValue, ProviderError> {
        let request = HTTPRequest(
            method: method, url: ProviderHTTP.join(endpoint, path), headers: headers(json: body != nil),
            body: body?.jsonBytes ?? [], timeouts: metaTimeouts, maxResponseBytes: 32 << 20)
        switch await client.fetch(request) {
        case .failure(let e):
            if case .unreachable = e.kind { return .failure(unreachable(e)) }
            var pe = e.providerError(endpoint: endpoint)
            pe.message = "\(method) \(path): \(pe.message)"
            return .failure(pe)
        case .success(let r):
            guard (200...299).contains(r.status) else {
                var pe = ProviderHTTP.error(status: r.status, headers: r.headers, body: r.body, endpoint: endpoint)
                pe.message = "\(method) \(path): \(pe.message)"
                return .failure(pe)
            }
            do { return .success(try JSONValue.parse(bytes: r.body)) } catch {
                return .failure(
                    ProviderError(.invalidResponse, "\(method) \(path): the answer is not JSON (\(error)): \(ProviderHTTP.excerpt(r.body))"))
            }
        }
    }

    /// GET /api/version.
    func version() async -> Result<String, ProviderError> {
        switch await meta("GET", "/api/version") {
        case .failure(var e):
            if e.status == 404 {
                e = ProviderError(
                    .initialization,
                    "the server at \(endpoint) does not speak Ollama's API (GET /api/version: 404); for an OpenAI-compatible server use the llamacpp or openai-compatible providers",
                    status: 404)
            }
            return .failure(e)
        case .success(let doc):
            guard let v = doc["version"]?.stringValue else {
                return .failure(ProviderError(.invalidResponse, "GET /api/version: no \"version\" in \(Wire.excerpt(doc.jsonText))"))
            }
            catalog.withLock { $0.version = v }
            return .success(v)
        }
    }

    /// GET /api/tags, cached.
    func refreshModels() async -> Result<[InstalledModel], ProviderError> {
        switch await meta("GET", "/api/tags") {
        case .failure(let e): return .failure(e)
        case .success(let doc):
            guard let arr = doc["models"]?.arrayValue else {
                if doc["models"]?.isNull == true { return store([]) }
                return .failure(ProviderError(.invalidResponse, "GET /api/tags: no \"models\" list in \(Wire.excerpt(doc.jsonText))"))
            }
            var models: [InstalledModel] = []
            for m in arr {
                guard let name = m["name"]?.stringValue ?? m["model"]?.stringValue else { continue }
                var d = JSONObject()
                for k in ["size", "digest", "modified_at"] { if let v = m[k], !v.isNull { d[k] = v } }
                if let det = m["details"]?.objectValue {
                    for k in ["family", "parameter_size", "quantization_level", "format"] {
                        if let v = det[k], !v.isNull { d[k] = v }
                    }
                }
                models.append(InstalledModel(name: name, details: d))
            }
            return store(models)
        }
    }

    private func store(_ models: [InstalledModel]) -> Result<[InstalledModel], ProviderError> {
        catalog.withLock { $0.models = models }
        return .success(models)
    }

    /// POST /api/show, cached per model. A server that cannot say (an old
    /// Ollama, a proxy) yields empty details rather than an error.
    func details(_ model: String) async -> ModelDetails {
        if let d = catalog.withLock({ $0.details[model] }) { return d }
        let d: ModelDetails
        switch await meta("POST", "/api/show", body: ["model": .string(model), "name": .string(model)]) {
        case .success(let doc): d = ModelDetails.parse(doc)
        case .failure(let e):
            context.log(.debug, "POST /api/show for '\(model)' failed, context length unknown: \(e.message)")
            return ModelDetails()
        }
        catalog.withLock { $0.details[model] = d }
        return d
    }

    /// The installed name `model` refers to: itself, or "<model>:latest"
    /// (Ollama's own rule for a name without a tag).
    static func resolve(_ model: String, in models: [InstalledModel]) -> String? {
        if models.contains(where: { $0.name == model }) { return model }
        if !model.contains(":"), models.contains(where: { $0.name == model + ":latest" }) { return model + ":latest" }
        return nil
    }

    /// The model a request runs on: known to be installed, or an error that
    /// says what is installed and how to get it.
    func installedModel(for request: ModelRequest) async -> Result<String, ProviderError> {
        var models = catalog.withLock { $0.models }
        var fresh = false
        if models == nil {
            switch await refreshModels() {
            case .failure(let e): return .failure(e)
            case .success(let m): models = m
            }
            fresh = true
        }
        guard let wanted = request.model ?? defaultModel else {
            if models!.count == 1 { return .success(models![0].name) }
            return .failure(
                ProviderError(
                    .config,
                    "no model named: pass one with the request (-m MODEL) or set the `model` key; \(Self.installedList(models!))"))
        }
        if let name = Self.resolve(wanted, in: models!) { return .success(name) }
        if !fresh {
            // Perhaps pulled since the list was cached.
            switch await refreshModels() {
            case .failure(let e): return .failure(e)
            case .success(let m):
                models = m
                if let name = Self.resolve(wanted, in: m) { return .success(name) }
            }
        }
        return .failure(
            ProviderError(
                .api,
                "model '\(wanted)' is not installed on the Ollama server at \(endpoint); \(Self.installedList(models!)). Install it with `ollama pull \(wanted)`",
                providerType: "model_not_found"))
    }

    static func installedList(_ models: [InstalledModel]) -> String {
        models.isEmpty ? "no model is installed" : "installed: " + models.map(\.name).joined(separator: ", ")
    }

    // MARK: Context size

    /// A generous count of the request's input tokens: UTF-8 bytes / 3 (a
    /// token is about 4 bytes of English and 3 of CJK text) plus framing.
    static func promptEstimate(_ r: ModelRequest) -> Int {
        var bytes = r.systemPrompt?.utf8.count ?? 0
        for m in r.messages {
            bytes += m.content.utf8.count + (m.reasoning?.utf8.count ?? 0)
            for c in m.toolCalls { bytes += c.name.utf8.count + c.arguments.utf8.count }
        }
        for t in r.tools { bytes += t.name.utf8.count + t.description.utf8.count + t.parameters.jsonText.utf8.count }
        return (bytes + 2) / 3 + 4 * (r.messages.count + 1) + 16 * r.tools.count
    }

    /// The num_ctx to send: the caller's (request option, then config
    /// `num_ctx`), else the smallest power of two from 4096 (or the
    /// Modelfile's num_ctx) that holds the prompt and the answer, capped by
    /// the model's context length, and never smaller than what this backend
    /// asked for the same model before (Ollama reloads on every change).
    func numCtx(for request: ModelRequest, model: String, details: ModelDetails, estimate: Int) -> Int {
        if let n = request.options["num_ctx"]?.intValue { return n }
        if let n = fixedNumCtx { return n }
        let output = request.maxTokens ?? request.options["num_predict"]?.intValue.flatMap { $0 > 0 ? $0 : nil } ?? Self.outputReserve
        let need = estimate + output
        return catalog.withLock { c in
            var size = max(Self.minimumNumCtx, details.modelfileNumCtx ?? 0, c.numCtx[model] ?? 0)
            while size < need { size *= 2 }
            if let limit = details.contextLength, limit > 0 { size = min(size, limit) }
            c.numCtx[model] = max(c.numCtx[model] ?? 0, size)
            return size
        }
    }

    // MARK: DescartesBackend

    func initialize(_ call: PluginCall) {
        let task = Task { [self] in
            let v: String
            switch await version() {
            case .failure(let e): return call.fail(e)
            case .success(let s): v = s
            }
            switch await refreshModels() {
            case .failure(let e): call.fail(e)
            case .success(let models):
                call.finish(
                    json: Self.initResult(
                        models: models, message: "Ollama \(v) at \(endpoint): \(models.count) model\(models.count == 1 ? "" : "s") installed"))
            }
        }
        call.onCancel { task.cancel() }
    }

    static func initResult(models: [InstalledModel], message: String) -> [UInt8] {
        let list: [JSONValue] = models.map { .object(["id": .string($0.name), "details": .object($0.details)]) }
        return JSONValue.object(["models": .array(list), "message": .string(message)]).jsonBytes
    }

    func healthCheck(_ call: PluginCall) {
        let task = Task { [self] in
            switch await version() {
            case .failure(let e): call.fail(e)
            case .success(let v):
                var details: JSONObject = ["version": .string(v), "endpoint": .string(endpoint)]
                if let n = catalog.withLock({ $0.models?.count }) { details["models"] = .integer(n) }
                call.finish(result: ["message": .string("Ollama \(v) is answering at \(endpoint)"), "details": .object(details)])
            }
        }
        call.onCancel { task.cancel() }
    }

    /// POST /api/embed (ABI 1.1): {"model", "input": [...], "dimensions"?}
    /// -> {"model", "embeddings": [[number]], "prompt_eval_count"}. The model
    /// must be installed, as for a chat (the error lists what is).
    func embed(_ request: EmbeddingRequest, _ call: PluginCall) {
        let task = Task { [self] in
            let model: String
            switch await installedModel(for: ModelRequest(prompt: "", model: request.model)) {
            case .failure(let e): return call.fail(e)
            case .success(let m): model = m
            }
            var body: JSONObject = ["model": .string(model), "input": .array(request.inputs.map { .string($0) })]
            if let d = request.dimensions { body["dimensions"] = .integer(d) }
            let http = HTTPRequest(
                method: "POST", url: ProviderHTTP.join(endpoint, "/api/embed"), headers: headers(json: true),
                body: JSONValue.object(body).jsonBytes, timeouts: HTTPTimeouts(request.deadlines), maxResponseBytes: 256 << 20)
            switch await client.fetch(http) {
            case .failure(let e):
                if case .unreachable = e.kind { return call.fail(unreachable(e)) }
                var pe = e.providerError(endpoint: endpoint)
                pe.message = "POST /api/embed: \(pe.message)"
                call.fail(pe)
            case .success(let r):
                guard (200...299).contains(r.status) else {
                    var pe = ProviderHTTP.error(status: r.status, headers: r.headers, body: r.body, endpoint: endpoint)
                    pe.message = "POST /api/embed: \(pe.message)"
                    return call.fail(pe)
                }
                do {
                    let doc = try JSONValue.parse(bytes: r.body)
                    var e = try Wire.decodeEmbeddings(doc)
                    guard e.vectors.count == request.inputs.count else {
                        return call.fail(
                            ProviderError(.invalidResponse, "POST /api/embed: \(e.vectors.count) embeddings for \(request.inputs.count) inputs", status: r.status))
                    }
                    if let n = doc["prompt_eval_count"]?.intValue { e.usage.inputTokens = n }
                    call.finish(embeddings: e)
                } catch {
                    call.fail(ProviderError(.invalidResponse, "POST /api/embed: \(error): \(ProviderHTTP.excerpt(r.body))", status: r.status))
                }
            }
        }
        call.onCancel { task.cancel() }
    }

    func listModels(_ call: PluginCall) {
        let task = Task { [self] in
            let models: [InstalledModel]
            switch await refreshModels() {
            case .failure(let e): return call.fail(e)
            case .success(let m): models = m
            }
            // Each model's details, a few at a time (the server is local).
            let shown = await withTaskGroup(of: (Int, ModelDetails).self) { group -> [Int: ModelDetails] in
                var out: [Int: ModelDetails] = [:]
                var next = 0
                func add() {
                    let i = next
                    next += 1
                    group.addTask { (i, await self.details(models[i].name)) }
                }
                while next < min(models.count, 4) { add() }
                for await (i, d) in group {
                    out[i] = d
                    if next < min(models.count, 64) { add() }
                }
                return out
            }
            let infos = models.enumerated().map { (i, m) -> ModelInfo in
                var d = m.details
                let s = shown[i]
                if let caps = s?.capabilities { d["capabilities"] = .array(caps.map { .string($0) }) }
                return ModelInfo(id: m.name, contextLength: s?.contextLength, ownedBy: "ollama", details: d)
            }
            call.finish(json: Wire.encode(models: infos))
        }
        call.onCancel { task.cancel() }
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) { chat(request, call, streaming: false) }

    func stream(_ request: ModelRequest, _ call: PluginCall) { chat(request, call, streaming: true) }

    func chat(_ request: ModelRequest, _ call: PluginCall, streaming: Bool) {
        let budget = DeadlineBudget(request.deadlines)
        let task = Task { [self] in
            let model: String
            switch await installedModel(for: request) {
            case .failure(let e): return call.fail(e)
            case .success(let m): model = m
            }
            if call.isFinished { return }
            let details = await details(model)
            var tools = request.tools
            switch request.toolChoice {
            case .none?: tools = []
            case .tool(let name)?: tools = tools.filter { $0.name == name }
            case .required?:
                if !tools.isEmpty { call.notice("warning", "Ollama cannot force a tool call: tool_choice 'required' acts as 'auto'") }
            default: break
            }
            if !tools.isEmpty, let caps = details.capabilities, !caps.contains("tools") {
                return call.fail(
                    ProviderError(
                        .unsupportedFeature,
                        "model '\(model)' does not support tools (its capabilities: \(caps.joined(separator: ", "))); choose a model with tool support or send no tools"))
            }
            let estimate = Self.promptEstimate(request)
            let numCtx = numCtx(for: request, model: model, details: details, estimate: estimate)
            let body: [UInt8]
            do throws(ProviderError) {
                body = try OllamaWire.chatBody(request, model: model, stream: streaming, numCtx: numCtx, keepAlive: keepAlive, tools: tools)
            } catch {
                return call.fail(error)
            }
            if call.isFinished { return }
            let consumer = ChatConsumer(backend: self, call: call, model: model, numCtx: numCtx, promptEstimate: estimate)
            // Ollama holds its answer back while it loads the model, and
            // answers 503 when its queue is full (or a proxy's model loads).
            let notReady = NotReadyPolicy(server: "Ollama", budget: budget, likelyDoing: "loading '\(model)' into memory")
            let request = HTTPRequest(
                method: "POST", url: ProviderHTTP.join(endpoint, "/api/chat"), headers: headers(json: true), body: body,
                maxResponseBytes: maxResponseBytes)
            StreamResponseHandler(
                call: call, endpoint: endpoint, framing: streaming ? .lines : .document, notReady: notReady, consumer: consumer
            ).start(request, on: client)
        }
        call.onCancel { task.cancel() }
    }

    func shutdown(_ call: PluginCall) {
        client.shutdown()
        call.finish(result: [:])
    }
}
