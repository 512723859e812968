package import CDescartesPlugin

/// Every operation a backend can be asked for, in one table, read by the
/// host's bridge (`PluginBackend`), the isolation proxy and its helper
/// process (`ProcessBackend`, `descartes-plugin-host`) and the conformance
/// suite's raw driver.
///
/// An operation is either one of the operation functions of
/// `descartes_backend_t` (seven since 1.0, `embed` appended in 1.1) or
/// slot `k` of an extension struct: plugin.h's rule
/// for backend extensions is `uint32_t struct_size` followed by
/// `descartes_operation_fn` members only, so any extension (the batch API
/// now, others later) is a list of operations the host can call, and forward
/// to an isolated plugin, by extension id and slot without knowing it.
package struct BackendOperation: Hashable, Sendable, CustomStringConvertible {
    /// The ABI's name ("health_check"), or the extension's own name of the
    /// slot ("batch submit"), for messages.
    package let name: String
    package let place: Place

    package enum Place: Hashable, Sendable {
        /// The `index`-th operation function of descartes_backend_t (the
        /// order of `BackendOperation.base`).
        case backend(Int)
        /// The `slot`-th operation function of the extension struct `id`.
        case extensionSlot(id: String, slot: Int)
    }

    package init(_ name: String, _ place: Place) {
        self.name = name
        self.place = place
    }

    package var description: String { name }

    package static let initialize = BackendOperation("initialize", .backend(0))
    package static let healthCheck = BackendOperation("health_check", .backend(1))
    package static let complete = BackendOperation("complete", .backend(2))
    package static let stream = BackendOperation("stream", .backend(3))
    package static let listModels = BackendOperation("list_models", .backend(4))
    package static let estimateTokens = BackendOperation("estimate_tokens", .backend(5))
    package static let shutdown = BackendOperation("shutdown", .backend(6))
    /// Since ABI 1.1: absent from a 1.0 plugin's (shorter) struct.
    package static let embed = BackendOperation("embed", .backend(7))

    /// The operations of descartes_backend_t, in the order of its fields. An
    /// operation's index here is its code in the isolation frames.
    package static let base: [BackendOperation] = [initialize, healthCheck, complete, stream, listModels, estimateTokens, shutdown, embed]

    /// Where in descartes_backend_t the function of base operation `index`
    /// is: the one place the fields are named. (Read and written as an
    /// optional pointer: a plugin that breaks the rules may leave one NULL.)
    static func offset(_ index: Int) -> Int {
        let field: PartialKeyPath<descartes_backend_t>
        switch index {
        case 0: field = \.initialize
        case 1: field = \.health_check
        case 2: field = \.complete
        case 3: field = \.stream
        case 4: field = \.list_models
        case 5: field = \.estimate_tokens
        case 6: field = \.shutdown
        default: field = \.embed
        }
        return MemoryLayout<descartes_backend_t>.offset(of: field)!
    }

    /// Sets base operation `index` of `backend` (the isolation proxy's table).
    static func set(_ index: Int, of backend: UnsafeMutablePointer<descartes_backend_t>, to fn: descartes_operation_fn?) {
        UnsafeMutableRawPointer(backend).storeBytes(of: fn, toByteOffset: offset(index), as: descartes_operation_fn?.self)
    }

    /// A completion: its RESULT is a Finish document.
    package var isCompletion: Bool { self == .complete || self == .stream }

    /// The function of this operation in `backend`, or nil when the backend
    /// does not offer it (an extension it lacks, a NULL slot).
    package func function(in backend: UnsafeMutablePointer<descartes_backend_t>) -> descartes_operation_fn? {
        switch place {
        case .backend(let i):
            // A member the plugin's struct does not reach (appended after the
            // header it was built with) is not provided: DESCARTES_HAS_FIELD.
            let at = Self.offset(i)
            guard Int(backend.pointee.struct_size) >= at + MemoryLayout<descartes_operation_fn?>.size else { return nil }
            return UnsafeRawPointer(backend).load(fromByteOffset: at, as: descartes_operation_fn?.self)
        case .extensionSlot(let id, let slot):
            guard let ext = BackendExtension.find(id, in: backend) else { return nil }
            return BackendExtension.operation(ext, slot: slot)
        }
    }
}

/// Reads extension structs by the rule of plugin.h: `uint32_t struct_size`,
/// then operation functions only.
package enum BackendExtension {
    /// Where the first operation is (after struct_size, aligned).
    package static let firstSlotOffset = max(MemoryLayout<UInt32>.size, MemoryLayout<UnsafeRawPointer>.alignment)
    /// The most operations one extension may have (the isolation frames give
    /// each extension a block of codes this large).
    package static let maxSlots = 16

    /// The extension struct `backend` offers under `id`, if any.
    package static func find(_ id: String, in backend: UnsafeMutablePointer<descartes_backend_t>) -> UnsafeRawPointer? {
        guard let get = backend.pointee.get_extension else { return nil }
        return get(backend, id)
    }

    /// How many operation slots the struct has, as its struct_size says.
    package static func slots(_ ext: UnsafeRawPointer) -> Int {
        let size = Int(ext.load(as: UInt32.self))
        return max(0, min(maxSlots, (size - firstSlotOffset) / MemoryLayout<UnsafeRawPointer>.stride))
    }

    /// Slot `slot`'s function, or nil when the struct is too short for it or
    /// the plugin left it NULL.
    package static func operation(_ ext: UnsafeRawPointer, slot: Int) -> descartes_operation_fn? {
        guard slot >= 0, slot < slots(ext) else { return nil }
        return ext.load(fromByteOffset: firstSlotOffset + slot * MemoryLayout<UnsafeRawPointer>.stride, as: descartes_operation_fn?.self)
    }
}
