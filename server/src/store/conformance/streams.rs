//! The stream checks every store must pass: positions without gaps over every kind of
//! event, the stream read back as it was broadcast (a deleted message in its place,
//! without content), idempotent sends, and history paged forward.

use super::fixtures::{content, conversation, ids, messages, new_ids, page, pair, user, Pair};
use crate::ids::{now_micros, Seq};
use crate::store::model::{
    ChangeOutcome, Original, Page, ReactionOutcome, Store, Stored, StreamKind,
};
use crate::text::ClientId;

pub(super) async fn run(store: &dyn Store) {
    positions_and_replay(store).await;
    deleted_means_gone(store).await;
    idempotent_sends(store).await;
    history_forward(store).await;
}

async fn positions_and_replay(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "s", None).await;
    assert_eq!(
        store
            .member_position(chat.id, alice.id)
            .await
            .expect("position"),
        Some(Seq(0)),
        "nothing happened yet"
    );
    let stranger = user("s_carol");
    store.create_user(&stranger).await.expect("create");
    assert_eq!(
        store
            .member_position(chat.id, stranger.id)
            .await
            .expect("position"),
        None,
        "not a participant"
    );

    let mut sent = messages(chat.id, &[alice.id, bob.id], start, 3);
    sent[0].client_id = Some(ClientId::parse("send-1").expect("client id"));
    let outcomes = store.insert_messages(&sent).await.expect("insert");
    assert_eq!(
        outcomes,
        vec![
            Stored::New(Seq(1)),
            Stored::New(Seq(2)),
            Stored::New(Seq(3))
        ]
    );
    let at = now_micros();
    let edited = store
        .edit_message(chat.id, sent[0].id, alice.id, &content("edited"), at)
        .await
        .expect("edit");
    assert_eq!(edited, ChangeOutcome::Done(Seq(4)));
    let reacted = store
        .toggle_reaction(chat.id, sent[1].id, alice.id, "👍")
        .await
        .expect("react");
    assert_eq!(reacted, ReactionOutcome::Added(Seq(5)));
    let unreacted = store
        .toggle_reaction(chat.id, sent[1].id, alice.id, "👍")
        .await
        .expect("react");
    assert_eq!(unreacted, ReactionOutcome::Removed(Seq(6)));
    let deleted = store
        .delete_message(chat.id, sent[1].id, bob.id, at)
        .await
        .expect("delete");
    assert_eq!(deleted, ChangeOutcome::Done(Seq(7)));
    let more = messages(chat.id, &[bob.id], start + chrono::Duration::seconds(1), 1);
    assert_eq!(
        store.insert_messages(&more).await.expect("insert"),
        vec![Stored::New(Seq(8))]
    );
    assert_eq!(
        store
            .member_position(chat.id, bob.id)
            .await
            .expect("position"),
        Some(Seq(8))
    );

    let stream = store
        .stream(chat.id, Seq(0), Seq(100))
        .await
        .expect("stream");
    assert_eq!(
        stream.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=8).map(Seq).collect::<Vec<_>>()
    );
    // Messages as first broadcast: the edit and the delete follow them.
    assert_eq!(
        stream[0].kind,
        StreamKind::Message {
            content: sent[0].content.as_str().to_owned(),
            client_id: Some("send-1".into())
        }
    );
    assert_eq!(stream[0].message_id, sent[0].id);
    assert_eq!(stream[0].user_id, alice.id);
    assert_eq!(stream[0].username, "s_alice");
    assert_eq!(stream[0].at, sent[0].created_at);
    assert_eq!(
        stream[1].kind,
        StreamKind::DeletedMessage { client_id: None },
        "a deleted message keeps its place, not its content"
    );
    assert_eq!(
        (stream[1].message_id, stream[1].user_id),
        (sent[1].id, bob.id)
    );
    assert_eq!(
        stream[3].kind,
        StreamKind::Edit {
            content: "edited".into()
        }
    );
    assert_eq!((stream[3].message_id, stream[3].at), (sent[0].id, at));
    assert_eq!(
        stream[4].kind,
        StreamKind::Reaction {
            emoji: "👍".into(),
            added: true
        }
    );
    assert_eq!(stream[4].user_id, alice.id);
    assert_eq!(
        stream[5].kind,
        StreamKind::Reaction {
            emoji: "👍".into(),
            added: false
        }
    );
    assert_eq!(stream[6].kind, StreamKind::Delete);
    assert_eq!(
        (stream[6].user_id, stream[6].username.as_str()),
        (bob.id, "s_bob")
    );

    let window = store.stream(chat.id, Seq(3), Seq(5)).await.expect("stream");
    assert_eq!(
        window.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![Seq(4), Seq(5)],
        "positions in (after, upto]"
    );
    assert!(store
        .stream(chat.id, Seq(8), Seq(20))
        .await
        .expect("stream")
        .is_empty());
}

/// A deleted message's content, first or edited, is in no stream read after the
/// delete, whatever window is read; its place, its reactions and the delete are.
async fn deleted_means_gone(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "d", None).await;
    let mut sent = messages(chat.id, &[alice.id, bob.id], start, 2);
    sent[0].client_id = Some(ClientId::parse("gone-1").expect("client id"));
    store.insert_messages(&sent).await.expect("insert");
    let (doomed, kept) = (&sent[0], &sent[1]);
    let at = now_micros();
    let edited = store
        .edit_message(chat.id, doomed.id, alice.id, &content("secret edit"), at)
        .await
        .expect("edit");
    assert_eq!(edited, ChangeOutcome::Done(Seq(3)));
    let reacted = store
        .toggle_reaction(chat.id, doomed.id, bob.id, "👀")
        .await
        .expect("react");
    assert_eq!(reacted, ReactionOutcome::Added(Seq(4)));
    let before = store.stream(chat.id, Seq(0), Seq(4)).await.expect("stream");
    assert_eq!(
        before[0].kind,
        StreamKind::Message {
            content: doomed.content.as_str().to_owned(),
            client_id: Some("gone-1".into())
        },
        "a live message is replayed as first broadcast"
    );
    assert_eq!(
        before[2].kind,
        StreamKind::Edit {
            content: "secret edit".into()
        }
    );
    let deleted = store
        .delete_message(chat.id, doomed.id, alice.id, at)
        .await
        .expect("delete");
    assert_eq!(deleted, ChangeOutcome::Done(Seq(5)));
    let other = store
        .edit_message(chat.id, kept.id, bob.id, &content("bob's edit"), at)
        .await
        .expect("edit");
    assert_eq!(
        other,
        ChangeOutcome::Done(Seq(6)),
        "the other message lives on"
    );

    let stream = store.stream(chat.id, Seq(0), Seq(6)).await.expect("stream");
    let kinds: Vec<_> = stream.iter().map(|e| (e.seq, e.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (
                Seq(1),
                StreamKind::DeletedMessage {
                    client_id: Some("gone-1".into())
                }
            ),
            (
                Seq(2),
                StreamKind::Message {
                    content: kept.content.as_str().to_owned(),
                    client_id: None
                }
            ),
            (Seq(3), StreamKind::DeletedEdit),
            (
                Seq(4),
                StreamKind::Reaction {
                    emoji: "👀".into(),
                    added: true
                }
            ),
            (Seq(5), StreamKind::Delete),
            (
                Seq(6),
                StreamKind::Edit {
                    content: "bob's edit".into()
                }
            ),
        ],
        "every place kept, the deleted message's content nowhere"
    );
    assert_eq!(
        (stream[0].message_id, stream[0].user_id, stream[0].at),
        (doomed.id, alice.id, doomed.created_at)
    );
    assert_eq!(
        (stream[2].message_id, stream[2].user_id),
        (doomed.id, alice.id)
    );
    // What is read is the message as it is now, not as it was at the window's end.
    let early = store.stream(chat.id, Seq(0), Seq(3)).await.expect("stream");
    assert_eq!(
        early,
        stream[..3],
        "a window before the delete hides it too"
    );
}

async fn idempotent_sends(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "i", None).await;
    let other = conversation(alice.id, Some("other"), start);
    store
        .create_conversation(&other, &[alice.id])
        .await
        .expect("create");
    let key = || Some(ClientId::parse("retry-me").expect("client id"));

    let mut first = messages(chat.id, &[alice.id], start, 1);
    first[0].client_id = key();
    assert_eq!(
        store.insert_messages(&first).await.expect("insert"),
        vec![Stored::New(Seq(1))]
    );
    store
        .edit_message(
            chat.id,
            first[0].id,
            alice.id,
            &content("changed"),
            now_micros(),
        )
        .await
        .expect("edit");

    // The same send again (new id, new time, other content): the original answers.
    let later = start + chrono::Duration::seconds(5);
    let mut again = messages(chat.id, &[alice.id, bob.id, alice.id], later, 3);
    again[0].client_id = key();
    again[1].client_id = key(); // bob's own key: a different send
    again[2].conversation_id = other.id;
    again[2].client_id = key(); // alice's key, another conversation: a different send
    let outcomes = store.insert_messages(&again).await.expect("insert");
    assert_eq!(
        outcomes,
        vec![
            Stored::Duplicate(Original {
                id: first[0].id,
                seq: Seq(1),
                content: Some(first[0].content.as_str().to_owned()),
                created_at: first[0].created_at,
            }),
            Stored::New(Seq(3)),
            Stored::New(Seq(1)),
        ],
        "a repeat takes no position; the edit took 2"
    );
    let history = page(store, chat.id, 50, None).await;
    assert_eq!(
        ids(&history),
        vec![first[0].id, again[1].id],
        "nothing stored twice"
    );

    // Deleted means gone for its sender's resend too: the repeat is still the
    // original, in its place, without its content.
    store
        .delete_message(chat.id, first[0].id, alice.id, later)
        .await
        .expect("delete");
    let resent = store.insert_messages(&again[..1]).await.expect("insert");
    assert_eq!(
        resent,
        vec![Stored::Duplicate(Original {
            id: first[0].id,
            seq: Seq(1),
            content: None,
            created_at: first[0].created_at,
        })],
        "a resend of a deleted message gets no content back"
    );
}

async fn history_forward(store: &dyn Store) {
    let Pair {
        alice,
        bob,
        chat,
        start,
    } = pair(store, "p", None).await;
    let sent = messages(chat.id, &[alice.id, bob.id], start, 8);
    store.insert_messages(&sent).await.expect("insert");
    let all = new_ids(&sent);
    store
        .delete_message(chat.id, all[3], bob.id, now_micros())
        .await
        .expect("delete");
    let page = |after, before| async move {
        let page = Page {
            limit: 3,
            before,
            after,
        };
        store
            .history(chat.id, page)
            .await
            .expect("history")
            .map(|p| ids(&p))
    };
    assert_eq!(
        page(Some(all[0]), None).await,
        Some(vec![all[1], all[2], all[4]]),
        "the oldest after it, oldest first, deleted ones skipped"
    );
    assert_eq!(
        page(Some(all[3]), None).await,
        Some(vec![all[4], all[5], all[6]]),
        "a deleted message still anchors"
    );
    assert_eq!(page(Some(all[7]), None).await, Some(vec![]));
    assert_eq!(
        page(Some(all[1]), Some(all[5])).await,
        Some(vec![all[2], all[4]]),
        "between the two"
    );
    assert_eq!(
        page(Some(crate::ids::MessageId::random()), None).await,
        None,
        "unknown anchor"
    );
    let many = Page {
        limit: 50,
        before: None,
        after: None,
    };
    let newest = store.history(chat.id, many).await.expect("history");
    assert_eq!(newest.map(|p| p.len()), Some(7));
}

/// What a store upgraded from the first schema must show, given conversation `c1`
/// with the messages `old` (oldest first) and `c2` with one message, all written by
/// `user` under the first schema: positions backfilled in id order, counters set,
/// and new messages continuing after them.
pub(crate) async fn upgraded_from_first_schema(
    store: &dyn Store,
    user: crate::ids::UserId,
    (c1, old): (crate::ids::ConversationId, &[crate::ids::MessageId]),
    c2: crate::ids::ConversationId,
) {
    let page = Page {
        limit: 50,
        ..Page::default()
    };
    let history = store
        .history(c1, page)
        .await
        .expect("history")
        .expect("known");
    assert_eq!(ids(&history), old);
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=old.len() as u64).map(Seq).collect::<Vec<_>>()
    );
    let count = old.len() as u64;
    assert_eq!(
        store.member_position(c1, user).await.expect("position"),
        Some(Seq(count))
    );
    assert_eq!(
        store.member_position(c2, user).await.expect("position"),
        Some(Seq(1))
    );
    let next = messages(c1, &[user], now_micros(), 1);
    assert_eq!(
        store.insert_messages(&next).await.expect("insert"),
        vec![Stored::New(Seq(count + 1))]
    );
}
