//! What the stores keep of a user's logins and account: sessions, their renewal,
//! their ending, what a starting node reads to know which recent tokens no longer
//! count, the deletion of an account and the export of its data.
//!
//! Plain types, no I/O, like `model` (which it takes the conversation record from).

use chrono::{DateTime, Utc};

use async_trait::async_trait;

use super::model::{ConversationRecord, MessageRecord, StoreError};
use crate::ids::{ConversationId, MessageId, Role, SessionId, UserId};

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

/// Logins: sessions, their renewal and ending, and what no longer counts.
#[async_trait]
pub trait Sessions {
    /// Stores a new session; past `keep` live sessions of the user, the oldest end.
    /// Answers the sessions it ended. The user's rows of sessions that ended (or
    /// expired) before `forget_before` go.
    async fn create_session(
        &self,
        session: &NewSession,
        keep: u32,
        forget_before: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Moves a live session on from `generation` to the next, with a new expiry; an
    /// older generation ends it (see `Renewal`).
    async fn renew_session(
        &self,
        id: SessionId,
        generation: u64,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Renewal, StoreError>;
    /// Ends the user's live sessions that `which` names; answers which it ended.
    async fn end_sessions(
        &self,
        user: UserId,
        which: Ending,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Tokens of the user without a session, issued before `at`, no longer count.
    async fn set_tokens_not_before(
        &self,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The sessions that ended since `since`, and every user's `tokens_not_before`.
    async fn ended_tokens(&self, since: DateTime<Utc>) -> Result<EndedTokens, StoreError>;
}

/// Accounts: passwords, deletion, the export of a user's data, finding users.
#[async_trait]
pub trait Accounts {
    /// Replaces the user's password hash.
    async fn set_password(&self, user: UserId, hash: &str) -> Result<(), StoreError>;
    /// Deletes the account at `at`: its sessions end and no token of it counts again,
    /// it leaves every conversation (an owner's hands over, as on leaving), and its
    /// row stays under a name no one can register, without a password, so its
    /// messages keep a sender; with `erase`, the purge erases them. `None` when there
    /// is no such (live) account.
    async fn delete_account(
        &self,
        user: UserId,
        erase: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<DeletedAccount>, StoreError>;
    /// A page of the user's conversations for the export, in id order after `after`.
    async fn export_conversations(
        &self,
        user: UserId,
        after: Option<ConversationId>,
        limit: u32,
    ) -> Result<Vec<Membership>, StoreError>;
    /// The user's own live messages among the `scan` messages (any sender, any
    /// conversation) that follow `after` in id (time) order, and the last of those
    /// looked at: where the next chunk starts, `None` once the table is done. No
    /// index by sender is kept for this (it would cost every insert), so a chunk is
    /// bounded by what it reads, not by what it finds.
    async fn export_messages(
        &self,
        user: UserId,
        after: Option<MessageId>,
        scan: u32,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError>;
    /// Live users whose name starts with `prefix` whatever the case (`prefix` given
    /// in lower case), ordered by their lowered name then name, after the user named
    /// `after`; at most `limit`.
    async fn users_by_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(UserId, String)>, StoreError>;
}
