//! The cluster's traffic, two tasks on the store runtime (presence and heartbeats are
//! in `membership`):
//!
//! - `publish`: sends queued payloads in pipelines, in the order queued; what could
//!   not be sent is owed to the other nodes once Redis answers again (a `Resync` hint
//!   per conversation, every removal itself), tried every second until it goes.
//! - `subscribe`: one pub/sub connection, subscribed to the conversations this node
//!   has connections in, and to the inbox (users added to conversations, for user
//!   streams anywhere), pinged so a dead one is noticed; hands what arrives to each
//!   conversation's home (the inbox to every shard); reconnects and subscribes again
//!   after an outage, then has every home resync.
//!
//! Neither ever blocks a shard; shards hear back only through the bus.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::messages::{Health, Outbound, Subscription};
use super::presence::Presence;
use super::wire::{self, Inbox, NodeId};
use crate::auth::Revocations;
use crate::bus::{Bus, Remote, ShardMsg};
use crate::ids::{ConversationId, UserId};

/// Most payloads sent in one pipeline.
const PIPELINE: usize = 1024;
/// Longest wait between attempts to reach Redis again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often what could not be published is tried again while nothing else is sent.
const RETRY: Duration = Duration::from_secs(1);

/// What every task needs.
#[derive(Clone)]
pub(super) struct Context {
    pub node: NodeId,
    pub keys: Arc<Presence>,
    pub ttl: Duration,
    pub bus: Arc<Bus>,
    /// The tokens that no longer count, which other nodes' revocations update.
    pub revocations: Arc<Revocations>,
    pub health: Arc<Health>,
    pub outbound: mpsc::UnboundedSender<Outbound>,
    /// Within this many users a conversation's announcements carry the list.
    pub list_limit: usize,
    /// Above it, the shortest time between two announcements of one conversation.
    pub interval: Duration,
}

impl Context {
    /// How often a live link proves itself: the heartbeat beats and the subscription is
    /// pinged five times per node TTL.
    pub fn beat(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_millis(50))
    }

    /// Adds `PUBLISH payload` on the conversation's channel to `pipe`.
    fn publish_into(
        &self,
        pipe: &mut redis::Pipeline,
        conversation: ConversationId,
        payload: &[u8],
    ) {
        pipe.cmd("PUBLISH")
            .arg(self.keys.channel(conversation))
            .arg(payload)
            .ignore();
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Queues `msg` for the other nodes with connections in the conversation.
    pub fn publish(&self, conversation: ConversationId, msg: &Remote) {
        let payload = wire::encode(self.node, msg);
        let _ = self.outbound.send(Outbound::Publish {
            conversation,
            payload,
        });
    }

    /// Delivers `msg` to this node's connections in the conversation (its home) and
    /// publishes it to the others.
    pub fn everywhere(&self, conversation: ConversationId, msg: Remote) {
        self.publish(conversation, &msg);
        self.local(conversation, msg);
    }

    pub fn local(&self, conversation: ConversationId, msg: Remote) {
        self.bus.post(
            self.bus.home_of(conversation),
            ShardMsg::Remote { conversation, msg },
        );
    }
}

pub(super) async fn publish(
    ctx: Context,
    mut conn: ConnectionManager,
    mut queue: mpsc::UnboundedReceiver<Outbound>,
) {
    let mut lost = Lost::default();
    let mut batch = Vec::new();
    loop {
        let received = if lost.is_empty() {
            queue.recv_many(&mut batch, PIPELINE).await
        } else {
            // A quiet node still owes the others its hints and removals.
            tokio::select! {
                n = queue.recv_many(&mut batch, PIPELINE) => n,
                () = tokio::time::sleep(RETRY) => {
                    lost.resend(&ctx, &mut conn).await;
                    continue;
                }
            }
        };
        if received == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        let mut inbox = Vec::new();
        let mut flushes = Vec::new();
        for item in batch.drain(..) {
            match item {
                Outbound::Publish {
                    conversation,
                    payload,
                } => {
                    ctx.publish_into(&mut pipe, conversation, &payload);
                    sent.push((conversation, payload));
                }
                Outbound::Inbox(payload) => {
                    pipe.cmd("PUBLISH")
                        .arg(ctx.keys.inbox())
                        .arg(&payload)
                        .ignore();
                    inbox.push(payload);
                }
                Outbound::Flush(done) => flushes.push(done),
            }
        }
        if !sent.is_empty() || !inbox.is_empty() {
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => lost.resend(&ctx, &mut conn).await,
                Err(e) => {
                    tracing::debug!(error = %e, "publish failed");
                    // What queued up meanwhile would fail the same way: it is taken
                    // now, so an outage costs no memory.
                    while let Ok(item) = queue.try_recv() {
                        match item {
                            Outbound::Publish {
                                conversation,
                                payload,
                            } => sent.push((conversation, payload)),
                            Outbound::Flush(done) => flushes.push(done),
                            Outbound::Inbox(payload) => inbox.push(payload),
                        }
                    }
                    for (conversation, payload) in sent {
                        lost.add(conversation, payload);
                    }
                    for payload in inbox {
                        lost.add_inbox(payload);
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// What could not be published, owed to the other nodes once Redis answers: a hint
/// per conversation to read its stream back from the store (events and frames are not
/// kept), and every removal itself, so no removed user keeps a socket anywhere.
#[derive(Default)]
struct Lost {
    conversations: HashSet<ConversationId>,
    removals: Vec<(ConversationId, Vec<u8>)>,
    /// Ended sessions (inbox payloads): no token of one may go on working anywhere.
    revocations: Vec<Vec<u8>>,
}

impl Lost {
    fn is_empty(&self) -> bool {
        self.conversations.is_empty() && self.removals.is_empty() && self.revocations.is_empty()
    }

    /// An inbox payload that did not go out: kept when it is a revocation (news of an
    /// addition is not kept; the conversation list shows it).
    fn add_inbox(&mut self, payload: Vec<u8>) {
        if wire::is_revocation(&payload) {
            self.revocations.push(payload);
        }
    }

    fn add(&mut self, conversation: ConversationId, payload: Vec<u8>) {
        if wire::is_removal(&payload) {
            self.removals.push((conversation, payload));
        } else {
            self.conversations.insert(conversation);
        }
    }

    async fn resend(&mut self, ctx: &Context, conn: &mut ConnectionManager) {
        if self.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let hint = wire::encode(ctx.node, &Remote::Resync);
        for &conversation in &self.conversations {
            ctx.publish_into(&mut pipe, conversation, &hint);
        }
        for (conversation, payload) in &self.removals {
            ctx.publish_into(&mut pipe, *conversation, payload);
        }
        for payload in &self.revocations {
            pipe.cmd("PUBLISH")
                .arg(ctx.keys.inbox())
                .arg(payload)
                .ignore();
        }
        if pipe.query_async::<()>(conn).await.is_ok() {
            self.conversations.clear();
            self.removals.clear();
            self.revocations.clear();
        }
    }
}

pub(super) async fn subscribe(
    ctx: Context,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Subscription>,
) {
    let mut wanted: HashSet<ConversationId> = HashSet::new();
    let every = ctx.beat();
    // How long to wait before the next attempt: none at first, a short pause after a
    // working subscription was lost, doubling while attempts fail.
    let mut backoff: Option<Duration> = None;
    loop {
        if let Some(wait) = backoff {
            Health::set(&ctx.health.subscriber, false, "subscriber");
            while let Ok(cmd) = commands.try_recv() {
                apply(&mut wanted, cmd);
            }
            tokio::time::sleep(wait).await;
        }
        backoff = Some(backoff.map_or(Duration::from_millis(100), |b| (b * 2).min(MAX_BACKOFF)));
        let connected = tokio::time::timeout(MAX_BACKOFF, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            continue;
        };
        let (mut sink, mut messages) = pubsub.split();
        let mut channels: Vec<String> = wanted.iter().map(|&c| ctx.keys.channel(c)).collect();
        channels.push(ctx.keys.inbox());
        if !answered(sink.subscribe(&channels)).await {
            continue;
        }
        Health::set(&ctx.health.subscriber, true, "subscriber");
        // Whatever was published while this node was not listening is in the store.
        for &conversation in &wanted {
            ctx.local(conversation, Remote::Resync);
        }
        // A connection that died without closing (a partition) delivers nothing and
        // never ends: pinging it is the only way to tell.
        let mut probe = tokio::time::interval(every);
        loop {
            let alive = tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    match cmd {
                        Subscription::Subscribe(c) if wanted.insert(c) => {
                            let subscribed = answered(sink.subscribe(ctx.keys.channel(c))).await;
                            // Published before the subscription took: in the store.
                            ctx.local(c, Remote::Resync);
                            subscribed
                        }
                        Subscription::Unsubscribe(c) if wanted.remove(&c) => {
                            answered(sink.unsubscribe(ctx.keys.channel(c))).await
                        }
                        _ => true,
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    dispatch(&ctx, msg.get_channel_name().as_bytes(), msg.get_payload_bytes());
                    true
                }
                _ = probe.tick() => answered(sink.ping::<redis::Value>()).await,
            };
            if !alive {
                break;
            }
        }
        tracing::debug!("subscription lost; reconnecting");
        backoff = Some(Duration::from_millis(100));
    }
}

/// Whether a call on the subscription connection was answered in time.
async fn answered<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> bool {
    matches!(tokio::time::timeout(MAX_BACKOFF, call).await, Ok(Ok(_)))
}

fn apply(wanted: &mut HashSet<ConversationId>, cmd: Subscription) {
    match cmd {
        Subscription::Subscribe(c) => wanted.insert(c),
        Subscription::Unsubscribe(c) => wanted.remove(&c),
    };
}

/// Hands a message from another node to the conversation's home, or an inbox
/// message to every shard.
fn dispatch(ctx: &Context, channel: &[u8], payload: &[u8]) {
    let Some(conversation) = ctx.keys.conversation_of(channel) else {
        if channel == ctx.keys.inbox().as_bytes() {
            match wire::decode_inbox(payload) {
                Some((origin, _)) if origin == ctx.node => {}
                Some((
                    _,
                    Inbox::Added {
                        conversation,
                        users,
                        frame,
                    },
                )) => {
                    let users: Arc<[UserId]> = users.into();
                    ctx.bus.broadcast(|| ShardMsg::Added {
                        conversation,
                        users: Arc::clone(&users),
                        frame: frame.clone(),
                    });
                }
                Some((_, Inbox::Revoked(r))) => {
                    // Recorded before any shard is told, as on the node that ended it.
                    ctx.revocations.record(&r);
                    ctx.bus
                        .broadcast(|| ShardMsg::TokensRevoked { user: r.user });
                }
                None => tracing::warn!("unreadable inbox message ignored"),
            }
        }
        return;
    };
    match wire::decode(payload) {
        Some((origin, _)) if origin == ctx.node => {}
        Some((_, msg)) => ctx.local(conversation, msg),
        None => tracing::warn!(%conversation, "unreadable cluster message ignored"),
    }
}
