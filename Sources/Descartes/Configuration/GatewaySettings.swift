import DescartesSupport
import Glibc

/// The `server:` section of providers.yaml: what `descartes serve` listens
/// on and who may call it.
///
/// ```yaml
/// server:
///   listen: 127.0.0.1:4000        # HOST:PORT (default 127.0.0.1:4000; --listen overrides)
///   threads: 2                    # libmicrohttpd's polling threads
///   max_body_mb: 32               # larger request bodies are refused with 413
///   idle_timeout_secs: 120        # idle keep-alive connections are closed
///   shutdown_grace_secs: 10       # on SIGINT/SIGTERM, requests in flight get this long
///   keys_database: PATH           # keys issued by `descartes keys` (default: the state directory)
///   responses_database: PATH      # stored Responses API responses (default: the state directory)
///   responses_retention_days: 30  # stored responses older than this are removed
///   tls: {cert: FILE, key: FILE}  # HTTPS with these PEM files (default: plain HTTP)
///   cors_origins: ["https://app.example.com"]   # browsers of these origins may call it (default: none)
///   keys:                         # without keys, only a loopback address is served
///     team-a: ${TEAM_A_KEY}       # NAME: secret, from the environment or a file only
///     team-b:
///       secret: ${file:/run/secrets/team-b}
///       models: ["openai/*", "local-*"]   # model names it may use (globs; default all)
///       rpm: 600                  # requests and tokens per minute (429 past them)
///       tpm: 200000
///       labels: {team: b}         # carried to the audit ledger
/// ```
///
/// Read by `descartes serve` (Sources/DescartesGateway); here so that
/// `descartes config check` reports its problems with the others'. Other
/// commands do not read it: an unset key variable stops only `serve`.
package struct GatewaySettings: Sendable {
    package struct Key: Sendable {
        package var name: String
        package var secret: [UInt8]
        /// Globs over model names; empty: every model.
        package var models: [String]
        /// Requests and tokens per minute (none: unlimited).
        package var limits = RateLimits()
        /// Labels every request made with the key carries to the audit ledger.
        package var labels: [String: String] = [:]
        package var budgetUSD: Double?
        package var period: BudgetPeriod = .total
        /// The key store's id of an issued key (nil: a key of providers.yaml,
        /// or one issued on another host, known from the shared store only).
        package var storeID: String?
        /// The hex SHA-256 of an issued key's secret (nil: a key of providers.yaml).
        package var hash: String?

        package init(name: String, secret: String, models: [String] = []) {
            self.name = name
            self.secret = Array(secret.utf8)
            self.models = models
        }

        /// An issued key as the gateway uses it (no secret: it is known by its hash).
        package init(_ stored: StoredGatewayKey) {
            name = stored.name
            secret = []
            models = stored.models
            limits = RateLimits(requestsPerMinute: stored.requestsPerMinute, tokensPerMinute: stored.tokensPerMinute)
            labels = stored.labels
            budgetUSD = stored.budgetUSD
            period = stored.period
            storeID = stored.id.isEmpty ? nil : stored.id
            hash = stored.hash
        }

        /// Marks a request's metadata as made with this key: its labels
        /// (over the client's own of the same name) and its name as
        /// `gateway_key`, which the audit ledger keeps.
        package func label(_ metadata: inout [String: String]) {
            for (k, v) in labels { metadata[k] = v }
            metadata[AuditLedger.gatewayKeyLabel] = name
        }

        /// Whether this key may use `model`.
        package func allows(_ model: String) -> Bool {
            models.isEmpty || models.contains { fnmatch($0, model, 0) == 0 }
        }
    }

    package var host = "127.0.0.1"
    package var port = 4000
    package var threads = 2
    package var maxBodyBytes = 32 << 20
    package var idleTimeoutSeconds = 120
    package var shutdownGrace: Duration = .seconds(10)
    package var keys: [Key] = []
    /// PEM certificate (chain) and private key files: HTTPS.
    package var tls: (cert: String, key: String)?
    /// Origins whose browser pages may call the gateway (CORS); `*` any. Empty: no CORS headers.
    package var corsOrigins: [String] = []
    /// The SQLite file of the keys `descartes keys create` issues.
    package var keysDatabase = GatewaySettings.defaultKeysDatabase()
    /// The SQLite file of the Responses API's stored responses (`store`, `previous_response_id`).
    package var responsesDatabase = GatewaySettings.defaultResponsesDatabase()
    /// How long a stored response is kept (purged when a later one is stored).
    package var responsesRetentionDays = 30

    /// `approvals`: the tool approval policy of each provider (instance,
    /// plugin, chain or route name) the gateway serves; clients cannot
    /// change it. A name without one asks nobody.
    package var approvals: [String: ApprovalPolicy] = [:]

    package init() {}

    static let knownKeys = [
        "listen", "threads", "max_body_mb", "idle_timeout_secs", "shutdown_grace_secs", "keys", "keys_database", "approvals", "tls", "cors_origins",
        "responses_database", "responses_retention_days",
    ]

    /// `gateway-keys.sqlite3` in the state directory the audit ledger uses
    /// (`$XDG_STATE_HOME/descartes`, by default `~/.local/state/descartes`).
    package static func defaultKeysDatabase(environment: [String: String] = Environment.current()) -> String {
        FileSystem.join(FileSystem.directory(of: AuditSettings.defaultFile(environment: environment)), "gateway-keys.sqlite3")
    }

    /// `gateway-responses.sqlite3` in the same state directory.
    package static func defaultResponsesDatabase(environment: [String: String] = Environment.current()) -> String {
        FileSystem.join(FileSystem.directory(of: AuditSettings.defaultFile(environment: environment)), "gateway-responses.sqlite3")
    }

    /// `server.keys_database` of a (raw or expanded) `server:` section: a
    /// path (`~/` is the home directory; a relative one is relative to the
    /// file), else the default. Read apart from the rest so that
    /// `descartes keys` needs none of the configured keys' variables.
    package static func keysDatabase(_ node: YAMLNode?, environment: [String: String] = Environment.current()) -> Result<String, SourceError> {
        databasePath(node, "keys_database", default: defaultKeysDatabase(environment: environment))
    }

    /// The database file `key` of a `server:` section names (see
    /// `keysDatabase`), else `defaultPath`.
    static func databasePath(_ node: YAMLNode?, _ key: String, default defaultPath: String) -> Result<String, SourceError> {
        guard let n = node?[key] else { return .success(defaultPath) }
        guard var path = n.scalar, !path.isEmpty, !path.contains("${") else {
            return .failure(
                SourceError([
                    SourceProblem(
                        n.location, "server.\(key) is a file path (no ${...} references), e.g. ~/.local/state/descartes/\(FileSystem.basename(defaultPath))")
                ]))
        }
        if path.hasPrefix("~/") { path = FileSystem.join(Environment.homeDirectory, String(path.dropFirst(2))) }
        if !path.hasPrefix("/") { path = FileSystem.join(FileSystem.directory(of: n.location.file), path) }
        return .success(path)
    }

    /// Splits `HOST:PORT` (`[::1]:4000` for IPv6; a bare port means
    /// 127.0.0.1). Nil when it is not one.
    package static func listenAddress(_ s: String) -> (host: String, port: Int)? {
        if let p = Int(s), (0...65535).contains(p) { return ("127.0.0.1", p) }
        var host: Substring
        var portText: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else { return nil }
            host = s[s.index(after: s.startIndex)..<close]
            portText = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost).
    package static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Reads the (expanded) section; `raw` is the same section before
    /// references were expanded, to check that secrets come from the
    /// environment or a file. Nil: the defaults.
    package static func read(_ node: YAMLNode?, raw: YAMLNode?) -> Result<GatewaySettings, SourceError> {
        var s = GatewaySettings()
        guard let node else { return .success(s) }
        var v = NodeValidator(file: node.location.file)
        guard case .mapping = node.value else {
            v.problem(node, "'server' is a mapping: {listen: 127.0.0.1:4000, keys: {NAME: ${VAR}}, max_body_mb: 32}")
            return .failure(SourceError(v.problems))
        }
        v.unknownKeys(node, allowed: knownKeys, what: "key of 'server'")
        switch keysDatabase(raw ?? node) {
        case .success(let p): s.keysDatabase = p
        case .failure(let e): for p in e.problems { v.problems.append(p) }
        }
        switch databasePath(raw ?? node, "responses_database", default: defaultResponsesDatabase()) {
        case .success(let p): s.responsesDatabase = p
        case .failure(let e): for p in e.problems { v.problems.append(p) }
        }
        if let d = v.int(node, "responses_retention_days") {
            if (1...3650).contains(d) { s.responsesRetentionDays = d } else {
                v.problem(node["responses_retention_days"]!, "server.responses_retention_days is 1 to 3650, got \(d)")
            }
        }
        if let l = v.string(node, "listen") {
            if let (h, p) = listenAddress(l) { (s.host, s.port) = (h, p) } else {
                v.problem(node["listen"]!, "server.listen is HOST:PORT (127.0.0.1:4000, [::1]:4000), got '\(l)'")
            }
        }
        if let t = v.int(node, "threads") {
            if (1...64).contains(t) { s.threads = t } else { v.problem(node["threads"]!, "server.threads is 1 to 64, got \(t)") }
        }
        if let mb = v.int(node, "max_body_mb") {
            if (1...1024).contains(mb) { s.maxBodyBytes = mb << 20 } else { v.problem(node["max_body_mb"]!, "server.max_body_mb is 1 to 1024, got \(mb)") }
        }
        if let t = v.int(node, "idle_timeout_secs") {
            if (1...3600).contains(t) { s.idleTimeoutSeconds = t } else { v.problem(node["idle_timeout_secs"]!, "server.idle_timeout_secs is 1 to 3600, got \(t)") }
        }
        if let t = v.int(node, "shutdown_grace_secs") {
            if (0...3600).contains(t) { s.shutdownGrace = .seconds(t) } else { v.problem(node["shutdown_grace_secs"]!, "server.shutdown_grace_secs is 0 to 3600, got \(t)") }
        }
        if let a = node["approvals"] {
            if case .mapping(let pairs) = a.value {
                for (k, value) in pairs {
                    guard let name = k.scalar, !name.isEmpty else {
                        v.problem(k, "a provider name under server.approvals is a string")
                        continue
                    }
                    let given: [String]
                    if let one = value.scalar { given = [one] } else if let list = v.stringList(a, name) { given = list } else {
                        v.problem(value, "server.approvals.\(name) is allow, deny, or a list of rules such as [Read, 'Bash(git *)']")
                        continue
                    }
                    switch given {
                    case ["allow"]: s.approvals[name] = .allowAll
                    case ["deny"]: s.approvals[name] = .denyAll
                    default:
                        do throws(ProviderError) { s.approvals[name] = try .rules(given) } catch {
                            v.problem(value, "server.approvals.\(name): \(error.message) (ask needs a terminal: the gateway takes allow, deny or rules)")
                        }
                    }
                }
            } else {
                v.problem(a, "server.approvals maps provider names to a policy: {vibe: deny, claude: [Read, 'Bash(git *)']}")
            }
        }
        if let t = node["tls"] {
            if case .mapping = t.value {
                v.unknownKeys(t, allowed: ["cert", "key"], what: "key of server.tls")
                let dir = FileSystem.directory(of: t.location.file)
                func path(_ k: String) -> String? {
                    guard t[k] != nil else {
                        v.problem(t, "server.tls needs '\(k)': the PEM \(k == "cert" ? "certificate (chain)" : "private key") file")
                        return nil
                    }
                    guard var p = v.string(t, k, required: true) else { return nil }
                    if p.hasPrefix("~/") { p = FileSystem.join(Environment.homeDirectory, String(p.dropFirst(2))) }
                    return p.hasPrefix("/") ? p : FileSystem.join(dir, p)
                }
                let (c, k) = (path("cert"), path("key"))  // both, so both are reported when missing
                if let c, let k { s.tls = (c, k) }
            } else {
                v.problem(t, "server.tls is a mapping of PEM files: {cert: /etc/descartes/gateway.crt, key: /etc/descartes/gateway.key}")
            }
        }
        if let origins = v.stringList(node, "cors_origins") {
            for o in origins where o != "*" && !(o.hasPrefix("http://") || o.hasPrefix("https://")) || o.hasSuffix("/") {
                v.problem(node["cors_origins"]!, "server.cors_origins: '\(o)' is not an origin (scheme://host[:port], no path), or '*'")
            }
            s.corsOrigins = origins
        }
        if let keys = node["keys"] {
            guard case .mapping(let pairs) = keys.value else {
                v.problem(keys, "server.keys is a mapping of key names to secrets: {team-a: ${TEAM_A_KEY}}")
                return .failure(SourceError(v.problems))
            }
            for (k, value) in pairs {
                guard let name = k.scalar, !name.isEmpty else {
                    v.problem(k, "a key name under server.keys is a string")
                    continue
                }
                var secret: String?
                var models: [String] = []
                var limits = RateLimits()
                var labels: [String: String] = [:]
                var secretNode = value
                if case .mapping = value.value {
                    v.unknownKeys(value, allowed: ["secret", "models", "rpm", "tpm", "labels"], what: "key of server.keys.\(name)")
                    secret = v.string(value, "secret", required: true)
                    models = v.stringList(value, "models") ?? []
                    for (k, set) in [("rpm", \RateLimits.requestsPerMinute), ("tpm", \RateLimits.tokensPerMinute)] {
                        guard let n = v.int(value, k) else { continue }
                        if n > 0 { limits[keyPath: set] = n } else { v.problem(value[k]!, "server.keys.\(name).\(k) is a number above 0, got \(n)") }
                    }
                    if let l = value["labels"] {
                        if case .mapping(let pairs) = l.value, pairs.allSatisfy({ $0.key.scalar != nil && $0.value.scalar != nil }) {
                            for p in pairs where p.key.scalar! != AuditLedger.gatewayKeyLabel { labels[p.key.scalar!] = p.value.scalar! }
                        } else {
                            v.problem(l, "server.keys.\(name).labels is a mapping of strings: {team: a}")
                        }
                    }
                    secretNode = value["secret"] ?? value
                } else {
                    secret = value.scalar
                }
                let rawSecret = raw?["keys"]?[name].flatMap { $0["secret"] ?? $0 }
                if let rs = rawSecret?.scalar, !rs.contains("${") {
                    v.problem(
                        rawSecret!,
                        "server.keys.\(name): the secret is written in the file; give it from the environment or a file (${VAR}, ${file:/path})")
                    continue
                }
                guard let secret, !secret.isEmpty else {
                    v.problem(secretNode, "server.keys.\(name): the secret is empty (is its variable set?)")
                    continue
                }
                guard secret.utf8.count >= 16 else {
                    v.problem(secretNode, "server.keys.\(name): the secret is shorter than 16 characters")
                    continue
                }
                if s.keys.contains(where: { $0.secret == Array(secret.utf8) }) {
                    v.problem(secretNode, "server.keys.\(name): the same secret as another key")
                    continue
                }
                var key = Key(name: name, secret: secret, models: models)
                key.limits = limits
                key.labels = labels
                s.keys.append(key)
            }
        }
        if !v.problems.isEmpty { return .failure(SourceError(v.problems)) }
        return .success(s)
    }

    /// The key of `keys` that `secret` belongs to, compared in constant time.
    package static func key(for secret: String, in keys: [Key]) -> Key? {
        let given = Array(secret.utf8)
        var found: Key?
        for k in keys {
            var diff = UInt8(given.count == k.secret.count ? 0 : 1)
            for i in 0..<k.secret.count { diff |= k.secret[i] ^ (i < given.count ? given[i] : 0) }
            if diff == 0 { found = k }
        }
        return found
    }
}

extension ProvidersConfig {
    /// The `server:` section (defaults when no file has one).
    package func gatewaySettings() throws(SourceError) -> GatewaySettings {
        var s = try GatewaySettings.read(try section("server"), raw: sections["server"]).get()
        s.keysDatabase = try gatewayKeysDatabase()
        s.responsesDatabase = try GatewaySettings.databasePath(
            sections["server"], "responses_database", default: GatewaySettings.defaultResponsesDatabase(environment: environment)
        ).get()
        return s
    }

    /// The issued keys' database (server.keys_database, else the default),
    /// without expanding the rest of the section.
    package func gatewayKeysDatabase() throws(SourceError) -> String {
        try GatewaySettings.keysDatabase(sections["server"], environment: environment).get()
    }

    /// The `shared:` section alone (nil without one): where `descartes keys`
    /// writes issued keys besides the local database.
    package func sharedSettings() throws(SourceError) -> SharedSettings? {
        guard let node = try section("shared") else { return nil }
        let (settings, problems) = ReliabilitySettings.parse(["shared": node])
        if !problems.isEmpty { throw SourceError(problems) }
        return settings.shared
    }

    /// The names of the keys providers.yaml configures (server.keys), read
    /// without their secrets.
    package var configuredGatewayKeyNames: [String] {
        guard case .mapping(let pairs)? = sections["server"]?["keys"]?.value else { return [] }
        return pairs.compactMap { $0.key.scalar }
    }
}
