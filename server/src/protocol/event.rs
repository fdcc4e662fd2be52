//! Server events: serialised once and framed once into a ready-to-write, unmasked
//! WebSocket text frame (`Bytes`) that every recipient shares. Field names and order
//! are the wire contract (docs/protocol.md).

use bytes::Bytes;
use serde::Serialize;

use super::frame;
use crate::ids::{ConversationId, MessageId, Role, Seq, UserId};

/// A user's status in a `presence` event, as the client sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Away,
    Offline,
}

/// An event from the server. Persisted events (`message`, `edit`, `delete`,
/// `reaction`) carry their stream position `seq`, after the fields the quick-start
/// guide's clients know.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerEvent<'a> {
    Message {
        message_id: MessageId,
        conversation_id: ConversationId,
        content: &'a str,
        sender_id: UserId,
        sender_username: &'a str,
        timestamp: &'a str,
        is_edited: bool,
        seq: Seq,
        /// Only in a replay of a message deleted since (then `content` is empty):
        /// the stream keeps its place, never its content.
        #[serde(skip_serializing_if = "is_false")]
        is_deleted: bool,
        /// The sender's own id for the send, when it gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
    System {
        content: &'a str,
        /// Whose change it is; absent on a summary of several.
        #[serde(skip_serializing_if = "Option::is_none")]
        sender_id: Option<UserId>,
        /// Who is connected, each user once; only while the conversation is within
        /// the presence list limit.
        #[serde(skip_serializing_if = "Option::is_none")]
        active_users: Option<&'a [UserId]>,
        /// How many users are connected.
        active_count: usize,
        /// On a summary: how many joins and leaves it sums up.
        #[serde(skip_serializing_if = "Option::is_none")]
        joined_count: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        left_count: Option<u32>,
        /// On `joined`: the conversation's position when the user joined.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        conversation_id: ConversationId,
    },
    Typing {
        sender_id: UserId,
        sender_username: &'a str,
        conversation_id: ConversationId,
    },
    Edit {
        message_id: MessageId,
        content: &'a str,
        sender_id: UserId,
        is_edited: bool,
        timestamp: &'a str,
        seq: Seq,
        /// Only in a replay of an edit of a message deleted since (then `content` is
        /// empty).
        #[serde(skip_serializing_if = "is_false")]
        is_deleted: bool,
        conversation_id: ConversationId,
    },
    Delete {
        message_id: MessageId,
        sender_id: UserId,
        timestamp: &'a str,
        seq: Seq,
        conversation_id: ConversationId,
    },
    Reaction {
        message_id: MessageId,
        emoji: &'a str,
        sender_id: UserId,
        sender_username: &'a str,
        action: &'a str,
        seq: Seq,
        conversation_id: ConversationId,
    },
    Presence {
        sender_id: UserId,
        sender_username: &'a str,
        status: Presence,
        conversation_id: ConversationId,
    },
    /// A read marker of the recipient's own moved (to each of their sockets in the
    /// conversation): the conversation is read up to `seq`.
    Read {
        conversation_id: ConversationId,
        seq: Seq,
    },
    /// Another member read the conversation up to `seq` (small conversations only).
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: Seq,
    },
    Error {
        detail: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Pong,
    /// Before a replay that does not reach back to the client's `since`: events
    /// before `from_seq` were not replayed; page history over REST for them.
    Resync {
        from_seq: Seq,
        conversation_id: ConversationId,
    },
    /// The answer to a token refresh: the socket now lives until `expires_at`.
    Auth {
        status: &'a str,
        expires_at: &'a str,
    },
}

/// What happened to a conversation: `{"type":"conversation","action","conversation"}`.
/// `added`, `removed` and `deleted` reach the user's streams; `updated` reaches every
/// socket in the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationAction {
    /// The user was added to it, or it was created with them.
    Added,
    /// The user was removed from it (or left): nothing more of it arrives.
    Removed,
    /// Renamed, described anew, archived or unarchived.
    Updated,
    /// Deleted, for everyone: nothing more of it arrives.
    Deleted,
}

/// The `role` event: `user`'s role in the conversation is now `role`, to every socket
/// in it.
pub fn role_event(conversation: ConversationId, user: UserId, role: Role) -> Bytes {
    #[derive(Serialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: &'static str,
        conversation_id: ConversationId,
        user_id: UserId,
        role: Role,
    }
    framed(&Event {
        kind: "role",
        conversation_id: conversation,
        user_id: user,
        role,
    })
}

/// The `conversation` event of `action`, with the conversation as `conversation`
/// serialises (the whole conversation when added or updated, its id when removed or
/// deleted).
pub fn conversation_event(action: ConversationAction, conversation: &impl Serialize) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a, C> {
        #[serde(rename = "type")]
        kind: &'static str,
        action: ConversationAction,
        conversation: &'a C,
    }
    framed(&Event {
        kind: "conversation",
        action,
        conversation,
    })
}

/// Any serialisable event as one unmasked text frame (events whose shapes live above
/// this layer: a user stream's `ready`).
pub fn framed(event: &impl Serialize) -> Bytes {
    // Serialising plain structs of strings cannot fail; were it to, an empty frame
    // (which writes nothing) goes out rather than half a frame.
    frame::text(|out| serde_json::to_writer(out, event)).unwrap_or_default()
}

/// Whether a flag is unset: such flags stay off the wire, so events without them are
/// byte for byte what clients of the quick-start guide know.
fn is_false(flag: &bool) -> bool {
    !*flag
}

/// A user's arrival in or departure from a conversation, as `system` events say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Joined,
    Left,
}

/// Who is connected, as a `system` event tells it: the list within the presence list
/// limit, the count alone above it.
#[derive(Clone, Copy, Debug)]
pub enum Active<'a> {
    Users(&'a [UserId]),
    Count(usize),
}

impl<'a> Active<'a> {
    /// The list when there is one (within the limit), else the count.
    pub fn of(listed: Option<&'a [UserId]>, count: usize) -> Self {
        listed.map_or(Self::Count(count), Self::Users)
    }
}

impl ServerEvent<'_> {
    /// The `system` event of `username` joining (at position `seq`) or leaving the
    /// conversation, with who is connected now.
    pub fn membership(
        conversation: ConversationId,
        change: Membership,
        user: UserId,
        username: &str,
        active: Active<'_>,
        seq: Option<Seq>,
    ) -> Bytes {
        let verb = match change {
            Membership::Joined => "joined",
            Membership::Left => "left",
        };
        let content = format!("User {username} {verb} the conversation");
        let (active_users, active_count) = match active {
            Active::Users(users) => (Some(users), users.len()),
            Active::Count(n) => (None, n),
        };
        ServerEvent::System {
            content: &content,
            sender_id: Some(user),
            active_users,
            active_count,
            joined_count: None,
            left_count: None,
            seq,
            conversation_id: conversation,
        }
        .frame()
    }

    /// The `system` event summing up several joins and leaves of a large
    /// conversation, with how many users are connected now.
    pub fn presence_summary(
        conversation: ConversationId,
        joined: u32,
        left: u32,
        active_count: usize,
    ) -> Bytes {
        let users = |n: u32| {
            if n == 1 {
                "1 user".to_string()
            } else {
                format!("{n} users")
            }
        };
        let content = match (joined, left) {
            (j, 0) => format!("{} joined the conversation", users(j)),
            (0, l) => format!("{} left the conversation", users(l)),
            (j, l) => format!("{} joined and {l} left the conversation", users(j)),
        };
        ServerEvent::System {
            content: &content,
            sender_id: None,
            active_users: None,
            active_count,
            joined_count: Some(joined),
            left_count: Some(left),
            seq: None,
            conversation_id: conversation,
        }
        .frame()
    }

    /// Serialises the event and frames it as one unmasked text frame, once.
    pub fn frame(&self) -> Bytes {
        framed(self)
    }
}
