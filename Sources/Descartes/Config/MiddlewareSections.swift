extension ProvidersConfig {
    /// Checkers of the top-level sections that other parts of the library
    /// read from providers.yaml. `ProvidersConfig.middlewareSections()`
    /// hands the middleware layer its five sections (`retry`, `fallbacks`,
    /// `routes`, `cache`, `limits`) merged and expanded, each node with its
    /// file:line:column; the layer adds one checker here, e.g.
    ///
    /// ```swift
    /// ConfigSectionChecker(keys: ReliabilitySettings.sections) { sections, _ in
    ///     ReliabilitySettings.parse(sections).1
    /// }
    /// ```
    ///
    /// so `descartes config check` reports its problems with every other.
    /// Until then these sections are passed through as written and shown by
    /// `descartes config show`.
    public static let sectionCheckers: [ConfigSectionChecker] = []
}
