//! Tests of the SQLite store: the shared conformance checks, plus what only this store
//! has (reopening a file, the durability pragmas).
//!
//! They must never share a database file: each test opens its own in a temporary
//! directory.

use super::SqliteStore;
use crate::store::{conformance, Store};

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
