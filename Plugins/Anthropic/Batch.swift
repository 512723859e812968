// The Message Batches API behind the "descartes.batch/1" extension
// (plugin.h, descartes_batch_extension_t; docs/abi.md):
//
//   submit   POST {endpoint}/messages/batches {"requests": [{"custom_id", "params"}]}
//   status   GET  {endpoint}/messages/batches/{id}
//   results  GET  the batch's results_url (only on the endpoint's own host:
//            the API key is sent along), else {endpoint}/messages/batches/{id}/results;
//            JSON lines {"custom_id", "result": {"type": "succeeded", "message"}
//            | {"type": "errored", "error"} | {"type": "canceled"} | {"type": "expired"}}
//   cancel   POST {endpoint}/messages/batches/{id}/cancel
//
// Each request's params are exactly what `complete` sends to /messages;
// usage and stop reasons are read as for a whole message. Batches cost half
// the list prices (price_factor 0.5).
import DescartesPluginKit
import Glibc

extension AnthropicBackend: DescartesBatchBackend {
    func submitBatch(_ requests: [BatchRequest], _ call: PluginCall) {
        run(call) { [self] in
            var w = JSONWriter(capacity: 1024 * max(1, requests.count))
            w.beginObject()
            w.beginArray(key: "requests")
            for r in requests {
                w.beginObject()
                w.field("custom_id", r.customID)
                w.key("params")
                w.raw(AnthropicRequest.encode(r.request, purpose: .complete, defaultModel: defaultModel, defaultMaxTokens: maxTokens))
                w.endObject()
            }
            w.endArray()
            w.endObject()
            return try Self.batchStatus(try await json("POST", "messages/batches", body: w.bytes))
        }
    }

    func batchStatus(id: String, _ call: PluginCall) {
        run(call) { [self] in try Self.batchStatus(try await json("GET", "messages/batches/\(Self.escaped(id))")) }
    }

    func cancelBatch(id: String, _ call: PluginCall) {
        run(call) { [self] in try Self.batchStatus(try await json("POST", "messages/batches/\(Self.escaped(id))/cancel")) }
    }

    func batchResults(id: String, _ call: PluginCall) {
        runRaw(call) { [self] in
            let batch = try await json("GET", "messages/batches/\(Self.escaped(id))")
            guard batch["processing_status"]?.stringValue == "ended" else {
                throw ProviderError(.api, "batch \(id) is \(batch["processing_status"]?.stringValue ?? "in an unknown state"), not ended: no results yet")
            }
            let path = "messages/batches/\(Self.escaped(id))/results"
            var url = ProviderHTTP.join(settings.endpoint, path)
            if let given = batch["results_url"]?.stringValue, Self.origin(given) == Self.origin(settings.endpoint) { url = given }
            let body = try await send("GET", url: url, path: path, accept: "application/x-jsonl")
            var items: [JSONValue] = []
            for line in body.split(separator: UInt8(ascii: "\n")) where !line.allSatisfy({ $0 == 13 || $0 == 32 }) {
                items.append(try Self.result(Array(line)))
            }
            return BatchWire.results(items, priceFactor: 0.5)
        }
    }

    // MARK: Wire

    /// A message batch object as a BatchStatus document.
    static func batchStatus(_ b: JSONValue) throws(ProviderError) -> JSONValue {
        guard let id = b["id"]?.stringValue, let status = b["processing_status"]?.stringValue else {
            throw ProviderError(.invalidResponse, "not a message batch: \(Wire.excerpt(b.jsonText))")
        }
        let cancelled = !(b["cancel_initiated_at"]?.isNull ?? true)
        let state: String
        switch status {
        case "in_progress": state = "in_progress"
        case "canceling": state = "cancelling"
        case "ended": state = cancelled ? "cancelled" : "ended"
        default: state = status
        }
        let c = b["request_counts"]
        func n(_ k: String) -> Int { c?[k]?.intValue ?? 0 }
        let total = c == nil ? nil : n("processing") + n("succeeded") + n("errored") + n("canceled") + n("expired")
        return BatchWire.status(
            id: id, state: state, providerStatus: status, total: total, succeeded: n("succeeded"),
            failed: n("errored") + n("canceled") + n("expired"), createdAt: b["created_at"]?.stringValue.flatMap(rfc3339),
            expiresAt: b["expires_at"]?.stringValue.flatMap(rfc3339))
    }

    /// One line of a results file as a BatchResult document.
    static func result(_ line: [UInt8]) throws(ProviderError) -> JSONValue {
        guard let doc = try? JSONValue.parse(bytes: line), let cid = doc["custom_id"]?.stringValue, let result = doc["result"] else {
            throw ProviderError(.invalidResponse, "a batch result line is not {\"custom_id\", \"result\"}: \(ProviderHTTP.excerpt(line))")
        }
        switch result["type"]?.stringValue {
        case "succeeded":
            guard case .object(let m)? = result["message"], let content = m["content"]?.arrayValue else {
                return BatchWire.result(customID: cid, error: ProviderError(.invalidResponse, "a succeeded result without a message"))
            }
            // The message read as `complete` reads one: text, thinking,
            // tool_use blocks; usage and stop reason as AnthropicStream maps them.
            var s = AnthropicStream()
            s.stopReason = m["stop_reason"]?.stringValue
            if let u = m["usage"]?.objectValue {
                s.input = u["input_tokens"]?.intValue ?? 0
                s.output = u["output_tokens"]?.intValue ?? 0
                s.cacheRead = u["cache_read_input_tokens"]?.intValue ?? 0
                s.cacheWrite = u["cache_creation_input_tokens"]?.intValue ?? 0
                s.thinking = u["output_tokens_details"]?["thinking_tokens"]?.intValue ?? 0
            }
            var text = ""
            var reasoning = ""
            var calls: [ToolCall] = []
            for block in content {
                switch block["type"]?.stringValue {
                case "text": text += block["text"]?.stringValue ?? ""
                case "thinking": reasoning += block["thinking"]?.stringValue ?? ""
                case "tool_use":
                    calls.append(ToolCall(id: block["id"]?.stringValue ?? "", name: block["name"]?.stringValue ?? "", arguments: (block["input"] ?? [:]).jsonText))
                default: break
                }
            }
            var finish = Wire.Finish(
                finishReason: AnthropicStream.finishReason(s.stopReason), usage: m["usage"] == nil ? nil : s.normalizedUsage,
                model: m["model"]?.stringValue, id: m["id"]?.stringValue)
            if finish.finishReason == .stop && !calls.isEmpty { finish.finishReason = .toolUse }
            return BatchWire.result(customID: cid, content: text, reasoning: reasoning.isEmpty ? nil : reasoning, toolCalls: calls, finish: finish)
        case "errored":
            return BatchWire.result(customID: cid, error: AnthropicStream.streamError(result["error"] ?? .null))
        case "canceled":
            return BatchWire.result(customID: cid, error: ProviderError(.cancelled, "the request was canceled with its batch before it ran"))
        case "expired":
            return BatchWire.result(customID: cid, error: ProviderError(.timeout, "the batch expired before the request ran"))
        case let t:
            return BatchWire.result(customID: cid, error: ProviderError(.invalidResponse, "unknown result type \(t.map { "'\($0)'" } ?? "(none)")"))
        }
    }

    /// Unix seconds of an RFC 3339 time ("2024-08-20T18:37:24.100435Z").
    static func rfc3339(_ s: String) -> Int? {
        let b = Array(s.utf8)
        func num(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= b.count else { return nil }
            var v = 0
            for c in b[from..<(from + count)] {
                guard c >= 0x30 && c <= 0x39 else { return nil }
                v = v * 10 + Int(c - 0x30)
            }
            return v
        }
        guard let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2), let h = num(11, 2), let mi = num(14, 2), let se = num(17, 2) else { return nil }
        var t = tm()
        t.tm_year = Int32(y - 1900)
        t.tm_mon = Int32(mo - 1)
        t.tm_mday = Int32(d)
        t.tm_hour = Int32(h)
        t.tm_min = Int32(mi)
        t.tm_sec = Int32(se)
        var seconds = Int(timegm(&t))
        // A numeric offset after the (optional) fraction: local = UTC + offset.
        var i = 19
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-"), let oh = num(i + 1, 2), let om = num(i + 4, 2) {
            let offset = (oh * 60 + om) * 60
            seconds += b[i] == UInt8(ascii: "+") ? -offset : offset
        }
        return seconds
    }

    /// scheme://host[:port] of a URL, lowercased.
    static func origin(_ url: String) -> String? {
        guard let host = ProviderHTTP.host(of: url), let schemeEnd = url.firstIndex(of: ":") else { return nil }
        let scheme = url[..<schemeEnd].lowercased()
        var rest = Substring(url[schemeEnd...].dropFirst(3))
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        let port = rest.lastIndex(of: ":").map { String(rest[rest.index(after: $0)...]) } ?? (scheme == "https" ? "443" : "80")
        return "\(scheme)://\(host):\(port)"
    }

    static func escaped(_ s: String) -> String {
        String(decoding: s.utf8.flatMap { c -> [UInt8] in
            let ok = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F || c == 0x2E
            if ok { return [c] }
            let hex = Array("0123456789ABCDEF".utf8)
            return [UInt8(ascii: "%"), hex[Int(c >> 4)], hex[Int(c & 15)]]
        }, as: UTF8.self)
    }

    // MARK: HTTP

    /// Batch bodies and results can be large: a wider size limit and no
    /// total deadline, but connect and idle limits.
    func send(_ method: String, url: String, path: String, body: [UInt8] = [], accept: String = "application/json") async throws -> [UInt8] {
        var r = request(method, path, body: body, accept: accept, timeouts: HTTPTimeouts(connect: settings.defaultTimeouts.connect, idle: 120_000))
        r.url = url
        r.maxResponseBytes = max(settings.maxResponseBytes, 1 << 30)
        switch await http.fetch(r) {
        case .failure(let e): throw e.providerError(endpoint: settings.endpoint)
        case .success(let resp):
            guard (200..<300).contains(resp.status) else {
                throw httpError(status: resp.status, headers: resp.headers, body: resp.body, path: path, model: nil)
            }
            return resp.body
        }
    }

    func json(_ method: String, _ path: String, body: [UInt8] = []) async throws -> JSONValue {
        let bytes = try await send(method, url: ProviderHTTP.join(settings.endpoint, path), path: path, body: body)
        do { return try JSONValue.parse(bytes: bytes) } catch {
            throw ProviderError(.invalidResponse, "\(method) \(ProviderHTTP.join(settings.endpoint, path)): not JSON: \(ProviderHTTP.excerpt(bytes))")
        }
    }

    func run(_ call: PluginCall, _ body: @escaping @Sendable () async throws -> JSONValue) {
        runRaw(call) { try await body().jsonBytes }
    }

    func runRaw(_ call: PluginCall, _ body: @escaping @Sendable () async throws -> [UInt8]) {
        let task = Task.detached {
            do { call.finish(json: try await body()) } catch {
                if Task.isCancelled { return call.fail(ProviderError(.cancelled, "the request was cancelled")) }
                call.fail(error as? ProviderError ?? ProviderError(.backend, "\(error)"))
            }
        }
        call.onCancel { task.cancel() }
    }
}
