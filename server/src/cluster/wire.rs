//! What one node says to the others on a conversation's Redis channel, byte for byte.
//!
//! A payload is the publishing node's id (16 bytes), a tag, then the tag's fields:
//! `E` a stream event (position as 8 bytes big-endian, then the frame), `F` a frame
//! that is not a stream event (its audience: `a` all, `e` all but, `o` only, then the
//! user, 16 bytes, all zero for all, then the frame), `V` a removal (the user, 16 bytes), `R` a hint to read the stream back
//! from the store. Frames travel as the WebSocket frames the publisher already
//! encoded, so an event is encoded once in the whole cluster.
//!
//! The inbox channel carries one kind (`A`): users added to a conversation (the
//! conversation, 16 bytes, the number of users, 4 bytes big-endian, the users, 16
//! bytes each, then the `conversation` frame for their user streams).
//!
//! This module only encodes and decodes; it never talks to Redis.

use bytes::Bytes;
use uuid::Uuid;

use crate::bus::{Audience, Remote};
use crate::ids::{ConversationId, Seq, UserId};

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

/// What an inbox payload says: the publisher, the conversation, the users and the
/// frame; `None` for a payload this version cannot read.
pub fn decode_added(payload: &[u8]) -> Option<(NodeId, ConversationId, Vec<UserId>, Bytes)> {
    let origin = NodeId(uuid_at(payload, 0)?);
    if *payload.get(16)? != b'A' {
        return None;
    }
    let conversation = ConversationId(uuid_at(payload, 17)?);
    let count = u32::from_be_bytes(payload.get(33..37)?.try_into().ok()?) as usize;
    let frame_at = count.checked_mul(16)?.checked_add(37)?;
    let users = payload
        .get(37..frame_at)?
        .chunks_exact(16)
        .filter_map(|b| Some(UserId(Uuid::from_bytes(b.try_into().ok()?))))
        .collect();
    let frame = Bytes::copy_from_slice(payload.get(frame_at..)?);
    Some((origin, conversation, users, frame))
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
        let (o, c, u, f) = decode_added(&payload).expect("decodes");
        assert_eq!(
            (o, c, u, &f[..]),
            (origin, conversation, users, &b"frame"[..])
        );
        assert!(decode_added(&payload[..40]).is_none(), "users cut short");
        assert!(
            decode(&payload).is_none(),
            "not a conversation channel's message"
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
