//! Deleting an account and exporting a user's data, as every store must do them.

use chrono::Duration;

use super::fixtures::{messages, pair, Pair};
use super::manage::role;
use crate::ids::{now_micros, Role, SessionId};
use crate::store::account::NewSession;
use crate::store::model::{Page, Store};

pub(super) async fn run(store: &dyn Store) {
    prefix_search(store).await;
    export_pages(store).await;
    deletion_hands_over_and_erases(store).await;
}

async fn prefix_search(store: &dyn Store) {
    let names = ["pf_Anna", "pf_anne", "pf_bob", "pf_an.x"];
    for name in names {
        store
            .create_user(&super::fixtures::user(name))
            .await
            .expect("user");
    }
    let found = |prefix: &'static str, after: Option<&'static str>, limit| async move {
        store
            .users_by_prefix(prefix, after, limit)
            .await
            .expect("search")
            .into_iter()
            .map(|(_, name)| name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        found("pf_an", None, 10).await,
        ["pf_an.x", "pf_Anna", "pf_anne"]
    );
    assert_eq!(found("pf_an", Some("pf_Anna"), 10).await, ["pf_anne"]);
    assert_eq!(found("pf_an", None, 1).await, ["pf_an.x"]);
    assert!(found("pf_z", None, 10).await.is_empty());
    let anne = store
        .user_by_name("pf_anne")
        .await
        .expect("read")
        .expect("anne");
    store
        .delete_account(anne.id, false, now_micros())
        .await
        .expect("delete");
    assert_eq!(found("pf_an", None, 10).await, ["pf_an.x", "pf_Anna"]);
}

async fn export_pages(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "ex", Some("export")).await;
    let sent = messages(chat.id, &[alice.id, bob.id], start, 6);
    store.insert_messages(&sent).await.expect("insert");
    let convs = store
        .export_conversations(alice.id, None, 10)
        .await
        .expect("conversations");
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].conversation.id, chat.id);
    assert_eq!(convs[0].role, Role::Owner);
    // Two messages looked at per chunk: the walk goes on until a chunk is not full.
    let (mut ids, mut after) = (Vec::new(), Some(crate::ids::MessageId(uuid::Uuid::nil())));
    let mut chunks = 0;
    while let Some(from) = after {
        let (mine, next) = store
            .export_messages(alice.id, Some(from), 2)
            .await
            .expect("chunk");
        assert!(
            mine.iter().all(|m| m.content.starts_with("message")),
            "{mine:?}"
        );
        ids.extend(mine.iter().map(|m| m.id));
        after = next;
        chunks += 1;
        assert!(chunks < 10_000, "the walk ends");
    }
    // Other tests' messages are in the same table: keep this conversation's.
    let ours: std::collections::HashSet<_> = sent.iter().map(|m| m.id).collect();
    ids.retain(|id| ours.contains(id));
    let own: Vec<_> = sent
        .iter()
        .filter(|m| m.sender_id == alice.id)
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, own, "her own, in order, pages meeting");
}

async fn deletion_hands_over_and_erases(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "gone", Some("farewell")).await;
    let sent = messages(chat.id, &[alice.id, bob.id], start, 4);
    store.insert_messages(&sent).await.expect("insert");
    let session = NewSession {
        id: SessionId::random(),
        user: alice.id,
        created_at: now_micros(),
        expires_at: now_micros() + Duration::days(1),
        user_agent: None,
    };
    store
        .create_session(&session, 10, now_micros() - Duration::days(2))
        .await
        .expect("session");
    let deleted = store
        .delete_account(alice.id, true, now_micros())
        .await
        .expect("delete")
        .expect("she existed");
    assert_eq!(deleted.left, vec![(chat.id, Some(bob.id))]);
    assert_eq!(deleted.sessions, vec![session.id]);
    assert!(store
        .delete_account(alice.id, true, now_micros())
        .await
        .expect("again")
        .is_none());
    assert!(store.user_by_id(alice.id).await.expect("read").is_none());
    assert!(store
        .user_by_name(&alice.username)
        .await
        .expect("read")
        .is_none());
    assert_eq!(
        store.missing_users(&[alice.id]).await.expect("read"),
        vec![alice.id]
    );
    assert_eq!(role(store, chat.id, bob.id).await, Some(Role::Owner));
    let tokens = store
        .ended_tokens(now_micros() - Duration::minutes(1))
        .await
        .expect("ended");
    assert!(tokens
        .users
        .iter()
        .any(|(u, before)| *u == alice.id && *before >= crate::store::account::account_gone()));
    while store.purge_deleted().await.expect("purge") {}
    let left = store
        .history(
            chat.id,
            Page {
                limit: 10,
                ..Page::default()
            },
        )
        .await
        .expect("history")
        .expect("exists");
    assert!(left.iter().all(|m| m.sender_id == bob.id), "hers erased");
    assert_eq!(left.len(), 2);
}
