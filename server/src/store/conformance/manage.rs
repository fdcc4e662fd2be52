//! Roles, direct conversations, archiving and deletion, as every store must keep
//! them.

use super::fixtures::{content, messages, pair, user, Pair};
use crate::ids::{now_micros, ConversationId, Role, Seq, UserId};
use crate::store::manage::{ConversationChange, Guarded, Removed};
use crate::store::model::{
    ChangeOutcome, ConversationRecord, Page, ReactionOutcome, Store, Stored,
};

pub(super) async fn run(store: &dyn Store) {
    roles_and_hand_over(store).await;
    direct_conversations(store).await;
    archived_takes_nothing_new(store).await;
    deleted_is_gone_then_purged(store).await;
}

pub(super) async fn role(store: &dyn Store, id: ConversationId, user: UserId) -> Option<Role> {
    store
        .membership(id, user)
        .await
        .expect("membership")
        .expect("conversation")
        .1
}

async fn roles_and_hand_over(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "ro", Some("roles")).await;
    let carol = user("ro_carol");
    store.create_user(&carol).await.expect("carol");
    assert_eq!(
        store.add_participant(chat.id, carol.id).await.expect("add"),
        Guarded::Done(())
    );
    assert_eq!(role(store, chat.id, alice.id).await, Some(Role::Owner));
    assert_eq!(role(store, chat.id, bob.id).await, Some(Role::Member));
    let outsider = user("ro_dave");
    store.create_user(&outsider).await.expect("dave");
    assert_eq!(role(store, chat.id, outsider.id).await, None);

    // A moderator deletes another's message; a member cannot.
    let sent = messages(chat.id, &[alice.id], start, 2);
    store.insert_messages(&sent).await.expect("insert");
    let at = now_micros();
    assert_eq!(
        store
            .delete_message(chat.id, sent[0].id, bob.id, at)
            .await
            .expect("delete"),
        ChangeOutcome::NotSender
    );
    // Only the owner changes roles.
    assert_eq!(
        store
            .set_role(chat.id, bob.id, bob.id, Role::Admin)
            .await
            .expect("set role"),
        Guarded::Refused
    );
    let changed = store
        .set_role(chat.id, alice.id, bob.id, Role::Admin)
        .await
        .expect("set role");
    assert_eq!(changed, Guarded::Done(vec![(bob.id, Role::Admin)]));
    assert!(matches!(
        store
            .delete_message(chat.id, sent[0].id, bob.id, at)
            .await
            .expect("delete"),
        ChangeOutcome::Done(_)
    ));
    // Edits stay the sender's.
    assert_eq!(
        store
            .edit_message(chat.id, sent[1].id, bob.id, &content("mine now"), at)
            .await
            .expect("edit"),
        ChangeOutcome::NotSender
    );
    assert_eq!(
        store
            .set_role(chat.id, alice.id, outsider.id, Role::Admin)
            .await
            .expect("set role"),
        Guarded::Missing
    );
    // An admin removes members but not the owner.
    assert_eq!(
        store
            .remove_participant(chat.id, bob.id, alice.id)
            .await
            .expect("remove"),
        Guarded::Refused
    );

    // Handing over: one owner at every moment.
    let Guarded::Done(changed) = store
        .set_role(chat.id, alice.id, carol.id, Role::Owner)
        .await
        .expect("hand over")
    else {
        panic!("carol is in and alice owns it");
    };
    assert!(changed.contains(&(carol.id, Role::Owner)), "{changed:?}");
    assert!(changed.contains(&(alice.id, Role::Admin)), "{changed:?}");
    assert_eq!(role(store, chat.id, alice.id).await, Some(Role::Admin));
    // Handed over, alice no longer changes roles nor deletes the conversation.
    assert_eq!(
        store
            .set_role(chat.id, alice.id, bob.id, Role::Owner)
            .await
            .expect("set role"),
        Guarded::Refused
    );
    assert_eq!(
        store
            .delete_conversation(chat.id, alice.id)
            .await
            .expect("delete"),
        Guarded::Refused
    );

    // The owner leaves: the longest-standing admin takes over (alice and bob joined
    // at once, so the smaller id).
    let removed = store
        .remove_participant(chat.id, carol.id, carol.id)
        .await
        .expect("leave");
    let heir = alice.id.min(bob.id);
    assert_eq!(
        removed,
        Guarded::Done(Removed {
            role: Role::Owner,
            new_owner: Some(heir)
        })
    );
    assert_eq!(role(store, chat.id, heir).await, Some(Role::Owner));
    let page = store
        .participant_page(chat.id, None, 10)
        .await
        .expect("page");
    let mut ids: Vec<UserId> = page.iter().map(|p| p.user_id).collect();
    let mut expected = vec![alice.id, bob.id];
    expected.sort();
    assert_eq!(ids, expected, "in user id order");
    let first = store
        .participant_page(chat.id, None, 1)
        .await
        .expect("page");
    let rest = store
        .participant_page(chat.id, Some(first[0].user_id), 10)
        .await
        .expect("page");
    ids = first.iter().chain(&rest).map(|p| p.user_id).collect();
    assert_eq!(ids, expected, "pages meet without a gap");
    let other = if heir == alice.id { &bob } else { &alice };
    assert!(page
        .iter()
        .any(|p| p.user_id == other.id && p.username == other.username && p.role == Role::Admin));
}

async fn direct_conversations(store: &dyn Store) {
    let (alice, bob) = (user("dm_alice"), user("dm_bob"));
    for u in [&alice, &bob] {
        store.create_user(u).await.expect("user");
    }
    let record = |creator: UserId| ConversationRecord {
        direct: true,
        ..super::fixtures::conversation(creator, None, now_micros())
    };
    let first = store
        .create_direct(&record(alice.id), bob.id)
        .await
        .expect("create");
    assert!(first.created);
    assert!(first.conversation.direct);
    // From the other side: the same one.
    let again = store
        .create_direct(&record(bob.id), alice.id)
        .await
        .expect("again");
    assert!(!again.created);
    assert_eq!(again.conversation.id, first.conversation.id);
    assert!(again.conversation.direct);
    assert!(again.rejoined.is_empty());
    assert_eq!(
        role(store, first.conversation.id, alice.id).await,
        Some(Role::Member)
    );
    // One who left is back when either starts it again.
    store
        .remove_participant(first.conversation.id, bob.id, bob.id)
        .await
        .expect("leave");
    let back = store
        .create_direct(&record(alice.id), bob.id)
        .await
        .expect("again");
    assert_eq!(back.conversation.id, first.conversation.id);
    assert_eq!(back.rejoined, vec![bob.id]);
}

async fn archived_takes_nothing_new(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "ar", Some("archive")).await;
    let sent = messages(chat.id, &[alice.id, bob.id], start, 2);
    store.insert_messages(&sent).await.expect("insert");
    let archive = ConversationChange {
        archived: Some(true),
        name: Some(Some("Old".into())),
        ..ConversationChange::default()
    };
    assert!(
        matches!(
            store
                .update_conversation(chat.id, bob.id, &archive, now_micros())
                .await
                .expect("update"),
            Guarded::Refused
        ),
        "a member does not archive"
    );
    let Guarded::Done(now) = store
        .update_conversation(chat.id, alice.id, &archive, now_micros())
        .await
        .expect("update")
    else {
        panic!("the owner archives");
    };
    assert!(now.archived_at.is_some());
    assert_eq!(now.name.as_deref(), Some("Old"));
    assert_eq!(now.description, chat.description, "left as it was");

    let late = super::fixtures::user("ar_late");
    store.create_user(&late).await.expect("user");
    assert_eq!(
        store.add_participant(chat.id, late.id).await.expect("add"),
        Guarded::Refused,
        "an archived conversation gains no one"
    );
    let more = messages(chat.id, &[alice.id], now_micros(), 1);
    assert_eq!(
        store.insert_messages(&more).await.expect("insert"),
        vec![Stored::ReadOnly]
    );
    let at = now_micros();
    assert_eq!(
        store
            .edit_message(chat.id, sent[0].id, alice.id, &content("x"), at)
            .await
            .expect("edit"),
        ChangeOutcome::ReadOnly
    );
    assert_eq!(
        store
            .delete_message(chat.id, sent[0].id, alice.id, at)
            .await
            .expect("delete"),
        ChangeOutcome::ReadOnly
    );
    assert_eq!(
        store
            .toggle_reaction(chat.id, sent[0].id, bob.id, "👍")
            .await
            .expect("react"),
        ReactionOutcome::ReadOnly
    );
    assert_eq!(
        store
            .stream(chat.id, Seq(0), Seq(100))
            .await
            .expect("stream")
            .len(),
        2,
        "nothing new in the stream"
    );

    let unarchive = ConversationChange {
        archived: Some(false),
        description: Some(None),
        ..ConversationChange::default()
    };
    let Guarded::Done(now) = store
        .update_conversation(chat.id, alice.id, &unarchive, now_micros())
        .await
        .expect("update")
    else {
        panic!("the owner unarchives");
    };
    assert!(now.archived_at.is_none());
    assert_eq!(now.description, None, "null clears it");
    assert!(matches!(
        store.insert_messages(&more).await.expect("insert")[..],
        [Stored::New(Seq(3))]
    ));
}

async fn deleted_is_gone_then_purged(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "dl", Some("doomed")).await;
    let sent = messages(chat.id, &[alice.id, bob.id], start, 5);
    store.insert_messages(&sent).await.expect("insert");
    assert_eq!(
        store
            .delete_conversation(chat.id, bob.id)
            .await
            .expect("delete"),
        Guarded::Refused
    );
    assert_eq!(
        store
            .delete_conversation(chat.id, alice.id)
            .await
            .expect("delete"),
        Guarded::Done(())
    );
    assert_eq!(
        store
            .delete_conversation(chat.id, alice.id)
            .await
            .expect("again"),
        Guarded::Gone
    );
    assert_eq!(
        store
            .set_role(chat.id, alice.id, bob.id, Role::Owner)
            .await
            .expect("set role"),
        Guarded::Gone
    );
    assert_eq!(
        store
            .remove_participant(chat.id, alice.id, alice.id)
            .await
            .expect("leave"),
        Guarded::Gone
    );
    assert!(store.conversation(chat.id).await.expect("read").is_none());
    assert!(store
        .membership(chat.id, alice.id)
        .await
        .expect("read")
        .is_none());
    assert!(!store.is_member(chat.id, bob.id).await.expect("read"));
    assert!(store
        .conversations_of(alice.id, super::EVERY)
        .await
        .expect("list")
        .iter()
        .all(|s| s.conversation.id != chat.id));
    let late = messages(chat.id, &[alice.id], now_micros(), 1);
    assert_eq!(
        store.insert_messages(&late).await.expect("insert"),
        vec![Stored::Gone]
    );
    while store.purge_deleted().await.expect("purge") {}
    assert!(store
        .stream(chat.id, Seq(0), Seq(100))
        .await
        .expect("stream")
        .is_empty());
    assert!(store
        .history(
            chat.id,
            Page {
                limit: 20,
                ..Page::default()
            }
        )
        .await
        .expect("history")
        .is_none_or(|page| page.is_empty()));
}
