/*
 * descartes/plugin.h -- the Descartes backend plugin ABI, version 1 (1.3).
 *
 * This header is the contract between the Descartes host (the `descartes`
 * CLI, or any program using the Swift `Descartes` library) and a backend
 * plugin: a shared library named `libdescartes-<name>.so` that turns one or
 * more model providers (OpenAI, Anthropic, a local server, a CLI run headless,
 * ...) into backends with one request/response/stream/error model.
 *
 * It is plain C11 (and valid C++17), has no dependency beyond <stddef.h> and
 * <stdint.h>, and is all a third party needs to write a plugin:
 *
 *     cc -shared -fPIC $(pkg-config --cflags descartes-plugin) -o libdescartes-x.so x.c
 *
 * ------------------------------------------------------------------------
 * Where the contract is written
 * ------------------------------------------------------------------------
 *
 *   this header           the types and functions: for each function its
 *                         thread tag, since which ABI version, who owns every
 *                         pointer and whether it may be NULL
 *   docs/abi.md           the JSON documents that cross the boundary (config,
 *                         request, events, response, errors, the results of
 *                         the other operations), the life cycle in one picture,
 *                         and what the host does with what a plugin sends
 *                         (defaults, what it rejects and how)
 *   docs/abi-changelog.md what each ABI version added, and how each side
 *                         detects it
 *   docs/manifest.md      the `<name>.yaml` manifest the host reads before it
 *                         loads anything
 *
 * Each JSON document is summarized next to the function that carries it; the
 * full schema is in docs/abi.md. The host's Swift code (Sources/DescartesCore/
 * Wire.swift and its readers) implements these pages and adds nothing to them.
 * All three files are installed with the header (share/descartes/doc).
 *
 * ------------------------------------------------------------------------
 * Shape
 * ------------------------------------------------------------------------
 *
 *   descartes_plugin_entry()            the one exported symbol
 *     -> descartes_library_t            version, name, factories
 *        -> descartes_factory_t[]       one per provider dialect (a library may
 *                                       register several)
 *           -> create() -> descartes_backend_t   one configured instance:
 *                                       a table of operations
 *              -> operation() -> descartes_call_t   one request in flight,
 *                                       reporting through descartes_event_t
 *
 * Discovery never runs plugin code: the host reads `<name>.yaml` manifests
 * (see docs/manifest.md) and loads the library only when a provider is used.
 *
 * ------------------------------------------------------------------------
 * Versioning rules (apply to every struct below)
 * ------------------------------------------------------------------------
 *
 * 1. The host offers the highest ABI version it speaks to the entry function;
 *    the library answers with the version it implements, which must be
 *    <= the offer, or with NULL to refuse. Version 1 is the first.
 * 2. Every struct that may grow starts with `uint32_t struct_size`, set by the
 *    party that fills the struct to sizeof() as that party compiled it.
 *    Fields are only ever appended, never removed, reordered or retyped.
 * 3. A reader never touches a field at or beyond `struct_size`; use
 *    DESCARTES_HAS_FIELD(). A field that is absent, or a function pointer that
 *    is NULL, means "not provided" and the reader uses the documented default.
 * 4. Capabilities added later without a new ABI version are found by string
 *    id with a revision suffix ("descartes.batch/1") through get_extension().
 *    An extension id's struct never changes meaning; a new revision is a new id.
 *    A backend extension's struct is `uint32_t struct_size` followed by
 *    descartes_operation_fn members only, so the host can call (and forward
 *    to an isolated plugin) any extension's operations by id and slot.
 * 5. A change that cannot follow these rules bumps DESCARTES_ABI_VERSION.
 *
 * Every function says since which version it exists ("since 1.0"): 1.0 is
 * DESCARTES_ABI_VERSION 1 as first published; a "1.x" is a later append under
 * rules 2-4 (same DESCARTES_ABI_VERSION, found by struct_size or extension id).
 * docs/abi-changelog.md lists each.
 *
 * ------------------------------------------------------------------------
 * Thread tags
 * ------------------------------------------------------------------------
 *
 * The comment of every function starts with one line: its thread tags, joined
 * by `&`, then the version it appeared in. The tags:
 *
 *   [thread-safe]    callable from any thread, concurrently with any other
 *                    function of the same object and with itself
 *   [callback-safe]  also callable from inside an event callback, that of the
 *                    very call concerned included
 *   [!callback]      never called from inside an event callback
 *   [exclusive]      never concurrently with any other function of the same
 *                    object (backend, library)
 *   [serial]         no other operation of the backend runs meanwhile (the
 *                    `cancel` and `release` of this call's own handle may)
 *   [once]           at most once per object (per library, backend or handle)
 *   [open]           only while the backend is open: after `create` returned
 *                    it, before its `shutdown` was started
 *   [ready]          only after the backend's `initialize` ended with RESULT,
 *                    before its `shutdown` was started
 *   [!ready]         only while the backend is not ready
 *   [plugin-thread]  (callbacks the plugin calls) from any thread the plugin
 *                    owns, or from the thread that started the call before the
 *                    start function returned; one at a time per call, in order
 *   [in-call]        (callbacks the plugin calls) synchronously, on the thread
 *                    of the function it was passed to, before that returns
 *
 * The sentences after the tag line say the rest (what may block, ordering).
 * docs/abi.md has the same rules as one table.
 *
 * ------------------------------------------------------------------------
 * Pointers: NULL and ownership
 * ------------------------------------------------------------------------
 *
 * Every pointer is marked DESCARTES_NONNULL (never NULL) or DESCARTES_NULLABLE
 * (NULL allowed, with the meaning stated next to it). With clang these are
 * `_Nonnull` / `_Nullable`, so `-Wnonnull` and `-Wnullability-completeness`
 * check them; with other compilers, and in the Swift importer (the host must
 * be able to check what an untrusted plugin hands it), they expand to nothing.
 * A NULL where the header says DESCARTES_NONNULL is a broken plugin or host;
 * docs/abi.md says what the host does with one (it never crashes on it).
 *
 * Ownership is stated for every pointer with one of these words:
 *
 *   borrowed         valid only until the function (or callback) it was
 *                    passed to returns; copy what you keep
 *   lives until X    the party that filled it keeps it valid until X
 *   owned by P       P allocated it and alone frees it (through the function
 *                    named next to it)
 *
 * ------------------------------------------------------------------------
 * General rules
 * ------------------------------------------------------------------------
 *
 * - Strings are UTF-8. A `const char *` documented "NUL-terminated" is; a
 *   pointer passed with a length need not be. JSON payloads are UTF-8 JSON
 *   texts (RFC 8259) passed as pointer + length.
 * - Memory crosses the boundary only as borrowed pointers, unless stated
 *   otherwise: whoever allocates frees.
 * - Neither side unwinds (C++ exceptions, longjmp), aborts, or exits across
 *   the boundary. Errors are values: an ERROR event, or an error JSON passed
 *   to a callback.
 * - A plugin never writes to the process's stdout; it logs through the host.
 * - The host never calls dlclose() on a library after descartes_plugin_entry
 *   returned non-NULL (Swift images cannot be unloaded safely); a plugin must
 *   not rely on its destructors running before process exit.
 */
#ifndef DESCARTES_PLUGIN_H
#define DESCARTES_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

/* Nullability (see "Pointers" above): clang's `_Nonnull`/`_Nullable`, which
 * are a clang extension that -pedantic would report, hence the pragma around
 * this header only. Nothing for other compilers, nor for Swift's importer. */
#if defined(__clang__) && !defined(__swift__)
#define DESCARTES_NONNULL _Nonnull
#define DESCARTES_NULLABLE _Nullable
#define DESCARTES_NULLABILITY_PRAGMAS 1
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wnullability-extension"
#else
#define DESCARTES_NONNULL
#define DESCARTES_NULLABLE
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version this header describes. */
#define DESCARTES_ABI_VERSION 1u

/** The 1.x revision this header describes (1.1: the backend's `embed`;
 *  1.2: tool approval, DESCARTES_EVENT_APPROVAL and `answer_approval`;
 *  1.3: DESCARTES_EVENT_REASONING_SIGNATURE;
 *  1.4: DESCARTES_EVENT_REASONING_REDACTED and a message's reasoning_blocks).
 *  Informational, for `#if` in a plugin's source: nothing is negotiated with
 *  it. Each side finds what the other has by struct_size (DESCARTES_HAS_FIELD)
 *  and extension id, never by this number. Since 1.1. */
#define DESCARTES_ABI_MINOR 4u

/** The symbol the host looks up with dlsym(). */
#define DESCARTES_PLUGIN_ENTRY_SYMBOL "descartes_plugin_entry"

/** Marks the entry function for export from a library built with
 *  -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define DESCARTES_EXPORT __attribute__((visibility("default")))
#else
#define DESCARTES_EXPORT
#endif

/** True when the struct at `ptr` (a pointer to a growable struct) was filled
 *  by a party that knew `field`: use it before reading any field that was
 *  added after version 1 of that struct. */
#define DESCARTES_HAS_FIELD(ptr, type, field) \
    ((ptr)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* ======================================================================
 * Log levels (host.log)
 * ====================================================================== */

enum {
    DESCARTES_LOG_ERROR = 0,
    DESCARTES_LOG_WARNING = 1,
    DESCARTES_LOG_INFO = 2,
    DESCARTES_LOG_DEBUG = 3,
    DESCARTES_LOG_TRACE = 4
};

/* ======================================================================
 * The host table: what the host offers the plugin.
 * ====================================================================== */

typedef struct descartes_host descartes_host_t;

/** Filled by the host; lives until the library's `unload` returns (the
 *  library-level table) or until the backend's `destroy` returns (a
 *  backend's table, given in descartes_create_args_t). */
struct descartes_host {
    /** sizeof(descartes_host_t) as the host compiled it. */
    uint32_t struct_size;
    /** The ABI version the host negotiated with this library. */
    uint32_t abi_version;
    /** Host program name and version, NUL-terminated, e.g. "descartes", "0.1.0".
     *  Live as long as the table. */
    const char *DESCARTES_NONNULL name;
    const char *DESCARTES_NONNULL version;
    /** Opaque to the plugin; the host's own context for this table. */
    void *DESCARTES_NULLABLE host_data;

    /**
     * [thread-safe & callback-safe] since 1.0
     *
     * Writes one log record. `message` is UTF-8 of `length` bytes, one line
     * without a trailing newline, and must not contain secrets: the host
     * additionally masks every configured secret value it knows, but a plugin
     * must not rely on that.
     *
     * `host`: this table. `message`: borrowed.
     * Callable at any time while the table lives. Never blocks on plugin
     * activity. Records below the host's current level are dropped cheaply:
     * see `log_level`.
     */
    void (*DESCARTES_NONNULL log)(const descartes_host_t *DESCARTES_NONNULL host, uint32_t level,
                                  const char *DESCARTES_NONNULL message, size_t length);

    /**
     * [thread-safe & callback-safe] since 1.0
     *
     * Returns the most verbose level the host currently records
     * (DESCARTES_LOG_*), so a plugin can skip building messages nobody reads.
     * The value may change over time. `host`: this table.
     */
    uint32_t (*DESCARTES_NONNULL log_level)(const descartes_host_t *DESCARTES_NONNULL host);

    /**
     * [thread-safe & callback-safe] since 1.0
     *
     * Returns the host extension with the given id (NUL-terminated, borrowed,
     * e.g. "descartes.host.metrics/1"), or NULL if the host does not offer it.
     * 1.0 hosts offer none; the function exists so that later hosts can
     * without an ABI bump. The returned struct is owned by the host and lives
     * as long as the table.
     */
    const void *DESCARTES_NULLABLE (*DESCARTES_NONNULL get_extension)(const descartes_host_t *DESCARTES_NONNULL host,
                                                                      const char *DESCARTES_NONNULL id);
};

/* ======================================================================
 * Events: how a plugin reports on a call in flight.
 * ====================================================================== */

/**
 * Event types. A call delivers zero or more non-terminal events followed by
 * exactly one terminal event (RESULT or ERROR), after which it delivers
 * nothing. The host checks these rules and turns a violation into an
 * `invalid_response` error for its caller.
 *
 * For `complete` and `stream`, the host assembles the response's content,
 * reasoning and tool calls from the TEXT, REASONING and TOOL_CALL_* events
 * (a `complete` that read a whole body at once simply emits the whole text in
 * one TEXT event); RESULT then carries what the deltas cannot: finish reason,
 * usage, model, id and metadata. All since 1.0.
 */
enum {
    /** Optional, at most once, before any other event of a completion.
     *  data: JSON {"id"?: string, "model"?: string}. */
    DESCARTES_EVENT_START = 1,
    /** A fragment of the answer's text. data: the UTF-8 bytes of the fragment
     *  (not JSON, not NUL-terminated). A fragment may end inside a UTF-8
     *  sequence; the host joins fragments before decoding. */
    DESCARTES_EVENT_TEXT = 2,
    /** A fragment of the model's reasoning ("thinking"). data: UTF-8 bytes, as
     *  for TEXT. */
    DESCARTES_EVENT_REASONING = 3,
    /** A tool call begins. index: the call's position (0-based, unique within
     *  the response). data: JSON {"id": string, "name": string}; id may be ""
     *  when the provider gives none (the host then makes one up). */
    DESCARTES_EVENT_TOOL_CALL_START = 4,
    /** A fragment of a tool call's arguments. index: as in TOOL_CALL_START,
     *  which must come first. data: raw bytes of the arguments' JSON text,
     *  concatenated in order by the host. */
    DESCARTES_EVENT_TOOL_CALL_DELTA = 5,
    /** A tool call's arguments are complete. index: as above. data: empty. */
    DESCARTES_EVENT_TOOL_CALL_END = 6,
    /** Token usage so far, cumulative (the last one wins). data: JSON Usage
     *  (docs/abi.md). Optional; RESULT may carry usage instead. */
    DESCARTES_EVENT_USAGE = 7,
    /** A diagnostic the caller may want to see but that is not part of the
     *  answer (a CLI's stderr line, a non-JSON line stripped of escape codes,
     *  a provider warning). data: JSON {"level": "info"|"warning"|"error",
     *  "message": string}. */
    DESCARTES_EVENT_NOTICE = 8,
    /** Terminal: the operation succeeded. data: the operation's result JSON
     *  (documented with each operation below and in docs/abi.md). */
    DESCARTES_EVENT_RESULT = 9,
    /** Terminal: the operation failed. data: JSON Error (docs/abi.md):
     *  {"kind": string, "message": string, "status"?: int,
     *   "provider_type"?: string, "retry_after_ms"?: int, ...}. */
    DESCARTES_EVENT_ERROR = 10,
    /** Since 1.2. An agent asks the caller to approve a tool use before it
     *  runs it. Only for a `complete` or `stream` whose Request has
     *  "approvals": "host" (a host that sets it answers; without it, or
     *  from a 1.0/1.1 host, the plugin never sends this event and decides
     *  by its own configuration). data: JSON {"id": string (unique within
     *  the call), "tool": string, "input"?: any, "kind"?: string}. The host
     *  answers each id once, later, from another thread, through the
     *  backend's `answer_approval`, unless the call ends first (its
     *  terminal event, or `cancel`: the plugin then treats every open
     *  request as denied). The call's deadlines keep running meanwhile.
     *  Non-terminal; a 1.1 host ignores it (unknown type). */
    DESCARTES_EVENT_APPROVAL = 11,
    /** Since 1.3. The provider's signature of the reasoning block that
     *  ends (Anthropic's `signature_delta`, Bedrock's reasoning signature),
     *  sent when that block ends, before the next TEXT, TOOL_CALL_START or
     *  REASONING_REDACTED, so a streaming consumer can close the block with
     *  it. data: the signature's UTF-8 bytes, whole. It ends the block: the
     *  REASONING sent since the previous signature (or redacted block) is
     *  the block it signs, and REASONING after it starts the next block
     *  (interleaved thinking answers with several, each signed). The
     *  RESULT's metadata still carries the last signature too. Optional and
     *  non-terminal; an older host ignores it (unknown type). */
    DESCARTES_EVENT_REASONING_SIGNATURE = 12,
    /** Since 1.4. A reasoning block the provider returns encrypted
     *  (Anthropic's `redacted_thinking`, Bedrock's `redactedContent`): a
     *  block of its own, in order among the reasoning blocks (it ends the
     *  open one), to be sent back unmodified on the next turn as a
     *  message's `reasoning_blocks` entry {"type": "redacted"}. data: the
     *  provider's opaque data, UTF-8 bytes, whole. Non-terminal; an older
     *  host ignores it (unknown type). */
    DESCARTES_EVENT_REASONING_REDACTED = 13
};

/** Filled by the plugin; borrowed by the host for the duration of the event
 *  callback. */
typedef struct descartes_event {
    /** sizeof(descartes_event_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** One of DESCARTES_EVENT_*. Unknown types are ignored by the host unless
     *  terminal rules are broken. */
    uint32_t type;
    /** Tool call index for DESCARTES_EVENT_TOOL_CALL_*; 0 otherwise. */
    uint32_t index;
    /** Reserved, set to 0. */
    uint32_t reserved;
    /** Payload bytes as documented per type, `data_length` long. NULL allowed
     *  when `data_length` is 0. Borrowed: valid only during the callback. */
    const char *DESCARTES_NULLABLE data;
    size_t data_length;
} descartes_event_t;

/**
 * [plugin-thread] since 1.0
 *
 * The event callback the host passes when it starts an operation.
 *
 * `ctx`: the host's pointer, given back unchanged (the plugin never reads
 * it). `event` and everything it points to: borrowed.
 *
 * The plugin may call it from any thread, including the thread that started
 * the operation before the start function has returned. Events of one call
 * are delivered one at a time, in order (never concurrently with each other);
 * events of different calls may be delivered concurrently. The host's
 * callback does not block on network or disk and returns quickly, but it may
 * call `cancel` and `release` for the same call from inside the callback
 * (see `release`).
 */
typedef void (*descartes_event_fn)(void *DESCARTES_NULLABLE ctx,
                                   const descartes_event_t *DESCARTES_NONNULL event);

/**
 * [in-call] since 1.0
 *
 * A callback receiving one UTF-8 JSON document of `length` bytes (borrowed).
 * Used to report a synchronous error: called at most once, before the
 * function it was passed to returns. `ctx`: the caller's pointer, given back
 * unchanged.
 */
typedef void (*descartes_json_fn)(void *DESCARTES_NULLABLE ctx, const char *DESCARTES_NONNULL json,
                                  size_t length);

/* ======================================================================
 * Backends: one configured instance of a provider.
 * ====================================================================== */

typedef struct descartes_backend descartes_backend_t;

/** One operation in flight. Opaque to the host; defined, allocated and freed
 *  by the plugin (see `release`). */
typedef struct descartes_call descartes_call_t;

/**
 * [open] since 1.0
 *
 * The shape shared by every operation: a non-blocking start. Each operation
 * below narrows the tag in its own tag line; these rules hold for all of them.
 *
 * `self`: the backend. `input`/`input_length`: the operation's JSON input
 * (documented per operation), borrowed. `on_event`/`ctx`: where the plugin
 * reports; both live until the terminal event's callback has returned.
 *
 * Returns a handle for `cancel` and `release`, owned by the plugin, and
 * arranges for exactly one terminal event. It returns promptly (it must not
 * wait for the network or a child process); the work happens on threads the
 * plugin owns. If it cannot even allocate a handle it returns NULL and
 * delivers no event at all; the host then reports a `backend` error.
 *
 * Every operation may run concurrently with any other operation of the same
 * backend (but see `initialize`), and nothing is started after `shutdown`
 * has been started.
 */
typedef descartes_call_t *DESCARTES_NULLABLE (*descartes_operation_fn)(
    descartes_backend_t *DESCARTES_NONNULL self, const char *DESCARTES_NONNULL input, size_t input_length,
    descartes_event_fn DESCARTES_NONNULL on_event, void *DESCARTES_NULLABLE ctx);

/** Filled by the plugin in `create`; owned by the plugin, lives until its
 *  `destroy` returns. Every function below is required (DESCARTES_NONNULL)
 *  except `get_extension` and those appended since 1.0 (`embed`,
 *  `answer_approval`). */
struct descartes_backend {
    /** sizeof(descartes_backend_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** The plugin's own pointer; the host never reads it. */
    void *DESCARTES_NULLABLE plugin_data;

    /**
     * [open & !ready & serial] since 1.0
     *
     * Prepares the backend for use: verify the endpoint or the executable,
     * fetch and cache what later calls need (the model list, a version).
     * Called before any other operation, and again only if it failed (the
     * host retries on the next request); the host does not start other
     * operations while it runs.
     * input: JSON {} (reserved for later fields).
     * RESULT: JSON {"models"?: [ModelInfo], "message"?: string}.
     * ERROR kinds typically: initialization, provider_unavailable,
     * authentication, config.
     */
    descartes_operation_fn DESCARTES_NONNULL initialize;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Checks that the backend can serve a request now, with the cheapest real
     * operation that proves it (an authenticated call, `--version` of a CLI).
     * input: JSON {}.
     * RESULT: JSON Health {"message": string, "details"?: object}: healthy.
     * ERROR: not healthy; the error says why.
     * Optional: NULL (or an unsupported_feature ERROR) is reported by
     * `descartes health` as "not implemented", not as unhealthy.
     */
    descartes_operation_fn DESCARTES_NULLABLE health_check;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Runs one completion and reports the answer once it is whole (the plugin
     * may use the provider's non-streaming mode). Events: as for `stream`; a
     * plugin that reads the whole answer at once emits it as one TEXT event and
     * one TOOL_CALL_START/DELTA/END triple per tool call.
     * input: JSON Request (docs/abi.md).
     * RESULT: JSON Finish {"finish_reason": string, "usage"?: Usage,
     *   "model"?: string, "id"?: string, "cost_usd"?: number,
     *   "metadata"?: object}.
     */
    descartes_operation_fn DESCARTES_NONNULL complete;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Runs one completion and reports it as it is produced: TEXT,
     * REASONING, TOOL_CALL_*, USAGE and NOTICE events as the provider sends
     * them, then RESULT (Finish, as for `complete`) or ERROR.
     * input: JSON Request.
     */
    descartes_operation_fn DESCARTES_NONNULL stream;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Lists the models the provider offers.
     * input: JSON {}.
     * RESULT: JSON {"models": [ModelInfo]}, ModelInfo = {"id": string,
     *   "context_length"?: int, "owned_by"?: string, "details"?: object}.
     */
    descartes_operation_fn DESCARTES_NONNULL list_models;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Counts or estimates the input tokens of a request.
     * input: JSON Request.
     * RESULT: JSON {"tokens": int, "exact": bool, "method": string} where
     *   method says how the number was obtained (e.g. "server:/tokenize",
     *   "heuristic:chars/4").
     * Optional: NULL (or an unsupported_feature ERROR) makes the host use its
     * own chars/4 heuristic, its method saying so.
     */
    descartes_operation_fn DESCARTES_NULLABLE estimate_tokens;

    /**
     * [thread-safe & open & once] since 1.0
     *
     * Stops accepting work, cancels calls still in flight (each still gets
     * its one terminal event), and releases network connections and child
     * processes. The terminal event of shutdown comes after the terminal
     * events of every other call of this backend. The host calls it once
     * some operation was started (ready or not); never twice.
     * input: JSON {}. RESULT: JSON {}.
     * After it, the host only calls `cancel`, `release` and `destroy`.
     */
    descartes_operation_fn DESCARTES_NONNULL shutdown;

    /**
     * [thread-safe & callback-safe] since 1.0
     *
     * Asks the plugin to stop a call as soon as it can. The call still
     * delivers exactly one terminal event: an ERROR of kind "cancelled" if the
     * cancellation won, or whatever terminal event was already on its way.
     * A plugin aborts network transfers and kills child processes promptly.
     *
     * `call`: a handle this backend returned, not yet released. Always safe
     * for such a handle: before, during or after the terminal event, more
     * than once, from any thread, including from inside that call's event
     * callback.
     */
    void (*DESCARTES_NONNULL cancel)(descartes_backend_t *DESCARTES_NONNULL self,
                                     descartes_call_t *DESCARTES_NONNULL call);

    /**
     * [thread-safe & callback-safe & once] since 1.0
     *
     * The host is done with `call` and will not pass it to `cancel` again.
     * The host calls it exactly once per handle, after the call's terminal
     * event has been delivered to it -- possibly from inside the terminal
     * event's callback. The plugin frees the call once both the terminal
     * callback has returned and `release` has been called, whichever is last
     * (a reference count of two is the simple way).
     */
    void (*DESCARTES_NONNULL release)(descartes_backend_t *DESCARTES_NONNULL self,
                                      descartes_call_t *DESCARTES_NONNULL call);

    /**
     * [thread-safe] since 1.0
     *
     * Returns the backend extension with the given id (NUL-terminated,
     * borrowed, e.g. "descartes.batch/1"), or NULL if unsupported. The
     * returned struct is owned by the plugin and lives as long as the
     * backend. The function itself may be NULL (no extensions).
     */
    const void *DESCARTES_NULLABLE (*DESCARTES_NULLABLE get_extension)(descartes_backend_t *DESCARTES_NONNULL self,
                                                                       const char *DESCARTES_NONNULL id);

    /**
     * [exclusive & !callback & once] since 1.0
     *
     * Frees the backend. Called once, after every handle has been released
     * (normally after `shutdown`'s terminal event; without `shutdown` when no
     * operation was ever started), never concurrently with any other function
     * of this backend and never from inside an event callback. A thread of
     * the plugin may still be returning from the callback that delivered a
     * terminal event: `destroy` waits for the plugin's own threads before it
     * frees what they touch. No callback of this backend may run after it
     * returns.
     */
    void (*DESCARTES_NONNULL destroy)(descartes_backend_t *DESCARTES_NONNULL self);

    /* ---- Appended in 1.1. A host reads a member below only when
     * DESCARTES_HAS_FIELD(self, descartes_backend_t, member) says the
     * plugin's struct_size covers it: a plugin built against the 1.0 header
     * filled a shorter struct, and the host treats the member as NULL. ---- */

    /**
     * [thread-safe & ready] since 1.1
     *
     * Embeds a batch of texts: one vector per input, in order.
     * input: JSON Embed {"input": [string], "model"?: string (the
     *   provider's default embedding model when absent), "dimensions"?: int
     *   (shorter vectors, for models that can give them), "deadlines"?:
     *   object (as in a Request)}.
     * RESULT: JSON Embeddings {"embeddings": [[number], ...] (as many as
     *   inputs, each `dimensions` numbers long), "dimensions": int,
     *   "model"?: string, "usage"?: Usage (input_tokens)}.
     * ERROR: as for `complete`; unsupported_feature when the configured
     *   model or provider cannot embed.
     * May be NULL (the backend cannot embed): the host then answers
     * unsupported_feature itself, as it does for a 1.0 plugin.
     */
    descartes_operation_fn DESCARTES_NULLABLE embed;

    /* ---- Appended in 1.2 (read only when DESCARTES_HAS_FIELD says so). ---- */

    /**
     * [thread-safe & callback-safe] since 1.2
     *
     * The host's answer to a DESCARTES_EVENT_APPROVAL of `call`.
     * `json`/`length`: JSON {"id": string (the event's), "allow": bool,
     * "reason"?: string (why it was denied)}, borrowed.
     * `call`: a handle this backend returned, not yet released; the host
     * calls it at most once per id. The plugin ignores an id it does not
     * know (its call ended, or it was answered). May be NULL: the plugin
     * never asks, and the host never sets "approvals" in its requests.
     */
    void (*DESCARTES_NULLABLE answer_approval)(descartes_backend_t *DESCARTES_NONNULL self,
                                               descartes_call_t *DESCARTES_NONNULL call,
                                               const char *DESCARTES_NONNULL json, size_t length);
};

/* ======================================================================
 * Backend extension "descartes.batch/1": the provider's own batch API.
 * ====================================================================== */

/** The id to pass to descartes_backend_t.get_extension. Since 1.0. */
#define DESCARTES_BATCH_EXTENSION_ID "descartes.batch/1"

/**
 * A provider's own batch API (OpenAI's /v1/batches with the files API,
 * Anthropic's /v1/messages/batches): many requests submitted at once, run
 * by the provider within its window (typically 24 hours, at a discount),
 * their results fetched later, possibly by another process.
 *
 * A backend that offers it returns a pointer to this struct from
 * get_extension(DESCARTES_BATCH_EXTENSION_ID); owned by the plugin, it lives
 * as long as the backend (a static struct shared by every backend of the
 * plugin is the normal choice: `self` tells them apart). A reader checks
 * struct_size, as for every struct; a NULL function means that step is not
 * offered.
 *
 * Every function is an operation exactly like those of descartes_backend_t
 * (descartes_operation_fn: same arguments, ownership and rules): it starts
 * without blocking, returns a handle, reports through `on_event` (NOTICE
 * events allowed) and ends with exactly one RESULT or ERROR; the handle is
 * cancelled and released with the backend's own `cancel` and `release`.
 * Cancelling a call abandons that call (an upload, a download), never the
 * batch: only `cancel_batch` cancels a batch at the provider.
 *
 * The JSON documents (docs/abi.md, "Provider batches"):
 *   BatchStatus = {"id": string, "state": "in_progress" | "cancelling" |
 *     "ended" | "cancelled" | "expired" | "failed", "provider_status": string,
 *     "counts"?: {"total": int, "succeeded": int, "failed": int},
 *     "created_at"?: int, "expires_at"?: int (Unix seconds),
 *     "message"?: string}
 */
typedef struct descartes_batch_extension {
    /** sizeof(descartes_batch_extension_t) as the plugin compiled it. */
    uint32_t struct_size;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Submits a batch.
     * input: JSON {"requests": [{"custom_id": string, "request": Request}, ...]}
     *   (custom_id: unique within the batch, at most 64 characters of
     *   [A-Za-z0-9_-]).
     * RESULT: BatchStatus of the new batch.
     * ERROR: as for `complete` (authentication, api for a request the
     *   provider refuses, rate_limited, ...).
     */
    descartes_operation_fn DESCARTES_NULLABLE submit;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Reports a batch's progress.
     * input: JSON {"id": string}.  RESULT: BatchStatus.
     */
    descartes_operation_fn DESCARTES_NULLABLE status;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Fetches the results of a batch whose state is "ended" (or "cancelled"
     * or "expired": the requests that finished).
     * input: JSON {"id": string}.
     * RESULT: JSON {"results": [{"custom_id": string, "response": Response}
     *   | {"custom_id": string, "error": Error}], "price_factor"?: number},
     *   Response = {"content": string, "reasoning"?: string, "tool_calls"?:
     *   [{"id", "name", "arguments"}], "finish_reason": string, "usage"?:
     *   Usage, "model"?: string, "id"?: string, "cost_usd"?: number}.
     *   price_factor: what the provider charges for batches relative to its
     *   list prices (0.5 for half price); the host prices usage with the
     *   manifest's prices times this factor when a result has no cost_usd.
     * ERROR: api when the batch has not ended.
     */
    descartes_operation_fn DESCARTES_NULLABLE results;

    /**
     * [thread-safe & ready] since 1.0
     *
     * Asks the provider to cancel a batch.
     * input: JSON {"id": string}.  RESULT: BatchStatus (usually "cancelling").
     */
    descartes_operation_fn DESCARTES_NULLABLE cancel_batch;
} descartes_batch_extension_t;

/* ======================================================================
 * Factories: how the host creates backends.
 * ====================================================================== */

/** Filled by the host; borrowed by `create` (keep only `host`). */
typedef struct descartes_create_args {
    /** sizeof(descartes_create_args_t) as the host compiled it. */
    uint32_t struct_size;
    /** The host table for this backend instance (its log records are
     *  attributed to the instance). Lives until the backend's `destroy`
     *  returns: keep it. */
    const descartes_host_t *DESCARTES_NONNULL host;
    /** Provider id from the manifest (e.g. "deepseek" for a manifest that
     *  uses the "openai" factory) and the instance name the user chose
     *  (e.g. "lab-vllm"); NUL-terminated, borrowed. */
    const char *DESCARTES_NONNULL provider;
    const char *DESCARTES_NONNULL instance;
    /** JSON Config: an object holding every key the manifest declares that
     *  has a value (explicit, from the environment, or the default), with the
     *  manifest's types already checked. Secrets are included in clear: never
     *  log them. Borrowed. */
    const char *DESCARTES_NONNULL config;
    size_t config_length;
} descartes_create_args_t;

typedef struct descartes_factory descartes_factory_t;

/** Filled by the plugin; owned by the plugin, lives until the process exits
 *  (static storage). */
struct descartes_factory {
    /** sizeof(descartes_factory_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** The id a manifest's `factory:` names, NUL-terminated (e.g. "openai"). */
    const char *DESCARTES_NONNULL id;
    /** One line for humans, NUL-terminated. */
    const char *DESCARTES_NONNULL description;

    /**
     * [thread-safe] since 1.0
     *
     * Creates a backend from a validated configuration. It does no I/O that
     * can block (that belongs in `initialize`); it only checks and stores
     * the configuration. Concurrent calls to create are allowed.
     *
     * `self`: this factory. `args`: borrowed (see descartes_create_args_t).
     * `on_error`/`error_ctx`: for the failure report, borrowed.
     *
     * Returns the backend, owned by the plugin until the host calls its
     * `destroy`. On failure returns NULL, after calling `on_error` once with
     * a JSON Error (kind "config" for a value the plugin rejects, naming the
     * key).
     */
    descartes_backend_t *DESCARTES_NULLABLE (*DESCARTES_NONNULL create)(
        const descartes_factory_t *DESCARTES_NONNULL self, const descartes_create_args_t *DESCARTES_NONNULL args,
        descartes_json_fn DESCARTES_NONNULL on_error, void *DESCARTES_NULLABLE error_ctx);
};

/* ======================================================================
 * The library and its entry point.
 * ====================================================================== */

/** Filled by the plugin; owned by the plugin, lives until the process exits
 *  (static storage). */
typedef struct descartes_library {
    /** sizeof(descartes_library_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** The ABI version the library implements: <= the host's offer. */
    uint32_t abi_version;
    /** Library name and version (semver), NUL-terminated, e.g. "openai",
     *  "1.2.0". */
    const char *DESCARTES_NONNULL name;
    const char *DESCARTES_NONNULL version;
    /** The factories this library registers, `factory_count` of them, each
     *  non-NULL and with a distinct id. The array may be NULL only when
     *  `factory_count` is 0. Same lifetime as the library struct. */
    uint32_t factory_count;
    const descartes_factory_t *DESCARTES_NONNULL const *DESCARTES_NULLABLE factories;

    /**
     * [exclusive & !callback & once] since 1.0
     *
     * Called once before the host forgets the library (at process exit, in
     * practice), after every backend has been destroyed. May be NULL
     * (nothing to do).
     */
    void (*DESCARTES_NULLABLE unload)(void);
} descartes_library_t;

/**
 * [exclusive & once] since 1.0
 *
 * The entry point: the only symbol a plugin library exports.
 *
 * `host_abi_version` is the highest ABI version the host speaks. `host` is a
 * library-level host table (for logging before any backend exists), owned by
 * the host; it lives until `unload` returns.
 *
 * Returns a library description owned by the plugin that lives until the
 * process exits (static storage is the normal choice), with abi_version <=
 * host_abi_version, or NULL to refuse (an ABI it does not implement, or an
 * environment it cannot run in; log the reason first).
 *
 * The host calls it once per process for a given library, before anything
 * else, from one thread.
 */
typedef const descartes_library_t *DESCARTES_NULLABLE (*descartes_plugin_entry_fn)(
    uint32_t host_abi_version, const descartes_host_t *DESCARTES_NONNULL host);

DESCARTES_EXPORT const descartes_library_t *DESCARTES_NULLABLE descartes_plugin_entry(
    uint32_t host_abi_version, const descartes_host_t *DESCARTES_NONNULL host);

#ifdef __cplusplus
} /* extern "C" */
#endif

#ifdef DESCARTES_NULLABILITY_PRAGMAS
#pragma clang diagnostic pop
#endif

#endif /* DESCARTES_PLUGIN_H */
