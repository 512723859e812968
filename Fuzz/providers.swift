// libFuzzer target: the configuration loaders an operator's files go
// through: providers.yaml (instances merged across two files, their
// references expanded, the middleware sections and audit read, everything
// `descartes config check` does) and the plugin policy (plugins.yaml, as the
// system file and as a user's, and its decisions).
//
// Checked beyond "no crash": every problem names one of the files the input
// came from with a line and column of at least 1 (the promise that bad
// configuration gets a file:line error), and loading is deterministic.
//
// Never run: credential helpers (`runHelper: false`), and `${file:...}`
// references are left out (an input naming /dev/stdin would wait on the
// fuzzer's own stdin; what a file reference reads is not the parser).
import Descartes

let high = "/fuzz/project/.descartes/providers.yaml"
let low = "/fuzz/etc/providers.yaml"
let policyFile = "/fuzz/etc/plugins.yaml"
let environment = ["HOME": "/nonexistent", "OPENAI_API_KEY": "sk-fuzz-0123456789", "PORT": "8080", "EMPTY": ""]
let noPlugins = PluginCatalog(search: PluginSearch(directories: []), entries: [], trace: [])

func checkPositions(_ problems: [SourceProblem], files: Set<String>, _ what: String) {
    for p in problems {
        guard files.contains(p.location.file), p.location.line >= 1, p.location.column >= 1 else {
            fatalError("\(what): a problem without a usable position: \(p.description)")
        }
    }
}

func loadProviders(_ text: String) -> [String] {
    var problems: [SourceProblem] = []
    var documents: [(file: String, root: YAMLNode)] = []
    do {
        // The same text as the project file and the system file: every key is
        // seen twice, so the key-by-key merge runs on every input.
        if let root = try YAML.parse(text, file: high) { documents.append((high, root)) }
        if let root = try YAML.parse(text, file: low) { documents.append((low, root)) }
    } catch {
        checkPositions(error.problems, files: [high, low], "YAML")
        return error.problems.map(\.description)
    }
    var config = ProvidersConfig.merge(documents, problems: &problems)
    config.interpolator = Interpolator(environment: environment)
    var all = config.problems
    if !text.contains("file:") {
        for inst in config.instances {
            if case .failure(let e) = config.resolve(inst, runHelper: false) { all += e.problems }
        }
        all += config.check(catalog: noPlugins)
        if let sections = try? config.middlewareSections() {
            let (settings, p) = ReliabilitySettings.parse(sections, home: "/nonexistent")
            all += p
            all += settings.check(knownProviders: Set(config.instances.map(\.name)))
        }
        if let audit = try? config.section("audit"), case .failure(let e) = AuditSettings.read(audit, environment: environment) {
            all += e.problems
        }
    }
    // A name the sections refer to that has no place in a file gets the
    // placeholder "providers.yaml" position (ReliabilitySettings.check).
    checkPositions(all, files: [high, low, "providers.yaml"], "providers.yaml")
    return all.map(\.description)
}

func loadPolicy(_ text: String) -> [String] {
    var p = PluginPolicy()
    p.add(text, file: policyFile, scope: .system)
    p.add(text, file: policyFile, scope: .user)
    checkPositions(p.problems, files: [policyFile], "plugins.yaml")
    var out = p.problems.map(\.description)
    for name in ["openai", "claude-code-cli", "community-x", ""] {
        let d = p.decision(for: name)
        let i = p.isolation(for: name)
        if let mb = i.memoryMB, mb < IsolationSetting.minimumMemoryMB { fatalError("a memory limit below the floor was accepted: \(mb)") }
        out.append("\(d.enabled) \(d.reason) \(i.process) \(i.memoryMB ?? 0) \(i.reasons)")
        _ = p.requirement(for: name)
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeRawBufferPointer(start: data, count: size), as: UTF8.self)
    let first = loadProviders(text)
    let policy = loadPolicy(text)
    // Deterministic: the same text, the same problems (no state leaks
    // between loads, e.g. through a cache or the interpolator).
    if text.count < 4096 {
        precondition(loadProviders(text) == first, "providers.yaml: a second load reported different problems")
        precondition(loadPolicy(text) == policy, "plugins.yaml: a second load decided differently")
    }
    return 0
}
