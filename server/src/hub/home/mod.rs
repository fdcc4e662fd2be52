//! The homes of a shard's hub: for the conversations hashed to this shard, the single
//! source of their delivery order and the one place that knows who is connected
//! where. Here: joins and leaves (`presence`), removals, announcements, and the
//! delivery of each conversation's stream in position order (`stream`), reading gaps
//! back from the store. What the home does with client events is in `events`
//! (persist, then publish at the commit's stream position), with read markers in
//! `markers`, what other nodes say in `remote`.
//!
//! It never touches a socket: everything it says goes out through the bus, to the
//! registries of the shards with connections in the conversation.

mod events;
mod markers;
mod presence;
mod remote;
mod stream;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::app::App;
use crate::bus::{Actor, Audience, Bus, ConnAddr, HomeMsg, Remote, Roster, ShardMsg};
use crate::cluster::{Announcement, Change};
use crate::hub::render;
use crate::ids::{ConversationId, MessageIdGen, Seq, UserId};
use crate::protocol::{Active, ServerEvent};
use crate::roster::{self, Coalescer, Noted, Summary};
use crate::store::StreamEvent;
use presence::Presence;
use stream::{Fill, Stream, FILL_PAGE, FILL_RETRY, REMOTE_GRACE};

/// How long a removal is remembered against connections admitted before it. Admission
/// reads membership and registers within one store call's deadline, far below this.
const REVOCATION_MEMORY: Duration = Duration::from_secs(300);

/// What a home shard knows about one of its conversations.
struct Home {
    presence: Presence,
    /// Above the presence list limit: the announcements waiting for their interval.
    roster: Coalescer,
    stream: Stream,
    /// Resolves when the last change queued (edit, delete, reaction) is done: changes
    /// of a conversation run one after another, in the order they came.
    last_change: Option<futures_channel::oneshot::Receiver<()>>,
    /// Changes queued behind `last_change` and not yet done (`--changes-queue-limit`).
    changes_waiting: u32,
}

impl Home {
    fn new(position: Seq) -> Self {
        Self {
            presence: Presence::default(),
            roster: Coalescer::default(),
            stream: Stream::new(position),
            last_change: None,
            changes_waiting: 0,
        }
    }

    /// Nobody is connected and nothing is under way: the conversation can be forgotten.
    fn is_idle(&self) -> bool {
        self.presence.is_empty() && self.stream.is_idle()
    }

    /// Sends `frame` to every shard with a connection in the conversation, for the
    /// connections of the audience.
    fn deliver(&self, bus: &Bus, conversation: ConversationId, frame: &Bytes, to: Audience) {
        for shard in self.presence.shards() {
            bus.post(
                shard,
                ShardMsg::Deliver {
                    conversation,
                    frame: frame.clone(),
                    to,
                },
            );
        }
    }
}

/// The home's conversations, its recent removals and deletions, and the ids it gives
/// messages.
#[derive(Default)]
struct State {
    live: HashMap<ConversationId, Home>,
    revoked: HashMap<(ConversationId, UserId), Instant>,
    deleted: HashMap<ConversationId, Instant>,
    ids: MessageIdGen,
}

impl State {
    fn remember_revocation(&mut self, conversation: ConversationId, user: UserId, at: Instant) {
        self.revoked
            .retain(|_, t| at.saturating_duration_since(*t) < REVOCATION_MEMORY);
        self.revoked.insert((conversation, user), at);
    }

    fn remember_deletion(&mut self, conversation: ConversationId, at: Instant) {
        self.deleted
            .retain(|_, t| at.saturating_duration_since(*t) < REVOCATION_MEMORY);
        self.deleted.insert(conversation, at);
    }

    /// Whether `user` was removed from the conversation, or it was deleted, at or
    /// after `checked_at`.
    fn was_revoked(&self, conversation: ConversationId, user: UserId, checked_at: Instant) -> bool {
        let after = |at: &Instant| checked_at <= *at;
        self.revoked.get(&(conversation, user)).is_some_and(after)
            || self.deleted.get(&conversation).is_some_and(after)
    }
}

/// The homes of the conversations hashed to this shard.
pub(super) struct Homes {
    shard: usize,
    app: Arc<App>,
    state: RefCell<State>,
}

impl Homes {
    pub(super) fn new(shard: usize, app: Arc<App>) -> Rc<Self> {
        Rc::new(Self {
            shard,
            app,
            state: RefCell::new(State::default()),
        })
    }

    pub(in crate::hub) fn handle(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: Actor,
        msg: HomeMsg,
    ) {
        match msg {
            HomeMsg::Join {
                checked_at,
                position,
            } => self.join(conversation, &actor, checked_at, position),
            HomeMsg::Leave => self.leave(conversation, &actor),
            HomeMsg::Event(event) => {
                // Events from a connection the home does not know (its user was just
                // removed) are dropped: that socket is being closed.
                let known = self
                    .state
                    .borrow()
                    .live
                    .get(&conversation)
                    .is_some_and(|h| h.presence.contains(actor.conn));
                if known {
                    self.event(conversation, actor, event);
                }
            }
        }
    }
    fn join(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: &Actor,
        checked_at: Instant,
        position: Seq,
    ) {
        let shards = self.app.bus.shards();
        let (seq, fresh) = {
            let mut st = self.state.borrow_mut();
            if st.was_revoked(conversation, actor.user, checked_at) {
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
            // A conversation the home does not hold has nothing in flight, so the
            // position admission read is where its stream stands.
            let fresh = !st.live.contains_key(&conversation);
            let home = st
                .live
                .entry(conversation)
                .or_insert_with(|| Home::new(position));
            home.stream.behind(position);
            // Every connection is announced, another tab of someone already here too
            // (it needs its position), though it counts nobody new.
            home.presence.add(actor, shards);
            (home.stream.position(), fresh)
        };
        if fresh {
            if let Some(cluster) = &self.app.cluster {
                cluster.subscribe(conversation);
            }
        }
        // Before the announcement, on the same road: the connection is live from here.
        self.app.bus.post(
            actor.conn.shard,
            ShardMsg::Joined {
                conn: actor.conn.conn,
                conversation,
                seq,
            },
        );
        let change = roster::Change {
            user: actor.user,
            username: Arc::clone(&actor.username),
            joined_at: Some(seq),
        };
        self.announce(conversation, change, Some(actor.conn));
        self.settle(conversation);
    }

    fn leave(self: &Rc<Self>, conversation: ConversationId, actor: &Actor) {
        let left = {
            let mut st = self.state.borrow_mut();
            let Some(home) = st.live.get_mut(&conversation) else {
                return;
            };
            // A user with another tab still open has not left.
            home.presence.remove(actor.conn)
        };
        if left {
            let change = roster::Change {
                user: actor.user,
                username: Arc::clone(&actor.username),
                joined_at: None,
            };
            self.announce(conversation, change, None);
        }
        self.settle(conversation);
    }

    /// `user` was removed from the conversation: close their sockets on every shard,
    /// before anything said after the removal is delivered, and tell the others they
    /// left.
    pub(in crate::hub) fn revoke(
        self: &Rc<Self>,
        conversation: ConversationId,
        user: UserId,
        at: Instant,
    ) {
        let gone = {
            let mut st = self.state.borrow_mut();
            st.remember_revocation(conversation, user, at);
            let Some(home) = st.live.get_mut(&conversation) else {
                return;
            };
            home.presence.remove_user(user)
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
        let change = roster::Change {
            user,
            username,
            joined_at: None,
        };
        self.announce(conversation, change, None);
        self.settle(conversation);
    }

    /// The conversation was deleted: forget it, and have every shard close its
    /// sockets and drop it from user streams (before anything it still had in flight
    /// could be delivered: nothing is, once it is forgotten).
    pub(in crate::hub) fn deleted(self: &Rc<Self>, conversation: ConversationId, at: Instant) {
        let held = {
            let mut st = self.state.borrow_mut();
            st.remember_deletion(conversation, at);
            st.live.remove(&conversation).is_some()
        };
        if held {
            if let Some(cluster) = &self.app.cluster {
                cluster.unsubscribe(conversation);
            }
        }
        self.app.bus.broadcast(|| ShardMsg::Gone { conversation });
    }

    /// The `system` event of a user joining (with the position they join at; `joiner`
    /// is the joining connection) or leaving. In a cluster, the cluster records it and
    /// announces it on every node, counting who is connected on any of them. On one
    /// node: within the presence list limit, at once to everyone with the full list;
    /// above it, the joiner hears of its own join at once, and the others through the
    /// conversation's coalescer (`roster`).
    fn announce(
        self: &Rc<Self>,
        conversation: ConversationId,
        change: roster::Change,
        joiner: Option<ConnAddr>,
    ) {
        let config = &self.app.config;
        let limit = config.presence_list_limit;
        let now = Instant::now();
        let (count, listed, noted) = {
            let mut st = self.state.borrow_mut();
            let Some(home) = st.live.get_mut(&conversation) else {
                return;
            };
            let count = home.presence.count();
            let listed = (count <= limit).then(|| home.presence.active_users());
            let noted = match &listed {
                Some(_) => None,
                None if self.app.cluster.is_some() => None,
                None => Some(home.roster.note(
                    change.clone(),
                    now,
                    Duration::from_millis(config.presence_interval_ms),
                )),
            };
            (count, listed, noted)
        };
        if let Some(cluster) = &self.app.cluster {
            let kind = match (change.joined_at, joiner) {
                (Some(seq), Some(conn)) => Change::Joined { seq, conn },
                _ => Change::Left,
            };
            return cluster.announce(Announcement {
                conversation,
                user: change.user,
                username: change.username,
                change: kind,
                local_active: listed,
                local_count: count,
            });
        }
        if let Some(listed) = listed {
            let frame = change.frame(conversation, Active::Users(&listed));
            return self.deliver_local(conversation, frame, Audience::All);
        }
        if let (Some(joiner), Some(_)) = (joiner, change.joined_at) {
            let frame = change.frame(conversation, Active::Count(count));
            self.app.bus.post(
                joiner.shard,
                ShardMsg::Own {
                    conn: joiner.conn,
                    conversation,
                    frame,
                },
            );
        }
        match noted {
            Some(Noted::Now) => self.announce_to_others(conversation, Summary::One(change)),
            Some(Noted::Held(Some(wait))) => {
                let homes = Rc::clone(self);
                monoio::spawn(async move {
                    monoio::time::sleep(wait).await;
                    let summary = homes
                        .state
                        .borrow_mut()
                        .live
                        .get_mut(&conversation)
                        .and_then(|home| home.roster.flush(Instant::now()));
                    if let Some(summary) = summary {
                        homes.announce_to_others(conversation, summary);
                    }
                });
            }
            Some(Noted::Held(None)) | None => {}
        }
    }

    /// Above the presence list limit on one node: a change (or the sum of several) to
    /// everyone but a joiner, who heard of its own join already.
    fn announce_to_others(&self, conversation: ConversationId, summary: Summary) {
        let Some(count) = self
            .state
            .borrow()
            .live
            .get(&conversation)
            .map(|home| home.presence.count())
        else {
            return;
        };
        let (frame, skip) = summary.frame(conversation, count);
        let to = skip.map_or(Audience::All, Audience::Except);
        self.deliver_local(conversation, frame, to);
    }

    /// Up to `limit` users connected to the conversation on this node who arrived
    /// after the cursor `after`, and how many are connected.
    pub(in crate::hub) fn roster(
        &self,
        conversation: ConversationId,
        after: Option<u64>,
        limit: usize,
    ) -> Roster {
        let st = self.state.borrow();
        let Some(home) = st.live.get(&conversation) else {
            return Roster::default();
        };
        Roster {
            users: home.presence.page(after, limit),
            count: home.presence.count(),
        }
    }

    /// Sends `frame` (not a stream event) to every connection in the conversation, on
    /// every node.
    pub(super) fn fanout(&self, conversation: ConversationId, frame: Bytes, to: Audience) {
        if let Some(cluster) = &self.app.cluster {
            cluster.publish(
                conversation,
                &Remote::Frame {
                    to,
                    frame: frame.clone(),
                },
            );
        }
        self.deliver_local(conversation, frame, to);
    }

    /// Sends `frame` (not a stream event) to this node's connections in the
    /// conversation.
    pub(super) fn deliver_local(&self, conversation: ConversationId, frame: Bytes, to: Audience) {
        if let Some(home) = self.state.borrow().live.get(&conversation) {
            home.deliver(&self.app.bus, conversation, &frame, to);
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

    /// A committed event of the conversation: delivered now if it is next, after the
    /// gap before it otherwise.
    pub(super) fn publish(self: &Rc<Self>, conversation: ConversationId, e: &StreamEvent) {
        let frame = render::stream_frame(conversation, e);
        if let Some(cluster) = &self.app.cluster {
            let remote = Remote::Event {
                seq: e.seq,
                frame: frame.clone(),
            };
            cluster.publish(conversation, &remote);
        }
        if let Some(home) = self.state.borrow_mut().live.get_mut(&conversation) {
            home.stream.accept(e.seq, frame);
        }
        self.settle(conversation);
    }

    /// Delivers what is ready, reads the store for a gap or doubt once nothing in
    /// flight can close it, and forgets the conversation once nothing is owed.
    pub(super) fn settle(self: &Rc<Self>, conversation: ConversationId) {
        let grace = if self.app.cluster.is_some() {
            REMOTE_GRACE
        } else {
            Duration::ZERO
        };
        let fill = {
            let mut st = self.state.borrow_mut();
            let Some(home) = st.live.get_mut(&conversation) else {
                return;
            };
            while let Some(frame) = home.stream.pop_ready() {
                home.deliver(&self.app.bus, conversation, &frame, Audience::All);
            }
            if home.is_idle() {
                st.live.remove(&conversation);
                drop(st);
                if let Some(cluster) = &self.app.cluster {
                    cluster.unsubscribe(conversation);
                }
                return;
            }
            home.stream.start_fill(Instant::now(), grace)
        };
        match fill {
            Fill::No => {}
            Fill::Now(after) => self.fill(conversation, after),
            Fill::Later(wait) => {
                let homes = Rc::clone(self);
                monoio::spawn(async move {
                    monoio::time::sleep(wait).await;
                    if let Some(home) = homes.state.borrow_mut().live.get_mut(&conversation) {
                        home.stream.timer_fired();
                    }
                    homes.settle(conversation);
                });
            }
        }
    }

    /// Reads the events after `after` back from the store and delivers them.
    fn fill(self: &Rc<Self>, conversation: ConversationId, after: Seq) {
        let homes = Rc::clone(self);
        monoio::spawn(async move {
            let upto = Seq(after.0.saturating_add(FILL_PAGE));
            let read = homes
                .app
                .db
                .call(move |s| async move { s.stream(conversation, after, upto).await })
                .await;
            let complete = match read {
                Ok(events) => {
                    let full = events.len() as u64 >= FILL_PAGE;
                    if let Some(home) = homes.state.borrow_mut().live.get_mut(&conversation) {
                        for e in &events {
                            home.stream
                                .accept(e.seq, render::stream_frame(conversation, e));
                        }
                    }
                    !full
                }
                Err(e) => {
                    tracing::warn!(error = %e, %conversation, "stream gap not read; retrying");
                    monoio::time::sleep(FILL_RETRY).await;
                    false
                }
            };
            if let Some(home) = homes.state.borrow_mut().live.get_mut(&conversation) {
                let skipped = home.stream.end_fill(complete);
                if skipped > 0 {
                    tracing::warn!(%conversation, skipped, "stream positions missing from the store; skipped");
                }
            }
            homes.settle(conversation);
        });
    }
}
