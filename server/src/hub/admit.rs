//! What both roles of the hub share about a connection before it is one: who was
//! admitted to which conversation and from where in its stream (`Admitted`, `Resume`),
//! and why an event a connection sent was not taken (`Refused`).
//!
//! A leaf: plain types, no behaviour, nothing here imports another module of `hub`.

use std::sync::Arc;
use std::time::Instant;

use crate::ids::{ConversationId, Seq, UserId};

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
