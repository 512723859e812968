import Descartes
import Glibc
import Testing
import DescartesSupport

/// The exact-match response cache in front of the scripted plugin.
@Suite struct CacheTests {
    let dir = PluginDir().addScripted()

    func cached(_ limits: CacheLimits = CacheLimits(), clock: DescartesClock = .continuous) throws -> (CacheBackend, any ModelBackend) {
        let plugin = try dir.factory(clock: clock).create("scripted")
        return (CacheBackend(plugin, cache: ResponseCache(limits: limits, clock: clock)), plugin)
    }

    func texts(_ events: [StreamEvent]) -> [String] {
        events.compactMap { if case .textDelta(let t) = $0 { return t }; return nil }
    }

    func all(_ s: ModelStream) async throws -> [StreamEvent] {
        var out: [StreamEvent] = []
        for try await e in s { out.append(e) }
        return out
    }

    @Test func aRepeatedRequestIsAnsweredFromTheCache() async throws {
        let (b, plugin) = try cached()
        let first = try await b.complete(.script(["words", "usage:10,20"], prompt: "cache me please"))
        #expect(first.metadata["cache"] == nil)
        #expect(first.costUSD! > 0)
        var again = ModelRequest.script(["words", "usage:10,20"], prompt: "cache me please")
        // Deadlines and the caller's labels do not change the answer.
        again.deadlines = Deadlines(total: .seconds(5))
        again.metadata = ["trace": "abc"]
        let second = try await b.complete(again)
        #expect(second.content == "cache me please")
        #expect(second.usage == first.usage)
        #expect(second.costUSD == 0)
        #expect(second.metadata["cache"] == "hit")
        #expect(try await pluginCalls(plugin) == 1)
        let s = b.cache.stats
        #expect(s.hits == 1 && s.misses == 1 && s.stores == 1 && s.entries == 1)
    }

    @Test func whatChangesTheAnswerChangesTheKey() async throws {
        let (b, plugin) = try cached()
        let base = ModelRequest.script(["text:x"])
        var other = [base, base, base, base]
        other[0].model = "scripted-large"
        other[1].temperature = 0.5
        other[2].options["cache_control"] = ["type": "ephemeral"]
        other[3].messages.append(.user("one more"))
        _ = try await b.complete(base)
        for r in other { _ = try await b.complete(r) }
        #expect(try await pluginCalls(plugin) == 5)
        #expect(b.cache.stats.misses == 5)
        // Options in another order are the same request.
        var a = base
        a.options = ["x": 1, "y": ["b": 2, "a": 1], "script": ["text:x"]]
        var c = base
        c.options = ["script": ["text:x"], "y": ["a": 1, "b": 2], "x": 1]
        #expect(ResponseCache.key(for: a, namespace: "n") == ResponseCache.key(for: c, namespace: "n"))
        #expect(ResponseCache.key(for: a, namespace: "n") != ResponseCache.key(for: a, namespace: "m"))
    }

    @Test func promptCachingHintsPassThroughUntouched() async throws {
        let (b, _) = try cached()
        var r = ModelRequest.script(["echo-options"])
        r.options["cache_control"] = ["type": "ephemeral", "ttl": "5m"]
        let answer = try await b.complete(r)
        #expect(try JSONValue.parse(answer.content) == ["cache_control": ["type": "ephemeral", "ttl": "5m"]])
    }

    @Test func aStreamReplaysTheCachedEvents() async throws {
        let (b, plugin) = try cached()
        let request = ModelRequest.script(["reasoning:hmm", "words", "tools:1"], prompt: "word by word")
        let live = try await all(b.stream(request))
        let replay = try await all(b.stream(request))
        #expect(texts(replay) == ["word", " by", " word"])
        #expect(Array(replay.dropLast()) == Array(live.dropLast()))
        guard case .finish(let r) = replay.last else { Issue.record("no finish"); return }
        #expect(r.metadata["cache"] == "hit")
        #expect(r.toolCalls.count == 1)
        #expect(try await pluginCalls(plugin) == 1)
        // A completion's answer replays as a stream too, and the other way round.
        let c = try await b.complete(request)
        #expect(c.content == "word by word")
        #expect(c.metadata["cache"] == "hit")
    }

    @Test func leastRecentlyUsedGoesFirst() async throws {
        let (b, plugin) = try cached(CacheLimits(maxEntries: 2))
        let a = ModelRequest.script(["text:a"]), bb = ModelRequest.script(["text:b"]), c = ModelRequest.script(["text:c"])
        _ = try await b.complete(a)
        _ = try await b.complete(bb)
        _ = try await b.complete(a)  // a is now the most recent
        _ = try await b.complete(c)  // evicts b
        #expect(b.cache.stats.evictions == 1)
        #expect(try await b.complete(a).metadata["cache"] == "hit")
        #expect(try await b.complete(bb).metadata["cache"] == nil)
        #expect(try await pluginCalls(plugin) == 4)
    }

    @Test func theByteBoundHolds() async throws {
        // Each entry holds the 1500 characters three times (the key's script,
        // the content, the replayed event): about 5 KB, so two fit in 12 KB.
        let (b, _) = try cached(CacheLimits(maxEntries: 100, maxBytes: 12_000))
        let big = String(repeating: "x", count: 1500)
        for i in 0..<5 { _ = try await b.complete(.script(["text:\(i)\(big)"])) }
        let s = b.cache.stats
        #expect(s.bytes <= 12_000 && s.bytes > 8000, "\(s.bytes)")
        #expect(s.entries == 2)
        #expect(s.evictions == 3)
        #expect(s.stores == 5)
        // Larger than the whole bound: not kept at all.
        _ = try await b.complete(.script(["text:" + String(repeating: "y", count: 20_000)]))
        #expect(b.cache.stats.stores == 5)
        #expect(b.cache.stats.entries == 2)
    }

    @Test func entriesExpire() async throws {
        let clock = ManualClock()
        let (b, plugin) = try cached(CacheLimits(ttl: .seconds(2)), clock: DescartesClock(clock))
        _ = try await b.complete(.script(["text:soon stale"]))
        clock.advance(by: .milliseconds(1999))
        #expect(try await b.complete(.script(["text:soon stale"])).metadata["cache"] == "hit")
        clock.advance(by: .milliseconds(1))
        #expect(try await b.complete(.script(["text:soon stale"])).metadata["cache"] == nil)
        #expect(b.cache.stats.expirations == 1)
        #expect(try await pluginCalls(plugin) == 2)
    }

    @Test func entriesOnDiskExpireToo() async throws {
        // The disk store outlives the process, so its entries carry a wall
        // clock time (whole seconds): the manual clock's, moving with it.
        let clock = ManualClock()
        let store = TempDir("descartes-cache-ttl")
        let limits = CacheLimits(ttl: .seconds(2), directory: store.file("responses"))
        let (first, plugin) = try cached(limits, clock: DescartesClock(clock))
        let request = ModelRequest.script(["text:kept a while"])
        _ = try await first.complete(request)
        clock.advance(by: .milliseconds(1999))
        // A new cache (a new process) over the same directory finds it, with
        // the second left.
        let second = ResponseCache(limits: limits, clock: DescartesClock(clock))
        #expect(second.lookup(ResponseCache.key(for: request, namespace: plugin.name)) != nil)
        #expect(second.stats.diskHits == 1)
        clock.advance(by: .milliseconds(1))
        let third = ResponseCache(limits: limits, clock: DescartesClock(clock))
        #expect(third.lookup(ResponseCache.key(for: request, namespace: plugin.name)) == nil)
        #expect(third.stats.expirations == 1)
        #expect(try FileSystem.list(store.file("responses")).isEmpty)
    }

    @Test func errorsAreNotCached() async throws {
        let (b, plugin) = try cached()
        for _ in 0..<2 { _ = await providerError { _ = try await b.complete(.script(["error:provider_unavailable:down"])) } }
        #expect(try await pluginCalls(plugin) == 2)
        #expect(b.cache.stats.stores == 0)
    }

    @Test func theDiskStoreOutlivesTheProcessCache() async throws {
        let store = TempDir("descartes-cache")
        let limits = CacheLimits(directory: store.file("responses"))
        let (first, plugin) = try cached(limits)
        let request = ModelRequest.script(["words"], prompt: "kept on disk")
        _ = try await all(first.stream(request))
        let files = try FileSystem.list(store.file("responses"))
        #expect(files.count == 1)
        #expect(files[0].count == 64 + 5)  // sha256 hex + ".json"
        #expect(FileSystem.info(store.file("responses/" + files[0]))!.mode & 0o777 == 0o600)
        // A new cache (another process) over the same directory.
        let second = CacheBackend(plugin, cache: ResponseCache(limits: limits))
        let events = try await all(second.stream(request))
        #expect(texts(events) == ["kept", " on", " disk"])
        #expect(second.cache.stats.diskHits == 1)
        #expect(try await pluginCalls(plugin) == 1)
        // A corrupt file is a miss, and is removed.
        store.write("responses/" + files[0], "{not json")
        let third = CacheBackend(plugin, cache: ResponseCache(limits: limits))
        _ = try await third.complete(request)
        #expect(third.cache.stats.diskErrors == 1)
        #expect(try await pluginCalls(plugin) == 2)
    }

    @Test func diskFilesAreNamedByTheSHA256OfTheirKey() async throws {
        // Checked against coreutils' sha256sum, so the digest is the standard one.
        let store = TempDir("descartes-cache")
        let (b, _) = try cached(CacheLimits(directory: store.path))
        for prompt in ["", "abc", String(repeating: "long prompt ", count: 200), "ünïcødé ✓"] {
            let request = ModelRequest.script(["text:x"], prompt: prompt)
            _ = try await b.complete(request)
            let key = ResponseCache.key(for: request, namespace: "scripted")
            let sum = await Proc.run(["sha256sum"], stdin: key)
            let digest = String(sum.stdout.prefix(64))
            #expect(FileSystem.exists(store.file(digest + ".json")), "\(digest) for \(prompt.prefix(20))")
        }
    }
}
