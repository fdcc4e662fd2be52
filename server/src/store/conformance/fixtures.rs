//! Test-only scaffolding shared by the store tests: records and messages to write, a
//! seeded conversation, the anti-hang guard, and a throw-away PostgreSQL database per
//! test (from the test kit).
//!
//! It must never be compiled into the server and never touch a database it did not
//! create.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::{now_micros, ConversationId, MessageId, MessageIdGen, UserId};
use crate::store::model::{ConversationRecord, MessageRecord, NewMessage, Page, Store, UserRecord};
use crate::text::Content;

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

/// Content that passes the rules (test text always does).
pub(crate) fn content(text: &str) -> Content {
    Content::parse(text).expect("valid test content")
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
        archived_at: None,
        direct: false,
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
                content: content(&format!(
                    "message {i} \u{1f680} \"quoted\" 'single' \\ back"
                )),
                created_at: at,
                client_id: None,
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

/// The words a deleted message and its edit held, which must be nowhere in the
/// store's tables after [`edited_then_deleted`].
pub(crate) const ERASED: &str = "erased-on-delete";

/// A message saying [`ERASED`], edited to say it again and deleted, in a
/// conversation of its own: what a store must keep no content of.
pub(crate) async fn edited_then_deleted(store: &dyn Store, username: &str) {
    let (chat, mut batch) = seed(store, username, 1).await;
    let first = &mut batch[0];
    first.content = content(&format!("original {ERASED}"));
    let (id, sender) = (first.id, first.sender_id);
    store.insert_messages(&batch).await.expect("insert");
    let edit = content(&format!("edited {ERASED}"));
    for outcome in [
        store
            .edit_message(chat, id, sender, &edit, now_micros())
            .await,
        store.delete_message(chat, id, sender, now_micros()).await,
    ] {
        assert!(
            matches!(outcome, Ok(crate::store::model::ChangeOutcome::Done(_))),
            "{outcome:?}"
        );
    }
}

/// A PostgreSQL database of its own for one test (the test kit's scratch database),
/// dropped with the value.
pub(crate) struct PgTestDb(testkit::ScratchDatabase);

impl PgTestDb {
    pub(crate) async fn create() -> Self {
        Self(
            testkit::ScratchDatabase::create("chat_store_test")
                .await
                .expect("a scratch database on the local PostgreSQL (TEST_POSTGRES_URL)"),
        )
    }

    pub(crate) fn url(&self) -> String {
        self.0.url()
    }

    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }
}

/// The ids of a page of history, in order.
pub(crate) fn ids(page: &[MessageRecord]) -> Vec<MessageId> {
    page.iter().map(|m| m.id).collect()
}

/// The ids of messages as submitted, in order.
pub(crate) fn new_ids(batch: &[NewMessage]) -> Vec<MessageId> {
    batch.iter().map(|m| m.id).collect()
}

/// One page of a conversation's history, oldest first.
pub(crate) async fn page(
    store: &dyn Store,
    id: ConversationId,
    limit: u32,
    before: Option<MessageId>,
) -> Vec<MessageRecord> {
    store
        .history(
            id,
            Page {
                limit,
                before,
                after: None,
            },
        )
        .await
        .expect("history query works")
        .expect("known anchor")
}
