#include "CDescartesHost.h"
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static _Atomic(descartes_dispatch_fn) dispatch_fn;

void descartes_set_dispatch(descartes_dispatch_fn dispatch) { atomic_store(&dispatch_fn, dispatch); }

/* One function per code: T(0x10) defines trampoline_0x10, which passes 16. */
#define T(n)                                                                                                  \
    static descartes_call_t *trampoline_##n(descartes_backend_t *self, const char *input, size_t length,     \
                                            descartes_event_fn on_event, void *ctx) {                         \
        return atomic_load(&dispatch_fn)(self, n, input, length, on_event, ctx);                              \
    }
#define T16(h)                                                                                                \
    T(0x##h##0) T(0x##h##1) T(0x##h##2) T(0x##h##3) T(0x##h##4) T(0x##h##5) T(0x##h##6) T(0x##h##7)           \
    T(0x##h##8) T(0x##h##9) T(0x##h##a) T(0x##h##b) T(0x##h##c) T(0x##h##d) T(0x##h##e) T(0x##h##f)
#define N(n) trampoline_##n,
#define N16(h)                                                                                                \
    N(0x##h##0) N(0x##h##1) N(0x##h##2) N(0x##h##3) N(0x##h##4) N(0x##h##5) N(0x##h##6) N(0x##h##7)           \
    N(0x##h##8) N(0x##h##9) N(0x##h##a) N(0x##h##b) N(0x##h##c) N(0x##h##d) N(0x##h##e) N(0x##h##f)

T16(0) T16(1) T16(2) T16(3) T16(4) T16(5) T16(6) T16(7) T16(8)

static const descartes_operation_fn trampolines[DESCARTES_TRAMPOLINES] = {
    N16(0) N16(1) N16(2) N16(3) N16(4) N16(5) N16(6) N16(7) N16(8)
};

descartes_operation_fn descartes_trampoline(unsigned code) {
    return code < DESCARTES_TRAMPOLINES ? trampolines[code] : NULL;
}

int descartes_protect_secrets(int whole_process) {
    int failed = 0;
    struct rlimit core;
    if (getrlimit(RLIMIT_CORE, &core) != 0) core.rlim_max = 0;
    core.rlim_cur = 0;
    if (whole_process) core.rlim_max = 0;
    if (setrlimit(RLIMIT_CORE, &core) != 0) failed = 1;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) failed = 1;
    if (whole_process) {
        static const int crashes[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGQUIT, SIGSYS};
        struct sigaction dfl;
        for (size_t i = 0; i < sizeof crashes / sizeof crashes[0]; i++) {
            sigemptyset(&dfl.sa_mask);
            dfl.sa_flags = 0;
            dfl.sa_handler = SIG_DFL;
            if (sigaction(crashes[i], &dfl, NULL) != 0) failed = 1;
        }
    }
    return failed ? -1 : 0;
}
