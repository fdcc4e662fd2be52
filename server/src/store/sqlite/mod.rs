//! The embedded SQLite store: one file, WAL journal, one writer connection and a small
//! pool of reader connections, every call run on tokio's blocking pool.
//!
//! It owns the SQLite schema (applied from `sql/sqlite` at open) and the mapping between
//! records and rows: ids as lowercase hyphenated UUID text, timestamps as INTEGER
//! microseconds since the epoch. It must never run SQLite work on an async worker
//! thread, and never weaken durability: `synchronous=FULL` is what lets an acknowledged
//! message survive `kill -9` or a power cut.
//!
//! This file holds the connection side (opening, pragmas, migrations, the writer lock
//! and the reader pool, error mapping); `queries` holds the statements and the row
//! mapping, `batch` the message batch.

mod accounts;
mod batch;
mod columns;
mod inbox;
mod manage;
mod queries;
mod sessions;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};
use tokio::sync::Semaphore;

use super::model::StoreError;

mod embedded {
    refinery::embed_migrations!("../sql/sqlite");
}

/// How long a connection waits on a lock held by another connection (a checkpoint, or
/// another process poking at the file) before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a call waits for a connection (the writer, or an idle reader) before it
/// fails as unavailable (503 to REST, `/ready` included), as PostgreSQL's calls do
/// past their deadline: a store that is saturated or stuck must answer, not hang.
const WAIT_DEADLINE: Duration = Duration::from_secs(4);

fn waited_too_long(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "sqlite: no {what} free within {}s",
        WAIT_DEADLINE.as_secs()
    ))
}

/// Room for every statement one connection prepares, so none is ever re-parsed.
const STATEMENT_CACHE: usize = 64;

/// The embedded store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct SqliteStore {
    /// SQLite allows one writer at a time; queueing on an async mutex keeps waiting
    /// callers off the blocking pool and serves them in arrival order.
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Arc<ReaderPool>,
}

/// Reader connections; the semaphore guarantees a connection is idle for every permit.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

#[derive(Clone, Copy)]
enum Role {
    Writer,
    Reader,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and
    /// opens `pool_size` reader connections (at least one).
    pub async fn open(path: &Path, pool_size: usize) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let reader_count = pool_size.max(1);
        let (writer, readers) = tokio::task::spawn_blocking(move || {
            let mut writer = open_connection(&path, Role::Writer)?;
            let report = embedded::migrations::runner()
                .run(&mut writer)
                .map_err(|e| StoreError::Unavailable(format!("sqlite migrations: {e}")))?;
            for migration in report.applied_migrations() {
                tracing::info!(migration = %migration, path = %path.display(), "applied sqlite migration");
            }
            let readers = (0..reader_count)
                .map(|_| open_connection(&path, Role::Reader))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>((writer, ReaderPool {
                path,
                idle: Mutex::new(readers),
                permits: Arc::new(Semaphore::new(reader_count)),
            }))
        })
        .await
        .map_err(join_error)??;
        Ok(Self {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Arc::new(readers),
        })
    }

    /// Runs `f` on the writer connection, on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let mut conn = tokio::time::timeout(WAIT_DEADLINE, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| waited_too_long("the writer connection"))?;
        tokio::task::spawn_blocking(move || f(&mut conn).map_err(sql_error))
            .await
            .map_err(join_error)?
    }

    /// Runs `f` on an idle reader connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = tokio::time::timeout(
            WAIT_DEADLINE,
            Arc::clone(&self.readers.permits).acquire_owned(),
        )
        .await
        .map_err(|_| waited_too_long("a reader connection"))?
        .map_err(|_| StoreError::Unavailable("sqlite reader pool closed".into()))?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.take_idle() {
                Some(conn) => conn,
                // Only reachable if a previous call panicked while holding a
                // connection; replace it rather than shrink the pool.
                None => open_connection(&pool.path, Role::Reader)?,
            };
            let result = f(&conn).map_err(sql_error);
            pool.put_back(conn);
            drop(permit);
            result
        })
        .await
        .map_err(join_error)?
    }
}

impl ReaderPool {
    fn take_idle(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

fn open_connection(path: &Path, role: Role) -> Result<Connection, StoreError> {
    let unavailable =
        |e: rusqlite::Error| StoreError::Unavailable(format!("{}: {e}", path.display()));
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    match role {
        Role::Writer => {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .map_err(unavailable)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "{}: journal_mode is {mode}, WAL is required",
                    path.display()
                )));
            }
            // FULL syncs the WAL on every commit; NORMAL could lose the last commits
            // on power loss, and those may already be acknowledged.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(unavailable)?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(unavailable)?;
            // A deleted message's content is erased from its row; FAST also zeroes
            // the space it leaves in the page, where that costs no extra I/O.
            conn.pragma_update(None, "secure_delete", "FAST")
                .map_err(unavailable)?;
        }
        Role::Reader => {
            conn.pragma_update(None, "query_only", "ON")
                .map_err(unavailable)?;
        }
    }
    Ok(conn)
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    if e.is_panic() {
        StoreError::Query(format!("sqlite call panicked: {e}"))
    } else {
        StoreError::Unavailable("sqlite call cancelled: runtime shutting down".into())
    }
}

fn sql_error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, message) = &e {
        match failure.code {
            ErrorCode::ConstraintViolation
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                let what = match message.as_deref() {
                    Some(m) if m.contains("users.username") => "username",
                    Some(m) if m.contains("messages.id") => "message id",
                    _ => "id",
                };
                return StoreError::Conflict(what);
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::OutOfMemory
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase => return StoreError::Unavailable(e.to_string()),
            _ => {}
        }
    }
    StoreError::Query(e.to_string())
}
