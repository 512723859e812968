// swift-tools-version:6.0
//
// DescartesPluginKit as `make install` installs it, for Swift plugins built
// outside a source checkout: share/descartes/swift/descartes holds this
// manifest and the sources of the kit's targets (the kit and what it
// depends on: the ABI header, libcurl, the process shim, DescartesCore,
// DescartesSupport), copied from the checkout. A plugin depends on it by
// path, as on a checkout (docs/writing-a-plugin.md, "A plugin in Swift").
//
// The targets are those of the repository's Package.swift, declared the same
// way; KitInstallTests fails when the two disagree.
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "descartes",
    products: [
        .library(name: "DescartesPluginKit", targets: ["DescartesPluginKit"]),
    ],
    targets: [
        .target(name: "CDescartesPlugin", exclude: ["plugin.map"]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .target(name: "CCurlShim", dependencies: ["CCurl"]),
        .target(name: "CProcessShim"),
        .target(name: "DescartesCore", swiftSettings: swiftSettings),
        .target(name: "DescartesSupport", dependencies: ["DescartesCore", "CProcessShim"], swiftSettings: swiftSettings),
        .target(
            name: "DescartesPluginKit", dependencies: ["DescartesCore", "DescartesSupport", "CDescartesPlugin", "CCurlShim", "CProcessShim"],
            swiftSettings: swiftSettings),
    ]
)
