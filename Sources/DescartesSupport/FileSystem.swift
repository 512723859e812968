import Glibc
internal import CProcessShim

/// A file-system failure, naming the path and the system's reason.
public struct FileSystemError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var reason: String
    public var errno: Int32
    public init(path: String, reason: String, errno: Int32 = 0) {
        self.path = path
        self.reason = reason
        self.errno = errno
    }
    public var description: String { "\(path): \(reason)" }
}

/// The few file-system operations the host needs, on POSIX calls directly
/// (the host does not link Foundation: it costs 15-20 ms of start-up).
public enum FileSystem {
    public static func systemError(_ path: String, _ e: Int32 = Glibc.errno) -> FileSystemError {
        FileSystemError(path: path, reason: String(cString: strerror(e)), errno: e)
    }

    /// Reads a whole file as UTF-8 text, refusing files over `limit` bytes.
    public static func readText(_ path: String, limit: Int) throws(FileSystemError) -> String {
        String(decoding: try readBytes(path, limit: limit), as: UTF8.self)
    }

    public static func readBytes(_ path: String, limit: Int) throws(FileSystemError) -> [UInt8] {
        let fd = try openRegular(path)
        defer { close(fd) }
        var out: [UInt8] = []
        while true {
            // Read into memory left uninitialized (zeroing 64 KiB per file
            // was most of reading a small one, as discovery reads every manifest).
            var failed = false
            let chunk = [UInt8](unsafeUninitializedCapacity: 65536) { buf, count in
                let n = read(fd, buf.baseAddress, buf.count)
                failed = n < 0
                count = max(n, 0)
            }
            if failed {
                if errno == EINTR { continue }
                throw systemError(path)
            }
            if chunk.isEmpty { break }
            if out.isEmpty { out = chunk } else { out.append(contentsOf: chunk) }
            if out.count > limit { throw FileSystemError(path: path, reason: "file is larger than \(limit) bytes") }
        }
        return out
    }

    /// Opens `path` for reading without blocking (a FIFO with no writer
    /// would hang `open` and `read` forever) and refuses it unless it is a
    /// regular file: the error names the path and what it is ("a FIFO").
    /// The descriptor returned is blocking again, close-on-exec.
    public static func openRegular(_ path: String) throws(FileSystemError) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        if fd < 0 { throw systemError(path) }
        var st = stat()
        if fstat(fd, &st) != 0 {
            let e = systemError(path)
            close(fd)
            throw e
        }
        if st.st_mode & S_IFMT != S_IFREG {
            close(fd)
            throw FileSystemError(path: path, reason: "is \(typeName(st.st_mode)), not a regular file")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    /// Refuses `path` unless it is a regular file (following symlinks),
    /// without opening it: for files another component opens (dlopen).
    public static func checkRegular(_ path: String) throws(FileSystemError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw systemError(path) }
        if st.st_mode & S_IFMT != S_IFREG {
            throw FileSystemError(path: path, reason: "is \(typeName(st.st_mode)), not a regular file")
        }
    }

    /// What a file of mode `mode` is, for messages.
    public static func typeName(_ mode: UInt32) -> String {
        switch mode & S_IFMT {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFSOCK: return "a socket"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFLNK: return "a symbolic link"
        default: return "a special file"
        }
    }

    /// Writes `bytes` to `path` atomically (a temporary file renamed over it),
    /// with the given permissions.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: Glibc.mode_t = 0o644) throws(FileSystemError) {
        // Named for the process and the thread, so two threads writing the
        // same file do not write one temporary file.
        let tmp = path + ".tmp.\(getpid()).\(UInt(pthread_self()))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        if fd < 0 { throw systemError(tmp) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = systemError(tmp)
                close(fd)
                unlink(tmp)
                throw e
            }
            written += n
        }
        fsync(fd)
        close(fd)
        if rename(tmp, path) != 0 {
            let e = systemError(path)
            unlink(tmp)
            throw e
        }
    }

    /// Names in a directory (without "." and ".."), sorted.
    public static func list(_ dir: String) throws(FileSystemError) -> [String] {
        guard let d = opendir(dir) else { throw systemError(dir) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public struct Info: Sendable {
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        public var size: Int
        public var isDirectory: Bool { mode & S_IFMT == S_IFDIR }
        public var isRegular: Bool { mode & S_IFMT == S_IFREG }
    }

    /// What tells one version of a file from another without reading it:
    /// device, inode, size, and the modification and status-change times
    /// in nanoseconds. Any write changes the status-change time (which no
    /// caller can set back, as `touch -d` sets the modification time), and
    /// a file renamed over it has another inode.
    public struct Identity: Sendable, Hashable {
        public var device: UInt64
        public var inode: UInt64
        public var size: Int64
        public var modified: Int64
        public var changed: Int64
        public init(device: UInt64, inode: UInt64, size: Int64, modified: Int64, changed: Int64) {
            self.device = device
            self.inode = inode
            self.size = size
            self.modified = modified
            self.changed = changed
        }
    }

    /// The identity of the file at `path` (following symlinks), or nil if it
    /// does not exist.
    public static func identity(_ path: String) -> Identity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Identity(
            device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size),
            modified: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
            changed: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
    }

    /// stat(2) of a path (following symlinks), or nil if it does not exist.
    public static func info(_ path: String) -> Info? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Info(mode: st.st_mode, uid: st.st_uid, gid: st.st_gid, size: Int(st.st_size))
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
    public static func isDirectory(_ path: String) -> Bool { info(path)?.isDirectory ?? false }

    public static func join(_ a: String, _ b: String) -> String {
        if b.hasPrefix("/") { return b }
        if a.isEmpty { return b }
        return a.hasSuffix("/") ? a + b : a + "/" + b
    }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    public static func basename(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// The canonical absolute path, or nil if it does not exist.
    public static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    public static func currentDirectory() -> String {
        guard let p = getcwd(nil, 0) else { return "/" }
        defer { free(p) }
        return String(cString: p)
    }

    /// The running executable's absolute path.
    public static func executablePath() -> String? { realPath("/proc/self/exe") }

    /// Creates a directory and its parents.
    public static func makeDirectories(_ path: String, mode: Glibc.mode_t = 0o755) throws(FileSystemError) {
        if isDirectory(path) { return }
        let parent = directory(of: path)
        if parent != path && parent != "." && parent != "/" { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST { throw systemError(path) }
    }
}

/// The process environment as a dictionary.
public enum Environment {
    ///
    /// Each entry is split at its first `=` byte (POSIX: a name has none),
    /// found with `strchr` in the C string: a one-shot command builds this
    /// dictionary several times, and splitting a `String` at a `Character`
    /// cost about 0.4 M instructions each time for a shell's environment
    /// (grapheme breaking of every byte up to the `=`), and missed the `=`
    /// of a value starting with a combining mark (one `Character` with it).
    public static func current() -> [String: String] { dictionary(environ) }

    /// `entries` (`NAME=VALUE` C strings up to a null pointer, as `environ`)
    /// as a dictionary; an entry without `=` is skipped, a later name wins.
    package static func dictionary(_ entries: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> [String: String] {
        var out: [String: String] = [:]
        var p = entries
        while let entry = p.pointee {
            if let eq = strchr(entry, 0x3D) {
                let nameLength = entry.distance(to: eq)
                let name = UnsafeRawBufferPointer(start: entry, count: nameLength)
                let value = UnsafeRawBufferPointer(start: eq + 1, count: strlen(eq + 1))
                out[String(decoding: name, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
            }
            p += 1
        }
        return out
    }

    public static func get(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(cString: v)
    }

    /// True when the process runs in secure-execution mode: setuid, setgid
    /// or with file capabilities (the kernel's AT_SECURE, which is what
    /// glibc's secure_getenv uses), or when real and effective ids differ.
    /// Environment overrides and user directories are then ignored.
    ///
    /// A process that is simply run by root (uid == euid == 0, as in most
    /// containers and CI jobs) is not in this mode; the host policy decides
    /// whether root counts as elevated (see PluginSearch).
    public static var isSecureExecution: Bool {
        dsc_secure_execution() != 0 || getuid() != geteuid() || getgid() != getegid()
    }

    public static var isRoot: Bool { geteuid() == 0 }

    public static var homeDirectory: String {
        if let h = get("HOME"), h.hasPrefix("/") { return h }
        if let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return "/"
    }
}
