/*
 * descartes/plugin.h -- the Descartes backend plugin ABI, version 1.
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
 * The JSON documents that cross this boundary (config, request, response,
 * events, errors, and the results of the other operations) are specified in
 * docs/abi.md, which is part of this contract. The summary of each is repeated
 * next to the function that carries it.
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
 * 5. A change that cannot follow these rules bumps DESCARTES_ABI_VERSION.
 *
 * ------------------------------------------------------------------------
 * General rules
 * ------------------------------------------------------------------------
 *
 * - Strings are UTF-8. A `const char *` documented "NUL-terminated" is; a
 *   pointer passed with a length need not be. JSON payloads are UTF-8 JSON
 *   texts (RFC 8259) passed as pointer + length.
 * - Memory crosses the boundary only as borrowed pointers: whoever allocates
 *   frees, and a pointer received as an argument is valid only until the
 *   function (or callback) it was passed to returns, unless stated otherwise.
 *   Copy what you keep.
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

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version this header describes. */
#define DESCARTES_ABI_VERSION 1u

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

struct descartes_host {
    /** sizeof(descartes_host_t) as the host compiled it. */
    uint32_t struct_size;
    /** The ABI version the host negotiated with this library. */
    uint32_t abi_version;
    /** Host program name and version, NUL-terminated, e.g. "descartes", "0.1.0".
     *  Valid as long as the table itself. */
    const char *name;
    const char *version;
    /** Opaque to the plugin; the host's own context for this table. */
    void *host_data;

    /**
     * Writes one log record. `message` is UTF-8 of `length` bytes, one line
     * without a trailing newline, and must not contain secrets: the host
     * additionally masks every configured secret value it knows, but a plugin
     * must not rely on that.
     *
     * Ownership: `message` is borrowed for the duration of the call.
     * Threading: callable from any thread, concurrently, at any time while the
     *   table is valid (including from inside event callbacks). Never blocks
     *   on plugin activity. Records below the host's current level are
     *   dropped cheaply: see `log_level`.
     */
    void (*log)(const descartes_host_t *host, uint32_t level,
                const char *message, size_t length);

    /**
     * Returns the most verbose level the host currently records
     * (DESCARTES_LOG_*), so a plugin can skip building messages nobody reads.
     * Threading: any thread. The value may change over time.
     */
    uint32_t (*log_level)(const descartes_host_t *host);

    /**
     * Returns the host extension with the given id (NUL-terminated, e.g.
     * "descartes.host.metrics/1"), or NULL if the host does not offer it.
     * Version 1 hosts offer none; the function exists so that later hosts can
     * without an ABI bump. The returned pointer lives as long as the table.
     * Threading: any thread.
     */
    const void *(*get_extension)(const descartes_host_t *host, const char *id);
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
 * usage, model, id and metadata.
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
    DESCARTES_EVENT_ERROR = 10
};

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
    /** Payload bytes as documented per type, `data_length` long. May be NULL
     *  when `data_length` is 0. Borrowed: valid only during the callback. */
    const char *data;
    size_t data_length;
} descartes_event_t;

/**
 * The event callback the host passes when it starts an operation.
 *
 * `ctx` is the host's pointer, given back unchanged. `event` and everything it
 * points to are borrowed for the duration of the call.
 *
 * Threading: the plugin may call it from any thread, including the thread
 * that started the operation before the start function has returned. Events
 * of one call are delivered one at a time, in order (never concurrently with
 * each other); events of different calls may be delivered concurrently. The
 * host's callback does not block on network or disk and returns quickly, but
 * it may call `cancel` and `release` for the same call from inside the
 * callback (see `release`).
 */
typedef void (*descartes_event_fn)(void *ctx, const descartes_event_t *event);

/**
 * A callback receiving one UTF-8 JSON document of `length` bytes, borrowed for
 * the duration of the call. Used to report a synchronous error.
 */
typedef void (*descartes_json_fn)(void *ctx, const char *json, size_t length);

/* ======================================================================
 * Backends: one configured instance of a provider.
 * ====================================================================== */

typedef struct descartes_backend descartes_backend_t;

/** One operation in flight. Opaque to the host; defined by the plugin. */
typedef struct descartes_call descartes_call_t;

/**
 * The shape shared by every operation: a non-blocking start.
 *
 * `input`/`input_length`: the operation's JSON input (documented per
 * operation), borrowed for the duration of the call.
 * `on_event`/`ctx`: where the plugin reports; valid until the terminal event's
 * callback has returned.
 *
 * Returns a handle for `cancel` and `release`, and arranges for exactly one
 * terminal event. It returns promptly (it must not wait for the network or a
 * child process); the work happens on threads the plugin owns. If it cannot
 * even allocate a handle it returns NULL and delivers no event at all; the
 * host then reports a `backend` error.
 *
 * Threading: any thread; every operation may run concurrently with any other
 * operation of the same backend, except that nothing may be started after
 * `shutdown` has been started.
 */
typedef descartes_call_t *(*descartes_operation_fn)(
    descartes_backend_t *self, const char *input, size_t input_length,
    descartes_event_fn on_event, void *ctx);

struct descartes_backend {
    /** sizeof(descartes_backend_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** The plugin's own pointer; the host never reads it. */
    void *plugin_data;

    /**
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
    descartes_operation_fn initialize;

    /**
     * Checks that the backend can serve a request now, with the cheapest real
     * operation that proves it (an authenticated call, `--version` of a CLI).
     * input: JSON {}.
     * RESULT: JSON Health {"message": string, "details"?: object}: healthy.
     * ERROR: not healthy; the error says why.
     */
    descartes_operation_fn health_check;

    /**
     * Runs one completion and reports the answer once it is whole (the plugin
     * may use the provider's non-streaming mode). Events: as for `stream`; a
     * plugin that reads the whole answer at once emits it as one TEXT event and
     * one TOOL_CALL_START/DELTA/END triple per tool call.
     * input: JSON Request (docs/abi.md).
     * RESULT: JSON Finish {"finish_reason": string, "usage"?: Usage,
     *   "model"?: string, "id"?: string, "cost_usd"?: number,
     *   "metadata"?: object}.
     */
    descartes_operation_fn complete;

    /**
     * Runs one completion and reports it as it is produced: TEXT,
     * REASONING, TOOL_CALL_*, USAGE and NOTICE events as the provider sends
     * them, then RESULT (Finish, as for `complete`) or ERROR.
     * input: JSON Request.
     */
    descartes_operation_fn stream;

    /**
     * Lists the models the provider offers.
     * input: JSON {}.
     * RESULT: JSON {"models": [ModelInfo]}, ModelInfo = {"id": string,
     *   "context_length"?: int, "owned_by"?: string, "details"?: object}.
     */
    descartes_operation_fn list_models;

    /**
     * Counts or estimates the input tokens of a request.
     * input: JSON Request.
     * RESULT: JSON {"tokens": int, "exact": bool, "method": string} where
     *   method says how the number was obtained (e.g. "server:/tokenize",
     *   "heuristic:chars/4").
     */
    descartes_operation_fn estimate_tokens;

    /**
     * Stops accepting work, cancels calls still in flight (each still gets
     * its one terminal event), and releases network connections and child
     * processes. The terminal event of shutdown comes after the terminal
     * events of every other call of this backend.
     * input: JSON {}. RESULT: JSON {}.
     * After it, the host only calls `cancel`, `release` and `destroy`.
     */
    descartes_operation_fn shutdown;

    /**
     * Asks the plugin to stop a call as soon as it can. The call still
     * delivers exactly one terminal event: an ERROR of kind "cancelled" if the
     * cancellation won, or whatever terminal event was already on its way.
     * A plugin aborts network transfers and kills child processes promptly.
     *
     * Always safe for a handle the host has not yet released: before, during
     * or after the terminal event, more than once, from any thread, including
     * from inside that call's event callback.
     */
    void (*cancel)(descartes_backend_t *self, descartes_call_t *call);

    /**
     * The host is done with `call` and will not pass it to `cancel` again.
     * The host calls it exactly once per handle, after the call's terminal
     * event has been delivered to it -- possibly from inside the terminal
     * event's callback. The plugin frees the call once both the terminal
     * callback has returned and `release` has been called, whichever is last
     * (a reference count of two is the simple way).
     * Threading: any thread.
     */
    void (*release)(descartes_backend_t *self, descartes_call_t *call);

    /**
     * Returns the backend extension with the given NUL-terminated id (e.g.
     * "descartes.batch/1"), or NULL if unsupported. The pointer lives as
     * long as the backend. May be NULL itself (no extensions).
     * Threading: any thread.
     */
    const void *(*get_extension)(descartes_backend_t *self, const char *id);

    /**
     * Frees the backend. Called once, after every handle has been released
     * (normally after `shutdown`'s terminal event; without `shutdown` when no
     * operation was ever started), never concurrently with any other function
     * of this backend and never from inside an event callback. A thread of
     * the plugin may still be returning from the callback that delivered a
     * terminal event: `destroy` waits for the plugin's own threads before it
     * frees what they touch. No callback of this backend may run after it
     * returns.
     */
    void (*destroy)(descartes_backend_t *self);
};

/* ======================================================================
 * Backend extension "descartes.batch/1": the provider's own batch API.
 * ====================================================================== */

/** The id to pass to descartes_backend_t.get_extension. */
#define DESCARTES_BATCH_EXTENSION_ID "descartes.batch/1"

/**
 * A provider's own batch API (OpenAI's /v1/batches with the files API,
 * Anthropic's /v1/messages/batches): many requests submitted at once, run
 * by the provider within its window (typically 24 hours, at a discount),
 * their results fetched later, possibly by another process.
 *
 * A backend that offers it returns a pointer to this struct from
 * get_extension(DESCARTES_BATCH_EXTENSION_ID); the pointer lives as long as
 * the backend (a static struct shared by every backend of the plugin is the
 * normal choice: `self` tells them apart). A reader checks struct_size, as
 * for every struct; a NULL function means that step is not offered.
 *
 * Every function is an operation exactly like those of descartes_backend_t:
 * it starts without blocking, returns a handle, reports through `on_event`
 * (NOTICE events allowed) and ends with exactly one RESULT or ERROR; the
 * handle is cancelled and released with the backend's own `cancel` and
 * `release`. They may run concurrently with each other and with every other
 * operation (not before `initialize` has succeeded, nor after `shutdown`).
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
     * Submits a batch.
     * input: JSON {"requests": [{"custom_id": string, "request": Request}, ...]}
     *   (custom_id: unique within the batch, at most 64 characters of
     *   [A-Za-z0-9_-]).
     * RESULT: BatchStatus of the new batch.
     * ERROR: as for `complete` (authentication, api for a request the
     *   provider refuses, rate_limited, ...).
     */
    descartes_operation_fn submit;

    /**
     * Reports a batch's progress.
     * input: JSON {"id": string}.  RESULT: BatchStatus.
     */
    descartes_operation_fn status;

    /**
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
    descartes_operation_fn results;

    /**
     * Asks the provider to cancel a batch.
     * input: JSON {"id": string}.  RESULT: BatchStatus (usually "cancelling").
     */
    descartes_operation_fn cancel_batch;
} descartes_batch_extension_t;

/* ======================================================================
 * Factories: how the host creates backends.
 * ====================================================================== */

typedef struct descartes_create_args {
    /** sizeof(descartes_create_args_t) as the host compiled it. */
    uint32_t struct_size;
    /** The host table for this backend instance (its log records are
     *  attributed to the instance). Valid until `destroy` returns: keep it. */
    const descartes_host_t *host;
    /** Provider id from the manifest (e.g. "deepseek" for a manifest that
     *  uses the "openai" factory) and the instance name the user chose
     *  (e.g. "lab-vllm"); NUL-terminated, borrowed for the call. */
    const char *provider;
    const char *instance;
    /** JSON Config: an object holding every key the manifest declares that
     *  has a value (explicit, from the environment, or the default), with the
     *  manifest's types already checked. Secrets are included in clear: never
     *  log them. Borrowed for the call. */
    const char *config;
    size_t config_length;
} descartes_create_args_t;

typedef struct descartes_factory descartes_factory_t;

struct descartes_factory {
    /** sizeof(descartes_factory_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** The id a manifest's `factory:` names, NUL-terminated (e.g. "openai"). */
    const char *id;
    /** One line for humans, NUL-terminated. */
    const char *description;

    /**
     * Creates a backend from a validated configuration. It does no I/O that
     * can block (that belongs in `initialize`); it only checks and stores
     * the configuration.
     *
     * Returns the backend, owned by the plugin until the host calls its
     * `destroy`. On failure returns NULL, after calling `on_error` once with
     * a JSON Error (kind "config" for a value the plugin rejects, naming the
     * key).
     * Threading: any thread; concurrent calls to create are allowed.
     */
    descartes_backend_t *(*create)(const descartes_factory_t *self,
                                   const descartes_create_args_t *args,
                                   descartes_json_fn on_error, void *error_ctx);
};

/* ======================================================================
 * The library and its entry point.
 * ====================================================================== */

typedef struct descartes_library {
    /** sizeof(descartes_library_t) as the plugin compiled it. */
    uint32_t struct_size;
    /** The ABI version the library implements: <= the host's offer. */
    uint32_t abi_version;
    /** Library name and version (semver), NUL-terminated, e.g. "openai",
     *  "1.2.0". */
    const char *name;
    const char *version;
    /** The factories this library registers, `factory_count` of them, each
     *  with a distinct id. */
    uint32_t factory_count;
    const descartes_factory_t *const *factories;
    /**
     * Called once before the host forgets the library (at process exit, in
     * practice), after every backend has been destroyed. May be NULL.
     */
    void (*unload)(void);
} descartes_library_t;

/**
 * The entry point: the only symbol a plugin library exports.
 *
 * `host_abi_version` is the highest ABI version the host speaks. `host` is a
 * library-level host table (for logging before any backend exists), valid
 * until `unload` returns.
 *
 * Returns a library description that lives until the process exits (static
 * storage is the normal choice), with abi_version <= host_abi_version, or
 * NULL to refuse (an ABI it does not implement, or an environment it cannot
 * run in; log the reason first).
 *
 * Threading: the host calls it once per process for a given library, before
 * anything else, from one thread.
 */
typedef const descartes_library_t *(*descartes_plugin_entry_fn)(
    uint32_t host_abi_version, const descartes_host_t *host);

DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(
    uint32_t host_abi_version, const descartes_host_t *host);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DESCARTES_PLUGIN_H */
