//! What the stores deal in: the records, the outcomes of each operation, the one error
//! type, and the `Store` interface both implementations keep.
//!
//! A leaf of `store`: plain types and a trait, no I/O; the implementations, the writer
//! and the conformance suite import it, it imports none of them.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::account::{Accounts, Sessions};
use super::manage::Management;
use crate::ids::{ConversationId, MessageId, Role, Seq, UserId};
use crate::text::{ClientId, Content};

/// Why a store call failed. Only `Conflict` is caused by the caller; the rest mean the
/// store is unwell and the caller should say so and retry later.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store query failed: {0}")]
    Query(String),
}

/// A user as stored, with the password hash (never leaves the server).
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_group: bool,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Read-only since then: history stays readable, the stream takes nothing new.
    pub archived_at: Option<DateTime<Utc>>,
    /// The one conversation of its two participants (see `Store::create_direct`).
    pub direct: bool,
}

/// A message as history shows it.
#[derive(Clone, Debug)]
pub struct MessageRecord {
    pub id: MessageId,
    pub seq: Seq,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub sender_username: String,
    pub content: String,
    pub is_edited: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its reactions, each emoji once with who gave it, in the order they were first
    /// given (a page reads at most `REACTIONS_PER_PAGE` of them).
    pub reactions: Vec<Reaction>,
}

/// One emoji on a message and the users who reacted with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    pub emoji: String,
    pub users: Vec<UserId>,
}

/// The most reactions a page of history reads: a page costs a bounded read however
/// many reactions its messages collected.
pub const REACTIONS_PER_PAGE: u32 = 5000;

/// Groups `(message, emoji, user)` rows, in the order read, onto their messages.
pub(super) fn attach_reactions(
    messages: &mut [MessageRecord],
    rows: impl IntoIterator<Item = (MessageId, String, UserId)>,
) {
    let at: std::collections::HashMap<MessageId, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id, i))
        .collect();
    for (message, emoji, user) in rows {
        let Some(&i) = at.get(&message) else { continue };
        let reactions = &mut messages[i].reactions;
        match reactions.iter_mut().find(|r| r.emoji == emoji) {
            Some(r) => r.users.push(user),
            None => reactions.push(Reaction {
                emoji,
                users: vec![user],
            }),
        }
    }
}

/// A message on its way into the store; its id and time were fixed by its home shard.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    /// Validated at the edge; the store only ever writes content that passed the rules.
    pub content: Content,
    pub created_at: DateTime<Utc>,
    /// The sender's own id for this send, if it gave one.
    pub client_id: Option<ClientId>,
}

impl NewMessage {
    /// What makes two sends the same message, when the sender gave a `client_id`.
    pub fn idempotency_key(&self) -> Option<(ConversationId, UserId, &str)> {
        let id = self.client_id.as_ref()?;
        Some((self.conversation_id, self.sender_id, id.as_str()))
    }
}

/// A message that was committed earlier with the same `client_id`, as its ack showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    pub id: MessageId,
    pub seq: Seq,
    /// As first broadcast (before any edit); `None` once it is deleted: deleted
    /// means gone, for its sender's resend too.
    pub content: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What became of one message of a committed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Committed at this position.
    New(Seq),
    /// Its sender already sent this `client_id` in this conversation; nothing stored.
    Duplicate(Original),
    /// Its conversation no longer exists; nothing stored.
    Gone,
    /// Its conversation is archived; nothing stored.
    ReadOnly,
}

/// What became of an edit or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Done, at this position of the conversation's stream.
    Done(Seq),
    /// No live message with that id in that conversation.
    NotFound,
    /// The message belongs to someone else (and, for a delete, the actor does not
    /// moderate the conversation).
    NotSender,
    /// The conversation is archived.
    ReadOnly,
}

/// What became of a reaction toggle; either change takes a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReactionOutcome {
    Added(Seq),
    Removed(Seq),
    NotFound,
    /// The conversation is archived.
    ReadOnly,
}

/// Which page of history: the newest `limit` messages before `before`, or, with
/// `after`, the oldest `limit` messages after it (bounded by `before` when both are
/// given). Either way the page is oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
}

/// A place in a user's conversation list, which is ordered by last activity
/// (`updated_at`), then id, both descending: the last conversation a page showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub updated_at: DateTime<Utc>,
    pub id: ConversationId,
}

/// As REST and the `ready` event hand it to clients (`X-Next-Cursor`,
/// `next_cursor`): the time in microseconds and the id.
impl std::fmt::Display for ListCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.updated_at.timestamp_micros(), self.id)
    }
}

impl std::str::FromStr for ListCursor {
    type Err = ();
    fn from_str(raw: &str) -> Result<Self, ()> {
        let (micros, id) = raw.trim().split_once('_').ok_or(())?;
        Ok(Self {
            updated_at: DateTime::from_timestamp_micros(micros.parse().map_err(|_| ())?)
                .ok_or(())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

impl ListCursor {
    /// Where a list that showed `c` last goes on.
    pub fn after(c: &ConversationRecord) -> Self {
        Self {
            updated_at: c.updated_at,
            id: c.id,
        }
    }
}

/// Which page of a user's conversation list: at most `limit`, the ones after `after`
/// (from the top when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub limit: u32,
    pub after: Option<ListCursor>,
}

/// The most unread messages a conversation's count reaches ("99+" in a client):
/// counting walks the messages after the reader's marker, so the walk is bounded,
/// whatever the backlog, at this many rows per conversation of a page.
pub const UNREAD_COUNT_MAX: u32 = 100;
/// How many characters of the last message a conversation list shows.
pub const PREVIEW_CHARS: u32 = 100;

/// A conversation as its member's list shows it: where its stream stands, where the
/// member has read to, how many messages of others they have not read (live ones,
/// after their marker, at most `UNREAD_COUNT_MAX`), and the newest live message.
#[derive(Clone, Debug)]
pub struct ConversationSummary {
    pub conversation: ConversationRecord,
    pub last_seq: Seq,
    pub last_read_seq: Seq,
    pub unread_count: u32,
    pub last_message: Option<Preview>,
    /// The member's role in it.
    pub role: Role,
}

/// The start of a conversation's newest live message (`PREVIEW_CHARS` characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    pub id: MessageId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub sender_username: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// What became of a read marker. A position past the stream counts as the stream's
/// end: "read up to there" means everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The marker moved forward to this position.
    Moved(Seq),
    /// The marker was already there or further: it stays where it is (given).
    Kept(Seq),
    /// The user is not a participant (or there is no such conversation).
    NotMember,
}

/// One persisted event of a conversation's stream, as it was broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    pub seq: Seq,
    pub message_id: MessageId,
    /// The sender of a message, the editor, deleter or reacting user otherwise.
    pub user_id: UserId,
    pub username: String,
    pub at: DateTime<Utc>,
    pub kind: StreamKind,
}

/// What an event was. A message deleted since keeps its place in the stream but never
/// its content, nor the content of its edits: a stream read is as good as history at
/// hiding it, and a client resuming from before the delete learns only that a message
/// was there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Content as first broadcast.
    Message {
        content: String,
        client_id: Option<String>,
    },
    /// A message deleted since it was sent: its place, sender and time, no content.
    DeletedMessage {
        client_id: Option<String>,
    },
    Edit {
        content: String,
    },
    /// An edit of a message deleted since: its place and time, not what it said.
    DeletedEdit,
    Delete,
    Reaction {
        emoji: String,
        added: bool,
    },
}

impl StreamKind {
    /// The `kind` column of `message_changes` (messages live in their own table).
    pub(super) fn change_kind(&self) -> &'static str {
        match self {
            Self::Message { .. } | Self::DeletedMessage { .. } => "message",
            Self::Edit { .. } | Self::DeletedEdit => "edit",
            Self::Delete => "delete",
            Self::Reaction { added: true, .. } => "reaction_added",
            Self::Reaction { added: false, .. } => "reaction_removed",
        }
    }

    /// Rebuilds an event's kind from the columns both stores' stream queries read
    /// (`kind`, `content`, `emoji`, `client_id`, and whether the event's message is
    /// deleted by now); `None` for a kind this build does not know. The queries already
    /// leave a deleted message's content out; `deleted` decides here too, so content
    /// a query let through by mistake is still dropped.
    pub(super) fn from_columns(
        kind: &str,
        content: Option<String>,
        emoji: Option<String>,
        client_id: Option<String>,
        deleted: bool,
    ) -> Option<Self> {
        Some(match kind {
            "message" if deleted => Self::DeletedMessage { client_id },
            "message" => Self::Message {
                content: content.unwrap_or_default(),
                client_id,
            },
            "edit" if deleted => Self::DeletedEdit,
            "edit" => Self::Edit { content: content? },
            "delete" => Self::Delete,
            "reaction_added" => Self::Reaction {
                emoji: emoji?,
                added: true,
            },
            "reaction_removed" => Self::Reaction {
                emoji: emoji?,
                added: false,
            },
            _ => return None,
        })
    }
}

/// `ids` without repeats, each at its first place.
pub(super) fn distinct(ids: &[UserId]) -> Vec<UserId> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// What a member's view of their conversations needs: the list with read markers,
/// the memberships a user stream carries, and moving a read marker.
#[async_trait]
pub trait Inbox {
    /// A page of the user's conversations, most recently active (`updated_at`) first,
    /// ties by id, descending (see `ListPage`), each with the user's read marker,
    /// unread count and the newest live message.
    async fn conversations_of(
        &self,
        user: UserId,
        page: ListPage,
    ) -> Result<Vec<ConversationSummary>, StoreError>;
    /// The user's conversations with their stream positions, most recently active
    /// first, at most `limit`.
    async fn memberships(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError>;
    /// Which of `users` are participants, each with the conversation's stream position,
    /// in one read.
    async fn member_positions(
        &self,
        id: ConversationId,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Seq)>, StoreError>;
    /// Moves the user's read marker in the conversation forward to `seq`, or to the
    /// stream's end when `seq` is past it (never back).
    async fn mark_read(
        &self,
        id: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<ReadOutcome, StoreError>;
}

/// The one interface both stores implement, by concern: this trait the users,
/// conversations, their streams and history; `Inbox`, `Management`, `Sessions` and
/// `Accounts` the rest. Every method is a single logical operation; multi-statement
/// ones run in a transaction.
#[async_trait]
pub trait Store: Inbox + Management + Sessions + Accounts + Send + Sync + 'static {
    /// Fails with `Conflict` when the username is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// The ids among `ids` that belong to no user.
    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError>;

    /// Creates the conversation with its participants (the creator included by the
    /// caller, first: it becomes the owner).
    async fn create_conversation(
        &self,
        conversation: &ConversationRecord,
        participants: &[UserId],
    ) -> Result<(), StoreError>;
    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError>;
    async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError>;
    async fn is_member(&self, id: ConversationId, user: UserId) -> Result<bool, StoreError>;
    /// The conversation's stream position if `user` is a participant, `None` otherwise.
    async fn member_position(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<Seq>, StoreError>;

    /// A page of live messages in stream order (see `Page`). `None` when `before` or
    /// `after` names no message of this conversation (deleted ones still anchor).
    async fn history(
        &self,
        id: ConversationId,
        page: Page,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError>;

    /// Commits the whole batch in one transaction, or nothing of it: each new message
    /// takes the next position of its conversation, each conversation's `updated_at`
    /// is bumped. A message whose `client_id` its sender already used in that
    /// conversation stores nothing and answers with the original. One outcome per
    /// message, in batch order. The batch holds no two messages with the same
    /// idempotency key (the writer sees to it).
    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<Vec<Stored>, StoreError>;
    async fn edit_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        editor: UserId,
        content: &Content,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError>;
    /// The row stays (its position and `client_id` with it), its content and that of
    /// its edits are erased; history no longer shows it. Its sender may delete it,
    /// and so may the conversation's owners and admins.
    async fn delete_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        deleter: UserId,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError>;
    /// Adds the user's reaction with that emoji, or removes it if present.
    async fn toggle_reaction(
        &self,
        conversation: ConversationId,
        message: MessageId,
        user: UserId,
        emoji: &str,
    ) -> Result<ReactionOutcome, StoreError>;

    /// The conversation's events with positions in `(after, upto]`, in order. A
    /// message deleted by the time of the read, and each of its edits, comes as
    /// `DeletedMessage` and `DeletedEdit`: in its place, without content.
    async fn stream(
        &self,
        id: ConversationId,
        after: Seq,
        upto: Seq,
    ) -> Result<Vec<StreamEvent>, StoreError>;

    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}
