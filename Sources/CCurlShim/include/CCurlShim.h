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

typedef size_t (*descartes_curl_data_fn)(char *data, size_t size, size_t nmemb, void *userdata);
typedef int (*descartes_curl_xferinfo_fn)(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
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

#ifdef __cplusplus
}
#endif

#endif
