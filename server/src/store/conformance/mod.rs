//! Test-only: the behaviour every `Store` must show, run against each real store;
//! `fixtures` holds the scaffolding the store tests share.
//!
//! It must never be compiled into the server and never touch a database it did not
//! create.

mod fixtures;

mod accounts;
mod inbox;
mod manage;
mod sessions;
mod streams;

use super::manage::Guarded;
use super::model::{
    ChangeOutcome, ConversationSummary, ListCursor, ListPage, Page, ReactionOutcome, Store,
    StoreError, Stored,
};
use crate::ids::{now_micros, ConversationId, MessageId, Seq, UserId};

pub(crate) use fixtures::{
    content, conversation, edited_then_deleted, messages, no_hang, pair, seed, user, Pair,
    PgTestDb, ERASED,
};
use fixtures::{ids, new_ids, page};

/// A page as long as any list these tests make.
const EVERY: ListPage = ListPage {
    limit: 100,
    after: None,
};
pub(crate) use streams::upgraded_from_first_schema;

/// The ids of the conversation's whole history, oldest first, read page by page.
pub(crate) async fn all_history(store: &dyn Store, id: ConversationId) -> Vec<MessageId> {
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let older = page(store, id, 100, before).await;
        let Some(oldest) = older.first() else {
            return seen;
        };
        before = Some(oldest.id);
        seen.splice(0..0, ids(&older));
    }
}

/// Runs every check against `store`, which must be freshly created and empty.
pub(crate) async fn run(store: &dyn Store) {
    store.ping().await.expect("ping");
    users(store).await;
    conversations_and_membership(store).await;
    history_and_changes(store).await;
    reactions(store).await;
    large_batch_keeps_order(store).await;
    failed_batch_commits_nothing(store).await;
    streams::run(store).await;
    inbox::run(store).await;
    manage::run(store).await;
    sessions::run(store).await;
    accounts::run(store).await;
}

async fn users(store: &dyn Store) {
    let alice = user("u_alice");
    store.create_user(&alice).await.expect("create alice");

    let by_name = store
        .user_by_name("u_alice")
        .await
        .expect("lookup")
        .expect("alice exists");
    assert_eq!(by_name.id, alice.id);
    assert_eq!(by_name.password_hash, alice.password_hash);
    assert_eq!(by_name.created_at, alice.created_at, "microseconds survive");
    let by_id = store
        .user_by_id(alice.id)
        .await
        .expect("lookup")
        .expect("alice exists");
    assert_eq!(by_id.username, "u_alice");

    assert!(store
        .user_by_name("u_nobody")
        .await
        .expect("lookup")
        .is_none());
    assert!(store
        .user_by_name("U_ALICE")
        .await
        .expect("lookup")
        .is_none());
    assert!(store
        .user_by_id(UserId::random())
        .await
        .expect("lookup")
        .is_none());

    let taken = store.create_user(&user("u_alice")).await;
    assert!(
        matches!(taken, Err(StoreError::Conflict("username"))),
        "duplicate username: {taken:?}"
    );

    let stranger = UserId::random();
    let missing = store
        .missing_users(&[alice.id, stranger, alice.id, stranger])
        .await
        .expect("missing users");
    assert_eq!(missing, vec![stranger]);
    assert!(store.missing_users(&[]).await.expect("empty").is_empty());
}

async fn conversations_and_membership(store: &dyn Store) {
    let alice = user("m_alice");
    let bob = user("m_bob");
    let carol = user("m_carol");
    for u in [&alice, &bob, &carol] {
        store.create_user(u).await.expect("create user");
    }
    let t0 = now_micros() - chrono::Duration::seconds(60);

    let direct = conversation(alice.id, None, t0);
    store
        .create_conversation(&direct, &[alice.id, bob.id, bob.id])
        .await
        .expect("duplicate participant ids are tolerated");
    let group = conversation(alice.id, Some("group"), t0 + chrono::Duration::seconds(1));
    store
        .create_conversation(&group, &[alice.id, carol.id])
        .await
        .expect("create group");

    let stored = store
        .conversation(group.id)
        .await
        .expect("lookup")
        .expect("group exists");
    assert_eq!(stored.name.as_deref(), Some("group"));
    assert_eq!(stored.description.as_deref(), Some("about group"));
    assert!(stored.is_group);
    assert_eq!(stored.created_by, alice.id);
    assert_eq!(stored.created_at, group.created_at);
    let stored_direct = store
        .conversation(direct.id)
        .await
        .expect("lookup")
        .expect("direct exists");
    assert_eq!(stored_direct.name, None);
    assert!(!stored_direct.is_group);
    assert!(store
        .conversation(ConversationId::random())
        .await
        .expect("lookup")
        .is_none());

    let mut members = store.participants(direct.id).await.expect("participants");
    members.sort();
    let mut expected = vec![alice.id, bob.id];
    expected.sort();
    assert_eq!(members, expected);

    // Most recently active first: the group was created last...
    let order: Vec<_> = store
        .conversations_of(alice.id, EVERY)
        .await
        .expect("list")
        .iter()
        .map(|c| c.conversation.id)
        .collect();
    assert_eq!(order, vec![group.id, direct.id]);

    // ...until a message makes the direct conversation the most recent.
    let later = t0 + chrono::Duration::seconds(5);
    let batch = messages(direct.id, &[bob.id], later, 1);
    store.insert_messages(&batch).await.expect("insert");
    let listed = store.conversations_of(alice.id, EVERY).await.expect("list");
    assert_eq!(
        listed.iter().map(|c| c.conversation.id).collect::<Vec<_>>(),
        vec![direct.id, group.id]
    );
    assert_eq!(
        listed[0].conversation.updated_at, later,
        "updated_at follows the newest message"
    );
    // Paged: each page starts after the last conversation the one before showed.
    let one = |after| ListPage { limit: 1, after };
    let first = store
        .conversations_of(alice.id, one(None))
        .await
        .expect("page");
    assert_eq!(
        first.iter().map(|c| c.conversation.id).collect::<Vec<_>>(),
        vec![direct.id]
    );
    let cursor = |c: &ConversationSummary| ListCursor {
        updated_at: c.conversation.updated_at,
        id: c.conversation.id,
    };
    let second = store
        .conversations_of(alice.id, one(Some(cursor(&first[0]))))
        .await
        .expect("page");
    assert_eq!(
        second.iter().map(|c| c.conversation.id).collect::<Vec<_>>(),
        vec![group.id]
    );
    let past_the_end = store
        .conversations_of(alice.id, one(Some(cursor(&second[0]))))
        .await
        .expect("page");
    assert!(past_the_end.is_empty());
    // An older message does not move updated_at back.
    let older = messages(direct.id, &[bob.id], t0 + chrono::Duration::seconds(2), 1);
    store.insert_messages(&older).await.expect("insert");
    let direct_now = store
        .conversation(direct.id)
        .await
        .expect("lookup")
        .expect("exists");
    assert_eq!(direct_now.updated_at, later);

    // Membership: add, add again (no-op), remove, remove again, re-add.
    assert!(!store
        .is_member(direct.id, carol.id)
        .await
        .expect("is_member"));
    assert_eq!(
        store
            .add_participant(direct.id, carol.id)
            .await
            .expect("add carol"),
        Guarded::Done(())
    );
    assert!(store
        .is_member(direct.id, carol.id)
        .await
        .expect("is_member"));
    store
        .add_participant(direct.id, carol.id)
        .await
        .expect("adding twice is a no-op");
    assert_eq!(store.participants(direct.id).await.expect("list").len(), 3);
    assert_eq!(
        store
            .conversations_of(carol.id, EVERY)
            .await
            .expect("list")
            .len(),
        2
    );

    assert!(matches!(
        store
            .remove_participant(direct.id, carol.id, carol.id)
            .await
            .expect("leave"),
        Guarded::Done(_)
    ));
    assert_eq!(
        store
            .remove_participant(direct.id, carol.id, carol.id)
            .await
            .expect("leave again"),
        Guarded::Missing
    );
    assert!(!store
        .is_member(direct.id, carol.id)
        .await
        .expect("is_member"));
    let carols: Vec<_> = store
        .conversations_of(carol.id, EVERY)
        .await
        .expect("list")
        .iter()
        .map(|c| c.conversation.id)
        .collect();
    assert_eq!(carols, vec![group.id]);

    store
        .add_participant(direct.id, carol.id)
        .await
        .expect("re-add");
    assert!(store
        .is_member(direct.id, carol.id)
        .await
        .expect("is_member"));
    assert!(!store
        .is_member(ConversationId::random(), carol.id)
        .await
        .expect("is_member"));
}

async fn history_and_changes(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "h", None).await;
    let other = conversation(alice.id, Some("other"), start);
    store
        .create_conversation(&other, &[alice.id])
        .await
        .expect("create");

    assert!(page(store, chat.id, 50, None).await.is_empty());

    let sent = messages(chat.id, &[alice.id, bob.id], start, 10);
    store.insert_messages(&sent).await.expect("insert");
    let elsewhere = messages(other.id, &[alice.id], start, 2);
    store.insert_messages(&elsewhere).await.expect("insert");
    let all = new_ids(&sent);

    let full = page(store, chat.id, 50, None).await;
    assert_eq!(ids(&full), all, "oldest first, in id order");
    assert_eq!(full[0].sender_username, "h_alice");
    assert_eq!(full[1].sender_username, "h_bob");
    assert_eq!(full[3].content, sent[3].content.as_str());
    assert_eq!(full[3].created_at, sent[3].created_at);
    assert_eq!(full[3].updated_at, sent[3].created_at);
    assert_eq!(full[3].conversation_id, chat.id);
    assert!(!full[3].is_edited);

    assert_eq!(ids(&page(store, chat.id, 4, None).await), all[6..]);
    assert_eq!(ids(&page(store, chat.id, 4, Some(all[6])).await), all[2..6]);
    assert_eq!(ids(&page(store, chat.id, 4, Some(all[2])).await), all[..2]);
    assert!(page(store, chat.id, 4, Some(all[0])).await.is_empty());

    let before = |before| Page {
        limit: 10,
        before: Some(before),
        after: None,
    };
    let unknown = store
        .history(chat.id, before(MessageId(uuid::Uuid::now_v7())))
        .await
        .expect("history");
    assert!(unknown.is_none(), "unknown before");
    let foreign = store
        .history(chat.id, before(elsewhere[1].id))
        .await
        .expect("history");
    assert!(foreign.is_none(), "before from another conversation");
    assert_eq!(
        full.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=10).map(Seq).collect::<Vec<_>>(),
        "positions 1, 2, 3, ... in history order"
    );

    // Edits: sender only, live messages only, in the right conversation only.
    let edited_at = now_micros() + chrono::Duration::seconds(1);
    let edit = |conversation: ConversationId,
                message: MessageId,
                user: UserId,
                text: &'static str| async move {
        store
            .edit_message(conversation, message, user, &content(text), edited_at)
            .await
            .expect("edit")
    };
    let alices = sent[4].id;
    let bobs = sent[5].id;
    assert_eq!(
        edit(chat.id, alices, bob.id, "hijack").await,
        ChangeOutcome::NotSender
    );
    assert_eq!(
        edit(other.id, alices, alice.id, "wrong room").await,
        ChangeOutcome::NotFound
    );
    assert_eq!(
        edit(chat.id, MessageId::random(), alice.id, "ghost").await,
        ChangeOutcome::NotFound
    );
    assert_eq!(
        edit(chat.id, alices, alice.id, "fixed typo").await,
        ChangeOutcome::Done(Seq(11)),
        "an edit takes the next position; refused ones take none"
    );
    let after_edit = page(store, chat.id, 50, None).await;
    assert_eq!(after_edit[4].content, "fixed typo");
    assert!(after_edit[4].is_edited);
    assert_eq!(after_edit[4].updated_at, edited_at);
    assert_eq!(after_edit[4].created_at, sent[4].created_at);

    // Deletes: the sender (or a moderator: bob is neither for alice's message); the
    // message leaves history but still anchors a page.
    assert_eq!(
        store
            .delete_message(chat.id, alices, bob.id, edited_at)
            .await
            .expect("delete"),
        ChangeOutcome::NotSender
    );
    assert_eq!(
        store
            .delete_message(chat.id, MessageId::random(), bob.id, edited_at)
            .await
            .expect("delete"),
        ChangeOutcome::NotFound
    );
    assert_eq!(
        store
            .delete_message(chat.id, bobs, bob.id, edited_at)
            .await
            .expect("delete"),
        ChangeOutcome::Done(Seq(12))
    );
    let mut live = all.clone();
    live.remove(5);
    assert_eq!(ids(&page(store, chat.id, 50, None).await), live);
    assert_eq!(
        ids(&page(store, chat.id, 3, Some(all[7])).await),
        vec![all[3], all[4], all[6]]
    );
    assert_eq!(ids(&page(store, chat.id, 50, Some(bobs)).await), all[..5]);
    assert_eq!(
        store
            .delete_message(chat.id, bobs, bob.id, edited_at)
            .await
            .expect("delete"),
        ChangeOutcome::NotFound,
        "deleting twice"
    );
    assert_eq!(
        edit(chat.id, bobs, bob.id, "resurrect").await,
        ChangeOutcome::NotFound,
        "editing a deleted message"
    );
}

async fn reactions(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "r", None).await;
    let sent = messages(chat.id, &[alice.id], start, 2);
    store.insert_messages(&sent).await.expect("insert");
    let target = sent[0].id;

    let toggle = |user: UserId, emoji: &'static str, message: MessageId| async move {
        store
            .toggle_reaction(chat.id, message, user, emoji)
            .await
            .expect("toggle")
    };
    // Two messages took positions 1 and 2; every toggle takes the next one.
    assert_eq!(
        toggle(bob.id, "👍", target).await,
        ReactionOutcome::Added(Seq(3))
    );
    assert_eq!(
        toggle(alice.id, "👍", target).await,
        ReactionOutcome::Added(Seq(4))
    );
    assert_eq!(
        toggle(bob.id, "🎉", target).await,
        ReactionOutcome::Added(Seq(5))
    );
    assert_eq!(
        toggle(bob.id, "👍", target).await,
        ReactionOutcome::Removed(Seq(6))
    );
    assert_eq!(
        toggle(bob.id, "👍", target).await,
        ReactionOutcome::Added(Seq(7))
    );
    assert_eq!(
        toggle(bob.id, "👍", MessageId::random()).await,
        ReactionOutcome::NotFound
    );
    // History shows them: each emoji once, with who gave it.
    let shown = page(store, chat.id, 10, None).await;
    let mut on_target: Vec<(String, Vec<UserId>)> = shown[0]
        .reactions
        .iter()
        .map(|r| {
            let mut users = r.users.clone();
            users.sort();
            (r.emoji.clone(), users)
        })
        .collect();
    on_target.sort();
    let mut both = vec![alice.id, bob.id];
    both.sort();
    assert_eq!(
        on_target,
        vec![("🎉".to_string(), vec![bob.id]), ("👍".to_string(), both)]
    );
    assert!(shown[1].reactions.is_empty());
    assert_eq!(
        store
            .delete_message(chat.id, sent[1].id, alice.id, now_micros())
            .await
            .expect("delete"),
        ChangeOutcome::Done(Seq(8))
    );
    assert_eq!(
        toggle(bob.id, "👍", sent[1].id).await,
        ReactionOutcome::NotFound,
        "no reactions on deleted messages"
    );
}

async fn large_batch_keeps_order(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "b", Some("busy")).await;
    let batch = messages(chat.id, &[alice.id, bob.id], start, 1000);
    store.insert_messages(&batch).await.expect("insert 1000");

    assert_eq!(all_history(store, chat.id).await, new_ids(&batch));
    let updated = store
        .conversation(chat.id)
        .await
        .expect("lookup")
        .expect("exists");
    assert_eq!(updated.updated_at, batch[999].created_at);
}

async fn failed_batch_commits_nothing(store: &dyn Store) {
    let alice = user("f_alice");
    store.create_user(&alice).await.expect("create user");
    let start = now_micros();
    let chat = conversation(alice.id, None, start);
    store
        .create_conversation(&chat, &[alice.id])
        .await
        .expect("create");
    let first = messages(chat.id, &[alice.id], start, 1);
    store.insert_messages(&first).await.expect("insert");

    let later = start + chrono::Duration::seconds(1);
    let mut batch = messages(chat.id, &[alice.id], later, 3);
    batch[2].id = first[0].id;
    let duplicate = store.insert_messages(&batch).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "duplicate message id: {duplicate:?}"
    );
    assert_eq!(ids(&page(store, chat.id, 50, None).await), new_ids(&first));
    let unchanged = store
        .conversation(chat.id)
        .await
        .expect("lookup")
        .expect("exists");
    assert_eq!(unchanged.updated_at, start, "a failed batch bumps nothing");

    // A message of a conversation that is gone sinks nothing else, and the failed
    // batch above took no position: the next message is at 2.
    let mut orphan = messages(chat.id, &[alice.id], later, 2);
    orphan[1].conversation_id = ConversationId::random();
    let outcomes = store.insert_messages(&orphan).await.expect("insert");
    assert_eq!(outcomes, vec![Stored::New(Seq(2)), Stored::Gone]);
    assert_eq!(
        ids(&page(store, chat.id, 50, None).await),
        vec![first[0].id, orphan[0].id]
    );
    assert!(store
        .insert_messages(&[])
        .await
        .expect("empty batch")
        .is_empty());
}
