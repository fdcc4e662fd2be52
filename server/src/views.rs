//! The JSON shapes of a conversation that REST answers and WebSocket events carry
//! alike (the list's items are what a user stream's `ready` lists), so both say the
//! same thing in the same words. Field for field as docs/protocol.md gives them; they
//! derive `ToSchema` for the OpenAPI document.
//!
//! Plain shapes built from store records; no I/O, no behaviour beyond the mapping.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{timestamp, Role, Seq};
use crate::store::{ConversationRecord, ConversationSummary, Preview};

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationOut {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_group: bool,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// When it was archived (read-only since: history readable, nothing new); null
    /// when it is not.
    #[serde(with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub archived_at: Option<DateTime<Utc>>,
    /// The one direct conversation of its two people: it gains no members and has no
    /// roles.
    pub is_direct: bool,
    /// Present on the single-conversation endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_ids: Option<Vec<String>>,
}

impl ConversationOut {
    pub fn new(c: &ConversationRecord, participants: Option<Vec<String>>) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.name.clone(),
            description: c.description.clone(),
            is_group: c.is_group,
            created_at: c.created_at,
            updated_at: c.updated_at,
            archived_at: c.archived_at,
            is_direct: c.direct,
            participant_ids: participants,
        }
    }
}

/// A conversation in its member's list: the conversation, where its stream stands,
/// the member's read marker, how many messages of others are unread (at most 100)
/// and the start of the newest live message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationItem {
    #[serde(flatten)]
    pub conversation: ConversationOut,
    /// The conversation's stream position: the `seq` of its newest event.
    #[schema(value_type = u64)]
    pub last_seq: Seq,
    /// The caller's read marker: the position they have read up to.
    #[schema(value_type = u64)]
    pub last_read_seq: Seq,
    /// Messages of others after the marker, deleted ones not counted; at most 100.
    pub unread_count: u32,
    /// The newest message that is not deleted, if any.
    pub last_message: Option<PreviewOut>,
    /// The caller's role in it.
    pub role: Role,
}

impl From<&ConversationSummary> for ConversationItem {
    fn from(s: &ConversationSummary) -> Self {
        Self {
            conversation: ConversationOut::new(&s.conversation, None),
            last_seq: s.last_seq,
            last_read_seq: s.last_read_seq,
            unread_count: s.unread_count,
            last_message: s.last_message.as_ref().map(PreviewOut::from),
            role: s.role,
        }
    }
}

/// The start of a message (its first 100 characters), for a conversation list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewOut {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    #[schema(value_type = u64, minimum = 1)]
    pub seq: Seq,
    #[schema(value_type = String, format = Uuid)]
    pub sender_id: String,
    pub sender_username: String,
    /// The first 100 characters of the content.
    pub content: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

impl From<&Preview> for PreviewOut {
    fn from(p: &Preview) -> Self {
        Self {
            id: p.id.to_string(),
            seq: p.seq,
            sender_id: p.sender_id.to_string(),
            sender_username: p.sender_username.clone(),
            content: p.content.clone(),
            created_at: p.created_at,
        }
    }
}
