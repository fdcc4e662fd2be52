//! What both roles of the hub share about a connection before it is one: who was
//! admitted to carry what, from where in each stream (`Admitted`, `Carried`,
//! `Resume`), and why an event a connection sent was not taken (`Refused`).
//!
//! A leaf: plain types, no behaviour, nothing here imports another module of `hub`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::conn::Scope;
use crate::ids::{ConversationId, Seq, SessionId, UserId};

/// Who may carry what, until when, and since when we know it: what admission (in
/// `ws`) hands the registry.
pub struct Admitted {
    pub user: UserId,
    pub username: Arc<str>,
    /// When the token expires (Unix seconds); the socket is closed then.
    pub expires_at: u64,
    /// The token's session and issue time: the socket closes when they stop counting
    /// (see `Revocations`).
    pub session: Option<SessionId>,
    pub issued_at: u64,
    /// Taken before membership was read: a removal committed after this instant may
    /// not have been seen, so the home checks it against its recent removals.
    pub checked_at: Instant,
    pub carried: Carried,
}

/// What an admitted connection carries.
pub enum Carried {
    /// A conversation socket: the conversation, its stream position read with the
    /// membership, and what the client asked for on connect (`since`).
    Conversation {
        conversation: ConversationId,
        position: Seq,
        resume: Resume,
    },
    /// A user stream (boxed: the admission lives as long as the connection's task, and
    /// every conversation socket would pay for the larger variant).
    Stream(Box<StreamAdmission>),
}

/// A user stream's admission: the user's conversations with the positions read with
/// the memberships (joined when the client starts the stream), and the `ready` event.
pub struct StreamAdmission {
    pub memberships: Vec<(ConversationId, Seq)>,
    pub ready: Bytes,
}

impl Admitted {
    pub fn scope(&self) -> Scope {
        match &self.carried {
            Carried::Conversation { conversation, .. } => Scope::Conversation(*conversation),
            Carried::Stream(_) => Scope::User,
        }
    }
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
    #[error("Field 'conversation_id' is required")]
    NoConversation,
    #[error("Not a member of this conversation")]
    NotAMember,
    #[error("resume must be the first event of a user stream")]
    LateResume,
}
