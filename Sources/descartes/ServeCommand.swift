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
            keyStore: SQLiteGatewayKeyStore(path: settings.keysDatabase), responseStore: ConversationStore(file: settings.responsesDatabase),
            notice: { Out.err($0) },
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
                + (gateway.keys.shared.map { " and \($0.store.settings.store)" } ?? "")
            : "no keys (loopback only until one is issued)"
        // The address on stdout (a script or test reads it: port 0 picks one);
        // everything else on stderr.
        let scheme = settings.tls == nil ? "http" : "https"
        Out.line("listening on \(scheme)://\(host):\(port)")
        Out.err("descartes serve: OpenAI (/v1/chat/completions, /v1/responses, /v1/models), Anthropic (/v1/messages), /health, /ready, /metrics on \(scheme)://\(host):\(port); \(keys)")

        // SIGHUP: read providers.yaml again (providers, configured keys,
        // CORS origins); a bad file is reported and the running
        // configuration kept. Connections are not touched.
        signal(SIGHUP, SIG_IGN)
        let hangups = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "descartes.serve.reload"))
        let listen = args.value(.listen).flatMap(GatewaySettings.listenAddress)
        // The audit log is opened once; a changed `audit:` section is named as taking a restart.
        let auditAtStart = try? config.auditSettings()
        hangups.setEventHandler {
            let config = ProvidersConfig.load(.init(explicitFile: globals.configFile))
            let fresh: Result<(Setup, GatewaySettings, AuditSettings), SourceError>
            switch Commands.setupOrProblems(globals, config) {
            case .failure(let e): fresh = .failure(e)
            case .success(let s):
                do throws(SourceError) {
                    fresh = .success((s, try config.gatewaySettings(), try config.auditSettings()))
                } catch { fresh = .failure(error) }
            }
            switch fresh {
            case .failure(let e):
                Out.err("descartes serve: SIGHUP: the configuration has \(e.problems.count) problem\(e.problems.count == 1 ? "" : "s"); still serving the previous one:")
                for p in e.problems { Out.err("  \(p)") }
            case .success(let (setup, new, audit)):
                var new = new
                if let listen { (new.host, new.port) = listen }
                var restart = gateway.reload(settings: new, factory: setup.factory, reliability: setup.settings)
                if let a = auditAtStart, [a.enabled, a.prompts, a.replies] != [audit.enabled, audit.prompts, audit.replies] || a.file != audit.file || a.database != audit.database {
                    restart.append("audit")
                }
                let instances = config.instances.count
                Out.err(
                    "descartes serve: SIGHUP: reloaded the configuration (\(instances) provider instance\(instances == 1 ? "" : "s"), "
                        + "\(new.keys.count) configured key\(new.keys.count == 1 ? "" : "s"))"
                        + (restart.isEmpty ? "" : "; changed but kept until a restart: \(restart.joined(separator: ", "))"))
            }
        }
        hangups.resume()
        defer { hangups.cancel() }

        let stop = AsyncStream<Int32>.makeStream()
        let interrupts = Interrupts([SIGINT, SIGTERM]) { stop.continuation.yield(0) }
        for await _ in stop.stream { break }
        Out.err("descartes serve: shutting down (requests in flight get \(settings.shutdownGrace.shortText))")
        await gateway.shutdown(grace: settings.shutdownGrace)
        interrupts.stop()
        Out.err("descartes serve: stopped")
        return .ok
    }
}
