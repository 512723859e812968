import Glibc
import Synchronization
import DescartesSupport

/// Bounds of a `ResponseCache`.
public struct CacheLimits: Sendable, Hashable {
    /// The most responses kept in memory.
    public var maxEntries: Int
    /// The most bytes (of text: keys, answers, events) kept in memory.
    public var maxBytes: Int
    /// How long a response stays valid; nil for ever.
    public var ttl: Duration?
    /// A directory for the on-disk store (one file per response, named by
    /// the SHA-256 of its key), bounded by the same limits; nil for memory
    /// only.
    public var directory: String?

    public init(maxEntries: Int = 1000, maxBytes: Int = 64 << 20, ttl: Duration? = .seconds(3600), directory: String? = nil) {
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
        self.ttl = ttl
        self.directory = directory
    }
}

/// An exact-match cache of responses, least recently used first out,
/// bounded by entries and bytes, with a time to live and an optional disk
/// store. One instance is meant to be shared by every task and backend of
/// the process (`CacheBackend` wraps a backend with it).
///
/// This is not the providers' prompt caching: Anthropic's `cache_control`
/// hints in `ModelRequest.options` go to the provider untouched (they are
/// part of this cache's key like every other option).
public final class ResponseCache: Sendable {
    /// A cached answer: the response and the stream events that produced it
    /// (without the finish event), replayed to a streaming caller; or, for
    /// an embedding (`CacheBackend.embed`), one text's vector and the model
    /// that made it (`response` empty but for its `model`, no events).
    package struct Entry: Sendable, Hashable {
        package var response: ModelResponse
        package var events: [StreamEvent]
        /// One text's embedding, for an embedding entry.
        package var vector: [Float]?

        package init(response: ModelResponse, events: [StreamEvent]) {
            self.response = response
            self.events = events
        }

        /// An embedding entry: `vector`, made by `model`.
        package init(vector: [Float], model: String) {
            self.response = ModelResponse(model: model)
            self.events = []
            self.vector = vector
        }

        var bytes: Int {
            var n = 256 + response.content.utf8.count + (response.reasoning?.utf8.count ?? 0) + (vector?.count ?? 0) * 4
            for c in response.toolCalls { n += c.id.utf8.count + c.name.utf8.count + c.arguments.utf8.count }
            for e in events {
                switch e {
                case .textDelta(let t), .reasoningDelta(let t): n += t.utf8.count + 16
                case .toolCallDelta(_, let a): n += a.utf8.count + 16
                case .notice(_, let m): n += m.utf8.count + 16
                default: n += 32
                }
            }
            return n
        }
    }

    /// What the cache has done so far.
    public struct Stats: Sendable, Hashable {
        public var hits = 0
        public var misses = 0
        public var stores = 0
        /// Entries pushed out by the entry or byte bound.
        public var evictions = 0
        /// Entries found past their time to live.
        public var expirations = 0
        /// Of the hits, those read from the disk store.
        public var diskHits = 0
        public var diskWrites = 0
        /// Disk reads or writes that failed (the cache then works from memory).
        public var diskErrors = 0
        /// Of the hits, those read from the shared store (`shared:`).
        public var sharedHits = 0
        /// Entries sent to the shared store (after the answer, `SharedStore.send`).
        public var sharedWrites = 0
        /// Entries and bytes in memory now.
        public var entries = 0
        public var bytes = 0
    }

    public let limits: CacheLimits
    /// What the time to live is counted on (its `unixTime` for the disk
    /// store).
    public let clock: DescartesClock

    private struct Node {
        var key: String
        var entry: Entry
        var bytes: Int
        var expires: ContinuousClock.Instant?
        var prev: Int
        var next: Int
    }

    /// A doubly linked list over an array (most recent at `head`), and an
    /// index by key: lookups, stores and evictions are O(1).
    private struct State {
        var nodes: [Node] = []
        var free: [Int] = []
        var index: [String: Int] = [:]
        var head = -1
        var tail = -1
        var stats = Stats()
        var writesSincePrune = 0
        var writing: Set<String> = []

        mutating func unlink(_ i: Int) {
            let n = nodes[i]
            if n.prev >= 0 { nodes[n.prev].next = n.next } else { head = n.next }
            if n.next >= 0 { nodes[n.next].prev = n.prev } else { tail = n.prev }
        }

        mutating func pushFront(_ i: Int) {
            nodes[i].prev = -1
            nodes[i].next = head
            if head >= 0 { nodes[head].prev = i }
            head = i
            if tail < 0 { tail = i }
        }

        mutating func remove(_ i: Int) {
            unlink(i)
            index[nodes[i].key] = nil
            stats.entries -= 1
            stats.bytes -= nodes[i].bytes
            nodes[i].entry = Entry(response: ModelResponse(), events: [])
            nodes[i].key = ""
            free.append(i)
        }

        mutating func insert(_ node: Node) {
            let i: Int
            if let f = free.popLast() {
                nodes[f] = node
                i = f
            } else {
                nodes.append(node)
                i = nodes.count - 1
            }
            index[node.key] = i
            stats.entries += 1
            stats.bytes += node.bytes
            pushFront(i)
        }
    }

    private let state = Lock(State())

    /// Where it reports disk entries it cannot read or write (warnings).
    public let logSink: LogSink

    /// The shared store's part of the cache (`shared:`): looked up after
    /// memory and before the disk, written with every store.
    package let shared: SharedCache?

    public convenience init(limits: CacheLimits = CacheLimits(), clock: DescartesClock = .continuous, logSink: LogSink = LogSink()) {
        self.init(limits: limits, clock: clock, logSink: logSink, shared: nil)
    }

    package init(limits: CacheLimits, clock: DescartesClock, logSink: LogSink, shared: SharedCache?) {
        self.limits = limits
        self.clock = clock
        self.logSink = logSink
        self.shared = shared
    }

    public var stats: Stats { state.withLock { $0.stats } }

    /// The cache key of `request` sent to the provider instance `namespace`:
    /// the request as canonical JSON (members sorted, absent and default
    /// fields alike), without what does not change the answer (deadlines,
    /// the caller's metadata labels).
    package static func key(for request: ModelRequest, namespace: String) -> String {
        var r = request
        r.deadlines = Deadlines()
        r.metadata = [:]
        let body = Wire.json(r).canonical.jsonText
        return "\(namespace)\n\(body)"
    }

    /// The cache key of one text's embedding by the provider instance
    /// `namespace`: content-addressed by the model asked for (empty: the
    /// provider's default), the dimensions asked for (empty: the model's
    /// own) and the text. The second line, `embedding`, cannot begin a
    /// request's key (a JSON object there).
    package static func embeddingKey(_ text: String, model: String?, dimensions: Int?, namespace: String) -> String {
        "\(namespace)\nembedding\n\(model ?? "")\n\(dimensions.map(String.init) ?? "")\n\(text)"
    }

    /// The entry for `key`, if there is a live one (memory first, then the
    /// shared store, then disk).
    package func lookup(_ key: String) -> Entry? { lookup(key, admitting: nil) }

    /// What a shared cache's lookup also checks when the entry is not in
    /// memory: the provider's limits for the request (`CacheBackend`), so
    /// that a miss costs one round trip, the admission handed down to the
    /// limiter through `scope`.
    package struct Admitting: Sendable {
        var limits: SharedLimits
        var tokens: Int
        var maxWait: Duration?
        var model: String?
        var scope: SharedScope
    }

    /// The entry for `key`, as `lookup(_:)`; in the shared store together
    /// with `admitting`'s check (one script), whose outcome on a miss goes
    /// to its scope.
    package func lookup(_ key: String, admitting: Admitting?) -> Entry? {
        let now = clock.now
        let found: Entry? = state.withLock { s in
            guard let i = s.index[key] else { return nil }
            if let e = s.nodes[i].expires, e <= now {
                s.remove(i)
                s.stats.expirations += 1
                return nil
            }
            s.unlink(i)
            s.pushFront(i)
            s.stats.hits += 1
            return s.nodes[i].entry
        }
        if let found { return found }
        if let shared {
            var document: (JSONValue, Duration?)?
            if let a = admitting {
                switch shared.lookup(key, admitting: a.limits, tokens: a.tokens, maxWait: a.maxWait, model: a.model) {
                case .success(.entry(let doc?, let remaining)): document = (doc, remaining)
                case .success(.admission(let outcome)): a.scope.admitted(outcome, by: a.limits, model: a.model)
                case .success(.entry(nil, _)), .failure: break
                }
            } else {
                document = shared.get(key)
            }
            if let (doc, remaining) = document, let entry = Self.entry(doc, key: key) {
                state.withLock { s in
                    s.stats.hits += 1
                    s.stats.sharedHits += 1
                }
                insertMemory(key, entry, ttl: remaining)
                return entry
            }
        }
        if limits.directory != nil, let (entry, remaining) = readDisk(key) {
            state.withLock { s in
                s.stats.hits += 1
                s.stats.diskHits += 1
            }
            insertMemory(key, entry, ttl: remaining)
            return entry
        }
        state.withLock { $0.stats.misses += 1 }
        return nil
    }

    /// Keeps `entry` under `key` (in memory, and on disk when configured).
    /// An entry larger than the byte bound is not kept.
    package func store(_ key: String, _ entry: Entry) {
        guard insertMemory(key, entry, ttl: limits.ttl) else { return }
        state.withLock { $0.stats.stores += 1 }
        if let shared {
            // At rest, never a secret the factory knows (as on disk).
            let text = logSink.redactor.redact(String(decoding: JSONValue.object(document(key, entry)).jsonBytes, as: UTF8.self))
            shared.set(key, Array(text.utf8))
            state.withLock { $0.stats.sharedWrites += 1 }
        }
        if limits.directory != nil { writeDisk(key, entry) }
    }

    /// An entry as the disk store and the shared store keep it.
    func document(_ key: String, _ entry: Entry) -> JSONObject {
        var doc: JSONObject = ["version": 1, "key": .string(key), "created_unix": .integer(clock.unixTime)]
        if let vector = entry.vector {
            doc["vector"] = .array(vector.map { .number(Double($0)) })
            doc["model"] = .string(entry.response.model)
        } else {
            doc["response"] = Wire.json(entry.response)
            doc["events"] = .array(entry.events.map(Wire.json))
        }
        if let ttl = limits.ttl { doc["expires_unix"] = .integer(clock.unixTime + max(1, Int(ttl.seconds.rounded(.up)))) }
        return doc
    }

    /// The entry of a document (nil when it is not one for `key`).
    static func entry(_ doc: JSONValue, key: String) -> Entry? {
        // The digest names the file or the Redis key; the key inside proves it is ours.
        guard doc["version"]?.intValue == 1, doc["key"]?.stringValue == key else { return nil }
        if let items = doc["vector"]?.arrayValue {
            var vector: [Float] = []
            vector.reserveCapacity(items.count)
            for x in items {
                guard let d = x.doubleValue else { return nil }
                vector.append(Float(d))
            }
            return Entry(vector: vector, model: doc["model"]?.stringValue ?? "")
        }
        guard let response = try? Wire.decodeResponse(doc["response"] ?? .null) else { return nil }
        var events: [StreamEvent] = []
        for e in doc["events"]?.arrayValue ?? [] {
            guard let ev = try? Wire.decodeEvent(e) else { return nil }
            events.append(ev)
        }
        return Entry(response: response, events: events)
    }

    @discardableResult
    private func insertMemory(_ key: String, _ entry: Entry, ttl: Duration?) -> Bool {
        let size = entry.bytes + key.utf8.count
        guard size <= limits.maxBytes, limits.maxEntries > 0 else { return false }
        let expires = ttl.map { clock.now + $0 }
        state.withLock { s in
            if let i = s.index[key] { s.remove(i) }
            s.insert(Node(key: key, entry: entry, bytes: size, expires: expires, prev: -1, next: -1))
            while s.stats.entries > limits.maxEntries || s.stats.bytes > limits.maxBytes, s.tail >= 0 {
                s.remove(s.tail)
                s.stats.evictions += 1
            }
        }
        return true
    }

    /// Forgets every entry (memory and disk).
    public func clear() {
        state.withLock { s in
            let stats = s.stats
            s = State()
            s.stats = stats
            s.stats.entries = 0
            s.stats.bytes = 0
        }
        if let dir = limits.directory, let names = try? FileSystem.list(dir) {
            for n in names where n.hasSuffix(".json") { unlink(FileSystem.join(dir, n)) }
        }
    }

    // MARK: Disk store

    private func path(for key: String) -> String? {
        limits.directory.map { FileSystem.join($0, SHA256.hex(key) + ".json") }
    }

    private func readDisk(_ key: String) -> (Entry, Duration?)? {
        guard let path = path(for: key), FileSystem.exists(path) else { return nil }
        do {
            let doc = try JSONValue.parse(bytes: FileSystem.readBytes(path, limit: max(limits.maxBytes, 1 << 20) * 2))
            // The digest names the file; the key inside proves it is ours.
            guard doc["version"]?.intValue == 1, doc["key"]?.stringValue == key else { return nil }
            var remaining: Duration? = nil
            if let expires = doc["expires_unix"]?.intValue {
                let left = expires - clock.unixTime
                if left <= 0 {
                    unlink(path)
                    state.withLock { $0.stats.expirations += 1 }
                    return nil
                }
                remaining = .seconds(left)
            }
            guard let entry = Self.entry(doc, key: key) else { throw WireError("not a cache entry (response, events or vector)") }
            return (entry, remaining)
        } catch {
            logSink.log(.warning, "cache", "\(path): unreadable cache entry, removed: \(error)")
            unlink(path)
            state.withLock { $0.stats.diskErrors += 1 }
            return nil
        }
    }

    private func writeDisk(_ key: String, _ entry: Entry) {
        guard let dir = limits.directory, let path = path(for: key) else { return }
        // Two tasks storing the same answer at once: one write is enough.
        let mine = state.withLock { s -> Bool in s.writing.insert(key).inserted }
        guard mine else { return }
        defer { state.withLock { _ = $0.writing.remove(key) } }
        let doc = document(key, entry)
        do {
            try FileSystem.makeDirectories(dir, mode: 0o700)
            // At rest, never a secret the factory knows (a server that
            // echoes the key back): the file holds the redacted answer.
            let text = logSink.redactor.redact(String(decoding: JSONValue.object(doc).jsonBytes, as: UTF8.self))
            try FileSystem.writeAtomically(path, Array(text.utf8), mode: 0o600)
        } catch {
            logSink.log(.warning, "cache", "cannot write the cache entry: \(error)")
            state.withLock { $0.stats.diskErrors += 1 }
            return
        }
        let prune = state.withLock { s -> Bool in
            s.stats.diskWrites += 1
            s.writesSincePrune += 1
            if s.writesSincePrune >= 32 {
                s.writesSincePrune = 0
                return true
            }
            return false
        }
        if prune { pruneDisk() }
    }

    /// Keeps the disk store within the limits: oldest files out first.
    func pruneDisk() {
        guard let dir = limits.directory, let names = try? FileSystem.list(dir) else { return }
        var files: [(path: String, mtime: Int, size: Int)] = []
        for n in names where n.hasSuffix(".json") {
            let p = FileSystem.join(dir, n)
            var st = stat()
            guard stat(p, &st) == 0 else { continue }
            files.append((p, Int(st.st_mtim.tv_sec), Int(st.st_size)))
        }
        files.sort { $0.mtime > $1.mtime }
        var count = 0
        var bytes = 0
        for f in files {
            count += 1
            bytes += f.size
            if count > limits.maxEntries || bytes > limits.maxBytes { unlink(f.path) }
        }
    }
}

/// Answers repeated requests from a `ResponseCache` instead of the backend
/// it wraps. A hit costs nothing (`costUSD` 0), carries the usage of the
/// original answer and `metadata["cache"] = "hit"`; a streaming caller gets
/// the original events replayed. Only complete answers are kept (not
/// errors, not answers that finished with `error`).
///
/// With `embeddings`, `embed` is cached too, one entry per text in the same
/// cache (same bounds, time to live and disk store), content-addressed by
/// the provider instance (`namespace`), the model and dimensions asked for,
/// and the text (`ResponseCache.embeddingKey`): a batch whose texts were all
/// seen does not call the provider, and one with some hits sends only the
/// misses (each distinct text once), the answer's vectors in the order of
/// the inputs. The usage is that of the call made for the misses (zero
/// when there was none).
public struct CacheBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let cache: ResponseCache
    /// What keys are scoped by (the provider instance's name by default).
    public let namespace: String
    /// Whether `embed` is cached (providers.yaml's `cache.embeddings`).
    public let embeddings: Bool
    /// The provider's limits in the shared store, checked by the shared
    /// lookup of a request that misses memory, in the same script
    /// (`SharedLimits.lookupScript`): the limiter's first attempt uses that
    /// admission instead of its own round trip. Nil for a Redis Cluster
    /// (`shared.cluster`), without `shared:`, or without a cache there.
    package let admitting: SharedLimits?

    public init(_ inner: any ModelBackend, cache: ResponseCache, namespace: String? = nil, embeddings: Bool = true) {
        self.init(inner, cache: cache, namespace: namespace, embeddings: embeddings, admitting: nil)
    }

    package init(_ inner: any ModelBackend, cache: ResponseCache, namespace: String? = nil, embeddings: Bool, admitting: SharedLimits?) {
        self.inner = inner
        self.cache = cache
        self.namespace = namespace ?? inner.name
        self.embeddings = embeddings
        self.admitting = cache.shared == nil ? nil : admitting
    }

    /// The scope of one request through the shared store (`SharedScope`):
    /// nil without one.
    func scope() -> SharedScope? { cache.shared.map { SharedScope(store: $0.store) } }

    /// What the shared lookup of `request` also checks (`admitting`).
    func admission(_ request: ModelRequest, _ scope: SharedScope?) -> ResponseCache.Admitting? {
        guard let limits = admitting, let scope else { return nil }
        return ResponseCache.Admitting(
            limits: limits, tokens: RateLimitedBackend.estimate(request), maxWait: request.deadlines.total,
            model: request.model.flatMap { limits.models[$0] != nil ? $0 : nil }, scope: scope)
    }

    public func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings {
        guard embeddings else { return try await inner.embed(request) }
        let keys = request.inputs.map { ResponseCache.embeddingKey($0, model: request.model, dimensions: request.dimensions, namespace: namespace) }
        var vectors = [[Float]?](repeating: nil, count: keys.count)
        var model = ""
        // The distinct texts not in the cache, in order of first appearance.
        var misses: [Int] = []
        var missed: [String: Int] = [:]
        for (i, key) in keys.enumerated() where missed[key] == nil {
            if let e = cache.lookup(key), let v = e.vector {
                vectors[i] = v
                model = e.response.model
            } else {
                missed[key] = misses.count
                misses.append(i)
            }
        }
        var answer = Embeddings(vectors: [], model: model, provider: inner.name)
        if !misses.isEmpty {
            var sent = request
            sent.inputs = misses.map { request.inputs[$0] }
            answer = try await inner.embed(sent)
            guard answer.vectors.count == misses.count else {
                throw ProviderError(
                    .invalidResponse, "asked for \(misses.count) embeddings, got \(answer.vectors.count)", provider: answer.provider.isEmpty ? inner.name : answer.provider)
            }
            for (j, i) in misses.enumerated() {
                cache.store(keys[i], ResponseCache.Entry(vector: answer.vectors[j], model: answer.model))
            }
        }
        // The misses, and the repeats of a missed text later in the batch.
        for i in vectors.indices where vectors[i] == nil {
            if let j = missed[keys[i]] { vectors[i] = answer.vectors[j] }
        }
        let all = vectors.map { $0 ?? [] }
        return Embeddings(vectors: all, dimensions: all.first?.count ?? 0, model: answer.model, usage: answer.usage, provider: answer.provider)
    }

    static func hit(_ r: ModelResponse) -> ModelResponse {
        var r = r
        r.costUSD = 0
        r.attempts = []
        r.metadata["cache"] = "hit"
        return r
    }

    static func cacheable(_ r: ModelResponse) -> Bool { r.finishReason != .error }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let key = ResponseCache.key(for: request, namespace: namespace)
        let scope = scope()
        // Ends the request's scope: its writes go after the answer, in one batch.
        defer { scope?.finish() }
        if let e = cache.lookup(key, admitting: admission(request, scope)) { return Self.hit(e.response) }
        let result = await SharedScope.$current.withValue(scope) { () async -> Result<ModelResponse, ProviderError> in
            do throws(ProviderError) {
                let r = try await inner.complete(request)
                if Self.cacheable(r) {
                    var stored = r
                    stored.attempts = []
                    cache.store(key, ResponseCache.Entry(response: stored, events: Streams.events(of: stored)))
                }
                return .success(r)
            } catch { return .failure(error) }
        }
        return try result.get()
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let key = ResponseCache.key(for: request, namespace: namespace)
        let cache = self.cache
        let inner = self.inner
        let scope = scope()
        let admission = admission(request, scope)
        return Streams.make(provider: inner.name) { out in
            defer { scope?.finish() }
            if let e = cache.lookup(key, admitting: admission) {
                for event in e.events { out.yield(event) }
                out.yield(.finish(Self.hit(e.response)))
                return
            }
            try await SharedScope.$current.withValue(scope) { try await Self.forward(inner.stream(request), key: key, cache: cache, to: out) }
        }
    }

    /// Passes a missed request's stream on to `out`, and stores its answer.
    static func forward(_ stream: ModelStream, key: String, cache: ResponseCache, to out: Streams.Continuation) async throws {
        var recorded: [StreamEvent] = []
        var restarted = false
        for try await event in stream {
            switch event {
            case .finish(let r):
                if Self.cacheable(r) {
                    var stored = r
                    stored.attempts = []
                    // After a restart the events hold a failed attempt's
                    // beginning too: replay the answer instead.
                    cache.store(key, ResponseCache.Entry(response: stored, events: restarted ? Streams.events(of: stored) : recorded))
                }
            case .notice(_, let message):
                // Diagnostics of that run, not part of the answer.
                if message.hasPrefix(RetryPolicy.restartNotice) { restarted = true }
            default: recorded.append(event)
            }
            out.yield(event)
        }
    }
}
