// Typed wrappers around libcurl's variadic functions.
//
// Why this exists: curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt
// are C variadic functions, which Swift cannot call, and some of libcurl's
// constants are macros Swift does not import. Each wrapper fixes one argument
// type; the option itself is still libcurl's own enum value. Nothing else is
// added: the semantics are libcurl's.
#ifndef DESCARTES_CCURLSHIM_H
#define DESCARTES_CCURLSHIM_H

#include <curl/curl.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef size_t (*descartes_curl_data_fn)(char *_Nullable data, size_t size, size_t nmemb, void *_Nullable userdata);
typedef int (*descartes_curl_xferinfo_fn)(void *_Nullable userdata, curl_off_t dltotal, curl_off_t dlnow,
                                         curl_off_t ultotal, curl_off_t ulnow);

CURLcode descartes_curl_setopt_long(CURL *_Nonnull handle, CURLoption option, long value);
CURLcode descartes_curl_setopt_off(CURL *_Nonnull handle, CURLoption option, curl_off_t value);
/// For string options (libcurl copies strings it is given, except
/// CURLOPT_POSTFIELDS) and object pointers (CURLOPT_PRIVATE, CURLOPT_HTTPHEADER, data pointers).
CURLcode descartes_curl_setopt_pointer(CURL *_Nonnull handle, CURLoption option, const void *_Nullable value);
CURLcode descartes_curl_setopt_data_fn(CURL *_Nonnull handle, CURLoption option, descartes_curl_data_fn _Nullable fn);
CURLcode descartes_curl_setopt_xferinfo_fn(CURL *_Nonnull handle, descartes_curl_xferinfo_fn _Nullable fn);

CURLcode descartes_curl_getinfo_long(CURL *_Nonnull handle, CURLINFO info, long *_Nonnull value);
CURLcode descartes_curl_getinfo_off(CURL *_Nonnull handle, CURLINFO info, curl_off_t *_Nonnull value);
CURLcode descartes_curl_getinfo_string(CURL *_Nonnull handle, CURLINFO info, const char *_Nullable *_Nonnull value);
CURLcode descartes_curl_getinfo_pointer(CURL *_Nonnull handle, CURLINFO info, void *_Nullable *_Nonnull value);

CURLMcode descartes_curl_multi_setopt_long(CURLM *_Nonnull multi, CURLMoption option, long value);

/// curl_version_info(CURLVERSION_NOW): the macro does not import into Swift.
const curl_version_info_data *_Nonnull descartes_curl_version_info(void);

/// curl_global_init(CURL_GLOBAL_DEFAULT) exactly once per process, however
/// many plugins call it and from whichever thread (libcurl's own function is
/// not thread-safe before 7.84 and not reference-counted across libraries).
CURLcode descartes_curl_global_init_once(void);
/* Names the calling thread (what `top -H` and /proc/self/task/N/comm show;
   at most 15 bytes are kept). */
void descartes_name_this_thread(const char *_Nonnull name);

/* ---- libcurl's multi_socket interface over epoll -------------------------
 *
 * Why this exists: Swift's Glibc module does not import <sys/epoll.h> or
 * <sys/eventfd.h>, and libcurl's socket and timer callbacks are plain C
 * callbacks best kept out of Swift. With this loop the thread that starts a
 * transfer can drive libcurl itself (add the handle, send the request) while
 * the HTTP client's own thread sleeps in epoll_wait: nothing has to wake that
 * thread to get a request on the wire.
 */
typedef struct descartes_curl_loop {
    /** The epoll set of the sockets libcurl wants watched (kept by the socket callback). */
    int epoll_fd;
    /** An eventfd in that set: wakes a waiting thread (descartes_curl_loop_wake). */
    int wake_fd;
    /** When libcurl wants curl_multi_socket_action(CURL_SOCKET_TIMEOUT), in ms
     *  on CLOCK_MONOTONIC (descartes_monotonic_ms); -1: no timer. Written by the
     *  timer callback, i.e. by whoever is calling into libcurl. */
    long long timer_at;
    /** The multi handle (for curl_multi_assign, which marks a socket as in the set). */
    CURLM *_Nullable multi;
} descartes_curl_loop;

/// Creates the epoll set and the eventfd and installs the socket and timer
/// callbacks on `multi` (their data: `loop`, which must outlive the multi
/// handle). Returns 0, or an errno value.
int descartes_curl_loop_init(descartes_curl_loop *_Nonnull loop, CURLM *_Nonnull multi);
/// Closes the epoll set and the eventfd.
void descartes_curl_loop_close(descartes_curl_loop *_Nonnull loop);
/// Makes a thread in descartes_curl_loop_wait return now. Any thread.
void descartes_curl_loop_wake(const descartes_curl_loop *_Nonnull loop);
/// Waits up to `timeout_ms` (-1: forever) for sockets libcurl watches. Fills
/// `fds` and `flags` (CURL_CSELECT_IN/OUT/ERR, for curl_multi_socket_action)
/// with at most `max` ready sockets and returns their count; a wake-up is
/// consumed and not reported. Returns 0 on EINTR.
int descartes_curl_loop_wait(const descartes_curl_loop *_Nonnull loop, int timeout_ms, int *_Nonnull fds,
                             int *_Nonnull flags, int max);
/// Milliseconds on CLOCK_MONOTONIC.
long long descartes_monotonic_ms(void);

#ifdef __cplusplus
}
#endif

#endif
