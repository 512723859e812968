import Descartes
import DescartesSupport
import Glibc

/// `descartes serve`: every provider instance, plugin, fallback chain and
/// route of the configuration behind OpenAI's chat completions and
/// Anthropic's Messages, over libmicrohttpd (docs/gateway.md).
///
/// The gateway owns no provider logic: a model name is resolved the way the
/// CLI resolves `-p` (`ProviderFactory.resolveName`), its backend is built
/// once by `ReliableProviders` (with the middlewares providers.yaml gives it,
/// audited when the audit log is on) and shared by every request; a request
/// is translated into a `ModelRequest`, and the backend's answer or events
/// back into the caller's protocol.
package final class Gateway: Sendable {
    /// The settings it started with (a reload changes keys, CORS origins and
    /// providers; the rest takes a restart).
    package let settings: GatewaySettings
    /// What one configuration gives: its factory, middleware settings and
    /// the backends built from them. A reload (SIGHUP) replaces it whole;
    /// requests already running keep the backends they started with.
    final class Generation: Sendable {
        let factory: ProviderFactory
        let reliability: ReliabilitySettings
        let providers: ReliableProviders
        let backends = Lock<[String: any ModelBackend]>([:])
        /// server.approvals: the tool approval policy of each provider name.
        let approvals: [String: ApprovalPolicy]

        init(factory: ProviderFactory, reliability: ReliabilitySettings, approvals: [String: ApprovalPolicy]) {
            self.factory = factory
            self.reliability = reliability
            self.approvals = approvals
            providers = ReliableProviders(settings: reliability, factory: factory)
        }
    }
    private let generation: Lock<Generation>
    var factory: ProviderFactory { generation.withLock { $0.factory } }
    var reliability: ReliabilitySettings { generation.withLock { $0.reliability } }
    var providers: ReliableProviders { generation.withLock { $0.providers } }
    /// The tool approval policy for requests to the provider `name` (nil: nobody is asked).
    func approval(for name: String) -> ApprovalPolicy? { generation.withLock { $0.approvals[name] } }
    private let corsOrigins: Lock<[String]>
    let audit: AuditLog?
    /// One line per request (JSON), never a secret.
    let accessLog: @Sendable (String) -> Void
    private let inFlight = Lock<[ObjectIdentifier: HTTPExchange]>([:])
    private let draining = Lock(false)
    private let server = Lock<HTTPServer?>(nil)
    /// What `GET /metrics` shows.
    let metrics = GatewayMetrics()
    /// The configured and the issued keys, their limits and spend.
    package let keys: KeyRing
    /// Where the Responses API's stored responses are (nil: none is stored,
    /// and every response says `store: false`). Opened on first use: a
    /// gateway whose clients send `store: false` never opens it.
    let responseStore: ConversationStore?
    /// Operational messages (stderr).
    let notice: @Sendable (String) -> Void

    /// - Parameters:
    ///   - keyStore: where issued keys are (`descartes keys create`); nil: none.
    ///   - responseStore: where stored Responses API responses are
    ///     (`server.responses_database`); nil: none is stored.
    ///   - notice: operational messages (stderr).
    package init(
        settings: GatewaySettings, factory: ProviderFactory, reliability: ReliabilitySettings, audit: AuditLog?,
        keyStore: (any GatewayKeyStore)? = nil, responseStore: ConversationStore? = nil, notice: @escaping @Sendable (String) -> Void = { _ in },
        accessLog: @escaping @Sendable (String) -> Void
    ) {
        self.settings = settings
        self.responseStore = responseStore
        self.notice = notice
        self.generation = Lock(Generation(factory: factory, reliability: reliability, approvals: settings.approvals))
        self.corsOrigins = Lock(settings.corsOrigins)
        self.audit = audit
        self.accessLog = accessLog
        // The providers' shared store (one per process and section), also
        // where issued keys, their limits and spend are shared.
        self.keys = KeyRing(
            configured: settings.keys, store: keyStore, shared: reliability.shared.map { SharedStore.shared($0, logSink: factory.logSink) },
            loopback: GatewaySettings.isLoopback(settings.host), notice: notice)
        for k in settings.keys { factory.logSink.redactor.register(String(decoding: k.secret, as: UTF8.self)) }
    }

    package struct StartError: Error, CustomStringConvertible {
        package var description: String
    }

    /// Binds and starts serving. Returns the port (the one chosen for port 0).
    /// Without keys, only a loopback address is served.
    package func start() throws(StartError) -> Int {
        if !keys.loopback && !keys.any {
            throw StartError(
                description:
                    "refusing to serve \(settings.host) without keys: anyone who can reach it could use every provider; "
                    + "issue one (descartes keys create --name NAME) or add server.keys to providers.yaml (docs/gateway.md), or listen on 127.0.0.1")
        }
        var tls: (cert: String, key: String)?
        if let files = settings.tls {
            do {
                tls = (try FileSystem.readText(files.cert, limit: 1 << 20), try FileSystem.readText(files.key, limit: 1 << 20))
            } catch {
                throw StartError(description: "server.tls: cannot read \(error)")
            }
        }
        do {
            let s = try HTTPServer(
                host: settings.host, port: settings.port, threads: settings.threads, bodyLimit: settings.maxBodyBytes,
                idleTimeoutSeconds: settings.idleTimeoutSeconds, tls: tls
            ) { [self] request, exchange in handle(request, exchange) }
            server.withLock { $0 = s }
            return s.port
        } catch {
            throw StartError(description: error.description + (settings.tls.map { " (server.tls: cert \($0.cert), key \($0.key))" } ?? ""))
        }
    }

    /// Stops accepting, lets requests in flight finish within `grace`, then
    /// cancels the rest (their upstream calls are cancelled), stops the
    /// server and shuts every backend down.
    package func shutdown(grace: Duration) async {
        draining.withLock { $0 = true }
        let providers = generation.withLock { $0.providers }
        guard let s = server.withLock({ $0 }) else {
            await providers.shutdown()
            return
        }
        s.quiesce()
        let clock = ContinuousClock()
        let deadline = clock.now + grace
        while s.active > 0 && clock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if s.active > 0 {
            for e in inFlight.withLock({ Array($0.values) }) { e.cancel() }
            let hard = clock.now + .seconds(5)
            while s.active > 0 && clock.now < hard { try? await Task.sleep(for: .milliseconds(20)) }
        }
        // libmicrohttpd must not be stopped with a request waiting for its
        // answer; if one is still out (a backend ignoring cancellation past
        // its deadline), the process ends without stopping it.
        if s.active == 0 { s.stop() }
        await providers.shutdown()
    }

    // MARK: Requests

    /// Which protocol's error shape a path answers with.
    enum Dialect { case openAI, anthropic }

    /// Takes a reloaded configuration: the providers (new requests use the
    /// new ones; the old ones are shut down once the requests that began
    /// before the reload are done) and their tool approval policies, the
    /// configured keys and the CORS origins. Returns the settings that changed but take a restart.
    package func reload(settings new: GatewaySettings, factory: ProviderFactory, reliability: ReliabilitySettings) -> [String] {
        var restart: [String] = []
        if new.threads != settings.threads { restart.append("server.threads") }
        if new.maxBodyBytes != settings.maxBodyBytes { restart.append("server.max_body_mb") }
        if new.idleTimeoutSeconds != settings.idleTimeoutSeconds { restart.append("server.idle_timeout_secs") }
        if new.shutdownGrace != settings.shutdownGrace { restart.append("server.shutdown_grace_secs") }
        if new.keysDatabase != settings.keysDatabase { restart.append("server.keys_database") }
        if new.responsesDatabase != settings.responsesDatabase { restart.append("server.responses_database") }
        if new.responsesRetentionDays != settings.responsesRetentionDays { restart.append("server.responses_retention_days") }
        if new.tls?.cert != settings.tls?.cert || new.tls?.key != settings.tls?.key { restart.append("server.tls") }
        if new.host != settings.host || new.port != settings.port { restart.append("server.listen") }
        for k in new.keys { factory.logSink.redactor.register(String(decoding: k.secret, as: UTF8.self)) }
        keys.replaceConfigured(new.keys)
        corsOrigins.withLock { $0 = new.corsOrigins }
        let old = generation.withLock { g -> Generation in
            defer { g = Generation(factory: factory, reliability: reliability, approvals: new.approvals) }
            return g
        }
        // The exchanges begun before the reload are held here, so none of
        // their identifiers can be taken by a later request meanwhile.
        let before = inFlight.withLock { $0 }
        Task { [self] in
            while inFlight.withLock({ now in before.keys.contains { now[$0] != nil } }) { try? await Task.sleep(for: .milliseconds(50)) }
            withExtendedLifetime(before) {}
            await old.providers.shutdown()
        }
        return restart
    }

    /// The CORS headers of an answer to `request` (none unless its Origin is allowed).
    func corsHeaders(_ request: HTTPRequest) -> [(String, String)] {
        guard let origin = request.headers["origin"] else { return [] }
        let origins = corsOrigins.withLock { $0 }
        guard origins.contains("*") || origins.contains(origin) else { return [] }
        return [
            ("Access-Control-Allow-Origin", origins.contains("*") ? "*" : origin), ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", "Retry-After, x-should-retry"),
        ]
    }

    func handle(_ request: HTTPRequest, _ exchange: HTTPExchange) {
        exchange.extraHeaders = corsHeaders(request)
        let id = ObjectIdentifier(exchange)
        inFlight.withLock { $0[id] = exchange }
        metrics.begin()
        exchange.run { [self] in
            var record = AccessRecord(request: request)
            await route(request, exchange, &record)
            record.deadline?.stop()
            inFlight.withLock { _ = $0.removeValue(forKey: id) }
            record.finish(clientGone: exchange.clientGone)
            metrics.record(record)
            accessLog(record.line)
        }
    }

    func route(_ request: HTTPRequest, _ exchange: HTTPExchange, _ record: inout AccessRecord) async {
        let path = request.path
        let dialect: Dialect = path.hasPrefix("/v1/messages") ? .anthropic : .openAI
        func fail(_ e: GatewayError) { send(e, dialect, exchange, &record) }
        let endpoints: [String: String] = [
            "/v1/chat/completions": "POST", "/chat/completions": "POST", "/v1/models": "GET", "/models": "GET", "/health": "GET",
            "/v1/messages": "POST", "/v1/messages/count_tokens": "POST", "/v1/responses": "POST", "/responses": "POST",
            "/ready": "GET", "/metrics": "GET", "/v1/embeddings": "POST", "/embeddings": "POST",
        ]
        // GET and DELETE /v1/responses/{id}: a stored response.
        let storedID = Self.storedResponseID(path)
        if request.method == "OPTIONS", endpoints[path] != nil || storedID != nil, !exchange.extraHeaders.isEmpty {
            // A browser's CORS preflight from an allowed origin (no key: browsers send none with it).
            record.status = 204
            let asked = request.headers["access-control-request-headers"] ?? "authorization, content-type, x-api-key"
            exchange.respond(
                status: 204,
                headers: [
                    ("Access-Control-Allow-Methods", storedID == nil ? "GET, POST, OPTIONS" : "GET, DELETE, OPTIONS"), ("Access-Control-Allow-Headers", asked),
                    ("Access-Control-Max-Age", "600"),
                ],
                body: [])
            return
        }
        if let storedID {
            guard ["GET", "HEAD", "DELETE"].contains(request.method) else {
                return fail(.methodNotAllowed("\(path) takes GET or DELETE, not \(request.method)"))
            }
        } else {
            guard let method = endpoints[path] else {
                return fail(.notFound("no endpoint \(request.method) \(path) (docs/gateway.md lists them)"))
            }
            guard request.method == method || (method == "GET" && request.method == "HEAD") else {
                return fail(.methodNotAllowed("\(path) takes \(method), not \(request.method)"))
            }
        }
        if path == "/health" {
            return json(200, ["status": "ok"], exchange, &record)
        }
        if draining.withLock({ $0 }) { return fail(.unavailable("the gateway is shutting down")) }
        let key: GatewaySettings.Key?
        switch authenticate(request) {
        case .success(let k): key = k
        case .failure(let e): return fail(e)
        }
        record.key = key?.name
        if request.bodyTooLarge { return fail(.tooLarge(settings.maxBodyBytes)) }
        var admission: KeyRing.Admission?
        if let key, request.method == "POST" {
            do throws(GatewayError) { admission = try await keys.admit(key) } catch { return fail(error) }
        }
        defer { if let key { keys.settle(key, admission, usage: record.usage, costUSD: record.costUSD) } }
        if let storedID { return storedResponse(request, id: storedID, exchange, key: key, &record) }
        switch path {
        case "/v1/models", "/models":
            return json(200, models(for: key), exchange, &record)
        case "/v1/chat/completions", "/chat/completions":
            await chat(request, exchange, key: key, &record)
        case "/v1/embeddings", "/embeddings":
            await embeddings(request, exchange, key: key, &record)
        case "/ready":
            await ready(exchange, &record)
        case "/metrics":
            record.status = 200
            exchange.respond(
                status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: Array(metrics.render(shared: providers.sharedStore?.stats, breakers: breakers).utf8))
        case "/v1/responses", "/responses":
            await responses(request, exchange, key: key, &record)
        case "/v1/messages":
            await messages(request, exchange, key: key, &record)
        case "/v1/messages/count_tokens":
            await countTokens(request, exchange, key: key, &record)
        default:
            fail(.notFound("no endpoint \(request.method) \(path)"))
        }
    }

    /// The id of `/v1/responses/{id}` (or `/responses/{id}`), nil for another path.
    static func storedResponseID(_ path: String) -> String? {
        for prefix in ["/v1/responses/", "/responses/"] where path.hasPrefix(prefix) {
            let id = path.dropFirst(prefix.count)
            return id.isEmpty || id.contains("/") ? nil : String(id)
        }
        return nil
    }

    /// The circuit breakers of the configured providers (`circuit_breakers:`).
    var breakers: [CircuitBreaker] {
        let p = providers
        return p.settings.circuitBreakers.map { CircuitBreaker.shared(for: $0.key, settings: $0.value, clock: p.clock) }
    }

    /// The key a request presents (`Authorization: Bearer KEY` or
    /// `x-api-key: KEY`); with no key configured or issued, nil (loopback only).
    func authenticate(_ request: HTTPRequest) -> Result<GatewaySettings.Key?, GatewayError> {
        if !keys.required { return .success(nil) }
        var presented: String?
        if let a = request.headers["authorization"] {
            let parts = a.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { presented = String(parts[1]).trimmingSpaces }
        }
        if presented == nil { presented = request.headers["x-api-key"]?.trimmingSpaces }
        guard let presented, !presented.isEmpty else {
            return .failure(.unauthorized("a gateway key is required: Authorization: Bearer KEY, or x-api-key: KEY"))
        }
        guard let key = keys.key(for: presented) else { return .failure(.unauthorized("the gateway key is not valid")) }
        return .success(key)
    }

    /// The body as JSON.
    func body(_ request: HTTPRequest) throws(GatewayError) -> JSONValue {
        guard !request.body.isEmpty else { throw .invalidRequest("the request has no body (a JSON object)") }
        do { return try JSONValue.parse(bytes: request.body) } catch { throw .invalidRequest("the body is not JSON: \(error)") }
    }

    /// The backend for a model name and the model to ask it for: a name the
    /// configuration knows (instance, plugin, chain, route) as a whole, else
    /// `NAME/MODEL` with NAME one of those.
    func target(_ model: String, key: GatewaySettings.Key?) throws(GatewayError) -> (backend: any ModelBackend, name: String, model: String?) {
        if let key, !key.allows(model) {
            throw .forbidden("the gateway key '\(key.name)' may not use the model '\(model)'")
        }
        var name = model
        var upstreamModel: String? = nil
        if (try? factory.resolveName(model, settings: reliability)) == nil {
            guard let slash = model.firstIndex(of: "/"), (try? factory.resolveName(String(model[..<slash]), settings: reliability)) != nil else {
                throw .notFound(
                    "the model '\(model)' does not exist: use a provider instance, plugin, fallback chain or route of the gateway's configuration, "
                        + "or PROVIDER/MODEL (GET /v1/models lists them)", code: "model_not_found", param: "model")
            }
            name = String(model[..<slash])
            upstreamModel = String(model[model.index(after: slash)...])
        }
        do throws(ProviderError) {
            return (try backend(name), name, upstreamModel)
        } catch {
            throw GatewayError(error)
        }
    }

    /// The shared backend of a name. Its plugins' backends are created by
    /// the first request's call, on a plugin thread and under that
    /// request's deadline (`arm`), never here: a `create` that hangs holds
    /// only the requests that need it, not a lock or a thread of the others.
    func backend(_ name: String) throws(ProviderError) -> any ModelBackend {
        let g = generation.withLock { $0 }
        let (backends, factory, reliability) = (g.backends, g.factory, g.reliability)
        if let b = backends.withLock({ $0[name] }) { return b }
        var b = g.providers.uncreated(name)
        if let audit {
            let plugin = (try? factory.resolveName(name, settings: reliability))?.plugin ?? name
            b = audit.wrap(b, plugin: plugin)
        }
        return backends.withLock { made in
            if let existing = made[name] { return existing }
            made[name] = b
            return b
        }
    }

    /// `GET /v1/models`: every name a client may ask for (those its key
    /// allows), and `NAME/MODEL` for the models each provider's manifest lists.
    func models(for key: GatewaySettings.Key?) -> JSONValue {
        var names: [String] = []
        let config = factory.configuration
        let instances = config?.instances.map(\.name) ?? []
        names += instances
        names += reliability.fallbacks.keys.sorted()
        names += reliability.routes.keys.sorted()
        names += factory.catalog.availableProviders.filter { !instances.contains($0) }
        var withModels: [String] = []
        for n in names {
            withModels.append(n)
            let plugin = config?.instance(n)?.plugin ?? n
            if let m = try? factory.manifest(for: plugin) {
                for model in m.models { withModels.append("\(n)/\(model.id)") }
            }
        }
        var seen = Set<String>()
        let data: [JSONValue] = withModels.filter { seen.insert($0).inserted && (key?.allows($0) ?? true) }.map {
            ["id": .string($0), "object": "model", "created": 0, "owned_by": "descartes"]
        }
        return ["object": "list", "data": .array(data)]
    }

    // MARK: OpenAI chat completions

    func chat(_ request: HTTPRequest, _ exchange: HTTPExchange, key: GatewaySettings.Key?, _ record: inout AccessRecord) async {
        let parsed: OpenAIChat.Parsed
        let target: (backend: any ModelBackend, name: String, model: String?)
        do throws(GatewayError) {
            parsed = try OpenAIChat.parse(try body(request))
            record.model = parsed.model
            target = try self.target(parsed.model, key: key)
        } catch {
            return send(error, .openAI, exchange, &record)
        }
        record.provider = target.name
        var modelRequest = parsed.request
        let limit = arm(target.name, exchange, &record)
        modelRequest.deadlines.total = min(modelRequest.deadlines.total ?? limit, limit)
        if let m = target.model { modelRequest.model = m }
        if let key { key.label(&modelRequest.metadata) }
        // Approvals are the gateway's configuration, never the client's.
        modelRequest.approval = approval(for: target.name)
        record.stream = parsed.stream
        let id = "chatcmpl-" + Self.randomID()
        let created = Int(time(nil))
        if !parsed.stream {
            do {
                let r = try await target.backend.complete(modelRequest)
                record.usage = r.usage
                record.costUSD = r.costUSD
                json(200, OpenAIChat.completion(r, id: id, model: parsed.model, created: created), exchange, &record)
            } catch {
                send(GatewayError(ProviderError.from(error, provider: target.name)), .openAI, exchange, &record)
            }
            return
        }
        var writer = OpenAIChat.ChunkWriter(id: id, model: parsed.model, created: created, includeUsage: parsed.includeUsage)
        await stream(target.backend, modelRequest, name: target.name, exchange, &record, dialect: .openAI) { event in
            writer.bytes(event)
        } failure: { e in
            OpenAIChat.ChunkWriter.error(e)
        }
    }

    static let sseHeaders: [(String, String)] = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
    /// A client that has not taken this much of its stream is waited for;
    /// one that takes nothing for `slowClientLimit` is dropped (its
    /// upstream call cancelled).
    static let backlogLimit = 1 << 20
    static let slowClientLimit: Duration = .seconds(30)

    /// Streams a backend's events to the client through `encode`. The
    /// response starts with the first event that has bytes, so an error
    /// before it (retries and fallbacks included) is an HTTP error status;
    /// a later one is the protocol's error event (`failure`). The client
    /// going away ends the iteration, which cancels the upstream call.
    func stream(
        _ backend: any ModelBackend, _ request: ModelRequest, name: String, _ exchange: HTTPExchange, _ record: inout AccessRecord,
        dialect: Dialect, encode: (StreamEvent) -> [UInt8], failure: (GatewayError) -> [UInt8]
    ) async {
        var begun = false
        var finished = false
        do {
            events: for try await event in backend.stream(request) {
                let bytes = encode(event)
                if case .finish(let r) = event {
                    record.usage = r.usage
                    record.costUSD = r.costUSD
                    finished = true
                }
                if bytes.isEmpty { continue }
                if !begun {
                    begun = true
                    record.status = 200
                    record.firstByte = .now
                    guard exchange.begin(status: 200, headers: Self.sseHeaders) else { break }
                }
                guard var backlog = exchange.write(bytes) else { break }
                if backlog > Self.backlogLimit {
                    let clock = ContinuousClock()
                    let giveUp = clock.now + Self.slowClientLimit
                    while backlog > Self.backlogLimit {
                        if clock.now > giveUp || Task.isCancelled { break events }
                        try? await Task.sleep(for: .milliseconds(5))
                        guard let b = exchange.write([]) else { break events }
                        backlog = b
                    }
                }
                if finished { break }
            }
        } catch {
            let raised = GatewayError(ProviderError.from(error, provider: name))
            let e = record.deadline?.error(instead: raised) ?? raised
            record.error = e.kind
            if !begun { return send(e, dialect, exchange, &record) }
            _ = exchange.write(failure(e))
            exchange.end()
            return
        }
        if begun, !finished, let passed = record.deadline?.error(instead: nil) {
            // The request's deadline ended the stream: the client is told.
            record.error = passed.kind
            _ = exchange.write(failure(passed))
        }
        if !begun {
            // Cancelled before anything was sent (the client went away, or shutdown).
            return send(GatewayError(ProviderError(.cancelled, "the request was cancelled", provider: name)), dialect, exchange, &record)
        }
        exchange.end()
    }

    // MARK: Deadlines

    /// Gives the request to `name` its total deadline: once it passes, the
    /// request's task is cancelled (backend creation on first use, retries,
    /// fallbacks and the call with it) and the client is answered with the
    /// dialect's timeout error (504) naming it. Returns its length.
    @discardableResult
    func arm(_ name: String, _ exchange: HTTPExchange, _ record: inout AccessRecord) -> Duration {
        let limit = requestDeadline(name)
        let d = RequestDeadline(limit: limit, provider: name)
        record.deadline = d
        d.start { exchange.cancel() }
        return limit
    }

    /// The total deadline of a request to `name`: the instance's
    /// `timeout_secs` (else its manifest's default for it, else 600 s, the
    /// host's); for a fallback chain or a route, the longest of its members'.
    func requestDeadline(_ name: String, depth: Int = 0) -> Duration {
        let (factory, reliability) = generation.withLock { ($0.factory, $0.reliability) }
        if depth < 32, let chain = reliability.fallbacks[name] {
            return chain.chain.map { requestDeadline($0.name, depth: depth + 1) }.max() ?? Self.defaultDeadline
        }
        if depth < 32, let route = reliability.routes[name] {
            return route.candidates.map { requestDeadline($0.name, depth: depth + 1) }.max() ?? Self.defaultDeadline
        }
        let instance = factory.configuration?.instance(name)
        if let e = instance?.entries.first(where: { $0.key == "timeout_secs" }), let t = e.node.scalar.flatMap({ Int($0) }), t > 0 {
            return .seconds(t)
        }
        if let m = try? factory.manifest(for: instance?.plugin ?? name), let t = m.configKey("timeout_secs")?.defaultValue?.intValue, t > 0 {
            return .seconds(t)
        }
        return Self.defaultDeadline
    }

    /// A request's total deadline when nothing sets one (a plugin backend's own default).
    static let defaultDeadline: Duration = .seconds(600)

    // MARK: Answers

    func json(_ status: Int, _ doc: JSONValue, _ exchange: HTTPExchange, _ record: inout AccessRecord, headers: [(String, String)] = []) {
        record.status = status
        exchange.respond(status: status, headers: [("Content-Type", "application/json")] + headers, body: doc.jsonBytes)
    }

    func send(_ e: GatewayError, _ dialect: Dialect, _ exchange: HTTPExchange, _ record: inout AccessRecord) {
        let e = record.deadline?.error(instead: e) ?? e
        let status = e.status(dialect == .anthropic)
        record.status = status
        record.error = record.error ?? e.kind
        let doc = dialect == .anthropic ? e.anthropic : e.openAI
        exchange.respond(status: status, headers: e.headers, body: doc.jsonBytes)
    }

    static func randomID() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<12).map { _ in UInt8.random(in: 0...255, using: &rng) }.map { b in
            let h = String(b, radix: 16)
            return b < 16 ? "0" + h : h
        }.joined()
    }
}

/// One access-log line: who asked what, and how it went. No body, no key
/// secret: the key's name only.
struct AccessRecord {
    let start = ContinuousClock.now
    var method: String
    var path: String
    var peer: String
    var status = 0
    var key: String?
    var model: String?
    var stream = false
    var usage: Usage?
    var error: String?
    var clientGone = false
    /// The configuration's name the model resolved to (nil: it did not).
    var provider: String?
    var costUSD: Double?
    /// When a stream sent its first content.
    var firstByte: ContinuousClock.Instant?
    /// The request's total deadline, once its provider is known.
    var deadline: RequestDeadline?

    init(request: HTTPRequest) {
        method = request.method
        path = request.path
        peer = request.peer
    }

    static func unixMS() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }

    mutating func finish(clientGone: Bool) { self.clientGone = clientGone }

    var line: String {
        var o: JSONObject = [
            "time": .string(AuditLog.timestamp(unixMS: Self.unixMS())), "peer": .string(peer), "method": .string(method), "path": .string(path),
            "status": .integer(status), "duration_ms": .integer((ContinuousClock.now - start).milliseconds),
        ]
        if let key { o["key"] = .string(key) }
        if let model { o["model"] = .string(model) }
        if stream { o["stream"] = true }
        if let usage {
            o["input_tokens"] = .integer(usage.inputTokens)
            o["output_tokens"] = .integer(usage.outputTokens)
        }
        if let error { o["error"] = .string(error) }
        if clientGone { o["client_gone"] = true }
        return JSONValue.object(o).jsonText
    }
}

/// A gateway request's total deadline: a timer that cancels the request's
/// task when it passes, and the timeout error the client then gets instead
/// of the cancellation it caused.
final class RequestDeadline: Sendable {
    let limit: Duration
    let provider: String
    private let state = Lock<(passed: Bool, timer: Task<Void, Never>?)>((false, nil))

    init(limit: Duration, provider: String) {
        self.limit = limit
        self.provider = provider
    }

    /// Starts the timer: `expire` runs when the deadline passes.
    func start(_ expire: @escaping @Sendable () -> Void) {
        let limit = self.limit
        let t = Task { [self] in
            try? await Task.sleep(for: limit)
            if Task.isCancelled { return }
            let first = state.withLock { s -> Bool in
                if s.passed { return false }
                s.passed = true
                return true
            }
            if first { expire() }
        }
        state.withLock { $0.timer = t }
    }

    /// The request is answered: the timer is stopped.
    func stop() { state.withLock { $0.timer }?.cancel() }

    /// What the client is told when the deadline passed: the timeout error
    /// instead of `e` (the cancellation it caused, or a timeout of its own),
    /// nil when it has not passed.
    func error(instead e: GatewayError?) -> GatewayError? {
        guard state.withLock({ $0.passed }) else { return nil }
        if let e, e.kind == ProviderError.Kind.timeout.rawValue { return e }
        return GatewayError(
            ProviderError(
                .timeout, "no answer within the request's total deadline of \(limit.exactText) (timeout_secs of provider '\(provider)'; backend creation, retries and fallbacks included)",
                provider: provider, deadline: "total"))
    }
}
