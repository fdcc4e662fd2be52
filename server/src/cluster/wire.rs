//! What one node says to the others on a conversation's Redis channel, byte for byte.
//!
//! A payload is the publishing node's id (16 bytes), a tag, then the tag's fields:
//! `E` a stream event (position as 8 bytes big-endian, then the frame), `F` a frame
//! that is not a stream event (its audience: `a` all, `e` all but, `o` only, then the
//! user, 16 bytes, all zero for all, then the frame), `V` a removal (the user, 16 bytes), `R` a hint to read the stream back
//! from the store. Frames travel as the WebSocket frames the publisher already
//! encoded, so an event is encoded once in the whole cluster.
//!
//! The inbox channel, which every node hears, carries two kinds: `A` users added to a
//! conversation (the conversation, 16 bytes, the number of users, 4 bytes big-endian,
//! the users, 16 bytes each, then the `conversation` frame for their user streams),
//! and `T` a revocation (the user, 16 bytes, when, 8 bytes, the time before which its
//! tokens without a session are refused, 8 bytes, 0 for none, the number of ended
//! sessions, 4 bytes, then the sessions, 16 bytes each).
//!
//! This module only encodes and decodes; it never talks to Redis.

use bytes::Bytes;
use uuid::Uuid;

use crate::auth::Revoked;
use crate::bus::{Audience, Remote};
use crate::ids::{ConversationId, Seq, SessionId, UserId};

/// A node of the cluster: random per process start, so a restarted node is a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(pub Uuid);

impl NodeId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.simple().fmt(f)
    }
}

impl std::str::FromStr for NodeId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// What travels on a conversation's channel (the `Remote` a receiving home handles).
pub fn encode(origin: NodeId, msg: &Remote) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(origin.0.as_bytes());
    match msg {
        Remote::Event { seq, frame } => {
            out.push(b'E');
            out.extend_from_slice(&seq.0.to_be_bytes());
            out.extend_from_slice(frame);
        }
        Remote::Frame { to, frame } => {
            out.push(b'F');
            let (kind, user) = match to {
                Audience::All => (b'a', Uuid::nil()),
                Audience::Except(user) => (b'e', user.0),
                Audience::Only(user) => (b'o', user.0),
            };
            out.push(kind);
            out.extend_from_slice(user.as_bytes());
            out.extend_from_slice(frame);
        }
        Remote::Revoke { user } => {
            out.push(b'V');
            out.extend_from_slice(user.0.as_bytes());
        }
        Remote::Deleted => out.push(b'D'),
        Remote::Resync => out.push(b'R'),
    }
    out
}

/// Users added to a conversation, for the inbox channel.
pub fn encode_added(
    origin: NodeId,
    conversation: ConversationId,
    users: &[UserId],
    frame: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(37 + 16 * users.len() + frame.len());
    out.extend_from_slice(origin.0.as_bytes());
    out.push(b'A');
    out.extend_from_slice(conversation.0.as_bytes());
    out.extend_from_slice(&u32::try_from(users.len()).unwrap_or(u32::MAX).to_be_bytes());
    for user in users {
        out.extend_from_slice(user.0.as_bytes());
    }
    out.extend_from_slice(frame);
    out
}

/// What the inbox channel says.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbox {
    /// Users added to a conversation, with the frame for their user streams.
    Added {
        conversation: ConversationId,
        users: Vec<UserId>,
        frame: Bytes,
    },
    /// Some of a user's tokens no longer count.
    Revoked(Revoked),
}

/// A revocation, for the inbox channel.
pub fn encode_revoked(origin: NodeId, r: &Revoked) -> Vec<u8> {
    let mut out = Vec::with_capacity(57 + 16 * r.sessions.len());
    out.extend_from_slice(origin.0.as_bytes());
    out.push(b'T');
    out.extend_from_slice(r.user.0.as_bytes());
    out.extend_from_slice(&r.at.to_be_bytes());
    // 0 says none: no token is issued before 1970.
    out.extend_from_slice(&r.refuse_before.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(r.sessions.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for s in &r.sessions {
        out.extend_from_slice(s.0.as_bytes());
    }
    out
}

/// Whether an inbox payload is a revocation (kept through an outage).
pub fn is_revocation(payload: &[u8]) -> bool {
    payload.get(16) == Some(&b'T')
}

/// The publisher and what an inbox payload says; `None` for one this version cannot
/// read.
pub fn decode_inbox(payload: &[u8]) -> Option<(NodeId, Inbox)> {
    let origin = NodeId(uuid_at(payload, 0)?);
    let u64_at = |at: usize| {
        Some(u64::from_be_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    let u32_at = |at: usize| {
        Some(u32::from_be_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let inbox = match *payload.get(16)? {
        b'A' => {
            let conversation = ConversationId(uuid_at(payload, 17)?);
            let count = u32_at(33)? as usize;
            let frame_at = count.checked_mul(16)?.checked_add(37)?;
            let users = payload
                .get(37..frame_at)?
                .chunks_exact(16)
                .filter_map(|b| Some(UserId(Uuid::from_bytes(b.try_into().ok()?))))
                .collect();
            let frame = Bytes::copy_from_slice(payload.get(frame_at..)?);
            Inbox::Added {
                conversation,
                users,
                frame,
            }
        }
        b'T' => {
            let user = UserId(uuid_at(payload, 17)?);
            let (at, before) = (u64_at(33)?, u64_at(41)?);
            let count = u32_at(49)? as usize;
            let end = count.checked_mul(16)?.checked_add(53)?;
            if payload.len() != end {
                return None;
            }
            let sessions = payload[53..end]
                .chunks_exact(16)
                .filter_map(|b| Some(SessionId(Uuid::from_bytes(b.try_into().ok()?))))
                .collect();
            Inbox::Revoked(Revoked {
                user,
                at,
                refuse_before: (before > 0).then_some(before),
                sessions,
            })
        }
        _ => return None,
    };
    Some((origin, inbox))
}

/// Whether a payload is a removal (`Remote::Revoke`) or a deletion (`Remote::Deleted`):
/// what must reach the other nodes even after an outage.
pub fn is_removal(payload: &[u8]) -> bool {
    matches!(payload.get(16), Some(b'V' | b'D'))
}

/// The publisher and its message, or `None` for a payload this version cannot read.
pub fn decode(payload: &[u8]) -> Option<(NodeId, Remote)> {
    let origin = NodeId(uuid_at(payload, 0)?);
    let rest = payload.get(17..)?;
    let msg = match *payload.get(16)? {
        b'E' => Remote::Event {
            seq: Seq(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)),
            frame: Bytes::copy_from_slice(&rest[8..]),
        },
        b'F' => {
            let user = UserId(uuid_at(rest, 1)?);
            let to = match rest[0] {
                b'a' => Audience::All,
                b'e' => Audience::Except(user),
                b'o' => Audience::Only(user),
                _ => return None,
            };
            Remote::Frame {
                to,
                frame: Bytes::copy_from_slice(&rest[17..]),
            }
        }
        b'V' if rest.len() == 16 => Remote::Revoke {
            user: UserId(uuid_at(rest, 0)?),
        },
        b'R' if rest.is_empty() => Remote::Resync,
        b'D' if rest.is_empty() => Remote::Deleted,
        _ => return None,
    };
    Some((origin, msg))
}

fn uuid_at(bytes: &[u8], at: usize) -> Option<Uuid> {
    Some(Uuid::from_bytes(bytes.get(at..at + 16)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: Remote) -> Remote {
        let origin = NodeId::random();
        let (from, back) = decode(&encode(origin, &msg)).expect("decodes");
        assert_eq!(from, origin);
        back
    }

    #[test]
    fn every_message_survives_the_trip() {
        let frame = Bytes::from_static(b"\x81\x02{}");
        match round_trip(Remote::Event {
            seq: Seq(u64::MAX - 1),
            frame: frame.clone(),
        }) {
            Remote::Event { seq, frame: f } => {
                assert_eq!(seq, Seq(u64::MAX - 1));
                assert_eq!(f, frame);
            }
            other => panic!("{other:?}"),
        }
        let user = UserId::random();
        for to in [Audience::Except(user), Audience::Only(user)] {
            match round_trip(Remote::Frame {
                to,
                frame: frame.clone(),
            }) {
                Remote::Frame { to: back, frame: f } => {
                    assert_eq!(back, to);
                    assert_eq!(f, frame);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            round_trip(Remote::Frame { to: Audience::All, frame: Bytes::new() }),
            Remote::Frame { to: Audience::All, frame } if frame.is_empty()
        ));
        assert!(matches!(
            round_trip(Remote::Revoke { user }),
            Remote::Revoke { user: u } if u == user
        ));
        assert!(matches!(round_trip(Remote::Resync), Remote::Resync));
        assert!(is_removal(&encode(
            NodeId::random(),
            &Remote::Revoke { user }
        )));
        assert!(!is_removal(&encode(NodeId::random(), &Remote::Resync)));
    }

    #[test]
    fn additions_survive_the_trip() {
        let (origin, conversation) = (NodeId::random(), ConversationId::random());
        let users = vec![UserId::random(), UserId::random()];
        let payload = encode_added(origin, conversation, &users, b"frame");
        let (o, inbox) = decode_inbox(&payload).expect("decodes");
        assert_eq!(o, origin);
        assert_eq!(
            inbox,
            Inbox::Added {
                conversation,
                users,
                frame: Bytes::from_static(b"frame")
            }
        );
        assert!(decode_inbox(&payload[..40]).is_none(), "users cut short");
        assert!(
            decode(&payload).is_none(),
            "not a conversation channel's message"
        );
    }

    #[test]
    fn revocations_survive_the_trip() {
        let origin = NodeId::random();
        let r = Revoked {
            user: UserId::random(),
            at: 1_770_000_000,
            refuse_before: Some(1_770_000_001),
            sessions: vec![SessionId::random(), SessionId::random()],
        };
        let payload = encode_revoked(origin, &r);
        assert!(is_revocation(&payload));
        assert_eq!(
            decode_inbox(&payload),
            Some((origin, Inbox::Revoked(r.clone())))
        );
        assert!(decode_inbox(&payload[..payload.len() - 1]).is_none());
        let none = Revoked {
            refuse_before: None,
            sessions: Vec::new(),
            ..r
        };
        assert_eq!(
            decode_inbox(&encode_revoked(origin, &none)),
            Some((origin, Inbox::Revoked(none)))
        );
    }

    #[test]
    fn garbage_is_refused_not_misread() {
        let origin = NodeId::random();
        let mut short = encode(
            origin,
            &Remote::Revoke {
                user: UserId::random(),
            },
        );
        short.pop();
        assert!(decode(&short).is_none());
        assert!(decode(b"").is_none());
        let mut unknown = encode(origin, &Remote::Resync);
        unknown[16] = b'?';
        assert!(decode(&unknown).is_none());
        let mut event = encode(
            origin,
            &Remote::Event {
                seq: Seq(1),
                frame: Bytes::new(),
            },
        );
        event.truncate(20);
        assert!(decode(&event).is_none());
    }
}
