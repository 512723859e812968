import Descartes
import DescartesCommandLine
import DescartesSupport

/// `descartes log`: the last audit log entries and totals per provider.
enum LogCommand {
    static func run(_ args: Arguments, globals: Globals) -> ExitCode {
        let count: Int
        do throws(UsageError) {
            count = try args.int(.lines) ?? 20
            guard count >= 0 else { throw args.mistake("-n needs a number of entries (0 or more)") }
        } catch { usageFailure(error) }

        let file: String
        if let f = args.value(.file) {
            file = f.hasPrefix("/") ? f : FileSystem.join(FileSystem.currentDirectory(), f)
        } else {
            let config = Commands.configuration(globals)
            let settings: AuditSettings
            do { settings = try config.auditSettings() } catch {
                Out.err("Error: invalid 'audit' section:")
                for p in error.problems { Out.err("  \(p)") }
                return .config
            }
            if !settings.enabled && !FileSystem.exists(settings.file) {
                Out.err("descartes: the audit log is not enabled (set 'audit: {enabled: true}' in providers.yaml; see 'descartes config show')")
                return .config
            }
            file = settings.file
        }
        guard FileSystem.exists(file) else {
            if args.flag(.json) {
                Out.line(JSONValue.object(["file": .string(file), "entries": .array([]), "totals": .array([])]).prettyText())
            } else {
                Out.line("No audit entries yet (\(file) does not exist).")
            }
            return .ok
        }
        let summary: AuditSummary
        do { summary = try AuditSummary.read(file, last: count) } catch {
            failure(ProviderError(.config, "cannot read the audit log: \(error)"))
        }

        if args.flag(.json) {
            let totals: [JSONValue] = summary.totals.map { t in
                [
                    "instance": .string(t.instance), "requests": .integer(t.totals.requests), "errors": .integer(t.totals.errors),
                    "input_tokens": .integer(t.totals.inputTokens), "output_tokens": .integer(t.totals.outputTokens),
                    "cost_usd": .number(t.totals.costUSD),
                ]
            }
            let doc: JSONObject = [
                "file": .string(file), "entries": .array(summary.recent), "totals": .array(totals),
                "records": .integer(summary.records), "unreadable_lines": .integer(summary.unreadable),
            ]
            Out.line(JSONValue.object(doc).prettyText())
            return .ok
        }

        Out.line(Out.dim("\(file): \(summary.records) entr\(summary.records == 1 ? "y" : "ies")\(summary.unreadable > 0 ? ", \(summary.unreadable) unreadable line\(summary.unreadable == 1 ? "" : "s")" : "")"))
        if !summary.recent.isEmpty {
            let rows: [[String]] = summary.recent.map { e in
                let outcome = e["outcome"]?.stringValue == "ok"
                    ? (e["finish_reason"]?.stringValue ?? "ok") : "error: \(e["error_kind"]?.stringValue ?? "?")"
                let tokens = e["tokens"]?.objectValue.map { t in "\(t["input"]?.intValue ?? 0)/\(t["output"]?.intValue ?? 0)" } ?? "-"
                let chain = e["chain"]?.arrayValue?.compactMap(\.stringValue) ?? []
                return [
                    e["time"]?.stringValue ?? "?", e["instance"]?.stringValue ?? "?", e["model"]?.stringValue ?? "-", outcome, tokens,
                    cost(e["cost_usd"]?.doubleValue), "\(e["duration_ms"]?.intValue ?? 0) ms", chain.count > 1 ? chain.joined(separator: " > ") : "",
                ]
            }
            Out.line(Out.table(["TIME", "PROVIDER", "MODEL", "OUTCOME", "TOKENS IN/OUT", "COST", "DURATION", "CHAIN"], rows))
            Out.line("")
        }
        let rows: [[String]] = summary.totals.map { t in
            [t.instance, "\(t.totals.requests)", "\(t.totals.errors)", "\(t.totals.inputTokens)", "\(t.totals.outputTokens)", cost(t.totals.costUSD)]
        }
        Out.line(Out.table(["PROVIDER", "REQUESTS", "ERRORS", "INPUT TOKENS", "OUTPUT TOKENS", "COST (USD)"], rows))
        return .ok
    }

    /// Dollars with enough digits for fractions of a cent.
    static func cost(_ d: Double?) -> String {
        guard let d else { return "-" }
        if d == 0 { return "0" }
        let micro = Int((d * 1_000_000).rounded())
        let whole = micro / 1_000_000
        var frac = String(micro % 1_000_000)
        frac = String(repeating: "0", count: 6 - frac.count) + frac
        while frac.hasSuffix("0") { frac.removeLast() }
        return frac.isEmpty ? "\(whole)" : "\(whole).\(frac)"
    }
}
