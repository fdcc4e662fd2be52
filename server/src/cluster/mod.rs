//! The cluster: several nodes on one database and one Redis (`--redis-url`). Absent,
//! the server is one node and nothing here runs.
//!
//! Positions need no coordination between nodes: every node commits its own clients'
//! events, and the database assigns each its position under the conversation's row
//! lock, so there is one order whoever writes. What nodes share through Redis:
//!
//! - live events: each committed event is published once, as the frame the publisher
//!   encoded, on the conversation's channel (`wire`); a node subscribes only to the
//!   conversations it has connections in, and its homes put remote events in position
//!   order with their own, reading any gap back from the store;
//! - frames that are not stream events (typing, presence, joined/left) and removals;
//! - presence (`presence`): who is connected on which live node, each node's
//!   heartbeat, and the sweep of a dead node's users;
//! - each user's event budget (`rate`), leased to shards a few tokens at a time.
//!
//! Everything here runs on the store runtime (tokio), never on a shard: shards hand
//! work over through unbounded queues and hear back through the bus. When Redis is
//! away, nodes keep serving their own connections; when it returns, they subscribe
//! again and read every open conversation's stream back from the store from where
//! they stood, so no committed event is missed and none is delivered twice (frames that
//! are not stream events, such as typing, are not replayed; removals are resent).

mod membership;
mod messages;
mod presence;
mod rate;
mod tasks;
pub mod wire;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::auth::Revocations;
use crate::bus::{Bus, Remote, Roster};
use crate::config::Config;
use crate::ids::{ConversationId, UserId};
pub use messages::{Announcement, Change};
use messages::{Health, Outbound, PresenceOp, Subscription};
use presence::Presence;
use rate::Budget;
use wire::NodeId;

/// This node's handle on the cluster; shared by every shard.
pub struct Cluster {
    ctx: tasks::Context,
    subscriptions: mpsc::UnboundedSender<Subscription>,
    presence: mpsc::UnboundedSender<PresenceOp>,
    budget: Arc<Budget>,
    conn: redis::aio::ConnectionManager,
    runtime: tokio::runtime::Handle,
    /// Stopped before leaving, so it cannot put the node back in the set.
    heartbeat: tokio::task::AbortHandle,
}

/// A Redis URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct ClusterError(#[from] redis::RedisError);

impl Cluster {
    /// Joins the cluster of `--redis-url`: starts the publisher, the subscriber, the
    /// presence worker and the heartbeat on `runtime`. Redis need not be up yet.
    pub fn start(
        config: &Config,
        url: &str,
        bus: Arc<Bus>,
        revocations: Arc<Revocations>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, ClusterError> {
        let client = redis::Client::open(url)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = {
            let _inside = runtime.enter();
            redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?
        };
        let node = NodeId::random();
        let keys = Arc::new(Presence::new(&config.redis_prefix));
        let health = Arc::new(Health::default());
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let (subscriptions, subscriptions_rx) = mpsc::unbounded_channel();
        let (presence, presence_rx) = mpsc::unbounded_channel();
        let ctx = tasks::Context {
            node,
            keys,
            ttl: config.node_ttl,
            bus,
            revocations,
            health,
            outbound,
            list_limit: config.presence_list_limit,
            interval: Duration::from_millis(config.presence_interval_ms),
        };
        runtime.spawn(tasks::publish(ctx.clone(), conn.clone(), outbound_rx));
        runtime.spawn(tasks::subscribe(ctx.clone(), client, subscriptions_rx));
        runtime.spawn(membership::presence(ctx.clone(), conn.clone(), presence_rx));
        let heartbeat = runtime
            .spawn(membership::heartbeat(ctx.clone(), conn.clone()))
            .abort_handle();
        tracing::info!(%node, prefix = %config.redis_prefix, "joining the cluster");
        Ok(Self {
            ctx,
            subscriptions,
            presence,
            budget: Arc::new(Budget::new(
                &config.redis_prefix,
                config.ws_rate_per_second,
                config.ws_rate_burst,
            )),
            conn,
            runtime: runtime.clone(),
            heartbeat,
        })
    }

    /// Leases tokens of `user`'s event budget, shared by every node: how many were
    /// granted (0: the budget is spent), or `None` when Redis did not answer.
    pub fn lease(&self, user: UserId) -> impl Future<Output = Option<u32>> + 'static {
        let (granted, answer) = futures_channel::oneshot::channel();
        let budget = Arc::clone(&self.budget);
        let mut conn = self.conn.clone();
        self.runtime.spawn(async move {
            let _ = granted.send(budget.take(&mut conn, user).await.ok());
        });
        async move { answer.await.ok().flatten() }
    }

    /// Up to `limit` users connected to the conversation on any node who arrived after
    /// the cursor `after`, in arrival order, and how many are connected; `None` when
    /// Redis did not answer.
    pub fn roster(
        &self,
        conversation: ConversationId,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Option<Roster>> + 'static {
        let (read, answer) = futures_channel::oneshot::channel();
        let keys = Arc::clone(&self.ctx.keys);
        let mut conn = self.conn.clone();
        self.runtime.spawn(async move {
            let _ = read.send(
                keys.roster(&mut conn, conversation, after, limit)
                    .await
                    .ok(),
            );
        });
        async move { answer.await.ok().flatten() }
    }

    /// Sends `msg` to the other nodes with connections in the conversation.
    pub fn publish(&self, conversation: ConversationId, msg: &Remote) {
        self.ctx.publish(conversation, msg);
    }

    /// Tells every other node's user streams of `users` that they were added to the
    /// conversation (`frame`: its `conversation` event).
    pub fn added(&self, conversation: ConversationId, users: &[UserId], frame: &[u8]) {
        let payload = wire::encode_added(self.ctx.node, conversation, users, frame);
        let _ = self.ctx.outbound.send(Outbound::Inbox(payload));
    }

    /// Tells every other node that some of a user's tokens no longer count (kept
    /// through an outage until Redis answers).
    pub fn revoked(&self, revoked: &crate::auth::Revoked) {
        let payload = wire::encode_revoked(self.ctx.node, revoked);
        let _ = self.ctx.outbound.send(Outbound::Inbox(payload));
    }

    /// This node has connections in the conversation: hear what the others say. Once
    /// subscribed, the conversation's home is told to read the stream back (`Resync`)
    /// for what was published before.
    pub fn subscribe(&self, conversation: ConversationId) {
        let _ = self
            .subscriptions
            .send(Subscription::Subscribe(conversation));
    }

    pub fn unsubscribe(&self, conversation: ConversationId) {
        let _ = self
            .subscriptions
            .send(Subscription::Unsubscribe(conversation));
    }

    /// Records a presence change and announces it, in the order given.
    pub fn announce(&self, announcement: Announcement) {
        let _ = self.presence.send(PresenceOp::Announce(announcement));
    }

    /// Whether every link to Redis works (`/ready` says `degraded` otherwise).
    pub fn is_healthy(&self) -> bool {
        let h = &self.ctx.health;
        h.subscriber.load(Ordering::Relaxed) && h.heartbeat.load(Ordering::Relaxed)
    }

    /// Shutdown, after the shards are gone: records the last presence changes, takes
    /// this node's users out of presence, leaves the node set, and sends what is still
    /// queued, within `grace`.
    pub async fn leave(&self, grace: Duration) {
        self.heartbeat.abort();
        let (done, stopped) = oneshot::channel();
        let _ = self.presence.send(PresenceOp::Stop(done));
        let _ = tokio::time::timeout(grace, stopped).await;
        let (done, flushed) = oneshot::channel();
        let _ = self.ctx.outbound.send(Outbound::Flush(done));
        let _ = tokio::time::timeout(grace, flushed).await;
    }
}
