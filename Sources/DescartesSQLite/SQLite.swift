// A small wrapper over SQLite 3 (libsqlite3 from Debian): open a database
// file, run statements with bound values, read rows. Internal to the package
// (the audit ledger uses it); nothing of SQLite is public API.
import CSQLite
import Glibc

/// An SQLite error: what was being done, SQLite's message and code.
package struct SQLiteError: Error, CustomStringConvertible, Sendable {
    package var code: Int32
    package var message: String
    package var description: String { message }
    package init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }
}

/// A value bound to a statement or read from a row.
package enum SQLiteValue: Sendable, Equatable {
    case null
    case integer(Int)
    case real(Double)
    case text(String)

    package var int: Int? {
        switch self {
        case .integer(let i): return i
        case .real(let d): return Int(d)
        default: return nil
        }
    }
    package var double: Double? {
        switch self {
        case .integer(let i): return Double(i)
        case .real(let d): return d
        default: return nil
        }
    }
    package var string: String? {
        switch self {
        case .text(let s): return s
        case .integer(let i): return String(i)
        case .real(let d): return String(d)
        case .null: return nil
        }
    }
}

/// One open database connection. Not shared between threads at once: the
/// owner serializes its use (SQLite's own locking covers other processes
/// and connections).
package final class SQLiteDatabase: @unchecked Sendable {
    private var db: OpaquePointer?
    package let path: String
    /// How long a statement waits for another connection's lock.
    package let busyTimeoutMS: Int32

    /// Opens (creating it when `create`) the database at `path`, with the
    /// file mode `mode` for a new file, waiting up to `busyTimeoutMS` for
    /// another writer's lock before failing with SQLITE_BUSY.
    package init(path: String, create: Bool = true, readOnly: Bool = false, mode: mode_t = 0o600, busyTimeoutMS: Int32 = 10_000) throws(SQLiteError) {
        self.path = path
        self.busyTimeoutMS = busyTimeoutMS
        // A new file gets `mode` (SQLite would create it 0644 under the umask).
        if create && !readOnly && access(path, F_OK) != 0 {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
            if fd >= 0 { close(fd) }
        }
        var flags = SQLITE_OPEN_NOMUTEX
        flags |= readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0))
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        if rc != SQLITE_OK {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close(db)
            db = nil
            throw SQLiteError(code: rc, message: "\(path): cannot open the database: \(message)")
        }
        sqlite3_busy_timeout(db, busyTimeoutMS)
        sqlite3_extended_result_codes(db, 1)
    }

    deinit { sqlite3_close_v2(db) }

    /// No checkpoint when this connection, the last on the file, closes: a
    /// short-lived process (one `descartes complete`) then pays no syncs at
    /// exit; SQLite checkpoints when a commit finds the WAL full
    /// (`wal_autocheckpoint`), and a reader recovers the WAL as it opens.
    package func skipCheckpointOnClose() throws(SQLiteError) {
        let rc = dsc_sqlite3_no_checkpoint_on_close(db)
        if rc != SQLITE_OK { throw error(rc, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE") }
    }

    private func error(_ rc: Int32, _ what: String) -> SQLiteError {
        SQLiteError(code: rc, message: "\(path): \(what): \(String(cString: sqlite3_errmsg(db)))")
    }

    /// Runs one or more statements without parameters or results.
    package func execute(_ sql: String) throws(SQLiteError) {
        var message: UnsafeMutablePointer<CChar>? = nil
        let rc = sqlite3_exec(db, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(message)
            throw SQLiteError(code: rc, message: "\(path): \(text)")
        }
    }

    /// Runs one statement with `values` bound to its `?` parameters and
    /// returns its rows (each column by position).
    @discardableResult
    package func query(_ sql: String, _ values: [SQLiteValue] = []) throws(SQLiteError) -> [[SQLiteValue]] {
        var stmt: OpaquePointer? = nil
        let rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "cannot prepare the statement") }
        defer { sqlite3_finalize(stmt) }
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (i, v) in values.enumerated() {
            let index = Int32(i + 1)
            let b: Int32
            switch v {
            case .null: b = sqlite3_bind_null(stmt, index)
            case .integer(let n): b = sqlite3_bind_int64(stmt, index, sqlite3_int64(n))
            case .real(let d): b = sqlite3_bind_double(stmt, index, d)
            case .text(let s): b = sqlite3_bind_text(stmt, index, s, -1, transient)
            }
            if b != SQLITE_OK { throw error(b, "cannot bind parameter \(index)") }
        }
        var rows: [[SQLiteValue]] = []
        while true {
            let s = sqlite3_step(stmt)
            if s == SQLITE_DONE { break }
            guard s == SQLITE_ROW else { throw error(s, "statement failed") }
            let n = sqlite3_column_count(stmt)
            var row: [SQLiteValue] = []
            row.reserveCapacity(Int(n))
            for c in 0..<n {
                switch sqlite3_column_type(stmt, c) {
                case SQLITE_INTEGER: row.append(.integer(Int(sqlite3_column_int64(stmt, c))))
                case SQLITE_FLOAT: row.append(.real(sqlite3_column_double(stmt, c)))
                case SQLITE_NULL: row.append(.null)
                default:
                    if let p = sqlite3_column_text(stmt, c) {
                        row.append(.text(String(cString: p)))
                    } else {
                        row.append(.null)
                    }
                }
            }
            rows.append(row)
        }
        return rows
    }

    /// Runs `body` in one transaction taken for writing at once (BEGIN
    /// IMMEDIATE: concurrent writers wait for each other, up to the busy
    /// timeout, instead of failing half-way).
    package func transaction<T>(_ body: () throws(SQLiteError) -> T) throws(SQLiteError) -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// Runs `body` again while it fails with SQLITE_BUSY, up to the busy
    /// timeout. For the statements SQLite answers BUSY without calling the
    /// busy handler: switching a database that other processes have open
    /// to WAL (`PRAGMA journal_mode=WAL`) needs an exclusive lock and fails
    /// at once when another connection holds any.
    package func retryingWhileBusy<T>(_ body: () throws(SQLiteError) -> T) throws(SQLiteError) -> T {
        let start = ContinuousClock.now
        while true {
            do {
                return try body()
            } catch where error.code & 0xff == SQLITE_BUSY && ContinuousClock.now - start < .milliseconds(busyTimeoutMS) {
                usleep(5_000)
            }
        }
    }

    /// The rowid of the last row inserted on this connection.
    package var lastInsertRowID: Int { Int(sqlite3_last_insert_rowid(db)) }

    /// The version of the library linked.
    package static var libraryVersion: String { String(cString: sqlite3_libversion()) }
}
