// OpenAI's Batch API behind the "descartes.batch/1" extension (plugin.h,
// descartes_batch_extension_t; docs/abi.md):
//
//   submit   POST {endpoint}/files (multipart: purpose=batch, the requests
//            as JSON lines), then POST {endpoint}/batches
//            {"input_file_id", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
//   status   GET  {endpoint}/batches/{id}
//   results  GET  {endpoint}/batches/{id}, then GET {endpoint}/files/{file}/content
//            of its output and error files (JSON lines, any order)
//   cancel   POST {endpoint}/batches/{id}/cancel
//
// Each line's body is exactly what `complete` sends to /chat/completions,
// and each answer is read by the same parser. Batches cost half the list
// prices (price_factor 0.5).
import DescartesOpenAIChat
import Glibc

extension OpenAIBackend: DescartesBatchBackend {
    func submitBatch(_ requests: [BatchRequest], _ call: PluginCall) {
        run(call) { [self] in
            var lines: [UInt8] = []
            for r in requests {
                var w = JSONWriter(capacity: 512)
                w.beginObject()
                w.field("custom_id", r.customID)
                w.field("method", "POST")
                w.field("url", "/v1/chat/completions")
                w.key("body")
                w.raw(ChatRequest.encode(r.request, stream: false, options: chat.server.requestOptions))
                w.endObject()
                lines += w.bytes
                lines.append(10)
            }
            let boundary = "descartes-\(UInt64.random(in: 0...UInt64.max))"
            var form: [UInt8] = []
            form += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n".utf8)
            form += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"batch.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n".utf8)
            form += lines
            form += Array("\r\n--\(boundary)--\r\n".utf8)
            let file = try await json("POST", "files", body: form, contentType: "multipart/form-data; boundary=\(boundary)")
            guard let fileID = file["id"]?.stringValue else {
                throw ProviderError(.invalidResponse, "POST files: no file id in \(Wire.excerpt(file.jsonText))")
            }
            let create: JSONValue = [
                "input_file_id": .string(fileID), "endpoint": "/v1/chat/completions", "completion_window": "24h",
            ]
            return try Self.batchStatus(try await json("POST", "batches", body: create.jsonBytes, contentType: "application/json"))
        }
    }

    func batchStatus(id: String, _ call: PluginCall) {
        run(call) { [self] in try Self.batchStatus(try await json("GET", "batches/\(Self.escaped(id))")) }
    }

    func cancelBatch(id: String, _ call: PluginCall) {
        run(call) { [self] in
            try Self.batchStatus(try await json("POST", "batches/\(Self.escaped(id))/cancel", body: Array("{}".utf8), contentType: "application/json"))
        }
    }

    func batchResults(id: String, _ call: PluginCall) {
        runRaw(call) { [self] in
            let batch = try await json("GET", "batches/\(Self.escaped(id))")
            let status = batch["status"]?.stringValue ?? ""
            guard ["completed", "expired", "cancelled"].contains(status) else {
                throw ProviderError(.api, "batch \(id) is \(status.isEmpty ? "in an unknown state" : status), not ended: no results yet")
            }
            var items: [JSONValue] = []
            for key in ["output_file_id", "error_file_id"] {
                guard let file = batch[key]?.stringValue, !file.isEmpty else { continue }
                let body = try await send("GET", "files/\(Self.escaped(file))/content", accept: "application/jsonl")
                for line in body.split(separator: UInt8(ascii: "\n")) where !line.allSatisfy({ $0 == 13 || $0 == 32 }) {
                    items.append(try Self.result(Array(line), server: chat.server))
                }
            }
            return BatchWire.results(items, priceFactor: 0.5)
        }
    }

    // MARK: Wire

    /// A batch object as a BatchStatus document.
    static func batchStatus(_ b: JSONValue) throws(ProviderError) -> JSONValue {
        guard let id = b["id"]?.stringValue, let status = b["status"]?.stringValue else {
            throw ProviderError(.invalidResponse, "not a batch object: \(Wire.excerpt(b.jsonText))")
        }
        let state: String
        switch status {
        case "validating", "in_progress", "finalizing": state = "in_progress"
        case "completed": state = "ended"
        default: state = status  // cancelling, cancelled, expired, failed
        }
        let errors = (b["errors"]?["data"]?.arrayValue ?? []).compactMap { e -> String? in
            guard let m = e["message"]?.stringValue else { return nil }
            return e["line"]?.intValue.map { "line \($0): \(m)" } ?? m
        }
        let counts = b["request_counts"]
        return BatchWire.status(
            id: id, state: state, providerStatus: status, total: counts?["total"]?.intValue,
            succeeded: counts?["completed"]?.intValue, failed: counts?["failed"]?.intValue,
            createdAt: b["created_at"]?.intValue, expiresAt: b["expires_at"]?.intValue,
            message: errors.isEmpty ? nil : errors.joined(separator: "; "))
    }

    /// One line of an output or error file as a BatchResult document.
    static func result(_ line: [UInt8], server: ChatServer) throws(ProviderError) -> JSONValue {
        guard let doc = try? JSONValue.parse(bytes: line), let cid = doc["custom_id"]?.stringValue else {
            throw ProviderError(.invalidResponse, "a batch result line is not {\"custom_id\", ...}: \(ProviderHTTP.excerpt(line))")
        }
        if let response = doc["response"], !response.isNull, let status = response["status_code"]?.intValue {
            let body = response["body"] ?? .null
            guard (200..<300).contains(status) else {
                let e = server.httpError(status: status, headers: HTTPHeaders(), body: body.jsonBytes, method: "POST", path: "chat/completions", model: nil)
                return BatchWire.result(customID: cid, error: e)
            }
            let recorder = BatchAnswer()
            var parser = ChatResponseParser()
            let bytes = body.jsonBytes
            let failure: ProviderError? = bytes.withUnsafeBytes { b in
                do throws(ProviderError) {
                    try parser.parse(b, recorder)
                    return nil
                } catch { return error }
            }
            if let failure { return BatchWire.result(customID: cid, error: failure) }
            let finish = parser.finish(recorder)
            return BatchWire.result(customID: cid, content: recorder.text, reasoning: recorder.reasoning.isEmpty ? nil : recorder.reasoning, toolCalls: recorder.toolCalls, finish: finish)
        }
        let err = doc["error"] ?? .null
        var e = ProviderError(.api, server.scrub(err["message"]?.stringValue ?? "the request failed without a message"))
        e.providerType = err["code"]?.stringValue
        return BatchWire.result(customID: cid, error: e)
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

    /// Batch files can be large: a wider size limit and no total deadline
    /// (the transfer may take long), but connect and idle limits.
    func send(_ method: String, _ path: String, body: [UInt8] = [], contentType: String? = nil, accept: String = "application/json") async throws(ProviderError) -> [UInt8] {
        let server = chat.server
        var headers = server.headers
        if let contentType { headers.append(("Content-Type", contentType)) }
        headers.append(("Accept", accept))
        let request = HTTPRequest(
            method: method, url: server.url(path), headers: headers, body: body,
            timeouts: HTTPTimeouts(connect: server.defaultTimeouts.connect, idle: 120_000),
            maxResponseBytes: max(server.maxResponseBytes, 1 << 30), caBundle: server.caBundle, proxy: server.proxy)
        switch await http.fetch(request) {
        case .failure(let e):
            var pe = e.providerError(endpoint: server.baseURL)
            pe.message = server.scrub(pe.message)
            throw pe
        case .success(let r):
            guard (200..<300).contains(r.status) else {
                throw server.httpError(status: r.status, headers: r.headers, body: r.body, method: method, path: path, model: nil)
            }
            return r.body
        }
    }

    func json(_ method: String, _ path: String, body: [UInt8] = [], contentType: String? = nil) async throws(ProviderError) -> JSONValue {
        let bytes = try await send(method, path, body: body, contentType: contentType)
        do { return try JSONValue.parse(bytes: bytes) } catch {
            throw ProviderError(.invalidResponse, "\(method) \(chat.server.url(path)): not JSON: \(ProviderHTTP.excerpt(bytes))")
        }
    }

    /// Runs `body` off the caller's thread and ends the call with its document.
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

/// Collects one whole answer from the chat parser.
final class BatchAnswer: ChatEventSink {
    var textBytes: [UInt8] = []
    var reasoningBytes: [UInt8] = []
    var calls: [(id: String, name: String, arguments: [UInt8])] = []

    var text: String { String(decoding: textBytes, as: UTF8.self) }
    var reasoning: String { String(decoding: reasoningBytes, as: UTF8.self) }
    var toolCalls: [ToolCall] {
        calls.map { ToolCall(id: $0.id, name: $0.name, arguments: $0.arguments.isEmpty ? "{}" : String(decoding: $0.arguments, as: UTF8.self)) }
    }

    func start(id: String?, model: String?) {}
    func text(bytes: UnsafeRawBufferPointer) { textBytes.append(contentsOf: bytes) }
    func reasoning(bytes: UnsafeRawBufferPointer) { reasoningBytes.append(contentsOf: bytes) }
    func toolCallStart(index: Int, id: String, name: String) {
        while calls.count <= index { calls.append(("", "", [])) }
        calls[index].id = id
        calls[index].name = name
    }
    func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) {
        while calls.count <= index { calls.append(("", "", [])) }
        calls[index].arguments.append(contentsOf: bytes)
    }
    func toolCallEnd(index: Int) {}
}
