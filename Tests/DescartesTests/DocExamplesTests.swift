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
///   block runs with `bash -eu` in a fresh home, the test prefix's `bin` on
///   PATH and its plugins (the echo plugin among them) on
///   DESCARTES_PLUGIN_PATH;
/// - `checked-by: NAME`: a test named NAME (a function or suite in
///   Tests/DescartesTests) runs the block as written;
/// - `no-run: REASON`: a shell block that cannot run here (a real API key, a
///   synopsis with placeholders), with the reason.
///
/// A Swift block may be preceded by `<!-- doc-test: CODE -->` lines: CODE
/// declares what the excerpt assumes (a `backend`), compiled before it.
/// A block in any other form fails `everyExampleIsCovered`.
@Suite struct DocExamplesTests {
    struct Block: CustomStringConvertible {
        var file: String
        var line: Int
        var lang: String
        var attribute: String
        var text: String
        var context: [String]
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

    static func blocks() throws -> [Block] {
        var out: [Block] = []
        for doc in try documents() {
            let text = try FileSystem.readText(FileSystem.join(TestEnv.root, doc), limit: 1 << 22)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var i = 0
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
                if languages.contains(lang) {
                    var context: [String] = []
                    var k = i - 1
                    while k >= 0, lines[k].hasPrefix("<!-- doc-test: "), lines[k].hasSuffix(" -->") {
                        context.insert(String(lines[k].dropFirst("<!-- doc-test: ".count).dropLast(" -->".count)), at: 0)
                        k -= 1
                    }
                    let indent = lines[i].count - trimmed.count
                    let body = lines[(i + 1)..<min(j, lines.count)].map { String($0.dropFirst(min(indent, $0.prefix { $0 == " " }.count))) }
                    out.append(Block(file: doc, line: i + 1, lang: lang, attribute: attribute, text: body.joined(separator: "\n"), context: context))
                }
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

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theShellExamplesRun() async throws {
        let prefix = try #require(TestEnv.prefix)
        let runnable = try Self.blocks().filter { $0.lang != "swift" && $0.attribute.isEmpty }
        for b in runnable {
            let work = TempDir("doc-shell")
            try FileSystem.makeDirectories(work.file("home"))
            let env = [
                "HOME": work.file("home"), "PATH": "\(prefix)/bin:/usr/local/bin:/usr/bin:/bin", "NO_COLOR": "1", "LANG": "C.UTF-8",
                "DESCARTES_PLUGIN_PATH": "\(prefix)/lib/descartes/plugins", "XDG_STATE_HOME": work.file("state"),
            ]
            let script = work.write("example.sh", "set -eu\ncd \(work.path)\n" + b.text + "\n")
            let r = await Proc.run(["bash", script], env: env, timeout: .seconds(60))
            #expect(r.status == 0, "\(b) failed:\n\(r)")
        }
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
