// make bench-lock: Synchronization.Mutex against the project's Lock
// (Sources/DescartesCore/Lock.swift, compiled in), built with -O.
// Uncontended: one thread, N withLock calls each bumping a counter in a small
// struct. Contended: 2 threads, N calls each. Prints ns per call, best of 5.
import Glibc
import DescartesCore
import Synchronization

struct Counters { var a = 0; var b = 0 }

@inline(never) func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

final class MutexBox: @unchecked Sendable { let m = Mutex(Counters()) }

@inline(never) func mutexLoop(_ box: MutexBox, _ n: Int) { for _ in 0..<n { box.m.withLock { $0.a &+= 1; $0.b &+= 2 } } }
@inline(never) func lockLoop(_ lock: Lock<Counters>, _ n: Int) { for _ in 0..<n { lock.withLock { $0.a &+= 1; $0.b &+= 2 } } }

func threads(_ count: Int, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable { let f: @Sendable () -> Void; init(_ f: @escaping @Sendable () -> Void) { self.f = f } }
    var tids: [pthread_t] = []
    for _ in 0..<count {
        var t = pthread_t()
        pthread_create(&t, nil, { p in Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().f(); return nil }, Unmanaged.passRetained(Box(body)).toOpaque())
        tids.append(t)
    }
    for t in tids { pthread_join(t, nil) }
}

func best(_ runs: Int = 5, _ body: () -> Void) -> UInt64 {
    var b = UInt64.max
    for _ in 0..<runs {
        let t0 = now()
        body()
        b = min(b, now() - t0)
    }
    return b
}

let n = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1])! : 10_000_000
let mbox = MutexBox()
let lock = Lock(Counters())
let mu = best { mutexLoop(mbox, n) }
let lu = best { lockLoop(lock, n) }
let mc = best { threads(2) { mutexLoop(mbox, n / 4) } }
let lc = best { threads(2) { lockLoop(lock, n / 4) } }
func ns(_ t: UInt64, _ calls: Int) -> String {
    let v = Double(t) / Double(calls)
    return String(Int(v * 100)).count <= 2 ? "0.\(Int(v * 100))" : "\(Double(Int(v * 100)) / 100)"
}
print("uncontended withLock, \(n) calls: Mutex \(ns(mu, n)) ns/call, Lock \(ns(lu, n)) ns/call")
print("contended (2 threads), \(n / 2) calls: Mutex \(ns(mc, n / 2)) ns/call, Lock \(ns(lc, n / 2)) ns/call")
precondition(mbox.m.withLock { $0.a } == lock.withLock { $0.a })
