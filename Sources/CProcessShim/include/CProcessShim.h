// Process primitives for every child the project starts (the kit's
// child-process runtime, the isolation helper, credential helpers: all
// through Sources/DescartesSupport/Spawn.swift), written in C because Swift
// cannot express them safely or its Glibc module does not import them.
//
// Why each function exists:
//
//  - dsc_spawn: posix_spawn(3) cannot apply PR_SET_NO_NEW_PRIVS or resource
//    limits in the child between fork and exec, and prlimit(2) after the spawn
//    races with the child's first instructions. dsc_spawn does what glibc's
//    posix_spawn does internally (clone(CLONE_VM | CLONE_VFORK) on a private
//    stack, all signals blocked around it, only async-signal-safe system
//    calls in the child) and adds those two steps before execve. Swift code
//    must never run between fork and exec, hence C.
//    It also sets PR_SET_PDEATHSIG in the child (from one long-lived spawner
//    thread) and registers it with a reaper process, so no child outlives the
//    host, even one killed with SIGKILL.
//  - dsc_pidfd_open: pidfd_open(2) has no glibc wrapper on Debian 12; a pidfd
//    lets one poll(2) loop wait for every child's exit without SIGCHLD
//    handlers (a plugin must not install process-wide signal handlers).
//  - dsc_exited: waitid(WNOWAIT) without reaping (the siginfo_t union is
//    awkward from Swift); the fallback when pidfd_open is unavailable.
//  - dsc_reap: waitpid(2) plus the W* status macros, which Swift does not import.
//  - dsc_pipe: pipe2(O_CLOEXEC) with both ends moved to descriptors >= 3, so
//    the child's dup2 onto 0, 1, 2 can never clobber another pipe end.
//  - dsc_thread_setup: pthread_sigmask(all) for the runtime's own thread, so
//    process-directed signals go to the host's threads and a write to a
//    closed pipe returns EPIPE instead of killing the process with SIGPIPE;
//    and pthread_setname_np (not imported by Swift's Glibc module) so the
//    thread can be recognised in /proc and debuggers.
//  - dsc_nonblock, dsc_dup_above: fcntl(F_SETFL, O_NONBLOCK) and
//    fcntl(F_DUPFD_CLOEXEC) (variadic fcntl is not callable from Swift).
//  - dsc_secure_execution: getauxval(AT_SECURE), which Swift's Glibc module
//    does not import.
#ifndef DESCARTES_CPROCESSSHIM_H
#define DESCARTES_CPROCESSSHIM_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The step of dsc_spawn that failed (reported with the errno).
enum {
    DSC_STAGE_NONE = 0,
    DSC_STAGE_CLONE = 1,
    DSC_STAGE_SETPGID = 2,
    DSC_STAGE_DUP2 = 3,
    DSC_STAGE_CHDIR = 4,
    DSC_STAGE_RLIMIT = 5,
    DSC_STAGE_NO_NEW_PRIVS = 6,
    DSC_STAGE_EXEC = 7,
    DSC_STAGE_NICE = 8,
    DSC_STAGE_PDEATHSIG = 9
};

/// What to start. Every pointer is borrowed for the call.
typedef struct dsc_spawn_request {
    /// Absolute path of the executable (never searched again here).
    const char *_Nonnull path;
    /// NULL-terminated argument and environment vectors.
    char *_Nullable const *_Nonnull argv;
    char *_Nullable const *_Nonnull envp;
    /// Working directory, or NULL to inherit the host's.
    const char *_Nullable cwd;
    /// Descriptors (each >= 3, see dsc_pipe) installed as the child's 0, 1, 2.
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    /// A descriptor (any number) installed as the child's fd 3, or -1: the
    /// isolation helper's socket.
    int fd3;
    /// Non-zero: prctl(PR_SET_NO_NEW_PRIVS) in the child (setuid bits and file
    /// capabilities are ignored by its execve and by everything it runs).
    int no_new_privs;
    /// Resource limits for the child, 0 = inherit. Each is applied as the soft
    /// limit and, lowered only, as the hard limit (the child cannot raise it).
    /// RLIMIT_CPU gets hard = soft + 1 s so SIGXCPU comes before SIGKILL.
    uint64_t cpu_seconds;     /* RLIMIT_CPU */
    uint64_t address_space;   /* RLIMIT_AS, bytes */
    uint64_t open_files;      /* RLIMIT_NOFILE */
    uint64_t file_size;       /* RLIMIT_FSIZE, bytes */
    uint64_t processes;       /* RLIMIT_NPROC (per user, as the kernel counts) */
    /// Scheduling niceness for the child, 0 = inherit; otherwise raised to
    /// this value (1-19) if it is lower (never lowered: that needs privilege).
    int nice;
} dsc_spawn_request_t;

/// Starts a child in a new process group (its pid is the group id) with
/// default signal dispositions, an empty signal mask, the given descriptors
/// as 0, 1, 2 (and 3, when fd3 is set) and every other descriptor closed.
///
/// The child gets PR_SET_PDEATHSIG(SIGKILL) (the clone runs on one
/// long-lived thread of the process, so the signal means "the host died",
/// not "the calling thread ended"), and its pid is registered with the
/// process's reaper, forked at the first spawn: when the host dies however
/// it dies, the reaper SIGKILLs the process group of every child not yet
/// reaped (its grandchildren included). Reap children with dsc_reap, or call
/// dsc_forget before waitpid.
///
/// Returns 0 and the child's pid in *pid, or an errno value with the failing
/// step in *stage (a child that failed before execve has been reaped).
/// Thread-safe; blocks only until the child has called execve.
int dsc_spawn(const dsc_spawn_request_t *_Nonnull request, pid_t *_Nonnull pid, int *_Nonnull stage);

/// Withdraws pid from the reaper (see dsc_spawn): call it before reaping a
/// child with waitpid yourself (dsc_reap does it).
void dsc_forget(pid_t pid);

/// pidfd_open(pid, 0) with O_CLOEXEC semantics; -1 and errno on failure.
int dsc_pidfd_open(pid_t pid);

/// 1 if the child has terminated (it stays a zombie until reaped), 0 if it is
/// still running, -1 and errno on error.
int dsc_exited(pid_t pid);

/// waitpid(pid, &status, nohang ? WNOHANG : 0), retried on EINTR. Returns 1
/// when reaped (*exit_code = exit status or -1, *signal = terminating signal
/// or 0), 0 when nohang and still running, -1 and errno on error.
int dsc_reap(pid_t pid, int nohang, int *_Nonnull exit_code, int *_Nonnull signal);

/// pipe2(O_CLOEXEC) with both ends at descriptors >= 3. 0 or -1 and errno.
int dsc_pipe(int fds[_Nonnull 2]);

/// Sets O_NONBLOCK on fd. 0 or -1 and errno.
int dsc_nonblock(int fd);

/// fcntl(fd, F_DUPFD_CLOEXEC, min): a copy of fd at the lowest free
/// descriptor >= min, close-on-exec; -1 and errno on failure.
int dsc_dup_above(int fd, int min);

/// Blocks every signal in the calling thread and names it (at most 15 bytes).
void dsc_thread_setup(const char *_Nonnull name);

/// getauxval(AT_SECURE): non-zero when the process runs in secure-execution
/// mode (setuid, setgid, or file capabilities), as glibc's secure_getenv sees it.
int dsc_secure_execution(void);

#ifdef __cplusplus
}
#endif

#endif
