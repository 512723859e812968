// AWS Signature Version 4 for Bedrock's runtime API, and where its
// credentials come from.
//
// Why our own and not libcurl's CURLOPT_AWS_SIGV4: Debian 12's libcurl
// (7.88.1) builds the canonical URI from the request path as it is, while
// AWS requires every service but S3 to URI-encode each path segment a
// second time. Every Bedrock model id has a ':' (`...-v1:0`), sent as
// `%3A`, which AWS canonicalizes as `%253A`: libcurl's signature is then
// refused. Checked against botocore's signer (the test server's verifier):
// curl --aws-sigv4 signs `/model/amazon.nova-lite-v1/converse` correctly and
// `/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse` wrongly.
import DescartesPluginKit
import DescartesSupport
import Glibc

/// Credentials to sign with. Never logged: `description` names the source only.
struct AWSCredentials: Sendable, CustomStringConvertible {
    var accessKeyID: String
    var secretAccessKey: String
    var sessionToken: String?
    /// Where they came from ("config", "profile 'dev' in /home/u/.aws/credentials").
    var source: String

    var description: String { "AWS credentials from \(source)" }

    /// From the config keys (which the manifest fills from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN), else from a profile of
    /// the shared credentials file (`credentials_file`, else
    /// AWS_SHARED_CREDENTIALS_FILE's file through the manifest, else
    /// ~/.aws/credentials; profile `profile`, else AWS_PROFILE, else
    /// `default`), as the AWS SDKs look.
    static func resolve(_ context: BackendContext) throws(ProviderError) -> AWSCredentials {
        let id = context.string("access_key_id").flatMap { $0.isEmpty ? nil : $0 }
        let secret = context.string("secret_access_key").flatMap { $0.isEmpty ? nil : $0 }
        let token = context.string("session_token").flatMap { $0.isEmpty ? nil : $0 }
        if id != nil || secret != nil {
            guard let id, let secret else {
                throw ProviderError(
                    .config, "key '\(id == nil ? "access_key_id" : "secret_access_key")': missing while '\(id == nil ? "secret_access_key" : "access_key_id")' is set (both come together, e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
            }
            return try checked(AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: token, source: "config"))
        }
        let profile = context.string("profile").flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        let file: String
        if let f = context.string("credentials_file"), !f.isEmpty {
            file = f
        } else if let home = Environment.get("HOME"), !home.isEmpty {
            file = home + "/.aws/credentials"
        } else {
            throw ProviderError(.config, "no AWS credentials: set access_key_id and secret_access_key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or credentials_file (HOME is not set)")
        }
        let text: String
        do { text = try FileSystem.readText(file, limit: 1 << 20) } catch {
            throw ProviderError(
                .config, "no AWS credentials: access_key_id and secret_access_key are not set (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the credentials file cannot be read: \(error.path): \(error.reason)")
        }
        guard let section = parseINI(text)[profile] else {
            throw ProviderError(.config, "key 'profile': no [\(profile)] section in \(file)")
        }
        guard let pid = section["aws_access_key_id"], !pid.isEmpty, let psecret = section["aws_secret_access_key"], !psecret.isEmpty else {
            throw ProviderError(.config, "key 'profile': [\(profile)] in \(file) has no aws_access_key_id and aws_secret_access_key (profiles that assume roles or use SSO are not read: export the keys they give, e.g. with `aws configure export-credentials`)")
        }
        return try checked(
            AWSCredentials(
                accessKeyID: pid, secretAccessKey: psecret, sessionToken: token ?? section["aws_session_token"],
                source: "profile '\(profile)' in \(file)"))
    }

    static func checked(_ c: AWSCredentials) throws(ProviderError) -> AWSCredentials {
        for (name, v) in [("access_key_id", c.accessKeyID), ("secret_access_key", c.secretAccessKey), ("session_token", c.sessionToken ?? "")] {
            if v.contains("\n") || v.contains("\r") || v.contains(" ") && name == "access_key_id" {
                throw ProviderError(.config, "key '\(name)' (\(c.source)): the value contains a line break or a space")
            }
        }
        return c
    }

    /// `[section]` -> key -> value, for the shared credentials file (`#` and
    /// `;` comments; `[profile name]` read as `name`, as the config file
    /// spells it).
    static func parseINI(_ text: String) -> [String: [String: String]] {
        var out: [String: [String: String]] = [:]
        var current: String? = nil
        for raw in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = raw.trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                var name = String(line.dropFirst().dropLast()).trimmingSpaces
                if name.hasPrefix("profile ") { name = String(name.dropFirst("profile ".count)).trimmingSpaces }
                current = name
                if out[name] == nil { out[name] = [:] }
                continue
            }
            guard let current, let eq = line.firstIndex(of: "=") else { continue }
            out[current]?[String(line[..<eq]).trimmingSpaces.lowercased()] = String(line[line.index(after: eq)...]).trimmingSpaces
        }
        return out
    }
}

/// Signs one request (AWS Signature Version 4, header form).
enum SigV4 {
    /// The headers to add to a request: `Host`, `X-Amz-Date`,
    /// `X-Amz-Security-Token` (with a session token) and `Authorization`.
    /// `url` is the request URL as it will be sent (path already
    /// percent-encoded, no query); `headers` are the other headers to sign.
    static func sign(
        method: String, url: String, headers: [(String, String)], body: [UInt8], credentials c: AWSCredentials, region: String,
        service: String, now: time_t = time(nil)
    ) -> [(String, String)] {
        let (host, path) = split(url)
        let amzDate = timestamp(now)
        let date = String(amzDate.prefix(8))
        var signed: [(String, String)] = headers.map { ($0.0.lowercased(), $0.1.trimmingSpaces) }
        signed.append(("host", host))
        signed.append(("x-amz-date", amzDate))
        if let t = c.sessionToken { signed.append(("x-amz-security-token", t)) }
        signed.sort { $0.0 < $1.0 }
        let signedNames = signed.map(\.0).joined(separator: ";")
        var payload = SHA256()
        payload.update(body)
        let canonicalURI = path.split(separator: "/", omittingEmptySubsequences: false).map { ProviderHTTP.percentEncoded(String($0)) }.joined(separator: "/")
        let canonical = [
            method, canonicalURI.isEmpty ? "/" : canonicalURI, "",
            signed.map { "\($0.0):\($0.1)\n" }.joined(), signedNames, payload.finalize(),
        ].joined(separator: "\n")
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let toSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(SHA256.hex(canonical))"
        var key = SHA256.hmac(key: Array("AWS4\(c.secretAccessKey)".utf8), Array(date.utf8))
        key = SHA256.hmac(key: key, Array(region.utf8))
        key = SHA256.hmac(key: key, Array(service.utf8))
        key = SHA256.hmac(key: key, Array("aws4_request".utf8))
        let signature = hex(SHA256.hmac(key: key, Array(toSign.utf8)))
        var out: [(String, String)] = [("Host", host), ("X-Amz-Date", amzDate)]
        if let t = c.sessionToken { out.append(("X-Amz-Security-Token", t)) }
        out.append(("Authorization", "AWS4-HMAC-SHA256 Credential=\(c.accessKeyID)/\(scope), SignedHeaders=\(signedNames), Signature=\(signature)"))
        return out
    }

    /// The authority (as the Host header carries it) and the path of a URL.
    static func split(_ url: String) -> (host: String, path: String) {
        guard let schemeEnd = url.range(of: "://") else { return ("", url) }
        let rest = url[schemeEnd.upperBound...]
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = String(rest[..<slash])
        if let at = authority.lastIndex(of: "@") { authority = String(authority[authority.index(after: at)...]) }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        if scheme == "https" && authority.hasSuffix(":443") { authority.removeLast(4) }
        if scheme == "http" && authority.hasSuffix(":80") { authority.removeLast(3) }
        var path = String(rest[slash...])
        if let q = path.firstIndex(of: "?") { path = String(path[..<q]) }
        return (authority.lowercased(), path.isEmpty ? "/" : path)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }

    /// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
    static func timestamp(_ t: time_t) -> String {
        var t = t
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))Z"
    }
}
