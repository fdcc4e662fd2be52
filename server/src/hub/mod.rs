//! The hub of one shard: two roles, each owning its state, and the dispatch of the
//! bus's messages between them.
//!
//! - The registry (`registry`): this shard's WebSocket connections (`conn`), the
//!   conversations each carries (one, or a user stream's many), their rate limits,
//!   delivery into their queues, the replay of a resuming connection's missed events
//!   (`replay`), and the heartbeat's visits.
//! - The homes (`home`): for the conversations hashed to this shard, the single source
//!   of their delivery order and the one place that knows who is connected: presence,
//!   persisting what clients send, the stream in position order, and in a cluster what
//!   other nodes say.
//!
//! The roles never call each other: whatever one has to tell the other travels on the
//! bus, even on the same shard, so a message takes the same road wherever its home is.
//! What both sides share (`Admitted`, `Resume`, `Refused`) sits in the leaf `admit`;
//! no module of the hub imports from this one.
//!
//! Everything here runs on the shard's own thread; state sits in `RefCell`s that are
//! never borrowed across an await.

mod admit;
pub mod conn;
mod home;
mod registry;
mod render;
mod replay;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::auth::Revoked;
use crate::bus::{Audience, Remote, ShardMsg};
use bytes::Bytes;

use crate::ids::{ConversationId, Seq, UserId};
use crate::metrics::ShardMetrics;
pub use admit::{Admitted, Carried, Refused, Resume, StreamAdmission};
use home::Homes;
pub use registry::Registry;

pub struct Hub {
    app: Arc<App>,
    /// This shard's connections.
    pub registry: Rc<Registry>,
    /// The homes of the conversations hashed to this shard.
    homes: Rc<Homes>,
}

impl Hub {
    pub fn new(shard: usize, app: Arc<App>, metrics: Rc<ShardMetrics>) -> Self {
        Self {
            registry: Rc::new(Registry::new(shard, Arc::clone(&app), metrics)),
            homes: Homes::new(shard, Arc::clone(&app)),
            app,
        }
    }

    /// Hands one message from the bus to the role it is for. `Shutdown` is the
    /// shard's, not the hub's.
    pub fn handle(&self, msg: ShardMsg) {
        match msg {
            // To the registry: what reaches this shard's connections.
            ShardMsg::Deliver {
                conversation,
                frame,
                to,
            } => self.registry.deliver(conversation, &frame, to),
            ShardMsg::Direct { conn, frame } => self.registry.direct(conn, frame),
            ShardMsg::Own {
                conn,
                conversation,
                frame,
            } => self.registry.own(conn, conversation, &frame),
            ShardMsg::Revoked {
                conversation,
                user,
                conn,
            } => self.registry.revoked(conversation, user, conn),
            ShardMsg::Gone { conversation } => self.registry.gone(conversation),
            ShardMsg::TokensRevoked { user } => self.registry.tokens_revoked(user),
            ShardMsg::Joined {
                conn,
                conversation,
                seq,
            } => self.registry.joined(conn, conversation, seq),
            ShardMsg::Added {
                conversation,
                users,
                frame,
            } => self.registry.added(conversation, &users, frame),
            // To the homes: what happens in their conversations.
            ShardMsg::Home {
                conversation,
                actor,
                msg,
            } => self.homes.handle(conversation, actor, msg),
            ShardMsg::Revoke {
                conversation,
                user,
                at,
            } => self.homes.revoke(conversation, user, at),
            ShardMsg::Deleted { conversation, at } => self.homes.deleted(conversation, at),
            ShardMsg::Committed {
                conversation,
                actor,
                message,
                result,
            } => self.homes.committed(conversation, actor, message, result),
            ShardMsg::Marked {
                conversation,
                user,
                seq,
            } => self.homes.marked(conversation, user, seq),
            ShardMsg::Remote { conversation, msg } => self.homes.remote(conversation, msg),
            ShardMsg::Presence {
                conversation,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.homes.roster(conversation, after, limit));
            }
            ShardMsg::Rejoin => self.homes.rejoin(),
            ShardMsg::Shutdown => {}
        }
    }

    /// Tells the user streams of `users`, on every node, that they were added to the
    /// conversation (or it was created with them), with `frame` (its `conversation`
    /// event): they carry it from now on. Call after the change is committed.
    pub fn added(&self, conversation: ConversationId, users: Vec<UserId>, frame: Bytes) {
        let users: Arc<[UserId]> = users.into();
        if let Some(cluster) = &self.app.cluster {
            cluster.added(conversation, &users, &frame);
        }
        self.app.bus.broadcast(|| ShardMsg::Added {
            conversation,
            users: Arc::clone(&users),
            frame: frame.clone(),
        });
    }

    /// Tells `user`'s devices, and where cheap the other members, that their read
    /// marker in the conversation moved to `seq`. Call after it is committed.
    pub fn marked(&self, conversation: ConversationId, user: UserId, seq: Seq) {
        let home = self.app.bus.home_of(conversation);
        self.app.bus.post(
            home,
            ShardMsg::Marked {
                conversation,
                user,
                seq,
            },
        );
    }

    /// Sends `frame` (not a stream event: a change of the conversation, a role) to
    /// every socket in the conversation, on every node.
    pub fn tell(&self, conversation: ConversationId, frame: Bytes) {
        if let Some(cluster) = &self.app.cluster {
            cluster.publish(
                conversation,
                &Remote::Frame {
                    to: Audience::All,
                    frame: frame.clone(),
                },
            );
        }
        self.app.bus.broadcast(|| ShardMsg::Deliver {
            conversation,
            frame: frame.clone(),
            to: Audience::All,
        });
    }

    /// Some of a user's tokens no longer count (see `Revoked`): recorded here first,
    /// then every shard closes the sockets that live on one, and every other node
    /// does the same. Call after the store has recorded it.
    pub fn tokens_revoked(&self, revoked: Revoked) {
        let user = revoked.user;
        self.app.revocations.record(&revoked);
        self.app.bus.broadcast(|| ShardMsg::TokensRevoked { user });
        if let Some(cluster) = &self.app.cluster {
            cluster.revoked(&revoked);
        }
    }

    /// Tells the conversation's home, on every node, that it was deleted: its sockets
    /// are closed, user streams drop it. Call after the deletion is committed.
    pub fn deleted(&self, conversation: ConversationId) {
        if let Some(cluster) = &self.app.cluster {
            cluster.publish(conversation, &Remote::Deleted);
        }
        let home = self.app.bus.home_of(conversation);
        self.app.bus.post(
            home,
            ShardMsg::Deleted {
                conversation,
                at: Instant::now(),
            },
        );
    }

    /// Tells the conversation's home, on every node, that `user` was removed from it:
    /// their open sockets there are closed and nothing more reaches them or is taken
    /// from them. Call after the removal is committed.
    pub fn revoke(&self, conversation: ConversationId, user: UserId) {
        if let Some(cluster) = &self.app.cluster {
            cluster.publish(conversation, &Remote::Revoke { user });
        }
        let home = self.app.bus.home_of(conversation);
        self.app.bus.post(
            home,
            ShardMsg::Revoke {
                conversation,
                user,
                at: Instant::now(),
            },
        );
    }
}
