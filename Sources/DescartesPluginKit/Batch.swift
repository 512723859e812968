internal import CDescartesPlugin

/// One request of a provider batch.
public struct BatchRequest: Sendable {
    public var customID: String
    public var request: ModelRequest
    public init(customID: String, request: ModelRequest) {
        self.customID = customID
        self.request = request
    }
}

/// A backend that offers its provider's own batch API: the kit exports it as
/// the `"descartes.batch/1"` extension of the C ABI (plugin.h,
/// `descartes_batch_extension_t`; documents in docs/abi.md). Each method is a
/// non-blocking start, like the others of `DescartesBackend`, and ends its
/// call with `finish(json:)` of the documents `BatchWire` builds, or `fail`.
public protocol DescartesBatchBackend: DescartesBackend {
    func submitBatch(_ requests: [BatchRequest], _ call: PluginCall)
    func batchStatus(id: String, _ call: PluginCall)
    func batchResults(id: String, _ call: PluginCall)
    func cancelBatch(id: String, _ call: PluginCall)
}

/// The documents of the batch extension.
public enum BatchWire {
    /// A BatchStatus document.
    public static func status(
        id: String, state: String, providerStatus: String, total: Int? = nil, succeeded: Int? = nil, failed: Int? = nil,
        createdAt: Int? = nil, expiresAt: Int? = nil, message: String? = nil
    ) -> JSONValue {
        var o: JSONObject = ["id": .string(id), "state": .string(state), "provider_status": .string(providerStatus)]
        if let total { o["counts"] = ["total": .integer(total), "succeeded": .integer(succeeded ?? 0), "failed": .integer(failed ?? 0)] }
        if let createdAt { o["created_at"] = .integer(createdAt) }
        if let expiresAt { o["expires_at"] = .integer(expiresAt) }
        if let message { o["message"] = .string(message) }
        return .object(o)
    }

    /// One result: the answer of a request.
    public static func result(customID: String, content: String, reasoning: String? = nil, toolCalls: [ToolCall] = [], finish: Wire.Finish) -> JSONValue {
        var r: JSONObject = ["content": .string(content), "finish_reason": .string(finish.finishReason.rawValue)]
        if let reasoning { r["reasoning"] = .string(reasoning) }
        if !toolCalls.isEmpty {
            r["tool_calls"] = .array(toolCalls.map { ["id": .string($0.id), "name": .string($0.name), "arguments": .string($0.arguments)] })
        }
        if let u = finish.usage { r["usage"] = Wire.json(u) }
        if let m = finish.model { r["model"] = .string(m) }
        if let id = finish.id { r["id"] = .string(id) }
        if let c = finish.costUSD { r["cost_usd"] = .number(c) }
        return ["custom_id": .string(customID), "response": .object(r)]
    }

    /// One result: the error of a request.
    public static func result(customID: String, error: ProviderError) -> JSONValue {
        ["custom_id": .string(customID), "error": Wire.json(error)]
    }

    /// The RESULT of `results`.
    public static func results(_ items: [JSONValue], priceFactor: Double? = nil) -> [UInt8] {
        var o: JSONObject = ["results": .array(items)]
        if let priceFactor { o["price_factor"] = .number(priceFactor) }
        return JSONValue.object(o).jsonBytes
    }

    /// The requests of a `submit` input.
    static func requests(_ input: UnsafeRawBufferPointer) throws(ProviderError) -> [BatchRequest] {
        let doc: JSONValue
        do { doc = try JSONValue.parse(input) } catch { throw ProviderError(.json, "the batch document is not JSON: \(error)") }
        guard let items = doc["requests"]?.arrayValue else { throw ProviderError(.json, "the batch document has no \"requests\" list") }
        var out: [BatchRequest] = []
        out.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            guard let id = item["custom_id"]?.stringValue else { throw ProviderError(.json, "requests[\(i)]: missing \"custom_id\"") }
            do { out.append(BatchRequest(customID: id, request: try Wire.decodeRequest(item["request"] ?? .null))) } catch {
                throw ProviderError(.json, "requests[\(i)] (\(id)): \(error)")
            }
        }
        return out
    }

    static func id(_ input: UnsafeRawBufferPointer) throws(ProviderError) -> String {
        guard let doc = try? JSONValue.parse(input), let id = doc["id"]?.stringValue, !id.isEmpty else {
            throw ProviderError(.json, "expected {\"id\": string}")
        }
        return id
    }
}

/// The extension table the kit hands out for backends that conform.
enum BatchExport {
    /// One table for every backend of the plugin: each function finds its
    /// backend through `self`, like the backend's own table.
    nonisolated(unsafe) static let table: UnsafeMutablePointer<descartes_batch_extension_t> = {
        let t = UnsafeMutablePointer<descartes_batch_extension_t>.allocate(capacity: 1)
        t.initialize(to: descartes_batch_extension_t())
        t.pointee.struct_size = UInt32(MemoryLayout<descartes_batch_extension_t>.size)
        t.pointee.submit = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                guard let impl = b.impl as? any DescartesBatchBackend else { return unsupported(call) }
                do throws(ProviderError) { impl.submitBatch(try BatchWire.requests(input), call) } catch { call.fail(error) }
            }
        }
        t.pointee.status = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                guard let impl = b.impl as? any DescartesBatchBackend else { return unsupported(call) }
                do throws(ProviderError) { impl.batchStatus(id: try BatchWire.id(input), call) } catch { call.fail(error) }
            }
        }
        t.pointee.results = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                guard let impl = b.impl as? any DescartesBatchBackend else { return unsupported(call) }
                do throws(ProviderError) { impl.batchResults(id: try BatchWire.id(input), call) } catch { call.fail(error) }
            }
        }
        t.pointee.cancel_batch = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                guard let impl = b.impl as? any DescartesBatchBackend else { return unsupported(call) }
                do throws(ProviderError) { impl.cancelBatch(id: try BatchWire.id(input), call) } catch { call.fail(error) }
            }
        }
        return t
    }()

    static func unsupported(_ call: PluginCall) {
        call.fail(ProviderError(.unsupportedFeature, "this backend has no batch API"))
    }

    /// get_extension for a backend box.
    static func lookup(_ impl: any DescartesBackend, _ id: UnsafePointer<CChar>?) -> UnsafeRawPointer? {
        guard let id, String(cString: id) == "descartes.batch/1", impl is any DescartesBatchBackend else { return nil }
        return UnsafeRawPointer(table)
    }
}
