// GNU libmicrohttpd, imported as a system library (Debian: libmicrohttpd-dev):
// the HTTP/1.1 server under `descartes serve` (docs/gateway.md, "Why libmicrohttpd").
#include <sys/types.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdarg.h>
#include <microhttpd.h>
