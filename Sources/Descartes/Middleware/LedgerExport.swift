import Glibc
import DescartesSupport

// The JSON-lines export read back as the ledger: one mechanism for the
// totals of both (issue 17).

extension AuditLedger {
    /// What loading a JSON-lines export found.
    public struct ExportLoad: Sendable, Equatable {
        /// Audit records read (one a request).
        public var records = 0
        /// Lines that are not audit records (a torn write, an edit by hand).
        public var unreadable = 0
        public init(records: Int = 0, unreadable: Int = 0) {
            self.records = records
            self.unreadable = unreadable
        }
    }

    /// Loads the JSON-lines export `jsonl` (one record a request, as
    /// `AuditLog` writes it) into this ledger as the rows the ledger itself
    /// records (each failed attempt, then the answer), so an export's
    /// totals, filters and grouping are the ledger's: unknown costs stay
    /// unknown, cache hits are counted apart and their tokens left out.
    /// `descartes log --file EXPORT` loads it into a temporary ledger.
    public func load(export jsonl: String) throws(AuditLedgerError) -> ExportLoad {
        var load = ExportLoad()
        var batch: [Row] = []
        var failed: String?
        func flush() {
            guard failed == nil, !batch.isEmpty else { return }
            do { try insert(batch) } catch { failed = error.message }
            batch.removeAll(keepingCapacity: true)
        }
        do {
            try Self.eachLine(of: jsonl) { line in
                guard failed == nil, !line.isEmpty else { return }
                guard let doc = try? JSONValue.parse(bytes: Array(line)),
                    let rows = Self.rows(exportRecord: doc, requestID: "export-\(load.records + load.unreadable + 1)")
                else {
                    load.unreadable += 1
                    return
                }
                load.records += 1
                batch += rows
                if batch.count >= 2000 { flush() }
            }
        } catch {
            throw AuditLedgerError(message: "\(error)")
        }
        flush()
        if let failed { throw AuditLedgerError(message: failed) }
        return load
    }

    /// Calls `body` with each line of `file` (without its newline).
    static func eachLine(of file: String, _ body: (ArraySlice<UInt8>) -> Void) throws(FileSystemError) {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw FileSystem.systemError(file) }
        defer { close(fd) }
        var pending: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileSystem.systemError(file)
            }
            if n == 0 { break }
            pending.append(contentsOf: buf[0..<n])
            var start = 0
            while let nl = pending[start...].firstIndex(of: 0x0A) {
                body(pending[start..<nl])
                start = nl + 1
            }
            pending.removeFirst(start)
        }
        body(pending[...])
    }

    /// The ledger's rows for one record of the JSON-lines export (nil: not
    /// an audit record): its failed attempts, then the answer or the error
    /// the request ended with, as `rows(operation:...)` makes them.
    package static func rows(exportRecord doc: JSONValue, requestID: String) -> [Row]? {
        guard let instance = doc["instance"]?.stringValue, let outcome = doc["outcome"]?.stringValue else { return nil }
        let at = doc["time"]?.stringValue.flatMap { Self.unixMS(rfc3339: $0) } ?? 0
        let operation = doc["operation"]?.stringValue ?? "complete"
        let answered = doc["provider"]?.stringValue ?? instance
        func via(_ provider: String) -> String? { provider == instance ? nil : instance }
        var labels: [String: String] = [:]
        for m in doc["labels"]?.objectValue ?? [:] { if let v = m.value.stringValue { labels[m.key] = v } }
        var gatewayKey = labels.removeValue(forKey: gatewayKeyLabel)
        if let k = doc["gateway_key"]?.stringValue { gatewayKey = k }
        var rows: [Row] = []
        var spent = 0
        for a in doc["attempts"]?.arrayValue ?? [] {
            let provider = a["provider"]?.stringValue ?? instance
            let ms = a["duration_ms"]?.intValue ?? 0
            spent += ms
            rows.append(
                Row(
                    unixMS: at, requestID: requestID, operation: operation, via: via(provider), provider: provider, outcome: "error",
                    errorKind: a["error_kind"]?.stringValue, status: a["status"]?.intValue, durationMS: ms, labels: labels,
                    gatewayKey: gatewayKey, final: false))
        }
        let tokens = doc["tokens"]
        let ok = outcome == "ok"
        rows.append(
            Row(
                unixMS: at, requestID: requestID, operation: operation, via: via(answered), provider: answered,
                plugin: doc["plugin"]?.stringValue, model: doc["model"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }, outcome: outcome,
                errorKind: doc["error_kind"]?.stringValue, status: doc["status"]?.intValue,
                inputTokens: ok ? tokens?["input"]?.intValue : nil, outputTokens: ok ? tokens?["output"]?.intValue : nil,
                cacheReadTokens: ok ? tokens?["cache_read"]?.intValue : nil, cacheWriteTokens: ok ? tokens?["cache_write"]?.intValue : nil,
                reasoningTokens: ok ? tokens?["reasoning"]?.intValue : nil, costUSD: doc["cost_usd"]?.doubleValue,
                cached: doc["cached"]?.boolValue ?? false, durationMS: max(0, (doc["duration_ms"]?.intValue ?? 0) - spent),
                labels: labels, gatewayKey: gatewayKey, final: true))
        return rows
    }

    /// Unix milliseconds of an RFC 3339 UTC time as the audit log writes it
    /// ("2026-12-07T02:34:00.123Z"; the fraction is optional).
    package static func unixMS(rfc3339 s: String) -> Int? {
        let u = Array(s.utf8)
        guard u.count >= 20 else { return nil }
        func number(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= u.count else { return nil }
            var v = 0
            for c in u[at..<(at + n)] {
                guard c >= 0x30 && c <= 0x39 else { return nil }
                v = v * 10 + Int(c - 0x30)
            }
            return v
        }
        guard let y = number(0, 4), let mo = number(5, 2), let d = number(8, 2), let h = number(11, 2), let mi = number(14, 2),
            let sec = number(17, 2), u[10] == UInt8(ascii: "T"), u.last == UInt8(ascii: "Z")
        else { return nil }
        var ms = 0
        if u[19] == UInt8(ascii: "."), let f = number(20, 3) { ms = f }
        var t = tm()
        t.tm_year = Int32(y - 1900)
        t.tm_mon = Int32(mo - 1)
        t.tm_mday = Int32(d)
        t.tm_hour = Int32(h)
        t.tm_min = Int32(mi)
        t.tm_sec = Int32(sec)
        return Int(timegm(&t)) * 1000 + ms
    }
}
