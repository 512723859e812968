// Azure OpenAI (factory "azure" of libdescartes-openai.so): the OpenAI
// chat-completions dialect at Azure's addresses, with Azure's credentials
// and its content-filter reports.
//
// Two URL forms, chosen by `api_version`:
// - "v1" (default) or "preview": `{endpoint}/openai/v1/chat/completions`,
//   the deployment named as the body's `model` ("preview" adds
//   `?api-version=preview`);
// - a dated version ("2024-10-21", "2025-04-01-preview"):
//   `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`.
import DescartesOpenAIChat

enum Azure {
    /// The chat server for an `azure` instance.
    ///
    /// - Throws: `config`, naming the key at fault.
    static func server(_ context: BackendContext, settings: HTTPSettings, options: ChatRequestOptions) throws(ProviderError) -> ChatServer {
        guard context.string("endpoint").map({ !$0.isEmpty }) == true else {
            throw ProviderError(
                .config, "key 'endpoint' is required: the resource's endpoint, e.g. https://NAME.openai.azure.com (AZURE_OPENAI_ENDPOINT)")
        }
        // The resource's endpoint; "/openai" or "/openai/v1" as copied from the portal is dropped.
        var endpoint = settings.endpoint
        for suffix in ["/openai/v1", "/openai"] where endpoint.lowercased().hasSuffix(suffix) {
            endpoint.removeLast(suffix.count)
            break
        }
        let version = context.string("api_version") ?? "v1"
        guard !version.isEmpty, version.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d }) else {
            throw ProviderError(.config, "key 'api_version': '\(version)' is not an Azure API version (v1, preview, or a date such as 2024-10-21)")
        }
        let auth = context.string("auth") ?? "api_key"
        var headers: [(String, String)] = [("User-Agent", "descartes-openai/\(OpenAIBackend.version)")]
        switch auth {
        case "api_key":
            if let key = settings.apiKey { headers.append(("api-key", key)) }
        case "entra_id":
            // A Microsoft Entra ID access token (scope https://cognitiveservices.azure.com/.default),
            // from the host's api_key_helper: never on a command line.
            if let token = settings.apiKey { headers.append(("Authorization", "Bearer \(token)")) }
        default:
            throw ProviderError(.config, "key 'auth': '\(auth)' is neither api_key (the api-key header) nor entra_id (a bearer token)")
        }
        guard settings.apiKey != nil else {
            throw ProviderError(
                .config,
                auth == "api_key"
                    ? "key 'api_key' is required: the resource's key (AZURE_OPENAI_API_KEY), or set auth: entra_id with a token helper"
                    : "key 'api_key' is required with auth: entra_id: a Microsoft Entra ID access token, best from api_key_helper")
        }
        headers += settings.extraHeaders
        let dated = version != "v1" && version != "preview"
        let modelPath: @Sendable (String?, String) -> String
        if dated {
            modelPath = { model, operation in "deployments/\(ProviderHTTP.percentEncoded(model ?? ""))/\(operation)" }
        } else {
            modelPath = { _, operation in operation }
        }
        let query: String? = version == "v1" ? nil : "api-version=\(version)"
        let base = endpoint + (dated ? "/openai" : "/openai/v1")
        let refine: @Sendable (ProviderError, [UInt8]) -> ProviderError = { e, body in contentFilterError(e, body) }
        return ChatServer(
            baseURL: base, headers: headers, secret: settings.apiKey, caBundle: settings.caBundle, proxy: settings.proxy,
            maxResponseBytes: settings.maxResponseBytes, defaultTimeouts: settings.defaultTimeouts, requestOptions: options,
            captureKeys: ["prompt_filter_results"], modelsPath: "models", query: query, modelPath: modelPath,
            choiceCaptureKeys: ["content_filter_results"], refineError: refine)
    }

    /// Azure's refusal of a prompt (HTTP 400, `code: content_filter`), with
    /// the categories that were filtered named: `api` (sending it again is
    /// refused again), provider type `content_filter`.
    static func contentFilterError(_ e: ProviderError, _ body: [UInt8]) -> ProviderError {
        guard let doc = try? JSONValue.parse(bytes: body), let err = doc["error"], err["code"]?.stringValue == "content_filter" else {
            return e
        }
        var out = e
        out.kind = .api
        out.providerType = "content_filter"
        let results = err["innererror"]?["content_filter_result"]?.objectValue ?? [:]
        let filtered = results.compactMap { m -> String? in
            guard m.value["filtered"]?.boolValue == true else { return nil }
            if let severity = m.value["severity"]?.stringValue { return "\(m.key) (severity \(severity))" }
            if m.value["detected"]?.boolValue == true { return "\(m.key) (detected)" }
            return m.key
        }
        let said = err["message"]?.stringValue ?? "the prompt was filtered"
        out.message = "HTTP \(e.status ?? 400): content_filter: Azure's content filter refused the prompt"
            + (filtered.isEmpty ? "" : " (filtered: \(filtered.joined(separator: ", ")))") + ": \(said)"
        return out
    }
}
