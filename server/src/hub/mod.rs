//! The hub of one shard. Two roles:
//!
//! - Local registry: this shard's WebSocket connections by conversation, fed by the bus
//!   with ready-made frames to write (`Deliver`, `Direct`).
//! - Home: for the conversations hashed to this shard, the single writer of their
//!   order. It assigns message ids, hands messages to the batched writer, and only
//!   when the batch commits sends the `message` event, encoded once, to every shard
//!   with a connection in the conversation. It also tracks who is connected
//!   (`active_users`) and persists edits, deletes and reactions.
//!
//! Everything here runs on the shard's own thread; state sits in a `RefCell` that is
//! never borrowed across an await.

pub mod bus;
pub mod conn;
mod ratelimit;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::app::App;
use crate::ids::{format_timestamp, now_micros, ConversationId, MessageIdGen, UserId};
use crate::protocol::{ClientEvent, ServerEvent};
use crate::store::{ChangeOutcome, NewMessage, ReactionOutcome, Store, StoreError};
use bus::{Actor, ConnAddr, HomeMsg, ShardMsg};
use conn::Conn;
use ratelimit::Bucket;

/// What a home shard knows about one of its conversations.
#[derive(Default)]
struct Home {
    /// Connections per shard, indexed by shard.
    shards: Vec<u32>,
    /// Connected users in the order they arrived, with their connection counts.
    users: Vec<(UserId, u32)>,
}

impl Home {
    fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn active_users(&self) -> Vec<UserId> {
        self.users.iter().map(|(u, _)| *u).collect()
    }
}

struct UserSlot {
    bucket: Bucket,
    conns: u32,
}

#[derive(Default)]
struct State {
    next_conn: u64,
    conns: HashMap<u64, Rc<Conn>>,
    by_conversation: HashMap<ConversationId, Vec<Rc<Conn>>>,
    users: HashMap<UserId, UserSlot>,
    homes: HashMap<ConversationId, Home>,
    ids: MessageIdGen,
}

pub struct Hub {
    pub shard: usize,
    app: Arc<App>,
    state: RefCell<State>,
}

/// Why an incoming event was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    RateLimited,
}

impl Hub {
    pub fn new(shard: usize, app: Arc<App>) -> Rc<Self> {
        Rc::new(Self {
            shard,
            app,
            state: RefCell::new(State::default()),
        })
    }

    // ---- local registry -------------------------------------------------------------

    /// Registers a connection and announces it to the conversation's home.
    pub fn register(
        &self,
        conversation: ConversationId,
        user: UserId,
        username: Arc<str>,
    ) -> Rc<Conn> {
        let mut st = self.state.borrow_mut();
        st.next_conn += 1;
        let conn = Rc::new(Conn::new(
            st.next_conn,
            user,
            username,
            conversation,
            self.app.config.ws_outbound_limit_bytes,
        ));
        st.conns.insert(conn.id, Rc::clone(&conn));
        st.by_conversation
            .entry(conversation)
            .or_default()
            .push(Rc::clone(&conn));
        let burst = self.app.config.ws_rate_burst;
        st.users
            .entry(user)
            .or_insert_with(|| UserSlot {
                bucket: Bucket::full(burst, Instant::now()),
                conns: 0,
            })
            .conns += 1;
        drop(st);
        self.to_home(&conn, None, HomeMsg::Join);
        conn
    }

    pub fn unregister(&self, conn: &Conn) {
        let mut st = self.state.borrow_mut();
        if st.conns.remove(&conn.id).is_none() {
            return;
        }
        if let Some(list) = st.by_conversation.get_mut(&conn.conversation) {
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                st.by_conversation.remove(&conn.conversation);
            }
        }
        if let Some(slot) = st.users.get_mut(&conn.user) {
            slot.conns -= 1;
            if slot.conns == 0 {
                st.users.remove(&conn.user);
            }
        }
        drop(st);
        self.to_home(conn, None, HomeMsg::Leave);
    }

    /// Takes one event from a client, after its rate limit.
    pub fn submit(
        &self,
        conn: &Conn,
        event: ClientEvent,
        reference: Option<String>,
    ) -> Result<(), Refused> {
        {
            let mut st = self.state.borrow_mut();
            let config = &self.app.config;
            let allowed = st.users.get_mut(&conn.user).is_some_and(|slot| {
                slot.bucket.take(
                    config.ws_rate_per_second,
                    config.ws_rate_burst,
                    Instant::now(),
                )
            });
            if !allowed {
                return Err(Refused::RateLimited);
            }
        }
        if event == ClientEvent::Ping {
            conn.push(ServerEvent::Pong.frame());
            return Ok(());
        }
        let msg = HomeMsg::Event(event);
        self.to_home(conn, reference, msg);
        Ok(())
    }

    fn to_home(&self, conn: &Conn, reference: Option<String>, msg: HomeMsg) {
        let actor = Actor {
            user: conn.user,
            username: Arc::clone(&conn.username),
            conn: ConnAddr {
                shard: self.shard,
                conn: conn.id,
            },
            reference,
        };
        let home = self.app.bus.home_of(conn.conversation);
        self.app.bus.post(
            home,
            ShardMsg::Home {
                conversation: conn.conversation,
                actor,
                msg,
            },
        );
    }

    /// Closes every local connection (shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        let conns: Vec<Rc<Conn>> = self.state.borrow().conns.values().cloned().collect();
        for conn in conns {
            conn.close(code, reason);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.state.borrow().conns.len()
    }

    // ---- bus ------------------------------------------------------------------------

    /// Handles one message from the bus. `Shutdown` is the shard's, not the hub's.
    pub fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver {
                conversation,
                frame,
                skip,
            } => {
                let st = self.state.borrow();
                for conn in st.by_conversation.get(&conversation).into_iter().flatten() {
                    if skip != Some(conn.user) {
                        conn.push(frame.clone());
                    }
                }
            }
            ShardMsg::Direct { conn, frame } => {
                if let Some(conn) = self.state.borrow().conns.get(&conn) {
                    conn.push(frame);
                }
            }
            ShardMsg::Home {
                conversation,
                actor,
                msg,
            } => self.home(conversation, actor, msg),
            ShardMsg::Committed {
                conversation,
                actor,
                frame,
                result,
            } => match result {
                Ok(()) => self.fanout(conversation, frame, None),
                Err(e) => {
                    tracing::warn!(error = %e, %conversation, "message not committed");
                    self.reply_error(&actor, "Message could not be saved, please retry");
                }
            },
            ShardMsg::Shutdown => {}
        }
    }

    // ---- home -----------------------------------------------------------------------

    fn home(self: &Rc<Self>, conversation: ConversationId, actor: Actor, msg: HomeMsg) {
        match msg {
            HomeMsg::Join => self.join(conversation, &actor),
            HomeMsg::Leave => self.leave(conversation, &actor),
            HomeMsg::Event(event) => self.event(conversation, actor, event),
        }
    }

    fn event(self: &Rc<Self>, conversation: ConversationId, actor: Actor, event: ClientEvent) {
        match event {
            // Answered by the connection's own shard; never sent home.
            ClientEvent::Ping => {}
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
                            content: &content,
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

    fn join(&self, conversation: ConversationId, actor: &Actor) {
        let shards = self.app.bus.shards();
        let active = {
            let mut st = self.state.borrow_mut();
            let home = st.homes.entry(conversation).or_default();
            home.shards.resize(shards, 0);
            home.shards[actor.conn.shard] += 1;
            match home.users.iter_mut().find(|(u, _)| *u == actor.user) {
                Some((_, n)) => *n += 1,
                None => home.users.push((actor.user, 1)),
            }
            home.active_users()
        };
        self.announce(conversation, actor, "joined", &active);
    }

    fn leave(&self, conversation: ConversationId, actor: &Actor) {
        let left = {
            let mut st = self.state.borrow_mut();
            let Some(home) = st.homes.get_mut(&conversation) else {
                return;
            };
            if let Some(n) = home.shards.get_mut(actor.conn.shard) {
                *n = n.saturating_sub(1);
            }
            let mut gone = false;
            if let Some(i) = home.users.iter().position(|(u, _)| *u == actor.user) {
                home.users[i].1 -= 1;
                if home.users[i].1 == 0 {
                    home.users.remove(i);
                    gone = true;
                }
            }
            let active = home.active_users();
            if home.is_empty() {
                st.homes.remove(&conversation);
            }
            gone.then_some(active)
        };
        // A user with another tab still open has not left.
        if let Some(active) = left {
            self.announce(conversation, actor, "left", &active);
        }
    }

    /// The `system` event of a user joining or leaving, to everyone connected.
    fn announce(&self, conversation: ConversationId, actor: &Actor, verb: &str, active: &[UserId]) {
        let content = format!("User {} {verb} the conversation", actor.username);
        let frame = ServerEvent::System {
            content: &content,
            sender_id: actor.user,
            active_users: active,
        }
        .frame();
        self.fanout(conversation, frame, None);
    }

    fn post(&self, conversation: ConversationId, actor: Actor, content: String) {
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
            content: &content,
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
    fn fanout(&self, conversation: ConversationId, frame: Bytes, skip: Option<UserId>) {
        let st = self.state.borrow();
        let Some(home) = st.homes.get(&conversation) else {
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

    fn reply_error(&self, actor: &Actor, detail: &str) {
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
