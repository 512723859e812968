import Descartes
import Glibc
import Testing
import DescartesSupport

/// HTTP/2 where the server offers it: nginx on 127.0.0.1 with TLS (a
/// certificate of its own CA, trusted through `ca_bundle`) and `http2`, and
/// the OpenAI plugin streaming many answers at once. Its access log says
/// which protocol and which connection each request came on.
@Suite(.serialized) struct HTTP2Tests {
    static let key = "sk-h2-test-8877665544"

    /// nginx running from `dir` (daemonized: its listening socket is bound
    /// before the command returns), stopped on deinit.
    final class Nginx: @unchecked Sendable {
        let dir: TempDir
        let port: Int
        let conf: String

        init(_ dir: TempDir, body: String) async throws {
            self.dir = dir
            let gen = await Proc.run([
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", dir.file("key.pem"), "-out", dir.file("cert.pem"),
            ])
            try #require(gen.status == 0, "openssl: \(gen.stderr)")
            try FileSystem.makeDirectories(dir.file("www/v1/chat"))
            try FileSystem.makeDirectories(dir.file("tmp"))
            try FileSystem.writeAtomically(dir.file("www/v1/chat/completions"), Array(body.utf8))
            conf = dir.file("nginx.conf")
            var started: (port: Int, result: ProcResult)? = nil
            // A free port, then nginx binds it (tried again if another
            // process took it in between).
            for _ in 0..<5 {
                let port = Self.freePort()
                try FileSystem.writeAtomically(conf, Array(Self.config(dir.path, port: port).utf8))
                let r = await Proc.run(["/usr/sbin/nginx", "-p", dir.path, "-c", conf, "-e", dir.file("error.log")])
                if r.status == 0 {
                    started = (port, r)
                    break
                }
                if !r.stderr.contains("Address already in use") { try #require(r.status == 0, "nginx: \(r.stderr)") }
            }
            let s = try #require(started, "nginx found no free port")
            port = s.port
        }

        deinit {
            _ = Proc.runBlocking(["/usr/sbin/nginx", "-p", dir.path, "-c", conf, "-e", dir.file("error.log"), "-s", "stop"], timeout: .seconds(10))
        }

        /// The access log: protocol, connection serial number, the request line
        /// (method, path, protocol), status.
        func log() throws -> [[Substring]] {
            try FileSystem.readText(dir.file("access.log"), limit: 1 << 20).split(separator: "\n").map { $0.split(separator: " ") }
        }

        static func config(_ prefix: String, port: Int) -> String {
            """
            worker_processes 1;
            pid \(prefix)/nginx.pid;
            error_log \(prefix)/error.log warn;
            user root;
            events { worker_connections 1024; }
            http {
                log_format h2 '$server_protocol $connection $request $status';
                access_log \(prefix)/access.log h2;
                client_body_temp_path \(prefix)/tmp/body;
                proxy_temp_path \(prefix)/tmp/proxy;
                fastcgi_temp_path \(prefix)/tmp/fastcgi;
                uwsgi_temp_path \(prefix)/tmp/uwsgi;
                scgi_temp_path \(prefix)/tmp/scgi;
                types { }
                default_type text/event-stream;
                server {
                    listen 127.0.0.1:\(port) ssl http2;
                    ssl_certificate \(prefix)/cert.pem;
                    ssl_certificate_key \(prefix)/key.pem;
                    root \(prefix)/www;
                    # A POST to a static file: answered as a GET of it.
                    error_page 405 =200 $uri;
                }
            }
            """
        }

        static func freePort() -> Int {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            return Int(UInt16(bigEndian: addr.sin_port))
        }
    }

    @Test func concurrentStreamsShareOneHTTP2Connection() async throws {
        let words = (0..<50).map { "w\($0) " }
        let body = words.map { w in
            #"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"\#(w)"},"finish_reason":null}]}"# + "\n\n"
        }.joined()
            + #"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"# + "\n\n"
            + #"data: {"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":50}}"# + "\n\n" + "data: [DONE]\n\n"
        let nginx = try await Nginx(TempDir("descartes-h2"), body: body)
        let plugins = PluginDir().addManifest("openai")
        let b = try plugins.factory().create("openai", config: [
            "endpoint": .string("https://127.0.0.1:\(nginx.port)/v1"), "api_key": .string(Self.key),
            "ca_bundle": .string(nginx.dir.file("cert.pem")),
        ])
        let n = 24
        let texts = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<n {
                group.addTask {
                    var text = ""
                    for try await e in b.stream(ModelRequest(prompt: "stream \(i)")) {
                        if case .finish(let r) = e { text = r.content }
                    }
                    return text
                }
            }
            var all: [String] = []
            for try await t in group { all.append(t) }
            return all
        }
        #expect(texts.count == n)
        #expect(texts.allSatisfy { $0 == words.joined() })
        await b.shutdown()

        let log = try nginx.log()
        #expect(log.count == n, "\(log)")
        #expect(log.allSatisfy { $0.first == "HTTP/2.0" && $0[2] == "POST" && $0[3] == "/v1/chat/completions" && $0[5] == "200" }, "\(log)")
        // Multiplexed: every request on one connection.
        #expect(Set(log.map { $0[1] }).count == 1, "\(log)")
    }
}
