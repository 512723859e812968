/// Writing YAML scalars back (for `config show` and the policy editor).
package enum YAMLText {
    /// `s` as a YAML scalar: plain when a plain scalar would read back as
    /// the same string, else double-quoted (JSON's escapes are YAML's).
    package static func scalar(_ s: String) -> String {
        let plainSafe = !s.isEmpty && s.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "-_./:@+~".unicodeScalars.contains(c)
        } && !s.hasSuffix(":") && !s.hasPrefix("-") && !s.hasPrefix(":") && !s.contains(": ")
        if plainSafe, case .string = YAMLNode.resolvePlain(s) { return s }
        return JSONValue.string(s).jsonText
    }
}
