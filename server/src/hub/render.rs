//! The one rendering of a stream event into its frame, shared by live delivery, gap
//! filling and the replay of a resuming client, so all three send the same bytes. A
//! message deleted since, and its edits, render with empty content and `is_deleted`.
//!
//! A leaf: it reads a stored event and writes bytes, nothing else.

use bytes::Bytes;

use crate::ids::{format_timestamp, ConversationId};
use crate::protocol::ServerEvent;
use crate::store::{StreamEvent, StreamKind};

/// The frame of a stream event, as live delivery sends it.
pub fn stream_frame(conversation: ConversationId, e: &StreamEvent) -> Bytes {
    let timestamp = format_timestamp(&e.at);
    match &e.kind {
        StreamKind::Message { content, client_id } => ServerEvent::Message {
            message_id: e.message_id,
            conversation_id: conversation,
            content,
            sender_id: e.user_id,
            sender_username: &e.username,
            timestamp: &timestamp,
            is_edited: false,
            seq: e.seq,
            is_deleted: false,
            client_id: client_id.as_deref(),
        },
        StreamKind::DeletedMessage { client_id } => ServerEvent::Message {
            message_id: e.message_id,
            conversation_id: conversation,
            content: "",
            sender_id: e.user_id,
            sender_username: &e.username,
            timestamp: &timestamp,
            is_edited: false,
            seq: e.seq,
            is_deleted: true,
            client_id: client_id.as_deref(),
        },
        StreamKind::Edit { content } => ServerEvent::Edit {
            message_id: e.message_id,
            content,
            sender_id: e.user_id,
            is_edited: true,
            timestamp: &timestamp,
            seq: e.seq,
            is_deleted: false,
            conversation_id: conversation,
        },
        StreamKind::DeletedEdit => ServerEvent::Edit {
            message_id: e.message_id,
            content: "",
            sender_id: e.user_id,
            is_edited: true,
            timestamp: &timestamp,
            seq: e.seq,
            is_deleted: true,
            conversation_id: conversation,
        },
        StreamKind::Delete => ServerEvent::Delete {
            message_id: e.message_id,
            sender_id: e.user_id,
            timestamp: &timestamp,
            seq: e.seq,
            conversation_id: conversation,
        },
        StreamKind::Reaction { emoji, added } => ServerEvent::Reaction {
            message_id: e.message_id,
            emoji,
            sender_id: e.user_id,
            sender_username: &e.username,
            action: if *added { "added" } else { "removed" },
            seq: e.seq,
            conversation_id: conversation,
        },
    }
    .frame()
}
