//! Who is where, two tasks on the store runtime (the scripts and keys are in
//! `presence`):
//!
//! - `presence`: records this node's joins and leaves in Redis, one at a time in the
//!   order they came, and announces them on every node (above the presence list
//!   limit, at most once per interval per conversation: `roster`). A leave Redis did not record
//!   is retried every second until it is, so nobody stays listed for ever; at
//!   shutdown it takes the whole node out (`leave_cluster`).
//! - `heartbeat`: keeps this node in the live set, has the shards record their
//!   presence again when it was lost, and sweeps the nodes that stopped beating.
//!
//! Neither ever blocks a shard; shards hear back only through the bus.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::messages::{Announcement, Change, Health, PresenceOp};
use super::presence::users;
use super::tasks::Context;
use crate::bus::{Audience, Remote, ShardMsg};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{Active, Membership, ServerEvent};
use crate::roster::{self, Coalescer, Noted, Summary};

/// How often a leave Redis did not record is tried again.
const RETRY: Duration = Duration::from_secs(1);

pub(super) async fn presence(
    ctx: Context,
    mut conn: ConnectionManager,
    mut ops: mpsc::UnboundedReceiver<PresenceOp>,
) {
    let node = ctx.node.to_string();
    let mut unrecorded: Vec<Announcement> = Vec::new();
    let mut held = Held::default();
    loop {
        let wake = held.next_flush();
        let op = tokio::select! {
            op = ops.recv() => op,
            () = tokio::time::sleep(RETRY), if !unrecorded.is_empty() => {
                retry_leaves(&ctx, &mut conn, &node, &mut unrecorded).await;
                continue;
            }
            () = sleep_until(wake), if wake.is_some() => {
                held.flush_due(&ctx, Instant::now());
                continue;
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
            Ok(told) => held.announce(&ctx, &a, told),
            Err(e) => {
                tracing::debug!(error = %e, "presence not recorded");
                // This node's own connections still hear of it, with its own roster.
                let active = Active::of(a.local_active.as_deref(), a.local_count);
                if let Some(frame) = frame_of(&a, active) {
                    ctx.local(
                        a.conversation,
                        Remote::Frame {
                            to: Audience::All,
                            frame,
                        },
                    );
                }
                if a.change == Change::Left {
                    unrecorded.push(a);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// What Redis said after recording a change: for a leave, whether the user is gone
/// from every node; who is connected now (the list within the limit) and how many.
struct Told {
    gone: bool,
    count: usize,
    listed: Option<Vec<UserId>>,
}

/// Records one change in Redis.
async fn record(
    ctx: &Context,
    conn: &mut ConnectionManager,
    node: &str,
    a: &Announcement,
) -> redis::RedisResult<Told> {
    let keys = &ctx.keys;
    let script = match a.change {
        Change::Joined { .. } | Change::Rejoined => &keys.join,
        Change::Left => &keys.leave,
    };
    let mut call = script.prepare_invoke();
    for key in keys.conversation_keys(a.conversation) {
        call.key(key);
    }
    call.key(keys.node_conversations(node))
        .arg(a.user.to_string())
        .arg(node)
        .arg(a.conversation.to_string());
    if a.change != Change::Left {
        call.arg(&*a.username);
    }
    call.arg(ctx.list_limit);
    let out: Vec<String> = call.invoke_async(conn).await?;
    let (gone, rest) = match a.change {
        Change::Left => (out.first().is_some_and(|s| s == "1"), out.get(1..)),
        Change::Joined { .. } | Change::Rejoined => (false, Some(&out[..])),
    };
    Ok(roster(rest.unwrap_or_default(), ctx.list_limit, gone))
}

impl Told {
    fn active(&self) -> Active<'_> {
        Active::of(self.listed.as_deref(), self.count)
    }
}

/// The roster at the tail of a script's answer: the count, then the users when
/// within the limit.
fn roster(tail: &[String], limit: usize, gone: bool) -> Told {
    let count = tail
        .first()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let listed = (count <= limit).then(|| users(tail.get(1..).unwrap_or_default()));
    Told {
        gone,
        count,
        listed,
    }
}

/// The `system` event of a change, if it is announced at all.
fn frame_of(a: &Announcement, active: Active<'_>) -> Option<Bytes> {
    let frame = |change, seq| {
        ServerEvent::membership(a.conversation, change, a.user, &a.username, active, seq)
    };
    match a.change {
        Change::Joined { seq, .. } => Some(frame(Membership::Joined, Some(seq))),
        Change::Left => Some(frame(Membership::Left, None)),
        Change::Rejoined => None,
    }
}

/// This node's announcements of conversations above the presence list limit, held
/// for their interval (`roster::Coalescer`), with the last count Redis gave.
#[derive(Default)]
struct Held {
    conversations: HashMap<ConversationId, (Coalescer, usize)>,
    /// When each scheduled flush is due.
    due: BTreeMap<Instant, Vec<ConversationId>>,
}

impl Held {
    fn next_flush(&self) -> Option<Instant> {
        self.due.keys().next().copied()
    }

    /// Announces a recorded change: within the limit at once, with the list, on every
    /// node; above it, the joiner at once and everyone else at most once per interval.
    fn announce(&mut self, ctx: &Context, a: &Announcement, told: Told) {
        // A user with a tab open on another node has not left.
        if a.change == Change::Left && !told.gone {
            return;
        }
        if let Some(listed) = &told.listed {
            if let Some(frame) = frame_of(a, Active::Users(listed)) {
                ctx.everywhere(
                    a.conversation,
                    Remote::Frame {
                        to: Audience::All,
                        frame,
                    },
                );
            }
            return;
        }
        let joined_at = match a.change {
            Change::Joined { seq, conn } => {
                if let Some(frame) = frame_of(a, Active::Count(told.count)) {
                    ctx.bus.post(
                        conn.shard,
                        ShardMsg::Own {
                            conn: conn.conn,
                            conversation: a.conversation,
                            frame,
                        },
                    );
                }
                Some(seq)
            }
            Change::Left => None,
            Change::Rejoined => return,
        };
        let change = roster::Change {
            user: a.user,
            username: Arc::clone(&a.username),
            joined_at,
        };
        let now = Instant::now();
        let (coalescer, count) = self.conversations.entry(a.conversation).or_default();
        *count = told.count;
        match coalescer.note(change.clone(), now, ctx.interval) {
            Noted::Now => {
                let count = *count;
                announce_summary(ctx, a.conversation, Summary::One(change), count);
            }
            Noted::Held(Some(wait)) => self.due.entry(now + wait).or_default().push(a.conversation),
            Noted::Held(None) => {}
        }
    }

    /// Announces what is held for every conversation whose interval has passed.
    fn flush_due(&mut self, ctx: &Context, now: Instant) {
        let later = self.due.split_off(&(now + Duration::from_nanos(1)));
        let due = std::mem::replace(&mut self.due, later);
        for conversation in due.into_values().flatten() {
            let Some((coalescer, count)) = self.conversations.get_mut(&conversation) else {
                continue;
            };
            if let Some(summary) = coalescer.flush(now) {
                announce_summary(ctx, conversation, summary, *count);
            }
            if coalescer.is_idle() {
                self.conversations.remove(&conversation);
            }
        }
    }
}

/// Above the list limit: a change, or the sum of several, on every node, to everyone
/// but a joiner (who heard of its own join already).
fn announce_summary(ctx: &Context, conversation: ConversationId, summary: Summary, count: usize) {
    let (frame, skip) = summary.frame(conversation, count);
    let to = skip.map_or(Audience::All, Audience::Except);
    ctx.everywhere(conversation, Remote::Frame { to, frame });
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
            Ok(told) => {
                if !told.gone {
                    continue;
                }
                let active = told.active();
                if let Some(frame) = frame_of(&a, active) {
                    ctx.publish(
                        a.conversation,
                        &Remote::Frame {
                            to: Audience::All,
                            frame,
                        },
                    );
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
    sweep(ctx, conn, node).await;
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
                        sweep(&ctx, &mut conn, dead).await;
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
async fn sweep(ctx: &Context, conn: &mut ConnectionManager, gone: &str) {
    for conversation in node_conversations(ctx, conn, gone).await {
        let mut sweep = ctx.keys.sweep.prepare_invoke();
        for key in ctx.keys.conversation_keys(conversation) {
            sweep.key(key);
        }
        let Ok(out) = sweep
            .arg(gone)
            .arg(ctx.list_limit)
            .invoke_async::<Vec<String>>(conn)
            .await
        else {
            continue;
        };
        let left = out
            .first()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let Some(pairs) = out.get(1..1 + 2 * left) else {
            continue;
        };
        let told = roster(
            out.get(1 + 2 * left..).unwrap_or_default(),
            ctx.list_limit,
            true,
        );
        let active = told.active();
        for pair in pairs.chunks_exact(2) {
            let Ok(user) = pair[0].parse::<UserId>() else {
                continue;
            };
            let frame = ServerEvent::membership(
                conversation,
                Membership::Left,
                user,
                &pair[1],
                active,
                None,
            );
            ctx.everywhere(
                conversation,
                Remote::Frame {
                    to: Audience::All,
                    frame,
                },
            );
        }
    }
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(ctx.keys.node_conversations(gone))
        .query_async(conn)
        .await;
}
