//! The WebSocket protocol of docs/protocol.md: client events parsed (simd-json, in
//! place, on the frame's own buffer) and validated into `ClientEvent` (here); server
//! events encoded once into shared frames (`event`); close codes (`close`); the
//! WebSocket frame codec itself (`frame`). Pure: no I/O, no state beyond the
//! per-thread parse buffers.

use std::cell::RefCell;
use std::collections::HashMap;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::ids::{ConversationId, MessageId, Seq};
pub use crate::text::CONTENT_MAX_CHARS;
use crate::text::{ClientId, Content, ContentError};

mod close;
mod event;
pub mod frame;

pub use close::{close_echo, Close};
pub use event::{
    conversation_event, framed, role_event, Active, ConversationAction, Membership, Presence,
    ServerEvent,
};

/// Longest reaction emoji, in characters (flags and skin tones are several code points).
pub const EMOJI_MAX_CHARS: usize = 16;
/// Longest client reference echoed back in errors.
pub const REF_MAX_CHARS: usize = 64;

/// A validated event from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Message {
        content: Content,
        /// The client's own id for this send: a repeat is answered with the original.
        client_id: Option<ClientId>,
    },
    Typing,
    Edit {
        message_id: MessageId,
        content: Content,
    },
    Delete {
        message_id: MessageId,
    },
    Reaction {
        message_id: MessageId,
        emoji: String,
    },
    Presence {
        status: Presence,
    },
    Ping,
    /// A fresh token for this socket, so it outlives the one it was opened with.
    Auth {
        token: String,
    },
    /// The conversation is read up to `seq`: the sender's read marker moves there.
    Read {
        seq: Seq,
    },
    /// A user stream's first event: where the client's copy of each listed
    /// conversation's stream ends (ids that are not conversations are left out).
    Resume {
        positions: HashMap<ConversationId, Seq>,
    },
}

/// Which conversation an event names with `conversation_id`: what a user stream needs
/// to route it (a conversation socket has its own and ignores the field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Absent,
    /// Not a conversation id: like one the user is not in.
    Unknown,
    Conversation(ConversationId),
}

/// Why a client frame was refused; the text is the `detail` of the error event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Invalid JSON")]
    InvalidJson,
    #[error("Expected a JSON object with a \"type\" field")]
    NotAnEvent,
    #[error("Unknown event type: {0}")]
    UnknownType(String),
    #[error("Field '{0}' is required")]
    Missing(&'static str),
    #[error("Field '{0}' must be a string")]
    NotAString(&'static str),
    #[error("Message content must not be empty")]
    EmptyContent,
    #[error("Message content exceeds {CONTENT_MAX_CHARS} characters")]
    ContentTooLong,
    #[error("Message content must not contain NUL characters")]
    NulInContent,
    #[error("Message content must not contain control characters other than tab and line breaks")]
    ControlInContent,
    #[error("Emoji must be 1-{EMOJI_MAX_CHARS} characters")]
    BadEmoji,
    #[error("Status must be one of online, away, offline")]
    BadStatus,
    #[error("Message not found")]
    UnknownMessage,
    #[error("client_id must be 1-64 characters")]
    BadClientId,
    #[error("Binary frames are not supported; send JSON text")]
    Binary,
    #[error("Field '{0}' must be a stream position (0 or more)")]
    BadPosition(&'static str),
    #[error("Field 'positions' must be an object of conversation ids and positions, at most {POSITIONS_MAX}")]
    BadPositions,
}

/// The most conversations one `resume` may list.
pub const POSITIONS_MAX: usize = 10_000;

/// A parsed frame: the event (or why not) and the client's optional `ref`, which is
/// echoed in any error about it so clients can match errors to what they sent.
#[derive(Debug)]
pub struct Parsed {
    pub event: Result<ClientEvent, ProtocolError>,
    pub reference: Option<String>,
    pub conversation: Target,
}

/// Parses one text frame. The buffer is used as simd-json's scratch space.
pub fn parse(buf: &mut [u8]) -> Parsed {
    // simd-json's scratch buffers are reused per thread (each shard is one thread):
    // allocating them per frame cost more than the parse itself.
    thread_local! {
        static BUFFERS: RefCell<simd_json::Buffers> = RefCell::new(simd_json::Buffers::new(512));
    }
    let parsed = BUFFERS
        .with(|b| simd_json::value::borrowed::to_value_with_buffers(buf, &mut b.borrow_mut()));
    let value = match parsed {
        Ok(v) => v,
        Err(_) => {
            return Parsed {
                event: Err(ProtocolError::InvalidJson),
                reference: None,
                conversation: Target::Absent,
            }
        }
    };
    let fields = value.as_object().map(Fields);
    let reference = fields.and_then(|f| f.get("ref")).and_then(|r| match r {
        BorrowedValue::String(s) => Some(s.chars().take(REF_MAX_CHARS).collect()),
        // A number's text can be long (1e300 is written out digit by digit): capped
        // like a string's.
        BorrowedValue::Static(n) if !n.is_null() => {
            Some(n.to_string().chars().take(REF_MAX_CHARS).collect())
        }
        _ => None,
    });
    let conversation = match fields.and_then(|f| f.get("conversation_id")) {
        None => Target::Absent,
        Some(v) if v.is_null() => Target::Absent,
        Some(v) => v
            .as_str()
            .and_then(|id| id.parse().ok())
            .map_or(Target::Unknown, Target::Conversation),
    };
    Parsed {
        event: fields.ok_or(ProtocolError::NotAnEvent).and_then(event),
        reference,
        conversation,
    }
}

/// An event's fields, read as the quick-start guide's server (Python's `json`) and
/// serde read JSON: of two fields with the same name, the last counts. simd-json
/// alone answers with the first while an object is small and with the last once it is
/// large enough to be hashed; reading through here makes that one rule, so a frame
/// means the same event here as to any other reader.
#[derive(Clone, Copy)]
struct Fields<'v, 'b>(&'v simd_json::borrowed::Object<'b>);

impl<'v, 'b> Fields<'v, 'b> {
    fn get(self, name: &str) -> Option<&'v BorrowedValue<'b>> {
        self.0
            .iter()
            .filter(|(key, _)| key.as_ref() == name)
            .last()
            .map(|(_, value)| value)
    }
}

fn event(value: Fields) -> Result<ClientEvent, ProtocolError> {
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(ProtocolError::NotAnEvent)?;
    Ok(match kind {
        "message" => ClientEvent::Message {
            content: content(value)?,
            client_id: match value.get("client_id") {
                None => None,
                Some(v) if v.is_null() => None,
                Some(v) => {
                    let id = v.as_str().ok_or(ProtocolError::NotAString("client_id"))?;
                    Some(ClientId::parse(id).map_err(|_| ProtocolError::BadClientId)?)
                }
            },
        },
        "typing" => ClientEvent::Typing,
        "edit" => ClientEvent::Edit {
            message_id: message_id(value)?,
            content: content(value)?,
        },
        "delete" => ClientEvent::Delete {
            message_id: message_id(value)?,
        },
        "reaction" => {
            let emoji = string(value, "emoji")?;
            let n = emoji.chars().count();
            if n == 0 || n > EMOJI_MAX_CHARS || emoji.trim().is_empty() || emoji.contains('\0') {
                return Err(ProtocolError::BadEmoji);
            }
            ClientEvent::Reaction {
                message_id: message_id(value)?,
                emoji: emoji.to_owned(),
            }
        }
        "presence" => ClientEvent::Presence {
            status: match string(value, "status")? {
                "online" => Presence::Online,
                "away" => Presence::Away,
                "offline" => Presence::Offline,
                _ => return Err(ProtocolError::BadStatus),
            },
        },
        "ping" => ClientEvent::Ping,
        "auth" => ClientEvent::Auth {
            token: string(value, "token")?.to_owned(),
        },
        "read" => ClientEvent::Read {
            seq: value
                .get("seq")
                .and_then(position)
                .ok_or(ProtocolError::BadPosition("seq"))?,
        },
        "resume" => ClientEvent::Resume {
            positions: positions(value)?,
        },
        other => return Err(ProtocolError::UnknownType(other.chars().take(64).collect())),
    })
}

fn string<'v>(value: Fields<'v, '_>, field: &'static str) -> Result<&'v str, ProtocolError> {
    match value.get(field) {
        None => Err(ProtocolError::Missing(field)),
        Some(v) if v.is_null() => Err(ProtocolError::Missing(field)),
        Some(v) => v.as_str().ok_or(ProtocolError::NotAString(field)),
    }
}

/// Content as `text::Content` allows it, refusals named for the client.
fn content(value: Fields) -> Result<Content, ProtocolError> {
    Content::parse(string(value, "content")?).map_err(|e| match e {
        ContentError::Blank => ProtocolError::EmptyContent,
        ContentError::TooLong => ProtocolError::ContentTooLong,
        ContentError::Nul => ProtocolError::NulInContent,
        ContentError::Control => ProtocolError::ControlInContent,
    })
}

/// A stream position: a whole number, 0 or more.
fn position(value: &BorrowedValue) -> Option<Seq> {
    value.as_u64().map(Seq)
}

/// `positions` of a `resume`: absent or null is none; keys that are not conversation
/// ids are left out (like conversations the user is not in).
fn positions(value: Fields) -> Result<HashMap<ConversationId, Seq>, ProtocolError> {
    let Some(listed) = value.get("positions").filter(|v| !v.is_null()) else {
        return Ok(HashMap::new());
    };
    let listed = listed.as_object().ok_or(ProtocolError::BadPositions)?;
    if listed.len() > POSITIONS_MAX {
        return Err(ProtocolError::BadPositions);
    }
    // Of an id given twice, the last counts, as for any field.
    let mut out = HashMap::with_capacity(listed.len());
    for (id, seq) in listed.iter() {
        let seq = position(seq).ok_or(ProtocolError::BadPositions)?;
        if let Ok(id) = id.parse() {
            out.insert(id, seq);
        }
    }
    Ok(out)
}

fn message_id(value: Fields) -> Result<MessageId, ProtocolError> {
    string(value, "message_id")?
        .parse()
        .map_err(|_| ProtocolError::UnknownMessage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    fn parse_str(s: &str) -> Parsed {
        parse(&mut s.as_bytes().to_vec())
    }

    /// Decodes a server frame back to JSON, checking the header on the way.
    fn unframe(frame: &[u8]) -> serde_json::Value {
        assert_eq!(frame[0], 0x81);
        let (len, start) = match frame[1] {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        assert_eq!(frame.len(), start + len);
        serde_json::from_slice(&frame[start..]).expect("json")
    }

    #[test]
    fn parses_every_client_event() {
        let id = MessageId(uuid::Uuid::now_v7());
        assert_eq!(
            parse_str(r#"{"type":"message","content":"Hello!"}"#).event,
            Ok(ClientEvent::Message {
                content: Content::parse("Hello!").expect("content"),
                client_id: None,
            })
        );
        assert_eq!(
            parse_str(r#"{"type":"message","content":"Hi","client_id":"c-1"}"#).event,
            Ok(ClientEvent::Message {
                content: Content::parse("Hi").expect("content"),
                client_id: Some(ClientId::parse("c-1").expect("client id")),
            })
        );
        assert_eq!(
            parse_str(r#"{"type": "typing"}"#).event,
            Ok(ClientEvent::Typing)
        );
        assert_eq!(parse_str(r#"{"type":"ping"}"#).event, Ok(ClientEvent::Ping));
        assert_eq!(
            parse_str(&format!(
                r#"{{"type":"edit","message_id":"{id}","content":"x"}}"#
            ))
            .event,
            Ok(ClientEvent::Edit {
                message_id: id,
                content: Content::parse("x").expect("content")
            })
        );
        assert_eq!(
            parse_str(&format!(r#"{{"type":"delete","message_id":"{id}"}}"#)).event,
            Ok(ClientEvent::Delete { message_id: id })
        );
        assert_eq!(
            parse_str(&format!(
                r#"{{"type":"reaction","message_id":"{id}","emoji":"👍"}}"#
            ))
            .event,
            Ok(ClientEvent::Reaction {
                message_id: id,
                emoji: "👍".into()
            })
        );
        assert_eq!(
            parse_str(r#"{"type":"presence","status":"away"}"#).event,
            Ok(ClientEvent::Presence {
                status: Presence::Away
            })
        );
    }

    #[test]
    fn refuses_bad_events_with_a_reason() {
        let err = |s: &str| parse_str(s).event.expect_err(s);
        assert_eq!(err("{not json"), ProtocolError::InvalidJson);
        assert_eq!(err("[1,2]"), ProtocolError::NotAnEvent);
        assert_eq!(err(r#"{"content":"x"}"#), ProtocolError::NotAnEvent);
        assert_eq!(
            err(r#"{"type":"dance"}"#),
            ProtocolError::UnknownType("dance".into())
        );
        assert_eq!(
            err(r#"{"type":"message"}"#),
            ProtocolError::Missing("content")
        );
        assert_eq!(
            err(r#"{"type":"message","content":5}"#),
            ProtocolError::NotAString("content")
        );
        assert_eq!(
            err(r#"{"type":"message","content":"   "}"#),
            ProtocolError::EmptyContent
        );
        assert_eq!(
            err(r#"{"type":"message","content":"a\u0000b"}"#),
            ProtocolError::NulInContent
        );
        let long = "é".repeat(CONTENT_MAX_CHARS + 1);
        assert_eq!(
            err(&format!(r#"{{"type":"message","content":"{long}"}}"#)),
            ProtocolError::ContentTooLong
        );
        assert_eq!(
            err(r#"{"type":"edit","message_id":"nope","content":"x"}"#),
            ProtocolError::UnknownMessage
        );
        assert_eq!(
            err(r#"{"type":"presence","status":"busy"}"#),
            ProtocolError::BadStatus
        );
        assert_eq!(
            err(r#"{"type":"message","content":"x","client_id":""}"#),
            ProtocolError::BadClientId
        );
        let long = "c".repeat(65);
        assert_eq!(
            err(&format!(
                r#"{{"type":"message","content":"x","client_id":"{long}"}}"#
            )),
            ProtocolError::BadClientId
        );
        assert_eq!(
            err(r#"{"type":"message","content":"x","client_id":7}"#),
            ProtocolError::NotAString("client_id")
        );
    }

    #[test]
    fn content_limit_counts_characters() {
        let exactly = "é".repeat(CONTENT_MAX_CHARS);
        assert!(
            parse_str(&format!(r#"{{"type":"message","content":"{exactly}"}}"#))
                .event
                .is_ok()
        );
    }

    #[test]
    fn reference_is_kept_for_errors() {
        let p = parse_str(r#"{"type":"dance","ref":"abc"}"#);
        assert_eq!(p.reference.as_deref(), Some("abc"));
        let p = parse_str(r#"{"type":"message","content":"x","ref":42}"#);
        assert_eq!(p.reference.as_deref(), Some("42"));
    }

    #[test]
    fn frames_are_valid_for_every_size() {
        for size in [0, 10, 125, 126, 1000, 65_535, 70_000] {
            let content = "x".repeat(size);
            let frame = ServerEvent::Error {
                detail: &content,
                reference: None,
            }
            .frame();
            let v = unframe(&frame);
            assert_eq!(v["type"], "error");
            assert_eq!(v["detail"].as_str().map(str::len), Some(size));
        }
    }

    #[test]
    fn message_event_matches_the_contract() {
        let (m, c, u) = (
            MessageId(uuid::Uuid::now_v7()),
            ConversationId::random(),
            UserId::random(),
        );
        let v = unframe(
            &ServerEvent::Message {
                message_id: m,
                conversation_id: c,
                content: "Hello everyone!",
                sender_id: u,
                sender_username: "alice",
                timestamp: "2026-02-04T10:30:00.123456Z",
                is_edited: false,
                seq: Seq(7),
                is_deleted: false,
                client_id: None,
            }
            .frame(),
        );
        assert_eq!(
            v,
            serde_json::json!({"type":"message","message_id":m.to_string(),"conversation_id":c.to_string(),
                "content":"Hello everyone!","sender_id":u.to_string(),"sender_username":"alice",
                "timestamp":"2026-02-04T10:30:00.123456Z","is_edited":false,"seq":7})
        );
        assert_eq!(
            unframe(
                &ServerEvent::Resync {
                    from_seq: Seq(9),
                    conversation_id: c
                }
                .frame()
            ),
            serde_json::json!({"type":"resync","from_seq":9,"conversation_id":c.to_string()})
        );
        assert_eq!(
            unframe(&ServerEvent::Pong.frame()),
            serde_json::json!({"type":"pong"})
        );
    }

    #[test]
    fn a_deleted_message_says_so_and_nothing_more() {
        let (m, c, u) = (
            MessageId(uuid::Uuid::now_v7()),
            ConversationId::random(),
            UserId::random(),
        );
        let message = unframe(
            &ServerEvent::Message {
                message_id: m,
                conversation_id: c,
                content: "",
                sender_id: u,
                sender_username: "alice",
                timestamp: "2026-02-04T10:30:00.123456Z",
                is_edited: false,
                seq: Seq(7),
                is_deleted: true,
                client_id: Some("k"),
            }
            .frame(),
        );
        assert_eq!(
            message,
            serde_json::json!({"type":"message","message_id":m.to_string(),"conversation_id":c.to_string(),
                "content":"","sender_id":u.to_string(),"sender_username":"alice",
                "timestamp":"2026-02-04T10:30:00.123456Z","is_edited":false,"seq":7,
                "is_deleted":true,"client_id":"k"})
        );
        let edit = unframe(
            &ServerEvent::Edit {
                message_id: m,
                content: "",
                sender_id: u,
                is_edited: true,
                timestamp: "2026-02-04T10:30:00.123456Z",
                seq: Seq(8),
                is_deleted: true,
                conversation_id: c,
            }
            .frame(),
        );
        assert_eq!(
            edit,
            serde_json::json!({"type":"edit","message_id":m.to_string(),"content":"",
                "sender_id":u.to_string(),"is_edited":true,
                "timestamp":"2026-02-04T10:30:00.123456Z","seq":8,"is_deleted":true,
                "conversation_id":c.to_string()})
        );
    }

    #[test]
    fn user_stream_events_parse() {
        let c = ConversationId::random();
        let parsed = parse_str(&format!(
            r#"{{"type":"read","conversation_id":"{c}","seq":4}}"#
        ));
        assert_eq!(parsed.event, Ok(ClientEvent::Read { seq: Seq(4) }));
        assert_eq!(parsed.conversation, Target::Conversation(c));
        let bad = parse_str(r#"{"type":"read","conversation_id":"nope","seq":-1}"#);
        assert_eq!(bad.event, Err(ProtocolError::BadPosition("seq")));
        assert_eq!(bad.conversation, Target::Unknown);
        assert_eq!(
            parse_str(r#"{"type":"typing"}"#).conversation,
            Target::Absent
        );
        let resume = parse_str(&format!(
            r#"{{"type":"resume","positions":{{"{c}":7,"not-an-id":3}}}}"#
        ));
        assert_eq!(
            resume.event,
            Ok(ClientEvent::Resume {
                positions: HashMap::from([(c, Seq(7))])
            })
        );
        assert_eq!(
            parse_str(r#"{"type":"resume"}"#).event,
            Ok(ClientEvent::Resume {
                positions: HashMap::new()
            })
        );
        assert_eq!(
            parse_str(&format!(r#"{{"type":"resume","positions":{{"{c}":"7"}}}}"#)).event,
            Err(ProtocolError::BadPositions)
        );
        assert_eq!(
            parse_str(r#"{"type":"resume","positions":[1]}"#).event,
            Err(ProtocolError::BadPositions)
        );
    }

    #[test]
    fn close_frames() {
        let frames = Close::NotAMember.frames();
        assert_eq!(
            unframe(&frames[0]),
            serde_json::json!({"type":"error","detail":"Not a member of this conversation"})
        );
        assert_eq!(&frames[1][2..4], &1008u16.to_be_bytes());
        assert_eq!(Close::IdleTimeout.frames().len(), 1);
    }

    #[test]
    fn of_two_fields_with_one_name_the_last_counts() {
        let message = |content: &str| {
            Ok(ClientEvent::Message {
                content: Content::parse(content).expect("content"),
                client_id: None,
            })
        };
        assert_eq!(
            parse_str(r#"{"type":"message","content":"first","content":"last"}"#).event,
            message("last")
        );
        assert_eq!(
            parse_str(r#"{"type":"ping","type":"message","content":"x"}"#).event,
            message("x")
        );
        // However many fields: small objects and hashed ones read alike.
        for n in [0, 20, 31, 40, 100] {
            let many: String = (0..n).map(|i| format!(r#""f{i}":{i},"#)).collect();
            let frame = format!(r#"{{"content":"first",{many}"type":"message","content":"last"}}"#);
            assert_eq!(parse_str(&frame).event, message("last"), "{n} more fields");
        }
        let parsed = parse_str(r#"{"type":"ping","ref":"a","ref":"b"}"#);
        assert_eq!(parsed.reference.as_deref(), Some("b"));
    }

    #[test]
    fn integers_beyond_64_bits_are_json_too() {
        // JSON.stringify(2 ** 64) in a browser; and a whole frame of one large number.
        let parsed = parse_str(r#"{"type":"ping","ref":18446744073709552000,"n":1e3}"#);
        assert_eq!(parsed.event, Ok(ClientEvent::Ping));
        assert_eq!(parsed.reference.as_deref(), Some("18446744073709552000"));
        assert_eq!(
            parse_str(&"3".repeat(40)).event,
            Err(ProtocolError::NotAnEvent)
        );
        let huge = parse_str(r#"{"type":"ping","ref":1e300}"#).reference;
        assert_eq!(
            huge.map(|r| r.len()),
            Some(REF_MAX_CHARS),
            "an echo is capped"
        );
    }

    #[test]
    fn auth_event() {
        assert_eq!(
            parse_str(r#"{"type":"auth","token":"abc"}"#).event,
            Ok(ClientEvent::Auth {
                token: "abc".into()
            })
        );
        assert_eq!(
            parse_str(r#"{"type":"auth"}"#).event,
            Err(ProtocolError::Missing("token"))
        );
    }
}
