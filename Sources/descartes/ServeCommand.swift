import Descartes
import DescartesCommandLine
import DescartesGateway
import DescartesSupport
@preconcurrency import Dispatch
import Glibc

/// `descartes serve`: the gateway (Sources/DescartesGateway, docs/gateway.md).
enum ServeCommand {
    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        let setup = Commands.setup(globals)
        guard let config = setup.factory.configuration else {
            failure(ProviderError(.config, "no configuration"), json: false)
        }
        var settings: GatewaySettings
        do { settings = try config.gatewaySettings() } catch {
            Out.err("Error: invalid configuration (\(error.problems.count) problem\(error.problems.count == 1 ? "" : "s")):")
            for p in error.problems { Out.err("  \(p)") }
            return .config
        }
        if let l = args.value(.listen) {
            guard let (host, port) = GatewaySettings.listenAddress(l) else {
                usageFailure(UsageError("--listen is HOST:PORT (127.0.0.1:4000, [::1]:4000), got '\(l)'", command: Command.named(.serve)))
            }
            (settings.host, settings.port) = (host, port)
        }
        let audit: AuditLog?
        do { audit = try Commands.auditLog(config) } catch { failure(error, json: false) }
        let gateway = Gateway(
            settings: settings, factory: setup.factory, reliability: setup.settings, audit: audit,
            keyStore: SQLiteGatewayKeyStore(path: settings.keysDatabase), notice: { Out.err($0) },
            accessLog: { line in Out.err(line) })
        let port: Int
        do { port = try gateway.start() } catch {
            Out.err("Error: \(error.description)")
            return .unavailable
        }
        let host = settings.host.contains(":") ? "[\(settings.host)]" : settings.host
        let keys =
            gateway.keys.any
            ? "\(settings.keys.count) configured key\(settings.keys.count == 1 ? "" : "s"), issued keys from \(settings.keysDatabase)"
            : "no keys (loopback only until one is issued)"
        // The address on stdout (a script or test reads it: port 0 picks one);
        // everything else on stderr.
        Out.line("listening on http://\(host):\(port)")
        Out.err("descartes serve: OpenAI (/v1/chat/completions, /v1/responses, /v1/models), Anthropic (/v1/messages), /health, /ready, /metrics on http://\(host):\(port); \(keys)")

        let stop = AsyncStream<Int32>.makeStream()
        let interrupts = Interrupts { stop.continuation.yield(0) }
        for await _ in stop.stream { break }
        Out.err("descartes serve: shutting down (requests in flight get \(settings.shutdownGrace.shortText))")
        await gateway.shutdown(grace: settings.shutdownGrace)
        interrupts.stop()
        Out.err("descartes serve: stopped")
        return .ok
    }
}
