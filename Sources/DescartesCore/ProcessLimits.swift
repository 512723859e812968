/// Resource limits and sandboxing for a child process: a headless plugin's
/// children (the kit's process runtime) and the helper process of an
/// isolated plugin alike.
///
/// `noNewPrivileges` and the rlimits are applied inside the child between
/// fork and exec (`Sources/CProcessShim`), so there is no window in which
/// the child runs without them. Sizes are in bytes. `maxOutputBytes` is
/// enforced by the process runtime's reader: a child that writes more to
/// stdout and stderr together is killed.
public struct ProcessLimits: Sendable, Hashable {
    /// `prctl(PR_SET_NO_NEW_PRIVS)`: setuid bits and file capabilities are
    /// ignored by everything the child runs.
    public var noNewPrivileges: Bool
    /// RLIMIT_CPU, seconds of CPU time (SIGXCPU, then SIGKILL a second later).
    public var cpuSeconds: Int?
    /// RLIMIT_AS, bytes of address space.
    public var memoryBytes: Int?
    /// RLIMIT_NOFILE, open descriptors.
    public var openFiles: Int?
    /// RLIMIT_FSIZE, the largest file the child may write.
    public var fileSizeBytes: Int?
    /// RLIMIT_NPROC (counted per user by the kernel, threads included).
    public var processes: Int?
    /// Bytes of stdout and stderr together before the child is killed.
    public var maxOutputBytes: Int?
    /// Scheduling niceness (1-19): a background agent yields the CPU to
    /// the host. Only ever raised.
    public var niceness: Int?

    public init(
        noNewPrivileges: Bool = true, cpuSeconds: Int? = nil, memoryBytes: Int? = nil, openFiles: Int? = nil,
        fileSizeBytes: Int? = nil, processes: Int? = nil, maxOutputBytes: Int? = nil, niceness: Int? = nil
    ) {
        self.noNewPrivileges = noNewPrivileges
        self.cpuSeconds = cpuSeconds
        self.memoryBytes = memoryBytes
        self.openFiles = openFiles
        self.fileSizeBytes = fileSizeBytes
        self.processes = processes
        self.maxOutputBytes = maxOutputBytes
        self.niceness = niceness
    }

    /// An isolated plugin's helper process by default: 4 GiB of address
    /// space, so a plugin that leaks without bound fails inside its helper
    /// instead of exhausting the machine.
    public static let isolatedPlugin = ProcessLimits(memoryBytes: 4096 << 20)
}
