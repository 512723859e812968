import DescartesSupport

/// Where plugins are looked for, in order. The current directory is never
/// searched.
public struct PluginSearch: Sendable {
    public struct Directory: Sendable, Hashable {
        public var path: String
        /// Why this directory is searched ("DESCARTES_PLUGIN_PATH",
        /// "user data directory", "install prefix", "system").
        public var origin: String
        /// Where a manifest's relative `library:` is found instead of beside
        /// the manifest (a SwiftPM build: the package's manifests, the
        /// libraries the build made); a manifest whose library is not there
        /// is skipped. nil: beside the manifest.
        public var libraries: String?
        public init(path: String, origin: String, libraries: String? = nil) {
            self.path = path
            self.origin = origin
            self.libraries = libraries
        }
    }

    public var directories: [Directory]
    /// What the search decided and why (printed by `--verbose`).
    public var notes: [String]

    public init(directories: [Directory], notes: [String] = []) {
        self.directories = directories
        self.notes = notes
    }

    /// The system directories, searched last.
    package static let systemDirectories = ["/usr/local/lib/descartes/plugins", "/usr/lib/descartes/plugins"]

    /// The documented search order:
    /// 1. `$DESCARTES_PLUGIN_PATH` (colon-separated absolute paths),
    /// 2. the user's data directory (`$XDG_DATA_HOME/descartes/plugins`,
    ///    default `~/.local/share/descartes/plugins`), then the user's
    ///    install prefix (`~/.local/lib/descartes/plugins`:
    ///    `make install PREFIX=~/.local`),
    /// 3. the install prefix relative to the executable
    ///    (`<prefix>/bin/descartes` -> `<prefix>/lib/descartes/plugins`),
    /// 4. the system directories (`/usr/local/lib/...`, `/usr/lib/...`).
    ///
    /// The plugin policy's `search` directories come after 2 (the user
    /// file's) and before 3 (the system file's). When none of these holds a
    /// usable plugin, a SwiftPM build searches its own plugins last
    /// (`PluginCatalog.discover()`, `swiftPMBuild(executable:)`).
    ///
    /// With `elevated` (setuid/setgid always; root when the system policy
    /// sets `ignore_environment_as_root`) 1, 2 and the user policy's
    /// directories are skipped. See docs/policy.md.
    package static func standard(
        environment: [String: String] = Environment.current(), executable: String? = FileSystem.executablePath(),
        elevated: Bool? = nil, policy: PluginPolicy = .none
    ) -> PluginSearch {
        let elevated = elevated ?? (Environment.isSecureExecution || (Environment.isRoot && policy.ignoreEnvironmentAsRoot))
        var dirs: [Directory] = []
        var notes: [String] = []
        if let path = environment["DESCARTES_PLUGIN_PATH"], !path.isEmpty {
            if elevated {
                notes.append("ignoring DESCARTES_PLUGIN_PATH: the process runs with elevated privileges")
            } else {
                for entry in path.split(separator: ":", omittingEmptySubsequences: true).map(String.init) {
                    if entry.hasPrefix("/") {
                        dirs.append(Directory(path: entry, origin: "DESCARTES_PLUGIN_PATH"))
                    } else {
                        notes.append("ignoring relative entry '\(entry)' in DESCARTES_PLUGIN_PATH (the current directory is never searched)")
                    }
                }
            }
        }
        if elevated {
            notes.append("ignoring the user data directory: the process runs with elevated privileges")
        } else {
            let dataHome: String
            if let x = environment["XDG_DATA_HOME"], x.hasPrefix("/") {
                dataHome = x
            } else {
                dataHome = FileSystem.join(environment["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? Environment.homeDirectory, ".local/share")
            }
            dirs.append(Directory(path: FileSystem.join(dataHome, "descartes/plugins"), origin: "user data directory"))
            let home = environment["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? Environment.homeDirectory
            dirs.append(Directory(path: FileSystem.join(home, ".local/lib/descartes/plugins"), origin: "user install prefix"))
        }
        for d in policy.search where d.origin.hasPrefix("user policy") {
            if elevated { notes.append("ignoring \(d.path) (\(d.origin)): the process runs with elevated privileges") } else { dirs.append(d) }
        }
        dirs += policy.search.filter { !$0.origin.hasPrefix("user policy") }
        if let exe = executable {
            let prefix = FileSystem.directory(of: FileSystem.directory(of: exe))
            dirs.append(Directory(path: FileSystem.join(prefix, "lib/descartes/plugins"), origin: "install prefix"))
        }
        for s in systemDirectories { dirs.append(Directory(path: s, origin: "system")) }
        // The same directory reached twice is searched once, at its first place.
        var seen: Set<String> = []
        dirs = dirs.filter { d in seen.insert(FileSystem.realPath(d.path) ?? d.path).inserted }
        return PluginSearch(directories: dirs, notes: notes)
    }

    /// The plugins of a SwiftPM build (`swift build`, `swift run`): for an
    /// executable in `<package>/.build/...`, the manifests of the Descartes
    /// package (`<package>/manifests` when the package is Descartes itself,
    /// else `<package>/.build/checkouts/*/manifests` of the Descartes
    /// dependency), with the libraries the build made beside the executable
    /// (`libdescartes-openai.so`, ...; a manifest whose library was not built
    /// is skipped). nil when the executable is not in a SwiftPM build.
    public static func swiftPMBuild(executable: String) -> Directory? {
        let bin = FileSystem.directory(of: executable)
        var dir = bin
        var root: String?
        while dir.count > 1 {
            if dir.hasSuffix("/.build") {
                root = FileSystem.directory(of: dir)
                break
            }
            dir = FileSystem.directory(of: dir)
        }
        guard let root else { return nil }
        var packages = [root]
        let checkouts = FileSystem.join(root, ".build/checkouts")
        if let names = try? FileSystem.list(checkouts) { packages += names.sorted().map { FileSystem.join(checkouts, $0) } }
        for p in packages
        where FileSystem.exists(FileSystem.join(p, "Sources/CDescartesPlugin/include/descartes/plugin.h"))
            && FileSystem.isDirectory(FileSystem.join(p, "manifests"))
        {
            return Directory(path: FileSystem.join(p, "manifests"), origin: "SwiftPM build, libraries in \(bin)", libraries: bin)
        }
        return nil
    }
}

/// One manifest file found during discovery.
package struct CatalogEntry: Sendable {
    package enum Status: Sendable, Equatable {
        /// Valid manifest, library file present, ABI spoken by this host.
        case available
        /// The manifest could not be read or is invalid.
        case invalid
        /// The manifest asks for an ABI or manifest version this host lacks.
        case incompatible(String)
        /// The library the manifest names does not exist.
        case libraryMissing
        /// Another manifest earlier in the search order has the same provider id.
        case shadowed(by: String)
        /// The host's plugin policy disables it (the reason names the rule).
        case disabled(String)
        /// A file another user could have written, while the process runs
        /// with elevated privileges (see `FileTrust`).
        case refused(String)

        package var label: String {
            switch self {
            case .available: return "available"
            case .invalid: return "invalid manifest"
            case .incompatible: return "incompatible"
            case .libraryMissing: return "library missing"
            case .shadowed: return "shadowed"
            case .disabled: return "disabled"
            case .refused: return "refused"
            }
        }
    }

    package var file: String
    package var directory: PluginSearch.Directory
    package var manifest: PluginManifest?
    package var problems: [SourceProblem]
    package var status: Status
    /// What the plugin policy says about it (for entries with a manifest).
    package var policy: PluginPolicy.Decision?
    /// The policy rule that requires it, if any.
    package var requiredBy: PluginPolicy.Rule?
    /// The SHA-256 digest the policy pins its library to, if any.
    package var pin: PluginPolicy.Pin?

    /// One line saying why the entry is not available.
    package var reason: String? {
        switch status {
        case .available: return nil
        case .invalid: return problems.map(\.description).joined(separator: "; ")
        case .incompatible(let why): return why
        case .libraryMissing: return "\(manifest?.libraryPath ?? "?"): no such file"
        case .shadowed(let by): return "shadowed by \(by)"
        case .disabled(let why): return why
        case .refused(let why): return why
        }
    }
}

/// The plugins found on disk, from their manifests alone. Building a catalog
/// never loads a library (discovery cannot crash the host).
public final class PluginCatalog: Sendable {
    /// What discovery found: where it searched, every manifest, and what it
    /// did step by step.
    private struct Found: Sendable {
        var search: PluginSearch
        var entries: [CatalogEntry]
        var trace: [String]
    }

    /// Every manifest found, in search order.
    package var entries: [CatalogEntry] { found().entries }
    /// Where plugins were looked for (with a SwiftPM build's own plugins
    /// last when nothing else was usable).
    package var search: PluginSearch { found().search }
    /// What discovery did, step by step (printed by `--verbose`).
    package var trace: [String] { found().trace }
    /// The policy applied.
    package let policy: PluginPolicy
    private let requiredChecked = Lock<ProviderError??>(nil)
    /// Full discovery's result: given, or made on first use (`discover()`).
    private let discovered: Lock<Found?>
    /// For a catalog `discover()` made: the standard search, which full
    /// discovery runs on first use. Until then `entry(for:)` reads only the
    /// manifests it needs.
    private let pending: PluginSearch?
    /// What `entry(for:)` found before full discovery, by provider id.
    private let looked = Lock<[String: CatalogEntry]>([:])
    /// Whether discovery reads manifests through the user's
    /// `ManifestCache` (the host's catalog, `discover()`).
    private let cached: Bool

    package init(search: PluginSearch, entries: [CatalogEntry], trace: [String], policy: PluginPolicy = .none) {
        self.discovered = Lock(Found(search: search, entries: entries, trace: trace))
        self.pending = nil
        self.policy = policy
        self.cached = false
    }

    private init(discovering search: PluginSearch, policy: PluginPolicy, cached: Bool) {
        self.discovered = Lock(nil)
        self.pending = search
        self.policy = policy
        self.cached = cached
    }

    /// The manifest cache discovery reads through: the user's for the
    /// host's catalog, else none (every manifest read).
    private func manifestCache() -> ManifestCache { ManifestCache(path: cached ? ManifestCache.standardPath() : nil) }

    private func found() -> Found {
        discovered.withLock { found in
            if let found { return found }
            // discover()'s catalog: the standard search, then a SwiftPM build's own plugins.
            let c = PluginCatalog.discover(pending!, policy: policy, cache: manifestCache()).withSwiftPMBuild()
            let made = Found(search: c.search, entries: c.entries, trace: c.trace)
            found = made
            return made
        }
    }

    /// The entry that serves `provider`, if any (available or not).
    ///
    /// A catalog `discover()` made answers this before full discovery when
    /// the provider is available: reading from the other manifests only
    /// the provider they declare (`PluginManifest.declaredProvider`), it
    /// checks the manifests that could serve it in search order, as full
    /// discovery does, so a one-shot `descartes complete -p NAME` reads and
    /// checks one manifest, not all of them. Anything else (not found,
    /// not available) is answered by full discovery.
    package func entry(for provider: String) -> CatalogEntry? {
        if let search = pending, discovered.withLock({ $0 == nil }) {
            if let e = looked.withLock({ $0[provider] }) { return e }
            if let e = Self.available(provider, search: search, policy: policy, cache: manifestCache()) {
                looked.withLock { $0[provider] = e }
                return e
            }
        }
        return entries.first { $0.manifest?.provider == provider && !isShadowed($0) }
    }

    /// `provider`'s entry as full discovery of `search` makes it, when it is
    /// available; nil when it is not, or not found (a SwiftPM build's
    /// plugins are searched only when nothing is available, so then full
    /// discovery must answer). The first manifest in search order that
    /// reads as `provider` is its entry; a manifest declaring another
    /// provider cannot be it and is not read further.
    static func available(_ provider: String, search: PluginSearch, policy: PluginPolicy, cache: ManifestCache) -> CatalogEntry? {
        defer { cache.save() }
        let checkFiles = FileTrust.enforced
        var trace: [String] = []
        var owner: [String: String] = [:]
        for dir in search.directories {
            guard let names = manifests(in: dir, checkFiles: checkFiles, trace: &trace) else { continue }
            for name in names {
                let file = FileSystem.join(dir.path, name)
                if let declared = cache.declaredProvider(path: file) ?? PluginManifest.declaredProvider(path: file), declared != provider {
                    continue
                }
                guard
                    let entry = examine(
                        name, file: file, in: dir, search: search, policy: policy, checkFiles: checkFiles, cache: cache, owner: &owner,
                        trace: &trace),
                    entry.manifest?.provider == provider
                else { continue }
                return entry.status == .available ? entry : nil
            }
        }
        return nil
    }

    /// The first directory of the search path (its libraries directory,
    /// for a build tree) holding a file named `name`.
    static func findLibrary(_ name: String, in directories: [PluginSearch.Directory]) -> String? {
        for d in directories {
            let candidate = FileSystem.join(d.libraries ?? d.path, name)
            if FileSystem.exists(candidate) { return candidate }
        }
        return nil
    }

    /// The manifest a library ships with for `factory`: an available entry
    /// whose provider is the factory's id, over the same library file. A
    /// manifest-only provider (groq.yaml over libdescartes-openai.so) is
    /// checked against it: the keys that one declares are the keys the
    /// library knows.
    package func ownManifest(of m: PluginManifest) -> PluginManifest? {
        entries.lazy.compactMap(\.manifest).first { o in
            o.provider == m.factory && o.factory == m.factory && o.libraryPath == m.libraryPath && o.file != m.file
        }
    }

    /// The entry for `provider` whatever its status: the one `entry(for:)`
    /// finds, else a manifest discovery could not read whose file is
    /// `<provider>.yaml` (or `.yml`). So `plugins verify NAME`, `info NAME`
    /// and `--conformance NAME` say why NAME is refused, as `plugins list`
    /// does, instead of "unknown provider".
    package func anyEntry(for provider: String) -> CatalogEntry? {
        if let e = entry(for: provider) { return e }
        return entries.first { $0.manifest == nil && [provider + ".yaml", provider + ".yml"].contains(FileSystem.basename($0.file)) }
    }

    func isShadowed(_ e: CatalogEntry) -> Bool {
        if case .shadowed = e.status { return true }
        return false
    }

    /// Provider ids of every usable entry, in search order.
    public var availableProviders: [String] {
        entries.compactMap { $0.status == .available ? $0.manifest?.provider : nil }
    }

    /// The host's plugins: the standard search path under the host's policy
    /// (`PluginPolicy.standard()`).
    ///
    /// When the standard search finds no usable plugin and this process is a
    /// SwiftPM build (`PluginSearch.swiftPMBuild(executable:)`), the build's
    /// own plugins are searched last, so a library user's `swift run` finds
    /// the plugins the build made with no `DESCARTES_PLUGIN_PATH` (not with
    /// elevated privileges).
    ///
    /// Discovery runs when the catalog is first asked for more than one
    /// available provider's entry (see `entry(for:)`).
    public static func discover() -> PluginCatalog {
        let policy = PluginPolicy.standard()
        return PluginCatalog(discovering: .standard(policy: policy), policy: policy, cached: true)
    }

    /// The catalog of `search` under `policy`, with a SwiftPM build's own
    /// plugins last when nothing else is usable, discovered on first use
    /// (`discover()`'s, for any search).
    package static func discovering(_ search: PluginSearch, policy: PluginPolicy = .none) -> PluginCatalog {
        PluginCatalog(discovering: search, policy: policy, cached: false)
    }

    /// Whether full discovery has run (every manifest read and checked).
    package var isDiscovered: Bool { discovered.withLock { $0 != nil } }

    /// This catalog or, when it has no usable plugin, the same search with
    /// the SwiftPM build of `executable` last.
    package func withSwiftPMBuild(executable: String? = FileSystem.executablePath()) -> PluginCatalog {
        guard availableProviders.isEmpty, !Environment.isSecureExecution, !Environment.isRoot || !policy.ignoreEnvironmentAsRoot,
            let exe = executable, let build = PluginSearch.swiftPMBuild(executable: exe)
        else { return self }
        var s = search
        s.directories.append(build)
        s.notes.append("no plugin installed: searching the SwiftPM build of \(exe)")
        return PluginCatalog.discover(s, policy: policy)
    }

    /// Discovers manifests (`*.yaml`, `*.yml`) in the search directories and
    /// applies `policy`. When the process runs with elevated privileges,
    /// directories, manifests and libraries another user could have written
    /// are refused (`FileTrust`).
    public static func discover(_ search: PluginSearch) -> PluginCatalog { discover(search, policy: .none) }

    /// The plugins `search` finds, under `policy`.
    package static func discover(_ search: PluginSearch, policy: PluginPolicy, cache: ManifestCache = ManifestCache(path: nil)) -> PluginCatalog {
        defer { cache.save() }
        var trace = search.notes
        for f in policy.files {
            switch f.status {
            case .loaded: trace.append("policy \(f.path) (\(f.scope.rawValue)): read")
            case .missing: trace.append("policy \(f.path) (\(f.scope.rawValue)): not found")
            case .refused(let why): trace.append("policy \(f.path) (\(f.scope.rawValue)): \(why)")
            }
        }
        for p in policy.problems { trace.append("policy problem: \(p)") }
        let checkFiles = FileTrust.enforced
        var entries: [CatalogEntry] = []
        var owner: [String: String] = [:]  // provider id -> manifest file
        for dir in search.directories {
            guard let names = manifests(in: dir, checkFiles: checkFiles, trace: &trace) else { continue }
            for name in names {
                let file = FileSystem.join(dir.path, name)
                if let entry = examine(
                    name, file: file, in: dir, search: search, policy: policy, checkFiles: checkFiles, cache: cache, owner: &owner, trace: &trace)
                {
                    entries.append(entry)
                }
            }
        }
        return PluginCatalog(search: search, entries: entries, trace: trace, policy: policy)
    }

    /// The manifest files (`*.yaml`, `*.yml`) of a search directory, sorted;
    /// nil when it is skipped (not a directory, not trusted, unreadable).
    static func manifests(in dir: PluginSearch.Directory, checkFiles: Bool, trace: inout [String]) -> [String]? {
        guard FileSystem.isDirectory(dir.path) else {
            trace.append("search \(dir.path) (\(dir.origin)): not a directory, skipped")
            return nil
        }
        if checkFiles, let why = FileTrust.problem(dir.path) {
            trace.append("search \(dir.path) (\(dir.origin)): skipped: \(why)")
            return nil
        }
        let names: [String]
        do { names = try FileSystem.list(dir.path) } catch {
            trace.append("search \(dir.path) (\(dir.origin)): \(error.reason), skipped")
            return nil
        }
        let manifests = names.filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }
        trace.append("search \(dir.path) (\(dir.origin)): \(manifests.count) manifest\(manifests.count == 1 ? "" : "s")")
        return manifests
    }

    /// The entry for manifest `name` of `dir` (nil: skipped, its library was
    /// not built), given the providers earlier manifests claimed (`owner`,
    /// which it updates).
    static func examine(
        _ name: String, file: String, in dir: PluginSearch.Directory, search: PluginSearch, policy: PluginPolicy, checkFiles: Bool,
        cache: ManifestCache, owner: inout [String: String], trace: inout [String]
    ) -> CatalogEntry? {
        var entry = CatalogEntry(file: file, directory: dir, manifest: nil, problems: [], status: .invalid)
        if checkFiles, let why = FileTrust.problem(file) {
            // Read (never trusted) only to say which provider was refused.
            entry.manifest = try? PluginManifest.load(path: file)
            entry.status = .refused(why)
            if let p = entry.manifest?.provider, owner[p] == nil { owner[p] = file }
            trace.append("  \(name): refused (\(why))")
            return entry
        }
        do {
            var m = try cache.load(path: file)
            if let libraries = dir.libraries, !m.libraryName.hasPrefix("/") {
                m.libraryPath = FileSystem.join(libraries, m.libraryName)
                guard FileSystem.exists(m.libraryPath) else {
                    trace.append("  \(name): skipped (\(m.libraryName) was not built)")
                    return nil
                }
            }
            if !m.libraryName.contains("/"), !FileSystem.exists(m.libraryPath),
                let found = Self.findLibrary(m.libraryName, in: search.directories)
            {
                // A bare file name, as Vulkan ICD manifests name
                // theirs: the manifest's directory first, then the
                // plugin search path (a manifest-only provider over
                // libdescartes-openai.so survives a moved prefix).
                m.libraryPath = found
                trace.append("  \(name): \(m.libraryName) is not beside the manifest; found in the plugin search path: \(found)")
            }
            entry.manifest = m
            let decision = policy.decision(for: m.provider)
            entry.policy = decision
            entry.requiredBy = policy.requirement(for: m.provider)
            entry.pin = policy.pin(for: m.libraryPath)
            if let first = owner[m.provider] {
                entry.status = .shadowed(by: first)
            } else {
                owner[m.provider] = file
                if m.abi > descartesABIVersion || m.abi < 1 {
                    entry.status = .incompatible("requires plugin ABI \(m.abi); this host speaks 1...\(descartesABIVersion)")
                } else if !decision.enabled {
                    entry.status = .disabled(decision.reason)
                } else if !FileSystem.exists(m.libraryPath) {
                    entry.status = .libraryMissing
                } else if checkFiles, let why = FileTrust.problem(m.libraryPath) {
                    entry.status = .refused(why)
                } else {
                    entry.status = .available
                }
            }
        } catch {
            entry.problems = error.problems
            if let p = error.problems.first, p.message.hasPrefix("unknown manifest_version") {
                entry.status = .incompatible(p.description)
            }
        }
        trace.append("  \(name): \(entry.status.label)\(entry.reason.map { " (\($0))" } ?? "")")
        return entry
    }

    /// What is wrong with the plugins the policy requires, read from the
    /// manifests alone: each required name (or glob) must match an
    /// available plugin. Empty when all is well.
    package var requiredProblems: [String] {
        var out: [String] = []
        for rule in policy.required {
            let matching = entries.filter { e in e.manifest.map { rule.matches($0.provider) } ?? false }
            let live = matching.filter { !isShadowed($0) }
            if live.isEmpty {
                out.append("required plugin '\(rule.pattern)' (\(rule.location)) is not installed (searched \(search.directories.map(\.path).joined(separator: ", ")))")
                continue
            }
            for e in live where e.status != .available {
                out.append("required plugin '\(e.manifest!.provider)' (\(rule.location)) is \(e.status.label): \(e.reason ?? "")")
            }
        }
        return out
    }

    /// Checks, once per catalog, that every required plugin is available
    /// and loads (PAM's "required": one missing or failing is an error for
    /// every provider).
    package func checkRequired(loader: PluginLoader) throws(ProviderError) {
        if policy.required.isEmpty { return }
        let cached = requiredChecked.withLock { $0 }
        if let cached {
            if let e = cached { throw e }
            return
        }
        var problems = requiredProblems
        if problems.isEmpty {
            for rule in policy.required {
                for e in entries where e.status == .available && e.manifest.map({ rule.matches($0.provider) }) == true {
                    do { _ = try loader.load(path: e.manifest!.libraryPath, sha256: e.pin) } catch {
                        problems.append("required plugin '\(e.manifest!.provider)' (\(rule.location)) fails to load: \(error)")
                    }
                }
            }
        }
        let result: ProviderError? = problems.isEmpty ? nil : ProviderError(
            .initialization, "a plugin the host policy requires is missing or failing (\(problems.count) problem\(problems.count == 1 ? "" : "s"))",
            details: problems)
        requiredChecked.withLock { $0 = .some(result) }
        if let result { throw result }
    }
}
