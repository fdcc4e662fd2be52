//! What one node says to the others on a conversation's Redis channel, byte for byte.
//!
//! A payload is the publishing node's id (16 bytes), a tag, then the tag's fields:
//! `E` a stream event (position as 8 bytes big-endian, then the frame), `F` a frame
//! that is not a stream event (the user to skip, 16 bytes, all zero for nobody, then
//! the frame), `V` a removal (the user, 16 bytes), `R` a hint to read the stream back
//! from the store. Frames travel as the WebSocket frames the publisher already
//! encoded, so an event is encoded once in the whole cluster.
//!
//! This module only encodes and decodes; it never talks to Redis.

use bytes::Bytes;
use uuid::Uuid;

use crate::bus::Remote;
use crate::ids::{Seq, UserId};

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
        Remote::Frame { skip, frame } => {
            out.push(b'F');
            out.extend_from_slice(skip.map_or(Uuid::nil(), |u| u.0).as_bytes());
            out.extend_from_slice(frame);
        }
        Remote::Revoke { user } => {
            out.push(b'V');
            out.extend_from_slice(user.0.as_bytes());
        }
        Remote::Resync => out.push(b'R'),
    }
    out
}

/// Whether a payload is a removal (`Remote::Revoke`).
pub fn is_removal(payload: &[u8]) -> bool {
    payload.get(16) == Some(&b'V')
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
            let skip = uuid_at(rest, 0)?;
            Remote::Frame {
                skip: (!skip.is_nil()).then_some(UserId(skip)),
                frame: Bytes::copy_from_slice(&rest[16..]),
            }
        }
        b'V' if rest.len() == 16 => Remote::Revoke {
            user: UserId(uuid_at(rest, 0)?),
        },
        b'R' if rest.is_empty() => Remote::Resync,
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
        match round_trip(Remote::Frame {
            skip: Some(user),
            frame: frame.clone(),
        }) {
            Remote::Frame { skip, frame: f } => {
                assert_eq!(skip, Some(user));
                assert_eq!(f, frame);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            round_trip(Remote::Frame { skip: None, frame: Bytes::new() }),
            Remote::Frame { skip: None, frame } if frame.is_empty()
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
