// The HTTP server under `descartes serve`: GNU libmicrohttpd driven through a
// small C layer.
//
// Why this exists: libmicrohttpd's daemon is started with a variadic function
// (MHD_start_daemon), which Swift cannot call, and answering a request from
// another thread needs its suspend/resume protocol, which has rules
// (suspend only from the MHD thread inside a callback, resume from any
// thread, never stop the daemon with a connection suspended) that are easier
// to keep in one place in C than across a Swift/C boundary. The layer adds no
// HTTP of its own: parsing, keep-alive, chunked encoding and timeouts are
// libmicrohttpd's.
//
// Life of a request: libmicrohttpd reads it; the body is collected here up to
// the server's limit; `on_request` is called once, on the server's thread,
// with the request complete (the method, path, headers and body may be read
// only during that call). The application then answers exactly once, from any
// thread, with `descartes_http_respond`, or with `descartes_http_stream_begin`,
// any number of `descartes_http_stream_write` and one `descartes_http_stream_end`.
// `on_closed` is called once for every request `on_request` saw, when
// libmicrohttpd is done with it (answered, or the client went away); the
// request handle stays valid until the application's answer has ended.
#ifndef DESCARTES_CHTTPSERVER_H
#define DESCARTES_CHTTPSERVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct descartes_http_server descartes_http_server;
typedef struct descartes_http_request descartes_http_request;

/// A complete request arrived (server thread). Call `descartes_http_set_user`
/// here to get `user` back in `on_closed`.
typedef void (*descartes_http_request_fn)(void *_Nullable ctx, descartes_http_request *_Nonnull request);
/// libmicrohttpd is done with the request: `completed` is 1 when the whole
/// answer was sent, 0 when the connection broke or timed out first (server
/// thread). Called once per request `on_request` saw.
typedef void (*descartes_http_closed_fn)(void *_Nullable ctx, void *_Nullable user, int completed);

/// Binds `host:port` (port 0: any free port), then starts libmicrohttpd
/// with `threads` polling threads (epoll). Requests with bodies over
/// `body_limit` bytes are handed to `on_request` with
/// `descartes_http_body_too_large` set and no body. `idle_timeout_s` closes
/// idle keep-alive connections. With `tls_cert` and `tls_key` (PEM text,
/// NUL-terminated) it speaks HTTPS only (libmicrohttpd over GnuTLS). On
/// failure returns NULL and writes why into `error`.
descartes_http_server *_Nullable descartes_http_start(
    const char *_Nonnull host, unsigned port, unsigned threads, size_t body_limit, unsigned idle_timeout_s,
    const char *_Nullable tls_cert, const char *_Nullable tls_key,
    descartes_http_request_fn _Nonnull on_request, descartes_http_closed_fn _Nonnull on_closed, void *_Nullable ctx,
    char *_Nonnull error, size_t error_len);
/// The port the server listens on.
unsigned descartes_http_port(const descartes_http_server *_Nonnull server);
/// Stops accepting connections (the listening socket is closed); requests in
/// progress go on.
void descartes_http_quiesce(descartes_http_server *_Nonnull server);
/// Requests libmicrohttpd is working on (read, being answered, or waiting for
/// the application).
unsigned descartes_http_active(const descartes_http_server *_Nonnull server);
/// Stops the server and frees it. Every request must have been answered
/// first (libmicrohttpd must not be stopped with a connection suspended).
void descartes_http_stop(descartes_http_server *_Nonnull server);

// Only during `on_request`:
const char *_Nonnull descartes_http_method(const descartes_http_request *_Nonnull request);
const char *_Nonnull descartes_http_path(const descartes_http_request *_Nonnull request);
/// The client's address ("127.0.0.1"), or "" when unknown.
const char *_Nonnull descartes_http_peer(const descartes_http_request *_Nonnull request);
/// A request header (case-insensitive name), or NULL.
const char *_Nullable descartes_http_header(const descartes_http_request *_Nonnull request, const char *_Nonnull name);
/// The body (not NUL-terminated); `*length` is set.
const char *_Nullable descartes_http_body(const descartes_http_request *_Nonnull request, size_t *_Nonnull length);
int descartes_http_body_too_large(const descartes_http_request *_Nonnull request);
void descartes_http_set_user(descartes_http_request *_Nonnull request, void *_Nullable user);

// The answer, from any thread. `headers` is "Name: value\r\n" lines (or
// NULL). Each returns 0, or -1 when the client is gone (the answer is
// dropped; end it all the same).

/// The whole answer. Ends the application's use of `request`.
int descartes_http_respond(
    descartes_http_request *_Nonnull request, unsigned status, const char *_Nullable headers, const void *_Nullable body,
    size_t length);
/// Starts an answer of unknown length (chunked).
int descartes_http_stream_begin(descartes_http_request *_Nonnull request, unsigned status, const char *_Nullable headers);
/// Appends bytes to the answer. Returns the bytes waiting to be sent after
/// this write (the client's backlog), or -1 when the client is gone.
long descartes_http_stream_write(descartes_http_request *_Nonnull request, const void *_Nonnull data, size_t length);
/// Ends the answer. Ends the application's use of `request`.
void descartes_http_stream_end(descartes_http_request *_Nonnull request);

#ifdef __cplusplus
}
#endif

#endif
