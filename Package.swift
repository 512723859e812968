// swift-tools-version:6.0
//
// Descartes: one async interface over every kind of LLM backend, with
// backends loaded as plugins (dynamic libraries) through a C ABI.
//
// Layout (the architecture, as data flows):
//   Sources/descartes           the CLI
//   Sources/DescartesCommandLine   its command table (every option declared once), shared with descartes-bench
//   Sources/descartes-bench     times requests through a provider (make bench; not installed)
//   Sources/descartes-plugin-host  runs one plugin in a helper process (isolation: process)
//   Sources/DescartesConformance  the plugin conformance suite (linked by the CLI and the tests only)
//   Sources/DescartesGateway    `descartes serve`: the OpenAI- and Anthropic-compatible gateway
//                                 (over libmicrohttpd; linked by the CLI and the tests only)
//   Sources/Descartes           the host library: ModelBackend, ProviderFactory, the middlewares;
//                                 Host/ (the ABI bridge, isolation), Configuration/ (manifests,
//                                 providers.yaml, policy), Middleware/
//   Sources/DescartesSupport    internal (not a product): what host and kit both need
//                                 (file system, hashing, process spawning, small helpers)
//   Sources/DescartesCore       value types, JSON, the ABI's JSON documents, the clock (shared by host and kit)
//   Sources/CDescartesPlugin    include/descartes/plugin.h: the C ABI, the contract
//   Sources/DescartesPluginKit  helps Swift plugins export the ABI (linked statically into each)
//   Plugins/<Name>              one libdescartes-<name>.so per plugin
//
// `Plugins/` is also SwiftPM's default folder for *package plugins*; every
// target in it here is an ordinary library target with an explicit `path:`.
import PackageDescription

let root = Context.packageDirectory

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

/// Linker flags for a plugin library: export only `descartes_plugin_entry`
/// (everything else, including the statically linked kit, stays private to
/// the library) and bind the library's own symbols inside it, so two plugins
/// built with different kit versions never see each other's code.
let pluginLinkerSettings: [LinkerSetting] = [
    .unsafeFlags(["-Xlinker", "--version-script=\(root)/Sources/CDescartesPlugin/plugin.map", "-Xlinker", "-Bsymbolic"]),
]

/// A plugin: a dynamic library product `descartes-<name>` (the file is
/// `libdescartes-<name>.so`) built from `Plugins/<Dir>`.
func plugin(_ name: String, dir: String, target: String, dependencies: [Target.Dependency] = []) -> (Product, Target) {
    (
        .library(name: "descartes-\(name)", type: .dynamic, targets: [target]),
        .target(
            name: target, dependencies: ["DescartesPluginKit"] + dependencies, path: "Plugins/\(dir)",
            swiftSettings: swiftSettings, linkerSettings: pluginLinkerSettings)
    )
}

let plugins: [(Product, Target)] = [
    // A Swift plugin used by the test suite to drive the host through the kit
    // (scripted replies, delays, errors). Not installed.
    plugin("scripted", dir: "Scripted", target: "ScriptedPlugin"),
    // OpenAI chat completions and the OpenAI-compatible family (one factory,
    // "openai"; each compatible provider is a manifest).
    plugin("openai", dir: "OpenAI", target: "OpenAIPlugin", dependencies: ["DescartesOpenAIChat"]),
    // The Anthropic Messages API.
    plugin("anthropic", dir: "Anthropic", target: "AnthropicPlugin"),
    // Google's Gemini: the Gemini API (factory "gemini") and Vertex AI
    // (factory "vertex") over one wire format.
    plugin("gemini", dir: "Gemini", target: "GeminiPlugin"),
    // Amazon Bedrock's Converse API, signed with SigV4 (DescartesSupport's SHA-256 and HMAC).
    plugin("bedrock", dir: "Bedrock", target: "BedrockPlugin", dependencies: ["DescartesSupport"]),
    // Ollama over its native API (/api/chat NDJSON, /api/tags, /api/show).
    plugin("ollama", dir: "Ollama", target: "OllamaPlugin"),
    // llama.cpp's server (llama-server, llama-cpp-python) over the shared OpenAI chat dialect.
    plugin("llamacpp", dir: "LlamaCpp", target: "LlamaCppPlugin", dependencies: ["DescartesOpenAIChat"]),
    // Headless: coding-agent CLIs and any command run as child processes
    // through the kit's process runtime.
    plugin("claude-code", dir: "ClaudeCode", target: "ClaudeCodePlugin"),
    plugin("headless-cli", dir: "HeadlessCLI", target: "HeadlessCLIPlugin"),
    // Any Agent Client Protocol agent (JSON-RPC 2.0 over the child's stdio).
    plugin("acp", dir: "ACP", target: "ACPPlugin", dependencies: ["DescartesSupport"]),
    plugin("codex", dir: "CodexCLI", target: "CodexCLIPlugin"),
]

let package = Package(
    name: "Descartes",
    products: [
        .executable(name: "descartes", targets: ["descartes"]),
        .executable(name: "descartes-plugin-host", targets: ["descartes-plugin-host"]),
        // Times requests through a provider (`make bench`); not installed.
        .executable(name: "descartes-bench", targets: ["descartes-bench"]),
        .library(name: "Descartes", targets: ["Descartes"]),
        .library(name: "DescartesPluginKit", targets: ["DescartesPluginKit"]),
    ] + plugins.map(\.0),
    targets: [
        // MARK: C: the ABI and system libraries
        .target(name: "CDescartesPlugin", exclude: ["plugin.map"]),
        // Host-side C: system calls Swift's Glibc module does not import (getauxval), and
        // the operation trampolines of the isolation proxy.
        .target(name: "CDescartesHost", dependencies: ["CDescartesPlugin"]),
        .systemLibrary(name: "CYaml", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The audit and spend ledger's database (docs/configuration.md, "Why SQLite").
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // The Redis client of providers.yaml's `shared:` section (docs/scaling.md, "Why hiredis"):
        // linked (a build dependency; a Redis server is needed only with `shared:`).
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        // The gateway's HTTP server (docs/gateway.md, "Why libmicrohttpd"), and the
        // small C layer over it (its daemon starts through a variadic function,
        // and suspend/resume has rules best kept in one place).
        // Its header only: CHTTPServer loads the library when a server starts (Sources/CMicroHTTPD/shim.h).
        .systemLibrary(name: "CMicroHTTPD", providers: [.apt(["libmicrohttpd-dev"])]),
        .target(name: "CHTTPServer", dependencies: ["CMicroHTTPD"]),
        // Typed setters for libcurl's variadic curl_easy_setopt (unavailable from Swift).
        .target(name: "CCurlShim", dependencies: ["CCurl"]),
        // Child-process primitives Swift cannot express (spawn with no_new_privs
        // and rlimits applied between fork and exec, pidfd_open, wait status).
        .target(name: "CProcessShim"),

        // MARK: Swift libraries
        .target(name: "DescartesCore", swiftSettings: swiftSettings),
        // Internal support shared by the host and the kit (no product: nothing
        // of it is public API, and nothing Swift-typed crosses the C ABI).
        .target(name: "DescartesSupport", dependencies: ["DescartesCore", "CProcessShim"], swiftSettings: swiftSettings),
        // A small wrapper over SQLite (open, bind, step, transactions), internal
        // to the package: the host's audit ledger uses it; plugins never link it.
        .target(name: "DescartesSQLite", dependencies: ["CSQLite"], swiftSettings: swiftSettings),
        .target(
            name: "Descartes",
            dependencies: ["DescartesCore", "DescartesSupport", "DescartesSQLite", "CDescartesPlugin", "CDescartesHost", "CYaml", "CHiredis"],
            swiftSettings: swiftSettings),
        .target(
            name: "DescartesPluginKit", dependencies: ["DescartesCore", "DescartesSupport", "CDescartesPlugin", "CCurlShim", "CProcessShim"],
            swiftSettings: swiftSettings),
        // The plugin conformance suite (`descartes plugins verify --conformance`),
        // with its own scripted HTTP server: a tool for plugin authors, not
        // part of the library an application links.
        .target(
            name: "DescartesConformance", dependencies: ["Descartes", "DescartesSupport", "CDescartesPlugin"],
            swiftSettings: swiftSettings),
        // `descartes serve`: OpenAI chat completions and Anthropic Messages in
        // front of every backend, chain and route (docs/gateway.md). Only the
        // CLI and the tests link it (and with it libmicrohttpd).
        .target(
            name: "DescartesGateway", dependencies: ["Descartes", "DescartesCore", "DescartesSupport", "CHTTPServer"],
            swiftSettings: swiftSettings),
        // The OpenAI chat-completions dialect (request bodies, chunk parsing,
        // tool-call assembly, finish reasons, the HTTP calls), linked
        // statically into every plugin that speaks it.
        .target(name: "DescartesOpenAIChat", dependencies: ["DescartesPluginKit"], swiftSettings: swiftSettings),

        // MARK: The CLI
        // Every command and option declared once (parsing, usage, help and
        // usage errors are made from the table), output, exit statuses and
        // provider setup: what `descartes` and `descartes-bench` share.
        .target(name: "DescartesCommandLine", dependencies: ["Descartes", "DescartesCore", "DescartesSupport"], swiftSettings: swiftSettings),
        .executableTarget(
            name: "descartes", dependencies: ["Descartes", "DescartesCommandLine", "DescartesConformance", "DescartesGateway", "DescartesSupport"],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "descartes-bench", dependencies: ["Descartes", "DescartesCommandLine", "DescartesSupport"], swiftSettings: swiftSettings),
        // Runs one plugin in its own process (isolation: process).
        .executableTarget(
            name: "descartes-plugin-host", dependencies: ["Descartes", "DescartesSupport", "CDescartesPlugin"], swiftSettings: swiftSettings),

        // MARK: Tests
        // Unit tests reach the kit's building blocks (decoders, HTTP engine)
        // directly; plugins are only ever reached through the C ABI.
        .testTarget(
            name: "DescartesTests",
            dependencies: ["Descartes", "DescartesSupport", "DescartesPluginKit", "DescartesOpenAIChat", "DescartesCommandLine", "DescartesGateway"],
            swiftSettings: swiftSettings),
    ] + plugins.map(\.1)
)
