// descartes-plugin-host: runs one plugin in its own process, for
// `isolation: process`. The host talks to it over fd 3 (a Unix socket) with
// the frames of Sources/Descartes/Host/Isolation/Frames.swift: it loads the
// library, creates the backend, and relays every operation, cancel and
// release to the plugin and every event back. If the plugin crashes, aborts
// or runs out of its memory limit, only this process dies.
//
//   descartes-plugin-host [--parent PID]
//
// It is started by the host, never by hand, with its resource limits
// already applied (between fork and exec, Sources/DescartesSupport/Spawn.swift),
// and exits when the host closes the socket.
import Descartes
internal import CDescartesPlugin
import Glibc

enum Helper {
    static let writer = FrameWriter(fd: 3)

    /// Events of a call go back tagged with the call's id, which travels as
    /// the callback's context pointer (no allocation per call).
    static let onEvent: descartes_event_fn = { ctx, event in
        guard let event else { return }
        let id = UInt64(UInt(bitPattern: ctx))
        var head = id.leBytes
        head += event.pointee.type.leBytes
        head += event.pointee.index.leBytes
        let data = UnsafeRawBufferPointer(start: event.pointee.data, count: event.pointee.data == nil ? 0 : event.pointee.data_length)
        head.withUnsafeBytes { h in _ = writer.send(Frame.event, h, data) }
    }

    /// Every record goes back to the host, which masks it with its factory's
    /// secrets and logs it to that factory's sink, at the level the host
    /// asked for in CREATE.
    static let sink = LogSink(level: .warning) { level, _, message in log(level, message) }
    /// The library-level table's records go back to the host too.
    static let loader = PluginLoader(logSink: sink)

    static func log(_ level: LogLevel, _ message: String) {
        var bytes = level.rawValue.leBytes
        bytes += Array(message.utf8)
        _ = writer.send(Frame.log, bytes: bytes)
    }

    /// The plugin's `answer_approval` (ABI 1.2), when its table reaches it.
    static func answerApproval(_ b: UnsafeMutablePointer<descartes_backend_t>)
        -> (@convention(c) (UnsafeMutablePointer<descartes_backend_t>?, OpaquePointer?, UnsafePointer<CChar>?, Int) -> Void)?
    {
        let at = MemoryLayout<descartes_backend_t>.offset(of: \.answer_approval)!
        guard Int(b.pointee.struct_size) >= at + MemoryLayout<UnsafeRawPointer?>.size else { return nil }
        return b.pointee.answer_approval
    }

    /// CREATED: the library's description once it loaded (what `plugins
    /// verify` reports, even when create then refused), the error, and
    /// whether the plugin answers approvals (ABI 1.2).
    static func reply(error: ProviderError?, library: PluginLibrary? = nil, answersApprovals: Bool = false) {
        var doc = JSONObject()
        if let error { doc["error"] = Wire.json(error) }
        if let library { doc["library"] = library.report }
        if error == nil && answersApprovals { doc["answer_approval"] = true }
        _ = writer.send(Frame.created, bytes: JSONValue.object(doc).jsonBytes)
    }

    /// The functions behind the codes EXTENSION frames gave out.
    nonisolated(unsafe) static var extensionFunctions: [UInt8: descartes_operation_fn] = [:]

    /// The function behind an operation code: the table's for the backend's
    /// own operations, the extension's slot for the codes EXTENSION assigned.
    static func function(_ b: UnsafeMutablePointer<descartes_backend_t>, _ code: UInt8) -> descartes_operation_fn? {
        if Int(code) < BackendOperation.base.count { return BackendOperation.base[Int(code)].function(in: b) }
        return extensionFunctions[code]
    }

    /// Answers EXTENSION: records the slots of extension `id` under the codes
    /// from `first` and tells the host which slots there are.
    static func describeExtension(_ b: UnsafeMutablePointer<descartes_backend_t>, first: UInt8, id: String) {
        var slots = 0
        var offered: UInt16 = 0
        if Int(first) >= Frame.firstExtensionCode, Int(first) + BackendExtension.maxSlots <= 256,
            let ext = BackendExtension.find(id, in: b)
        {
            slots = BackendExtension.slots(ext)
            for k in 0..<slots {
                guard let fn = BackendExtension.operation(ext, slot: k) else { continue }
                extensionFunctions[first + UInt8(k)] = fn
                offered |= 1 << UInt16(k)
            }
        }
        _ = writer.send(Frame.extended, bytes: [first, UInt8(slots)] + offered.leBytes)
    }

    static func run() -> Never {
        // The CREATE frame brings the plugin's secrets: no core file or crash report may hold them.
        SecretsAtRest.protect(crashReport: false)
        // The socket is the host's line to this process only: nothing the
        // plugin starts (system(), a server it spawns) inherits it, so it
        // closes when this process dies.
        _ = fcntl(3, F_SETFD, FD_CLOEXEC)
        var reader = FrameReader(fd: 3)
        var backend: UnsafeMutablePointer<descartes_backend_t>? = nil
        var handles: [UInt64: OpaquePointer] = [:]
        var table: HostTable? = nil

        while let (type, payload) = reader.next() {
            switch type {
            case Frame.create:
                guard backend == nil, let doc = try? JSONValue.parse(bytes: Array(payload)),
                    let library = doc["library"]?.stringValue, let factory = doc["factory"]?.stringValue
                else {
                    reply(error: ProviderError(.backend, "isolation: a malformed CREATE frame"))
                    continue
                }
                if let level = doc["log_level"]?.intValue, let l = LogLevel(rawValue: UInt32(level)) { sink.level = l }
                let instance = doc["instance"]?.stringValue ?? factory
                let t = HostTable(source: "provider \(instance)", log: sink) { level, text in log(level, text) }
                table = t
                var loaded: PluginLibrary? = nil
                do {
                    let lib = try loader.load(path: library)
                    loaded = lib
                    backend = try lib.createBackend(
                        factory: factory, provider: doc["provider"]?.stringValue ?? factory, instance: instance,
                        config: doc["config"]?.jsonBytes ?? Array("{}".utf8), table: t, redactor: sink.redactor)
                    reply(error: nil, library: lib, answersApprovals: answerApproval(backend!) != nil)
                } catch let e as ProviderError {
                    reply(error: e, library: loaded)
                } catch {
                    reply(error: ProviderError(.initialization, "cannot load plugin: \(error)", provider: instance), library: loaded)
                }
            case Frame.start:
                guard payload.count >= 9, let b = backend else { continue }
                let id = payload.le(0, as: UInt64.self)
                let code = payload[payload.startIndex + 8]
                let fn = function(b, code)
                let input = Array(payload.dropFirst(9))
                let ctx = UnsafeMutableRawPointer(bitPattern: UInt(id))
                let handle = input.withUnsafeBufferPointer { buf in
                    buf.withMemoryRebound(to: CChar.self) { fn?(b, $0.baseAddress, $0.count, onEvent, ctx) }
                }
                if let handle {
                    handles[id] = handle
                } else {
                    // No handle means no event will come: end the call here.
                    // No function: an operation the plugin does not offer
                    // (NULL, or appended after the header it was built with),
                    // answered as the host answers it in process.
                    let name = Int(code) < BackendOperation.base.count ? BackendOperation.base[Int(code)].name : "operation \(code)"
                    let e = Wire.encode(
                        fn == nil
                            ? ProviderError(.unsupportedFeature, "the plugin does not implement \(name)")
                            : ProviderError(.backend, "the plugin could not start the operation (it returned no handle)"))
                    var ev = descartes_event_t()
                    ev.struct_size = UInt32(MemoryLayout<descartes_event_t>.size)
                    ev.type = UInt32(DESCARTES_EVENT_ERROR)
                    e.withUnsafeBytes { raw in
                        ev.data = raw.baseAddress?.assumingMemoryBound(to: CChar.self)
                        ev.data_length = raw.count
                        onEvent(ctx, &ev)
                    }
                }
            case Frame.extension:
                guard payload.count >= 1, let b = backend else { continue }
                describeExtension(b, first: payload[payload.startIndex], id: String(decoding: payload.dropFirst(), as: UTF8.self))
            case Frame.cancel:
                guard payload.count >= 8, let b = backend, let h = handles[payload.le(0, as: UInt64.self)] else { continue }
                b.pointee.cancel?(b, h)
            case Frame.answer:
                guard payload.count >= 8, let b = backend, let h = handles[payload.le(0, as: UInt64.self)], let fn = answerApproval(b) else {
                    continue
                }
                let json = Array(payload.dropFirst(8))
                json.withUnsafeBufferPointer { buf in buf.withMemoryRebound(to: CChar.self) { fn(b, h, $0.baseAddress, $0.count) } }
            case Frame.release:
                guard payload.count >= 8, let b = backend, let h = handles.removeValue(forKey: payload.le(0, as: UInt64.self)) else { continue }
                b.pointee.release?(b, h)
            case Frame.destroy:
                if let b = backend { b.pointee.destroy?(b) }
                _ = table
                exit(0)
            default:
                continue
            }
        }
        // The host closed the socket (it exited or gave up on us).
        exit(0)
    }
}

// SIGTERM, SIGHUP and SIGINT end the helper at once with 128 + the signal:
// the children its plugin started are then killed by the reaper
// (Sources/CProcessShim), and the host sees the helper gone. (The helper
// runs in its own process group, so a terminal's signals do not reach it;
// when the host dies it gets SIGKILL, PR_SET_PDEATHSIG.)
for sig in [SIGTERM, SIGHUP, SIGINT] {
    signal(sig) { s in _exit(128 + s) }
}
Helper.run()
