//! Read markers, unread counts and the conversation list's previews, as every store
//! must keep them.

use super::fixtures::{content, messages, pair, user, Pair};
use crate::ids::{ConversationId, Seq};
use crate::store::model::{
    ChangeOutcome, ListPage, ReadOutcome, Store, PREVIEW_CHARS, UNREAD_COUNT_MAX,
};

pub(super) async fn run(store: &dyn Store) {
    markers_and_unread_counts(store).await;
    counts_stop_at_the_cap(store).await;
}

const FIRST: ListPage = ListPage {
    limit: 10,
    after: None,
};

async fn markers_and_unread_counts(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "rm", None).await;
    let of = async |who| {
        store
            .conversations_of(who, FIRST)
            .await
            .expect("list")
            .into_iter()
            .find(|s| s.conversation.id == chat.id)
            .expect("listed")
    };
    let fresh = of(alice.id).await;
    assert_eq!(
        (fresh.last_seq, fresh.last_read_seq, fresh.unread_count),
        (Seq(0), Seq(0), 0)
    );
    assert!(fresh.last_message.is_none());

    // Six messages, alice's at odd positions, bob's at even ones.
    let sent = messages(chat.id, &[alice.id, bob.id], start, 6);
    store.insert_messages(&sent).await.expect("insert");
    let before = of(alice.id).await;
    assert_eq!(before.last_seq, Seq(6));
    assert_eq!(before.unread_count, 3, "bob's three; her own do not count");
    let last = before.last_message.expect("a last message");
    assert_eq!(
        (last.id, last.seq, last.sender_id),
        (sent[5].id, Seq(6), bob.id)
    );
    assert_eq!(last.sender_username, bob.username);
    assert_eq!(of(bob.id).await.unread_count, 3);

    // A deleted message is no longer unread, nor the last one.
    let deleted = store
        .delete_message(chat.id, sent[5].id, bob.id, start)
        .await
        .expect("delete");
    assert_eq!(deleted, ChangeOutcome::Done(Seq(7)));
    let after_delete = of(alice.id).await;
    assert_eq!(
        (after_delete.last_seq, after_delete.unread_count),
        (Seq(7), 2)
    );
    assert_eq!(after_delete.last_message.expect("last").seq, Seq(5));

    // Markers move forward only, and never past the stream.
    assert_eq!(
        store
            .mark_read(chat.id, alice.id, Seq(4))
            .await
            .expect("mark"),
        ReadOutcome::Moved(Seq(4))
    );
    assert_eq!(
        store
            .mark_read(chat.id, alice.id, Seq(3))
            .await
            .expect("mark"),
        ReadOutcome::Kept(Seq(4))
    );
    assert_eq!(
        store
            .mark_read(chat.id, alice.id, Seq(4))
            .await
            .expect("mark"),
        ReadOutcome::Kept(Seq(4))
    );
    let marked = of(alice.id).await;
    assert_eq!((marked.last_read_seq, marked.unread_count), (Seq(4), 0));
    assert_eq!(
        of(bob.id).await.last_read_seq,
        Seq(0),
        "markers are each member's own"
    );
    // Past the stream means all of it.
    assert_eq!(
        store
            .mark_read(chat.id, bob.id, Seq(u64::MAX))
            .await
            .expect("mark"),
        ReadOutcome::Moved(Seq(7))
    );
    assert_eq!(
        store
            .mark_read(chat.id, bob.id, Seq(8))
            .await
            .expect("mark"),
        ReadOutcome::Kept(Seq(7))
    );

    // Not a member, or no such conversation: nothing to mark.
    let carol = user("rm_carol");
    store.create_user(&carol).await.expect("carol");
    assert_eq!(
        store
            .mark_read(chat.id, carol.id, Seq(1))
            .await
            .expect("mark"),
        ReadOutcome::NotMember
    );
    assert_eq!(
        store
            .mark_read(ConversationId::random(), alice.id, Seq(1))
            .await
            .expect("mark"),
        ReadOutcome::NotMember
    );

    // The preview is the start of a long message, cut at characters, not bytes.
    let mut long = messages(chat.id, &[bob.id], start + chrono::Duration::seconds(1), 1);
    long[0].content = content(&"é".repeat(150));
    store.insert_messages(&long).await.expect("insert");
    let listed = of(alice.id).await;
    let preview = listed.last_message.expect("last").content;
    assert_eq!(preview, "é".repeat(PREVIEW_CHARS as usize));
    assert_eq!(listed.unread_count, 1);

    let mut found = store
        .member_positions(chat.id, &[bob.id, carol.id, alice.id])
        .await
        .expect("positions");
    found.sort();
    let mut want = vec![(alice.id, Seq(8)), (bob.id, Seq(8))];
    want.sort();
    assert_eq!(found, want, "carol is no participant");
    let carried = store.memberships(alice.id, 10).await.expect("memberships");
    assert!(carried.contains(&(chat.id, Seq(8))), "{carried:?}");
    assert!(store
        .memberships(carol.id, 10)
        .await
        .expect("none")
        .is_empty());
}

async fn counts_stop_at_the_cap(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "rc", None).await;
    let many = messages(chat.id, &[bob.id], start, UNREAD_COUNT_MAX as usize + 5);
    store.insert_messages(&many).await.expect("insert");
    let listed = store.conversations_of(alice.id, FIRST).await.expect("list");
    assert_eq!(listed[0].unread_count, UNREAD_COUNT_MAX);
    assert_eq!(listed[0].last_seq, Seq(u64::from(UNREAD_COUNT_MAX) + 5));
}
