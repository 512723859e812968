import Descartes
import Glibc
import DescartesSupport

extension CCompiler {
    /// `sharedLibrary` without blocking the cooperative pool: the compiler
    /// runs while the test awaits (a blocked pool thread delays every other
    /// test's continuations, and the timing assertions with them).
    static func compile(_ sources: [String], output: String, flags: [String] = []) async -> ProcResult {
        await Proc.run(
            ["cc", "-std=c11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread",
             "-I", FileSystem.join(TestEnv.root, "Sources/CDescartesPlugin/include"), "-I", helpers] + flags + sources + ["-o", output], timeout: .seconds(120))
    }
}

extension Proc {
    /// Runs blocking work on a thread of its own while the test awaits.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            onThread {
                do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
            }
        }
    }
}
