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
        do throws(UsageError) {
            settings = try Commands.settings(args)
            timeout = try args.double(.timeout) ?? 60
            guard timeout > 0 else { throw args.mistake("--timeout must be positive") }
            guard !args.positional.isEmpty else { throw args.mistake("no text to embed: give TEXT arguments, or '-' to read lines from stdin") }
        } catch { usageFailure(error) }
        globals.timeout = timeout
        let texts: [String]
        if args.positional == ["-"] {
            texts = CompleteCommand.readPrompt(args).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        } else {
            texts = args.positional
        }
        let name = args.value(.provider)!
        // The cache of providers.yaml (cache.embeddings), unless --no-cache.
        let (backend, providers) = Commands.setup(globals).probe(name, settings: settings, json: true, cache: !args.flag(.noCache))
        let request = EmbeddingRequest(texts, model: args.value(.model), deadlines: Deadlines(total: .milliseconds(Int(timeout * 1000))))
        let result = await ProviderCommand.withTimeout(timeout, provider: name) { try await backend.embed(request) }
        await providers.shutdown()
        switch result {
        case .failure(let e):
            failure(e, json: true)
        case .success(let e):
            guard case .object(var o) = Wire.json(e) else { return .software }
            o["provider"] = .string(e.provider.isEmpty ? name : e.provider)
            Out.line(JSONValue.object(o).prettyText())
            return .ok
        }
    }
}
