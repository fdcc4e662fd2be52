//! Persistence: one `Store` interface over PostgreSQL and the embedded SQLite store,
//! plus the batched message writer.
//!
//! Everything here runs on the store runtime (a small tokio runtime of its own), never
//! on a shard: shards reach it through `Db::call`, which hands the work over and awaits
//! the answer without blocking.

pub mod account;
#[cfg(test)]
mod conformance;
mod manage;
mod model;
mod postgres;
mod sqlite;
pub mod writer;

use std::future::Future;
use std::sync::Arc;

pub use account::{Accounts, Sessions};
pub use manage::{ConversationChange, Direct, Guarded, Management, Participant, Removed};
pub use model::{
    ChangeOutcome, ConversationRecord, ConversationSummary, Inbox, ListCursor, ListPage,
    MessageRecord, NewMessage, Original, Page, Preview, Reaction, ReactionOutcome, ReadOutcome,
    Store, StoreError, Stored, StreamEvent, StreamKind, UserRecord, PREVIEW_CHARS,
    REACTIONS_PER_PAGE, UNREAD_COUNT_MAX,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

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

/// Purges what deleted conversations left, a bounded chunk per call, until nothing is
/// left or the store fails (the next deletion, or the next start, goes on from there).
pub async fn purge(store: Arc<dyn Store>) {
    loop {
        match store.purge_deleted().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "purge of deleted conversations paused");
                return;
            }
        }
    }
}

/// The shards' handle on the store: runs store work on the store runtime and hands
/// the result back to whichever runtime awaits it.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    runtime: tokio::runtime::Handle,
    /// Counts the calls that failed for the store's sake (not conflicts).
    failures: prometheus_client::metrics::counter::Counter,
}

impl Db {
    pub fn new(
        store: Arc<dyn Store>,
        runtime: tokio::runtime::Handle,
        failures: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            store,
            runtime,
            failures,
        }
    }

    /// Runs `f` against the store on the store runtime, in the background: for work
    /// no request waits for (the purge of deleted conversations).
    pub fn detach<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        self.runtime.spawn(async move { f(store).await });
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
        let result = rx
            .await
            .map_err(|_| StoreError::Unavailable("store runtime stopped".into()))
            .and_then(|r| r);
        if matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Query(_))
        ) {
            self.failures.inc();
        }
        result
    }
}
