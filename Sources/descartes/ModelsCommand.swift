import Descartes
import DescartesCommandLine

/// `descartes models -p PROVIDER`: the models the provider offers now (its
/// own list, e.g. GET /models), with what the manifest knows about each.
enum ModelsCommand {
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
        let name = args.value(.provider)!
        let json = args.flag(.json)
        let (backend, providers) = ProviderCommand.backend(name, settings, globals: globals, json: json)
        let manifest = providers.manifest(name)
        let result = await ProviderCommand.withTimeout(timeout, provider: name) { try await backend.listModels() }
        await providers.shutdown()
        switch result {
        case .failure(let e):
            failure(e, json: json)
        case .success(let models):
            if json {
                let list: [JSONValue] = models.map { m in
                    var o: JSONObject = ["id": .string(m.id)]
                    o["context_length"] = (m.contextLength ?? manifest?.model(m.id)?.contextLength).map { .integer($0) } ?? .null
                    o["owned_by"] = m.ownedBy.map { .string($0) } ?? .null
                    if !m.details.isEmpty { o["details"] = .object(m.details) }
                    o["in_manifest"] = .bool(manifest?.model(m.id) != nil)
                    return .object(o)
                }
                Out.line(JSONValue.object(["provider": .string(name), "models": .array(list)]).prettyText())
            } else if models.isEmpty {
                Out.line("\(name): the provider lists no models")
            } else {
                let rows = models.map { m -> [String] in
                    let context = m.contextLength ?? manifest?.model(m.id)?.contextLength
                    return [m.id, context.map(String.init) ?? "-", m.ownedBy ?? "-", manifest?.model(m.id) != nil ? "yes" : ""]
                }
                Out.line(Out.table(["MODEL", "CONTEXT", "OWNED BY", "IN MANIFEST"], rows))
            }
            return .ok
        }
    }
}
