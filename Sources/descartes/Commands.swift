import Descartes
import Glibc

enum Commands {
    static let usages: [String: String] = [
        "plugins": "descartes plugins <list|info|verify|enable|disable> [options]",
        "plugins list": "descartes plugins list [--json]",
        "plugins info": "descartes plugins info NAME [--json]",
        "plugins verify": "descartes plugins verify [NAME...] [--json] [--set KEY=VALUE]... | --conformance NAME [--spec FILE] [--json]",
        "plugins enable": "descartes plugins enable NAME [--system]",
        "plugins disable": "descartes plugins disable NAME [--system]",
        "complete":
            "descartes complete -p PROVIDER [-m MODEL] [--system TEXT] [--max-tokens N] [--temperature T] [--tools FILE.json] [--image FILE|URL]... [--stream] [--json] [--isolate [--memory-limit MB]] [--set KEY=VALUE]... [--retries N] [--fallback P2,...] [--stats] PROMPT|-",
        "models": "descartes models -p PROVIDER [--json] [--set KEY=VALUE]...",
        "health": "descartes health [-p PROVIDER] [--json] [--timeout SECONDS] [--set KEY=VALUE]...",
        "tokens": "descartes tokens -p PROVIDER [-m MODEL] [--system TEXT] [--json] [--set KEY=VALUE]... TEXT|-",
        "bench":
            "descartes bench -p PROVIDER [-n REQUESTS] [-c CONCURRENCY] [--stream] [--session] [--warmup N] [--expect FILE] [--prompt TEXT] [-m MODEL] [--timeout SECONDS] [--json] [--set KEY=VALUE]...",
        "batch": "descartes batch -p PROVIDER [-c N] [-o FILE] [--provider-batch] [options] FILE|-",
        "config": "descartes config <show|check> [options]",
        "config show": "descartes config show [NAME] [--json]",
        "config check": "descartes config check [--json]",
        "log": "descartes log [-n N] [--json] [--file FILE]",
    ]

    static let helps: [String: String] = [
        "plugins": """
            Usage: \(usages["plugins"]!)

            Subcommands:
              list     List installed plugins from their manifests (never loads a library)
              info     Show one plugin's manifest in full
              verify   Load, negotiate and create plugins; non-zero exit if any fails;
                       with --conformance NAME, run one plugin through the conformance suite
              enable   Allow a plugin in the policy file (undo a disable)
              disable  Forbid a plugin in the policy file
            """,
        "plugins enable": """
            Usage: \(usages["plugins enable"]!)

            Edits the plugin policy so NAME (a provider id or a glob) is allowed: removes
            it from the file's 'disable' list and, when the file has an 'enable' list,
            adds it there. Without --system the user's file is edited
            ($XDG_CONFIG_HOME/descartes/plugins.yaml), which can only narrow the system
            policy: a plugin the system disables stays disabled.

            Options:
              --system   Edit /etc/descartes/plugins.yaml (the host's policy; needs root)
            """,
        "plugins disable": """
            Usage: \(usages["plugins disable"]!)

            Edits the plugin policy so NAME (a provider id or a glob) is disabled: adds it
            to the file's 'disable' list and removes it from its 'enable' list. The
            plugin then shows as disabled in 'plugins list', with the file and line.

            Options:
              --system   Edit /etc/descartes/plugins.yaml (the host's policy; needs root)
            """,
        "config": """
            Usage: \(usages["config"]!)

            Subcommands:
              show    The merged configuration, where each value came from, secrets masked
              check   Every problem in the configuration files, each with file:line:column
            """,
        "config show": """
            Usage: \(usages["config show"]!)

            Prints the merged providers.yaml: the files read (project, user, system, or
            --config), each provider instance with its plugin and every config key it
            will get, with where the value came from (file:line:column and the
            reference it was expanded from, an environment variable, .env, a default),
            and the middleware and audit sections. Secrets print as [REDACTED].
            With NAME, only that instance (or plugin). Credential helpers are not run.

            Options:
              --json   One JSON document
            """,
        "config check": """
            Usage: \(usages["config check"]!)

            Reads every configuration file, expands every reference, checks every
            instance against its plugin's manifest and every section, and lists all
            problems found, each as file:line:column: message. Exits 78 if any.

            Options:
              --json   {"problems": [{"file", "line", "column", "message"}]}
            """,
        "log": """
            Usage: \(usages["log"]!)

            Shows the last entries of the audit log (providers.yaml 'audit:' section)
            and totals per provider instance: requests, errors, tokens, cost.

            Options:
              -n N          How many entries to show (default 20)
              --file FILE   Read this audit log instead of the configured one
              --json        {"entries": [...], "totals": [...]}
            """,
        "plugins list": """
            Usage: \(usages["plugins list"]!)

            Lists every manifest found on the plugin search path with its name, version,
            mode, ABI, status and library, and its config keys (! required, * secret).
            Discovery reads YAML only: a broken library cannot crash this command.

            Options:
              --json   One JSON document: {"plugins": [...], "search": [...]}
            """,
        "plugins info": """
            Usage: \(usages["plugins info"]!)

            Shows a plugin's manifest: library, factory, capabilities, models with
            context sizes and prices, and config keys with type, default and env.

            Options:
              --json   The manifest as JSON
            """,
        "plugins verify": """
            Usage: \(usages["plugins verify"]!)

            For each plugin (all available ones when no NAME is given): loads the
            library, negotiates the ABI, finds the factory and creates a backend from
            the defaults, the environment and --set values. Exits 1 if any fails.

            A plugin that loads but lacks a required config value (an API key) is
            reported as "ok, needs config" with what to set, and does not fail.

            With --conformance NAME it runs the plugin through the conformance suite
            instead (docs/conformance.md): ABI negotiation, config validation, complete,
            stream, exactly one terminal event, cancellation, deadlines, errors mapped,
            concurrent requests, shutdown with requests in flight, no secret leaked. It
            prints each check and exits 1 if any fails. The plugin is exercised through
            the scenarios of its spec: --spec FILE, else the manifest's 'conformance:',
            else conformance/NAME.yaml beside the manifest, else
            <prefix>/share/descartes/conformance/NAME.yaml, else a built-in text check.

            Options:
              --set KEY=VALUE     A config value for the named plugins (repeatable)
              --json              Results as JSON
              --conformance NAME  Run the conformance suite for one plugin
              --spec FILE         The conformance spec to use
            """,
        "complete": """
            Usage: \(usages["complete"]!)

            Sends PROMPT (or stdin with '-') as one user message and prints the answer.

            Options:
              -p, --provider NAME   The provider (required)
              -m, --model MODEL     The model (default: the provider's)
              --stream              Print text as it arrives
              --json                Print the response as JSON; with --stream, one JSON event per line
              --set KEY=VALUE       A config value for the provider (repeatable)
              --timeout SECONDS     Total deadline, retries and fallbacks included (default: the provider's timeout, or 600)
              --system TEXT         A system prompt
              --max-tokens N        The most tokens to generate
              --temperature T       Sampling temperature
              --tools FILE.json     Tools the model may call: a JSON array of
                                    {"name", "description", "parameters"} (parameters: a JSON Schema object)
              --tool-choice C       auto, none, required, or the name of the tool to call
              --image FILE|URL      An image shown with the prompt (repeatable): a PNG, JPEG, GIF
                                    or WebP file, or an http(s) URL; providers with 'vision' only
              --isolate             Run the plugin in a descartes-plugin-host helper process: if it
                                    crashes, the answer is a `process` error instead of a crash
              --memory-limit MB     With --isolate, the helper's address-space limit (default 4096)
            \(ReliabilityOptions.help)

            With --json the response names the provider that answered and lists the failed attempts.
            Tool calls the model makes are printed after the text as
            "tool call ID: NAME(ARGUMENTS)" (with --json, in "tool_calls").
            """,
        "models": """
            Usage: \(usages["models"]!)

            Lists the models the provider offers now (asking the provider, e.g. GET /models),
            with context sizes and whether the manifest knows each.

            Options:
              -p, --provider NAME   The provider (required)
              --set KEY=VALUE       A config value for the provider (repeatable)
              --json                {"provider": ..., "models": [{"id", "context_length", "owned_by", ...}]}
            """,
        "health": """
            Usage: \(usages["health"]!)

            Checks with a real call (authenticated, for an API) that a provider can serve a
            request now, and says why not. Without -p, checks every available provider at
            once; providers missing a required key (an API key not in the environment) are
            reported as skipped. Exits non-zero when a checked provider is unhealthy.

            Options:
              -p, --provider NAME   Check one provider (exit status: the error's, see 'descartes --help')
              --timeout SECONDS     Give up on a provider after this long (default 20)
              --set KEY=VALUE       A config value for the provider given with -p (repeatable)
              --json                {"results": [{"name", "healthy", "message"|"error"|"skipped", ...}], ...}
            """,
        "tokens": """
            Usage: \(usages["tokens"]!)

            Counts the input tokens of TEXT (or stdin with '-') sent as one user message:
            exactly when the provider can count (Anthropic's count_tokens), else an
            estimate of about four characters per token. The method is printed.

            Options:
              -p, --provider NAME   The provider (required)
              -m, --model MODEL     The model to count for
              --system TEXT         A system prompt to count too
              --set KEY=VALUE       A config value for the provider (repeatable)
              --json                {"provider", "tokens", "exact", "method"}
            """,
        "bench": """
            Usage: \(usages["bench"]!)

            Runs REQUESTS requests through the provider as a Swift caller does
            (ModelBackend.complete, or stream with --stream, joining the text deltas)
            and reports the cost: wall and CPU time, requests/s, per-request latency,
            peak RSS and the most threads the process had. `make bench` uses it; see
            docs/benchmarks.md.

            Options:
              -p, --provider NAME     The provider (required)
              -n, --requests N        Requests to time (default 100)
              -c, --concurrency K     Requests in flight at once (default 1)
              --stream                Stream each answer (default: complete)
              --session               Headless providers with sessions: the first request starts
                                      a session (timed apart), the timed ones are its later turns
              --warmup N              Untimed requests first (default 1: loads the plugin, connects)
              --expect FILE           Check that every answer's text equals FILE byte for byte
                                      (exit 1 if one differs)
              --prompt TEXT           The user message (default a short sentence)
              -m, --model MODEL       The model
              --timeout SECONDS       Total deadline of each request
              --set KEY=VALUE         A config value for the provider (repeatable)
              --json                  One JSON object: requests, seconds, requests_per_second,
                                      cpu_seconds, events, text_bytes, text_matches, peak_rss_kb,
                                      threads_peak, latency_ms {median, mean, min, max}
            """,
        "batch": BatchCommand.help,
    ]

    static func usage(for command: String) -> String { usages[command] ?? "descartes <command> [options]" }
    static func help(for command: String) -> String { helps[command] ?? topHelp }

    static func run(_ args: [String], globals: Globals) async -> ExitCode {
        let command = args[0]
        let rest = Array(args.dropFirst())
        switch command {
        case "plugins":
            guard let sub = rest.first else {
                usageFailure(UsageError("missing subcommand (list, info or verify)", command: "plugins"))
            }
            if sub == "--help" || sub == "-h" {
                Out.line(help(for: "plugins"))
                return .ok
            }
            let subArgs = Array(rest.dropFirst())
            let name = "plugins \(sub)"
            if subArgs.contains("--help") || subArgs.contains("-h") {
                Out.line(help(for: name))
                return .ok
            }
            switch sub {
            case "list": return PluginsCommand.list(subArgs, globals: globals)
            case "info": return PluginsCommand.info(subArgs, globals: globals)
            case "verify":
                if subArgs.contains(where: { $0 == "--conformance" || $0.hasPrefix("--conformance=") }) {
                    return await ConformanceCommand.run(subArgs, globals: globals)
                }
                return PluginsCommand.verify(subArgs, globals: globals)
            case "enable", "disable": return PolicyCommand.edit(sub, subArgs, globals: globals)
            default: usageFailure(UsageError("unknown subcommand '\(sub)' (list, info, verify, enable or disable)", command: "plugins"))
            }
        case "config":
            guard let sub = rest.first else {
                usageFailure(UsageError("missing subcommand (show or check)", command: "config"))
            }
            if sub == "--help" || sub == "-h" {
                Out.line(help(for: "config"))
                return .ok
            }
            let subArgs = Array(rest.dropFirst())
            if subArgs.contains("--help") || subArgs.contains("-h") {
                Out.line(help(for: "config \(sub)"))
                return .ok
            }
            switch sub {
            case "show": return ConfigCommand.show(subArgs, globals: globals)
            case "check": return ConfigCommand.check(subArgs, globals: globals)
            default: usageFailure(UsageError("unknown subcommand '\(sub)' (show or check)", command: "config"))
            }
        case "log":
            if rest.contains("--help") || rest.contains("-h") {
                Out.line(help(for: "log"))
                return .ok
            }
            return LogCommand.run(rest, globals: globals)
        case "complete":
            if rest.contains("--help") || rest.contains("-h") {
                Out.line(help(for: "complete"))
                return .ok
            }
            return await CompleteCommand.run(rest, globals: globals)
        case "bench":
            if rest.contains("--help") || rest.contains("-h") {
                Out.line(help(for: "bench"))
                return .ok
            }
            return await BenchCommand.run(rest, globals: globals)
        case "batch":
            if rest.contains("--help") || rest.contains("-h") {
                Out.line(help(for: "batch"))
                return .ok
            }
            return await BatchCommand.run(rest, globals: globals)
        case "models", "health", "tokens":
            if rest.contains("--help") || rest.contains("-h") {
                Out.line(help(for: command))
                return .ok
            }
            switch command {
            case "models": return await ModelsCommand.run(rest, globals: globals)
            case "health": return await HealthCommand.run(rest, globals: globals)
            default: return await TokensCommand.run(rest, globals: globals)
            }
        default:
            usageFailure(UsageError("unknown command '\(command)'", command: ""))
        }
    }

    /// Discovers plugins, narrating with --verbose.
    static func catalog(_ globals: Globals) -> PluginCatalog {
        let catalog = PluginCatalog.discover()
        if globals.verbose {
            for line in catalog.trace { Out.err("descartes: discovery: \(line)") }
        }
        return catalog
    }

    /// Reads providers.yaml (and .env); on any problem in the files prints
    /// every one and exits 78.
    static func configuration(_ globals: Globals) -> ProvidersConfig {
        let config = ProvidersConfig.load(.init(explicitFile: globals.configFile))
        if globals.verbose {
            for l in config.locations {
                let status: String
                switch l.status {
                case .loaded: status = "read"
                case .missing: status = "not found"
                case .refused(let why): status = "refused: \(why)"
                }
                Out.err("descartes: config: \(l.path) (\(l.scope.rawValue)): \(status)")
            }
            if let env = config.interpolator.dotenvFile { Out.err("descartes: config: \(env): \(config.interpolator.dotenv.count) variables") }
        }
        if !config.problems.isEmpty {
            Out.err("Error: invalid configuration (\(config.problems.count) problem\(config.problems.count == 1 ? "" : "s")):")
            for p in config.problems { Out.err("  \(p)") }
            exit(ExitCode.config.rawValue)
        }
        return config
    }

    /// The plugins and the configuration, for commands that create backends.
    static func factory(_ globals: Globals) -> ProviderFactory {
        let config = configuration(globals)
        return ProviderFactory(catalog: catalog(globals), environment: config.environment, configuration: config)
    }

    /// `--set KEY=VALUE` values as config.
    static func settings(_ args: Arguments) throws(UsageError) -> [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for s in args.all("--set") {
            guard let eq = s.firstIndex(of: "="), eq != s.startIndex else {
                throw UsageError("--set needs KEY=VALUE, got '\(s)'", command: args.command)
            }
            out[String(s[..<eq])] = .string(String(s[s.index(after: eq)...]))
        }
        return out
    }

    /// `--set` puts values in argv, which other users can read (ps): say so
    /// for a key the manifest marks secret.
    static func warnAboutSecretsOnTheCommandLine(_ settings: [String: JSONValue], plugin: String, factory: ProviderFactory) {
        guard let m = try? factory.manifest(for: plugin) else { return }
        for key in settings.keys.sorted() where m.configKey(key)?.secret == true {
            Out.err(
                "descartes: warning: --set \(key)=... puts a secret on the command line, where other users can read it (ps); "
                    + "use an environment variable\(m.configKey(key)!.env.first.map { " (\($0))" } ?? ""), .env, or ${file:...} in providers.yaml")
        }
    }

    /// The audit log when providers.yaml enables it.
    static func auditLog(_ config: ProvidersConfig?) throws(ProviderError) -> AuditLog? {
        guard let config else { return nil }
        do {
            let settings = try config.auditSettings()
            return settings.enabled ? AuditLog(settings) : nil
        } catch {
            throw ProviderError(.config, "invalid 'audit' section (\(error.problems.count) problem\(error.problems.count == 1 ? "" : "s"))", details: error.problems.map(\.description))
        }
    }
}
