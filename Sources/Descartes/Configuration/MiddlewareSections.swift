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
    package static let sectionCheckers: [ConfigSectionChecker] = [
        // The reliability layer (Configuration/ReliabilitySettings.swift): every problem of
        // the five sections, with positions. Names that lead nowhere are
        // checked where the plugins are known (the CLI, before a request).
        ConfigSectionChecker(keys: ReliabilitySettings.sections) { sections, _ in ReliabilitySettings.parse(sections).1 },
    ]
}
