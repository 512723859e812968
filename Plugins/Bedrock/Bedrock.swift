// libdescartes-bedrock.so: Amazon Bedrock's runtime Converse API (provider
// "bedrock"), over the plugin kit's libcurl engine.
//
//   POST {endpoint}/model/{modelId}/converse-stream   stream (application/vnd.amazon.eventstream)
//   POST {endpoint}/model/{modelId}/converse          complete
//   GET  {control_endpoint}/foundation-models         list_models
//
// Every request is signed with AWS Signature Version 4 (SigV4.swift: our
// own signer, and why), service `bedrock`, with credentials from the config
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or a
// profile of the shared credentials file; or, with `api_key` (a Bedrock API
// key, AWS_BEARER_TOKEN_BEDROCK), sent as Authorization: Bearer unsigned.
import DescartesPluginKit
import Glibc

final class BedrockBackend: DescartesBackend {
    static let version = "1.0.0"

    let context: BackendContext
    let settings: HTTPSettings
    let http: HTTPClient
    let region: String
    let credentials: AWSCredentials?
    let headers: [(String, String)]
    let defaultModel: String?
    /// The control plane (`ListFoundationModels`), `https://bedrock.{region}.amazonaws.com`.
    let controlEndpoint: String

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        let region = context.string("region").flatMap { $0.isEmpty ? nil : $0 } ?? "us-east-1"
        guard region.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }) else {
            throw ProviderError(.config, "key 'region': '\(region)' is not an AWS region (us-east-1, eu-west-3, ...)")
        }
        self.region = region
        settings = try HTTPSettings(context, defaultEndpoint: "https://bedrock-runtime.\(region).amazonaws.com")
        var h: [(String, String)] = [("User-Agent", "descartes-bedrock/\(Self.version)")]
        if let key = settings.apiKey {
            h.append(("Authorization", "Bearer \(key)"))
            credentials = nil
        } else {
            credentials = try AWSCredentials.resolve(context)
        }
        headers = h + settings.extraHeaders
        defaultModel = context.string("model")
        var control = context.string("control_endpoint").flatMap { $0.isEmpty ? nil : $0 } ?? "https://bedrock.\(region).amazonaws.com"
        while control.hasSuffix("/") { control.removeLast() }
        guard control.lowercased().hasPrefix("https://") || control.lowercased().hasPrefix("http://"), ProviderHTTP.host(of: control) != nil,
            !control.contains("?")
        else {
            throw ProviderError(.config, "key 'control_endpoint': '\(control)' is not an http:// or https:// URL with a host and no query")
        }
        controlEndpoint = control
        http = HTTPClient(name: "bedrock:\(context.instance)")
        if let c = credentials { context.log(.debug, "signing with \(c)") }
        if let warning = ProviderHTTP.plainHTTPWarning(endpoint: settings.endpoint, hasCredential: true) { context.log(.warning, warning) }
    }

    /// `/model/{id}/{action}`, the id percent-encoded (`:` and the `/` of an
    /// inference-profile ARN included).
    func path(_ requested: String?, _ action: String) throws(ProviderError) -> (model: String, path: String) {
        guard let model = requested ?? defaultModel, !model.isEmpty else {
            throw ProviderError(.api, "no model: the request names none and key 'model' is not set")
        }
        return (model, "model/\(ProviderHTTP.percentEncoded(model))/\(action)")
    }

    /// A signed request (a POST to the runtime; `method: "GET"` with `url`
    /// for the control plane).
    func request(
        _ path: String, body: [UInt8], accept: String, timeouts: HTTPTimeouts, method: String = "POST", url whole: String? = nil
    ) -> HTTPRequest {
        let url = whole ?? ProviderHTTP.join(settings.endpoint, path)
        var h = headers
        var signed: [(String, String)] = []
        if method == "POST" {
            h.append(("Content-Type", "application/json"))
            signed.append(("Content-Type", "application/json"))
        }
        h.append(("Accept", accept))
        signed.append(("Accept", accept))
        if let c = credentials {
            h += SigV4.sign(method: method, url: url, headers: signed, body: body, credentials: c, region: region, service: "bedrock")
        }
        return HTTPRequest(
            method: method, url: url, headers: h, body: body, timeouts: timeouts, maxResponseBytes: settings.maxResponseBytes,
            caBundle: settings.caBundle, proxy: settings.proxy)
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8], path: String, model: String?) -> ProviderError {
        settings.explained(
            BedrockErrors.error(status: status, headers: headers, body: body), status: status, path: path, model: model,
            secrets: [credentials?.secretAccessKey, credentials?.sessionToken])
    }

    // MARK: Operations

    func stream(_ request: ModelRequest, _ call: PluginCall) { converse(request, call, streaming: true) }
    func complete(_ request: ModelRequest, _ call: PluginCall) { converse(request, call, streaming: false) }

    func converse(_ request: ModelRequest, _ call: PluginCall, streaming: Bool) {
        let target: (model: String, path: String)
        let body: [UInt8]
        do throws(ProviderError) {
            target = try path(request.model, streaming ? "converse-stream" : "converse")
            body = try ConverseRequest.encode(request)
        } catch {
            call.fail(error)
            return
        }
        let consumer = ConverseConsumer(backend: self, call: call, model: target.model, path: target.path)
        consumer.state.structured = request.responseFormat != .text
        StreamResponseHandler(call: call, endpoint: settings.endpoint, framing: streaming ? .eventStream : .document, consumer: consumer).start(
            self.request(
                target.path, body: body, accept: streaming ? "application/vnd.amazon.eventstream" : "application/json",
                timeouts: HTTPTimeouts(request.deadlines)),
            on: http)
    }

    /// A signed Converse of one word with `maxTokens: 1` on the default
    /// model: proves the endpoint, the region, the credentials and access
    /// to the model (the runtime API has nothing cheaper that is signed the
    /// same way; it costs a few tokens). The error says which failed.
    func healthCheck(_ call: PluginCall) {
        let start = ContinuousClock.now
        let endpoint = settings.endpoint
        let instance = context.instance
        let target: (model: String, path: String)
        let body: [UInt8]
        do throws(ProviderError) {
            target = try path(nil, "converse")
            body = try ConverseRequest.encode(ModelRequest(messages: [.user("ping")], maxTokens: 1))
        } catch {
            call.fail(error)
            return
        }
        let transfer = http.fetch(request(target.path, body: body, accept: "application/json", timeouts: settings.defaultTimeouts)) { [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: endpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(httpError(status: r.status, headers: r.headers, body: r.body, path: target.path, model: target.model))
                    return
                }
                call.finish(result: settings.healthReport(instance: instance, "POST", target.path, status: r.status, since: start))
            }
        }
        call.onCancel { transfer.cancel() }
    }

    /// `GET {control_endpoint}/foundation-models` (`ListFoundationModels`,
    /// signed like the runtime's calls): the models with text output, their
    /// provider as the owner, and how they can be invoked in the details
    /// (`ON_DEMAND` ids work as they are; `INFERENCE_PROFILE`-only models
    /// need a profile id such as `us.` + the id).
    func listModels(_ call: PluginCall) {
        let url = controlEndpoint + "/foundation-models"
        let transfer = http.fetch(request("", body: [], accept: "application/json", timeouts: settings.defaultTimeouts, method: "GET", url: url)) {
            [self] result in
            switch result {
            case .failure(let e): call.fail(e.providerError(endpoint: controlEndpoint))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    var e = httpError(status: r.status, headers: r.headers, body: r.body, path: "", model: nil)
                    e.message += " (GET \(url))"
                    call.fail(e)
                    return
                }
                guard let doc = try? JSONValue.parse(bytes: r.body), let list = doc["modelSummaries"]?.arrayValue else {
                    call.fail(ProviderError(.invalidResponse, "GET \(url): not a model list: \(ProviderHTTP.excerpt(r.body))", status: r.status))
                    return
                }
                let models = list.compactMap { m -> ModelInfo? in
                    guard let id = m["modelId"]?.stringValue else { return nil }
                    let outputs = m["outputModalities"]?.arrayValue?.compactMap(\.stringValue) ?? []
                    guard outputs.isEmpty || outputs.contains("TEXT") else { return nil }
                    var details = JSONObject()
                    for k in ["modelName", "inferenceTypesSupported", "responseStreamingSupported", "inputModalities"] {
                        if let v = m[k] { details[k] = v }
                    }
                    if let status = m["modelLifecycle"]?["status"] { details["lifecycle"] = status }
                    return ModelInfo(id: id, ownedBy: m["providerName"]?.stringValue, details: details)
                }
                call.finish(json: Wire.encode(models: models))
            }
        }
        call.onCancel { transfer.cancel() }
    }

    func shutdown(_ call: PluginCall) {
        http.shutdown()
        call.finish(result: [:])
    }
}

final class ConverseConsumer: StreamConsumer, @unchecked Sendable {
    let backend: BedrockBackend
    let call: EventBatcher
    let model: String
    let path: String
    var state = ConverseStream()

    init(backend: BedrockBackend, call: PluginCall, model: String, path: String) {
        self.backend = backend
        self.call = EventBatcher(call: call)
        self.model = model
        self.path = path
        state.model = model
    }

    func flush() { call.flush() }

    func message(_ message: EventStreamDecoder.Message) throws(ProviderError) -> Bool {
        try state.message(message, call)
        return false
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        try ConverseStream.whole(body, model: model, structured: state.structured, call)
    }

    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        guard state.stopReason != nil else {
            throw ProviderError(.streamClosed, "the stream ended before its messageStop event")
        }
        return state.finish(call)
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        backend.httpError(status: status, headers: headers, body: body, path: path, model: model)
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(abi: abi, host: host, name: "bedrock", version: BedrockBackend.version, factories: [
        BackendFactory(id: "bedrock", description: "Amazon Bedrock Converse API (SigV4)") { try BedrockBackend($0) }
    ])
}
