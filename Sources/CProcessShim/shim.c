// See include/CProcessShim.h for why each function exists.
#define _GNU_SOURCE
#include "CProcessShim.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/auxv.h>
#include <unistd.h>
#include <pthread.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* Shared between the parent and the child (CLONE_VM): the child reports a
   failure here before it exits, and the parent reads it once clone returns
   (CLONE_VFORK suspends the parent until the child's execve or exit). */
struct child_context {
    const dsc_spawn_request_t *request;
    int error;
    int stage;
    /* -1, except in the fork path (ThreadSanitizer builds, below): a
       close-on-exec pipe the child reports a failure through. */
    int report_fd;
    /* The host's pid: the child exits at once if its parent is no longer
       the host once its parent-death signal is set. */
    pid_t host;
};

/* Closes every descriptor from `first` up, except `keep` (-1: none). */
static void close_from(int first, int keep) {
    int ok;
    if (keep < first) {
        ok = syscall(SYS_close_range, (unsigned)first, ~0u, 0u) == 0;
    } else {
        ok = (keep == first || syscall(SYS_close_range, (unsigned)first, (unsigned)keep - 1, 0u) == 0)
            && syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u) == 0;
    }
    if (ok) return;
    struct rlimit nofile;
    long max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY && (long)nofile.rlim_cur < max)
        max = (long)nofile.rlim_cur;
    for (long fd = first; fd < max; fd++) if (fd != keep) (void)close((int)fd);
}

static int lower_limit(int resource, uint64_t value, uint64_t hard_extra) {
    struct rlimit current;
    if (getrlimit(resource, &current) != 0) return -1;
    rlim_t soft = (rlim_t)value;
    rlim_t hard = (rlim_t)(value + hard_extra);
    /* Never raise: an unprivileged process cannot, and a limit the host
       already has is the stricter one. */
    if (current.rlim_max != RLIM_INFINITY && hard > current.rlim_max) hard = current.rlim_max;
    if (soft > hard) soft = hard;
    struct rlimit next = {soft, hard};
    return setrlimit(resource, &next);
}

/* Runs in the child, on its own stack, sharing the parent's memory until
   execve. Only system calls; no allocation, no locks, no stdio. */
static int child_main(void *arg) {
    struct child_context *ctx = arg;
    const dsc_spawn_request_t *r = ctx->request;

    /* Default dispositions for every signal: a host may ignore SIGPIPE or
       SIGINT, and ignored dispositions survive execve. (Without
       CLONE_SIGHAND this changes the child's copy of the table only.) */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL); /* glibc-reserved signals fail with EINVAL: fine */
    }

    ctx->stage = DSC_STAGE_SETPGID;
    if (setpgid(0, 0) != 0) goto fail;

    /* The child must not outlive the host: SIGKILL when its parent dies.
       (The "parent" is the thread that cloned it, hence the spawner thread
       below, which never exits.) If the host died before this line, the
       signal will never come: exit now. */
    ctx->stage = DSC_STAGE_PDEATHSIG;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) goto fail;
    if (getppid() != ctx->host) _exit(127);

    ctx->stage = DSC_STAGE_DUP2;
    if (dup2(r->stdin_fd, 0) < 0 || dup2(r->stdout_fd, 1) < 0 || dup2(r->stderr_fd, 2) < 0) goto fail;
    if (r->fd3 >= 0) {
        /* dup2 onto itself keeps close-on-exec: clear it instead. (The
           report pipe of the fork path is kept above 3.) */
        if (r->fd3 == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(r->fd3, 3) < 0) goto fail;
    }
    /* Everything else closes: the host's sockets, files and other children's
       pipes must not leak into this child even when they lack O_CLOEXEC. */
    close_from(r->fd3 >= 0 ? 4 : 3, ctx->report_fd);

    if (r->cwd != NULL) {
        ctx->stage = DSC_STAGE_CHDIR;
        if (chdir(r->cwd) != 0) goto fail;
    }

    ctx->stage = DSC_STAGE_RLIMIT;
    if (r->cpu_seconds && lower_limit(RLIMIT_CPU, r->cpu_seconds, 1) != 0) goto fail;
    if (r->address_space && lower_limit(RLIMIT_AS, r->address_space, 0) != 0) goto fail;
    if (r->open_files && lower_limit(RLIMIT_NOFILE, r->open_files, 0) != 0) goto fail;
    if (r->file_size && lower_limit(RLIMIT_FSIZE, r->file_size, 0) != 0) goto fail;
    if (r->processes && lower_limit(RLIMIT_NPROC, r->processes, 0) != 0) goto fail;

    if (r->nice > 0) {
        ctx->stage = DSC_STAGE_NICE;
        errno = 0;
        int current = getpriority(PRIO_PROCESS, 0);
        if (current == -1 && errno != 0) goto fail;
        int target = r->nice > 19 ? 19 : r->nice;
        if (target > current && setpriority(PRIO_PROCESS, 0, target) != 0) goto fail;
    }

    if (r->no_new_privs) {
        ctx->stage = DSC_STAGE_NO_NEW_PRIVS;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) goto fail;
    }

    /* The parent blocked every signal around clone; the child starts clean. */
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);

    ctx->stage = DSC_STAGE_EXEC;
    execve(r->path, r->argv, r->envp);
fail:
    ctx->error = errno ? errno : EINVAL;
    if (ctx->report_fd >= 0) {
        int report[2] = {ctx->error, ctx->stage};
        (void)!write(ctx->report_fd, report, sizeof report);
    }
    _exit(127);
}

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DSC_SPAWN_WITH_FORK 1
#endif
#endif

#ifdef DSC_SPAWN_WITH_FORK
/* ThreadSanitizer builds only: TSan's clone interceptor treats every clone
   as a fork, and with CLONE_VM | CLONE_VFORK its runtime fails a CHECK
   (tsan_rtl.cpp "!thr->slot") and aborts the process. So a sanitized build
   forks (TSan supports fork followed by exec) and the child reports a
   failure through a close-on-exec pipe instead of shared memory: the same
   steps in the child, the same errors and stages to the caller. */
static int spawn_with_fork(struct child_context *ctx, pid_t *pid, int *stage) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        *stage = DSC_STAGE_CLONE;
        return errno;
    }
    /* The child's end must not be (or become) its fd 3. */
    if (report[1] <= 3) {
        int moved = fcntl(report[1], F_DUPFD_CLOEXEC, 4);
        int saved = errno;
        close(report[1]);
        if (moved < 0) {
            close(report[0]);
            *stage = DSC_STAGE_CLONE;
            return saved;
        }
        report[1] = moved;
    }
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    pid_t child = fork();
    if (child == 0) {
        close(report[0]);
        ctx->report_fd = report[1];
        child_main(ctx);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    if (child < 0) {
        close(report[0]);
        *stage = DSC_STAGE_CLONE;
        return fork_errno;
    }
    int got[2] = {0, 0};
    ssize_t n;
    do { n = read(report[0], got, sizeof got); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof got) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        *stage = got[1];
        return got[0];
    }
    *pid = child;
    return 0;
}
#endif

static int spawn_here(const dsc_spawn_request_t *request, pid_t *pid, int *stage) {
    *pid = -1;
    *stage = DSC_STAGE_NONE;
    if (request->stdin_fd < 3 || request->stdout_fd < 3 || request->stderr_fd < 3) {
        *stage = DSC_STAGE_DUP2;
        return EBADF;
    }
#ifdef DSC_SPAWN_WITH_FORK
    struct child_context forked = {request, 0, DSC_STAGE_NONE, -1, getpid()};
    return spawn_with_fork(&forked, pid, stage);
#endif
    const size_t stack_size = 128 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        *stage = DSC_STAGE_CLONE;
        return errno;
    }
    struct child_context ctx = {request, 0, DSC_STAGE_NONE, -1, getpid()};

    /* No signal handler of the host may run in the child while it shares
       the host's memory. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    pid_t child = clone(child_main, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &ctx);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    munmap(stack, stack_size);

    if (child < 0) {
        *stage = DSC_STAGE_CLONE;
        return clone_errno;
    }
    if (ctx.error != 0) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        *stage = ctx.stage;
        return ctx.error;
    }
    *pid = child;
    return 0;
}

/* ---- The spawner thread ------------------------------------------------
   PR_SET_PDEATHSIG fires when the *thread* that created the child exits,
   not the process: a child cloned from a worker thread the runtime later
   retires would be killed with it. So every clone happens on one thread
   that lives as long as the process (all signals blocked), and callers
   hand it their request and wait. A clone with CLONE_VFORK returns as soon
   as the child has called execve, so the queue is never long. */
static pthread_mutex_t spawner_callers = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t spawner_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t spawner_cond = PTHREAD_COND_INITIALIZER;
static pthread_once_t spawner_once = PTHREAD_ONCE_INIT;
static int spawner_ready = 0;
static struct {
    const dsc_spawn_request_t *request;
    pid_t pid;
    int stage;
    int rc;
    int pending; /* 1: posted, 0: answered */
} spawner_job;

static void reaper_add(pid_t pid);

static void *spawner_main(void *unused) {
    (void)unused;
    (void)pthread_setname_np(pthread_self(), "dsc-spawner");
    pthread_mutex_lock(&spawner_lock);
    for (;;) {
        while (spawner_job.pending != 1) pthread_cond_wait(&spawner_cond, &spawner_lock);
        spawner_job.rc = spawn_here(spawner_job.request, &spawner_job.pid, &spawner_job.stage);
        if (spawner_job.rc == 0) reaper_add(spawner_job.pid);
        spawner_job.pending = 0;
        pthread_cond_broadcast(&spawner_cond);
    }
    return NULL;
}

static void spawner_start(void) {
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous); /* inherited by the new thread */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    spawner_ready = pthread_create(&thread, &attr, spawner_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
}

int dsc_spawn(const dsc_spawn_request_t *request, pid_t *pid, int *stage) {
    pthread_once(&spawner_once, spawner_start);
    if (!spawner_ready) {
        *pid = -1;
        *stage = DSC_STAGE_CLONE;
        return EAGAIN;
    }
    pthread_mutex_lock(&spawner_callers);
    pthread_mutex_lock(&spawner_lock);
    spawner_job.request = request;
    spawner_job.pending = 1;
    pthread_cond_broadcast(&spawner_cond);
    while (spawner_job.pending != 0) pthread_cond_wait(&spawner_cond, &spawner_lock);
    int rc = spawner_job.rc;
    *pid = spawner_job.pid;
    *stage = spawner_job.stage;
    pthread_mutex_unlock(&spawner_lock);
    pthread_mutex_unlock(&spawner_callers);
    return rc;
}

/* ---- The reaper ---------------------------------------------------------
   PR_SET_PDEATHSIG kills a child when the host dies, but not what that
   child started (a shell's own children, an agent's tool processes), and
   a SIGKILLed host runs no code at all. So the first spawn forks a reaper:
   a copy of the host that runs no Swift, only read, kill and _exit. Every
   child's pid (its process group: dsc_spawn makes it a group leader) is
   sent to it; dsc_reap withdraws it before reaping (so a group id is never
   killed after it may have been reused). When the host's end of the socket
   closes -- the host exited or was killed, however -- the reaper sends
   SIGKILL to every group still registered and exits. */
#define REAPER_MAX 16384
static int reaper_fd = -1;
static pthread_mutex_t reaper_lock = PTHREAD_MUTEX_INITIALIZER;
static int reaper_started = 0;

static void reaper_run(int fd) {
    static pid_t groups[REAPER_MAX];
    int count = 0;
    int32_t msg[2];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)msg + have, sizeof msg - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        have += (size_t)n;
        if (have < sizeof msg) continue;
        have = 0;
        pid_t pid = (pid_t)msg[1];
        if (msg[0] == 1) {
            if (count < REAPER_MAX) groups[count++] = pid;
        } else {
            for (int i = 0; i < count; i++) {
                if (groups[i] == pid) { groups[i] = groups[--count]; break; }
            }
        }
    }
    for (int i = 0; i < count; i++) (void)kill(-groups[i], SIGKILL);
    _exit(0);
}

/* Called with reaper_lock held. */
static void reaper_start(void) {
    reaper_started = 1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
    int host_end = fcntl(sv[0], F_DUPFD_CLOEXEC, 3);
    close(sv[0]);
    if (host_end < 0) { close(sv[1]); return; }
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    pid_t child = fork();
    if (child == 0) {
        /* Only async-signal-safe calls from here on. Terminal and
           termination signals are ignored: the reaper's job is to outlive
           the host by the moment it takes to end its children. */
        struct sigaction ign;
        memset(&ign, 0, sizeof ign);
        ign.sa_handler = SIG_IGN;
        (void)sigaction(SIGINT, &ign, NULL);
        (void)sigaction(SIGTERM, &ign, NULL);
        (void)sigaction(SIGHUP, &ign, NULL);
        (void)sigaction(SIGQUIT, &ign, NULL);
        (void)sigaction(SIGPIPE, &ign, NULL);
        (void)prctl(PR_SET_NAME, "descartes-reaper", 0, 0, 0);
        /* A group of its own: a host that is itself a child of a host (the
           isolation helper) is killed with its group by its parent's
           reaper, and its own reaper must survive that to end its children. */
        (void)setpgid(0, 0);
        int fd = sv[1];
        if (fd != 3) {
            if (dup2(fd, 3) < 0) _exit(1);
            fd = 3;
        }
        (void)close(0);
        (void)close(1);
        (void)close(2);
        close_from(4, -1);
        sigset_t none;
        sigemptyset(&none);
        (void)sigprocmask(SIG_SETMASK, &none, NULL);
        reaper_run(fd);
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(sv[1]);
    if (child < 0) { close(host_end); return; }
    reaper_fd = host_end;
}

static void reaper_send(int32_t op, pid_t pid) {
    pthread_mutex_lock(&reaper_lock);
    if (!reaper_started && op == 1) reaper_start();
    if (reaper_fd >= 0) {
        int32_t msg[2] = {op, (int32_t)pid};
        ssize_t n;
        do { n = send(reaper_fd, msg, sizeof msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof msg) { close(reaper_fd); reaper_fd = -1; }
    }
    pthread_mutex_unlock(&reaper_lock);
}

static void reaper_add(pid_t pid) { reaper_send(1, pid); }
void dsc_forget(pid_t pid) { reaper_send(0, pid); }

int dsc_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int dsc_exited(pid_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc;
    do {
        rc = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    return info.si_pid == pid ? 1 : 0;
}

int dsc_reap(pid_t pid, int nohang, int *exit_code, int *signal) {
    int status = 0;
    pid_t r;
    if (nohang) {
        int gone = dsc_exited(pid);
        if (gone == 0) return 0;
    }
    dsc_forget(pid);
    do {
        r = waitpid(pid, &status, nohang ? WNOHANG : 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    if (r == 0) return 0;
    *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    *signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    return 1;
}

static int move_up(int fd) {
    if (fd >= 3) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int saved = errno;
    close(fd);
    errno = saved;
    return moved;
}

int dsc_pipe(int fds[2]) {
    int raw[2];
    if (pipe2(raw, O_CLOEXEC) != 0) return -1;
    int r = move_up(raw[0]);
    int w = move_up(raw[1]);
    if (r < 0 || w < 0) {
        int saved = errno;
        if (r >= 0) close(r);
        if (w >= 0) close(w);
        errno = saved;
        return -1;
    }
    fds[0] = r;
    fds[1] = w;
    return 0;
}

int dsc_nonblock(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void dsc_thread_setup(const char *name) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    (void)pthread_setname_np(pthread_self(), name);
}

int dsc_secure_execution(void) { return getauxval(AT_SECURE) != 0; }

int dsc_dup_above(int fd, int min) { return fcntl(fd, F_DUPFD_CLOEXEC, min); }
