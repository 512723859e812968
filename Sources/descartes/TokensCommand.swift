import Descartes
import DescartesCommandLine

/// `descartes tokens -p PROVIDER TEXT`: the input tokens of TEXT sent as
/// one user message, counted by the provider when it can (Anthropic's
/// count_tokens) and estimated otherwise; the method says which.
enum TokensCommand {
    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        let settings: [String: JSONValue]
        do { settings = try Commands.settings(args) } catch { usageFailure(error) }
        var request = ModelRequest(prompt: CompleteCommand.readPrompt(args), model: args.value(.model))
        request.systemPrompt = args.value(.systemPrompt)
        let name = args.value(.provider)!
        let json = args.flag(.json)
        let (backend, providers) = ProviderCommand.backend(name, settings, globals: globals, json: json)
        let result: Result<TokenEstimate, ProviderError>
        do { result = .success(try await backend.estimateTokens(request)) } catch let e as ProviderError { result = .failure(e) } catch {
            result = .failure(ProviderError(.backend, "\(error)", provider: name))
        }
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
