import Descartes
import Testing
import DescartesSupport

/// Manifests name libraries the way Vulkan ICD manifests do (issue 20): a
/// bare file name is looked for beside the manifest, then in the plugin
/// search path; `plugins verify` fails a manifest declaring config keys
/// the library's own manifest does not.
@Suite struct KitManifestTests {
    /// An install prefix's plugin directory: the OpenAI library with its own
    /// manifest, and github-models over the same library.
    let prefix = PluginDir().addBuilt(provider: "openai").addBuilt(provider: "github-models", library: "openai")
    /// The user's directory: a manifest only, naming the library by file name.
    let user = PluginDir()
    let work = TempDir("descartes-kit-manifest")

    func cli(_ args: [String]) async -> ProcResult {
        await Proc.descartes(args, env: ["DESCARTES_PLUGIN_PATH": user.path + ":" + prefix.path, "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state")])
    }

    func manifest(extraKey: String? = nil) -> String {
        """
        manifest_version: 1
        provider: lab
        version: 1.0.0
        library: libdescartes-openai.so
        factory: openai
        abi: 1
        mode: api
        config:
          endpoint: {type: string, default: "http://127.0.0.1:9/v1"}
          api_key: {type: string, secret: true}
        \(extraKey.map { "  \($0): {type: string, default: x}" } ?? "")
        """
    }

    @Test func aBareLibraryNameIsFoundInThePluginSearchPath() async throws {
        user.dir.write("lab.yaml", manifest())
        let info = await cli(["plugins", "info", "lab"])
        #expect(info.status == 0, "\(info)")
        #expect(info.stdout.contains("library:       \(prefix.dir.file("libdescartes-openai.so"))"), "\(info)")
        let verify = await cli(["plugins", "verify", "lab"])
        #expect(verify.status == 0, "\(verify)")
        #expect(verify.stdout.contains("lab") && verify.stdout.contains("ok"), "\(verify)")
        // github-models sets models_path, which openai.yaml now declares.
        let gh = await cli(["plugins", "verify", "github-models"])
        #expect(gh.status == 0, "\(gh)")
    }

    @Test func keysTheLibraryDoesNotKnowFailVerify() async throws {
        user.dir.write("lab.yaml", manifest(extraKey: "reasoning_budjet"))
        let r = await cli(["plugins", "verify", "--json", "lab"])
        #expect(r.status == 1, "\(r)")
        let row = try JSONValue.parse(r.stdout)["results"]?[0]
        #expect(row?["ok"] == .bool(false), "\(r.stdout)")
        #expect(row?["undeclared_config"] == .array(["reasoning_budjet"]), "\(r.stdout)")
        #expect(row?["error"]?["message"]?.stringValue?.contains("not declared by the library's own manifest \(prefix.dir.file("openai.yaml"))") == true, "\(r.stdout)")
    }
}
