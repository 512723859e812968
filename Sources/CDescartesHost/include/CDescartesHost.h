// What the host needs in C: C function pointers Swift cannot make one by
// one (the isolation proxy's operation trampolines).
#ifndef DESCARTES_CDESCARTESHOST_H
#define DESCARTES_CDESCARTESHOST_H

#include <descartes/plugin.h>

/// How many operation trampolines there are (codes 0 to this - 1).
#define DESCARTES_TRAMPOLINES 144

/// Where every trampoline goes: the operation `code` of `self`.
typedef descartes_call_t *_Nullable (*descartes_dispatch_fn)(
    descartes_backend_t *_Nonnull self, unsigned code, const char *_Nonnull input, size_t input_length,
    descartes_event_fn _Nonnull on_event, void *_Nullable ctx);

/// Sets the dispatcher (once, before any trampoline is called).
void descartes_set_dispatch(descartes_dispatch_fn _Nonnull dispatch);

/// An operation function that calls the dispatcher with `code` (an ABI
/// operation function cannot carry a context, so the isolation proxy gives
/// each operation it forwards a function of its own); NULL when `code` is
/// out of range.
descartes_operation_fn _Nullable descartes_trampoline(unsigned code);

/// Keeps the secrets this process holds out of core files and out of other
/// processes' reach: prctl(PR_SET_DUMPABLE, 0) (variadic, which Swift
/// cannot call) and a soft RLIMIT_CORE of 0. With `whole_process` (an
/// executable, not a library inside someone's host) the hard limit goes to
/// 0 too and the crash signals' handlers back to SIG_DFL, so the Swift
/// runtime's crash report (which prints the memory its registers point
/// at) does not run. Returns 0, or -1 when a step failed.
int descartes_protect_secrets(int whole_process);

#endif
