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
        // `shared.password` comes from the environment or a file, never
        // written in the file (checked on the section before expansion).
        ConfigSectionChecker(keys: ["shared"]) { _, config in
            guard let raw = config.sections["shared"]?["password"], let text = raw.scalar, !text.contains("${") else { return [] }
            return [SourceProblem(raw.location, "shared.password is written in the file; give it from the environment or a file (${REDIS_PASSWORD}, ${file:/run/secrets/redis})")]
        },
    ]
}
