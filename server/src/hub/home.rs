//! The home role of a shard's hub: for the conversations hashed to this shard, the
//! single source of their delivery order. What it does with client events is in
//! `events` (persist, then publish at the commit's stream position), the order of
//! delivery in `stream`; here is the one place that knows who is connected where:
//! presence (`active_users`), which shards to fan out to, which sockets to close when a
//! participant is removed, and from which position each joining connection is live.
//!
//! It never touches a socket: everything it says goes out through the bus.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::stream::Stream;
use super::Hub;
use crate::bus::{Actor, Bus, ConnAddr, HomeMsg, Remote, ShardMsg};
use crate::cluster::{Announcement, Change};
use crate::ids::{ConversationId, Seq, UserId};
use crate::protocol::{Membership, ServerEvent};

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
pub(super) struct Home {
    /// Connections per shard, indexed by shard.
    shards: Vec<u32>,
    /// Connected users in the order they arrived.
    users: Vec<Present>,
    /// Every connection in the conversation, and whose it is.
    conns: HashMap<ConnAddr, UserId>,
    pub(super) stream: Stream,
    /// Resolves when the last change queued (edit, delete, reaction) is done: changes
    /// of a conversation run one after another, in the order they came.
    pub(super) last_change: Option<futures_channel::oneshot::Receiver<()>>,
}

impl Home {
    fn new(position: Seq) -> Self {
        Self {
            shards: Vec::new(),
            users: Vec::new(),
            conns: HashMap::new(),
            stream: Stream::new(position),
            last_change: None,
        }
    }

    /// Nobody is connected and nothing is under way: the conversation can be forgotten.
    pub(super) fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.stream.is_idle()
    }

    /// Sends `frame` to every shard with a connection in the conversation, except to
    /// the connections of `skip`.
    pub(super) fn deliver(
        &self,
        bus: &Bus,
        conversation: ConversationId,
        frame: &Bytes,
        skip: Option<UserId>,
    ) {
        for (shard, n) in self.shards.iter().enumerate() {
            if *n > 0 {
                bus.post(
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

    fn active_users(&self) -> Vec<UserId> {
        self.users.iter().map(|p| p.user).collect()
    }

    /// Each connected user once, with their name.
    pub(super) fn present(&self) -> impl Iterator<Item = (UserId, &Arc<str>)> {
        self.users.iter().map(|p| (p.user, &p.username))
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
    fn join(
        self: &Rc<Self>,
        conversation: ConversationId,
        actor: &Actor,
        checked_at: Instant,
        position: Seq,
    ) {
        let shards = self.app.bus.shards();
        let (active, seq, fresh) = {
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
            // A conversation the home does not hold has nothing in flight, so the
            // position admission read is where its stream stands.
            let fresh = !st.homes.live.contains_key(&conversation);
            let home = st
                .homes
                .live
                .entry(conversation)
                .or_insert_with(|| Home::new(position));
            home.stream.behind(position);
            home.add(actor, shards);
            (home.active_users(), home.stream.position(), fresh)
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
                seq,
            },
        );
        self.announce(
            conversation,
            actor.user,
            &actor.username,
            Change::Joined(seq),
            active,
        );
        self.settle(conversation);
    }

    fn leave(self: &Rc<Self>, conversation: ConversationId, actor: &Actor) {
        let left = {
            let mut st = self.state.borrow_mut();
            let Some(home) = st.homes.live.get_mut(&conversation) else {
                return;
            };
            // A user with another tab still open has not left.
            home.remove(actor.conn).then(|| home.active_users())
        };
        if let Some(active) = left {
            self.announce(
                conversation,
                actor.user,
                &actor.username,
                Change::Left,
                active,
            );
        }
        self.settle(conversation);
    }

    /// `user` was removed from the conversation: close their sockets on every shard,
    /// before anything said after the removal is delivered, and tell the others they
    /// left.
    pub(super) fn revoke_at_home(
        self: &Rc<Self>,
        conversation: ConversationId,
        user: UserId,
        at: Instant,
    ) {
        let (gone, active) = {
            let mut st = self.state.borrow_mut();
            st.homes.remember_revocation(conversation, user, at);
            let Some(home) = st.homes.live.get_mut(&conversation) else {
                return;
            };
            (home.remove_user(user), home.active_users())
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
        self.announce(conversation, user, &username, Change::Left, active);
        self.settle(conversation);
    }

    /// The `system` event of a user joining (with the position they join at) or
    /// leaving, to everyone connected. In a cluster, the cluster records it and
    /// announces it on every node, with who is connected on any of them.
    fn announce(
        &self,
        conversation: ConversationId,
        user: UserId,
        username: &Arc<str>,
        change: Change,
        active: Vec<UserId>,
    ) {
        if let Some(cluster) = &self.app.cluster {
            return cluster.announce(Announcement {
                conversation,
                user,
                username: Arc::clone(username),
                change,
                local_active: active,
            });
        }
        let (membership, seq) = match change {
            Change::Joined(seq) => (Membership::Joined, Some(seq)),
            Change::Left => (Membership::Left, None),
            // Only a cluster records presence again.
            Change::Rejoined => return,
        };
        let frame = ServerEvent::membership(membership, user, username, &active, seq);
        self.deliver_local(conversation, frame, None);
    }

    /// Sends `frame` (not a stream event) to every connection in the conversation, on
    /// every node.
    pub(super) fn fanout(&self, conversation: ConversationId, frame: Bytes, skip: Option<UserId>) {
        if let Some(cluster) = &self.app.cluster {
            cluster.publish(
                conversation,
                &Remote::Frame {
                    skip,
                    frame: frame.clone(),
                },
            );
        }
        self.deliver_local(conversation, frame, skip);
    }

    /// Sends `frame` (not a stream event) to this node's connections in the
    /// conversation.
    pub(super) fn deliver_local(
        &self,
        conversation: ConversationId,
        frame: Bytes,
        skip: Option<UserId>,
    ) {
        if let Some(home) = self.state.borrow().homes.live.get(&conversation) {
            home.deliver(&self.app.bus, conversation, &frame, skip);
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
