//! What travels between the cluster's handle (on the shards) and its tasks (on the
//! store runtime): presence changes to record and announce, payloads to publish,
//! subscriptions to take or drop, and the health the tasks report back. Plain types;
//! nothing here talks to Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::bus::ConnAddr;
use crate::ids::{ConversationId, Seq, UserId};

/// A change of presence for the cluster to record and, for joins and last leaves,
/// announce to the conversation on every node.
#[derive(Debug)]
pub struct Announcement {
    pub conversation: ConversationId,
    pub user: UserId,
    pub username: Arc<str>,
    pub change: Change,
    /// Who this node alone has connected (the list within the presence list limit,
    /// and the count): what is announced while Redis is away.
    pub local_active: Option<Vec<UserId>>,
    pub local_count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A connection joined (`conn`, on this node); its stream is live from `seq`.
    Joined { seq: Seq, conn: ConnAddr },
    /// The user's last connection on this node left (or was removed).
    Left,
    /// Recorded again after this node's presence was lost; announced to nobody.
    Rejoined,
}

/// Whether each link to Redis works: the commands connection (publishing, presence
/// and heartbeats share it; the heartbeat checks it every fifth of the node TTL) and
/// the subscription.
#[derive(Default)]
pub(super) struct Health {
    pub(super) subscriber: AtomicBool,
    pub(super) heartbeat: AtomicBool,
}

impl Health {
    pub(super) fn set(flag: &AtomicBool, up: bool, what: &str) {
        if flag.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(link = what, "redis reachable");
            } else {
                tracing::warn!(
                    link = what,
                    "redis unreachable; serving this node's connections alone"
                );
            }
        }
    }
}

pub(super) enum Outbound {
    Publish {
        conversation: ConversationId,
        payload: Vec<u8>,
    },
    /// For every node's user streams (the inbox channel): users added to a
    /// conversation. Lost if Redis is away: the conversation list still shows it.
    Inbox(Vec<u8>),
    /// Answered once everything queued before it was sent (or given up).
    Flush(oneshot::Sender<()>),
}

pub(super) enum Subscription {
    Subscribe(ConversationId),
    Unsubscribe(ConversationId),
}

pub(super) enum PresenceOp {
    Announce(Announcement),
    /// Shutdown: leave the node set once every earlier change is recorded.
    Stop(oneshot::Sender<()>),
}
