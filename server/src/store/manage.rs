//! What managing a conversation deals in: a change of it, a member as the member list
//! shows them, a direct conversation's creation, what became of a change only some
//! roles may make, and the `Management` part of the store interface.
//!
//! A leaf of `store`, like `model` (which it takes the conversation record from): plain
//! types and a trait, no I/O.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::model::{ConversationRecord, StoreError};
use crate::ids::{ConversationId, Role, UserId};

/// What a change of a conversation sets; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationChange {
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub archived: Option<bool>,
}

/// A participant as the conversation's member list shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

/// What became of creating a direct conversation: the pair's one conversation, whether
/// this call created it, and which of the two were participants again (one who had
/// left it is back).
#[derive(Clone, Debug)]
pub struct Direct {
    pub conversation: ConversationRecord,
    pub created: bool,
    pub rejoined: Vec<UserId>,
}

/// What became of a change that only some participants may make, checked at the
/// moment of the write (so a role changed a moment before counts, and of two changes
/// racing, the second sees what the first did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guarded<T> {
    Done(T),
    /// The actor may not (any more), or the conversation's state forbids it.
    Refused,
    /// The participant it names is not one.
    Missing,
    /// No such conversation (any more).
    Gone,
}

/// What became of a removal: the role the user had, and who owns the conversation now
/// when it was its owner who left (nobody, if no one is left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub role: Role,
    pub new_owner: Option<UserId>,
}

/// The pair of a direct conversation as its unique key: the smaller id first, so
/// either of the two creating it finds the same one.
pub(super) fn direct_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

/// Conversations as their owners and admins manage them: direct conversations,
/// roles, the member list, changes, deletion and the purge after it. Whatever only
/// some roles may do is checked at the write (`Guarded`).
#[async_trait]
pub trait Management {
    /// Creates the direct conversation of `conversation.created_by` and `other`, both
    /// members, or, when the pair has one already (on any node), answers it with both
    /// of them participants again.
    async fn create_direct(
        &self,
        conversation: &ConversationRecord,
        other: UserId,
    ) -> Result<Direct, StoreError>;
    /// The conversation and the user's role in it (`None`: not a participant); `None`
    /// when there is no such conversation.
    async fn membership(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<(ConversationRecord, Option<Role>)>, StoreError>;
    /// Applies the change if `actor` moderates the conversation (an owner or admin,
    /// either person of a direct one) at the moment of the write; the conversation
    /// as it is now. (`Guarded::Missing` is not an answer of the conversation-wide
    /// changes: they name no participant.)
    async fn update_conversation(
        &self,
        id: ConversationId,
        actor: UserId,
        change: &ConversationChange,
        at: DateTime<Utc>,
    ) -> Result<Guarded<ConversationRecord>, StoreError>;
    /// Deletes the conversation for everyone at once, if `actor` owns it (or is in it,
    /// a direct one) at the moment of the write: its participants go, it reads as
    /// absent and its stream takes nothing more. Its history stays until
    /// `purge_deleted` removes it.
    async fn delete_conversation(
        &self,
        id: ConversationId,
        actor: UserId,
    ) -> Result<Guarded<()>, StoreError>;
    /// Removes one bounded chunk of what deletions left: a deleted conversation's
    /// messages (with their changes and reactions, then its row), or the messages of
    /// an account deleted with `erase` (erased as a delete erases them); whether more
    /// is left.
    async fn purge_deleted(&self) -> Result<bool, StoreError>;
    /// A page of the participants in user id order: at most `limit` after `after`.
    async fn participant_page(
        &self,
        id: ConversationId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<Participant>, StoreError>;
    /// Gives `user` the role if `actor` owns the conversation at the moment of the
    /// write; making them owner makes the owner an admin, in the same transaction.
    /// Answers every role that changed; `Missing` when `user` is not a participant.
    async fn set_role(
        &self,
        id: ConversationId,
        actor: UserId,
        user: UserId,
        role: Role,
    ) -> Result<Guarded<Vec<(UserId, Role)>>, StoreError>;
    /// Adds the user unless the conversation is archived, direct or gone at the
    /// moment of the write (`Refused`); adding an existing participant is a no-op.
    async fn add_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Guarded<()>, StoreError>;
    /// Removes `user` if `actor` may at the moment of the write: anyone may leave;
    /// the owner removes anyone, an admin removes members. `Missing` when the user
    /// is not a participant. An owner's leaving hands the conversation, in the same
    /// transaction, to its longest-standing admin, or else its longest-standing
    /// member.
    async fn remove_participant(
        &self,
        id: ConversationId,
        actor: UserId,
        user: UserId,
    ) -> Result<Guarded<Removed>, StoreError>;
}
