import Glibc
import DescartesCore
import DescartesSupport

/// Plugin manifests already read and checked, kept between runs so that
/// discovery does not parse every manifest again at every start.
///
/// Why a cache: reading and checking the 23 installed manifests costs
/// about 13 M instructions in libyaml alone (measured on its own, a C
/// program parsing the same files to events), against 20 M for the whole of
/// `curl --version`; `descartes plugins list` reads them all. See
/// docs/benchmarks.md, "Where a one-shot command's time goes".
///
/// What is kept: for each manifest that loaded without a problem, its path,
/// the file's identity when it was read (`FileSystem.Identity`: device,
/// inode, size, modification and status-change times in nanoseconds) and
/// the `PluginManifest` that `PluginManifest.load(path:)` made of it. A
/// manifest is answered from the cache only when its file's identity now is
/// the one recorded; anything else is read and checked again. Any write to
/// a file changes its status-change time (which, unlike the modification
/// time, cannot be set back); a file renamed over it has another inode. A
/// file is recorded only when its times are more than a second older than
/// the moment its reading began, so a write in the same tick of the file
/// system's clock as the read cannot go unseen (git's "racily clean" case).
/// Manifests with problems are never kept: their errors (file, line, key)
/// come from reading them each time.
///
/// The cache is one file, `$XDG_CACHE_HOME/descartes/manifests.cache`
/// (default `~/.cache/descartes/manifests.cache`), mode 0600, written
/// atomically. It names the executable that wrote it (device, inode, size,
/// modification time): another build, whose checks may differ, starts
/// afresh. A cache file that is unreadable, damaged or of another format is
/// ignored and replaced. It is not used at all in secure execution
/// (setuid, setgid), and as root only when `FileTrust` would trust it
/// (owned by root, not writable by group or others, nor its directory).
package final class ManifestCache {
    /// The file, or nil: no cache (every manifest is read).
    let path: String?
    /// What the file held when opened, by manifest path.
    private var stored: [String: (identity: FileSystem.Identity, manifest: PluginManifest)] = [:]
    /// What this run read or confirmed, by manifest path.
    private var seen: [String: (identity: FileSystem.Identity, manifest: PluginManifest)] = [:]
    /// Whether the file must be written again.
    private var dirty = false
    /// Manifests answered from the cache, and read, by this instance.
    package private(set) var hits = 0
    package private(set) var misses = 0
    let host: [UInt8]

    static let magic = Array("descartes manifest cache 2\n".utf8)
    /// The most entries kept (manifests of other search paths stay, up to this).
    static let maxEntries = 1024

    /// The cache at `path` (nil: none), for manifests checked by the
    /// executable `host` identifies.
    package init(path: String?, host: [UInt8]? = nil) {
        self.host = path == nil ? [] : (host ?? Self.hostIdentity())
        self.path = path
        if let path { stored = Self.read(path, host: self.host) ?? [:] }
    }

    /// The user's cache (see the type's documentation), or none.
    package static func standard() -> ManifestCache {
        ManifestCache(path: standardPath())
    }

    /// `$XDG_CACHE_HOME/descartes/manifests.cache`, else
    /// `~/.cache/descartes/manifests.cache`; nil in secure execution.
    package static func standardPath() -> String? {
        if Environment.isSecureExecution { return nil }
        let base: String
        if let x = Environment.get("XDG_CACHE_HOME"), x.hasPrefix("/") {
            base = x
        } else {
            base = FileSystem.join(Environment.homeDirectory, ".cache")
        }
        return FileSystem.join(base, "descartes/manifests.cache")
    }

    /// What identifies the running executable: another build may check
    /// manifests differently.
    package static func hostIdentity() -> [UInt8] {
        // The path /proc/self/exe leads to, then that file (valgrind answers
        // the link, not a stat of it, with the program it runs).
        guard let exe = FileSystem.executablePath(), let id = FileSystem.identity(exe) else { return [] }
        var w = Writer()
        w.u64(id.device)
        w.u64(id.inode)
        w.i64(id.size)
        w.i64(id.modified)
        return w.bytes
    }

    /// The manifest at `path`, from the cache when the file is the one it
    /// recorded, else `PluginManifest.load(path:)` (recorded when it loads).
    package func load(path file: String) throws(SourceError) -> PluginManifest {
        guard path != nil else { return try PluginManifest.load(path: file) }
        let before = FileSystem.identity(file)
        if let before, let hit = stored[file], hit.identity == before {
            hits += 1
            if seen[file] == nil { seen[file] = hit }
            return hit.manifest
        }
        misses += 1
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let m = try PluginManifest.load(path: file)
        let settled = Int64(now.tv_sec - 1) * 1_000_000_000 + Int64(now.tv_nsec)
        if let before, FileSystem.identity(file) == before, before.modified < settled, before.changed < settled {
            seen[file] = (before, m)
            dirty = true
        } else if stored[file] != nil {
            stored[file] = nil
            dirty = true
        }
        return m
    }

    /// The provider the manifest at `path` declares, when the cache has it
    /// for the file as it is now.
    package func declaredProvider(path file: String) -> String? {
        guard path != nil, let hit = stored[file], FileSystem.identity(file) == hit.identity else { return nil }
        return hit.manifest.provider
    }

    /// Writes the cache when this run read a manifest it did not hold.
    /// Failing to write is not an error (the next run reads again).
    package func save() {
        guard let path, dirty else { return }
        dirty = false
        var all = seen
        for (k, v) in stored where all[k] == nil && all.count < Self.maxEntries { all[k] = v }
        var w = Writer()
        w.raw(Self.magic)
        w.blob(host)
        w.u64(UInt64(all.count))
        for k in all.keys.sorted() {
            let (id, m) = all[k]!
            w.string(k)
            w.u64(id.device)
            w.u64(id.inode)
            w.i64(id.size)
            w.i64(id.modified)
            w.i64(id.changed)
            w.manifest(m)
        }
        let dir = FileSystem.directory(of: path)
        do {
            try FileSystem.makeDirectories(dir, mode: 0o700)
            try FileSystem.writeAtomically(path, w.bytes, mode: 0o600)
        } catch {}
    }

    /// The entries of the cache file at `path`; nil when it is missing,
    /// untrusted, damaged, of another format or of another executable.
    static func read(_ path: String, host: [UInt8]) -> [String: (identity: FileSystem.Identity, manifest: PluginManifest)]? {
        guard FileSystem.info(path) != nil else { return nil }
        if FileTrust.enforced, FileTrust.problem(path) != nil { return nil }
        guard let info = FileSystem.info(path), info.uid == geteuid(), info.mode & (S_IWGRP | S_IWOTH) == 0,
            let bytes = try? FileSystem.readBytes(path, limit: 64 << 20)
        else { return nil }
        var r = Reader(bytes: bytes)
        guard r.raw(magic.count) == magic, r.blob() == host, let n = r.u64(), n <= UInt64(maxEntries) else { return nil }
        var out: [String: (identity: FileSystem.Identity, manifest: PluginManifest)] = [:]
        for _ in 0..<n {
            guard let file = r.string(), let dev = r.u64(), let ino = r.u64(), let size = r.i64(), let mtime = r.i64(),
                let ctime = r.i64(), let m = r.manifest()
            else { return nil }
            out[file] = (FileSystem.Identity(device: dev, inode: ino, size: size, modified: mtime, changed: ctime), m)
        }
        return r.atEnd ? out : nil
    }

    /// The cache's encoding: integers little-endian, strings and blobs
    /// length first.
    struct Writer {
        var bytes: [UInt8] = []
        mutating func raw(_ b: [UInt8]) { bytes += b }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
        mutating func int(_ v: Int) { i64(Int64(v)) }
        mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
        mutating func blob(_ b: [UInt8]) {
            u64(UInt64(b.count))
            bytes += b
        }
        mutating func string(_ s: String) {
            u64(UInt64(s.utf8.count))
            bytes += s.utf8
        }
        mutating func optString(_ s: String?) {
            bool(s != nil)
            if let s { string(s) }
        }
        mutating func optInt(_ v: Int?) {
            bool(v != nil)
            if let v { int(v) }
        }
        mutating func double(_ d: Double) { u64(d.bitPattern) }
        mutating func optDouble(_ d: Double?) {
            bool(d != nil)
            if let d { double(d) }
        }
        mutating func strings(_ a: [String]) {
            u64(UInt64(a.count))
            for s in a { string(s) }
        }
        mutating func json(_ v: JSONValue) {
            switch v {
            case .null: bytes.append(0)
            case .bool(let b):
                bytes.append(1)
                bool(b)
            case .integer(let i):
                bytes.append(2)
                int(i)
            case .number(let d):
                bytes.append(3)
                double(d)
            case .string(let s):
                bytes.append(4)
                string(s)
            case .array(let a):
                bytes.append(5)
                u64(UInt64(a.count))
                for e in a { json(e) }
            case .object(let o):
                bytes.append(6)
                u64(UInt64(o.members.count))
                for (k, e) in o.members {
                    string(k)
                    json(e)
                }
            }
        }
        mutating func manifest(_ m: PluginManifest) {
            string(m.file)
            string(m.provider)
            string(m.version)
            string(m.description)
            string(m.libraryName)
            string(m.libraryPath)
            string(m.factory)
            int(m.abi)
            string(m.mode.rawValue)
            strings(m.capabilities)
            optString(m.defaultModel)
            u64(UInt64(m.models.count))
            for model in m.models {
                string(model.id)
                optInt(model.contextLength)
                optInt(model.maxOutputTokens)
                bool(model.prices != nil)
                if let p = model.prices {
                    double(p.input)
                    double(p.output)
                    optDouble(p.cacheRead)
                    optDouble(p.cacheWrite)
                }
                strings(model.capabilities)
            }
            u64(UInt64(m.config.count))
            for k in m.config {
                string(k.name)
                string(k.type.rawValue)
                bool(k.required)
                bool(k.defaultValue != nil)
                if let d = k.defaultValue { json(d) }
                strings(k.env)
                bool(k.secret)
                string(k.description)
            }
            optString(m.conformance)
            bool(m.returnsPromptly)
        }
    }

    /// Reads what `Writer` wrote; every read checks the bounds (nil: damaged).
    struct Reader {
        let bytes: [UInt8]
        var at = 0
        var atEnd: Bool { at == bytes.count }
        mutating func raw(_ n: Int) -> [UInt8]? {
            guard n >= 0, bytes.count - at >= n else { return nil }
            defer { at += n }
            return Array(bytes[at..<at + n])
        }
        mutating func u64() -> UInt64? {
            guard bytes.count - at >= 8 else { return nil }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(bytes[at + i]) << (8 * UInt64(i)) }
            at += 8
            return v
        }
        mutating func i64() -> Int64? { u64().map { Int64(bitPattern: $0) } }
        mutating func int() -> Int? { i64().map { Int($0) } }
        mutating func bool() -> Bool? {
            guard at < bytes.count, bytes[at] <= 1 else { return nil }
            defer { at += 1 }
            return bytes[at] == 1
        }
        mutating func count() -> Int? {
            guard let n = u64(), n <= UInt64(bytes.count - at) else { return nil }
            return Int(n)
        }
        mutating func blob() -> [UInt8]? {
            guard let n = count() else { return nil }
            return raw(n)
        }
        mutating func string() -> String? {
            guard let n = count() else { return nil }
            defer { at += n }
            return bytes.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[at..<at + n]), as: UTF8.self) }
        }
        mutating func optString() -> String?? {
            guard let present = bool() else { return nil }
            if !present { return .some(nil) }
            guard let s = string() else { return nil }
            return .some(s)
        }
        mutating func optInt() -> Int?? {
            guard let present = bool() else { return nil }
            if !present { return .some(nil) }
            guard let v = int() else { return nil }
            return .some(v)
        }
        mutating func double() -> Double? { u64().map { Double(bitPattern: $0) } }
        mutating func optDouble() -> Double?? {
            guard let present = bool() else { return nil }
            if !present { return .some(nil) }
            guard let v = double() else { return nil }
            return .some(v)
        }
        mutating func strings() -> [String]? {
            guard let n = count() else { return nil }
            var out: [String] = []
            out.reserveCapacity(n)
            for _ in 0..<n {
                guard let s = string() else { return nil }
                out.append(s)
            }
            return out
        }
        mutating func json(depth: Int = 0) -> JSONValue? {
            guard depth < 64, at < bytes.count else { return nil }
            let tag = bytes[at]
            at += 1
            switch tag {
            case 0: return .null
            case 1: return bool().map { .bool($0) }
            case 2: return int().map { .integer($0) }
            case 3: return double().map { .number($0) }
            case 4: return string().map { .string($0) }
            case 5:
                guard let n = count() else { return nil }
                var a: [JSONValue] = []
                for _ in 0..<n {
                    guard let e = json(depth: depth + 1) else { return nil }
                    a.append(e)
                }
                return .array(a)
            case 6:
                guard let n = count() else { return nil }
                var o: [(key: String, value: JSONValue)] = []
                for _ in 0..<n {
                    guard let k = string(), let e = json(depth: depth + 1) else { return nil }
                    o.append((k, e))
                }
                return .object(JSONObject(o))
            default: return nil
            }
        }
        mutating func manifest() -> PluginManifest? {
            guard let file = string(), let provider = string(), let version = string(), let description = string(),
                let libraryName = string(), let libraryPath = string(), let factory = string(), let abi = int(),
                let modeName = string(), let mode = ModelProviderMode(rawValue: modeName), let capabilities = strings(),
                let defaultModel = optString(), let modelCount = count()
            else { return nil }
            var models: [ManifestModel] = []
            for _ in 0..<modelCount {
                guard let id = string(), let context = optInt(), let maxOutput = optInt(), let hasPrices = bool() else { return nil }
                var prices: ModelPrices?
                if hasPrices {
                    guard let input = double(), let output = double(), let cacheRead = optDouble(), let cacheWrite = optDouble() else {
                        return nil
                    }
                    prices = ModelPrices(input: input, output: output, cacheRead: cacheRead, cacheWrite: cacheWrite)
                }
                guard let caps = strings() else { return nil }
                models.append(ManifestModel(id: id, contextLength: context, maxOutputTokens: maxOutput, prices: prices, capabilities: caps))
            }
            guard let configCount = count() else { return nil }
            var config: [ConfigKey] = []
            for _ in 0..<configCount {
                guard let name = string(), let typeName = string(), let type = ConfigType(rawValue: typeName), let required = bool(),
                    let hasDefault = bool()
                else { return nil }
                var defaultValue: JSONValue?
                if hasDefault {
                    guard let d = json() else { return nil }
                    defaultValue = d
                }
                guard let env = strings(), let secret = bool(), let desc = string() else { return nil }
                config.append(
                    ConfigKey(name: name, type: type, required: required, defaultValue: defaultValue, env: env, secret: secret, description: desc))
            }
            guard let conformance = optString(), let returnsPromptly = bool() else { return nil }
            var m = PluginManifest(
                file: file, provider: provider, version: version, description: description, libraryName: libraryName,
                libraryPath: libraryPath, factory: factory, abi: abi, mode: mode, capabilities: capabilities,
                defaultModel: defaultModel, models: models, config: config)
            m.conformance = conformance
            m.returnsPromptly = returnsPromptly
            return m
        }
    }
}
