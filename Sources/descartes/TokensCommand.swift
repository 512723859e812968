import Descartes
import DescartesCommandLine

/// `descartes tokens -p PROVIDER TEXT`: the input tokens of TEXT sent as
/// one user message, counted by the provider when it can (Anthropic's
/// count_tokens) and estimated otherwise; the method says which.
enum TokensCommand {
    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        var globals = globals
        let settings: [String: JSONValue]
        let timeout: Double
        do throws(UsageError) {
            settings = try Commands.settings(args)
            timeout = try args.double(.timeout) ?? 30
            guard timeout > 0 else { throw args.mistake("--timeout must be positive") }
        } catch { usageFailure(error) }
        // Also the host's deadline on loading, initializing and shutting down the plugin.
        globals.timeout = timeout
        var request = ModelRequest(prompt: CompleteCommand.readPrompt(args), model: args.value(.model))
        request.systemPrompt = args.value(.systemPrompt)
        let name = args.value(.provider)!
        let json = args.flag(.json)
        let (backend, providers) = ProviderCommand.backend(name, settings, globals: globals, json: json)
        request.deadlines.total = .milliseconds(Int(timeout * 1000))
        let asked = request
        let result = await ProviderCommand.withTimeout(timeout, provider: name) { try await backend.estimateTokens(asked) }
        await providers.shutdown()
        switch result {
        case .failure(let e):
            failure(e, json: json)
        case .success(let t):
            if json {
                var o: JSONObject = ["provider": .string(name), "tokens": .integer(t.tokens), "exact": .bool(t.exact), "method": .string(t.method)]
                if let m = request.model { o["model"] = .string(m) }
                Out.line(JSONValue.object(o).prettyText())
            } else {
                Out.line("\(t.tokens) tokens (\(t.exact ? "exact" : "estimated"), \(t.method))")
            }
            return .ok
        }
    }
}
