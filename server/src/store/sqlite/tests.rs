//! Tests of the SQLite store: the shared conformance checks, plus what only this store
//! has (reopening a file, the durability pragmas).
//!
//! They must never share a database file: each test opens its own in a temporary
//! directory.

use super::SqliteStore;
use crate::store::conformance;
use crate::store::model::Store;

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

#[tokio::test]
async fn sqlite_upgrade_gives_existing_messages_their_positions() {
    use crate::ids::{ConversationId, MessageIdGen, UserId};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("chat.db");
    let (user, c1, c2) = (
        UserId::random(),
        ConversationId::random(),
        ConversationId::random(),
    );
    let mut gen = MessageIdGen::default();
    let old: Vec<_> = (0..3).map(|_| gen.next(crate::ids::now_micros())).collect();
    let last = gen.next(crate::ids::now_micros());
    {
        // A database written by the first schema, before streams existed.
        let mut conn = rusqlite::Connection::open(&path).expect("open");
        super::embedded::migrations::runner()
            .set_target(refinery::Target::Version(1))
            .run(&mut conn)
            .expect("first schema");
        let (u, a, b) = (user.to_string(), c1.to_string(), c2.to_string());
        conn.execute("INSERT INTO users VALUES (?1, 'old_alice', 'x', 0)", [&u])
            .expect("user");
        for c in [&a, &b] {
            conn.execute(
                "INSERT INTO conversations VALUES (?1, 'old', NULL, 1, ?2, 0, 0)",
                [c, &u],
            )
            .expect("conversation");
            conn.execute("INSERT INTO participants VALUES (?1, ?2, 0)", [c, &u])
                .expect("participant");
        }
        for (id, c) in old.iter().map(|m| (m, &a)).chain([(&last, &b)]) {
            conn.execute(
                "INSERT INTO messages (id, conversation_id, sender_id, content, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, 'from before', 1, 1)",
                [&id.to_string(), c, &u],
            )
            .expect("message");
        }
    }
    let store = SqliteStore::open(&path, 1).await.expect("upgrade");
    conformance::upgraded_from_first_schema(&store, user, (c1, &old), c2).await;
}

/// A pool with no connection free answers unavailable within the wait deadline
/// instead of waiting for ever, and serves again once one is free.
#[tokio::test]
async fn waiting_for_a_connection_has_a_deadline() {
    use crate::store::StoreError;

    let (_dir, store) = fresh_store().await;
    let readers = std::sync::Arc::clone(&store.readers.permits);
    let held = readers.acquire_many(2).await.expect("every reader");
    let writer = store.writer.lock().await;
    let read = store.ping().await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    let write = store.create_user(&conformance::user("waiting")).await;
    assert!(
        matches!(write, Err(StoreError::Unavailable(_))),
        "{write:?}"
    );
    drop((held, writer));
    store.ping().await.expect("a free reader answers");
}

/// A deleted message's content, and its edits', is erased from the rows, not only
/// hidden from reads.
#[tokio::test]
async fn sqlite_delete_erases_content() {
    let (_dir, store) = fresh_store().await;
    conformance::edited_then_deleted(&store, "erased").await;
    let pattern = format!("%{}%", conformance::ERASED);
    let left: i64 = store
        .write(move |conn| {
            conn.query_row(
                "SELECT (SELECT count(*) FROM messages \
                         WHERE content LIKE ?1 OR original_content LIKE ?1) \
                      + (SELECT count(*) FROM message_changes WHERE content LIKE ?1)",
                [&pattern],
                |r| r.get(0),
            )
        })
        .await
        .expect("count");
    assert_eq!(left, 0, "rows still holding the deleted content");
}
