import Descartes
import DescartesCommandLine
import Glibc

/// `descartes batch --provider-batch`: the provider's own batch API
/// (submit, poll, fetch) instead of running the requests here.
enum ProviderBatchOptions {
    static func wanted(_ args: Arguments) -> Bool {
        args.flag(.providerBatch) || args.value(.status) != nil || args.value(.results) != nil || args.value(.cancel) != nil
    }

    /// Usage mistakes, before anything runs.
    static func check(_ args: Arguments, reliability: ReliabilityOptions) throws(UsageError) {
        let modes = [args.flag(.providerBatch), args.value(.status) != nil, args.value(.results) != nil, args.value(.cancel) != nil]
        guard modes.filter({ $0 }).count == 1 else {
            throw args.mistake("use one of --provider-batch, --status, --results and --cancel")
        }
        if !reliability.fallbacks.isEmpty { throw args.mistake("--fallback does not apply to a provider batch") }
        if let p = try args.double(.pollInterval), p <= 0 { throw args.mistake("--poll-interval must be positive") }
    }

    /// The custom id of request `index`: the line's own, or req-INDEX.
    static func customID(_ given: String?, _ index: Int) -> String { given ?? "req-\(index)" }

    static func run(
        _ args: Arguments, provider: String, config: [String: JSONValue], requests: [Result<ModelRequest, ProviderError>],
        lines: [Int], customIDs: [String?], output: Int32, globals: Globals
    ) async -> ExitCode {
        let factory = Commands.factory(globals)
        let batches: ProviderBatches
        let backend: any ModelBackend
        do {
            backend = try factory.backend(provider, overrides: config)
            batches = try ProviderBatches(backend)
        } catch { failure(error) }
        let code = await run(args, batches: batches, provider: provider, requests: requests, lines: lines, customIDs: customIDs, output: output)
        await backend.shutdown()
        return code
    }

    static func run(
        _ args: Arguments, batches: ProviderBatches, provider: String, requests: [Result<ModelRequest, ProviderError>],
        lines: [Int], customIDs: [String?], output: Int32
    ) async -> ExitCode {
        let interval = Duration.milliseconds(Int(((try? args.double(.pollInterval)) ?? 30) * 1000))
        let quiet = args.flag(.quiet)
        func progress(_ s: ProviderBatchStatus) { if !quiet { Out.err("descartes: batch: \(s)") } }

        do {
            if let id = args.value(.status) {
                Out.line(statusJSON(try await batches.status(id)).jsonText)
                return .ok
            }
            if let id = args.value(.cancel) {
                let s = try await batches.cancel(id)
                Out.line(statusJSON(s).jsonText)
                return .ok
            }
            let id: String
            if let given = args.value(.results) {
                id = given
            } else {
                // Lines that are not requests are reported now; the rest go.
                var items: [(customID: String, request: ModelRequest)] = []
                var bad = 0
                for (i, r) in requests.enumerated() {
                    switch r {
                    case .success(let request): items.append((customID(customIDs[i], i), request))
                    case .failure(let e):
                        bad += 1
                        BatchCommand.writeLine(output, JSONValue.object(["index": .integer(i), "line": .integer(lines[i]), "error": Wire.json(e)]).jsonText)
                    }
                }
                guard !items.isEmpty else {
                    Out.err("Error: no line of the input is a request")
                    return .dataError
                }
                let submitted = try await batches.submit(items)
                progress(submitted)
                if args.flag(.submitOnly) {
                    Out.line(statusJSON(submitted).jsonText)
                    return bad == 0 ? .ok : .failure
                }
                id = submitted.id
            }
            let final = try await batches.wait(id, every: interval) { progress($0) }
            guard final.state.hasResults else {
                Out.err("Error: batch \(id) \(final.state)\(final.message.map { ": \($0)" } ?? "")")
                return .unavailable
            }
            let results = try await batches.results(id)
            return write(results, requests: requests, lines: lines, customIDs: customIDs, output: output)
        } catch {
            failure(ProviderError.from(error, provider: provider))
        }
    }

    /// Writes results: in input order when the input is known (a request
    /// the provider did not answer gets an error line), else as they came.
    static func write(
        _ results: [ProviderBatchResult], requests: [Result<ModelRequest, ProviderError>], lines: [Int], customIDs: [String?],
        output: Int32
    ) -> ExitCode {
        var failed = 0
        func line(_ index: Int?, _ line: Int?, _ cid: String, _ r: Result<ModelResponse, ProviderError>) {
            var o: JSONObject = [:]
            if let index { o["index"] = .integer(index) }
            if let line { o["line"] = .integer(line) }
            o["custom_id"] = .string(cid)
            switch r {
            case .success(let resp): o["response"] = Wire.json(resp)
            case .failure(let e):
                failed += 1
                o["error"] = Wire.json(e)
            }
            BatchCommand.writeLine(output, JSONValue.object(o).jsonText)
        }
        if requests.isEmpty {
            for r in results { line(nil, nil, r.customID, r.result) }
            return failed == 0 ? .ok : .failure
        }
        var byID: [String: Result<ModelResponse, ProviderError>] = [:]
        for r in results { byID[r.customID] = r.result }
        for (i, req) in requests.enumerated() {
            let cid = customID(customIDs[i], i)
            if case .failure = req { continue }  // reported at submission
            line(i, lines[i], cid, byID[cid] ?? .failure(ProviderError(.invalidResponse, "the provider returned no result for \(cid)")))
        }
        return failed == 0 ? .ok : .failure
    }

    static func statusJSON(_ s: ProviderBatchStatus) -> JSONValue {
        var o: JSONObject = ["id": .string(s.id), "state": .string(s.state.rawValue), "provider_status": .string(s.providerStatus)]
        if let t = s.total { o["counts"] = ["total": .integer(t), "succeeded": .integer(s.succeeded ?? 0), "failed": .integer(s.failed ?? 0)] }
        if let c = s.createdAt { o["created_at"] = .integer(c) }
        if let e = s.expiresAt { o["expires_at"] = .integer(e) }
        if let m = s.message { o["message"] = .string(m) }
        return .object(o)
    }
}
