import Descartes
import Glibc
import Testing
import DescartesSupport

/// docs/writing-a-plugin.md, run as written against the prefix `make test`
/// installs: a newcomer builds the C example out of tree from the docs
/// alone and sees `plugins verify` and the conformance suite pass.
@Suite struct PluginKitDocTests {
    /// The fenced blocks of one section of the doc, with their language.
    static func blocks(section: String, until next: String) throws -> [(lang: String, text: String)] {
        let doc = try FileSystem.readText(FileSystem.join(TestEnv.root, "docs/writing-a-plugin.md"), limit: 1 << 20)
        guard let start = Self.find("\n## \(section)\n", in: doc[...]), let end = Self.find("\n## \(next)\n", in: doc[start.upperBound...]) else {
            throw Failure(description: "no section '\(section)' before '\(next)'")
        }
        var out: [(String, String)] = []
        var lang: String? = nil
        var body = ""
        for line in doc[start.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") {
                if let l = lang {
                    out.append((l, body))
                    lang = nil
                } else {
                    // The language, without the fence's attribute (DocExamplesTests).
                    lang = String(line.dropFirst(3).prefix { $0 != " " })
                    body = ""
                }
            } else if lang != nil {
                body += line + "\n"
            }
        }
        return out
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    static func find(_ needle: String, in hay: Substring) -> Range<String.Index>? {
        var i = hay.startIndex
        while i < hay.endIndex {
            if hay[i...].hasPrefix(needle) { return i..<hay.index(i, offsetBy: needle.count) }
            i = hay.index(after: i)
        }
        return nil
    }

    /// The environment of a newcomer: a fresh home, the prefix on PATH.
    func newcomer(_ prefix: String, home: String) -> [String: String] {
        [
            "HOME": home, "PATH": "\(prefix)/bin:/usr/local/bin:/usr/bin:/bin", "PKG_CONFIG_PATH": "\(prefix)/lib/pkgconfig", "NO_COLOR": "1",
            "LANG": "C.UTF-8",
        ]
    }

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theCWalkthroughWorksAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try Self.blocks(section: "A plugin in C", until: "An HTTP plugin in C")
        // The manifest is the one yaml block; every sh block runs in order.
        let manifest = try #require(blocks.first { $0.lang == "yaml" }?.text)
        var script = "set -eu\n"
        for b in blocks where b.lang == "sh" {
            script += b.text
            // After the build step, the manifest the doc shows is written.
            if b.text.contains("-o libdescartes-shout.so") { script += "cat > shout.yaml <<'MANIFEST'\n\(manifest)MANIFEST\n" }
        }
        let work = TempDir("newcomer")
        try FileSystem.makeDirectories(work.file("home"))
        try FileSystem.makeDirectories(work.file("src"))
        let scriptFile = work.write("walkthrough.sh", "cd \(work.file("src"))\n" + script)
        let r = await Proc.run(["bash", scriptFile], env: newcomer(prefix, home: work.file("home")), timeout: .seconds(240))
        #expect(r.status == 0, "\(r)")
        let out = r.stdout
        let lines = out.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(lines.contains { $0.count > 4 && $0[0] == "shout" && $0[1] == "0.1.0" && $0[4] == "available" }, "plugins list: \(out)")
        #expect(lines.contains { $0.count > 1 && $0[0] == "shout" && $0[1] == "ok" }, "plugins verify: \(out)")
        #expect(out.contains("one two three\n"), "complete: \(out)")
        #expect(out.contains("Conformance of 'shout'"))
        #expect(out.contains("13 passed, 0 failed, 2 skipped"), "conformance: \(out)")
    }

    /// Where the symbolic link at `path` points, as written in it.
    static func linkTarget(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        return n < 0 ? nil : String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The sh blocks of a section as one `set -eu` script.
    static func script(_ blocks: [(lang: String, text: String)]) -> String {
        "set -eu\n" + blocks.filter { $0.lang == "sh" }.map(\.text).joined()
    }

    /// "An HTTP plugin in C": the HTTP example copied from the installed
    /// prefix and built with its headers alone (pkg-config), under 400
    /// lines, passes the whole conformance suite with the OpenAI spec that
    /// ships, and its faults are each named (`KitConformanceTests`).
    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theHTTPWalkthroughWorksAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try Self.blocks(section: "An HTTP plugin in C", until: "Memory errors in C plugins: ASan and valgrind")
        let work = TempDir("newcomer-http")
        try FileSystem.makeDirectories(work.file("home"))
        try FileSystem.makeDirectories(work.file("src"))
        let r = await Proc.run(
            ["bash", work.write("walkthrough.sh", "cd \(work.file("src"))\n" + Self.script(blocks))], env: newcomer(prefix, home: work.file("home")),
            timeout: .seconds(240))
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains("Conformance of 'openai-c' (\(work.file("src/chat/libdescartes-openai-c.so")))"), "\(r.stdout)")
        #expect(r.stdout.contains("spec: \(prefix)/share/descartes/conformance/openai.yaml"), "\(r.stdout)")
        #expect(r.stdout.contains("15 passed, 0 failed, 1 skipped"), "\(r.stdout)")
        for check in ["stream", "concurrency", "errors", "cancel", "deadlines", "shutdown", "request", "secrets"] {
            #expect(r.stdout.contains("  ok    \(check) "), "\(check): \(r.stdout)")
        }
        // The copy is the installed one, and it is short because of the helpers.
        let source = try FileSystem.readText(work.file("src/chat/openai-c.c"), limit: 1 << 20)
        #expect(source == (try FileSystem.readText("\(prefix)/share/descartes/examples/openai-c.c", limit: 1 << 20)))
        let lines = source.split(separator: "\n", omittingEmptySubsequences: false).count - 1
        #expect(lines < 400, "openai-c.c has \(lines) lines")
        #expect(source.contains("#include <descartes/json.h>") && source.contains("#include <descartes/sse.h>"))
    }

    /// The C program in "The helpers" compiles with the installed headers
    /// (pkg-config) under -Werror and AddressSanitizer, and prints what its
    /// comments say.
    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theHelperExampleRunsAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try Self.blocks(section: "An HTTP plugin in C", until: "Memory errors in C plugins: ASan and valgrind")
        let program = try #require(blocks.first { $0.lang == "c" }?.text)
        let work = TempDir("helper-example")
        let source = work.write("example.c", program)
        let script = """
            set -eu
            cc -std=c11 -Wall -Wextra -pedantic -Werror -g -fsanitize=address,undefined -fno-sanitize-recover=all \
               $(pkg-config --cflags descartes-plugin) -o \(work.file("example")) \(source)
            \(work.file("example"))
            """
        let r = await Proc.run(["bash", "-c", script], env: newcomer(prefix, home: work.path).merging(["ASAN_OPTIONS": "detect_leaks=1"]) { $1 })
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Say \\\"hi\\\"\\n\"}]}\nHello é😀 (finished: yes)\n", "\(r)")
        // What the comments in the block say it prints.
        #expect(program.contains("/* {\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Say \\\"hi\\\"\\n\"}]} */"))
        #expect(program.contains("/* Hello é😀 (finished: yes) */"))
    }

    /// "Memory errors in C plugins": the ASan recipe as written passes the
    /// HTTP example clean and names the use-after-free of its `uaf-destroy`
    /// fault (the issue's "UAF in destroy" mutant, which the suite alone
    /// passes); the valgrind recipe names it too, and finds nothing in the
    /// clean example with the installed suppressions. Each block runs on its
    /// own, in the `chat` directory the HTTP walkthrough left.
    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theSanitizerRecipeWorksAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let http = try Self.blocks(section: "An HTTP plugin in C", until: "Memory errors in C plugins: ASan and valgrind")
        let blocks = try Self.blocks(section: "Memory errors in C plugins: ASan and valgrind", until: "A plugin in Swift").filter { $0.lang == "sh" }.map(\.text)
        #expect(blocks.count == 3)
        guard blocks.count == 3 else { return }
        let work = TempDir("newcomer-sanitizers")
        try FileSystem.makeDirectories(work.file("home"))
        try FileSystem.makeDirectories(work.file("src"))
        // The chat directory: the HTTP walkthrough's first block (copy the example).
        let setup = try #require(http.first { $0.lang == "sh" }?.text.split(separator: "\n").prefix(2).joined(separator: "\n"))
        let made = await Proc.run(["bash", "-c", "set -eu\ncd \(work.file("src"))\n\(setup)\n"], env: newcomer(prefix, home: work.file("home")))
        #expect(made.status == 0, "\(made)")
        let chat = work.file("src/chat")
        var env = newcomer(prefix, home: work.file("home"))
        env["DESCARTES_PLUGIN_PATH"] = chat
        func run(_ text: String) async -> ProcResult {
            await Proc.run(["bash", "-c", "set -eu\ncd \(chat)\n\(text)\n"], env: env, timeout: .seconds(600))
        }
        let clean = await run(blocks[0])
        #expect(clean.status == 0, "ASan, clean: \(clean)")
        #expect(clean.stdout.contains(" 0 failed") && !clean.stderr.contains("AddressSanitizer"), "ASan, clean: \(clean)")

        let uaf = await run(blocks[1])
        #expect(uaf.status != 0, "ASan, uaf-destroy: \(uaf)")
        #expect(uaf.stderr.contains("ERROR: AddressSanitizer: heap-use-after-free"), "ASan, uaf-destroy: \(uaf)")
        #expect(uaf.stderr.contains("in count_worker") && uaf.stderr.contains("in op_destroy"), "ASan, uaf-destroy: \(uaf.stderr)")

        let grind = await run(blocks[2])
        #expect(grind.status == 99, "valgrind, uaf-destroy: \(grind)")
        #expect(grind.stderr.contains("Invalid read") && grind.stderr.contains("by 0x") && grind.stderr.contains("op_destroy (openai-c.c:"), "valgrind: \(grind.stderr)")
        // The same build with the fault off: nothing, the Swift runtime's false report suppressed.
        let quiet = await run(blocks[2].replacingOccurrences(of: "OPENAI_C_FAULT=uaf-destroy ", with: ""))
        #expect(quiet.stderr.contains("ERROR SUMMARY: 0 errors"), "valgrind, clean: \(quiet.stderr)")
        #expect(quiet.stdout.contains("  ok    shutdown "), "valgrind, clean: \(quiet.stdout)")
    }

    /// The Swift walkthrough builds a SwiftPM package against the kit the
    /// prefix installed (share/descartes/swift/descartes), not this
    /// checkout: minutes of compiling the kit in release, so it runs when
    /// asked: DESCARTES_SLOW_TESTS=1 make test.
    @Test(.enabled(if: TestEnv.prefix != nil && Environment.get("DESCARTES_SLOW_TESTS") == "1", "DESCARTES_SLOW_TESTS=1 and make test"))
    func theSwiftWalkthroughWorksAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try Self.blocks(section: "A plugin in Swift", until: "Rules worth repeating")
        let swift = blocks.filter { $0.lang == "swift" }
        let package = try #require(swift.first { $0.text.contains("swift-tools-version") }?.text)
        let source = try #require(swift.first { $0.text.contains("ShoutBackend") }?.text)
        let work = TempDir("newcomer-swift")
        // The doc's first block links the installed kit as `descartes` and enters shout-swift.
        work.write("shout-swift/Package.swift", package)
        work.write("shout-swift/Sources/ShoutPlugin/Shout.swift", source)
        try FileSystem.makeDirectories(work.file("home/.local/share/descartes/plugins"))
        var script = "set -eu\ncd \(work.path)\n"
        for b in blocks where b.lang == "sh" { script += b.text }
        let r = await Proc.run(["bash", work.write("walkthrough.sh", script)], env: newcomer(prefix, home: work.file("home")).merging(["PATH": "\(prefix)/bin:\(Environment.get("PATH") ?? "/usr/bin:/bin")"]) { $1 }, timeout: .seconds(900))
        #expect(r.status == 0, "\(r)")
        #expect(Self.linkTarget(work.file("descartes")) == "\(prefix)/share/descartes/swift/descartes", "the installed kit, not the checkout")
        #expect(r.stdout.contains("HELLO FROM SWIFT"), "\(r.stdout)")
        #expect(r.stdout.contains("13 passed, 0 failed, 2 skipped"), "\(r.stdout)")
    }
}
