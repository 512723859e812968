import Glibc
import DescartesSupport

/// Whether the process may trust a file another user could have written.
///
/// When the process runs as root or in secure-execution mode (setuid,
/// setgid, file capabilities), every plugin manifest, plugin library and
/// configuration file it reads, and the directory holding each, must be
/// owned by root (or by the effective user) and must not be writable by
/// group or others (a directory with the sticky bit, like /tmp, may be
/// world-writable). Anything else is refused with the reason, because a
/// less privileged user could have put it there: the Vulkan loader's rule.
/// See docs/policy.md for why root without setuid still honours
/// `DESCARTES_PLUGIN_PATH` and the user's directories under these checks.
package enum FileTrust {
    /// Whether the checks apply to this process.
    package static var enforced: Bool { Environment.isRoot || Environment.isSecureExecution }

    /// Why `path` (a file or directory) cannot be trusted, or nil when it
    /// can. Checks the file the path resolves to, and the directories
    /// holding it and the path.
    package static func problem(_ path: String) -> String? {
        // A path that is not itself a symlink: the file and the directory
        // the candidates below resolve to are the ones `stat` of the path
        // and of its directory reach, so when neither has a problem there
        // is none, found without `realpath` (a readlink per component; as
        // root, discovery checks every manifest and library). A problem is
        // reported as below, naming the resolved path.
        var st = stat()
        if lstat(path, &st) == 0, st.st_mode & S_IFMT != S_IFLNK, problemOfOne(path) == nil,
            problemOfOne(FileSystem.directory(of: path)) == nil
        {
            return nil
        }
        var seen: Set<String> = []
        // The file a symlink leads to and its directory, then the directory
        // holding the link (whoever can write there can replace the link).
        let real = FileSystem.realPath(path) ?? path
        let candidates = [real, FileSystem.directory(of: real), FileSystem.directory(of: path)]
        for p in candidates where seen.insert(p).inserted {
            if let why = problemOfOne(p) { return why }
        }
        return nil
    }

    /// Why the checks apply, for messages.
    static var why: String {
        Environment.isSecureExecution ? "refused: the process runs setuid/setgid" : "refused: the process runs as root"
    }

    static func problemOfOne(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }  // a missing file is reported elsewhere
        let euid = geteuid()
        let isDir = st.st_mode & S_IFMT == S_IFDIR
        let what = isDir ? "directory" : "file"
        if st.st_uid != 0 && st.st_uid != euid {
            return "\(path): \(what) owned by uid \(st.st_uid), not by root\(euid == 0 ? "" : " or uid \(euid)") (\(why))"
        }
        let writable = st.st_mode & (S_IWGRP | S_IWOTH)
        if writable != 0 && !(isDir && st.st_mode & S_ISVTX != 0 && st.st_uid == 0) {
            let who = st.st_mode & S_IWOTH != 0 ? "others" : "its group"
            return "\(path): \(what) is writable by \(who) (mode \(String(st.st_mode & 0o7777, radix: 8))) (\(why))"
        }
        return nil
    }
}
