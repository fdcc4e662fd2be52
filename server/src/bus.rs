//! The cross-shard bus: one lock-free mailbox per shard (a crossbeam `SegQueue` plus an
//! `AtomicWaker`). Any thread may post; only the owning shard drains, in one task, so
//! messages from one sender arrive in the order they were posted. No mutex anywhere.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use futures_util::task::AtomicWaker;

use crate::ids::{ConversationId, Seq, UserId};
use crate::protocol::ClientEvent;
use crate::store::writer::CommitResult;
use crate::store::NewMessage;

/// Which connection, on which shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnAddr {
    pub shard: usize,
    pub conn: u64,
}

/// Who did something, as events name them.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user: UserId,
    pub username: std::sync::Arc<str>,
    pub conn: ConnAddr,
    pub reference: Option<String>,
}

/// A page of who is connected to a conversation.
#[derive(Debug, Default)]
pub struct Roster {
    /// Each user once: their place in the arrival order (the cursor), id and name.
    pub users: Vec<(u64, UserId, std::sync::Arc<str>)>,
    /// How many users are connected in all.
    pub count: usize,
}

/// Whose connections in a conversation a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    All,
    /// Everyone but this user (typing; a receipt; others hearing of a join).
    Except(UserId),
    /// This user only (their read marker, on each of their devices).
    Only(UserId),
}

impl Audience {
    pub fn includes(self, user: UserId) -> bool {
        match self {
            Self::All => true,
            Self::Except(skip) => skip != user,
            Self::Only(only) => only == user,
        }
    }
}

/// Work for a conversation's home shard.
#[derive(Debug)]
pub enum HomeMsg {
    /// A connection opened in the conversation; its membership was read after
    /// `checked_at`, when the conversation's stream stood at `position`.
    Join { checked_at: Instant, position: Seq },
    /// A connection closed.
    Leave,
    /// A validated client event to order, persist or relay.
    Event(ClientEvent),
}

#[derive(Debug)]
pub enum ShardMsg {
    /// To the conversation's home shard.
    Home {
        conversation: ConversationId,
        actor: Actor,
        msg: HomeMsg,
    },
    /// From the writer to the home shard: what became of a message.
    Committed {
        conversation: ConversationId,
        actor: Actor,
        message: NewMessage,
        result: CommitResult,
    },
    /// From the home to a joining connection's shard, before anything delivered after
    /// its join: the connection is live in the conversation from position `seq` (what
    /// it was sent before is not its to see; a resuming one is replayed up to `seq`).
    Joined {
        conn: u64,
        conversation: ConversationId,
        seq: Seq,
    },
    /// To every shard with connections in the conversation: write `frame` to those of
    /// the audience.
    Deliver {
        conversation: ConversationId,
        frame: Bytes,
        to: Audience,
    },
    /// To one connection (errors, acks of non-broadcast outcomes).
    Direct { conn: u64, frame: Bytes },
    /// To one connection, in its place in the conversation's stream like a delivery
    /// (after its replay): a joiner's own `joined` above the presence list limit.
    Own {
        conn: u64,
        conversation: ConversationId,
        frame: Bytes,
    },
    /// From a REST handler to the conversation's home: up to `limit` connected users
    /// who arrived after the cursor `after`, in arrival order.
    Presence {
        conversation: ConversationId,
        after: Option<u64>,
        limit: usize,
        reply: futures_channel::oneshot::Sender<Roster>,
    },
    /// To the conversation's home: `user` was removed from it at `at` (committed).
    Revoke {
        conversation: ConversationId,
        user: UserId,
        at: Instant,
    },
    /// To the conversation's home: it was deleted at `at` (committed): it forgets the
    /// conversation and tells every shard (`Gone`).
    Deleted {
        conversation: ConversationId,
        at: Instant,
    },
    /// From the home to every shard: the conversation was deleted; its sockets close
    /// and user streams drop it.
    Gone { conversation: ConversationId },
    /// From the home to a shard: close `user`'s sockets in the conversation (only
    /// `conn` when given) with 1008, before anything posted after this.
    Revoked {
        conversation: ConversationId,
        user: UserId,
        conn: Option<u64>,
    },
    /// To every shard: `users` were added to the conversation (or it was created with
    /// them); their user streams announce it (`frame`) and carry it from now on.
    Added {
        conversation: ConversationId,
        users: std::sync::Arc<[UserId]>,
        frame: Bytes,
    },
    /// From a REST handler to the conversation's home: `user`'s read marker moved to
    /// `seq` (committed); tell their devices and, where cheap, the others.
    Marked {
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    },
    /// To every shard: some of `user`'s tokens no longer count (see `Revocations`);
    /// their sockets whose token does not close with 1008 `Session ended`.
    TokensRevoked { user: UserId },
    /// From the cluster (other nodes, through Redis) to the conversation's home.
    Remote {
        conversation: ConversationId,
        msg: Remote,
    },
    /// From the cluster to every shard: this node's presence was lost in Redis (the
    /// node was presumed dead, or Redis restarted empty); register every home's
    /// connected users again, without announcing them.
    Rejoin,
    /// Stop accepting, close connections, finish.
    Shutdown,
}

/// What another node says about a conversation, or what the cluster itself found.
#[derive(Debug)]
pub enum Remote {
    /// A committed event at its stream position, as a ready frame.
    Event { seq: Seq, frame: Bytes },
    /// A frame that is not a stream event (typing, presence, joined/left, markers), for
    /// the local connections of the audience.
    Frame { to: Audience, frame: Bytes },
    /// `user` was removed from the conversation.
    Revoke { user: UserId },
    /// The conversation was deleted.
    Deleted,
    /// Events of the conversation may have been missed (a subscription just started
    /// or came back, a node could not publish): read the stream back from the store.
    Resync,
}

#[derive(Default)]
pub struct Mailbox {
    queue: SegQueue<ShardMsg>,
    waker: AtomicWaker,
}

impl Mailbox {
    pub fn post(&self, msg: ShardMsg) {
        self.queue.push(msg);
        self.waker.wake();
    }

    /// Waits until something is queued, then hands it all to `handle`. Owner shard only.
    pub async fn drain(&self, mut handle: impl FnMut(ShardMsg)) {
        poll_fn(|cx| {
            if self.queue.is_empty() {
                self.waker.register(cx.waker());
                // A post between the check and the registration would be missed without
                // this second look.
                if self.queue.is_empty() {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
        .await;
        while let Some(msg) = self.queue.pop() {
            handle(msg);
        }
    }
}

/// Every shard's mailbox; a conversation's home is a hash of its id.
pub struct Bus {
    mailboxes: Vec<Mailbox>,
}

impl Bus {
    pub fn new(shards: usize) -> Self {
        Self {
            mailboxes: (0..shards.max(1)).map(|_| Mailbox::default()).collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }

    pub fn mailbox(&self, shard: usize) -> &Mailbox {
        &self.mailboxes[shard]
    }

    pub fn post(&self, shard: usize, msg: ShardMsg) {
        self.mailboxes[shard].post(msg);
    }

    pub fn home_of(&self, conversation: ConversationId) -> usize {
        // UUIDv7 high bits are a timestamp; the low bits are random and spread evenly.
        (conversation.0.as_u128() as u64 % self.mailboxes.len() as u64) as usize
    }

    pub fn broadcast(&self, msg: impl Fn() -> ShardMsg) {
        for mailbox in &self.mailboxes {
            mailbox.post(msg());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_another_thread_arrive_in_order() {
        let bus = std::sync::Arc::new(Bus::new(1));
        let sender = std::sync::Arc::clone(&bus);
        let producer = std::thread::spawn(move || {
            for i in 0..10_000u64 {
                sender.post(
                    0,
                    ShardMsg::Direct {
                        conn: i,
                        frame: Bytes::new(),
                    },
                );
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut seen = Vec::new();
        rt.block_on(async {
            while seen.len() < 10_000 {
                bus.mailbox(0)
                    .drain(|m| {
                        if let ShardMsg::Direct { conn, .. } = m {
                            seen.push(conn);
                        }
                    })
                    .await;
            }
        });
        producer.join().expect("producer");
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }
}
