//! The hub of one shard. Two roles:
//!
//! - Local registry (`registry`): this shard's WebSocket connections by conversation,
//!   fed by the bus with ready-made frames to write (`Deliver`, `Direct`), closed when
//!   their user loses access (`Revoked`), visited by the heartbeat.
//! - Home (`home`): for the conversations hashed to this shard, the single source of
//!   their delivery order and the one place that knows who is connected; `events`
//!   persists what clients send, `stream` delivers it in position order (gaps read
//!   back from the store).
//! - Replay (`replay`): a resuming connection's missed events, from the store, before
//!   its live ones.
//! - Remote (`remote`): in a cluster, what other nodes say about the home's
//!   conversations, put in the same order as its own.
//!
//! Everything here runs on the shard's own thread; state sits in a `RefCell` that is
//! never borrowed across an await.

mod events;
mod home;
pub mod outbox;
mod ratelimit;
mod registry;
mod remote;
mod replay;
pub mod stream;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::bus::ShardMsg;
use crate::ids::{ConversationId, MessageIdGen, Seq, UserId};
use crate::metrics::ShardMetrics;
use crate::protocol::Close;
use home::Homes;
use outbox::Outbox;
use ratelimit::Bucket;

struct UserSlot {
    bucket: Bucket,
    conns: u32,
    /// In a cluster: tokens of the user's shared budget leased to this shard.
    lease: u32,
}

#[derive(Default)]
struct State {
    next_conn: u64,
    conns: HashMap<u64, Rc<Outbox>>,
    by_conversation: HashMap<ConversationId, Vec<Rc<Outbox>>>,
    users: HashMap<UserId, UserSlot>,
    homes: Homes,
    ids: MessageIdGen,
}

pub struct Hub {
    pub shard: usize,
    app: Arc<App>,
    metrics: Rc<ShardMetrics>,
    state: RefCell<State>,
}

/// Who may join which conversation, until when, and since when we know it: what
/// admission (in `ws`) hands the registry.
pub struct Admitted {
    pub user: UserId,
    pub username: Arc<str>,
    pub conversation: ConversationId,
    /// When the token expires (Unix seconds); the socket is closed then.
    pub expires_at: u64,
    /// Taken before membership was read: a removal committed after this instant may
    /// not have been seen, so the home checks it against its recent removals.
    pub checked_at: Instant,
    /// The conversation's stream position read with the membership.
    pub position: Seq,
    /// What the client asked for on connect (`since`).
    pub resume: Resume,
}

/// A connection's `since`: where the client's copy of the stream ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// No `since`: live from the join on.
    Fresh,
    /// Replay every event after this position first.
    Since(Seq),
    /// A `since` that is not a position; the client is told so and joins live.
    Invalid,
}

/// Why an incoming event was not taken; the text is the `error` event's detail.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("Rate limit exceeded")]
    RateLimited,
    #[error("Invalid token")]
    InvalidToken,
    #[error("Token is for another user")]
    OtherUser,
}

impl Hub {
    pub fn new(shard: usize, app: Arc<App>, metrics: Rc<ShardMetrics>) -> Rc<Self> {
        Rc::new(Self {
            shard,
            app,
            metrics,
            state: RefCell::new(State::default()),
        })
    }

    // ---- bus ------------------------------------------------------------------------

    /// Handles one message from the bus. `Shutdown` is the shard's, not the hub's.
    pub fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver {
                conversation,
                frame,
                skip,
            } => {
                let st = self.state.borrow();
                let mut delivered = 0;
                for conn in st.by_conversation.get(&conversation).into_iter().flatten() {
                    if skip != Some(conn.user) {
                        conn.deliver(&frame);
                        delivered += 1;
                    }
                }
                self.metrics.deliveries.inc_by(delivered);
            }
            ShardMsg::Direct { conn, frame } => {
                if let Some(conn) = self.state.borrow().conns.get(&conn) {
                    conn.push(frame);
                }
            }
            ShardMsg::Revoked {
                conversation,
                user,
                conn,
            } => {
                let st = self.state.borrow();
                for c in st.by_conversation.get(&conversation).into_iter().flatten() {
                    if c.user == user && conn.is_none_or(|id| id == c.id) {
                        c.close(Close::NotAMember);
                    }
                }
            }
            ShardMsg::Home {
                conversation,
                actor,
                msg,
            } => self.home(conversation, actor, msg),
            ShardMsg::Revoke {
                conversation,
                user,
                at,
            } => self.revoke_at_home(conversation, user, at),
            ShardMsg::Committed {
                conversation,
                actor,
                message,
                result,
            } => self.committed(conversation, actor, message, result),
            ShardMsg::Joined { conn, seq } => self.joined(conn, seq),
            ShardMsg::Remote { conversation, msg } => self.remote(conversation, msg),
            ShardMsg::Rejoin => self.rejoin(),
            ShardMsg::Shutdown => {}
        }
    }
}
