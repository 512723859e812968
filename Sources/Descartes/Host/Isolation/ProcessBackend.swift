internal import CDescartesPlugin
internal import CDescartesHost
import Glibc
import DescartesSupport

/// A backend running in a `descartes-plugin-host` helper process.
///
/// It is itself a `descartes_backend_t`: every operation, cancel and release
/// is forwarded over a socket to the helper, which calls the real plugin and
/// sends its events back. So the host's bridge (`PluginBackend`, with its
/// deadlines and rule checks) drives an isolated plugin exactly as it drives
/// an in-process one.
///
/// Extensions are forwarded by id (`get_extension` asks the helper), so an
/// isolated plugin offers every extension it offers in process.
///
/// When the helper dies (a crash, an abort, the memory limit), every call
/// in flight ends with a `process` error naming the signal, and the next
/// operation starts a new helper (replaying the extensions and `initialize`
/// first if it had succeeded). Three crashes within a minute stop the
/// restarts.
final class ProcessBackend: @unchecked Sendable {
    let raw: UnsafeMutablePointer<descartes_backend_t>
    let manifest: PluginManifest
    let provider: String
    let instance: String
    let config: [UInt8]
    let limits: ProcessLimits
    /// The factory's sink: the helper's records and the proxy's warnings.
    let log: LogSink
    /// How long loading the library and `create` may take in the helper.
    let createWithin: Duration
    /// Where the helper's description of the library goes (CREATED's
    /// `library`), when someone asked (`plugins verify`).
    let libraryReport: LibraryReport?

    /// One running helper process and its reader thread.
    final class Helper: @unchecked Sendable {
        let pid: pid_t
        let fd: Int32
        let writer: FrameWriter
        var thread = pthread_t()
        /// True once `fd` is closed (guards the exit watcher's shutdown
        /// against a reused descriptor number).
        let closed = Lock(false)
        /// False once the helper is reaped: its pid, and the id of the
        /// process group it led, may be another process's from then on.
        private let unreaped = Lock(true)
        init(pid: pid_t, fd: Int32) {
            self.pid = pid
            self.fd = fd
            writer = FrameWriter(fd: fd)
        }

        /// `kill(pid, sig)` unless the helper was reaped; whether it was sent.
        @discardableResult
        func signal(_ sig: Int32) -> Bool {
            unreaped.withLock { alive in alive && kill(pid, sig) == 0 }
        }

        /// Kills what is left of the helper's process group (the helper
        /// itself, if it closed its socket and lives on; whatever the plugin
        /// started), then reaps it: in that order, since the unreaped helper
        /// is what keeps its group's id from being given to a new process.
        /// Returns the wait status and whether the helper was still running
        /// when this was called; nil when it was reaped elsewhere.
        func reap() -> (status: Int32, wasRunning: Bool)? {
            unreaped.withLock { alive -> (status: Int32, wasRunning: Bool)? in
                guard alive else { return nil }
                let running = Spawner.exited(pid) == false
                kill(-pid, SIGKILL)
                var status: Int32 = 0
                var r: pid_t
                repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
                alive = false
                return r == pid ? (status, running) : nil
            }
        }
    }

    /// The host side of one call.
    final class ProxyCall: @unchecked Sendable {
        let id: UInt64
        /// The operation's code (Frames.swift).
        let code: UInt8
        let onEvent: descartes_event_fn?
        let ctx: UnsafeMutableRawPointer?
        /// Guarded by the backend's state lock.
        var terminal = false
        /// Internal calls (the replayed initialize) have no host callback.
        let internalDone: (@Sendable (Bool, [UInt8]) -> Void)?
        init(
            id: UInt64, code: UInt8, onEvent: descartes_event_fn?, ctx: UnsafeMutableRawPointer?,
            internalDone: (@Sendable (Bool, [UInt8]) -> Void)? = nil
        ) {
            self.id = id
            self.code = code
            self.onEvent = onEvent
            self.ctx = ctx
            self.internalDone = internalDone
        }
    }

    private struct State {
        var helper: Helper?
        var calls: [UInt64: ProxyCall] = [:]
        var nextID: UInt64 = 1
        var initialized = false
        /// START frames held while a restarted helper re-initializes.
        var held: [(UInt64, [UInt8])]? = nil
        var crashes: [Int] = []
        var destroyed = false
        /// The extensions asked for, in order: their first code and the
        /// struct handed to the host (nil: the plugin has none by that id).
        var extensions: [(id: String, first: UInt8, table: UnsafeMutableRawPointer?)] = []
    }
    private let state = Lock(State())
    private let waiter = Waiter()
    /// One extension question at a time, and its answer.
    private let extensionQuery = Lock(())
    private let extensionWaiter = Waiter()

    private init(
        manifest: PluginManifest, provider: String, instance: String, config: [UInt8], limits: ProcessLimits, log: LogSink,
        createWithin: Duration, libraryReport: LibraryReport?
    ) {
        self.libraryReport = libraryReport
        self.log = log
        self.createWithin = createWithin
        self.manifest = manifest
        self.provider = provider
        self.instance = instance
        self.config = config
        self.limits = limits
        raw = .allocate(capacity: 1)
        raw.initialize(to: descartes_backend_t())
    }

    /// Starts a helper, creates the backend in it, and returns the proxy.
    static func start(
        manifest: PluginManifest, provider: String, instance: String, config: [UInt8], limits: ProcessLimits, log: LogSink,
        createWithin: Duration = PluginLoader.defaultLoadDeadline, libraryReport: LibraryReport? = nil
    ) throws(ProviderError) -> ProcessBackend {
        let p = ProcessBackend(
            manifest: manifest, provider: provider, instance: instance, config: config, limits: limits, log: log, createWithin: createWithin,
            libraryReport: libraryReport)
        p.installVTable()
        let helper = try p.spawnAndCreate()
        p.state.withLock { $0.helper = helper }
        return p
    }

    // MARK: Helper processes

    /// Where the helper executable is: `$DESCARTES_PLUGIN_HOST` (not in
    /// secure-execution mode), else beside the running executable, else in
    /// `<prefix>/libexec/descartes/`.
    static func helperPath() -> String? {
        if !Environment.isSecureExecution, let p = Environment.get("DESCARTES_PLUGIN_HOST"), p.hasPrefix("/") { return p }
        guard let exe = FileSystem.executablePath() else { return nil }
        let dir = FileSystem.directory(of: exe)
        for candidate in [FileSystem.join(dir, "descartes-plugin-host"), FileSystem.join(dir, "../libexec/descartes/descartes-plugin-host")] {
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    private func spawnAndCreate() throws(ProviderError) -> Helper {
        guard let path = ProcessBackend.helperPath() else {
            throw ProviderError(
                .initialization, "isolation: cannot find the descartes-plugin-host executable beside \(FileSystem.executablePath() ?? "this program") or in ../libexec/descartes",
                provider: instance)
        }
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw ProviderError(.process, "isolation: socketpair failed: \(String(cString: strerror(errno)))", provider: instance)
        }
        // stdin from /dev/null; a plugin printing to stdout goes to stderr;
        // the socket as fd 3; the limits applied between fork and exec.
        // The Swift runtime's crash backtracer would print a report and hold
        // the dying helper for seconds; off unless the user asked for it.
        var env = Environment.current()
        if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = "enable=no" }
        let pid: pid_t
        do throws(SpawnError) {
            pid = try Spawner.spawn(
                SpawnRequest(
                    path: path, arguments: [path, "--parent", String(getpid())], environment: env, stdin: -1, stdout: 2, stderr: 2,
                    fd3: fds[1], limits: limits))
        } catch {
            close(fds[0])
            close(fds[1])
            throw ProviderError(.process, "isolation: cannot start \(path): \(error)", provider: instance)
        }
        close(fds[1])
        let helper = Helper(pid: pid, fd: fds[0])
        waiter.reset()
        startReader(helper)
        // The helper's death is noticed at once, not when its socket closes
        // (a child the plugin started may hold it): its end of the socket
        // is shut down, so the reader sees the end and reports the death.
        watchExit(pid: pid) {
            helper.closed.withLock { closed in if !closed { _ = Glibc.shutdown(helper.fd, Int32(SHUT_RDWR)) } }
        }

        // CREATE: the configuration (secrets included) travels over the socket, never in argv.
        var create = JSONObject()
        create["library"] = .string(manifest.libraryPath)
        create["factory"] = .string(manifest.factory)
        create["provider"] = .string(provider)
        create["instance"] = .string(instance)
        create["log_level"] = .integer(Int(log.level.rawValue))
        var doc = JSONValue.object(create).jsonBytes
        // Append the config document as raw JSON (it is already validated JSON).
        doc.removeLast()
        doc.append(contentsOf: Array(",\"config\":".utf8))
        doc.append(contentsOf: config)
        doc.append(UInt8(ascii: "}"))
        guard helper.writer.send(Frame.create, bytes: doc) else {
            throw ProviderError(.process, "isolation: the plugin host process exited before it could be configured", provider: instance)
        }
        switch waiter.wait(seconds: Double(createWithin.milliseconds) / 1000) {
        case .ok: return helper
        case .error(let doc):
            // Nothing was created: the helper exits (DESTROY with no backend).
            _ = helper.writer.send(Frame.destroy, bytes: [])
            throw Wire.decodeError(doc, provider: instance)
        case .extension:
            throw ProviderError(.process, "isolation: the plugin host process answered CREATE with EXTENDED", provider: instance)
        case .timeout:
            helper.signal(SIGKILL)
            throw ProviderError(
                .timeout, "isolation: the plugin's create (loading \(manifest.libraryPath)) did not return within \(format(createWithin)); its helper process was killed",
                provider: instance, deadline: "total")
        case .died(let why):
            throw ProviderError(.process, "isolation: the plugin host process \(why) while loading \(manifest.libraryPath)", provider: instance)
        }
    }

    private func startReader(_ helper: Helper) {
        final class Box: @unchecked Sendable {
            let backend: ProcessBackend
            let helper: Helper
            init(_ b: ProcessBackend, _ h: Helper) {
                backend = b
                helper = h
            }
        }
        let arg = Unmanaged.passRetained(Box(self, helper)).toOpaque()
        pthread_create(&helper.thread, nil, { p in
            let box = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue()
            box.backend.read(box.helper)
            return nil
        }, arg)
    }

    /// The reader loop of one helper: events to their calls, logs to the sink;
    /// at end of stream, the helper is gone.
    private func read(_ helper: Helper) {
        var reader = FrameReader(fd: helper.fd)
        while let (type, payload) = reader.next() {
            switch type {
            case Frame.created:
                let doc = try? JSONValue.parse(bytes: Array(payload))
                if let l = doc?["library"], let report = libraryReport { report.set(l) }
                if let e = doc?["error"] { waiter.signal(.error(e)) } else {
                    // The proxy answers approvals only for a plugin that takes them.
                    if doc?["answer_approval"]?.boolValue == true {
                        raw.pointee.answer_approval = { s, call, json, length in ProcessBackend.me(s).forwardAnswer(call, json, length) }
                    } else {
                        raw.pointee.answer_approval = nil
                    }
                    waiter.signal(.ok)
                }
            case Frame.event:
                guard payload.count >= 16 else { continue }
                let id = payload.le(0, as: UInt64.self)
                let type = payload.le(8, as: UInt32.self)
                let index = payload.le(12, as: UInt32.self)
                deliver(id, type: type, index: index, data: payload.dropFirst(16))
            case Frame.extended:
                guard payload.count >= 4 else { continue }
                extensionWaiter.signal(.extension(slots: Int(payload[payload.startIndex + 1]), offered: payload.le(2, as: UInt16.self)))
            case Frame.log:
                guard payload.count >= 4 else { continue }
                let level = LogLevel(rawValue: min(4, payload.le(0, as: UInt32.self))) ?? .info
                log.log(level, "provider \(instance) (isolated)", String(decoding: payload.dropFirst(4), as: UTF8.self))
            default:
                continue
            }
        }
        helperDied(helper)
    }

    private func deliver(_ id: UInt64, type: UInt32, index: UInt32, data: ArraySlice<UInt8>) {
        let terminal = type == UInt32(DESCARTES_EVENT_RESULT) || type == UInt32(DESCARTES_EVENT_ERROR)
        let call = state.withLock { s -> ProxyCall? in
            guard let c = s.calls[id], !c.terminal else { return nil }
            if terminal {
                c.terminal = true
                if c.code == Self.initializeCode && type == UInt32(DESCARTES_EVENT_RESULT) { s.initialized = true }
            }
            return c
        }
        guard let call else { return }
        if let done = call.internalDone {
            if terminal {
                state.withLock { _ = $0.calls.removeValue(forKey: id) }
                done(type == UInt32(DESCARTES_EVENT_RESULT), Array(data))
            }
            return
        }
        data.withUnsafeBytes { bytes in
            var e = descartes_event_t()
            e.struct_size = UInt32(MemoryLayout<descartes_event_t>.size)
            e.type = type
            e.index = index
            e.data = bytes.baseAddress?.assumingMemoryBound(to: CChar.self)
            e.data_length = bytes.count
            call.onEvent?(call.ctx, &e)
        }
    }

    /// Reports every call in flight as failed and forgets the helper.
    private func helperDied(_ helper: Helper) {
        var why = "exited"
        Spawner.forget(helper.pid)
        // What the plugin started in the helper's process group (its own:
        // the spawner makes one per child) goes with it.
        if let reaped = helper.reap() {
            let status = reaped.status
            if status & 0x7f == SIGKILL && reaped.wasRunning {
                // Its end of the socket closed while it ran on (the plugin
                // closed the descriptor): it can take no more frames.
                why = "closed its connection to the host while still running and was killed"
            } else if status & 0x7f != 0 {
                let sig = status & 0x7f
                why = "was killed by signal \(sig) (\(signalName(sig)))"
            } else {
                why = "exited with status \((status >> 8) & 0xff)"
            }
        }
        helper.closed.withLock { closed in
            closed = true
            close(helper.fd)
        }
        pthread_detach(helper.thread)
        waiter.signal(.died(why))
        extensionWaiter.signal(.died(why))
        let (orphans, destroyed) = state.withLock { s -> ([ProxyCall], Bool) in
            guard s.helper === helper else { return ([], s.destroyed) }
            s.helper = nil
            s.crashes.append(monotonicSeconds())
            let open = s.calls.values.filter { !$0.terminal }
            for c in open { c.terminal = true }
            return (Array(open), s.destroyed)
        }
        if destroyed { return }
        if !orphans.isEmpty {
            log.log(.warning, "provider \(instance)", "the isolated plugin host process \(why); \(orphans.count) call(s) failed")
        }
        let error = ProviderError(
            .process, "the isolated plugin process for '\(instance)' (\(FileSystem.basename(manifest.libraryPath))) \(why)",
            provider: instance)
        let bytes = Wire.encode(error)
        for c in orphans {
            if let done = c.internalDone {
                state.withLock { _ = $0.calls.removeValue(forKey: c.id) }
                done(false, bytes)
                continue
            }
            ProcessBackend.deliverError(bytes, to: c.onEvent, c.ctx)
        }
    }

    // MARK: Operations

    private func startCall(_ code: UInt8, _ input: UnsafePointer<CChar>?, _ length: Int, _ onEvent: descartes_event_fn?, _ ctx: UnsafeMutableRawPointer?) -> OpaquePointer? {
        let data = input.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
        enum Plan {
            case send(Helper, [UInt8])
            case held
            case fail(ProviderError)
        }
        let (call, plan): (ProxyCall, Plan) = state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            let call = ProxyCall(id: id, code: code, onEvent: onEvent, ctx: ctx)
            s.calls[id] = call
            var frame = id.leBytes
            frame.append(code)
            frame.append(contentsOf: data)
            if s.destroyed { return (call, .fail(ProviderError(.backend, "the backend was destroyed", provider: instance))) }
            if s.helper == nil && s.held == nil {
                let now = monotonicSeconds()
                s.crashes = s.crashes.filter { now - $0 < 60 }
                if s.crashes.count >= 3 {
                    return (
                        call,
                        .fail(ProviderError(.process, "the isolated plugin process for '\(instance)' crashed \(s.crashes.count) times within a minute; it is not restarted until that passes", provider: instance))
                    )
                }
                // Restart on a thread of its own (never block the caller's
                // thread, which may be Swift's cooperative pool); calls wait
                // in `held` until the new helper is ready.
                s.held = []
                relaunch(replayInitialize: s.initialized && code != Self.initializeCode)
            }
            if s.held != nil {
                s.held!.append((id, frame))
                return (call, .held)
            }
            return (call, .send(s.helper!, frame))
        }
        switch plan {
        case .send(let helper, let frame):
            if !helper.writer.send(Frame.start, bytes: frame) {
                // The reader will report the death; nothing else to do here.
            }
        case .held:
            break
        case .fail(let error):
            state.withLock { _ in call.terminal = true }
            ProcessBackend.deliverError(Wire.encode(error), to: onEvent, ctx)
        }
        return OpaquePointer(Unmanaged.passRetained(call).toOpaque())
    }

    /// Starts a new helper after a crash, re-initializes the backend in it
    /// if it had been initialized, then sends the held calls (or fails them
    /// with the reason the restart failed).
    private func relaunch(replayInitialize: Bool) {
        let restart: @Sendable () -> Void = { [self] in
            let helper: Helper
            do throws(ProviderError) {
                helper = try spawnAndCreate()
            } catch {
                releaseHeld(failing: Wire.encode(error))
                return
            }
            // The extensions first (the codes of held calls refer to them),
            // on the socket ahead of any START.
            let known = state.withLock { s -> [(String, UInt8)] in
                s.helper = helper
                return s.extensions.filter { $0.table != nil }.map { ($0.id, $0.first) }
            }
            for (id, first) in known { _ = helper.writer.send(Frame.extension, bytes: [first] + Array(id.utf8)) }
            guard replayInitialize else {
                releaseHeld(failing: nil)
                return
            }
            let id = state.withLock { s -> UInt64 in
                let id = s.nextID
                s.nextID += 1
                s.calls[id] = ProxyCall(id: id, code: Self.initializeCode, onEvent: nil, ctx: nil) { [weak self] ok, bytes in
                    self?.releaseHeld(failing: ok ? nil : bytes)
                }
                return id
            }
            var frame = id.leBytes
            frame.append(Self.initializeCode)
            frame.append(contentsOf: Array("{}".utf8))
            _ = helper.writer.send(Frame.start, bytes: frame)
        }
        // On a thread of its own (the caller holds the state lock, and may
        // be on Swift's cooperative pool); without one, on a task.
        if !detachThread(restart) { Task.detached { restart() } }
    }

    /// Sends the calls held during a restart, or ends them with `error`.
    private func releaseHeld(failing error: [UInt8]?) {
        let (held, helper, failed) = state.withLock { s -> ([(UInt64, [UInt8])], Helper?, [ProxyCall]) in
            let held = s.held ?? []
            s.held = nil
            guard error != nil || s.helper == nil else { return (held, s.helper, []) }
            var open: [ProxyCall] = []
            for (id, _) in held {
                if let c = s.calls[id], !c.terminal {
                    c.terminal = true
                    open.append(c)
                }
            }
            return (held, nil, open)
        }
        if let helper {
            for (_, frame) in held { _ = helper.writer.send(Frame.start, bytes: frame) }
            return
        }
        let bytes = error ?? Wire.encode(ProviderError(.process, "the isolated plugin process for '\(instance)' could not be restarted", provider: instance))
        for c in failed { ProcessBackend.deliverError(bytes, to: c.onEvent, c.ctx) }
    }

    /// Delivers an ERROR event carrying an Error document.
    static func deliverError(_ bytes: [UInt8], to onEvent: descartes_event_fn?, _ ctx: UnsafeMutableRawPointer?) {
        bytes.withUnsafeBytes { b in
            var e = descartes_event_t()
            e.struct_size = UInt32(MemoryLayout<descartes_event_t>.size)
            e.type = UInt32(DESCARTES_EVENT_ERROR)
            e.data = b.baseAddress?.assumingMemoryBound(to: CChar.self)
            e.data_length = b.count
            onEvent?(ctx, &e)
        }
    }

    private func forward(_ type: UInt8, _ handle: OpaquePointer?) {
        guard let handle else { return }
        let call = Unmanaged<ProxyCall>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
        let helper = state.withLock { $0.helper }
        _ = helper?.writer.send(type, bytes: call.id.leBytes)
    }

    /// answer_approval: ANSWER with the call's id and the JSON.
    private func forwardAnswer(_ handle: OpaquePointer?, _ json: UnsafePointer<CChar>?, _ length: Int) {
        guard let handle, let json else { return }
        let call = Unmanaged<ProxyCall>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
        let helper = state.withLock { $0.helper }
        var frame = call.id.leBytes
        frame.append(contentsOf: UnsafeRawBufferPointer(start: json, count: length))
        _ = helper?.writer.send(Frame.answer, bytes: frame)
    }

    private func release(_ handle: OpaquePointer?) {
        guard let handle else { return }
        forward(Frame.release, handle)
        let call = Unmanaged<ProxyCall>.fromOpaque(UnsafeRawPointer(handle)).takeRetainedValue()
        state.withLock { _ = $0.calls.removeValue(forKey: call.id) }
    }

    /// Kills the helper (its backend was quarantined: a plugin function
    /// did not return by its deadline). Calls in flight end with `process`.
    func abandon() {
        state.withLock { $0.helper }?.signal(SIGKILL)
    }

    /// Stops the helper: DESTROY, then wait for it to exit (killing it after
    /// five seconds), and join the reader.
    private func destroy() {
        let helper = state.withLock { s -> Helper? in
            s.destroyed = true
            return s.helper
        }
        if let helper {
            _ = helper.writer.send(Frame.destroy, bytes: [])
            let deadline = monotonicSeconds() + 5
            var alive = true
            while alive && monotonicSeconds() < deadline {
                alive = helper.signal(0) && state.withLock { $0.helper === helper }
                if alive { usleep(10_000) }
            }
            if alive { helper.signal(SIGKILL) }
        }
        for e in state.withLock({ $0.extensions }) { e.table?.deallocate() }
        raw.deinitialize(count: 1)
        raw.deallocate()
    }

    // MARK: Extensions

    /// `get_extension`: the helper is asked once per id; the struct built
    /// from its answer has the plugin's slots, each a trampoline to the
    /// code that runs that slot in the helper. Nil when the plugin has no
    /// such extension (or the helper is not running to ask).
    private func extensionTable(_ id: String) -> UnsafeRawPointer? {
        extensionQuery.withLock { _ -> UnsafeRawPointer? in
            let (known, helper, first) = state.withLock { s -> (UnsafeMutableRawPointer??, Helper?, Int) in
                (s.extensions.first { $0.id == id }.map(\.table), s.helper, Frame.firstExtensionCode + s.extensions.count * BackendExtension.maxSlots)
            }
            if let known { return known.map { UnsafeRawPointer($0) } }
            guard let helper else { return nil }
            guard first + BackendExtension.maxSlots <= Int(DESCARTES_TRAMPOLINES) else {
                log.log(.warning, "provider \(instance)", "isolation: more than \(Frame.maxExtensions) extensions asked for; '\(id)' is not forwarded")
                return nil
            }
            extensionWaiter.reset()
            guard helper.writer.send(Frame.extension, bytes: [UInt8(first)] + Array(id.utf8)) else { return nil }
            guard case .extension(let slots, let offered) = extensionWaiter.wait(seconds: 30) else { return nil }
            var table: UnsafeMutableRawPointer? = nil
            if slots > 0 {
                let stride = MemoryLayout<UnsafeRawPointer>.stride
                let size = BackendExtension.firstSlotOffset + slots * stride
                let t = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<UnsafeRawPointer>.alignment)
                t.initializeMemory(as: UInt8.self, repeating: 0, count: size)
                t.storeBytes(of: UInt32(size), as: UInt32.self)
                for k in 0..<slots where offered & (1 << UInt16(k)) != 0 {
                    t.storeBytes(
                        of: descartes_trampoline(UInt32(first + k)), toByteOffset: BackendExtension.firstSlotOffset + k * stride,
                        as: descartes_operation_fn?.self)
                }
                table = t
            }
            state.withLock { $0.extensions.append((id, UInt8(first), table)) }
            return table.map { UnsafeRawPointer($0) }
        }
    }

    /// The code of `initialize` (its index in the table).
    static let initializeCode = UInt8(BackendOperation.base.firstIndex(of: .initialize)!)

    /// Every trampoline lands here: the proxy is `self`'s plugin_data.
    private static let dispatch: Void = descartes_set_dispatch { s, code, input, length, onEvent, ctx in
        me(s).startCall(UInt8(code), input, length, onEvent, ctx)
    }

    private static func me(_ s: UnsafeMutablePointer<descartes_backend_t>?) -> ProcessBackend {
        Unmanaged<ProcessBackend>.fromOpaque(s!.pointee.plugin_data!).takeUnretainedValue()
    }

    /// The proxy's descartes_backend_t: each operation of the table is the
    /// trampoline of its code.
    private func installVTable() {
        _ = Self.dispatch
        raw.pointee.struct_size = UInt32(MemoryLayout<descartes_backend_t>.size)
        raw.pointee.plugin_data = Unmanaged.passUnretained(self).toOpaque()
        for (code, _) in BackendOperation.base.enumerated() {
            BackendOperation.set(code, of: raw, to: descartes_trampoline(UInt32(code)))
        }
        raw.pointee.cancel = { s, call in ProcessBackend.me(s).forward(Frame.cancel, call) }
        raw.pointee.release = { s, call in ProcessBackend.me(s).release(call) }
        raw.pointee.get_extension = { s, id in ProcessBackend.me(s).extensionTable(String(cString: id!)) }
        raw.pointee.destroy = { s in ProcessBackend.me(s).destroy() }
    }
}

/// A one-shot rendezvous between a caller and the reader thread.
final class Waiter: @unchecked Sendable {
    enum Reply {
        case ok
        case error(JSONValue)
        /// EXTENDED: how many slots, and which are offered.
        case `extension`(slots: Int, offered: UInt16)
        case died(String)
        case timeout
    }
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var reply: Reply?

    init() {
        pthread_mutex_init(&mutex, nil)
        initMonotonicCondition(&cond)
    }

    func reset() {
        pthread_mutex_lock(&mutex)
        reply = nil
        pthread_mutex_unlock(&mutex)
    }

    func signal(_ r: Reply) {
        pthread_mutex_lock(&mutex)
        if reply == nil { reply = r }
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
    }

    func wait(seconds: Double) -> Reply {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        var ts = monotonicDeadline(after: seconds)
        while reply == nil {
            if pthread_cond_timedwait(&cond, &mutex, &ts) == ETIMEDOUT { return .timeout }
        }
        return reply!
    }
}

func monotonicSeconds() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec
}

extension PluginLibrary {
    /// The library as CREATED describes it (Frames.swift).
    package var report: JSONValue {
        ["name": .string(name), "version": .string(version), "abi": .integer(abiVersion), "factories": .array(factoryIDs.map { .string($0) })]
    }
}

/// What the library of a backend being created said about itself, filled
/// in process or from the helper's CREATED: name, version, ABI, factories.
package final class LibraryReport: Sendable {
    private let value = Lock<JSONValue?>(nil)
    package init() {}
    func set(_ v: JSONValue) { value.withLock { $0 = v } }
    package var library: JSONValue? { value.withLock { $0 } }
}
