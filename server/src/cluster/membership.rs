//! Who is where, two tasks on the store runtime (the scripts and keys are in
//! `presence`):
//!
//! - `presence`: records this node's joins and leaves in Redis, one at a time in the
//!   order they came, and announces them on every node. A leave Redis did not record
//!   is retried every second until it is, so nobody stays listed for ever; at
//!   shutdown it takes the whole node out (`leave_cluster`).
//! - `heartbeat`: keeps this node in the live set, has the shards record their
//!   presence again when it was lost, and sweeps the nodes that stopped beating.
//!
//! Neither ever blocks a shard; shards hear back only through the bus.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::messages::{Announcement, Change, Health, PresenceOp};
use super::presence::users;
use super::tasks::Context;
use crate::bus::{Remote, ShardMsg};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{Membership, ServerEvent};

/// How often a leave Redis did not record is tried again.
const RETRY: Duration = Duration::from_secs(1);

pub(super) async fn presence(
    ctx: Context,
    mut conn: ConnectionManager,
    mut ops: mpsc::UnboundedReceiver<PresenceOp>,
) {
    let node = ctx.node.to_string();
    let mut unrecorded: Vec<Announcement> = Vec::new();
    loop {
        let op = if unrecorded.is_empty() {
            ops.recv().await
        } else {
            tokio::select! {
                op = ops.recv() => op,
                () = tokio::time::sleep(RETRY) => {
                    retry_leaves(&ctx, &mut conn, &node, &mut unrecorded).await;
                    continue;
                }
            }
        };
        let a = match op {
            Some(PresenceOp::Announce(a)) => a,
            Some(PresenceOp::Stop(done)) => {
                leave_cluster(&ctx, &mut conn, &node).await;
                let _ = done.send(());
                continue;
            }
            None => return,
        };
        if a.change != Change::Left {
            // Back before their leave was recorded: it is owed no more.
            unrecorded.retain(|u| (u.conversation, u.user) != (a.conversation, a.user));
        }
        match record(&ctx, &mut conn, &node, &a).await {
            Ok((elsewhere, active)) => {
                if let Some(frame) = announcement(&a, elsewhere, &active) {
                    ctx.everywhere(a.conversation, Remote::Frame { skip: None, frame });
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "presence not recorded");
                // This node's own connections still hear of it, with its own list.
                if let Some(frame) = announcement(&a, false, &a.local_active) {
                    ctx.local(a.conversation, Remote::Frame { skip: None, frame });
                }
                if a.change == Change::Left {
                    unrecorded.push(a);
                }
            }
        }
    }
}

/// Records one change in Redis: whether the user is still connected on another node
/// (for a leave), and who is connected now.
async fn record(
    ctx: &Context,
    conn: &mut ConnectionManager,
    node: &str,
    a: &Announcement,
) -> redis::RedisResult<(bool, Vec<UserId>)> {
    let keys = &ctx.keys;
    let script = match a.change {
        Change::Joined(_) | Change::Rejoined => &keys.join,
        Change::Left => &keys.leave,
    };
    let mut call = script.prepare_invoke();
    call.key(keys.presence(a.conversation))
        .key(keys.nodes())
        .key(keys.node_conversations(node))
        .arg(a.user.to_string())
        .arg(node)
        .arg(ctx.ttl_ms())
        .arg(a.conversation.to_string());
    if a.change != Change::Left {
        call.arg(&*a.username);
    }
    let out: Vec<String> = call.invoke_async(conn).await?;
    Ok(match a.change {
        Change::Left => {
            let elsewhere = out.first().is_some_and(|s| s == "1");
            (elsewhere, users(out.get(1..).unwrap_or_default()))
        }
        Change::Joined(_) | Change::Rejoined => (false, users(&out)),
    })
}

/// The `system` event a change is announced with, if any.
fn announcement(a: &Announcement, elsewhere: bool, active: &[UserId]) -> Option<Bytes> {
    let frame = |change, seq| ServerEvent::membership(change, a.user, &a.username, active, seq);
    match a.change {
        Change::Joined(seq) => Some(frame(Membership::Joined, Some(seq))),
        // A user with a tab open on another node has not left.
        Change::Left => (!elsewhere).then(|| frame(Membership::Left, None)),
        Change::Rejoined => None,
    }
}

/// Records the leaves Redis missed; the other nodes hear of those that were last
/// (this node's connections heard when they happened).
async fn retry_leaves(
    ctx: &Context,
    conn: &mut ConnectionManager,
    node: &str,
    unrecorded: &mut Vec<Announcement>,
) {
    let mut still = Vec::new();
    for a in unrecorded.drain(..) {
        match record(ctx, conn, node, &a).await {
            Ok((elsewhere, active)) => {
                if let Some(frame) = announcement(&a, elsewhere, &active) {
                    ctx.publish(a.conversation, &Remote::Frame { skip: None, frame });
                }
            }
            Err(_) => still.push(a),
        }
    }
    *unrecorded = still;
}

/// Shutdown, once the shards are gone: tells the others to read this node's
/// conversations back (the writer's last commits were not published), takes its users
/// out of presence (announcing those who left) and leaves the node set.
async fn leave_cluster(ctx: &Context, conn: &mut ConnectionManager, node: &str) {
    for conversation in node_conversations(ctx, conn, node).await {
        ctx.publish(conversation, &Remote::Resync);
    }
    sweep(ctx, conn, node, node).await;
    let _: Result<(), _> = redis::cmd("ZREM")
        .arg(ctx.keys.nodes())
        .arg(node)
        .query_async(conn)
        .await;
}

pub(super) async fn heartbeat(ctx: Context, mut conn: ConnectionManager) {
    let node = ctx.node.to_string();
    let every = ctx.beat();
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
                // Presumed dead, Redis came back empty, or cut off for a while: our
                // presence may be gone and events may have been missed.
                if !first && (added || failed) {
                    ctx.bus.broadcast(|| ShardMsg::Rejoin);
                }
                for dead in out.iter().skip(1) {
                    // Whoever takes a node out of the set sweeps it, once.
                    let claimed: Result<u32, _> = redis::cmd("ZREM")
                        .arg(ctx.keys.nodes())
                        .arg(dead)
                        .query_async(&mut conn)
                        .await;
                    if claimed == Ok(1) {
                        tracing::info!(node = %dead, "node gone; sweeping its presence");
                        sweep(&ctx, &mut conn, &node, dead).await;
                    }
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

/// The conversations a node has presence in.
async fn node_conversations(
    ctx: &Context,
    conn: &mut ConnectionManager,
    node: &str,
) -> Vec<ConversationId> {
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(ctx.keys.node_conversations(node))
        .query_async(conn)
        .await
        .unwrap_or_default();
    members.iter().filter_map(|c| c.parse().ok()).collect()
}

/// Removes `gone`'s presence everywhere and announces, on every node, that its users
/// left (those connected on no other node).
async fn sweep(ctx: &Context, conn: &mut ConnectionManager, sweeper: &str, gone: &str) {
    for conversation in node_conversations(ctx, conn, gone).await {
        let Ok(out) = ctx
            .keys
            .sweep
            .key(ctx.keys.presence(conversation))
            .key(ctx.keys.nodes())
            .arg(gone)
            .arg(ctx.ttl_ms())
            .arg(sweeper)
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
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(ctx.keys.node_conversations(gone))
        .query_async(conn)
        .await;
}
