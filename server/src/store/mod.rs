//! Persistence: one `Store` interface over PostgreSQL and the embedded SQLite store,
//! plus the batched message writer.
//!
//! Everything here runs on the store runtime (a small tokio runtime of its own), never
//! on a shard: shards reach it through `Db::call`, which hands the work over and awaits
//! the answer without blocking.

#[cfg(test)]
mod conformance;
mod postgres;
mod sqlite;
pub mod writer;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ids::{ConversationId, MessageId, UserId};
use crate::text::Content;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a store call failed. Only `Conflict` is caused by the caller; the rest mean the
/// store is unwell and the caller should say so and retry later.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store query failed: {0}")]
    Query(String),
}

/// A user as stored, with the password hash (never leaves the server).
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_group: bool,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A message as history shows it.
#[derive(Clone, Debug)]
pub struct MessageRecord {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub sender_username: String,
    pub content: String,
    pub is_edited: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A message on its way into the store; its id and time were fixed by its home shard.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    /// Validated at the edge; the store only ever writes content that passed the rules.
    pub content: Content,
    pub created_at: DateTime<Utc>,
}

/// What became of an edit or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOutcome {
    Done,
    /// No live message with that id in that conversation.
    NotFound,
    /// The message belongs to someone else.
    NotSender,
}

/// What became of a reaction toggle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReactionOutcome {
    Added,
    Removed,
    NotFound,
}

/// The newest message time of each conversation in `batch`, in conversation id order
/// so that concurrent batches touch conversation rows in the same order.
fn newest_per_conversation(batch: &[NewMessage]) -> BTreeMap<ConversationId, DateTime<Utc>> {
    let mut newest = BTreeMap::new();
    for m in batch {
        newest
            .entry(m.conversation_id)
            .and_modify(|at: &mut DateTime<Utc>| *at = (*at).max(m.created_at))
            .or_insert(m.created_at);
    }
    newest
}

/// `ids` without repeats, each at its first place.
fn distinct(ids: &[UserId]) -> Vec<UserId> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// The one interface both stores implement. Every method is a single logical
/// operation; multi-statement ones run in a transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails with `Conflict` when the username is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// The ids among `ids` that belong to no user.
    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError>;

    /// Creates the conversation with its participants (the creator included by the caller).
    async fn create_conversation(
        &self,
        conversation: &ConversationRecord,
        participants: &[UserId],
    ) -> Result<(), StoreError>;
    /// The user's conversations, most recently active (`updated_at`) first.
    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationRecord>, StoreError>;
    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError>;
    async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError>;
    async fn is_member(&self, id: ConversationId, user: UserId) -> Result<bool, StoreError>;
    /// Adding an existing participant is a no-op.
    async fn add_participant(&self, id: ConversationId, user: UserId) -> Result<(), StoreError>;
    /// Returns whether the user was a participant.
    async fn remove_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError>;

    /// At most `limit` live messages, the newest ones older than `before` when given,
    /// oldest first. `None` when `before` names no message of this conversation.
    async fn history(
        &self,
        id: ConversationId,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError>;

    /// Commits the whole batch in one transaction (and bumps each conversation's
    /// `updated_at`), or nothing of it.
    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<(), StoreError>;
    async fn edit_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        editor: UserId,
        content: &Content,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError>;
    /// Soft delete: the row stays, history no longer shows it.
    async fn delete_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        deleter: UserId,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError>;
    /// Adds the user's reaction with that emoji, or removes it if present.
    async fn toggle_reaction(
        &self,
        conversation: ConversationId,
        message: MessageId,
        user: UserId,
        emoji: &str,
    ) -> Result<ReactionOutcome, StoreError>;

    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the store named by the configuration and applies its migrations.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
    pool_size: usize,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresStore::connect(url, pool_size).await?))
        }
        Some(url) => {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            Ok(Arc::new(
                SqliteStore::open(std::path::Path::new(path), pool_size).await?,
            ))
        }
        None => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", data_dir.display())))?;
            Ok(Arc::new(
                SqliteStore::open(&data_dir.join("chat.db"), pool_size).await?,
            ))
        }
    }
}

/// The shards' handle on the store: runs store work on the store runtime and hands
/// the result back to whichever runtime awaits it.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    runtime: tokio::runtime::Handle,
}

impl Db {
    pub fn new(store: Arc<dyn Store>, runtime: tokio::runtime::Handle) -> Self {
        Self { store, runtime }
    }

    /// Runs `f` against the store on the store runtime.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let (tx, rx) = futures_channel::oneshot::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(f(store).await);
        });
        rx.await
            .map_err(|_| StoreError::Unavailable("store runtime stopped".into()))?
    }
}
