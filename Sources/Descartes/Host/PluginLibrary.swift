package import CDescartesPlugin
import Glibc
import DescartesSupport

/// The version of this host, reported to plugins and by `descartes --version`.
public let descartesVersion = "0.1.0"

/// The highest plugin ABI version this host speaks.
public let descartesABIVersion: Int = Int(DESCARTES_ABI_VERSION)

/// Why a plugin library could not be used. The message always names the file.
package struct PluginLoadError: Error, Sendable, CustomStringConvertible {
    package enum Reason: String, Sendable {
        case missingLibrary = "library missing"
        case notSharedObject = "not a loadable shared object"
        case noEntrySymbol = "no entry symbol"
        case negotiationRefused = "ABI negotiation refused"
        case abiMismatch = "ABI mismatch"
        case malformedLibrary = "malformed library description"
        case unknownFactory = "unknown factory"
        case insecure = "insecure file"
        case checksumMismatch = "checksum mismatch"
        case notRegular = "not a regular file"
        case timedOut = "did not load in time"
    }
    package var reason: Reason
    package var path: String
    package var detail: String
    package init(_ reason: Reason, path: String, _ detail: String) {
        self.reason = reason
        self.path = path
        self.detail = detail
    }
    package var description: String { "\(path): \(reason.rawValue): \(detail)" }
}

/// A C string that lives as long as this object.
final class CString: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<CChar>
    init(_ s: String) { pointer = strdup(s)! }
    deinit { free(pointer) }
}

/// A host table (descartes_host_t) for one library or one backend instance,
/// with its log source and the sink its records go to (a backend's: its
/// factory's). It stays allocated until released by its owner.
package final class HostTable: @unchecked Sendable {
    let table: UnsafeMutablePointer<descartes_host_t>
    let source: String
    /// The level plugins ask for, and where records go unless `sink` takes them.
    let log: LogSink
    /// Where records go instead of `log` (the isolation helper forwards them
    /// to the host; the conformance suite keeps them).
    let sink: (@Sendable (LogLevel, String) -> Void)?
    private let name = CString("descartes")
    private let version = CString(descartesVersion)

    package init(source: String, log: LogSink, sink: (@Sendable (LogLevel, String) -> Void)? = nil) {
        self.source = source
        self.log = log
        self.sink = sink
        table = .allocate(capacity: 1)
        table.initialize(to: descartes_host_t())
        table.pointee.struct_size = UInt32(MemoryLayout<descartes_host_t>.size)
        table.pointee.abi_version = DESCARTES_ABI_VERSION
        table.pointee.name = UnsafePointer(name.pointer)
        table.pointee.version = UnsafePointer(version.pointer)
        table.pointee.host_data = Unmanaged.passUnretained(self).toOpaque()
        table.pointee.log = { host, level, message, length in
            guard let host, let data = host.pointee.host_data else { return }
            let me = Unmanaged<HostTable>.fromOpaque(data).takeUnretainedValue()
            let l = LogLevel(rawValue: min(level, 4)) ?? .trace
            guard me.log.isEnabled(l) else { return }
            let text = message.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: length), as: UTF8.self) } ?? ""
            if let sink = me.sink { sink(l, text) } else { me.log.log(l, me.source, text) }
        }
        table.pointee.log_level = { host in
            guard let host, let data = host.pointee.host_data else { return LogLevel.warning.rawValue }
            return Unmanaged<HostTable>.fromOpaque(data).takeUnretainedValue().log.level.rawValue
        }
        table.pointee.get_extension = { _, _ in nil }
    }

    deinit {
        table.deinitialize(count: 1)
        table.deallocate()
    }
}

/// A plugin library loaded with dlopen and negotiated. It is never unloaded
/// (Swift images cannot be dlclose'd safely), so its tables stay valid for
/// the life of the process.
package final class PluginLibrary: @unchecked Sendable {
    /// Creates a backend with factory `id` from a validated configuration.
    /// - Throws: the plugin's own error (create's `on_error`), its message
    ///   prefixed with the library's path.
    package func createBackend(
        factory id: String, provider: String, instance: String, config configBytes: [UInt8], table: HostTable, redactor: Redactor,
        within: Duration? = nil
    ) throws(ProviderError) -> UnsafeMutablePointer<descartes_backend_t> {
        guard let factory = factory(id) else {
            throw ProviderError(
                .initialization, "\(path): unknown factory '\(id)'; the library registers: \(factoryIDs.joined(separator: ", "))",
                provider: instance)
        }
        let errorBox = ErrorBox()
        // On a plugin thread, under a deadline: a create that never returns
        // is abandoned (its thread with it) and the caller told so.
        let limit = within ?? PluginLoader.defaultLoadDeadline
        struct Created: @unchecked Sendable { let raw: UnsafeMutablePointer<descartes_backend_t>? }
        let f = CallHandle(raw: OpaquePointer(factory))
        let outcome = PluginThreads.shared.run(within: Double(limit.milliseconds) / 1000) { () -> Created in
            Created(raw: Self.callCreate(UnsafePointer<descartes_factory_t>(f.raw), provider: provider, instance: instance, config: configBytes, table: table, errorBox: errorBox))
        }
        guard let outcome else {
            throw ProviderError(
                .timeout, "\(path): the plugin's create (factory '\(id)') did not return within \(format(limit))",
                provider: instance, deadline: "total")
        }
        let raw = outcome.raw
        guard let raw else {
            var e = errorBox.bytes.isEmpty
                ? ProviderError(.initialization, "the plugin refused the configuration without saying why", provider: instance)
                : errorBox.bytes.withUnsafeBytes { Wire.decodePluginError($0, provider: instance) }
            e.message = "\(path): create failed: \(e.message)"
            throw redactor.redact(e)
        }
        guard raw.pointee.struct_size >= UInt32(MemoryLayout<descartes_backend_t>.offset(of: \.destroy)!) else {
            throw ProviderError(
                .initialization, "\(path): the backend's struct_size \(raw.pointee.struct_size) is smaller than version 1 of descartes_backend_t",
                provider: instance)
        }
        return raw
    }

    private static func callCreate(
        _ factory: UnsafePointer<descartes_factory_t>, provider: String, instance: String, config configBytes: [UInt8], table: HostTable,
        errorBox: ErrorBox
    ) -> UnsafeMutablePointer<descartes_backend_t>? {
        provider.withCString { providerC in
            instance.withCString { instanceC in
                configBytes.withUnsafeBufferPointer { cfg in
                    cfg.withMemoryRebound(to: CChar.self) { cfgChars in
                        var args = descartes_create_args_t()
                        args.struct_size = UInt32(MemoryLayout<descartes_create_args_t>.size)
                        args.host = UnsafePointer(table.table)
                        args.provider = providerC
                        args.instance = instanceC
                        args.config = cfgChars.baseAddress
                        args.config_length = cfgChars.count
                        let ctx = Unmanaged.passUnretained(errorBox).toOpaque()
                        return factory.pointee.create(factory, &args, { ctx, json, length in
                            guard let ctx else { return }
                            let box = Unmanaged<ErrorBox>.fromOpaque(ctx).takeUnretainedValue()
                            box.bytes = json.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
                        }, ctx)
                    }
                }
            }
        }
    }

    package let path: String
    package let name: String
    package let version: String
    package let abiVersion: Int
    package let factoryIDs: [String]
    let library: UnsafePointer<descartes_library_t>
    let hostTable: HostTable
    let handle: UnsafeMutableRawPointer

    init(path: String, handle: UnsafeMutableRawPointer, library: UnsafePointer<descartes_library_t>, hostTable: HostTable) throws(PluginLoadError) {
        self.path = path
        self.handle = handle
        self.library = library
        self.hostTable = hostTable
        let lib = library.pointee
        guard lib.struct_size >= UInt32(MemoryLayout<descartes_library_t>.offset(of: \.unload)!) else {
            throw PluginLoadError(.malformedLibrary, path: path, "descartes_library_t.struct_size \(lib.struct_size) is smaller than version 1 of the struct")
        }
        guard lib.abi_version >= 1, lib.abi_version <= DESCARTES_ABI_VERSION else {
            throw PluginLoadError(.abiMismatch, path: path, "the library answered ABI version \(lib.abi_version) to an offer of \(DESCARTES_ABI_VERSION)")
        }
        abiVersion = Int(lib.abi_version)
        name = lib.name.map { String(cString: $0) } ?? "(unnamed)"
        version = lib.version.map { String(cString: $0) } ?? "(unversioned)"
        var ids: [String] = []
        if lib.factory_count > 0 {
            guard let factories = lib.factories else {
                throw PluginLoadError(.malformedLibrary, path: path, "factory_count is \(lib.factory_count) but factories is NULL")
            }
            for i in 0..<Int(lib.factory_count) {
                guard let f = factories[i], f.pointee.struct_size >= 8, let id = f.pointee.id, f.pointee.create != nil else {
                    throw PluginLoadError(.malformedLibrary, path: path, "factory \(i) is NULL, has no id or no create function")
                }
                ids.append(String(cString: id))
            }
        }
        factoryIDs = ids
    }

    package func factory(_ id: String) -> UnsafePointer<descartes_factory_t>? {
        guard let i = factoryIDs.firstIndex(of: id) else { return nil }
        return library.pointee.factories![i]
    }

    /// Loads and negotiates the library at `path`.
    static func load(path: String, log: LogSink) throws(PluginLoadError) -> PluginLibrary {
        guard FileSystem.exists(path) else {
            throw PluginLoadError(.missingLibrary, path: path, "no such file")
        }
        // dlopen of a FIFO blocks until a writer comes: only regular files.
        do { try FileSystem.checkRegular(path) } catch {
            throw PluginLoadError(.notRegular, path: path, error.reason)
        }
        // RTLD_LOCAL: a plugin's symbols never satisfy another plugin's.
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let message = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            throw PluginLoadError(.notSharedObject, path: path, message)
        }
        _ = dlerror()
        guard let sym = dlsym(handle, DESCARTES_PLUGIN_ENTRY_SYMBOL) else {
            throw PluginLoadError(.noEntrySymbol, path: path, "the library does not export '\(DESCARTES_PLUGIN_ENTRY_SYMBOL)'")
        }
        typealias Entry = @convention(c) (UInt32, UnsafePointer<descartes_host_t>?) -> UnsafePointer<descartes_library_t>?
        let entry = unsafeBitCast(sym, to: Entry.self)
        let table = HostTable(source: "plugin \(FileSystem.basename(path))", log: log)
        guard let lib = entry(DESCARTES_ABI_VERSION, table.table) else {
            throw PluginLoadError(.negotiationRefused, path: path, "descartes_plugin_entry returned NULL for ABI version \(DESCARTES_ABI_VERSION)")
        }
        return try PluginLibrary(path: path, handle: handle, library: lib, hostTable: table)
    }
}

/// Loads each library once per process and remembers failures, so one bad
/// library is reported once and never retried in a loop.
///
/// A library is loaded once per process (its entry point runs once), so the
/// loader is normally shared (`shared`). What a plugin logs through its
/// library-level host table (outside any backend) goes to the loader's
/// `logSink`; what it logs for a backend goes to the sink of the factory that
/// created the backend.
public final class PluginLoader: Sendable {
    public static let shared = PluginLoader()
    private let cache = Lock<[String: Result<PluginLibrary, PluginLoadError>]>([:])
    /// Where the library-level records of the libraries it loads go.
    public let logSink: LogSink

    public init(logSink: LogSink = LogSink()) { self.logSink = logSink }

    private let digests = Lock<[String: String]>([:])

    /// Checks that the file at `path` has the digest `pin` names (computed
    /// once per file and process).
    package func verify(path: String, sha256 pin: PluginPolicy.Pin) throws(PluginLoadError) {
        let key = FileSystem.realPath(path) ?? path
        var digest = digests.withLock { $0[key] }
        if digest == nil {
            do { digest = try SHA256.file(key) } catch {
                throw PluginLoadError(.checksumMismatch, path: path, "cannot read it to check its pinned digest: \(error.reason)")
            }
            digests.withLock { $0[key] = digest }
        }
        guard digest == pin.sha256 else {
            throw PluginLoadError(
                .checksumMismatch, path: path, "its SHA-256 is \(digest!), the policy pins \(pin.sha256) (\(pin.location)); not loaded")
        }
    }

    /// How long dlopen and `descartes_plugin_entry` may take when the
    /// caller gives no deadline.
    public static let defaultLoadDeadline: Duration = .seconds(30)

    /// Loads the library at `path` once per process. With `sha256`, the
    /// file's digest must match the policy's pin first. dlopen and the
    /// entry point run on a plugin thread: when they have not returned
    /// `within` (default 30 s) the library is refused (and stays refused).
    package func load(path: String, sha256 pin: PluginPolicy.Pin? = nil, within: Duration? = nil) throws(PluginLoadError) -> PluginLibrary {
        let key = FileSystem.realPath(path) ?? path
        if let pin { try verify(path: path, sha256: pin) }
        let limit = within ?? Self.defaultLoadDeadline
        // dlopen and entry run under the lock: the ABI says the entry is
        // called once per library, from one thread.
        let result = cache.withLock { c -> Result<PluginLibrary, PluginLoadError> in
            if let r = c[key] { return r }
            let sink = logSink
            let loaded = PluginThreads.shared.run(within: Double(limit.milliseconds) / 1000) { () -> LoadResult in
                do throws(PluginLoadError) { return LoadResult(try PluginLibrary.load(path: path, log: sink)) } catch { return LoadResult(error) }
            }
            let r = loaded?.result
                ?? .failure(PluginLoadError(.timedOut, path: path, "dlopen or descartes_plugin_entry did not return within \(format(limit))"))
            c[key] = r
            return r
        }
        return try result.get()
    }
}

/// A load's outcome, passed back from the plugin thread.
private struct LoadResult: @unchecked Sendable {
    let result: Result<PluginLibrary, PluginLoadError>
    init(_ l: PluginLibrary) { result = .success(l) }
    init(_ e: PluginLoadError) { result = .failure(e) }
}
