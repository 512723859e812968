// libdescartes-openai.so: OpenAI chat completions, and every OpenAI-compatible
// server (DeepSeek, Groq, GitHub Models, vLLM, llama.cpp's server, Mistral,
// OpenRouter, ...) through one factory, "openai". A compatible provider is a
// manifest naming this library with its own default endpoint and key
// variable (manifests/deepseek.yaml is one); no code.
//
// Azure OpenAI is the second factory, "azure" (Azure.swift): the same
// dialect at Azure's URLs with Azure's credentials. The third,
// "openai-responses" (Responses.swift), speaks OpenAI's Responses API.
//
// The dialect itself (request bodies, chunk parsing, tool-call assembly,
// finish reasons, error mapping) is DescartesOpenAIChat, which this library
// links statically.
import DescartesOpenAIChat

final class OpenAIBackend: DescartesBackend {
    let context: BackendContext
    let settings: HTTPSettings
    let http: HTTPClient
    let chat: ChatClient
    let azure: Bool

    /// `azure`: Azure OpenAI's URLs and credentials (Azure.swift).
    init(_ context: BackendContext, azure: Bool = false) throws(ProviderError) {
        self.context = context
        self.azure = azure
        settings = try HTTPSettings(context, defaultEndpoint: azure ? "https://invalid.openai.azure.com" : "https://api.openai.com/v1")
        let headers = Self.headers(context, settings)

        let field = context.string("max_tokens_field") ?? "max_tokens"
        guard field == "max_tokens" || field == "max_completion_tokens" else {
            throw ProviderError(.config, "key 'max_tokens_field': '\(field)' is neither max_tokens nor max_completion_tokens")
        }
        let options = ChatRequestOptions(
            defaultModel: azure ? context.string("deployment") ?? context.string("model") : context.string("model"), maxTokensField: field,
            includeUsage: context.bool("stream_usage") ?? true)
        http = HTTPClient(name: "\(context.provider):\(context.instance)")
        let server =
            azure
            ? try Azure.server(context, settings: settings, options: options)
            : ChatServer(
                baseURL: settings.endpoint, headers: headers, secret: settings.apiKey, caBundle: settings.caBundle,
                proxy: settings.proxy, maxResponseBytes: settings.maxResponseBytes, defaultTimeouts: settings.defaultTimeouts, requestOptions: options,
                modelsPath: context.string("models_path") ?? "models")
        chat = ChatClient(server: server, http: http)
        if let warning = settings.plainHTTPWarning { context.log(.warning, warning) }
    }

    static let version = "1.0.0"

    /// OpenAI's headers: the key as a bearer token, `organization` and
    /// `project`, then the configured extra headers.
    static func headers(_ context: BackendContext, _ settings: HTTPSettings) -> [(String, String)] {
        var headers: [(String, String)] = [("User-Agent", "descartes-openai/\(version)")]
        if let key = settings.apiKey { headers.append(("Authorization", "Bearer \(key)")) }
        if let org = context.string("organization"), !org.isEmpty { headers.append(("OpenAI-Organization", org)) }
        if let project = context.string("project"), !project.isEmpty { headers.append(("OpenAI-Project", project)) }
        return headers + settings.extraHeaders
    }

    func healthCheck(_ call: PluginCall) { chat.healthCheck(call, provider: context.instance) }
    func complete(_ request: ModelRequest, _ call: PluginCall) {
        if let e = missingDeployment(request) { return call.fail(e) }
        chat.complete(request, call)
    }

    func stream(_ request: ModelRequest, _ call: PluginCall) {
        if let e = missingDeployment(request) { return call.fail(e) }
        chat.stream(request, call)
    }

    /// Azure names the deployment in the URL or the body: a request must name one.
    func missingDeployment(_ request: ModelRequest) -> ProviderError? {
        guard azure, (request.model ?? chat.server.requestOptions.defaultModel ?? "").isEmpty else { return nil }
        return ProviderError(.api, "no deployment: the request names no model and key 'deployment' is not set")
    }
    func listModels(_ call: PluginCall) { chat.listModels(call) }

    /// POST /embeddings (ABI 1.1). The model: the request's, else key
    /// `embedding_model` (Azure: the deployment, which names the model).
    func embed(_ request: EmbeddingRequest, _ call: PluginCall) {
        chat.embed(
            request, call, defaultModel: azure ? context.string("deployment") : context.string("embedding_model"),
            modelKey: azure ? "deployment" : "embedding_model")
    }

    func shutdown(_ call: PluginCall) {
        http.shutdown()
        call.finish(result: [:])
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(abi: abi, host: host, name: "openai", version: OpenAIBackend.version, factories: [
        BackendFactory(id: "openai", description: "OpenAI chat completions and OpenAI-compatible servers") {
            try OpenAIBackend($0)
        },
        BackendFactory(id: "azure", description: "Azure OpenAI chat completions (deployment or v1 URLs, api-key or Entra ID)") {
            try OpenAIBackend($0, azure: true)
        },
        BackendFactory(id: "openai-responses", description: "OpenAI Responses API (reasoning items across turns, previous_response_id)") {
            try ResponsesBackend($0)
        },
    ])
}
