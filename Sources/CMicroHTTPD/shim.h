// GNU libmicrohttpd's header (Debian: libmicrohttpd-dev): the HTTP/1.1 server
// under `descartes serve` (docs/gateway.md, "Why libmicrohttpd"). Not linked:
// CHTTPServer loads the library (libmicrohttpd.so.12) when a server starts, so
// no other command pays for loading it and GnuTLS (server.c).
#include <sys/types.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdarg.h>
#include <microhttpd.h>
