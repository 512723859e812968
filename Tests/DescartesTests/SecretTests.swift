import Descartes
import Testing

/// The secret type never prints; the redactor masks registered values and
/// credential-shaped text, and leaves ordinary text alone.
@Suite struct SecretTests {
    @Test func aSecretNeverPrints() {
        let s = Secret("sk-live-0123456789abcdef")
        #expect("\(s)" == "[REDACTED]")
        #expect(String(describing: s) == "[REDACTED]")
        #expect(String(reflecting: s) == "[REDACTED]")
        var dumped = ""
        dump(s, to: &dumped)
        #expect(!dumped.contains("0123456789"), "\(dumped)")
        struct Holder { var key: Secret }
        var dumpedHolder = ""
        dump(Holder(key: s), to: &dumpedHolder)
        #expect(!dumpedHolder.contains("0123456789"), "\(dumpedHolder)")
        #expect("\(Holder(key: s))".contains("[REDACTED]"))
        #expect(!"\(Holder(key: s))".contains("0123456789"))
        #expect(s.reveal() == "sk-live-0123456789abcdef")
        #expect(s == Secret("sk-live-0123456789abcdef"))
        #expect(s != Secret("sk-live-0123456789abcdeg"))
        #expect(s != Secret("sk-live"))
    }

    @Test func registeredValuesAreMaskedLongestFirst() {
        let r = Redactor()
        r.register("abcd1234")
        r.register("abcd1234XYZ")
        r.register("abc")  // too short to register
        #expect(r.redact("a abcd1234XYZ b abcd1234 c abc") == "a [REDACTED] b [REDACTED] c abc")
        r.register(Secret("hunter2hunter2"))
        #expect(r.redact("pw=hunter2hunter2;") == "pw=[REDACTED];")
    }

    @Test func credentialShapesAreMasked() {
        let r = Redactor()
        let cases: [(String, String)] = [
            ("Authorization: Bearer abcdefgh12345678", "Authorization: Bearer [REDACTED]"),
            ("authorization: Basic dXNlcjpwYXNzd29yZA==", "authorization: Basic [REDACTED]"),
            ("{\"Authorization\": \"Bearer tok_123456789\"}", "{\"Authorization\": \"Bearer [REDACTED]\"}"),
            ("x-api-key: sk-ant-api03-AAAAbbbbCCCC", "x-api-key: [REDACTED]"),
            ("x-api-key: 0123456789abcdef", "x-api-key: [REDACTED]"),
            ("{\"api_key\":\"abcdefgh1\"}", "{\"api_key\":\"[REDACTED]\"}"),
            ("GET /v1/models?key=AIzaSyA-0123456789abcdefghijklmnopqrs HTTP/1.1", "GET /v1/models?key=[REDACTED] HTTP/1.1"),
            ("Incorrect API key provided: sk-proj-abc123456789xyz.", "Incorrect API key provided: [REDACTED]."),
            ("token ghp_0123456789abcdefghijABCDEFGHIJ here", "token [REDACTED] here"),
            ("access_token=ya29.a0AfH6SMBx1234567890", "access_token=[REDACTED]"),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED]"),
            ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Bearer [REDACTED]"),
        ]
        for (input, expected) in cases {
            #expect(r.redact(input) == expected, "\(input)")
        }
    }

    @Test func ordinaryTextIsLeftAlone() {
        let r = Redactor()
        for text in [
            "a risk-averse team", "max_tokens: 100", "missing required key 'api_key' (string): set it",
            "api_key: {type: string, required: true, secret: true}", "--set KEY=VALUE", "the primary key: id",
            "key 'api_key' of provider 'anthropic': unset variable ANTHROPIC_API_KEY", "password: hunter",
            "Authorization header missing", "sk-short", "desk-lamp-with-a-long-name",
            "héllo wörld ✓ [REDACTED]",
        ] {
            #expect(r.redact(text) == text, "\(text)")
        }
    }

    @Test func errorsAreRedactedInEveryField() {
        let r = Redactor()
        r.register("s3cr3t-value-42")
        let e = ProviderError(
            .authentication, "the server said: key s3cr3t-value-42 is wrong", providerType: "invalid s3cr3t-value-42",
            details: ["echo: Authorization: Bearer s3cr3t-value-42"])
        let red = r.redact(e)
        #expect(!"\(red)".contains("s3cr3t"))
        #expect(!(red.providerType ?? "").contains("s3cr3t"))
        #expect(red.message == "the server said: key [REDACTED] is wrong")
    }
}
