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
        let blocks = try Self.blocks(section: "A plugin in C", until: "A plugin in Swift")
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

    /// The Swift walkthrough builds a SwiftPM package against this checkout
    /// (a minute or more of compiling), so it runs when asked:
    /// DESCARTES_SLOW_TESTS=1 make test.
    @Test(.enabled(if: TestEnv.prefix != nil && Environment.get("DESCARTES_SLOW_TESTS") == "1", "DESCARTES_SLOW_TESTS=1 and make test"))
    func theSwiftWalkthroughWorksAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try Self.blocks(section: "A plugin in Swift", until: "Rules worth repeating")
        let swift = blocks.filter { $0.lang == "swift" }
        let package = try #require(swift.first { $0.text.contains("swift-tools-version") }?.text)
        let source = try #require(swift.first { $0.text.contains("ShoutBackend") }?.text)
        let work = TempDir("newcomer-swift")
        // "Next to a source checkout of Descartes (`descartes/`)".
        symlink(TestEnv.root, work.file("descartes"))
        work.write("shout-swift/Package.swift", package)
        work.write("shout-swift/Sources/ShoutPlugin/Shout.swift", source)
        try FileSystem.makeDirectories(work.file("home/.local/share/descartes/plugins"))
        var script = "set -eu\ncd \(work.file("shout-swift"))\n"
        for b in blocks where b.lang == "sh" { script += b.text }
        let r = await Proc.run(["bash", work.write("walkthrough.sh", script)], env: newcomer(prefix, home: work.file("home")).merging(["PATH": "\(prefix)/bin:\(Environment.get("PATH") ?? "/usr/bin:/bin")"]) { $1 }, timeout: .seconds(900))
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains("HELLO FROM SWIFT"), "\(r.stdout)")
        #expect(r.stdout.contains("13 passed, 0 failed, 2 skipped"), "\(r.stdout)")
    }
}
