// SQLite 3, imported as a system library (Debian: libsqlite3-dev): the audit
// and spend ledger (docs/configuration.md, "Why SQLite").
#include <sqlite3.h>
