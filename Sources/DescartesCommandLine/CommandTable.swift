// Every command and option of `descartes` and `descartes-bench`, each
// declared once. Parsing, usage lines, `--help`, `--help --json` and usage
// errors are made from this table (CommandLine.swift); the commands' code
// reads the parsed values by option (`args.value(.provider)`).

/// Every command, by the words that run it.
package enum CommandID: String, Sendable, CaseIterable {
    case descartes = "descartes"
    case plugins = "descartes plugins"
    case pluginsList = "descartes plugins list"
    case pluginsInfo = "descartes plugins info"
    case pluginsVerify = "descartes plugins verify"
    case pluginsEnable = "descartes plugins enable"
    case pluginsDisable = "descartes plugins disable"
    case complete = "descartes complete"
    case models = "descartes models"
    case health = "descartes health"
    case tokens = "descartes tokens"
    case embed = "descartes embed"
    case batch = "descartes batch"
    case config = "descartes config"
    case configShow = "descartes config show"
    case configCheck = "descartes config check"
    case log = "descartes log"
    case serve = "descartes serve"
    case keys = "descartes keys"
    case keysCreate = "descartes keys create"
    case keysList = "descartes keys list"
    case keysRevoke = "descartes keys revoke"
    case sessions = "descartes sessions"
    case sessionsList = "descartes sessions list"
    case sessionsClose = "descartes sessions close"
    case chat = "descartes chat"
    case conversations = "descartes conversations"
    case conversationsList = "descartes conversations list"
    case conversationsShow = "descartes conversations show"
    case conversationsExport = "descartes conversations export"
    case conversationsDelete = "descartes conversations delete"
    case bench = "descartes-bench"
}

// MARK: Options

extension Option {
    // Global: taken by every command, anywhere before `--`.
    package static let verbose = Option("--verbose", short: "-v", help: "Narrate plugin discovery and loading on stderr (accepted anywhere)")
    package static let config = Option(
        "--config", value: "FILE", help: "Read this providers.yaml instead of looking for the project, user and system ones")
    package static let helpFlag = Option("--help", short: "-h", help: "Show help (also after any command; with --json, as JSON)")
    package static let version = Option("--version", help: "Print the version")
    /// What every command's help lists under "Global options".
    package static let globals: [Option] = [verbose, config, helpFlag]

    // The provider and the request.
    package static let provider = Option(
        "--provider", short: "-p", value: "PROVIDER", help: "The provider: an instance of providers.yaml, or a plugin",
        in: [
            .complete: .required("The provider: a providers.yaml instance, a plugin, a fallback chain or a route"),
            .chat: .required("The provider: a providers.yaml instance, a plugin, a fallback chain or a route"),
            .batch: .required("The provider: a providers.yaml instance, a plugin, a fallback chain or a route"),
            .models: .required, .tokens: .required, .embed: .required, .bench: .required,
            .health: .key("Check this provider only (the exit status is then its error's)"),
            .log: "Only attempts by this provider, or that came through this chain or route",
        ])
    package static let model = Option(
        "--model", short: "-m", value: "MODEL", help: "The model (default: the provider's)",
        in: [
            .complete: .plain, .chat: .plain, .tokens: "The model to count for", .embed: "The embedding model (default: the provider's)", .batch: "The model for requests that name none", .bench: .plain,
            .log: "Only attempts with this model",
        ])
    package static let systemPrompt = Option(
        "--system", value: "TEXT", help: "A system prompt",
        in: [
            .complete: "A system prompt (continuing a conversation: replaces its own)", .chat: "A system prompt (continuing a conversation: replaces its own)",
            .tokens: "A system prompt to count too",
        ])
    package static let maxTokens = Option(
        "--max-tokens", value: "N", help: "The most tokens to generate", in: [.complete: .plain, .chat: "The most tokens to generate, each answer"])
    package static let temperature = Option("--temperature", value: "T", help: "Sampling temperature", in: [.complete: .plain, .chat: .plain])
    package static let tools = Option(
        "--tools", value: "FILE.json",
        help: """
            Tools the model may call: a JSON array of
            {"name", "description", "parameters"} (parameters: a JSON Schema object)
            """, in: [.complete: .plain])
    package static let toolChoice = Option(
        "--tool-choice", value: "C", help: "auto, none, required, or the name of the tool to call", in: [.complete: .plain])
    package static let schema = Option(
        "--schema", value: "FILE|FIELDS",
        help: """
            Answer with JSON matching a schema, checked before it is printed:
            a JSON Schema file, or fields 'name, age int, bio: their biography'
            (types str, the default, int, float, bool; docs/structured-output.md)
            """, in: [.complete: .plain])
    package static let image = Option(
        "--image", value: "FILE|URL",
        help: """
            An image shown with the prompt: a PNG, JPEG, GIF or WebP file,
            or an http(s) URL; providers with 'vision' only
            """, repeatable: true, in: [.complete: .plain])
    package static let prompt = Option(
        "--prompt", value: "TEXT", help: "The user message (default a short sentence)", in: [.bench: .plain])

    // How it runs and what is printed.
    package static let stream = Option(
        "--stream", help: "Print text as it arrives", in: [.complete: .plain, .bench: "Stream each answer (default: complete)"])
    package static let session = Option(
        "--session",
        help: """
            Headless providers with sessions: the first request starts
            a session (timed apart), the timed ones are its later turns
            """, in: [.bench: .plain])
    /// complete's `--session` takes a value; descartes-bench's is a flag
    /// (`session` above): one name, two commands, each parsed on its own.
    package static let continueSession = Option(
        "--session", value: "ID|new",
        help: """
            Agents with sessions (claude-code-cli, codex-cli): 'new' starts one
            and prints its id; an id continues it ('descartes sessions list')
            """, in: [.complete: .plain])
    package static let continueConversation = Option(
        "--continue", short: "-c", help: "Continue the most recent conversation (its messages are sent before the prompt)",
        in: [.complete: .plain, .chat: .plain])
    package static let conversation = Option(
        "--conversation", value: "ID", help: "Continue conversation ID ('descartes conversations list')",
        in: [.complete: .plain, .chat: .plain])
    package static let noHistory = Option(
        "--no-history", help: "Do not record this turn in the conversation store (DESCARTES_NO_HISTORY=1: never)",
        in: [.complete: .plain])
    package static let format = Option(
        "--format", value: "FORMAT", help: "json (default: every message with its usage, provider and time) or markdown",
        in: [.conversationsExport: .plain])
    package static let json = Option(
        "--json", help: "Print the result as JSON",
        in: [
            .pluginsList: .key("One JSON document: {\"plugins\": [...], \"search\": [...]}"),
            .pluginsInfo: .key("The manifest as JSON"),
            .pluginsVerify: .key("Results as JSON"),
            .complete: "Print the response as JSON (with its conversation_id); with --stream, one JSON event per line",
            .conversationsList: .key("{\"database\", \"conversations\": [{\"id\", \"provider\", \"model\", \"title\", \"messages\", \"created\", \"updated\", \"agent_session\"}]}"),
            .conversationsShow: "The conversation and its messages as JSON (as export --format json)",
            .models: "{\"provider\": ..., \"models\": [{\"id\", \"context_length\", \"owned_by\", ...}]}",
            .health: "{\"results\": [{\"name\", \"healthy\", \"message\"|\"error\"|\"skipped\", ...}], ...}",
            .tokens: "{\"provider\", \"tokens\", \"exact\", \"method\"}",
            .embed: "Without --similar, the output is JSON already; with it: {\"provider\", \"model\", \"query\", \"results\": [{\"text\", \"score\", \"index\"}]}, most similar first",
            .configShow: .key("One JSON document"),
            .configCheck: "{\"problems\": [{\"file\", \"line\", \"column\", \"message\"}]}",
            .log: .key("{\"entries\": [...], \"totals\": [...]}"),
            .keysList: "{\"database\", \"shared_store\" (with shared:), \"keys\": [{\"name\", \"models\", \"rpm\", \"tpm\", \"budget_usd\", \"period\", \"spent_usd\", \"labels\", \"created\", \"revoked\"}]}",
            .sessionsList: .key("{\"directory\", \"sessions\": [{\"id\", \"provider\", \"turns\", \"created\", \"updated\"}]}"),
            .bench: """
                One JSON object: requests, seconds, requests_per_second,
                cpu_seconds, events, text_bytes, text_matches, peak_rss_kb,
                threads_peak, threads_peak_by_name {thread name: most at once},
                latency_ms {median, p99, mean, min, max}; with a shared: store,
                shared_store {round_trips, commands, failures} of the timed requests;
                with --cache, cache {hits, shared_hits, misses} of them
                """,
        ])
    package static let set = Option(
        "--set", value: "KEY=VALUE", help: "A config value for the provider", repeatable: true,
        in: [
            .complete: .plain, .chat: .plain, .models: .plain, .tokens: .plain, .embed: .plain, .batch: .plain, .bench: .plain,
            .health: "A config value for the provider given with -p",
            .pluginsVerify: "A config value for the named plugins",
        ])
    package static let timeout = Option(
        "--timeout", value: "SECONDS", help: "Total deadline of each request",
        in: [
            .complete: "Total deadline, retries and fallbacks included (default: the provider's timeout, or 600)",
            .batch: "Total deadline of the whole batch, retries included: a line not sent by then is an error line saying so",
            .health: "Deadline of the whole command, creating each provider included (default 20); a provider not answering by then is unhealthy",
            .models: "Give up after this long (default 30)",
            .tokens: "Give up after this long (default 30)",
            .embed: "Give up after this long (default 60)",
            .bench: .plain,
            .pluginsVerify: "Deadline of the whole command (default 30): the plugins are verified at once; one not loaded and created by then fails",
        ])
    package static let isolate = Option(
        "--isolate",
        help: """
            Run the plugin in a descartes-plugin-host helper process: if it
            crashes, the answer is a `process` error instead of a crash
            """, in: [.complete: .plain])
    package static let inProcess = Option(
        "--in-process",
        help: """
            Load and run the plugins in this process instead of a
            descartes-plugin-host helper each (for a debugger; a crash
            then ends the command)
            """,
        in: [
            .pluginsVerify: "Load and run the plugins (with --conformance: the suite) in this process instead of a helper or child process, for a debugger or a sanitizer; a crash then ends the command",
            .health: .plain,
        ])
    package static let memoryLimit = Option(
        "--memory-limit", value: "MB", help: "With --isolate, the helper's address-space limit (default 4096)", in: [.complete: .plain])
    package static let concurrency = Option(
        "--concurrency", short: "-c", value: "N", help: "Requests in flight at once",
        in: [.batch: "Requests in flight at once (default 4)", .bench: "Requests in flight at once (default 1)"])
    package static let output = Option(
        "--output", short: "-o", value: "FILE", help: "Write the results to FILE instead of stdout", in: [.batch: .plain])
    package static let quiet = Option("--quiet", short: "-q", help: "No progress on stderr", in: [.batch: .plain])

    // The benchmark.
    package static let requests = Option("--requests", short: "-n", value: "N", help: "Requests to time (default 100)", in: [.bench: .plain])
    package static let warmup = Option(
        "--warmup", value: "N", help: "Untimed requests first (default 1: loads the plugin, connects)", in: [.bench: .plain])
    package static let expect = Option(
        "--expect", value: "FILE",
        help: """
            Check that every answer's text equals FILE byte for byte
            (exit 1 if one differs)
            """, in: [.bench: .plain])
    package static let cache = Option(
        "--cache",
        help: """
            Through providers.yaml's response cache (cache:), which is
            otherwise left out, as retries are
            """, in: [.bench: .plain])
    package static let vary = Option(
        "--vary", value: "TAG",
        help: """
            Make every prompt distinct, a cache miss: append ' [TAG N]'
            (N counts the timed requests from 0, warm-ups ' [TAG wN]');
            the same TAG in another process asks the same prompts again
            """, in: [.bench: .plain])

    // Reliability and routing (complete, batch).
    static let reliability: [CommandID: Use] = [.complete: .plain, .batch: .plain]
    package static let retries = Option(
        "--retries", value: "N", help: "Retry retryable errors N times (default 2, or providers.yaml's retry:; 0 disables)", in: reliability)
    package static let fallback = Option(
        "--fallback", value: "P2[,P3...]", help: "Providers to try in order when PROVIDER fails before its first token", in: reliability)
    package static let stats = Option(
        "--stats", help: "Print time to first token, tokens per second, tokens and cost on stderr", in: reliability)
    package static let explain = Option(
        "--explain", help: "Print why a route chose its provider on stderr (also with --verbose)", in: reliability)
    // Ranking by similarity (embed).
    package static let similar = Option(
        "--similar", value: "QUERY",
        help: "Rank the texts by cosine similarity to QUERY's embedding, most similar first, each with its score", in: [.embed: .plain])
    package static let top = Option("--top", value: "N", help: "With --similar: only the N most similar", in: [.embed: .plain])
    package static let noCache = Option(
        "--no-cache", help: "Do not answer from, or store in, the response cache",
        in: reliability.merging([.embed: "Do not take vectors from, or store them in, the cache (providers.yaml's cache:)"]) { a, _ in a })

    // The provider's own batch API (batch).
    static let providerBatches = "Provider batch APIs (OpenAI /v1/batches, Anthropic /v1/messages/batches: cheaper, within 24 h)"
    package static let providerBatch = Option(
        "--provider-batch",
        help: """
            Submit FILE as one provider batch, poll until it ends, then write
            the results as above (custom ids: each line's "custom_id", else req-N)
            """, section: providerBatches, in: [.batch: .plain])
    package static let submitOnly = Option(
        "--submit-only", help: "Submit, print the batch's status as JSON, exit", needs: "--provider-batch", section: providerBatches,
        in: [.batch: .plain])
    package static let status = Option(
        "--status", value: "ID", help: "Print the status of batch ID as JSON", section: providerBatches, in: [.batch: .plain])
    package static let results = Option(
        "--results", value: "ID",
        help: """
            Wait for batch ID to end, then write its results (in FILE's order
            when FILE is given, else as the provider lists them)
            """, section: providerBatches, in: [.batch: .plain])
    package static let cancel = Option(
        "--cancel", value: "ID", help: "Ask the provider to cancel batch ID", section: providerBatches, in: [.batch: .plain])
    package static let pollInterval = Option(
        "--poll-interval", value: "SECONDS", help: "How often to poll (default 30)", section: providerBatches, in: [.batch: .plain])

    // Plugins and configuration.
    package static let conformance = Option(
        "--conformance", value: "NAME", help: "Run the conformance suite for plugin NAME (instead of verifying)",
        in: [.pluginsVerify: .key])
    package static let spec = Option("--spec", value: "FILE", help: "With --conformance: the conformance spec to use", needs: "--conformance", in: [.pluginsVerify: .plain])
    package static let systemPolicy = Option(
        "--system", help: "Edit /etc/descartes/plugins.yaml (the host's policy; needs root)",
        in: [.pluginsEnable: .plain, .pluginsDisable: .plain])
    package static let lines = Option(
        "--lines", short: "-n", value: "N", help: "How many entries to show (default 20)",
        in: [.log: .key, .conversationsList: "How many conversations to show, most recent first (default 20)"])
    package static let file = Option(
        "--file", value: "FILE", help: "Read this audit ledger (SQLite) or JSON-lines log instead of the configured ledger", in: [.log: .plain])
    package static let label = Option(
        "--label", value: "KEY=VALUE",
        help: "A label of the request (its metadata: agent, team, ...), recorded in the audit ledger", repeatable: true,
        in: [
            .complete: .plain,
            .log: "Only requests with this label (repeat: all of them), e.g. --label team=infra",
            .keysCreate: "A label every request made with the key carries to the audit ledger (repeatable), e.g. --label team=a",
        ])
    package static let approve = Option(
        "--approve", value: "POLICY",
        help: """
            How an agent's tool uses are approved: allow, deny, ask (a y/N question on the terminal; refused when stdin is not a terminal), or rules such as 'Bash(git *)' or 'Read' allowing only what they match (repeatable; with ask, what no rule allows is asked)
            """, repeatable: true, in: [.complete: .plain])
    package static let since = Option(
        "--since", value: "AGE", help: "Only requests of the last AGE: 30m, 1h, 1d, 1w (or seconds)", in: [.log: .plain])
    package static let groupBy = Option(
        "--group-by", value: "WHAT", help: "Totals per provider (default), model, day, via (chain or route) or label:NAME", in: [.log: .plain])

    // The gateway (serve).
    package static let listen = Option(
        "--listen", value: "HOST:PORT",
        help: "Listen here (default: providers.yaml's server.listen, else 127.0.0.1:4000; port 0 picks a free one)",
        in: [.serve: .plain])

    // Gateway keys (keys create).
    package static let keyName = Option("--name", value: "NAME", help: "The key's name (access log, metrics, audit ledger)", in: [.keysCreate: .required])
    package static let budgetUSD = Option(
        "--budget-usd", value: "USD", help: "Refuse the key's requests once it has spent this much (in its --period)", in: [.keysCreate: .plain])
    package static let rpm = Option("--rpm", value: "N", help: "Requests per minute the key may make", in: [.keysCreate: .plain])
    package static let tpm = Option("--tpm", value: "N", help: "Tokens (input and output) per minute the key may use", in: [.keysCreate: .plain])
    package static let models = Option(
        "--models", value: "GLOBS", help: "Model names the key may use, comma-separated globs ('openai/*,local-*'; default every model)",
        in: [.keysCreate: .plain])
    package static let period = Option(
        "--period", value: "PERIOD", help: "What --budget-usd counts: day, month (UTC) or total (default)", in: [.keysCreate: .plain])

    /// Every option, in the order help lists them.
    package static let all: [Option] = [
        provider, model, systemPrompt, maxTokens, temperature, tools, toolChoice, schema, image, prompt,
        requests, concurrency, stream, session, continueSession, continueConversation, conversation, noHistory, format, warmup, expect, cache, vary, json, output, quiet, set, timeout, isolate, inProcess, memoryLimit,
        retries, fallback, stats, explain, noCache, similar, top,
        providerBatch, submitOnly, status, results, cancel, pollInterval,
        conformance, spec, systemPolicy, lines, file, label, approve, since, groupBy, listen,
        keyName, budgetUSD, rpm, tpm, models, period,
    ]
}

// MARK: Commands

extension Command {
    package static let all: [Command] = [
        Command(
            .descartes, summary: "One interface to every kind of LLM backend, loaded as plugins",
            about: "",
            notes: """
                Exit status: 0 ok, 64 usage, 65 bad request data, 69 provider unavailable,
                70 internal error, 75 rate limited or timed out, 77 authentication, 78 configuration.

                Plugins are searched in $DESCARTES_PLUGIN_PATH, ~/.local/share/descartes/plugins,
                <prefix>/lib/descartes/plugins (next to this executable), then the system directories;
                never the current directory; /etc/descartes/plugins.yaml can enable, disable and require
                them. See 'descartes plugins list --verbose'.

                Provider instances and middleware settings come from .descartes/providers.yaml (project),
                ~/.config/descartes/providers.yaml (user) and /etc/descartes/providers.yaml (system), the
                earlier overriding the later; keys also from the environment and .env. See 'descartes config show'.

                Benchmarks: descartes-bench, a separate executable built by 'make bench' (docs/benchmarks.md).
                """),
        Command(.plugins, summary: "List, inspect, verify, enable and disable plugins", about: ""),
        Command(
            .pluginsList, summary: "List installed plugins (reads manifests only; loads nothing)",
            about: """
                Lists every manifest found on the plugin search path with its name, version,
                mode, ABI, status and library, and its config keys (! required, * secret).
                Discovery reads YAML only: a broken library cannot crash this command.
                """),
        Command(
            .pluginsInfo, summary: "Show one plugin's manifest: models, prices, config keys",
            arguments: [Argument("NAME", .one, help: "The plugin (its provider id)")],
            about: """
                Shows a plugin's manifest: library, factory, capabilities, models with
                context sizes and prices, and config keys with type, default and env.
                """),
        Command(
            .pluginsVerify, summary: "Load, negotiate and create each plugin; or run one through the conformance suite",
            arguments: [Argument("NAME", .many, help: "The plugins to verify (default: every available one)")],
            about: """
                For each plugin (all available ones when no NAME is given): loads the
                library, negotiates the ABI, finds the factory and creates a backend from
                the defaults, the environment and --set values. Exits 1 if any fails.
                Each plugin is verified in a descartes-plugin-host helper process of its
                own, so one that crashes while loading is a failed row naming the signal
                and the others are still verified (--in-process: in this process).

                A plugin that loads but lacks a required config value (an API key) is
                reported as "ok, needs config" with what to set, and does not fail.

                With --conformance NAME it runs the plugin through the conformance suite
                instead (docs/conformance.md): ABI negotiation, config validation, complete,
                stream, exactly one terminal event, cancellation, deadlines, errors mapped,
                concurrent requests, shutdown with requests in flight, no secret leaked. It
                prints each check and exits 1 if any fails. It runs in a child process: a
                plugin that crashes is a failed row naming the signal and the check that was
                running, and the checks after it still run (--in-process: in this process).
                The plugin is exercised through the scenarios of its spec: --spec FILE, else
                the manifest's 'conformance:', else conformance/NAME.yaml beside the
                manifest, else <prefix>/share/descartes/conformance/NAME.yaml, else a
                built-in text check.
                """),
        Command(
            .pluginsEnable, summary: "Allow a plugin in the policy file (undo a disable)",
            arguments: [Argument("NAME", .one, help: "A provider id or a glob")],
            about: """
                Edits the plugin policy so NAME is allowed: removes it from the file's
                'disable' list and, when the file has an 'enable' list, adds it there.
                Without --system the user's file is edited
                ($XDG_CONFIG_HOME/descartes/plugins.yaml), which can only narrow the system
                policy: a plugin the system disables stays disabled.
                """),
        Command(
            .pluginsDisable, summary: "Forbid a plugin in the policy file",
            arguments: [Argument("NAME", .one, help: "A provider id or a glob")],
            about: """
                Edits the plugin policy so NAME is disabled: adds it to the file's 'disable'
                list and removes it from its 'enable' list. The plugin then shows as
                disabled in 'plugins list', with the file and line.
                """),
        Command(
            .complete, summary: "Run one completion (--stream to print text as it arrives)",
            arguments: [Argument("PROMPT", .words, help: "The user message (several words are joined with spaces)", stdin: true)],
            about: "Sends PROMPT (or stdin with '-') as one user message and prints the answer.",
            notes: """
                With --json the response names the provider that answered and lists the failed attempts.
                Tool calls the model makes are printed after the text as
                "tool call ID: NAME(ARGUMENTS)" (with --json, in "tool_calls").

                Every completion is recorded as a conversation (docs/conversations.md):
                -c continues the most recent one, --conversation ID another; the earlier
                messages are sent before PROMPT ('descartes conversations list').
                """),
        Command(
            .models, summary: "List the models a provider offers now",
            about: """
                Lists the models the provider offers now (asking the provider, e.g. GET /models),
                with context sizes and whether the manifest knows each.
                """),
        Command(
            .health, summary: "Check with a real call that providers can serve requests",
            about: """
                Checks with a real call (authenticated, for an API) that a provider can serve a
                request now, and says why not. Without -p, checks every available provider at
                once; providers missing a required key (an API key not in the environment) are
                reported as skipped. Exits non-zero when a checked provider is unhealthy.
                """),
        Command(
            .tokens, summary: "Count (or estimate) the input tokens of a text",
            arguments: [Argument("TEXT", .words, help: "The text, sent as one user message", stdin: true)],
            about: """
                Counts the input tokens of TEXT (or stdin with '-') sent as one user message:
                exactly when the provider can count (Anthropic's count_tokens), else an
                estimate of about four characters per token. The method is printed.
                """),
        Command(
            .embed, summary: "Embed texts: one vector per text, printed as JSON",
            arguments: [
                Argument("TEXT", .many, help: "The texts, one per argument ('-': one per line of stdin; with --similar, stdin when none)", stdin: true)
            ],
            about: """
                Embeds each TEXT (or each non-empty line of stdin with '-') with the provider's
                embedding model and prints one JSON document: {"provider", "model", "dimensions",
                "usage": {"input_tokens", ...}, "embeddings": [[number, ...], ...]}, one vector per
                text, in order. A provider that cannot embed (or a plugin built against ABI 1.0)
                fails with unsupported_feature. With providers.yaml's cache: (and its embeddings:
                not false), texts already embedded by that provider, model and dimensions are
                answered from the cache, and only the others are sent. With --similar QUERY, it
                embeds QUERY with the texts (TEXT arguments, else the lines of stdin) and prints
                them ranked by cosine similarity to it, one "SCORE<tab>TEXT" line each (--json:
                one document), most similar first.
                """),
        Command(
            .batch, summary: "Run one request per line of FILE (JSON lines), results in order",
            arguments: [Argument("FILE", .optional, help: "JSON lines, one Request each (not needed with --status, --results or --cancel)", stdin: true)],
            about: """
                Runs every request of FILE (or stdin with '-'): one JSON Request per line, as in
                docs/abi.md ({"messages": [...], "model"?, "max_tokens"?, ...}; a "custom_id" member is
                echoed back). Writes one JSON line per request, in input order:
                  {"index": 0, "line": 1, "response": {...}}      or
                  {"index": 1, "line": 2, "error": {"kind": ..., "message": ...}}
                A request that fails, or a line that is not a request, does not stop the others.
                Progress goes to stderr. Exit status 0 when every request succeeded, 1 when some
                failed, and the usual statuses when none could run.
                """),
        Command(.config, summary: "The configuration: what is set where, and what is wrong", about: ""),
        Command(
            .configShow, summary: "The merged providers.yaml, where each value came from, secrets masked",
            arguments: [Argument("NAME", .optional, help: "Only this provider instance (or plugin)")],
            about: """
                Prints the merged providers.yaml: the files read (project, user, system, or
                --config), each provider instance with its plugin and every config key it
                will get, with where the value came from (file:line:column and the
                reference it was expanded from, an environment variable, .env, a default),
                and the middleware and audit sections. Secrets print as [REDACTED].
                Credential helpers are not run.
                """),
        Command(
            .configCheck, summary: "Report every problem in the configuration files, each with file:line:column",
            about: """
                Reads every configuration file, expands every reference, checks every
                instance against its plugin's manifest and every section, and lists all
                problems found, each as file:line:column: message. Exits 78 if any.
                """),
        Command(
            .log, summary: "The last audit log entries and totals per provider",
            about: """
                Shows the last attempts recorded in the audit ledger (providers.yaml
                'audit:' section; SQLite) and totals: requests, attempts, errors,
                tokens (prompt-cache reads and writes apart), cost (unknown when no
                price is known), cache hits. Filter with -p, -m, --label, --since;
                group with --group-by, e.g. what agent X cost this week:
                descartes log --label agent=X --since 1w --group-by model
                """),
        Command(
            .serve, summary: "Serve every provider over the OpenAI and Anthropic HTTP APIs (a gateway)",
            about: """
                Serves every provider instance, plugin, fallback chain and route of the
                configuration as a model name over OpenAI's chat completions
                (POST /v1/chat/completions, GET /v1/models) and Anthropic's Messages
                (POST /v1/messages, POST /v1/messages/count_tokens), streams included, so
                the official SDKs and agent CLIs work unchanged. A client asks for a name
                ("echo", "resilient") or NAME/MODEL ("openai/gpt-4o-mini"). Settings and
                keys come from providers.yaml's server: section; without keys only a
                loopback address is served. One JSON access-log line per request goes to
                stderr. SIGINT or SIGTERM: stop accepting, let requests finish within
                server.shutdown_grace_secs (default 10), cancel the rest, exit 0. SIGHUP:
                read providers.yaml again (a bad file is reported and the running one kept).
                See docs/gateway.md.
                """),
        Command(.keys, summary: "Issue, list and revoke the gateway's keys (descartes serve)", about: ""),
        Command(
            .keysCreate, summary: "Issue a gateway key: printed once, only its hash is kept",
            about: """
                Issues a key for 'descartes serve' (dsk- and 256 random bits) and prints it once on
                stdout; only its SHA-256 is stored, in server.keys_database of providers.yaml
                (default $XDG_STATE_HOME/descartes/gateway-keys.sqlite3). A running gateway accepts
                it at once. Limits: --models (403 for others), --rpm and --tpm (429 with
                Retry-After), --budget-usd (refused once spent: the cost of each answered request
                is debited). --label values reach the audit ledger with every request.
                See docs/gateway.md.
                """),
        Command(
            .keysList, summary: "List the gateway's issued keys (never the keys themselves)",
            about: """
                Lists each issued key: name, models, limits, budget and spend in its period, created, revoked.
                With a shared: section, the keys issued on every host and their spend through every gateway
                (the shared store's); this host's keys only, with a warning, while it does not answer.
                """),
        Command(
            .keysRevoke, summary: "Revoke a gateway key: a running gateway refuses it from its next request",
            arguments: [Argument("NAME", .one, help: "The key's name")],
            about: "Revokes the key NAME (its record stays, marked revoked, for the spend history)."),
        Command(.sessions, summary: "Agent sessions started with complete --session: list and close them", about: ""),
        Command(
            .sessionsList, summary: "The stored agent sessions, most recently used first",
            about: """
                Lists the sessions 'descartes complete --session new' started and later turns
                continued: id, provider, turns, when last used, the first prompt. They are kept
                in $XDG_STATE_HOME/descartes/sessions (default ~/.local/state/descartes/sessions),
                one file each with the conversation, so a session outlives the process that
                started it. See docs/headless.md.
                """),
        Command(
            .sessionsClose, summary: "Forget stored agent sessions",
            arguments: [Argument("ID", .many, help: "The sessions to close")],
            about: """
                Removes each session's file: its id can no longer be continued with --session.
                Codex keeps its own copy of the thread in its CODEX_HOME.
                """),
        Command(
            .chat, summary: "Talk with a model in the terminal: a conversation, stored, resumable with -c",
            about: """
                Reads a prompt, streams the answer, and keeps the conversation: each turn sends
                the messages before it (for an agent with sessions, its session goes on instead).
                Every turn is stored as 'complete' stores it, so 'chat -c' or 'complete -c'
                continues it later. At the prompt:
                  !multi        type several lines, then !end on a line of its own
                  !system TEXT  set the system prompt for the turns that follow
                  !reset        start a new conversation
                  !exit         end (also Ctrl-D, or Ctrl-C at an empty prompt)
                Ctrl-C while an answer streams cancels that answer (the plugin stops its
                transfer; an agent's process is stopped) and returns to the prompt.
                With stdin not a terminal, each line is one turn (the commands work there too),
                for scripts.
                """),
        Command(.conversations, summary: "The conversations of complete and chat: list, show, export, delete", about: ""),
        Command(
            .conversationsList, summary: "Stored conversations, most recently used first",
            about: """
                Lists the conversations recorded by 'descartes complete' and 'descartes chat':
                id, provider, model, messages, when last used, title (the first prompt's first
                line). They are kept in $XDG_DATA_HOME/descartes/conversations.db (default
                ~/.local/share/descartes/conversations.db; SQLite). See docs/conversations.md.
                """),
        Command(
            .conversationsShow, summary: "Print one conversation's messages",
            arguments: [Argument("ID", .one, help: "The conversation ('descartes conversations list')")],
            about: "Prints the conversation's messages in order, each headed by its role (and for answers the model and tokens)."),
        Command(
            .conversationsExport, summary: "Export one conversation as JSON or Markdown",
            arguments: [Argument("ID", .one, help: "The conversation ('descartes conversations list')")],
            about: """
                Prints the conversation as one JSON document ({"id", "provider", "model", "title",
                "system", "agent_session", "created", "updated", "messages": [{"role", "content",
                "tool_calls"?, "tool_call_id"?, "usage"?, "provider"?, "model"?, "time"}]}), or with
                --format markdown as a Markdown document, one section per message.
                """),
        Command(
            .conversationsDelete, summary: "Delete stored conversations",
            arguments: [Argument("ID", .many, help: "The conversations to delete")],
            about: "Removes each conversation and its messages from the store."),
        Command(
            .bench, summary: "Time requests through a provider",
            about: """
                Runs N requests (-n) through the provider as a Swift caller does
                (ModelBackend.complete, or stream with --stream, joining the text deltas)
                and reports the cost: wall and CPU time, requests/s, per-request latency,
                peak RSS and the most threads the process had. `make bench` builds it and
                runs it against nginx beside a C client doing the same work; see
                docs/benchmarks.md. Not installed by `make install`.
                """),
    ]
}
