import Descartes
import DescartesCommandLine
import DescartesSupport
import Glibc

/// `descartes keys create|list|revoke`: the gateway's issued keys
/// (docs/gateway.md), kept in server.keys_database (SQLite) as SHA-256
/// hashes, and with a `shared:` section in its Redis as well
/// (`SharedGatewayKeys`), where every host's gateway finds them. A running
/// `descartes serve` sees a change at its next request (another host's,
/// within `KeyRing.sharedLookupTTL`).
enum KeysCommand {
    /// The store providers.yaml names; only `server.keys_database` and
    /// `shared:` are read, so the configured keys' variables need not be set.
    static func store(_ globals: Globals) -> (SQLiteGatewayKeyStore, ProvidersConfig, SharedGatewayKeys?) {
        let config = Commands.configuration(globals)
        do {
            let shared = try config.sharedSettings().map { SharedGatewayKeys(store: SharedStore.shared($0, logSink: Out.logSink)) }
            return (SQLiteGatewayKeyStore(path: try config.gatewayKeysDatabase()), config, shared)
        } catch {
            Out.err("Error: invalid configuration (\(error.problems.count) problem\(error.problems.count == 1 ? "" : "s")):")
            for p in error.problems { Out.err("  \(p)") }
            exit(ExitCode.config.rawValue)
        }
    }

    static func create(_ args: Arguments, globals: Globals) -> ExitCode {
        var key = StoredGatewayKey(name: "", hash: "", createdUnixMS: AccessTime.nowMS())
        do throws(UsageError) {
            let name = args.value(.keyName) ?? ""
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "\"") }) else {
                throw args.mistake("--name needs a name of printable characters without spaces or quotes, got '\(name)'")
            }
            key.name = name
            if let b = try args.double(.budgetUSD) {
                guard b > 0 else { throw args.mistake("--budget-usd needs an amount above 0, got \(b)") }
                key.budgetUSD = b
            }
            if let r = try args.int(.rpm) {
                guard r > 0 else { throw args.mistake("--rpm needs a number of requests above 0, got \(r)") }
                key.requestsPerMinute = r
            }
            if let t = try args.int(.tpm) {
                guard t > 0 else { throw args.mistake("--tpm needs a number of tokens above 0, got \(t)") }
                key.tokensPerMinute = t
            }
            if let m = args.value(.models) {
                key.models = m.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
                guard !key.models.isEmpty else { throw args.mistake("--models needs comma-separated model globs ('openai/*,local-*'), got '\(m)'") }
            }
            if let p = args.value(.period) {
                guard let period = BudgetPeriod(rawValue: p) else { throw args.mistake("--period needs day, month or total, got '\(p)'") }
                guard key.budgetUSD != nil else { throw args.mistake("--period goes with --budget-usd (what the budget counts)") }
                key.period = period
            }
            for l in args.all(.label) {
                guard let eq = l.firstIndex(of: "="), eq != l.startIndex else { throw args.mistake("--label needs KEY=VALUE, got '\(l)'") }
                let k = String(l[..<eq])
                guard k != AuditLedger.gatewayKeyLabel else { throw args.mistake("--label \(k) is the gateway's own (the key's name)") }
                key.labels[k] = String(l[l.index(after: eq)...])
            }
        } catch { usageFailure(error) }
        let (store, config, shared) = store(globals)
        if config.configuredGatewayKeyNames.contains(key.name) {
            Out.err("Error: providers.yaml configures a gateway key named '\(key.name)' (server.keys); choose another name")
            return .config
        }
        let secret = StoredGatewayKey.newSecret()
        key.hash = StoredGatewayKey.hash(of: secret)
        do { try store.create(key) } catch {
            Out.err("Error: \(error.description)")
            return .config
        }
        var location = store.path
        if let shared {
            // The local row first (it refuses a name active here), then the
            // shared record (refused for a name active on any host): a
            // refusal there takes the local row back.
            func undo() { _ = try? store.revoke(name: key.name, nowUnixMS: AccessTime.nowMS()) }
            switch shared.create(key) {
            case .success(true): location += " and \(shared.store.settings.store)"
            case .success(false):
                undo()
                Out.err("Error: the shared store \(shared.store.settings.store) has an active gateway key named '\(key.name)' (issued on another host; revoke it first: descartes keys revoke \(key.name))")
                return .config
            case .failure(let f):
                if shared.store.settings.onFailure == .closed {
                    undo()
                    Out.err("Error: \(f.message); no key issued (shared.on_failure: closed)")
                    return .unavailable
                }
                Out.err("descartes keys: warning: \(f.message); the key is kept in \(store.path) only, so only this host's gateway accepts it")
            }
        }
        Out.issuedSecret(secret)
        Out.err("descartes keys: issued '\(key.name)' (\(describe(key))) in \(location); the key is printed above, once: only its hash is kept")
        return .ok
    }

    static func describe(_ k: StoredGatewayKey) -> String {
        var parts = ["models: " + (k.models.isEmpty ? "all" : k.models.joined(separator: ","))]
        if let r = k.requestsPerMinute { parts.append("\(r) requests/min") }
        if let t = k.tokensPerMinute { parts.append("\(t) tokens/min") }
        if let b = k.budgetUSD { parts.append("budget $\(b)" + (k.period == .total ? "" : " per \(k.period.rawValue)")) }
        if !k.labels.isEmpty { parts.append("labels: " + k.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")) }
        return parts.joined(separator: "; ")
    }

    /// The keys of this host's database and, with `shared:`, of the shared
    /// store (issued on any host), by hash: a key in both shows the store's
    /// spend (every gateway's) or this host's when larger (a debit not sent
    /// yet), and is revoked when either says so. When the store does not
    /// answer, this host's keys, with a warning.
    static func list(_ args: Arguments, globals: Globals) -> ExitCode {
        let (store, _, shared) = store(globals)
        let now = AccessTime.nowMS()
        var keys: [StoredGatewayKey]
        do { keys = try store.keys(nowUnixMS: now, revoked: true) } catch {
            Out.err("Error: \(error.description)")
            return .config
        }
        var sharedRead = false
        if let shared {
            switch shared.list(nowUnixMS: now) {
            case .success(let all):
                sharedRead = true
                for k in all {
                    guard let i = keys.firstIndex(where: { $0.hash == k.hash }) else {
                        keys.append(k)
                        continue
                    }
                    if keys[i].spentPeriod == k.spentPeriod { keys[i].spentUSD = max(keys[i].spentUSD, k.spentUSD) }
                    if keys[i].revokedUnixMS == nil { keys[i].revokedUnixMS = k.revokedUnixMS }
                }
                keys.sort { ($0.createdUnixMS, $0.name) < ($1.createdUnixMS, $1.name) }
            case .failure(let f):
                Out.err("descartes keys: warning: \(f.message); listing this host's keys only (\(store.path))")
            }
        }
        if args.flag(.json) {
            let docs: [JSONValue] = keys.map { k in
                var o: JSONObject = [
                    "name": .string(k.name), "models": .array(k.models.map { .string($0) }), "period": .string(k.period.rawValue),
                    "spent_usd": .number(k.spentUSD), "labels": .object(JSONObject(k.labels.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.string($0.value)) })),
                    "created": .string(AuditLog.timestamp(unixMS: k.createdUnixMS)),
                    "rpm": k.requestsPerMinute.map { .integer($0) } ?? .null, "tpm": k.tokensPerMinute.map { .integer($0) } ?? .null,
                    "budget_usd": k.budgetUSD.map { .number($0) } ?? .null,
                    "revoked": k.revokedUnixMS.map { .string(AuditLog.timestamp(unixMS: $0)) } ?? .null,
                ]
                o["spent_period"] = .string(k.spentPeriod)
                return .object(o)
            }
            var top: JSONObject = ["database": .string(store.path), "keys": .array(docs)]
            if sharedRead, let shared { top["shared_store"] = .string(shared.store.settings.store) }
            Out.line(JSONValue.object(top).prettyText())
            return .ok
        }
        if keys.isEmpty {
            Out.line(
                "no gateway keys issued (\(store.path)\(sharedRead ? " and \(shared?.store.settings.store ?? "")" : "")); issue one with: descartes keys create --name NAME")
            return .ok
        }
        var rows: [[String]] = []
        for k in keys {
            let models = k.models.isEmpty ? "all" : k.models.joined(separator: ",")
            let rpm = k.requestsPerMinute.map(String.init) ?? "-"
            let tpm = k.tokensPerMinute.map(String.init) ?? "-"
            var budget = "-"
            if let b = k.budgetUSD { budget = "$\(b)" + (k.period == .total ? "" : "/\(k.period.rawValue)") }
            let created = String(AuditLog.timestamp(unixMS: k.createdUnixMS).prefix(19))
            var status = "active"
            if let r = k.revokedUnixMS { status = "revoked " + String(AuditLog.timestamp(unixMS: r).prefix(19)) }
            rows.append([k.name, models, rpm, tpm, budget, "$" + money(k.spentUSD), created, status])
        }
        Out.line(Out.table(["NAME", "MODELS", "RPM", "TPM", "BUDGET", "SPENT", "CREATED", "STATUS"], rows))
        return .ok
    }

    static func money(_ d: Double) -> String { String((d * 10000).rounded() / 10000) }

    static func revoke(_ args: Arguments, globals: Globals) -> ExitCode {
        let name = args.positional.first ?? ""
        let (store, _, shared) = store(globals)
        let now = AccessTime.nowMS()
        let local: Bool
        do { local = try store.revoke(name: name, nowUnixMS: now) } catch {
            Out.err("Error: \(error.description)")
            return .config
        }
        var inShared = false
        if let shared {
            switch shared.revoke(name: name, nowUnixMS: now) {
            case .success(let hash): inShared = hash != nil
            case .failure(let f):
                // The other hosts' gateways go on accepting it: an error,
                // even though the local row is revoked.
                Out.err("Error: \(f.message); '\(name)' is \(local ? "revoked in \(store.path) only" : "not revoked"): run this again when the store answers")
                return .unavailable
            }
        }
        guard local || inShared else {
            Out.err("Error: no active gateway key named '\(name)' in \(store.path)\(shared.map { " or \($0.store.settings.store)" } ?? "") (descartes keys list)")
            return .config
        }
        if shared != nil {
            Out.err("descartes keys: revoked '\(name)'; every gateway sharing the store refuses it within \(SharedGatewayKeys.lookupTTL.shortText) (this host's from its next request)")
        } else {
            Out.err("descartes keys: revoked '\(name)'; a running gateway refuses it from its next request")
        }
        return .ok
    }
}

enum AccessTime {
    static func nowMS() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec / 1_000_000)
    }
}
