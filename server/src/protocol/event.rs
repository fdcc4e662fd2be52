//! Server events: serialised once and framed once into a ready-to-write, unmasked
//! WebSocket text frame (`Bytes`) that every recipient shares. Field names and order
//! are the wire contract (docs/protocol.md).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::Presence;
use crate::ids::{ConversationId, MessageId, Seq, UserId};

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
        /// The sender's own id for the send, when it gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
    System {
        content: &'a str,
        sender_id: UserId,
        active_users: &'a [UserId],
        /// On `joined`: the conversation's position when the user joined.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
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
    },
    Delete {
        message_id: MessageId,
        sender_id: UserId,
        timestamp: &'a str,
        seq: Seq,
    },
    Reaction {
        message_id: MessageId,
        emoji: &'a str,
        sender_id: UserId,
        sender_username: &'a str,
        action: &'a str,
        seq: Seq,
    },
    Presence {
        sender_id: UserId,
        sender_username: &'a str,
        status: Presence,
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
    },
    /// The answer to a token refresh: the socket now lives until `expires_at`.
    Auth {
        status: &'a str,
        expires_at: &'a str,
    },
}

/// A user's arrival in or departure from a conversation, as `system` events say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Joined,
    Left,
}

impl ServerEvent<'_> {
    /// The `system` event of `username` joining (at position `seq`) or leaving, with
    /// who is connected now.
    pub fn membership(
        change: Membership,
        user: UserId,
        username: &str,
        active_users: &[UserId],
        seq: Option<Seq>,
    ) -> Bytes {
        let verb = match change {
            Membership::Joined => "joined",
            Membership::Left => "left",
        };
        let content = format!("User {username} {verb} the conversation");
        ServerEvent::System {
            content: &content,
            sender_id: user,
            active_users,
            seq,
        }
        .frame()
    }

    /// Serialises the event and frames it as one unmasked text frame, once.
    pub fn frame(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(256).writer();
        // Reserve the largest header a frame under 64 KiB needs; fixed up below.
        let _ = std::io::Write::write_all(&mut out, &[0; 4]);
        if serde_json::to_writer(&mut out, self).is_err() {
            // Serialising plain structs of strings cannot fail; never send half a frame.
            return Bytes::new();
        }
        let mut buf = out.into_inner();
        let len = buf.len() - 4;
        if len < 126 {
            buf[2] = 0x81;
            buf[3] = len as u8;
            buf.split_off(2).freeze()
        } else if len <= usize::from(u16::MAX) {
            buf[0] = 0x81;
            buf[1] = 126;
            buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            buf.freeze()
        } else {
            let mut framed = BytesMut::with_capacity(len + 10);
            framed.put_u8(0x81);
            framed.put_u8(127);
            framed.put_u64(len as u64);
            framed.extend_from_slice(&buf[4..]);
            framed.freeze()
        }
    }
}
