#include "CCurlShim.h"
#include <pthread.h>
#include <sys/prctl.h>

CURLcode descartes_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode descartes_curl_setopt_off(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode descartes_curl_setopt_pointer(CURL *handle, CURLoption option, const void *value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode descartes_curl_setopt_data_fn(CURL *handle, CURLoption option, descartes_curl_data_fn fn) {
    return curl_easy_setopt(handle, option, fn);
}
CURLcode descartes_curl_setopt_xferinfo_fn(CURL *handle, descartes_curl_xferinfo_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, fn);
}
CURLcode descartes_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode descartes_curl_getinfo_off(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode descartes_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode descartes_curl_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLMcode descartes_curl_multi_setopt_long(CURLM *multi, CURLMoption option, long value) {
    return curl_multi_setopt(multi, option, value);
}
const curl_version_info_data *descartes_curl_version_info(void) {
    return curl_version_info(CURLVERSION_NOW);
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result = CURLE_OK;
static void global_init(void) { global_result = curl_global_init(CURL_GLOBAL_DEFAULT); }
CURLcode descartes_curl_global_init_once(void) {
    pthread_once(&global_once, global_init);
    return global_result;
}

void descartes_name_this_thread(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}
