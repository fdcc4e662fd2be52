//! Test-only scaffolding shared by the store tests: records and messages to write, a
//! seeded conversation, the anti-hang guard, and a throw-away PostgreSQL database per
//! test.
//!
//! It must never be compiled into the server and never touch a database it did not
//! create.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::{now_micros, ConversationId, MessageIdGen, UserId};
use crate::store::{ConversationRecord, NewMessage, Store, UserRecord};

/// The maintenance database of the local test server; test databases are made from it.
pub(crate) const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long `no_hang` lets a call run: far beyond any deadline of the stores, so only
/// a call that would never return reaches it.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Awaits `call`, failing the test if it hangs. An anti-hang guard, not a speed limit:
/// how fast a call returns is for the benchmarks to measure.
pub(crate) async fn no_hang<F: std::future::Future>(call: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("call hung: no answer within {HANG_GUARD:?}"))
}

pub(crate) fn user(username: &str) -> UserRecord {
    UserRecord {
        id: UserId::random(),
        username: username.to_owned(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt-of-{username}$hash"),
        created_at: now_micros(),
    }
}

pub(crate) fn conversation(
    creator: UserId,
    name: Option<&str>,
    at: DateTime<Utc>,
) -> ConversationRecord {
    ConversationRecord {
        id: ConversationId::random(),
        name: name.map(str::to_owned),
        description: name.map(|n| format!("about {n}")),
        is_group: name.is_some(),
        created_by: creator,
        created_at: at,
        updated_at: at,
    }
}

/// `count` messages with increasing ids and times, senders taking turns.
pub(crate) fn messages(
    conversation: ConversationId,
    senders: &[UserId],
    start: DateTime<Utc>,
    count: usize,
) -> Vec<NewMessage> {
    let mut ids = MessageIdGen::default();
    (0..count)
        .map(|i| {
            let at = start + chrono::Duration::microseconds(i64::try_from(i).unwrap_or(0) * 7);
            NewMessage {
                id: ids.next(at),
                conversation_id: conversation,
                sender_id: senders[i % senders.len()],
                content: format!("message {i} \u{1f680} \"quoted\" 'single' \\ back"),
                created_at: at,
            }
        })
        .collect()
}

/// A user with a conversation of their own in `store`, and `count` messages for it,
/// not yet inserted.
/// Two users, `<prefix>_alice` (the creator) and `<prefix>_bob`, in one conversation
/// created now.
pub(crate) struct Pair {
    pub(crate) alice: UserRecord,
    pub(crate) bob: UserRecord,
    pub(crate) chat: ConversationRecord,
    pub(crate) start: DateTime<Utc>,
}

pub(crate) async fn pair(store: &dyn Store, prefix: &str, name: Option<&str>) -> Pair {
    let alice = user(&format!("{prefix}_alice"));
    let bob = user(&format!("{prefix}_bob"));
    for u in [&alice, &bob] {
        store.create_user(u).await.expect("create user");
    }
    let start = now_micros();
    let chat = conversation(alice.id, name, start);
    store
        .create_conversation(&chat, &[alice.id, bob.id])
        .await
        .expect("create");
    Pair {
        alice,
        bob,
        chat,
        start,
    }
}

pub(crate) async fn seed(
    store: &dyn Store,
    username: &str,
    count: usize,
) -> (ConversationId, Vec<NewMessage>) {
    let owner = user(username);
    store.create_user(&owner).await.expect("create user");
    let start = now_micros();
    let chat = conversation(owner.id, None, start);
    store
        .create_conversation(&chat, &[owner.id])
        .await
        .expect("create conversation");
    (chat.id, messages(chat.id, &[owner.id], start, count))
}

/// A database of its own for one test, dropped (connections and all) when this is.
pub(crate) struct PgTestDb {
    pub(crate) url: String,
    name: String,
}

impl PgTestDb {
    pub(crate) async fn create() -> Self {
        let name = format!("chat_store_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_client().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

async fn admin_client() -> tokio_postgres::Client {
    // Starts the local cluster if it is installed but stopped, as the whole suite does.
    tests::postgres::ensure_running().expect("PostgreSQL at 127.0.0.1:5432");
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls),
    )
    .await
    .expect("PostgreSQL answers at 127.0.0.1:5432 in time")
    .expect("PostgreSQL runs at 127.0.0.1:5432 (user postgres, trust auth)");
    tokio::spawn(connection);
    client
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop may run inside a runtime that must not block on itself: a thread with
        // its own runtime does the clean-up, even when the test is unwinding.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            runtime.block_on(async {
                admin_client()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .expect("drop the test database");
            });
        });
        if cleaner.join().is_err() {
            tracing::warn!("could not drop a test database");
        }
    }
}
