internal import CDescartesPlugin
import Glibc

/// What a Swift plugin implements: one backend instance. This is the plugin
/// side; the kit exports it through the C ABI, and the host library wraps
/// what comes across as a `ModelBackend` (the application side).
///
/// Every method is a non-blocking start: it must return promptly and report
/// through the `PluginCall` (from any thread, at any later time). The kit
/// decodes requests, tracks calls in flight, answers cancellation, and turns
/// all of it into the C ABI of descartes/plugin.h.
///
/// Default implementations: `initialize` and `shutdown` succeed at once,
/// `complete` runs `stream` (the host assembles the same answer),
/// `estimateTokens` uses the `Heuristics.tokens` estimate, and `healthCheck`,
/// `listModels` and `embed` report `unsupportedFeature`.
public protocol DescartesBackend: AnyObject, Sendable {
    func initialize(_ call: PluginCall)
    func healthCheck(_ call: PluginCall)
    func complete(_ request: ModelRequest, _ call: PluginCall)
    func stream(_ request: ModelRequest, _ call: PluginCall)
    func listModels(_ call: PluginCall)
    func estimateTokens(_ request: ModelRequest, _ call: PluginCall)
    /// Embeds `request.inputs` (ABI 1.1): finish with
    /// `call.finish(embeddings:)`, one vector per input, in order.
    func embed(_ request: EmbeddingRequest, _ call: PluginCall)
    /// Called after every other call of this backend has ended (the kit
    /// cancels those still running first). Release connections and children.
    func shutdown(_ call: PluginCall)
    /// True for a backend that asks the host to approve tool uses
    /// (`PluginCall.askApproval`, ABI 1.2): only then does the kit fill
    /// `answer_approval`, so the host sends it requests' approval policies
    /// (and refuses them for an agent backend that cannot ask).
    var asksApprovals: Bool { get }
}

extension DescartesBackend {
    public func initialize(_ call: PluginCall) { call.finish(result: [:]) }
    public func healthCheck(_ call: PluginCall) {
        call.fail(ProviderError(.unsupportedFeature, "this backend has no health check"))
    }
    public func complete(_ request: ModelRequest, _ call: PluginCall) { stream(request, call) }
    public func listModels(_ call: PluginCall) {
        call.fail(ProviderError(.unsupportedFeature, "this backend cannot list models"))
    }
    public func estimateTokens(_ request: ModelRequest, _ call: PluginCall) {
        call.finish(json: Wire.encode(Heuristics.tokens(request)))
    }
    public func embed(_ request: EmbeddingRequest, _ call: PluginCall) {
        call.fail(ProviderError(.unsupportedFeature, "this backend cannot embed text"))
    }
    public func shutdown(_ call: PluginCall) { call.finish(result: [:]) }
    public var asksApprovals: Bool { false }
}

/// What a backend is created with.
public struct BackendContext: Sendable {
    /// The provider id from the manifest (e.g. "deepseek").
    public let provider: String
    /// The instance name the user chose.
    public let instance: String
    /// The validated configuration (secrets included: never log them).
    public let config: JSONObject
    let host: HostLog

    /// Logs through the host (which also masks known secrets).
    public func log(_ level: PluginLogLevel, _ message: @autoclosure () -> String) { host.log(level, message()) }

    public func string(_ key: String) -> String? { config[key]?.stringValue }
    public func int(_ key: String) -> Int? { config[key]?.intValue }
    public func double(_ key: String) -> Double? { config[key]?.doubleValue }
    public func bool(_ key: String) -> Bool? { config[key]?.boolValue }
    public func list(_ key: String) -> [String]? { config[key]?.arrayValue?.compactMap(\.stringValue) }
    public func map(_ key: String) -> [String: String]? {
        guard let o = config[key]?.objectValue else { return nil }
        var out: [String: String] = [:]
        for m in o { if let s = m.value.stringValue { out[m.key] = s } }
        return out
    }
}

public enum PluginLogLevel: UInt32, Sendable {
    case error = 0, warning, info, debug, trace
}

/// The host's log function, bound to a host table.
struct HostLog: @unchecked Sendable {
    let table: UnsafePointer<descartes_host_t>?

    func log(_ level: PluginLogLevel, _ message: @autoclosure () -> String) {
        guard let table, let fn = table.pointee.log else { return }
        if let lv = table.pointee.log_level, lv(table) < level.rawValue { return }
        var text = message()
        text.withUTF8 { buf in
            buf.withMemoryRebound(to: CChar.self) { fn(table, level.rawValue, $0.baseAddress, $0.count) }
        }
    }
}

/// A factory the library registers: an id a manifest names, and how to make
/// a backend from a validated configuration.
public struct BackendFactory: Sendable {
    public let id: String
    public let description: String
    /// Makes a backend; a thrown `ProviderError` is reported as is, any
    /// other error as a `config` error with its description.
    public let make: @Sendable (BackendContext) throws -> any DescartesBackend

    public init(id: String, description: String, make: @escaping @Sendable (BackendContext) throws -> any DescartesBackend) {
        self.id = id
        self.description = description
        self.make = make
    }
}

/// Exports the C ABI for a Swift plugin. A plugin's whole glue is:
///
/// ```swift
/// @_cdecl("descartes_plugin_entry")
/// public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
///     PluginExport.entry(abi: abi, host: host, name: "openai", version: "1.0.0", factories: [
///         BackendFactory(id: "openai", description: "OpenAI chat completions") { try OpenAIBackend($0) },
///     ])
/// }
/// ```
public enum PluginExport {
    /// The library description and factories, built once and kept for the
    /// life of the process (the ABI says so; the host never unloads).
    nonisolated(unsafe) static var library: UnsafeMutablePointer<descartes_library_t>?
    static let lock = Lock<Void>(())
    nonisolated(unsafe) static var factories: [BackendFactory] = []

    public static func entry(
        abi: UInt32, host: UnsafeRawPointer?, name: String, version: String, factories: [BackendFactory]
    ) -> UnsafeRawPointer? {
        guard abi >= 1 else { return nil }  // version 1 is the only one this kit implements
        return lock.withLock { _ -> UnsafeRawPointer? in
            if let library { return UnsafeRawPointer(library) }
            PluginExport.factories = factories
            let table = UnsafeMutablePointer<UnsafePointer<descartes_factory_t>?>.allocate(capacity: max(1, factories.count))
            for (i, f) in factories.enumerated() {
                let raw = UnsafeMutablePointer<descartes_factory_t>.allocate(capacity: 1)
                raw.initialize(to: descartes_factory_t())
                raw.pointee.struct_size = UInt32(MemoryLayout<descartes_factory_t>.size)
                raw.pointee.id = UnsafePointer(strdup(f.id))
                raw.pointee.description = UnsafePointer(strdup(f.description))
                raw.pointee.create = createBackend
                table[i] = UnsafePointer(raw)
            }
            let lib = UnsafeMutablePointer<descartes_library_t>.allocate(capacity: 1)
            lib.initialize(to: descartes_library_t())
            lib.pointee.struct_size = UInt32(MemoryLayout<descartes_library_t>.size)
            lib.pointee.abi_version = 1
            lib.pointee.name = UnsafePointer(strdup(name))
            lib.pointee.version = UnsafePointer(strdup(version))
            lib.pointee.factory_count = UInt32(factories.count)
            lib.pointee.factories = UnsafePointer(table)
            lib.pointee.unload = nil
            library = lib
            _ = host
            return UnsafeRawPointer(lib)
        }
    }

    static let createBackend: @convention(c) (
        UnsafePointer<descartes_factory_t>?, UnsafePointer<descartes_create_args_t>?, descartes_json_fn?, UnsafeMutableRawPointer?
    ) -> UnsafeMutablePointer<descartes_backend_t>? = { factoryPtr, argsPtr, onError, errorCtx in
        func fail(_ e: ProviderError) -> UnsafeMutablePointer<descartes_backend_t>? {
            let bytes = Wire.encode(e)
            bytes.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { onError?(errorCtx, $0.baseAddress, $0.count) }
            }
            return nil
        }
        guard let factoryPtr, let argsPtr, let idPtr = factoryPtr.pointee.id else {
            return fail(ProviderError(.backend, "create called without a factory or arguments"))
        }
        let id = String(cString: idPtr)
        guard let factory = lock.withLock({ _ in factories.first { $0.id == id } }) else {
            return fail(ProviderError(.backend, "unknown factory '\(id)'"))
        }
        let args = argsPtr.pointee
        let config: JSONObject
        if let c = args.config, args.config_length > 0 {
            guard let doc = try? JSONValue.parse(UnsafeRawBufferPointer(start: c, count: args.config_length)), case .object(let o) = doc else {
                return fail(ProviderError(.config, "the configuration is not a JSON object"))
            }
            config = o
        } else {
            config = [:]
        }
        let context = BackendContext(
            provider: args.provider.map { String(cString: $0) } ?? id,
            instance: args.instance.map { String(cString: $0) } ?? id,
            config: config, host: HostLog(table: args.host))
        let impl: any DescartesBackend
        do { impl = try factory.make(context) } catch {
            return fail(error as? ProviderError ?? ProviderError(.config, "\(error)"))
        }
        return BackendBox.make(impl, context: context)
    }
}

/// The C backend (descartes_backend_t) around a Swift implementation.
final class BackendBox: @unchecked Sendable {
    let impl: any DescartesBackend
    let context: BackendContext
    let raw: UnsafeMutablePointer<descartes_backend_t>

    private struct State {
        var inFlight: [ObjectIdentifier: PluginCall] = [:]
        var closing = false
        var shutdownCall: PluginCall?
    }
    private let state = Lock(State())

    private init(_ impl: any DescartesBackend, context: BackendContext, raw: UnsafeMutablePointer<descartes_backend_t>) {
        self.impl = impl
        self.context = context
        self.raw = raw
    }

    static func make(_ impl: any DescartesBackend, context: BackendContext) -> UnsafeMutablePointer<descartes_backend_t> {
        let raw = UnsafeMutablePointer<descartes_backend_t>.allocate(capacity: 1)
        raw.initialize(to: descartes_backend_t())
        let box = BackendBox(impl, context: context, raw: raw)
        raw.pointee.struct_size = UInt32(MemoryLayout<descartes_backend_t>.size)
        raw.pointee.plugin_data = Unmanaged.passRetained(box).toOpaque()
        raw.pointee.initialize = { s, i, n, f, c in BackendBox.start(s, i, n, f, c) { b, _, call in b.impl.initialize(call) } }
        raw.pointee.health_check = { s, i, n, f, c in BackendBox.start(s, i, n, f, c) { b, _, call in b.impl.healthCheck(call) } }
        raw.pointee.complete = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                if let r = BackendBox.request(input, call) { b.impl.complete(r, call) }
            }
        }
        raw.pointee.stream = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                if let r = BackendBox.request(input, call) { b.impl.stream(r, call) }
            }
        }
        raw.pointee.list_models = { s, i, n, f, c in BackendBox.start(s, i, n, f, c) { b, _, call in b.impl.listModels(call) } }
        raw.pointee.estimate_tokens = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                if let r = BackendBox.request(input, call) { b.impl.estimateTokens(r, call) }
            }
        }
        raw.pointee.embed = { s, i, n, f, c in
            BackendBox.start(s, i, n, f, c) { b, input, call in
                do {
                    b.impl.embed(try Wire.decodeEmbeddingRequest(JSONValue.parse(input)), call)
                } catch {
                    call.fail(ProviderError(.json, "the embed document is invalid: \(error)"))
                }
            }
        }
        raw.pointee.shutdown = { s, i, n, f, c in
            guard let s, let f else { return nil }
            let box = Unmanaged<BackendBox>.fromOpaque(s.pointee.plugin_data!).takeUnretainedValue()
            return box.beginShutdown(f, c)
        }
        raw.pointee.cancel = { _, call in
            guard let call else { return }
            Unmanaged<PluginCall>.fromOpaque(UnsafeRawPointer(call)).takeUnretainedValue().cancel()
        }
        if impl.asksApprovals { raw.pointee.answer_approval = { _, call, json, length in
            guard let call, let json else { return }
            Unmanaged<PluginCall>.fromOpaque(UnsafeRawPointer(call)).takeUnretainedValue()
                .answerApproval(UnsafeRawBufferPointer(start: json, count: length))
        } }
        raw.pointee.release = { _, call in
            guard let call else { return }
            Unmanaged<PluginCall>.fromOpaque(UnsafeRawPointer(call)).release()
        }
        raw.pointee.get_extension = { s, id in
            guard let s, let data = s.pointee.plugin_data else { return nil }
            return BatchExport.lookup(Unmanaged<BackendBox>.fromOpaque(data).takeUnretainedValue().impl, id)
        }
        raw.pointee.destroy = { s in
            guard let s else { return }
            Unmanaged<BackendBox>.fromOpaque(s.pointee.plugin_data!).release()
            s.deinitialize(count: 1)
            s.deallocate()
        }
        return raw
    }

    static func request(_ input: UnsafeRawBufferPointer, _ call: PluginCall) -> ModelRequest? {
        do {
            let doc = try JSONValue.parse(input)
            return try Wire.decodeRequest(doc)
        } catch {
            call.fail(ProviderError(.json, "the request document is invalid: \(error)"))
            return nil
        }
    }

    /// The shape of every operation: make the call, register it, hand it over.
    static func start(
        _ s: UnsafeMutablePointer<descartes_backend_t>?, _ input: UnsafePointer<CChar>?, _ length: Int,
        _ onEvent: descartes_event_fn?, _ ctx: UnsafeMutableRawPointer?,
        _ body: (BackendBox, UnsafeRawBufferPointer, PluginCall) -> Void
    ) -> OpaquePointer? {
        guard let s, let onEvent, let data = s.pointee.plugin_data else { return nil }
        let box = Unmanaged<BackendBox>.fromOpaque(data).takeUnretainedValue()
        let call = PluginCall(onEvent: onEvent, ctx: ctx, owner: box)
        // The host's reference: given back by `release`.
        let handle = OpaquePointer(Unmanaged.passRetained(call).toOpaque())
        let accepted = box.state.withLock { st -> Bool in
            if st.closing { return false }
            st.inFlight[ObjectIdentifier(call)] = call
            return true
        }
        if !accepted {
            call.fail(ProviderError(.backend, "the backend is shutting down"))
            return handle
        }
        body(box, UnsafeRawBufferPointer(start: input, count: input == nil ? 0 : length), call)
        return handle
    }

    /// A call delivered its terminal event.
    func finished(_ call: PluginCall) {
        let shutdown = state.withLock { st -> PluginCall? in
            st.inFlight[ObjectIdentifier(call)] = nil
            if st.closing, st.inFlight.isEmpty, let sc = st.shutdownCall {
                st.shutdownCall = nil
                return sc
            }
            return nil
        }
        if let shutdown { impl.shutdown(shutdown) }
    }

    func beginShutdown(_ onEvent: descartes_event_fn, _ ctx: UnsafeMutableRawPointer?) -> OpaquePointer? {
        let call = PluginCall(onEvent: onEvent, ctx: ctx, owner: nil)
        let handle = OpaquePointer(Unmanaged.passRetained(call).toOpaque())
        let (running, runNow) = state.withLock { st -> ([PluginCall], Bool) in
            st.closing = true
            if st.inFlight.isEmpty { return ([], true) }
            st.shutdownCall = call
            return (Array(st.inFlight.values), false)
        }
        for c in running { c.cancel() }
        if runNow { impl.shutdown(call) }
        return handle
    }
}
