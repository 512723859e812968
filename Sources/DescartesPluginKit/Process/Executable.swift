import Glibc
internal import DescartesSupport

/// Finds the program a headless backend runs.
///
/// A bare name (`claude`) is searched in the absolute entries of `PATH`
/// only: empty and relative entries (which would mean the current directory)
/// are skipped. A name with a slash must be an absolute path; it is never
/// resolved against the current directory either. The result is the path
/// given to `execve`, so no later lookup can pick a different file.
public enum Executable {
    /// Resolves `command` against `searchPath` (a `PATH` value).
    ///
    /// - Throws: `config`: an empty or relative command, or one that cannot
    ///   be found or run (naming the directories searched). A retry would
    ///   find the same nothing, so it is not a retryable kind.
    public static func resolve(_ command: String, searchPath: String?) throws(ProviderError) -> String {
        guard !command.isEmpty else { throw ProviderError(.config, "key 'command': the command is empty") }
        if command.contains("/") {
            guard command.hasPrefix("/") else {
                throw ProviderError(
                    .config,
                    "key 'command': '\(command)' is a relative path; give an absolute path or a bare name looked up in PATH (the current directory is never searched)"
                )
            }
            if let problem = Spawner.problem(command) {
                throw ProviderError(.config, "key 'command': cannot run '\(command)': \(problem)")
            }
            return command
        }
        if let found = Spawner.search(command, in: searchPath) { return found }
        let dirs = (searchPath ?? "").split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let usable = dirs.filter { $0.hasPrefix("/") }
        let skipped = dirs.count - usable.count
        let note = skipped > 0 ? "; \(skipped) empty or relative entr\(skipped == 1 ? "y" : "ies") ignored" : ""
        throw ProviderError(
            .config,
            "key 'command': '\(command)' was not found in PATH (searched: \(usable.isEmpty ? "nothing" : usable.joined(separator: ":"))\(note)); install it or set 'command' to its absolute path"
        )
    }
}

/// The environment a child process gets.
///
/// It starts from the host's environment and removes what a child must not
/// inherit by accident, then applies the configuration:
///
/// 1. Removed: `CLAUDECODE*` and `CLAUDE_CODE_*` (the markers of an
///    enclosing Claude Code session, which change a nested CLI's behaviour),
///    and every variable whose name looks like a credential: ending in
///    `_KEY`, `_APIKEY`, `_TOKEN`, `_SECRET`, `_PASSWORD`, `_PASSWD` or
///    `_CREDENTIALS` (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`,
///    `ANTHROPIC_AUTH_TOKEN`, `AWS_SECRET_ACCESS_KEY`, `GITHUB_TOKEN`, ...).
/// 2. Kept anyway: names listed in `pass_env` (exact, or a prefix ending in
///    `*`).
/// 3. Set: the `env` map, and what the plugin adds (a secret config key such
///    as Claude Code's `api_key` reaches the child this way, never in argv).
public enum ChildEnvironment {
    static let scrubbedPrefixes = ["CLAUDECODE", "CLAUDE_CODE_"]
    static let credentialSuffixes = ["_KEY", "_APIKEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_CREDENTIALS"]

    /// True when `name` is removed unless passed through.
    public static func isScrubbed(_ name: String) -> Bool {
        let upper = name.uppercased()
        if scrubbedPrefixes.contains(where: { upper.hasPrefix($0) }) { return true }
        return credentialSuffixes.contains { upper.hasSuffix($0) } || ["KEY", "TOKEN", "SECRET", "PASSWORD"].contains(upper)
    }

    static func matches(_ name: String, _ patterns: [String]) -> Bool {
        patterns.contains { p in p.hasSuffix("*") ? name.hasPrefix(String(p.dropLast())) : name == p }
    }

    /// The child's environment: `base` scrubbed, `passEnv` kept, `set` applied.
    public static func build(base: [String: String], passEnv: [String], set: [String: String]) -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in base where !isScrubbed(k) || matches(k, passEnv) { out[k] = v }
        for (k, v) in set { out[k] = v }
        return out
    }

    /// The host process's environment now.
    public static func host() -> [String: String] { Environment.current() }
}
