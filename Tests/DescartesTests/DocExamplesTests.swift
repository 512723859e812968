import CProcessShim
import Descartes
import Glibc
import Testing
import DescartesSupport

/// Every Swift and shell example in README.md and docs/*.md is compiled or
/// run here, so the docs cannot drift (issue 17). A fenced block is
/// ```` ```LANG ```` with, after the language, at most one of:
///
/// - nothing: a Swift block is type-checked against the built library (all
///   of them in one `swiftc` run, errors at the doc's file:line); a shell
///   block runs with `bash -eu` in a fresh home and directory, the test
///   prefix's `bin` on PATH (its plugins found beside it, as an installed
///   `descartes` finds them), against loopback counterparts of what it needs
///   (`DocCounterparts`): API providers, Ollama, llama.cpp and vLLM servers,
///   agent CLIs;
/// - `checked-by: NAME`: a test named NAME (a function or suite in
///   Tests/DescartesTests) runs the block as written;
/// - `no-run: REASON`: a shell block that cannot run here (a real API key, a
///   synopsis with placeholders), with the reason.
///
/// A Swift block may be preceded by `<!-- doc-test: CODE -->` lines: CODE
/// declares what the excerpt assumes (a `backend`), compiled before it.
/// A shell block that runs here is preceded by at least one such line
/// saying what it must print (`ShellCheck`): `expect TEXT` (stdout or
/// stderr contains TEXT), `expect-in FILE: TEXT` (the file it wrote does),
/// and may set up more: `write FILE` (the fenced block before it, or for a
/// FILE ending in .yaml the last YAML block before it, e.g. the
/// providers.yaml it uses, is that file, relative to its directory), `env
/// NAME=VALUE` (`{gateway}` and `{server}` are the counterparts' URLs),
/// `substitute TEXT: REGEX` (TEXT stands for what the block's earlier lines
/// print, REGEX's first group: the block runs up to the first line with TEXT,
/// then the rest with the value put in, e.g. a session id), `private
/// network` (a network namespace of its own: a fixed port such as 4000 is
/// free there), `private /etc` (a mount namespace with an overlay on /etc:
/// what it writes there stays in the test), `serve` (each command is a
/// server that runs until stopped: Tests/Servers/doc_block.py waits for its
/// address, asks it a request and stops it with SIGTERM) and `terminal
/// ANSWER` (it runs in a pseudo-terminal, ANSWER typed at each `[y/N]`).
/// A block in any other form fails `everyExampleIsCovered`.
@Suite struct DocExamplesTests {
    struct Block: CustomStringConvertible {
        var file: String
        var line: Int
        var lang: String
        var attribute: String
        var text: String
        var context: [String]
        /// The fenced blocks before this one in its file (any language), in order.
        var earlier: [(lang: String, text: String)]
        /// The text of the fenced block before this one.
        var previous: String? { earlier.last?.text }
        /// What `write FILE` writes: for a FILE ending in .yaml, the last YAML
        /// block before this one; else the block just before it.
        func source(of file: String) -> String? {
            file.hasSuffix(".yaml") ? earlier.last { $0.lang == "yaml" }?.text : previous
        }
        var description: String { "\(file):\(line) (```\(lang)\(attribute.isEmpty ? "" : " " + attribute))" }
        var isPluginSide: Bool { text.contains("import DescartesPluginKit") }
        var isPackageManifest: Bool { text.contains("import PackageDescription") }
    }

    static let languages: Set<String> = ["swift", "sh", "console", "bash", "shell"]

    /// The documents checked: README.md and every docs/*.md.
    static func documents() throws -> [String] {
        let docs = try FileSystem.list(FileSystem.join(TestEnv.root, "docs")).filter { $0.hasSuffix(".md") }.sorted().map { "docs/\($0)" }
        return ["README.md"] + docs
    }

    static func blocks(languages: Set<String> = languages) throws -> [Block] {
        var out: [Block] = []
        for doc in try documents() {
            let text = try FileSystem.readText(FileSystem.join(TestEnv.root, doc), limit: 1 << 22)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var i = 0
            var earlier: [(lang: String, text: String)] = []
            while i < lines.count {
                let trimmed = lines[i].drop { $0 == " " }
                guard trimmed.hasPrefix("```") else {
                    i += 1
                    continue
                }
                let info = trimmed.dropFirst(3)
                let lang = String(info.prefix { $0 != " " })
                let attribute = String(info.dropFirst(lang.count).drop { $0 == " " })
                var j = i + 1
                while j < lines.count && !lines[j].drop(while: { $0 == " " }).hasPrefix("```") { j += 1 }
                let indent = lines[i].count - trimmed.count
                let body = lines[(i + 1)..<min(j, lines.count)].map { String($0.dropFirst(min(indent, $0.prefix { $0 == " " }.count))) }
                if languages.contains(lang) {
                    var context: [String] = []
                    var k = i - 1
                    while k >= 0, lines[k].hasPrefix("<!-- doc-test: "), lines[k].hasSuffix(" -->") {
                        context.insert(String(lines[k].dropFirst("<!-- doc-test: ".count).dropLast(" -->".count)), at: 0)
                        k -= 1
                    }
                    out.append(
                        Block(
                            file: doc, line: i + 1, lang: lang, attribute: attribute, text: body.joined(separator: "\n"), context: context,
                            earlier: earlier))
                }
                earlier.append((lang, body.joined(separator: "\n")))
                i = j + 1
            }
        }
        return out
    }

    /// Names of the tests (functions and suites) in Tests/DescartesTests.
    static func testNames() throws -> String {
        let dir = FileSystem.join(TestEnv.root, "Tests/DescartesTests")
        return try FileSystem.list(dir).filter { $0.hasSuffix(".swift") }.map { try FileSystem.readText(FileSystem.join(dir, $0), limit: 1 << 22) }
            .joined(separator: "\n")
    }

    @Test func everyExampleIsCovered() throws {
        let blocks = try Self.blocks()
        #expect(blocks.count >= 40, "found only \(blocks.count) examples: is the parser broken?")
        let tests = try Self.testNames()
        var problems: [String] = []
        for b in blocks {
            if b.attribute.isEmpty && b.lang != "swift" {
                do {
                    let check = try ShellCheck(b)
                    if check.expected.isEmpty && check.expectedInFiles.isEmpty {
                        problems.append("\(b): say what it prints: a line <!-- doc-test: expect TEXT --> before it")
                    }
                } catch { problems.append("\(error)") }
            }
            if b.attribute.isEmpty { continue }
            if b.attribute.hasPrefix("checked-by: ") {
                let name = String(b.attribute.dropFirst("checked-by: ".count))
                if !(tests.contains("func \(name)(") || tests.contains("struct \(name) ") || tests.contains("struct \(name):")) {
                    problems.append("\(b): no test named '\(name)' in Tests/DescartesTests")
                }
            } else if b.attribute.hasPrefix("no-run: ") && b.lang != "swift" {
                if b.attribute.dropFirst("no-run: ".count).count < 10 { problems.append("\(b): say why it cannot run") }
            } else {
                problems.append(
                    "\(b): unknown fence attribute; use nothing (compiled or run here), 'checked-by: TEST' or, for shell only, 'no-run: REASON'")
            }
            if b.lang == "swift" && b.attribute.hasPrefix("checked-by: ") && !b.isPackageManifest {
                problems.append("\(b): Swift examples are compiled here (only a Package.swift is left to the test that builds it)")
            }
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    /// Every YAML example that is a providers.yaml (its first top-level key
    /// is one `config check` knows) passes `config check` as written, with
    /// each `${NAME}` it reads set and each `${file:PATH}` it reads pointed
    /// at a file of ours. Manifests, plugins.yaml policies and conformance
    /// specs have other first keys and are left to their own tests. A block
    /// that cannot pass (placeholders, a plugin not shipped) is preceded by
    /// `<!-- doc-test: no-check REASON -->`.
    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into (the shipped plugins)"))
    func theConfigurationExamplesPassConfigCheck() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try Self.blocks(languages: ["yaml"])
        let work = TempDir("descartes-doc-yaml")
        var checked = 0
        for b in blocks {
            let firstKey = b.text.split(separator: "\n").first { !$0.isEmpty && $0.first != " " && $0.first != "#" }
                .map { String($0.prefix { $0 != ":" }) }
            guard let firstKey, ProvidersConfig.topLevelKeys.contains(firstKey) else { continue }
            if let skip = b.context.first(where: { $0.hasPrefix("no-check ") }) {
                #expect(skip.count > "no-check ".count + 10, "\(b): say why it is not checked")
                continue
            }
            var yaml = b.text
            var env = Environment.current()
            env["HOME"] = work.path
            env["DESCARTES_PLUGIN_PATH"] = nil
            var rest = Substring(b.text)
            while let open = rest.firstRange(of: "${") {
                guard let close = rest[open.upperBound...].firstIndex(of: "}") else { break }
                let name = String(rest[open.upperBound..<close])
                if name.hasPrefix("file:") {
                    let secret = work.write("secret-\(checked)-\(env.count)", "doc-example-secret-0123456789")
                    yaml = yaml.replacingAll("${\(name)}", with: "${file:\(secret)}")
                } else {
                    env[name] = "doc-example-value-0123456789"
                }
                rest = rest[close...]
            }
            let file = work.write("example-\(checked).yaml", yaml)
            let r = await Proc.run([FileSystem.join(prefix, "bin/descartes"), "--config", file, "config", "check"], env: env)
            #expect(r.status == 0, "\(b) does not pass config check as written:\n\(r.stdout)\(r.stderr)")
            checked += 1
        }
        #expect(checked >= 8, "only \(checked) providers.yaml examples found: is the parser broken?")
    }

    /// The flags that let `swiftc` see the debug build's modules, as
    /// support/api-listing.sh finds them.
    static func compilerFlags() throws -> [String] {
        var flags = ["-I", FileSystem.join(TestEnv.binDir, "Modules")]
        for name in try FileSystem.list(TestEnv.binDir) where name.hasSuffix(".build") {
            let map = FileSystem.join(TestEnv.binDir, "\(name)/module.modulemap")
            if FileSystem.exists(map) { flags += ["-Xcc", "-fmodule-map-file=\(map)"] }
        }
        for target in try FileSystem.list(FileSystem.join(TestEnv.root, "Sources")) {
            let include = FileSystem.join(TestEnv.root, "Sources/\(target)/include")
            if FileSystem.isDirectory(include) { flags += ["-Xcc", "-I\(include)"] }
            if FileSystem.exists(FileSystem.join(TestEnv.root, "Sources/\(target)/module.modulemap")) {
                flags += ["-I", FileSystem.join(TestEnv.root, "Sources/\(target)")]
            }
        }
        return flags
    }

    /// Each Swift example of the application side as the body of a function
    /// of its own (imports hoisted), in one file.
    static func hostSource(_ blocks: [Block]) -> String {
        var imports: Set<String> = ["import Descartes"]
        var functions = ""
        for (n, b) in blocks.enumerated() {
            // Imports are hoisted (an empty line keeps the numbering).
            let body = b.text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
                guard line.hasPrefix("import ") else { return String(line) }
                imports.insert(String(line))
                return ""
            }
            functions += "func example\(n)() async throws {\n"
            for c in b.context {
                if c.hasPrefix("import ") { imports.insert(c) } else { functions += c + "\n" }
            }
            functions += "#sourceLocation(file: \"\(FileSystem.join(TestEnv.root, b.file))\", line: \(b.line + 1))\n"
            functions += body.joined(separator: "\n") + "\n#sourceLocation()\n}\n\n"
        }
        return imports.sorted().joined(separator: "\n") + "\n\n" + functions
    }

    @Test func theSwiftExamplesCompile() async throws {
        let swift = try Self.blocks().filter { $0.lang == "swift" && !$0.isPackageManifest }
        let host = swift.filter { !$0.isPluginSide }
        let plugins = swift.filter(\.isPluginSide)
        #expect(host.count >= 8 && plugins.count >= 2)
        let work = TempDir("doc-examples")
        let flags = try Self.compilerFlags()
        // The application side in one run; each plugin (a library of its own,
        // with its own entry point) in one run each, all at once.
        var runs: [(what: String, argv: [String])] = [
            ("the application examples", ["swiftc", "-typecheck", "-suppress-warnings", "-swift-version", "6", "-parse-as-library"] + flags + [work.write("examples.swift", Self.hostSource(host))])
        ]
        for (n, b) in plugins.enumerated() {
            let file = work.write("plugin\(n).swift", "#sourceLocation(file: \"\(FileSystem.join(TestEnv.root, b.file))\", line: \(b.line + 1))\n" + b.text + "\n")
            runs.append(("\(b)", ["swiftc", "-typecheck", "-suppress-warnings", "-swift-version", "6", "-parse-as-library", "-module-name", "Plugin\(n)"] + flags + [file]))
        }
        let results = await withTaskGroup(of: (String, ProcResult).self) { group in
            for r in runs { group.addTask { (r.what, await Proc.run(r.argv, timeout: .seconds(300))) } }
            var out: [(String, ProcResult)] = []
            for await r in group { out.append(r) }
            return out
        }
        for (what, r) in results {
            #expect(r.status == 0, "\(what) do not compile:\n\(r.stderr)\(r.stdout)")
        }
    }

    /// What a shell block's `<!-- doc-test: ... -->` lines ask for.
    struct ShellCheck {
        var expected: [String] = []
        var expectedInFiles: [(file: String, text: String)] = []
        var files: [String] = []
        var env: [(name: String, value: String)] = []
        /// `substitute TEXT: REGEX`: TEXT in the block stands for what its
        /// earlier lines print (REGEX's first group).
        var substitutions: [(text: String, pattern: String)] = []
        /// `private network` (a loopback of its own: a fixed port is free),
        /// `private /etc` (an overlay: what it writes there stays in the test).
        var privateNetwork = false
        var privateEtc = false
        /// `serve`: each command is a server that runs until stopped.
        var serve = false
        /// `terminal ANSWER`: it runs in a pseudo-terminal, ANSWER typed at each `[y/N]`.
        var terminalAnswer: String?
        /// `listen ADDRESS` (with `private network`): the counterparts'
        /// gateway listens at ADDRESS too, in the block's namespace.
        var listen: String?

        struct Problem: Error, CustomStringConvertible { var description: String }

        init(_ b: Block) throws(Problem) {
            for line in b.context {
                let (word, rest) = (line.prefix { $0 != " " }, String(line.drop { $0 != " " }.dropFirst()))
                switch word {
                case "expect" where !rest.isEmpty:
                    expected.append(rest)
                case "expect-in" where rest.contains(": "):
                    let colon = rest.firstRange(of: ": ")!
                    expectedInFiles.append((String(rest[..<colon.lowerBound]), String(rest[colon.upperBound...])))
                case "write" where !rest.isEmpty && !rest.hasPrefix("/") && !rest.contains(".."):
                    guard b.source(of: rest) != nil else {
                        throw Problem(description: "\(b): 'write \(rest)' but no fenced block\(rest.hasSuffix(".yaml") ? " of YAML" : "") comes before it")
                    }
                    files.append(rest)
                case "env" where rest.contains("="):
                    let eq = rest.firstIndex(of: "=")!
                    env.append((String(rest[..<eq]), String(rest[rest.index(after: eq)...])))
                case "substitute" where rest.contains(": "):
                    let colon = rest.firstRange(of: ": ")!
                    let (text, pattern) = (String(rest[..<colon.lowerBound]), String(rest[colon.upperBound...]))
                    guard (try? Regex(pattern)) != nil else { throw Problem(description: "\(b): 'substitute \(text)': '\(pattern)' is not a regular expression") }
                    guard let first = b.text.split(separator: "\n").firstIndex(where: { $0.contains(text) }), first > 0 else {
                        throw Problem(description: "\(b): 'substitute \(text)': no line after the first has '\(text)'")
                    }
                    substitutions.append((text, pattern))
                case "private" where rest == "network":
                    privateNetwork = true
                case "private" where rest == "/etc":
                    privateEtc = true
                case "serve" where rest.isEmpty:
                    serve = true
                case "terminal" where !rest.isEmpty:
                    terminalAnswer = rest
                case "listen" where rest.hasPrefix("127.0.0.1:") || rest.hasPrefix("[::1]:"):
                    listen = rest
                default:
                    throw Problem(
                        description:
                            "\(b): unknown '<!-- doc-test: \(line) -->' before a shell block; use 'expect TEXT', 'expect-in FILE: TEXT', 'write FILE', 'env NAME=VALUE', 'substitute TEXT: REGEX', 'private network', 'private /etc', 'serve', 'terminal ANSWER' or 'listen 127.0.0.1:PORT'"
                    )
                }
            }
            if let listen, !privateNetwork {
                throw Problem(description: "\(b): 'listen \(listen)' needs 'private network' (a fixed port is free only in a namespace of its own)")
            }
        }
    }

    /// Runs block `b` in `work` as its doc-test lines say: with `bash -eu`,
    /// under doc_block.py for `serve` and `terminal`, in namespaces of its
    /// own for `private`; with a `substitute`, in two parts, the second with
    /// what the first printed put in.
    static func run(_ b: Block, _ check: ShellCheck, in work: TempDir, env: [String: String], counterparts: DocCounterparts) async -> ProcResult {
        var lines = b.text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var parts: [[String]] = []
        if let split = lines.firstIndex(where: { line in check.substitutions.contains { line.contains($0.text) } }) {
            parts.append(Array(lines[..<split]))
            lines = Array(lines[split...])
        }
        parts.append(lines)
        var total = ProcResult(status: 0, signal: nil, stdout: "", stderr: "", duration: .zero)
        for (n, part) in parts.enumerated() {
            var text = part.joined(separator: "\n")
            if n > 0 {
                // What the part before printed, put in for each placeholder.
                for (placeholder, pattern) in check.substitutions {
                    let printed = total.stdout + total.stderr
                    guard let regex = try? Regex(pattern), let match = printed.firstMatch(of: regex), match.output.count > 1,
                        let value = match.output[1].substring
                    else {
                        total.status = 1
                        total.stderr += "\ndoc test: 'substitute \(placeholder)': nothing printed matches '\(pattern)'"
                        return total
                    }
                    text = text.replacingAll(placeholder, with: String(value))
                    total.stderr += "\ndoc test: \(placeholder) is \(value)\n"
                }
            }
            let script = work.write("example\(n).sh", "set -eu\ncd \(work.file("cwd"))\n" + text + "\n")
            var argv = ["bash", script]
            let runner = FileSystem.join(TestEnv.root, "Tests/Servers/doc_block.py")
            if check.serve { argv = ["python3", runner, "serve", script] }
            if let answer = check.terminalAnswer { argv = ["python3", runner, "terminal", answer, script] }
            if check.privateNetwork || check.privateEtc {
                // unshare's mount namespace is private (no propagation back).
                var prelude = ["set -e"]
                if check.privateNetwork { prelude.append("PATH=/usr/sbin:/sbin:$PATH ip link set lo up") }
                if check.privateEtc {
                    try? FileSystem.makeDirectories(work.file("etc-upper"))
                    try? FileSystem.makeDirectories(work.file("etc-work"))
                    prelude.append("mount -t overlay overlay -o lowerdir=/etc,upperdir=\(work.file("etc-upper")),workdir=\(work.file("etc-work")) /etc")
                }
                if let address = check.listen {
                    // The gateway in the namespace, stopped after the block;
                    // its stderr (the access log) is shown after the block's.
                    let (out, log) = (work.file("listen.out"), work.file("listen.log"))
                    prelude += [
                        "DESCARTES_PLUGIN_PATH=\(counterparts.pluginPath) descartes serve --config \(counterparts.configFile) --listen \(address) >\(out) 2>\(log) </dev/null &",
                        "gateway=$!",
                        "i=0; while [ ! -s \(out) ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done",
                        "[ -s \(out) ] || { echo \"doc test: descartes serve --listen \(address) did not start:\" >&2; cat \(log) >&2; kill $gateway; exit 1; }",
                        "set +e", #""$@"; status=$?"#, "kill -TERM $gateway; wait $gateway", "cat \(log) >&2", "exit $status",
                    ]
                } else {
                    prelude.append(#"exec "$@""#)
                }
                argv = ["unshare"] + (geteuid() == 0 ? [] : ["-r"]) + (check.privateNetwork ? ["-n"] : []) + (check.privateEtc ? ["-m"] : [])
                    + ["--", "sh", "-c", prelude.joined(separator: "\n"), "sh"] + argv
            }
            let r = await Proc.run(argv, env: env, timeout: .seconds(90))
            total.stdout += r.stdout
            total.stderr += r.stderr
            total.duration += r.duration
            total.status = r.status
            total.signal = r.signal
            if r.status != 0 || r.signal != nil { break }
        }
        return total
    }

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theShellExamplesRun() async throws {
        let prefix = try #require(TestEnv.prefix)
        let runnable = try Self.blocks().filter { $0.lang != "swift" && $0.attribute.isEmpty }
        #expect(runnable.count >= 19, "only \(runnable.count) shell examples run")
        let counterparts = try await DocCounterparts.start(prefix: prefix)
        defer { counterparts.stop() }
        let results = await withTaskGroup(of: (Block, ShellCheck?, TempDir, ProcResult?, String?).self) { group in
            var pending = runnable[...]
            var out: [(Block, ShellCheck?, TempDir, ProcResult?, String?)] = []
            func add(_ b: Block) {
                group.addTask {
                    let work = TempDir("doc-shell")
                    let check: ShellCheck
                    do { check = try ShellCheck(b) } catch { return (b, nil, work, nil, "\(error)") }
                    var env = counterparts.environment(work)
                    for (k, v) in check.env { env[k] = counterparts.expand(v) }
                    for name in check.files {
                        try? FileSystem.makeDirectories(FileSystem.directory(of: work.file("cwd/\(name)")))
                        _ = work.write("cwd/\(name)", b.source(of: name) ?? "")
                    }
                    return (b, check, work, await Self.run(b, check, in: work, env: env, counterparts: counterparts), nil)
                }
            }
            // A few at a time: each runs the CLI, some of them a dozen times.
            for _ in 0..<3 { if let b = pending.popFirst() { add(b) } }
            for await r in group {
                out.append(r)
                if let b = pending.popFirst() { add(b) }
            }
            return out
        }
        for (b, check, work, r, problem) in results {
            if let problem { Issue.record("\(problem)") }
            guard let check, let r else { continue }
            #expect(r.status == 0, "\(b) failed:\n\(r)")
            for text in check.expected {
                #expect(r.stdout.contains(text) || r.stderr.contains(text), "\(b) did not print '\(text)':\n\(r)")
            }
            for (file, text) in check.expectedInFiles {
                let written = (try? FileSystem.readText(work.file("cwd/\(file)"), limit: 1 << 22)) ?? "(no such file)"
                #expect(written.contains(text), "\(b): \(file) does not contain '\(text)':\n\(written)\n\(r)")
            }
        }
    }
}

/// The loopback counterparts the shell examples run against, started once
/// for the suite, so an example runs as its reader types it (keys, endpoints
/// and programs come from the environment the manifests read, as on the
/// reader's machine):
///
/// - OpenAI's and Anthropic's APIs (and a vLLM server's): `descartes serve`
///   in front of the scripted test plugin, which streams the prompt back;
///   its providers.yaml names the models the examples ask for (each
///   provider's default model, `meta-llama/...`), and `gpt-4o-mini` is a
///   route that answers a request with tools with a tool call;
/// - Ollama, llama.cpp and OpenAI's batch API: the scripted server, with the
///   conformance suite's recorded bodies;
/// - `claude`, `codex`, `my-agent` and `vibe-acp`: the conformance suite's
///   stand-ins (conformance/*/stand-in.sh); `llm`: a few lines of shell.
final class DocCounterparts: @unchecked Sendable {
    let gateway: String
    let server: ScriptedServer
    let prefix: String
    /// The gateway's providers.yaml and plugin directory (for `listen`).
    var configFile: String { dir.file("providers.yaml") }
    var pluginPath: String { plugins.path }
    private let gatewayProcess: BackgroundServer
    private let plugins: PluginDir
    private let dir: TempDir

    private init(gateway: String, server: ScriptedServer, prefix: String, gatewayProcess: BackgroundServer, plugins: PluginDir, dir: TempDir) {
        self.gateway = gateway
        self.server = server
        self.prefix = prefix
        self.gatewayProcess = gatewayProcess
        self.plugins = plugins
        self.dir = dir
    }

    static let gatewayConfig = """
        providers:
          words: {plugin: scripted}
          tool-caller: {plugin: scripted, default_script: ["tools:1"]}
          claude-sonnet-4-5: {plugin: scripted}      # anthropic's default model
          text-embedding-3-small: {plugin: scripted} # openai's default embedding model
          meta-llama: {plugin: scripted, default_script: ["echo-model"]}  # vllm -m meta-llama/Llama-3.1-8B-Instruct: answers the model
          qwen2.5-7b-instruct: {plugin: scripted}    # docs/writing-a-plugin.md's lab manifest's default model
          claude-opus-5-5: {plugin: scripted}        # what the real claude 2.1.331 asks for when told no model (docs/headless.md offline)
          my-model: {plugin: scripted}               # docs/headless.md's offline codex example
        routes:
          gpt-4o-mini:                               # openai's default model
            candidates: [words, tool-caller]
            strategy: rules
            rules:
              - when: {tools: true}
                use: tool-caller
        """

    static func start(prefix: String) async throws -> DocCounterparts {
        let dir = TempDir("doc-counterparts")
        let plugins = PluginDir().addScripted()
        let config = dir.write("providers.yaml", gatewayConfig)
        try FileSystem.makeDirectories(dir.file("state"))
        let gw = try await BackgroundServer.start(
            [FileSystem.join(prefix, "bin/descartes"), "serve", "--config", config, "--listen", "127.0.0.1:0"], log: dir.file("serve.log"),
            env: [
                "PATH": "/usr/bin:/bin", "HOME": dir.path, "XDG_STATE_HOME": dir.file("state"), "DESCARTES_PLUGIN_PATH": plugins.path,
                "NO_COLOR": "1",
            ])
        guard let url = gw.firstLine.split(separator: " ").last.map(String.init), url.hasPrefix("http://127.0.0.1:") else {
            gw.stop()
            throw BackgroundServer.StartError(description: "descartes serve printed '\(gw.firstLine)', not its address; \(gw.log)")
        }
        let server = try await ScriptedServer.start()
        let c = DocCounterparts(gateway: url, server: server, prefix: prefix, gatewayProcess: gw, plugins: plugins, dir: dir)
        try await c.scriptServer()
        c.writeStandIns()
        return c
    }

    func stop() { gatewayProcess.stop() }

    /// A value of an `env` line, the counterparts' URLs put in.
    func expand(_ value: String) -> String {
        value.replacing("{gateway}", with: gateway).replacing("{server}", with: server.url)
    }

    private func scriptServer() async throws {
        func file(_ name: String) -> String { FileSystem.join(TestEnv.root, "conformance/\(name)") }
        func body(_ name: String, _ type: String, stream: Bool) -> ScriptedServer.Response {
            var o: JSONObject = ["headers": [["content-type", .string(type)]], "body_file": .string(file(name))]
            if stream { o["framing"] = "chunked" }
            return ScriptedServer.Response(o)
        }
        func json(_ text: String) -> ScriptedServer.Response { .json(text) }
        let openaiBatch = #"{"id":"batch_doc1","object":"batch","endpoint":"/v1/chat/completions","input_file_id":"file-doc-in","completion_window":"24h","status":"STATUS","created_at":1764000000,"request_counts":{"total":2,"completed":COMPLETED,"failed":0},"errors":null,"output_file_id":OUTPUT,"error_file_id":null}"#
        func batch(_ status: String, done: Bool) -> ScriptedServer.Response {
            json(
                openaiBatch.replacing("STATUS", with: status).replacing("COMPLETED", with: done ? "2" : "0")
                    .replacing("OUTPUT", with: done ? #""file-doc-out""# : "null"))
        }
        let answers = ["first", "second"].map { id in
            #"{"id":"batch_req_\#(id)","custom_id":"\#(id)","response":{"status_code":200,"request_id":"req_\#(id)","body":{"id":"chatcmpl-\#(id)","object":"chat.completion","created":1764000100,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"batch answer \#(id)"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}},"error":null}"#
        }
        try await server.script([
            // Ollama's native API (conformance/ollama.yaml's bodies).
            "POST /api/chat": [
                body("ollama/text.ndjson", "application/x-ndjson", stream: true).with(["match": #""stream":true"#]),
                body("ollama/text.json", "application/json", stream: false),
            ],
            "GET /api/version": [json(#"{"version":"0.12.3"}"#)],
            "GET /api/tags": [body("ollama/tags.json", "application/json", stream: false)],
            "POST /api/show": [body("ollama/show.json", "application/json", stream: false)],
            // llama-server (conformance/llamacpp.yaml's).
            "POST /v1/chat/completions": [
                // docs/structured-output.md's --schema example: a conforming answer.
                json(#"{"id":"chatcmpl-doc","object":"chat.completion","model":"gemma-3-270m","choices":[{"index":0,"message":{"role":"assistant","content":"{\"name\": \"Ada\", \"age\": 36}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#)
                    .with(["match": #""response_format""#]),
                body("openai/text.sse", "text/event-stream", stream: true).with(["match": #""stream":true"#]),
                body("openai/text.json", "application/json", stream: false),
            ],
            "GET /v1/models": [body("llamacpp/models.json", "application/json", stream: false)],
            "GET /health": [json(#"{"status":"ok"}"#)],
            // OpenAI's Files and Batches APIs: done at the first poll.
            "POST /v1/files": [json(#"{"id":"file-doc-in","object":"file","purpose":"batch"}"#)],
            "POST /v1/batches": [batch("validating", done: false)],
            "GET /v1/batches/batch_doc1": [batch("completed", done: true)],
            "GET /v1/files/file-doc-out/content": [json(answers.joined(separator: "\n") + "\n")],
        ])
    }

    /// The agent programs the examples name, in `bin`: the conformance
    /// suite's stand-ins told what to play.
    private func writeStandIns() {
        try? FileSystem.makeDirectories(dir.file("bin"))
        func standIn(_ name: String, _ script: String, playing mode: String = "text") {
            _ = dir.write(
                "bin/\(name)", "#!/bin/sh\nSTAND_IN=\(mode) exec \(FileSystem.join(TestEnv.root, "conformance/\(script)")) \"$@\"\n", mode: 0o755)
        }
        standIn("claude", "claude-code-cli/stand-in.sh")
        standIn("codex", "codex-cli/stand-in.sh")
        standIn("my-agent", "headless-cli/stand-in.sh")
        // Asks permission to commit or to clean (docs/headless.md's approvals).
        standIn("vibe-acp", "acp/stand-in.sh", playing: "tools")
        // Simon Willison's `llm`, as the llm dialect runs it (`-m MODEL -u --
        // PROMPT`: the answer names the model, llm's usage line on stderr)
        // and as `headless-cli`'s text protocol with `args={prompt}` does
        // (`-- PROMPT`).
        _ = dir.write(
            "bin/llm",
            """
            #!/bin/sh
            model= usage=
            while [ $# -gt 0 ]; do
              case "$1" in -m) model=$2; shift 2 ;; -u) usage=1; shift ;; --) shift; break ;; *) break ;; esac
            done
            printf 'llm answers: %s%s\\n' "$1" "${model:+ (model $model)}"
            [ -z "$usage" ] || echo "Token usage: 11 input, 4 output" >&2

            """, mode: 0o755)
    }

    /// The environment of one example run in `work` (its directory `cwd`,
    /// its home `home`): what the reader's machine would have, pointed here.
    func environment(_ work: TempDir) -> [String: String] {
        try? FileSystem.makeDirectories(work.file("home"))
        try? FileSystem.makeDirectories(work.file("cwd"))
        // The files the examples name as the reader's own (docs/gateway.md's
        // gateway.yaml, README's tools.json and requests.jsonl).
        _ = work.write(
            "cwd/tools.json",
            #"[{"name": "get_weather", "description": "The weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]"#)
        _ = work.write(
            "cwd/requests.jsonl",
            #"{"custom_id": "first", "messages": [{"role": "user", "content": "capital of France?"}]}"# + "\n"
                + #"{"custom_id": "second", "messages": [{"role": "user", "content": "weather in Oslo?"}]}"# + "\n")
        _ = work.write("cwd/gateway.yaml", "providers:\n  local: {plugin: echo}\n")
        let v1 = gateway + "/v1"
        return [
            "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state"), "NO_COLOR": "1", "LANG": "C.UTF-8",
            "PATH": "\(dir.file("bin")):\(prefix)/bin:/usr/local/bin:/usr/bin:/bin",
            "PKG_CONFIG_PATH": "\(prefix)/lib/pkgconfig",
            // Keys of the reader (the counterparts take any).
            "OPENAI_API_KEY": "sk-doc-example-0123456789", "ANTHROPIC_API_KEY": "sk-ant-doc-example-0123456789",
            "MISTRAL_API_KEY": "doc-example-mistral-0123456789",
            // Their servers, here.
            "OPENAI_ENDPOINT": v1, "ANTHROPIC_ENDPOINT": v1, "VLLM_ENDPOINT": v1, "LAB_GPU_ENDPOINT": v1,
            "OLLAMA_HOST": server.url, "LLAMACPP_ENDPOINT": server.url + "/v1",
        ]
    }
}

/// A server child for a whole suite, behind a `/bin/sh` that stops it when
/// its stdin closes: at `stop()`, or when this process dies however it dies.
/// Its stderr goes to a file (`log`).
final class BackgroundServer: @unchecked Sendable {
    let firstLine: String
    let logFile: String
    private let pid: pid_t
    private let fds: Lock<(toChild: Int32, fromChild: Int32)?>

    private init(firstLine: String, logFile: String, pid: pid_t, toChild: Int32, fromChild: Int32) {
        self.firstLine = firstLine
        self.logFile = logFile
        self.pid = pid
        fds = Lock((toChild, fromChild))
    }

    /// What the server wrote on stderr so far.
    var log: String { "its stderr: " + ((try? FileSystem.readText(logFile, limit: 1 << 20)) ?? "(none)") }

    struct StartError: Error, CustomStringConvertible { var description: String }

    /// Starts `argv` and waits (up to 30 s) for the first line it prints.
    static func start(_ argv: [String], log: String, env: [String: String]) async throws -> BackgroundServer {
        try await withCheckedThrowingContinuation { c in
            Proc.onThread {
                do { c.resume(returning: try startBlocking(argv, log: log, env: env)) } catch { c.resume(throwing: error) }
            }
        }
    }

    private static func startBlocking(_ argv: [String], log: String, env: [String: String]) throws(StartError) -> BackgroundServer {
        // The server reads nothing from stdin: the shell waits on it, then
        // stops the server and waits for it.
        let supervisor = #"exec 3<&0; "$@" </dev/null & child=$!; cat <&3 >/dev/null; kill -TERM $child; wait $child"#
        let child: Proc.PipedChild
        do { child = try Proc.spawnPiped(["/bin/sh", "-c", supervisor, "sh"] + argv, env: env, stderrFile: log) } catch {
            throw StartError(description: error.description)
        }
        var pending: [UInt8] = []
        let line = Proc.readLine(child.fromChild, &pending, until: .now + .seconds(30)) ?? ""
        let b = BackgroundServer(firstLine: line, logFile: log, pid: child.pid, toChild: child.toChild, fromChild: child.fromChild)
        if line.isEmpty {
            b.stop()
            throw StartError(description: "\(argv.joined(separator: " ")) printed nothing on stdout in 30 s; \(b.log)")
        }
        return b
    }

    /// Closes the shell's stdin and waits for it (it waits for the server).
    func stop() {
        guard let f = fds.withLock({ f in defer { f = nil }; return f }) else { return }
        close(f.toChild)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        close(f.fromChild)
    }
}

/// README.md's Swift quick start, compiled here as written and run against
/// the echo plugin the test prefix installs, in a process of its own whose
/// DESCARTES_PLUGIN_PATH names the prefix (this process's environment is
/// shared by every test and is not changed).
@Suite struct ReadmeQuickStartTests {
    static let marker = "DESCARTES_QUICK_START_CHILD"

    func quickStart() async throws -> String {
        var printed = ""
        func print(_ item: String, terminator: String = "\n") { printed += item + terminator }
        // README.md, begin
        let backend = try ProviderFactory.create("echo", config: ["delay_ms": 20])
        let answer = try await backend.complete(ModelRequest(prompt: "Hello"))
        for try await event in backend.stream(ModelRequest(prompt: "word by word")) {
            if case .textDelta(let text) = event { print(text, terminator: "") }
        }
        // README.md, end
        await backend.shutdown()
        return answer.text + "|" + printed
    }

    @Test(.enabled(if: Environment.get(Self.marker) == "1", "run by theQuickStartRunsAsWritten in a process of its own"))
    func quickStartChild() async throws {
        #expect(try await quickStart() == "Hello|word by word")
    }

    @Test func theQuickStartIsTheOneCompiledHere() throws {
        let readme = try FileSystem.readText(FileSystem.join(TestEnv.root, "README.md"), limit: 1 << 20)
        let intro = try #require(readme.firstRange(of: "From Swift (`.product(name: \"Descartes\""))
        let open = try #require(readme[intro.upperBound...].firstRange(of: "```swift\n"))
        let close = try #require(readme[open.upperBound...].firstRange(of: "\n```\n"))
        let example = readme[open.upperBound..<close.lowerBound].split(separator: "\n").filter { !$0.hasPrefix("import ") && !$0.isEmpty }
        let source = try FileSystem.readText(FileSystem.join(TestEnv.root, "Tests/DescartesTests/DocExamplesTests.swift"), limit: 1 << 20)
        let begin = try #require(source.firstRange(of: "        // README.md, begin\n"))
        let end = try #require(source[begin.upperBound...].firstRange(of: "\n        // README.md, end"))
        let compiled = source[begin.upperBound..<end.lowerBound].split(separator: "\n").map { $0.dropFirst(8) }
        #expect(example.map(String.init) == compiled.map(String.init))
    }

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the echo plugin the prefix `make test` installs"))
    func theQuickStartRunsAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        var env = Environment.current()
        env["DESCARTES_PLUGIN_PATH"] = "\(prefix)/lib/descartes/plugins"
        env[Self.marker] = "1"
        env["NO_COLOR"] = "1"
        let exe = try #require(FileSystem.executablePath())
        let r = await Proc.run(
            [exe, "--testing-library", "swift-testing", "--filter", "ReadmeQuickStartTests/quickStartChild"], env: env, timeout: .seconds(120))
        #expect(r.status == 0, "\(r)")
        // swift-testing reports on stderr.
        let report = r.stdout + r.stderr
        #expect(report.contains("Test run with 1 test in 1 suite passed"), "\(r)")
    }
}
