import Descartes

extension Gateway {
    /// How long one provider's health check may take in `GET /ready`.
    static let readyTimeout: Duration = .seconds(5)

    /// The names `GET /ready` checks: the provider instances of
    /// providers.yaml (`configured` true); without any, every plugin found
    /// (as `descartes health`), those that need configuration they lack
    /// skipped (`configured` false).
    func readyNames() -> (names: [String], configured: Bool) {
        let instances = factory.configuration?.instances ?? []
        if !instances.isEmpty { return (instances.map(\.name), true) }
        return (factory.catalog.availableProviders.sorted(), false)
    }

    /// `GET /ready`: each provider's own health check (at most
    /// `readyTimeout` each, all at once). 200 `ready` when every one
    /// answered, 200 `degraded` when some did, 503 `unavailable` when none
    /// did. A backend without a health check counts as reachable (`unknown`).
    /// With no instance configured, the installed plugins are checked at
    /// their defaults, and one that cannot be reached there (an Ollama that
    /// is not running) is reported without making the gateway `degraded`:
    /// nobody asked for it; `unavailable` still means none answered.
    func ready(_ exchange: HTTPExchange, _ record: inout AccessRecord) async {
        struct Outcome: Sendable {
            var name: String
            var doc: JSONObject
            var ok: Bool?
        }
        let (names, configured) = readyNames()
        let outcomes = await withTaskGroup(of: Outcome.self) { g in
            for name in names {
                g.addTask { [self] in
                    let b: any ModelBackend
                    do throws(ProviderError) { b = try backend(name) } catch {
                        if error.kind == .config, !error.details.isEmpty, error.details.allSatisfy({ $0.hasPrefix("missing required key") }) {
                            return Outcome(name: name, doc: ["status": "skipped", "message": .string("not configured")], ok: nil)
                        }
                        return Outcome(name: name, doc: ["status": "unavailable", "error": .string(error.kind.rawValue), "message": .string(error.message)], ok: false)
                    }
                    let start = ContinuousClock.now
                    switch await Self.withTimeout(Self.readyTimeout, provider: name, { () async throws(ProviderError) -> HealthReport in try await b.healthCheck() }) {
                    case .success(let r):
                        return Outcome(name: name, doc: ["status": "ok", "latency_ms": .integer(r.latency == .zero ? (ContinuousClock.now - start).milliseconds : r.latency.milliseconds)], ok: true)
                    case .failure(let e) where e.kind == .config && !e.details.isEmpty && e.details.allSatisfy({ $0.hasPrefix("missing required key") }):
                        // Created by its first call (this check): a required key has no value.
                        return Outcome(name: name, doc: ["status": "skipped", "message": .string("not configured")], ok: nil)
                    case .failure(let e) where e.kind == .unsupportedFeature:
                        return Outcome(name: name, doc: ["status": "unknown", "message": "the backend has no health check"], ok: nil)
                    case .failure(let e):
                        return Outcome(
                            name: name,
                            doc: ["status": "unavailable", "error": .string(e.kind.rawValue), "message": .string(e.message), "latency_ms": .integer((ContinuousClock.now - start).milliseconds)],
                            ok: false)
                    }
                }
            }
            var all: [Outcome] = []
            for await o in g { all.append(o) }
            return all.sorted { $0.name < $1.name }
        }
        let failed = outcomes.filter { $0.ok == false }.count
        let checked = outcomes.filter { $0.ok != nil }.count
        var status = failed == 0 ? "ready" : failed == checked ? "unavailable" : configured ? "degraded" : "ready"
        var providers = JSONObject()
        for o in outcomes { providers[o.name] = .object(o.doc) }
        var doc: JSONObject = ["status": "", "providers": .object(providers)]
        // The shared store (providers.yaml shared:): while it is down, requests
        // go on under local limits (degraded) or are refused (on_failure: closed).
        if let store = self.providers.sharedStore {
            switch store.ping(timeout: Self.readyTimeout) {
            case .success(let latency):
                doc["shared_store"] = ["status": "ok", "store": .string(store.settings.store), "latency_ms": .integer(latency.milliseconds)]
            case .failure(let f):
                doc["shared_store"] = ["status": "unavailable", "store": .string(store.settings.store), "message": .string(f.message)]
                if store.settings.onFailure == .closed { status = "unavailable" } else if status == "ready" { status = "degraded" }
            }
        }
        doc["status"] = .string(status)
        if status == "unavailable" { record.error = "not_ready" }
        json(status == "unavailable" ? 503 : 200, .object(doc), exchange, &record)
    }

    /// `body`'s result, or a `timeout` error once `limit` has passed (the
    /// body's task is then cancelled, which cancels the plugin's call).
    static func withTimeout<T: Sendable>(
        _ limit: Duration, provider: String, _ body: @escaping @Sendable () async throws(ProviderError) -> T
    ) async -> Result<T, ProviderError> {
        await withTaskGroup(of: Result<T, ProviderError>?.self) { g in
            g.addTask {
                do throws(ProviderError) { return .success(try await body()) } catch { return .failure(error) }
            }
            g.addTask {
                try? await Task.sleep(for: limit)
                if Task.isCancelled { return nil }
                return .failure(ProviderError(.timeout, "no health check answer within \(limit)", provider: provider, deadline: "total"))
            }
            var result: Result<T, ProviderError>? = nil
            while result == nil, let next = await g.next() { result = next }
            g.cancelAll()
            return result!
        }
    }
}
