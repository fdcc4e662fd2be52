//! The hub of one shard: two roles, each owning its state, and the dispatch of the
//! bus's messages between them.
//!
//! - The registry (`registry`): this shard's WebSocket connections (`conn`), their
//!   rate limits, delivery into their queues, the replay of a resuming
//!   connection's missed events (`replay`), and the heartbeat's visits.
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
use crate::bus::{Remote, ShardMsg};
use crate::ids::{ConversationId, UserId};
use crate::metrics::ShardMetrics;
pub use admit::{Admitted, Refused, Resume};
use home::Homes;
pub use registry::Registry;

pub struct Hub {
    app: Arc<App>,
    /// This shard's connections.
    pub registry: Registry,
    /// The homes of the conversations hashed to this shard.
    homes: Rc<Homes>,
}

impl Hub {
    pub fn new(shard: usize, app: Arc<App>, metrics: Rc<ShardMetrics>) -> Self {
        Self {
            registry: Registry::new(shard, Arc::clone(&app), metrics),
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
                skip,
            } => self.registry.deliver(conversation, &frame, skip),
            ShardMsg::Direct { conn, frame } => self.registry.direct(conn, frame),
            ShardMsg::Own { conn, frame } => self.registry.own(conn, &frame),
            ShardMsg::Revoked {
                conversation,
                user,
                conn,
            } => self.registry.revoked(conversation, user, conn),
            ShardMsg::Joined { conn, seq } => self.registry.joined(conn, seq),
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
            ShardMsg::Committed {
                conversation,
                actor,
                message,
                result,
            } => self.homes.committed(conversation, actor, message, result),
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
