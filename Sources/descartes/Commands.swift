import Descartes
import Glibc

enum Commands {
    static let usages: [String: String] = [
        "plugins": "descartes plugins <list|info|verify> [options]",
        "plugins list": "descartes plugins list [--json]",
        "plugins info": "descartes plugins info NAME [--json]",
        "plugins verify": "descartes plugins verify [NAME...] [--json] [--set KEY=VALUE]...",
        "complete":
            "descartes complete -p PROVIDER [-m MODEL] [--system TEXT] [--max-tokens N] [--temperature T] [--tools FILE.json] [--stream] [--json] [--isolate [--memory-limit MB]] [--set KEY=VALUE]... PROMPT|-",
        "models": "descartes models -p PROVIDER [--json] [--set KEY=VALUE]...",
        "health": "descartes health [-p PROVIDER] [--json] [--timeout SECONDS] [--set KEY=VALUE]...",
        "tokens": "descartes tokens -p PROVIDER [-m MODEL] [--system TEXT] [--json] [--set KEY=VALUE]... TEXT|-",
    ]

    static let helps: [String: String] = [
        "plugins": """
            Usage: \(usages["plugins"]!)

            Subcommands:
              list     List installed plugins from their manifests (never loads a library)
              info     Show one plugin's manifest in full
              verify   Load, negotiate and create plugins; non-zero exit if any fails
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

            Options:
              --set KEY=VALUE   A config value for the named plugins (repeatable)
              --json            Results as JSON
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
              --timeout SECONDS     Total deadline (default: the provider's timeout, or 600)
              --system TEXT         A system prompt
              --max-tokens N        The most tokens to generate
              --temperature T       Sampling temperature
              --tools FILE.json     Tools the model may call: a JSON array of
                                    {"name", "description", "parameters"} (parameters: a JSON Schema object)
              --tool-choice C       auto, none, required, or the name of the tool to call
              --isolate             Run the plugin in a descartes-plugin-host helper process: if it
                                    crashes, the answer is a `process` error instead of a crash
              --memory-limit MB     With --isolate, the helper's address-space limit (default 4096)

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
            case "verify": return PluginsCommand.verify(subArgs, globals: globals)
            default: usageFailure(UsageError("unknown subcommand '\(sub)' (list, info or verify)", command: "plugins"))
            }
        case "complete":
            if rest.contains("--help") || rest.contains("-h") {
                Out.line(help(for: "complete"))
                return .ok
            }
            return await CompleteCommand.run(rest, globals: globals)
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
}
