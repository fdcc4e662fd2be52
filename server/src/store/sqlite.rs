//! The embedded SQLite store: one file, WAL journal, one writer connection and a small
//! pool of reader connections, every call run on tokio's blocking pool.
//!
//! It owns the SQLite schema (applied from `sql/sqlite` at open) and the mapping between
//! records and rows: ids as lowercase hyphenated UUID text, timestamps as INTEGER
//! microseconds since the epoch. It must never run SQLite work on an async worker
//! thread, and never weaken durability: `synchronous=FULL` is what lets an acknowledged
//! message survive `kill -9` or a power cut.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{
    ChangeOutcome, ConversationRecord, MessageRecord, NewMessage, ReactionOutcome, Store,
    StoreError, UserRecord,
};
use crate::ids::{ConversationId, MessageId, UserId};

mod embedded {
    refinery::embed_migrations!("../sql/sqlite");
}

/// How long a connection waits on a lock held by another connection (a checkpoint, or
/// another process poking at the file) before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        let mut conn = Arc::clone(&self.writer).lock_owned().await;
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
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
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

/// A UUID as the schema stores it: lowercase hyphenated text, which sorts like the
/// UUID's bytes.
struct Key(Uuid);

impl ToSql for Key {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_hyphenated().to_string()))
    }
}

impl FromSql for Key {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Uuid::parse_str(value.as_str()?)
            .map(Key)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A timestamp as the schema stores it: INTEGER microseconds since the Unix epoch.
struct Micros(DateTime<Utc>);

impl ToSql for Micros {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.timestamp_micros()))
    }
}

impl FromSql for Micros {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let micros = value.as_i64()?;
        DateTime::from_timestamp_micros(micros)
            .map(Micros)
            .ok_or(FromSqlError::OutOfRange(micros))
    }
}

fn now_micros() -> Micros {
    Micros(crate::ids::now_micros())
}

fn user_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: UserId(row.get::<_, Key>(0)?.0),
        username: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: row.get::<_, Micros>(3)?.0,
    })
}

fn conversation_row(row: &Row<'_>) -> rusqlite::Result<ConversationRecord> {
    Ok(ConversationRecord {
        id: ConversationId(row.get::<_, Key>(0)?.0),
        name: row.get(1)?,
        description: row.get(2)?,
        is_group: row.get(3)?,
        created_by: UserId(row.get::<_, Key>(4)?.0),
        created_at: row.get::<_, Micros>(5)?.0,
        updated_at: row.get::<_, Micros>(6)?.0,
    })
}

/// Decides an edit or delete from the target's sender, then applies `change` if allowed.
fn change_message(
    conn: &mut Connection,
    conversation: ConversationId,
    message: MessageId,
    actor: UserId,
    change: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
) -> rusqlite::Result<ChangeOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let sender: Option<Key> = tx
        .prepare_cached(
            "SELECT sender_id FROM messages \
             WHERE conversation_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        )?
        .query_row(params![Key(conversation.0), Key(message.0)], |row| {
            row.get(0)
        })
        .optional()?;
    let outcome = match sender {
        None => ChangeOutcome::NotFound,
        Some(Key(sender)) if sender != actor.0 => ChangeOutcome::NotSender,
        Some(_) => {
            change(&tx)?;
            ChangeOutcome::Done
        }
    };
    tx.commit()?;
    Ok(outcome)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO users (id, username, password_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                Key(user.id.0),
                user.username,
                user.password_hash,
                Micros(user.created_at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username, password_hash, created_at FROM users WHERE username = ?1",
            )?
            .query_row([username], user_row)
            .optional()
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username, password_hash, created_at FROM users WHERE id = ?1",
            )?
            .query_row([Key(id.0)], user_row)
            .optional()
        })
        .await
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |conn| {
            let mut exists = conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
            let mut seen = HashSet::new();
            let mut missing = Vec::new();
            for id in ids {
                if seen.insert(id) && !exists.exists([Key(id.0)])? {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
    }

    async fn create_conversation(
        &self,
        conversation: &ConversationRecord,
        participants: &[UserId],
    ) -> Result<(), StoreError> {
        let c = conversation.clone();
        let participants = participants.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO conversations \
                 (id, name, description, is_group, created_by, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                Key(c.id.0),
                c.name,
                c.description,
                c.is_group,
                Key(c.created_by.0),
                Micros(c.created_at),
                Micros(c.updated_at)
            ])?;
            {
                let mut add = tx.prepare_cached(
                    "INSERT INTO participants (conversation_id, user_id, joined_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?;
                for user in participants {
                    add.execute(params![Key(c.id.0), Key(user.0), Micros(c.created_at)])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT c.id, c.name, c.description, c.is_group, c.created_by, \
                        c.created_at, c.updated_at \
                 FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                 WHERE p.user_id = ?1 \
                 ORDER BY c.updated_at DESC, c.id DESC",
            )?
            .query_map([Key(user.0)], conversation_row)?
            .collect()
        })
        .await
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, name, description, is_group, created_by, created_at, updated_at \
                 FROM conversations WHERE id = ?1",
            )?
            .query_row([Key(id.0)], conversation_row)
            .optional()
        })
        .await
    }

    async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id FROM participants WHERE conversation_id = ?1 \
                 ORDER BY joined_at, user_id",
            )?
            .query_map([Key(id.0)], |row| Ok(UserId(row.get::<_, Key>(0)?.0)))?
            .collect()
        })
        .await
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> Result<bool, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM participants WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .exists(params![Key(id.0), Key(user.0)])
        })
        .await
    }

    async fn add_participant(&self, id: ConversationId, user: UserId) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO participants (conversation_id, user_id, joined_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![Key(id.0), Key(user.0), now_micros()])?;
            Ok(())
        })
        .await
    }

    async fn remove_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let removed = conn
                .prepare_cached(
                    "DELETE FROM participants WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .execute(params![Key(id.0), Key(user.0)])?;
            Ok(removed > 0)
        })
        .await
    }

    async fn history(
        &self,
        id: ConversationId,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        self.read(move |conn| {
            let message_row = |row: &Row<'_>| {
                Ok(MessageRecord {
                    id: MessageId(row.get::<_, Key>(0)?.0),
                    conversation_id: id,
                    sender_id: UserId(row.get::<_, Key>(1)?.0),
                    sender_username: row.get(2)?,
                    content: row.get(3)?,
                    is_edited: row.get(4)?,
                    created_at: row.get::<_, Micros>(5)?.0,
                    updated_at: row.get::<_, Micros>(6)?.0,
                })
            };
            let mut page: Vec<MessageRecord> = match before {
                None => conn
                    .prepare_cached(
                        "SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, \
                                m.created_at, m.updated_at \
                         FROM messages AS m JOIN users AS u ON u.id = m.sender_id \
                         WHERE m.conversation_id = ?1 AND m.deleted_at IS NULL \
                         ORDER BY m.id DESC LIMIT ?2",
                    )?
                    .query_map(params![Key(id.0), limit], message_row)?
                    .collect::<rusqlite::Result<_>>()?,
                Some(before) => {
                    // Deleted messages still anchor a page: a client paging back from
                    // a message that was deleted meanwhile must not get a 404.
                    let known = conn
                        .prepare_cached(
                            "SELECT 1 FROM messages WHERE conversation_id = ?1 AND id = ?2",
                        )?
                        .exists(params![Key(id.0), Key(before.0)])?;
                    if !known {
                        return Ok(None);
                    }
                    conn.prepare_cached(
                        "SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, \
                                m.created_at, m.updated_at \
                         FROM messages AS m JOIN users AS u ON u.id = m.sender_id \
                         WHERE m.conversation_id = ?1 AND m.id < ?2 AND m.deleted_at IS NULL \
                         ORDER BY m.id DESC LIMIT ?3",
                    )?
                    .query_map(params![Key(id.0), Key(before.0), limit], message_row)?
                    .collect::<rusqlite::Result<_>>()?
                }
            };
            page.reverse();
            Ok(Some(page))
        })
        .await
    }

    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut newest: BTreeMap<ConversationId, DateTime<Utc>> = BTreeMap::new();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages \
                     (id, conversation_id, sender_id, content, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?;
                for m in &batch {
                    insert.execute(params![
                        Key(m.id.0),
                        Key(m.conversation_id.0),
                        Key(m.sender_id.0),
                        m.content,
                        Micros(m.created_at)
                    ])?;
                    newest
                        .entry(m.conversation_id)
                        .and_modify(|at| *at = (*at).max(m.created_at))
                        .or_insert(m.created_at);
                }
                let mut bump = tx.prepare_cached(
                    "UPDATE conversations SET updated_at = ?2 \
                     WHERE id = ?1 AND updated_at < ?2",
                )?;
                for (conversation, at) in newest {
                    bump.execute(params![Key(conversation.0), Micros(at)])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn edit_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        editor: UserId,
        content: &str,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError> {
        let content = content.to_owned();
        self.write(move |conn| {
            change_message(conn, conversation, message, editor, |tx| {
                tx.prepare_cached(
                    "UPDATE messages SET content = ?2, is_edited = 1, updated_at = ?3 \
                     WHERE id = ?1",
                )?
                .execute(params![Key(message.0), content, Micros(at)])
            })
        })
        .await
    }

    async fn delete_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        deleter: UserId,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError> {
        self.write(move |conn| {
            change_message(conn, conversation, message, deleter, |tx| {
                tx.prepare_cached(
                    "UPDATE messages SET deleted_at = ?2, updated_at = ?2 WHERE id = ?1",
                )?
                .execute(params![Key(message.0), Micros(at)])
            })
        })
        .await
    }

    async fn toggle_reaction(
        &self,
        conversation: ConversationId,
        message: MessageId,
        user: UserId,
        emoji: &str,
    ) -> Result<ReactionOutcome, StoreError> {
        let emoji = emoji.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live = tx
                .prepare_cached(
                    "SELECT 1 FROM messages \
                     WHERE conversation_id = ?1 AND id = ?2 AND deleted_at IS NULL",
                )?
                .exists(params![Key(conversation.0), Key(message.0)])?;
            if !live {
                return Ok(ReactionOutcome::NotFound);
            }
            let removed = tx
                .prepare_cached(
                    "DELETE FROM reactions WHERE message_id = ?1 AND user_id = ?2 AND emoji = ?3",
                )?
                .execute(params![Key(message.0), Key(user.0), emoji])?;
            let outcome = if removed > 0 {
                ReactionOutcome::Removed
            } else {
                tx.prepare_cached(
                    "INSERT INTO reactions (message_id, user_id, emoji, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    Key(message.0),
                    Key(user.0),
                    emoji,
                    now_micros()
                ])?;
                ReactionOutcome::Added
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    async fn fresh_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("chat.db"), 2)
            .await
            .expect("sqlite store opens");
        (dir, store)
    }

    #[tokio::test]
    async fn sqlite_store_conforms() {
        let (_dir, store) = fresh_store().await;
        conformance::run(&store).await;
    }

    #[tokio::test]
    async fn sqlite_reopen_keeps_data_and_skips_applied_migrations() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("chat.db");
        let user = conformance::user("reopened");
        {
            let store = SqliteStore::open(&path, 1).await.expect("first open");
            store.create_user(&user).await.expect("user created");
        }
        let store = SqliteStore::open(&path, 1).await.expect("second open");
        let found = store
            .user_by_id(user.id)
            .await
            .expect("lookup works")
            .expect("user survived the reopen");
        assert_eq!(found.username, "reopened");
        assert_eq!(found.created_at, user.created_at);
    }

    #[tokio::test]
    async fn sqlite_runs_durable_wal() {
        let (_dir, store) = fresh_store().await;
        let (mode, sync, fks) = store
            .write(|conn| {
                let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                let fks: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
                Ok((mode, sync, fks))
            })
            .await
            .expect("pragmas readable");
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous must be FULL");
        assert_eq!(fks, 1);
    }
}
