import Descartes
import DescartesCommandLine

/// What `models`, `health` and `tokens` share: creating the backend, a
/// timeout.
enum ProviderCommand {
    /// The backend for `-p` (an instance, a plugin, a fallback chain or a
    /// route: `Setup.resolve`), or the process exits with the error. Shut
    /// down the providers when done.
    static func backend(_ name: String, _ settings: [String: JSONValue], globals: Globals, json: Bool) -> (backend: any ModelBackend, providers: ReliableProviders) {
        Commands.setup(globals).probe(name, settings: settings, json: json)
    }

    /// Runs `body` and returns its result, or a `timeout` error once
    /// `seconds` have passed (the body's task is then cancelled, which
    /// cancels the plugin's call).
    /// `deadline` names the deadline in that error (default: "\(seconds) s").
    static func withTimeout<T: Sendable>(
        _ seconds: Double, provider: String, deadline: String? = nil, _ body: @escaping @Sendable () async throws -> T
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
                return .failure(ProviderError(.timeout, "no answer within \(deadline ?? Out.seconds(seconds))", provider: provider, deadline: "total"))
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
