import Descartes
import DescartesCommandLine

/// What `models`, `health` and `tokens` share: creating the backend, a
/// timeout.
enum ProviderCommand {
    /// The backend for `-p` (a providers.yaml instance or a plugin id), or
    /// the process exits with the error.
    static func backend(_ name: String, _ settings: [String: JSONValue], globals: Globals, json: Bool) -> any ModelBackend {
        let factory = Commands.factory(globals)
        do {
            Commands.warnAboutSecretsOnTheCommandLine(settings, plugin: factory.configuration?.instance(name)?.plugin ?? name, factory: factory)
            return try factory.backend(name, overrides: settings)
        } catch {
            failure(error, json: json)
        }
    }

    /// Runs `body` and returns its result, or a `timeout` error once
    /// `seconds` have passed (the body's task is then cancelled, which
    /// cancels the plugin's call).
    static func withTimeout<T: Sendable>(
        _ seconds: Double, provider: String, _ body: @escaping @Sendable () async throws -> T
    ) async -> Result<T, ProviderError> {
        await withTaskGroup(of: Result<T, ProviderError>?.self) { g in
            g.addTask {
                do { return .success(try await body()) } catch let e as ProviderError { return .failure(e) } catch {
                    return .failure(ProviderError(.backend, "\(error)", provider: provider))
                }
            }
            g.addTask {
                try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
                if Task.isCancelled { return nil }
                return .failure(ProviderError(.timeout, "no answer within \(Out.seconds(seconds))", provider: provider, deadline: "total"))
            }
            var result: Result<T, ProviderError>? = nil
            while result == nil, let next = await g.next() { result = next }
            g.cancelAll()
            return result!
        }
    }
}

extension Out {
    static func seconds(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
    }
}
