//! The home role of a shard's hub: for the conversations hashed to this shard, the
//! single writer of their order. It assigns message ids, hands messages to the batched
//! writer, and only when the batch commits sends the `message` event, encoded once, to
//! every shard with a connection in the conversation. It persists edits, deletes and
//! reactions, and it is the one place that knows who is connected where: presence
//! (`active_users`), which shards to fan out to, and which sockets to close when a
//! participant is removed.
//!
//! It never touches a socket: everything it says goes out through the bus.

use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Hub;
use crate::bus::{Actor, ConnAddr, HomeMsg, ShardMsg};
use crate::ids::{format_timestamp, now_micros, ConversationId, UserId};
use crate::protocol::{ClientEvent, ServerEvent};
use crate::store::{ChangeOutcome, NewMessage, ReactionOutcome, Store, StoreError};
use crate::text::Content;

/// How long a removal is remembered against connections admitted before it. Admission
/// reads membership and registers within one store call's deadline, far below this.
const REVOCATION_MEMORY: Duration = Duration::from_secs(300);

/// One connected user of a conversation.
struct Present {
    user: UserId,
    username: Arc<str>,
    conns: u32,
}

/// What a home shard knows about one of its conversations.
#[derive(Default)]
pub(super) struct Home {
    /// Connections per shard, indexed by shard.
    shards: Vec<u32>,
    /// Connected users in the order they arrived.
    users: Vec<Present>,
    /// Every connection in the conversation, and whose it is.
    conns: HashMap<ConnAddr, UserId>,
}

impl Home {
    fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn active_users(&self) -> Vec<UserId> {
        self.users.iter().map(|p| p.user).collect()
    }

    fn add(&mut self, actor: &Actor, shards: usize) {
        if self.conns.insert(actor.conn, actor.user).is_some() {
            return;
        }
        self.shards.resize(shards.max(self.shards.len()), 0);
        self.shards[actor.conn.shard] += 1;
        match self.users.iter_mut().find(|p| p.user == actor.user) {
            Some(p) => p.conns += 1,
            None => self.users.push(Present {
                user: actor.user,
                username: Arc::clone(&actor.username),
                conns: 1,
            }),
        }
    }

    /// Forgets one connection; true when it was its user's last.
    fn remove(&mut self, addr: ConnAddr) -> bool {
        let Some(user) = self.conns.remove(&addr) else {
            return false;
        };
        if let Some(n) = self.shards.get_mut(addr.shard) {
            *n = n.saturating_sub(1);
        }
        let Some(i) = self.users.iter().position(|p| p.user == user) else {
            return false;
        };
        self.users[i].conns -= 1;
        if self.users[i].conns > 0 {
            return false;
        }
        self.users.remove(i);
        true
    }

    /// Forgets every connection of `user`: their name and the shards they were on,
    /// or `None` when they had none.
    fn remove_user(&mut self, user: UserId) -> Option<(Arc<str>, Vec<usize>)> {
        let addrs: Vec<ConnAddr> = self
            .conns
            .iter()
            .filter(|(_, u)| **u == user)
            .map(|(a, _)| *a)
            .collect();
        let username = self.users.iter().find(|p| p.user == user)?.username.clone();
        let mut shards: Vec<usize> = addrs.iter().map(|a| a.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for addr in addrs {
            self.remove(addr);
        }
        Some((username, shards))
    }
}

/// The home's conversations and its recent removals.
#[derive(Default)]
pub(super) struct Homes {
    pub(super) live: HashMap<ConversationId, Home>,
    revoked: HashMap<(ConversationId, UserId), Instant>,
}

impl Homes {
    fn remember_revocation(&mut self, conversation: ConversationId, user: UserId, at: Instant) {
        self.revoked
            .retain(|_, t| at.saturating_duration_since(*t) < REVOCATION_MEMORY);
        self.revoked.insert((conversation, user), at);
    }

    /// Whether `user` was removed from the conversation at or after `checked_at`.
    fn was_revoked(&self, conversation: ConversationId, user: UserId, checked_at: Instant) -> bool {
        self.revoked
            .get(&(conversation, user))
            .is_some_and(|at| checked_at <= *at)
    }
}

impl Hub {
    pub(super) fn home(self: &Rc<Self>, conversation: ConversationId, actor: Actor, msg: HomeMsg) {
        match msg {
            HomeMsg::Join { checked_at } => self.join(conversation, &actor, checked_at),
            HomeMsg::Leave => self.leave(conversation, &actor),
            HomeMsg::Event(event) => {
                // Events from a connection the home does not know (its user was just
                // removed) are dropped: that socket is being closed.
                let known = self
                    .state
                    .borrow()
                    .homes
                    .live
                    .get(&conversation)
                    .is_some_and(|h| h.conns.contains_key(&actor.conn));
                if known {
                    self.event(conversation, actor, event);
                }
            }
        }
    }

    fn event(self: &Rc<Self>, conversation: ConversationId, actor: Actor, event: ClientEvent) {
        match event {
            // Answered by the connection's own shard; never sent home.
            ClientEvent::Ping | ClientEvent::Auth { .. } => {}
            ClientEvent::Message { content } => self.post(conversation, actor, content),
            ClientEvent::Typing => {
                let frame = ServerEvent::Typing {
                    sender_id: actor.user,
                    sender_username: &actor.username,
                    conversation_id: conversation,
                }
                .frame();
                self.fanout(conversation, frame, Some(actor.user));
            }
            ClientEvent::Presence { status } => {
                let frame = ServerEvent::Presence {
                    sender_id: actor.user,
                    sender_username: &actor.username,
                    status,
                }
                .frame();
                self.fanout(conversation, frame, None);
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
                    move |_, (outcome, content)| {
                        changed(outcome, "You can only edit your own messages")?;
                        let ts = format_timestamp(&at);
                        Ok(ServerEvent::Edit {
                            message_id,
                            content: content.as_str(),
                            sender_id: user,
                            is_edited: true,
                            timestamp: &ts,
                        }
                        .frame())
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
                    move |_, outcome| {
                        changed(outcome, "You can only delete your own messages")?;
                        let ts = format_timestamp(&at);
                        Ok(ServerEvent::Delete { message_id, sender_id: user, timestamp: &ts }.frame())
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
                    move |actor, (outcome, emoji)| {
                        let action = match outcome {
                            ReactionOutcome::Added => "added",
                            ReactionOutcome::Removed => "removed",
                            ReactionOutcome::NotFound => return Err("Message not found"),
                        };
                        Ok(ServerEvent::Reaction {
                            message_id,
                            emoji: &emoji,
                            sender_id: user,
                            sender_username: &actor.username,
                            action,
                        }
                        .frame())
                    },
                    "Reaction could not be saved, please retry",
                );
            }
        }
    }

    /// Persists a change off the shard, then broadcasts what `render` makes of the
    /// outcome, or tells the actor why not.
    fn change<T, F, Fut>(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: Actor,
        work: F,
        render: impl FnOnce(&Actor, T) -> Result<Bytes, &'static str> + 'static,
        failure: &'static str,
    ) where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let hub = Rc::clone(self);
        monoio::spawn(async move {
            match hub.app.db.call(work).await {
                Ok(outcome) => match render(&actor, outcome) {
                    Ok(frame) => hub.fanout(conversation, frame, None),
                    Err(detail) => hub.reply_error(&actor, detail),
                },
                Err(e) => {
                    tracing::warn!(error = %e, %conversation, "change not persisted");
                    hub.reply_error(&actor, failure);
                }
            }
        });
    }

    fn join(&self, conversation: ConversationId, actor: &Actor, checked_at: Instant) {
        let shards = self.app.bus.shards();
        let active = {
            let mut st = self.state.borrow_mut();
            if st.homes.was_revoked(conversation, actor.user, checked_at) {
                // Admitted on a membership read that may predate the removal.
                drop(st);
                self.app.bus.post(
                    actor.conn.shard,
                    ShardMsg::Revoked {
                        conversation,
                        user: actor.user,
                        conn: Some(actor.conn.conn),
                    },
                );
                return;
            }
            let home = st.homes.live.entry(conversation).or_default();
            home.add(actor, shards);
            home.active_users()
        };
        self.announce(conversation, actor.user, &actor.username, "joined", &active);
    }

    fn leave(&self, conversation: ConversationId, actor: &Actor) {
        let left = {
            let mut st = self.state.borrow_mut();
            let Some(home) = st.homes.live.get_mut(&conversation) else {
                return;
            };
            let gone = home.remove(actor.conn);
            let active = home.active_users();
            if home.is_empty() {
                st.homes.live.remove(&conversation);
            }
            // A user with another tab still open has not left.
            gone.then_some(active)
        };
        if let Some(active) = left {
            self.announce(conversation, actor.user, &actor.username, "left", &active);
        }
    }

    /// `user` was removed from the conversation: close their sockets on every shard,
    /// before anything said after the removal is delivered, and tell the others they
    /// left.
    pub(super) fn revoke_at_home(&self, conversation: ConversationId, user: UserId, at: Instant) {
        let (gone, active) = {
            let mut st = self.state.borrow_mut();
            st.homes.remember_revocation(conversation, user, at);
            let Some(home) = st.homes.live.get_mut(&conversation) else {
                return;
            };
            let gone = home.remove_user(user);
            let active = home.active_users();
            if home.is_empty() {
                st.homes.live.remove(&conversation);
            }
            (gone, active)
        };
        let Some((username, shards)) = gone else {
            return;
        };
        for shard in shards {
            self.app.bus.post(
                shard,
                ShardMsg::Revoked {
                    conversation,
                    user,
                    conn: None,
                },
            );
        }
        self.announce(conversation, user, &username, "left", &active);
    }

    /// The `system` event of a user joining or leaving, to everyone connected.
    fn announce(
        &self,
        conversation: ConversationId,
        user: UserId,
        username: &str,
        verb: &str,
        active: &[UserId],
    ) {
        let content = format!("User {username} {verb} the conversation");
        let frame = ServerEvent::System {
            content: &content,
            sender_id: user,
            active_users: active,
        }
        .frame();
        self.fanout(conversation, frame, None);
    }

    fn post(&self, conversation: ConversationId, actor: Actor, content: Content) {
        if self.app.writer.queued() >= self.app.config.writer_queue_limit {
            return self.reply_error(&actor, "Server busy, message not sent; please retry");
        }
        let created_at = now_micros();
        let id = self.state.borrow_mut().ids.next(created_at);
        let timestamp = format_timestamp(&created_at);
        // Encoded once, before the commit: the commit changes nothing in it.
        let frame = ServerEvent::Message {
            message_id: id,
            conversation_id: conversation,
            content: content.as_str(),
            sender_id: actor.user,
            sender_username: &actor.username,
            timestamp: &timestamp,
            is_edited: false,
        }
        .frame();
        let message = NewMessage {
            id,
            conversation_id: conversation,
            sender_id: actor.user,
            content,
            created_at,
        };
        let bus = Arc::clone(&self.app.bus);
        let home = self.shard;
        self.app.writer.submit(
            message,
            Box::new(move |result| {
                bus.post(
                    home,
                    ShardMsg::Committed {
                        conversation,
                        actor,
                        frame,
                        result,
                    },
                );
            }),
        );
    }

    /// Sends `frame` to every shard with a connection in the conversation.
    pub(super) fn fanout(&self, conversation: ConversationId, frame: Bytes, skip: Option<UserId>) {
        let st = self.state.borrow();
        let Some(home) = st.homes.live.get(&conversation) else {
            return;
        };
        for (shard, n) in home.shards.iter().enumerate() {
            if *n > 0 {
                self.app.bus.post(
                    shard,
                    ShardMsg::Deliver {
                        conversation,
                        frame: frame.clone(),
                        skip,
                    },
                );
            }
        }
    }

    pub(super) fn reply_error(&self, actor: &Actor, detail: &str) {
        let frame = ServerEvent::Error {
            detail,
            reference: actor.reference.as_deref(),
        }
        .frame();
        self.app.bus.post(
            actor.conn.shard,
            ShardMsg::Direct {
                conn: actor.conn.conn,
                frame,
            },
        );
    }
}

/// An edit or delete outcome as the error the actor gets, if any.
fn changed(outcome: ChangeOutcome, not_sender: &'static str) -> Result<(), &'static str> {
    match outcome {
        ChangeOutcome::Done => Ok(()),
        ChangeOutcome::NotFound => Err("Message not found"),
        ChangeOutcome::NotSender => Err(not_sender),
    }
}
