//! The home's handling of a conversation's client events: relays typing and presence,
//! persists messages (through the batched writer) and edits, deletes and reactions (on
//! the store's pool), and publishes what each commit reports at its stream position,
//! or tells the actor why not. It counts the commits in flight, so the stream knows
//! whether a gap can still close by itself.
//!
//! Like the rest of the home it never touches a socket.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Homes;
use crate::bus::{Actor, Audience, ShardMsg};
use crate::hub::render;
use crate::ids::{now_micros, ConversationId, MessageId, Seq};
use crate::protocol::{ClientEvent, ServerEvent};
use crate::store::writer::CommitResult;
use crate::store::{
    ChangeOutcome, NewMessage, ReactionOutcome, Store, StoreError, Stored, StreamEvent, StreamKind,
};
use crate::text::{ClientId, Content};

/// A persisted change as the stream shows it: its position, the message it changed,
/// when, and what it did.
type Change = (Seq, MessageId, DateTime<Utc>, StreamKind);

/// What a sender hears when its message's commit failed and it gave a `client_id`: the
/// commit may have happened, and resending is safe.
const MAY_NOT_BE_SAVED: &str = "Message may not have been saved; resend with the same client_id";

/// What an actor hears when the conversation is archived: read-only, nothing new.
const ARCHIVED: &str = "Conversation is archived";

impl Homes {
    pub(super) fn event(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: Actor,
        event: ClientEvent,
    ) {
        match event {
            // Answered by the connection's own shard; never sent home.
            ClientEvent::Ping | ClientEvent::Auth { .. } | ClientEvent::Resume { .. } => {}
            ClientEvent::Read { seq } => self.read(conversation, actor, seq),
            ClientEvent::Message { content, client_id } => {
                self.post(conversation, actor, content, client_id);
            }
            ClientEvent::Typing => {
                let frame = ServerEvent::Typing {
                    sender_id: actor.user,
                    sender_username: &actor.username,
                    conversation_id: conversation,
                }
                .frame();
                self.fanout(conversation, frame, Audience::Except(actor.user));
            }
            ClientEvent::Presence { status } => {
                let frame = ServerEvent::Presence {
                    sender_id: actor.user,
                    sender_username: &actor.username,
                    status,
                    conversation_id: conversation,
                }
                .frame();
                self.fanout(conversation, frame, Audience::All);
            }
            ClientEvent::Edit {
                message_id,
                content,
            } => {
                let (user, at) = (actor.user, now_micros());
                self.change(
                    conversation,
                    actor,
                    move |s| async move {
                        s.edit_message(conversation, message_id, user, &content, at)
                            .await
                            .map(|o| (o, content))
                    },
                    move |(outcome, content)| {
                        let seq = changed(outcome, "You can only edit your own messages")?;
                        let kind = StreamKind::Edit {
                            content: content.into_string(),
                        };
                        Ok((seq, message_id, at, kind))
                    },
                    "Message could not be edited, please retry",
                );
            }
            ClientEvent::Delete { message_id } => {
                let (user, at) = (actor.user, now_micros());
                self.change(
                    conversation,
                    actor,
                    move |s| async move { s.delete_message(conversation, message_id, user, at).await },
                    move |outcome| {
                        let seq = changed(
                            outcome,
                            "Only owners and admins can delete others' messages",
                        )?;
                        Ok((seq, message_id, at, StreamKind::Delete))
                    },
                    "Message could not be deleted, please retry",
                );
            }
            ClientEvent::Reaction { message_id, emoji } => {
                let user = actor.user;
                self.change(
                    conversation,
                    actor,
                    move |s| async move {
                        s.toggle_reaction(conversation, message_id, user, &emoji)
                            .await
                            .map(|o| (o, emoji))
                    },
                    move |(outcome, emoji)| {
                        let (seq, added) = match outcome {
                            ReactionOutcome::Added(seq) => (seq, true),
                            ReactionOutcome::Removed(seq) => (seq, false),
                            ReactionOutcome::NotFound => return Err("Message not found"),
                            ReactionOutcome::ReadOnly => return Err(ARCHIVED),
                        };
                        // Reaction events carry no time; this one is never shown.
                        let kind = StreamKind::Reaction { emoji, added };
                        Ok((seq, message_id, now_micros(), kind))
                    },
                    "Reaction could not be saved, please retry",
                );
            }
        }
    }

    /// Persists a change off the shard, then publishes what `outcome` makes of the
    /// result (the event's position, message, time and kind), or tells the actor why
    /// not. Changes of one conversation run one at a time, in the order they came: a
    /// double click on a reaction adds then removes it, and of two edits the later one
    /// wins, which concurrent transactions would not promise.
    fn change<T, F, Fut>(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: Actor,
        work: F,
        outcome: impl FnOnce(T) -> Result<Change, &'static str> + 'static,
        failure: &'static str,
    ) where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let limit = self.app.config.changes_queue_limit;
        let (done, turn) = futures_channel::oneshot::channel::<()>();
        let previous = {
            let mut st = self.state.borrow_mut();
            let Some(h) = st.live.get_mut(&conversation) else {
                return;
            };
            // The chain of changes waiting their turn is bounded: past it the actor
            // is told to retry, rather than the chain growing without end.
            if h.changes_waiting >= limit {
                drop(st);
                return self.reply_error(&actor, "Server busy, change not applied; please retry");
            }
            h.changes_waiting += 1;
            h.last_change.replace(turn)
        };
        self.begin_commit(conversation);
        let home = Rc::clone(self);
        monoio::spawn(async move {
            if let Some(previous) = previous {
                // Resolves, sent or dropped, once the change before this one is done.
                let _ = previous.await;
            }
            let result = home.app.db.call(work).await;
            // The next change may go as soon as this one is in the store.
            drop(done);
            if let Some(h) = home.state.borrow_mut().live.get_mut(&conversation) {
                h.changes_waiting = h.changes_waiting.saturating_sub(1);
            }
            home.end_commit(conversation, &result);
            match result.map(outcome) {
                Ok(Ok((seq, message_id, at, kind))) => {
                    let e = StreamEvent {
                        seq,
                        message_id,
                        user_id: actor.user,
                        username: actor.username.to_string(),
                        at,
                        kind,
                    };
                    return home.publish(conversation, &e);
                }
                Ok(Err(detail)) => home.reply_error(&actor, detail),
                Err(e) => {
                    tracing::warn!(error = %e, %conversation, "change not persisted");
                    home.reply_error(&actor, failure);
                }
            }
            home.settle(conversation);
        });
    }

    fn begin_commit(&self, conversation: ConversationId) {
        if let Some(home) = self.state.borrow_mut().live.get_mut(&conversation) {
            home.stream.begin_commit();
        }
    }

    /// A commit was reported: one whose outcome is unknown (the store stopped
    /// answering) may still have taken a position.
    fn end_commit<T, E: std::borrow::Borrow<StoreError>>(
        &self,
        conversation: ConversationId,
        result: &Result<T, E>,
    ) {
        let unknown = matches!(result, Err(e) if matches!(e.borrow(), StoreError::Unavailable(_)));
        if let Some(home) = self.state.borrow_mut().live.get_mut(&conversation) {
            home.stream.end_commit(unknown);
        }
    }

    fn post(
        &self,
        conversation: ConversationId,
        actor: Actor,
        content: Content,
        client_id: Option<ClientId>,
    ) {
        let (writer, config) = (&self.app.writer, &self.app.config);
        if writer.queued() >= config.writer_queue_limit
            || writer.queued_bytes() >= config.writer_queue_limit_bytes
        {
            return self.reply_error(&actor, "Server busy, message not sent; please retry");
        }
        let created_at = now_micros();
        let id = self.state.borrow_mut().ids.next(created_at);
        let message = NewMessage {
            id,
            conversation_id: conversation,
            sender_id: actor.user,
            content,
            created_at,
            client_id,
        };
        self.begin_commit(conversation);
        let bus = Arc::clone(&self.app.bus);
        let home = self.shard;
        self.app.writer.submit(
            message,
            Box::new(move |message, result| {
                bus.post(
                    home,
                    ShardMsg::Committed {
                        conversation,
                        actor,
                        message,
                        result,
                    },
                );
            }),
        );
    }

    /// The writer reported a message: published at its position, answered with the
    /// original when it was a repeat, or the sender is told it failed.
    pub(in crate::hub) fn committed(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: Actor,
        message: NewMessage,
        result: CommitResult,
    ) {
        self.end_commit(conversation, &result);
        let NewMessage {
            id,
            content,
            created_at,
            client_id,
            ..
        } = message;
        let client_id = client_id.map(ClientId::into_string);
        let event = |seq, message_id, at, content| StreamEvent {
            seq,
            message_id,
            user_id: actor.user,
            username: actor.username.to_string(),
            at,
            kind: StreamKind::Message {
                content,
                client_id: client_id.clone(),
            },
        };
        match result {
            Ok(Stored::New(seq)) => {
                return self.publish(
                    conversation,
                    &event(seq, id, created_at, content.into_string()),
                );
            }
            Ok(Stored::Duplicate(original)) => {
                // Only the sender hears of a repeat: everyone saw the original already.
                // One deleted since is acknowledged in its place, without content.
                let ack = match original.content {
                    Some(content) => event(original.seq, original.id, original.created_at, content),
                    None => StreamEvent {
                        kind: StreamKind::DeletedMessage {
                            client_id: client_id.clone(),
                        },
                        ..event(
                            original.seq,
                            original.id,
                            original.created_at,
                            String::new(),
                        )
                    },
                };
                self.app.bus.post(
                    actor.conn.shard,
                    ShardMsg::Direct {
                        conn: actor.conn.conn,
                        frame: render::stream_frame(conversation, &ack),
                    },
                );
            }
            Ok(Stored::Gone) => self.reply_error(&actor, "Conversation not found"),
            Ok(Stored::ReadOnly) => self.reply_error(&actor, ARCHIVED),
            Err(e) => {
                tracing::warn!(error = %e, %conversation, "message not committed");
                let detail = if client_id.is_some() {
                    MAY_NOT_BE_SAVED
                } else {
                    "Message could not be saved, please retry"
                };
                self.reply_error(&actor, detail);
            }
        }
        self.settle(conversation);
    }
}

/// An edit or delete outcome: its position, or the error the actor gets.
fn changed(outcome: ChangeOutcome, not_sender: &'static str) -> Result<Seq, &'static str> {
    match outcome {
        ChangeOutcome::Done(seq) => Ok(seq),
        ChangeOutcome::NotFound => Err("Message not found"),
        ChangeOutcome::NotSender => Err(not_sender),
        ChangeOutcome::ReadOnly => Err(ARCHIVED),
    }
}
