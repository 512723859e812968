// libcurl, imported as a system library (Debian: libcurl4-openssl-dev).
#include <curl/curl.h>
