//! What the stores keep of a user's logins and account: sessions, their renewal,
//! their ending, what a starting node reads to know which recent tokens no longer
//! count, the deletion of an account and the export of its data.
//!
//! Plain types, no I/O, like `model` (which it takes the conversation record from).

use chrono::{DateTime, Utc};

use super::model::ConversationRecord;
use crate::ids::{ConversationId, Role, SessionId, UserId};

/// The most sessions a user keeps: a login past it ends the oldest one, so logging in
/// in a loop costs a bounded number of rows.
pub const SESSIONS_PER_USER: u32 = 100;

/// A deleted account's `tokens_not_before`: no token of it counts, ever.
pub fn account_gone() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A session on its way into the store.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: SessionId,
    pub user: UserId,
    pub created_at: DateTime<Utc>,
    /// When its refresh token stops working unless used before.
    pub expires_at: DateTime<Utc>,
    /// What the client said it is (bounded at the edge), to tell sessions apart.
    pub user_agent: Option<String>,
}

/// What became of a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The session lives on with this generation (and a later expiry).
    Renewed { user: UserId, generation: u64 },
    /// An older generation was presented: its token was used before, so someone else
    /// may hold it. The session is ended now.
    Reused { user: UserId },
    /// No such session, or it ended or expired.
    Ended,
}

/// Which of a user's sessions to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    One(SessionId),
    /// Every one but this (all of them when `None`).
    AllBut(Option<SessionId>),
}

/// What no longer counts, as a starting node learns it: sessions that ended since a
/// time, and users whose tokens without a session are refused before a time.
#[derive(Clone, Debug, Default)]
pub struct EndedTokens {
    pub sessions: Vec<(SessionId, UserId, DateTime<Utc>)>,
    pub users: Vec<(UserId, DateTime<Utc>)>,
}

/// What deleting an account did: the conversations it left, each with its new owner
/// when the account owned it, and the sessions it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedAccount {
    pub left: Vec<(ConversationId, Option<UserId>)>,
    pub sessions: Vec<SessionId>,
}

/// A conversation as its member's export lists it.
#[derive(Clone, Debug)]
pub struct Membership {
    pub conversation: ConversationRecord,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}
