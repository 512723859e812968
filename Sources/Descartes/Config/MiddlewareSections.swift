extension ProvidersConfig {
    /// Checkers of the top-level sections that other parts of the library
    /// read from providers.yaml (`ProvidersConfig.section(_:)` hands each its
    /// merged, expanded `YAMLNode`). The middleware layer (retry, fallback
    /// chains, routes, cache, rate limits) adds one `ConfigSectionChecker`
    /// per section it reads, so `descartes config check` reports its
    /// problems with every other. A section with no checker here is passed
    /// through as written and shown by `descartes config show`.
    static let sectionCheckers: [ConfigSectionChecker] = []
}
