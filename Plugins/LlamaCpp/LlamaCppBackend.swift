// libdescartes-llamacpp.so: a llama.cpp server on your own hardware --
// llama.cpp's `llama-server` or llama-cpp-python's `llama_cpp.server` -- over
// its OpenAI-compatible API, spoken by the shared dialect
// (DescartesOpenAIChat), plus what those servers add:
//
//   POST /v1/chat/completions     complete and stream (SSE)
//   GET  /v1/models               list_models (llama-server adds meta.n_ctx_train)
//   GET  /health                  health_check (llama-server; 503 while loading),
//                                 else GET /v1/models
//   POST /tokenize                llama-server's tokenizer    } estimate_tokens, and
//   POST /apply-template          llama-server's chat template} usage a stream
//   POST /extras/tokenize         llama-cpp-python's tokenizer} did not report
import DescartesOpenAIChat

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(abi: abi, host: host, name: "llamacpp", version: "1.0.0", factories: [
        BackendFactory(id: "llamacpp", description: "llama.cpp's server (llama-server, llama-cpp-python) over /v1 with its tokenizer") {
            try LlamaCppBackend($0)
        }
    ])
}

final class LlamaCppBackend: DescartesBackend, @unchecked Sendable {
    let context: BackendContext
    let settings: HTTPSettings
    let server: ChatServer
    /// The server's root (the endpoint without its "/v1"), where /health and
    /// the tokenizers live.
    let root: String
    let client: HTTPClient
    /// Completions, over `client`.
    let chat: ChatClient

    /// Which tokenizer endpoint the server has, once known.
    enum Tokenizer: Sendable, Equatable {
        /// llama-server: POST /tokenize {"content"} -> {"tokens"}, and POST /apply-template.
        case llamaServer
        /// llama-cpp-python: POST /extras/tokenize {"input"} -> {"tokens"}
        /// (which include the BOS token: `overhead` tokens for "").
        case llamaCppPython(overhead: Int)
        case none
    }
    private let tokenizer = Lock<Tokenizer?>(nil)

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        settings = try HTTPSettings(context, defaultEndpoint: "http://localhost:8080/v1")
        var headers: [(String, String)] = [("User-Agent", "descartes-llamacpp/1.0")]
        if let k = settings.apiKey { headers.append(("Authorization", "Bearer \(k)")) }
        headers += settings.extraHeaders
        var r = settings.endpoint
        if r.hasSuffix("/v1") { r.removeLast(3) }
        root = r
        let model = context.string("model").flatMap { $0.isEmpty ? nil : $0 }
        server = ChatServer(
            baseURL: settings.endpoint, headers: headers, secret: settings.apiKey, caBundle: settings.caBundle,
            proxy: settings.proxy, maxResponseBytes: settings.maxResponseBytes,
            defaultTimeouts: HTTPTimeouts(connect: 10_000, total: min(30, settings.timeoutSecs ?? 30) * 1000),
            requestOptions: ChatRequestOptions(defaultModel: model, maxTokensField: "max_tokens", includeUsage: true, schemaForm: .jsonObjectWithSchema),
            captureKeys: ["timings"])
        client = HTTPClient(name: "llamacpp \(context.instance)")
        chat = ChatClient(server: server, http: client)
        if let w = settings.plainHTTPWarning { context.log(.warning, w) }
    }

    func unreachable(_ e: HTTPError) -> ProviderError {
        ProviderError(
            .providerUnavailable,
            "cannot connect to \(server.baseURL): is the llama.cpp server running there? Start it with `llama-server -m MODEL.gguf --port 8080` (or `python3 -m llama_cpp.server --model MODEL.gguf`), or point LLAMACPP_ENDPOINT (or the `endpoint` key) at it (\(e.message))"
        )
    }

    // MARK: Small calls

    /// A request to `url` (absolute), answered whole.
    func fetch(_ method: String, _ url: String, body: JSONValue? = nil) async -> Result<HTTPResponse, ProviderError> {
        var h = server.headers
        h.append(("Accept", "application/json"))
        if body != nil { h.append(("Content-Type", "application/json")) }
        let request = HTTPRequest(
            method: method, url: url, headers: h, body: body?.jsonBytes ?? [], timeouts: server.defaultTimeouts,
            maxResponseBytes: server.maxResponseBytes, caBundle: server.caBundle, proxy: server.proxy)
        switch await client.fetch(request) {
        case .failure(let e):
            if case .unreachable = e.kind { return .failure(unreachable(e)) }
            return .failure(server.scrub(e.providerError(endpoint: server.baseURL)))
        case .success(let r): return .success(r)
        }
    }

    /// A 2xx JSON answer, or the error the status says.
    func json(_ method: String, _ url: String, body: JSONValue? = nil) async -> Result<JSONValue, ProviderError> {
        switch await fetch(method, url, body: body) {
        case .failure(let e): return .failure(e)
        case .success(let r):
            guard (200...299).contains(r.status) else {
                let path = String(url.dropFirst(root.count))
                return .failure(server.httpError(status: r.status, headers: r.headers, body: r.body, method: method, path: path, model: nil))
            }
            guard let doc = try? JSONValue.parse(bytes: r.body) else {
                return .failure(ProviderError(.invalidResponse, "\(method) \(url): not JSON: \(ProviderHTTP.excerpt(r.body))", status: r.status))
            }
            return .success(doc)
        }
    }

    func models() async -> Result<[ModelInfo], ProviderError> {
        switch await json("GET", server.url(server.modelsPath)) {
        case .failure(let e): return .failure(e)
        case .success(let doc):
            guard let data = doc["data"]?.arrayValue ?? doc["models"]?.arrayValue else {
                return .failure(ProviderError(.invalidResponse, "GET \(server.url(server.modelsPath)): not a model list: \(Wire.excerpt(doc.jsonText))"))
            }
            return .success(
                data.compactMap { m -> ModelInfo? in
                    guard let id = m["id"]?.stringValue ?? m["name"]?.stringValue ?? m["model"]?.stringValue else { return nil }
                    var details = JSONObject()
                    // llama-server: {"meta": {"n_ctx_train", "n_params", "size", "n_vocab", ...}}
                    if let meta = m["meta"]?.objectValue { for x in meta { details[x.key] = x.value } }
                    return ModelInfo(
                        id: id, contextLength: m["meta"]?["n_ctx_train"]?.intValue ?? m["context_length"]?.intValue ?? m["max_model_len"]?.intValue,
                        ownedBy: m["owned_by"]?.stringValue, details: details)
                })
        }
    }

    // MARK: Tokenizer

    /// Finds (once) which tokenizer endpoint the server has.
    func detectTokenizer() async -> Tokenizer {
        if let t = tokenizer.withLock({ $0 }) { return t }
        var found = Tokenizer.none
        var definite = true
        switch await fetch("POST", root + "/tokenize", body: ["content": "a"]) {
        case .success(let r) where (200...299).contains(r.status) && (try? JSONValue.parse(bytes: r.body))?["tokens"]?.arrayValue != nil:
            found = .llamaServer
        case .failure:
            definite = false
        default:
            switch await json("POST", root + "/extras/tokenize", body: ["input": ""]) {
            case .success(let doc):
                if let empty = doc["tokens"]?.arrayValue { found = .llamaCppPython(overhead: empty.count) }
            case .failure(let e):
                // A 4xx says "no such endpoint"; anything else may pass.
                if !(400...499).contains(e.status ?? 0) { definite = false }
            }
        }
        if definite { tokenizer.withLock { $0 = found } }
        return found
    }

    /// Tokens of `text` by the server's tokenizer (without BOS), or nil.
    func count(_ text: String, with t: Tokenizer) async -> Int? {
        switch t {
        case .llamaServer:
            let r = await json("POST", root + "/tokenize", body: ["content": .string(text), "add_special": false])
            return (try? r.get())?["tokens"]?.arrayValue?.count
        case .llamaCppPython(let overhead):
            let r = await json("POST", root + "/extras/tokenize", body: ["input": .string(text)])
            return (try? r.get())?["tokens"]?.arrayValue.map { max(0, $0.count - overhead) }
        case .none:
            return nil
        }
    }

    /// The text of a request as the model reads it, without the chat
    /// template: system prompt, messages, tool calls and definitions.
    static func promptText(_ r: ModelRequest) -> String {
        var parts: [String] = []
        if let s = r.systemPrompt, !s.isEmpty { parts.append(s) }
        for m in r.messages {
            if !m.content.isEmpty { parts.append(m.content) }
            for c in m.toolCalls { parts.append("\(c.name)(\(c.arguments))") }
        }
        for t in r.tools { parts.append(JSONValue.object(["name": .string(t.name), "description": .string(t.description), "parameters": t.parameters]).jsonText) }
        return parts.joined(separator: "\n")
    }

    /// The request's prompt as the server's chat template renders it
    /// (llama-server's /apply-template), or nil.
    func renderedPrompt(_ r: ModelRequest) async -> String? {
        let body = ChatRequest.encode(r, stream: false, options: server.requestOptions)
        guard let doc = try? JSONValue.parse(bytes: body), let messages = doc["messages"] else { return nil }
        let result = await json("POST", root + "/apply-template", body: ["messages": messages])
        return (try? result.get())?["prompt"]?.stringValue
    }

    /// Usage for an answer whose server reported none: the output counted
    /// with the server's tokenizer (exact for the text; a re-tokenization),
    /// the prompt from the rendered template where the server can render it,
    /// else its text plus a few tokens of template per message. Always
    /// marked estimated. Without a tokenizer: one token per streamed chunk
    /// (llama.cpp servers send one per token) and chars/4 for the prompt.
    func countUsage(_ r: ModelRequest, output: [UInt8], outputChunks: Int, extraOutput: Int) async -> (Usage, String) {
        let t = await detectTokenizer()
        // Chat templates wrap each message in about five tokens ("<start_of_turn>user\n" ...
        // "<end_of_turn>\n" in Gemma's, ChatML's alike) and open the answer with three.
        let framing = 5 * (r.messages.count + (r.systemPrompt == nil ? 0 : 1)) + 3
        if t != .none, let out = await count(String(decoding: output, as: UTF8.self), with: t) {
            var input: Int? = nil
            var how = "output counted by the server's tokenizer"
            if t == .llamaServer, let prompt = await renderedPrompt(r) {
                let res = await json("POST", root + "/tokenize", body: ["content": .string(prompt), "add_special": true, "parse_special": true])
                input = (try? res.get())?["tokens"]?.arrayValue?.count
                if input != nil { how += ", prompt as the server's chat template renders it" }
            }
            if input == nil, let text = await count(Self.promptText(r), with: t) {
                if case .llamaCppPython(let overhead) = t { input = text + overhead + framing } else { input = text + framing }
                how += ", prompt text counted and its chat template estimated (\(framing) tokens)"
            }
            let tokenizerName = t == .llamaServer ? "/tokenize" : "/extras/tokenize"
            return (
                Usage(inputTokens: input ?? Heuristics.tokens(r).tokens, outputTokens: out + extraOutput, estimated: true),
                how + " (\(tokenizerName)); the server reported no usage"
            )
        }
        return (
            Usage(inputTokens: Heuristics.tokens(r).tokens, outputTokens: outputChunks + extraOutput, estimated: true),
            "estimated: output from the streamed chunks (one per token), prompt by chars/4; the server reported no usage and has no tokenizer endpoint"
        )
    }

    // MARK: DescartesBackend

    func initialize(_ call: PluginCall) {
        let task = Task { [self] in
            switch await models() {
            case .success(let m):
                let names = m.map(\.id).joined(separator: ", ")
                call.finish(
                    json: JSONValue.object([
                        "models": .array(m.map { .object(["id": .string($0.id)]) }),
                        "message": .string("llama.cpp server at \(server.baseURL) serves \(names.isEmpty ? "no model" : names)"),
                    ]).jsonBytes)
            case .failure(let e) where e.status == 503:
                // Still loading its model: requests wait for it within their deadlines.
                call.finish(result: ["message": .string("the server at \(server.baseURL) is loading its model: \(e.message)")])
            case .failure(let e):
                call.fail(e)
            }
        }
        call.onCancel { task.cancel() }
    }

    func healthCheck(_ call: PluginCall) {
        let task = Task { [self] in
            switch await fetch("GET", root + "/health") {
            case .failure(let e): return call.fail(e)
            case .success(let r) where (200...299).contains(r.status):
                let status = (try? JSONValue.parse(bytes: r.body))?["status"]?.stringValue ?? "ok"
                call.finish(result: [
                    "message": .string("llama.cpp server at \(root): \(status)"),
                    "details": ["endpoint": .string(server.baseURL), "health": .string(status)],
                ])
            case .success(let r) where r.status == 404 || r.status == 405:
                // No /health (llama-cpp-python's server): the model list proves it answers.
                switch await models() {
                case .failure(let e): call.fail(e)
                case .success(let m):
                    call.finish(result: [
                        "message": .string("the server at \(server.baseURL) answers GET /v1/models with \(m.count) model\(m.count == 1 ? "" : "s") (it has no /health)"),
                        "details": ["endpoint": .string(server.baseURL), "models": .array(m.map { .string($0.id) })],
                    ])
                }
            case .success(let r):
                call.fail(server.httpError(status: r.status, headers: r.headers, body: r.body, method: "GET", path: "/health", model: nil))
            }
        }
        call.onCancel { task.cancel() }
    }

    /// POST /v1/embeddings (ABI 1.1): the server must run with embeddings
    /// on (`llama-server --embeddings`; llama-cpp-python's server has them).
    /// It embeds with the model it was started with, whatever the name sent.
    func embed(_ request: EmbeddingRequest, _ call: PluginCall) {
        chat.embed(request, call, defaultModel: server.requestOptions.defaultModel ?? "default", modelKey: "model")
    }

    func listModels(_ call: PluginCall) {
        let task = Task { [self] in
            switch await models() {
            case .failure(let e): call.fail(e)
            case .success(let m): call.finish(json: Wire.encode(models: m))
            }
        }
        call.onCancel { task.cancel() }
    }

    func estimateTokens(_ request: ModelRequest, _ call: PluginCall) {
        let task = Task { [self] in
            let t = await detectTokenizer()
            switch t {
            case .llamaServer:
                if let prompt = await renderedPrompt(request),
                    case .success(let doc) = await json("POST", root + "/tokenize", body: ["content": .string(prompt), "add_special": true, "parse_special": true]),
                    let n = doc["tokens"]?.arrayValue?.count
                {
                    return call.finish(json: Wire.encode(TokenEstimate(tokens: n, exact: true, method: "server:/apply-template+/tokenize")))
                }
                if case .success(let doc) = await json("POST", root + "/tokenize", body: ["content": .string(Self.promptText(request)), "add_special": true]),
                    let n = doc["tokens"]?.arrayValue?.count
                {
                    return call.finish(json: Wire.encode(TokenEstimate(tokens: n, exact: true, method: "server:/tokenize (the text; the chat template's tokens not counted)")))
                }
            case .llamaCppPython:
                if case .success(let doc) = await json("POST", root + "/extras/tokenize", body: ["input": .string(Self.promptText(request))]),
                    let n = doc["tokens"]?.arrayValue?.count
                {
                    return call.finish(json: Wire.encode(TokenEstimate(tokens: n, exact: true, method: "server:/extras/tokenize (the text; the chat template's tokens not counted)")))
                }
            case .none:
                break
            }
            var h = Heuristics.tokens(request)
            h.method += t == .none ? " (the server has no tokenizer endpoint)" : " (the server's tokenizer did not answer)"
            call.finish(json: Wire.encode(h))
        }
        call.onCancel { task.cancel() }
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) { chat.complete(request, call, options(request)) }

    func stream(_ request: ModelRequest, _ call: PluginCall) { chat.stream(request, call, options(request)) }

    /// What a local llama.cpp server needs beyond the dialect: while it
    /// loads its model it answers 503 {"error": {"message": "Loading model",
    /// "type": "unavailable_error"}}, asked again within the request's
    /// deadlines; llama-cpp-python's server streams no usage, so the answer
    /// is then counted with the server's own tokenizer (or estimated
    /// without one) and the usage marked estimated.
    func options(_ request: ModelRequest) -> ChatCallOptions {
        ChatCallOptions(
            notReady: NotReadyPolicy(server: "the llama.cpp server at \(server.baseURL)", budget: DeadlineBudget(request.deadlines)),
            unreachable: { [self] in unreachable($0) },
            countUsage: { [self] answer in
                await countUsage(request, output: answer.text, outputChunks: answer.textChunks, extraOutput: (answer.reasoningBytes + 3) / 4)
            })
    }

    func shutdown(_ call: PluginCall) {
        client.shutdown()
        call.finish(result: [:])
    }
}
