// SQLite 3, imported as a system library (Debian: libsqlite3-dev): the audit
// and spend ledger (docs/configuration.md, "Why SQLite").
#include <sqlite3.h>

// sqlite3_db_config is variadic, which Swift cannot call: the one use, by name.
// Leaves the WAL in place when the last connection closes (no checkpoint, and
// its syncs, at every close); SQLite checkpoints as a commit fills it.
static inline int dsc_sqlite3_no_checkpoint_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}
