import Descartes
import DescartesCommandLine
import DescartesSupport

/// `descartes health [-p PROVIDER]`: a real call to each provider (an
/// authenticated request for an API, the server for a local one) saying
/// whether it can serve a request now, and if not, why.
///
/// Without `-p`, every available provider is checked at once; those that
/// cannot even be created because a required key has no value (no API key
/// in the environment) are listed as not configured, not as failures.
/// With a `shared:` section, the shared store is checked too (a PING), as
/// the row "shared store".
enum HealthCommand {
    struct Outcome: Sendable {
        var name: String
        var report: HealthReport?
        var error: ProviderError?
        var skipped: String?
    }

    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        // --timeout bounds the whole command, from here.
        let began = ContinuousClock.now
        var globals = globals
        let settings: [String: JSONValue]
        let timeout: Double
        do throws(UsageError) {
            settings = try Commands.settings(args)
            timeout = try args.double(.timeout) ?? 20
            guard timeout > 0 else { throw args.mistake("--timeout must be positive") }
        } catch { usageFailure(error) }
        globals.timeout = timeout
        let json = args.flag(.json)
        var setup = Commands.setup(globals)
        // Each plugin in a helper process of its own (issue 16): one that
        // crashes while loading is that provider's failure, and the others
        // are still checked. --in-process: in this process.
        if !args.flag(.inProcess) { setup.factory.defaultIsolation = .process(.isolatedPlugin) }

        if args.value(.provider) == nil && !settings.isEmpty { usageFailure(args.mistake("--set needs -p PROVIDER (each provider has its own keys)")) }
        // The shared store's PING (blocking, bounded by the timeout) beside
        // the providers' checks, on a thread of its own: the deadline is the
        // whole command's, not one after the other.
        let reliability = setup.settings
        let storeCheck = Task { await PluginThreads.shared.value { checkStore(reliability, timeout: timeout) } ?? nil }
        if let name = args.value(.provider) {
            let (backend, providers) = setup.probe(name, settings: settings, json: json)
            let outcome = await check(name, backend, timeout: left(timeout, since: began), deadline: commandDeadline(timeout))
            await providers.shutdown()
            let store = await storeCheck.value
            print([outcome] + (store.map { [$0] } ?? []), json: json)
            if let e = outcome.error { return ExitCode.for(e) }
            if let e = store?.error { return ExitCode.for(e) }
            return .ok
        }

        // The configuration's instances, and the plugins no instance uses
        // (an instance stands for its plugin).
        let instances = setup.factory.configuration?.instances ?? []
        let used = Set(instances.map(\.plugin))
        let names = instances.map(\.name) + setup.factory.catalog.availableProviders.filter { !used.contains($0) && !instances.map(\.name).contains($0) }
        let providers = setup.providers(.init(retries: 0, noCache: true))
        let outcomes = await withTaskGroup(of: Outcome.self) { g in
            for name in names {
                g.addTask {
                    // Creating the provider and its check, together under what
                    // is left of the command's deadline. Created on a plugin
                    // thread, never on Swift's cooperative pool: a create
                    // that never returns (bounded by the factory's deadline,
                    // abandoned by this one) must not take a pool thread from
                    // every other provider's check.
                    let outcome = await ProviderCommand.withTimeout(left(timeout, since: began), provider: name, deadline: commandDeadline(timeout)) { () async throws -> Outcome in
                        let created = await PluginThreads.shared.value { () -> Result<any ModelBackend, ProviderError> in
                            do throws(ProviderError) { return .success(try providers.backend(name)) } catch { return .failure(error) }
                        }
                        guard let created else { throw CancellationError() }
                        switch created {
                        case .failure(let error):
                            if error.kind == .config, !error.details.isEmpty, error.details.allSatisfy({ $0.hasPrefix("missing required key") }) {
                                return Outcome(name: name, skipped: "not configured: " + error.details.joined(separator: "; "))
                            }
                            return Outcome(name: name, error: error)
                        case .success(let backend):
                            return Outcome(name: name, report: try await backend.healthCheck())
                        }
                    }
                    switch outcome {
                    case .success(let o): return o
                    case .failure(let e): return Outcome(name: name, error: e)
                    }
                }
            }
            var all: [Outcome] = []
            for await o in g { all.append(o) }
            return all.sorted { $0.name < $1.name }
        }
        await providers.shutdown()
        let all = outcomes + ((await storeCheck.value).map { [$0] } ?? [])
        print(all, json: json)
        return all.contains { $0.error != nil } ? .failure : .ok
    }

    /// The shared store's row: a PING within the timeout (and the store's
    /// own command timeout), naming the store without credentials.
    static func checkStore(_ settings: ReliabilitySettings, timeout: Double) -> Outcome? {
        guard let s = settings.shared else { return nil }
        let name = "shared store"
        switch SharedStore.shared(s, logSink: Out.logSink).ping(timeout: .milliseconds(Int(timeout * 1000))) {
        case .success(let latency):
            return Outcome(name: name, report: HealthReport(message: s.store, details: ["on_failure": .string(s.onFailure.rawValue)], latency: latency))
        case .failure(let f):
            return Outcome(name: name, error: ProviderError(.providerUnavailable, f.message, provider: name))
        }
    }

    /// What is left of `timeout` seconds counted from `began` (at least a
    /// millisecond: the check then ends at once with its timeout).
    static func left(_ timeout: Double, since began: ContinuousClock.Instant) -> Double {
        let spent = ContinuousClock.now - began
        let s = Double(spent.components.seconds) + Double(spent.components.attoseconds) / 1e18
        return max(0.001, timeout - s)
    }

    /// How a timeout names the command's deadline.
    static func commandDeadline(_ timeout: Double) -> String { "the command's deadline of \(Out.seconds(timeout)) (--timeout)" }

    static func check(_ name: String, _ backend: any ModelBackend, timeout: Double, deadline: String? = nil) async -> Outcome {
        switch await ProviderCommand.withTimeout(timeout, provider: name, deadline: deadline, { try await backend.healthCheck() }) {
        case .success(let r): return Outcome(name: name, report: r)
        case .failure(let e): return Outcome(name: name, error: e)
        }
    }

    static func print(_ outcomes: [Outcome], json: Bool) {
        if json {
            let results: [JSONValue] = outcomes.map { o in
                var r: JSONObject = ["name": .string(o.name)]
                if let rep = o.report, !rep.implemented {
                    // No health check of its own: neither healthy nor not.
                    r["healthy"] = .null
                    r["implemented"] = false
                    r["message"] = .string(rep.message)
                } else if let rep = o.report {
                    r["healthy"] = true
                    r["message"] = .string(rep.message)
                    r["latency_ms"] = .integer(rep.latency.milliseconds)
                    if !rep.details.isEmpty { r["details"] = .object(rep.details) }
                } else if let s = o.skipped {
                    r["healthy"] = .null
                    r["skipped"] = .string(s)
                } else if let e = o.error {
                    r["healthy"] = false
                    r["error"] = Wire.json(e)
                }
                return .object(r)
            }
            Out.line(
                JSONValue.object([
                    "results": .array(results), "healthy": .integer(outcomes.filter { $0.report?.implemented == true }.count),
                    "not_implemented": .integer(outcomes.filter { $0.report?.implemented == false }.count),
                    "unhealthy": .integer(outcomes.filter { $0.error != nil }.count),
                    "skipped": .integer(outcomes.filter { $0.skipped != nil }.count),
                ]).prettyText())
            return
        }
        let rows = outcomes.map { o -> [String] in
            if let r = o.report, !r.implemented { return [o.name, "not implemented", "-", r.message] }
            if let r = o.report { return [o.name, Out.green("healthy"), "\(r.latency.milliseconds) ms", r.message] }
            if let s = o.skipped { return [o.name, "skipped", "-", s] }
            let e = o.error!
            return [o.name, Out.red("unhealthy"), "-", "\(e.kind)\(e.status.map { " (\($0))" } ?? ""): \(e.message)"]
        }
        Out.line(Out.table(["PROVIDER", "STATUS", "LATENCY", "DETAIL"], rows))
    }
}
