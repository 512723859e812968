import DescartesCore

/// One rule for every HTTP dialect: a successful answer with nothing in it
/// (no text, no reasoning, no tool call) is no answer, unless its finish
/// reason explains why it is empty (cut by the token limit, ended for a
/// tool call, refused or filtered, paused). A plain stop (or none) with
/// nothing said is reported as `invalid_response`, not passed on as an empty
/// success (issue 16).
public enum EmptyAnswer {
    /// Why the answer is not one, or nil. `said`: some text, reasoning or a
    /// tool call came; `finish`: the normalized finish reason; `field` and
    /// `raw`: the server's own name for it and its value, for the message.
    public static func problem(said: Bool, finish: FinishReason, field: String, raw: String?) -> String? {
        if said || finish != .stop { return nil }
        return "the answer is empty (no text, no tool call) with \(field) \(raw.map { "'\($0)'" } ?? "absent")"
    }

    /// `problem` as the error to fail the call with.
    public static func check(said: Bool, finish: FinishReason, field: String, raw: String?) throws(ProviderError) {
        if let why = problem(said: said, finish: finish, field: field, raw: raw) {
            throw ProviderError(.invalidResponse, "HTTP 200, but \(why)")
        }
    }
}
