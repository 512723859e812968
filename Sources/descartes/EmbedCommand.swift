import Descartes
import DescartesCommandLine
import Glibc

/// `descartes embed -p PROVIDER TEXT...|-`: one vector per text (ABI 1.1's
/// `embed`), printed as one JSON document.
enum EmbedCommand {
    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        var globals = globals
        let settings: [String: JSONValue]
        let timeout: Double
        let query = args.value(.similar)
        let top: Int?
        do throws(UsageError) {
            settings = try Commands.settings(args)
            timeout = try args.double(.timeout) ?? 60
            guard timeout > 0 else { throw args.mistake("--timeout must be positive") }
            top = try args.int(.top)
            if let top, top < 1 { throw args.mistake("--top must be at least 1, got \(top)") }
            if top != nil && query == nil { throw args.mistake("--top ranks the texts of --similar: give --similar QUERY") }
            guard !args.positional.isEmpty || query != nil else {
                throw args.mistake("no text to embed: give TEXT arguments, or '-' to read lines from stdin")
            }
        } catch { usageFailure(error) }
        globals.timeout = timeout
        let texts: [String]
        if args.positional == ["-"] || (query != nil && args.positional.isEmpty) {
            texts = String(decoding: BatchCommand.readAll(0), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        } else {
            texts = args.positional
        }
        let name = args.value(.provider)!
        // The cache of providers.yaml (cache.embeddings), unless --no-cache.
        let (backend, providers) = Commands.setup(globals).probe(name, settings: settings, json: true, cache: !args.flag(.noCache))
        if let query, texts.isEmpty { usageFailure(args.mistake("nothing to rank against '\(query)': give TEXT arguments or lines on stdin")) }
        // With --similar, the query is embedded first, in the same request.
        let request = EmbeddingRequest(
            (query.map { [$0] } ?? []) + texts, model: args.value(.model), deadlines: Deadlines(total: .milliseconds(Int(timeout * 1000))))
        let result = await ProviderCommand.withTimeout(timeout, provider: name) { try await backend.embed(request) }
        await providers.shutdown()
        switch result {
        case .failure(let e):
            failure(e, json: true)
        case .success(let e) where query != nil:
            return ranked(e, query: query!, texts: texts, top: top, provider: e.provider.isEmpty ? name : e.provider, json: args.flag(.json))
        case .success(let e):
            guard case .object(var o) = Wire.json(e) else { return .software }
            o["provider"] = .string(e.provider.isEmpty ? name : e.provider)
            Out.line(JSONValue.object(o).prettyText())
            return .ok
        }
    }

    /// `--similar`: the texts by cosine similarity of their vectors to the
    /// query's (the first vector), most similar first (ties in input order).
    static func ranked(_ e: Embeddings, query: String, texts: [String], top: Int?, provider: String, json: Bool) -> ExitCode {
        let q = e.vectors[0]
        var scored = texts.indices.map { i in (index: i, score: Embeddings.cosine(q, e.vectors[i + 1]) ?? 0) }
        scored.sort { $0.score != $1.score ? $0.score > $1.score : $0.index < $1.index }
        if let top { scored = Array(scored.prefix(top)) }
        if json {
            let results: [JSONValue] = scored.map { ["text": .string(texts[$0.index]), "score": .number($0.score), "index": .integer($0.index)] }
            let doc: JSONValue = ["provider": .string(provider), "model": .string(e.model), "query": .string(query), "results": .array(results)]
            Out.line(doc.prettyText())
        } else {
            for s in scored { Out.line("\(score(s.score))\t\(texts[s.index])") }
        }
        return .ok
    }

    /// A score with four decimals ("0.9950", "-0.1000").
    static func score(_ x: Double) -> String {
        let n = Int((abs(x) * 10000).rounded())
        let frac = String(n % 10000)
        return (x < 0 && n > 0 ? "-" : "") + "\(n / 10000)." + String(repeating: "0", count: 4 - frac.count) + frac
    }
}
