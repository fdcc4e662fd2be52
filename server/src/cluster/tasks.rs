//! The cluster's four tasks, all on the store runtime:
//!
//! - `publish`: sends queued payloads in pipelines, in the order queued; what could
//!   not be sent is followed, once Redis answers again, by a `Resync` hint for its
//!   conversations, so the other nodes read them back from the store.
//! - `subscribe`: one pub/sub connection, subscribed to the conversations this node
//!   has connections in; hands what arrives to each conversation's home; reconnects
//!   and subscribes again after an outage, then has every home resync.
//! - `presence`: records joins and leaves in Redis, one at a time in the order they
//!   came, and announces them.
//! - `heartbeat`: keeps this node in the live set and sweeps the nodes that left it.
//!
//! None of them ever blocks a shard; shards hear back only through the bus.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::presence::{users, Presence};
use super::wire::{self, NodeId};
use super::{Announcement, Change, Health, Outbound, PresenceOp, Subscription};
use crate::bus::{Bus, Remote, ShardMsg};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{Membership, ServerEvent};

/// Most payloads sent in one pipeline.
const PIPELINE: usize = 1024;
/// Longest wait between attempts to reach Redis again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What every task needs.
#[derive(Clone)]
pub(super) struct Context {
    pub node: NodeId,
    pub keys: Arc<Presence>,
    pub ttl: Duration,
    pub bus: Arc<Bus>,
    pub health: Arc<Health>,
    pub outbound: mpsc::UnboundedSender<Outbound>,
}

impl Context {
    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Delivers `msg` to this node's connections in the conversation (its home) and
    /// publishes it to the others.
    fn everywhere(&self, conversation: ConversationId, msg: Remote) {
        let payload = wire::encode(self.node, &msg);
        let _ = self.outbound.send(Outbound::Publish {
            conversation,
            payload,
        });
        self.local(conversation, msg);
    }

    fn local(&self, conversation: ConversationId, msg: Remote) {
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
    let mut lost: HashSet<ConversationId> = HashSet::new();
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, PIPELINE).await > 0 {
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        let mut flushes = Vec::new();
        for item in batch.drain(..) {
            match item {
                Outbound::Publish {
                    conversation,
                    payload,
                } => {
                    pipe.cmd("PUBLISH")
                        .arg(ctx.keys.channel(conversation))
                        .arg(payload)
                        .ignore();
                    sent.push(conversation);
                }
                Outbound::Flush(done) => flushes.push(done),
            }
        }
        if !sent.is_empty() {
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    if !lost.is_empty() && resync_hints(&ctx, &mut conn, &lost).await {
                        lost.clear();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publish failed");
                    lost.extend(sent);
                    // What queued up meanwhile would fail the same way: drop it now
                    // (its conversations get a resync hint later), so an outage
                    // costs no memory.
                    while let Ok(item) = queue.try_recv() {
                        match item {
                            Outbound::Publish { conversation, .. } => {
                                lost.insert(conversation);
                            }
                            Outbound::Flush(done) => flushes.push(done),
                        }
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Tells the other nodes to read these conversations back from the store: what this
/// node published into them may not have arrived.
async fn resync_hints(
    ctx: &Context,
    conn: &mut ConnectionManager,
    conversations: &HashSet<ConversationId>,
) -> bool {
    let mut pipe = redis::pipe();
    for &conversation in conversations {
        pipe.cmd("PUBLISH")
            .arg(ctx.keys.channel(conversation))
            .arg(wire::encode(ctx.node, &Remote::Resync))
            .ignore();
    }
    pipe.query_async::<()>(conn).await.is_ok()
}

pub(super) async fn subscribe(
    ctx: Context,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Subscription>,
) {
    let mut wanted: HashSet<ConversationId> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::time::timeout(MAX_BACKOFF, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            Health::set(&ctx.health.subscriber, false, "subscriber");
            while let Ok(cmd) = commands.try_recv() {
                apply(&mut wanted, cmd);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        let (mut sink, mut messages) = pubsub.split();
        let channels: Vec<String> = wanted.iter().map(|&c| ctx.keys.channel(c)).collect();
        if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(100);
        Health::set(&ctx.health.subscriber, true, "subscriber");
        // Whatever was published while this node was not listening is in the store.
        for &conversation in &wanted {
            ctx.local(conversation, Remote::Resync);
        }
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let result = match cmd {
                        Subscription::Subscribe(c) if wanted.insert(c) => {
                            let r = sink.subscribe(ctx.keys.channel(c)).await;
                            // Published before the subscription took: in the store.
                            ctx.local(c, Remote::Resync);
                            r
                        }
                        Subscription::Unsubscribe(c) if wanted.remove(&c) => {
                            sink.unsubscribe(ctx.keys.channel(c)).await
                        }
                        _ => Ok(()),
                    };
                    if result.is_err() {
                        break;
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    dispatch(&ctx, msg.get_channel_name().as_bytes(), msg.get_payload_bytes());
                }
            }
        }
        Health::set(&ctx.health.subscriber, false, "subscriber");
    }
}

fn apply(wanted: &mut HashSet<ConversationId>, cmd: Subscription) {
    match cmd {
        Subscription::Subscribe(c) => wanted.insert(c),
        Subscription::Unsubscribe(c) => wanted.remove(&c),
    };
}

/// Hands a message from another node to the conversation's home.
fn dispatch(ctx: &Context, channel: &[u8], payload: &[u8]) {
    let Some(conversation) = ctx.keys.conversation_of(channel) else {
        return;
    };
    match wire::decode(payload) {
        Some((origin, _)) if origin == ctx.node => {}
        Some((_, msg)) => ctx.local(conversation, msg),
        None => tracing::warn!(%conversation, "unreadable cluster message ignored"),
    }
}

pub(super) async fn presence(
    ctx: Context,
    mut conn: ConnectionManager,
    mut ops: mpsc::UnboundedReceiver<PresenceOp>,
) {
    let node = ctx.node.to_string();
    while let Some(op) = ops.recv().await {
        let a = match op {
            PresenceOp::Announce(a) => a,
            PresenceOp::Stop(done) => {
                let _: Result<(), _> = redis::cmd("ZREM")
                    .arg(ctx.keys.nodes())
                    .arg(&node)
                    .query_async(&mut conn)
                    .await;
                let _ = done.send(());
                continue;
            }
        };
        if let Some(frame) = record(&ctx, &mut conn, &node, &a).await {
            ctx.everywhere(a.conversation, Remote::Frame { skip: None, frame });
        }
    }
}

/// Records one change in Redis; the `system` event to announce, if any. Without
/// Redis, joins and leaves are announced with this node's own list.
async fn record(
    ctx: &Context,
    conn: &mut ConnectionManager,
    node: &str,
    a: &Announcement,
) -> Option<Bytes> {
    let keys = &ctx.keys;
    let presence = keys.presence(a.conversation);
    let convs = keys.node_conversations(node);
    let conversation = a.conversation.to_string();
    let user = a.user.to_string();
    let answer = match a.change {
        Change::Joined(_) | Change::Rejoined => keys
            .join
            .key(&presence)
            .key(keys.nodes())
            .key(&convs)
            .arg(&user)
            .arg(node)
            .arg(ctx.ttl_ms())
            .arg(&conversation)
            .arg(&*a.username)
            .invoke_async::<Vec<String>>(conn)
            .await
            .map(|active| (false, users(&active))),
        Change::Left => keys
            .leave
            .key(&presence)
            .key(keys.nodes())
            .key(&convs)
            .arg(&user)
            .arg(node)
            .arg(ctx.ttl_ms())
            .arg(&conversation)
            .invoke_async::<Vec<String>>(conn)
            .await
            .map(|out| {
                let elsewhere = out.first().is_some_and(|s| s == "1");
                (elsewhere, users(out.get(1..).unwrap_or_default()))
            }),
    };
    let (elsewhere, active) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            tracing::debug!(error = %e, "presence not recorded");
            (false, a.local_active.clone())
        }
    };
    let frame = |change, seq| ServerEvent::membership(change, a.user, &a.username, &active, seq);
    match a.change {
        Change::Joined(seq) => Some(frame(Membership::Joined, Some(seq))),
        // A user with a tab open on another node has not left.
        Change::Left => (!elsewhere).then(|| frame(Membership::Left, None)),
        Change::Rejoined => None,
    }
}

pub(super) async fn heartbeat(ctx: Context, mut conn: ConnectionManager) {
    let node = ctx.node.to_string();
    let every = (ctx.ttl / 5).max(Duration::from_millis(50));
    let mut first = true;
    let mut failed = false;
    loop {
        let beat = ctx
            .keys
            .heartbeat
            .key(ctx.keys.nodes())
            .arg(&node)
            .arg(ctx.ttl_ms())
            .invoke_async::<Vec<String>>(&mut conn)
            .await;
        match beat {
            Ok(out) => {
                Health::set(&ctx.health.heartbeat, true, "heartbeat");
                let added = out.first().is_some_and(|s| s == "1");
                // Presumed dead, or Redis came back empty: our presence is gone.
                if !first && (added || failed) {
                    ctx.bus.broadcast(|| ShardMsg::Rejoin);
                }
                for dead in out.iter().skip(1) {
                    sweep(&ctx, &mut conn, &node, dead).await;
                }
                failed = false;
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                Health::set(&ctx.health.heartbeat, false, "heartbeat");
                failed = true;
            }
        }
        first = false;
        tokio::time::sleep(every).await;
    }
}

/// A node stopped beating: whichever node removes it from the set first removes its
/// presence and announces, on every node, that its users left.
async fn sweep(ctx: &Context, conn: &mut ConnectionManager, node: &str, dead: &str) {
    let claimed: Result<u32, _> = redis::cmd("ZREM")
        .arg(ctx.keys.nodes())
        .arg(dead)
        .query_async(conn)
        .await;
    if claimed != Ok(1) {
        return;
    }
    let convs_key = ctx.keys.node_conversations(dead);
    let Ok(convs) = redis::cmd("SMEMBERS")
        .arg(&convs_key)
        .query_async::<Vec<String>>(conn)
        .await
    else {
        return;
    };
    tracing::info!(
        node = dead,
        conversations = convs.len(),
        "node gone; sweeping its presence"
    );
    for conversation in convs
        .iter()
        .filter_map(|c| c.parse::<ConversationId>().ok())
    {
        let Ok(out) = ctx
            .keys
            .sweep
            .key(ctx.keys.presence(conversation))
            .key(ctx.keys.nodes())
            .arg(dead)
            .arg(ctx.ttl_ms())
            .arg(node)
            .invoke_async::<Vec<String>>(conn)
            .await
        else {
            continue;
        };
        let live = out
            .first()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let Some(active) = out.get(1..1 + live) else {
            continue;
        };
        let active = users(active);
        for pair in out[1 + live..].chunks_exact(2) {
            let Ok(user) = pair[0].parse::<UserId>() else {
                continue;
            };
            let frame = ServerEvent::membership(Membership::Left, user, &pair[1], &active, None);
            ctx.everywhere(conversation, Remote::Frame { skip: None, frame });
        }
    }
    let _: Result<(), _> = redis::cmd("DEL").arg(&convs_key).query_async(conn).await;
}
