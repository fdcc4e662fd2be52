//! Identifier newtypes, stream positions (`Seq`) and the wire timestamp format.
//!
//! Ids are UUIDs on the inside and opaque strings on the wire. Message ids are
//! time-ordered (UUIDv7); `MessageIdGen` keeps them strictly increasing per home shard.
//! The order of a conversation is its stream position, not its ids: `Seq` is assigned
//! inside the commit, so it is the order of history by construction.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A registered user.
    UserId
);
id_type!(
    /// A conversation (direct or group).
    ConversationId
);
id_type!(
    /// A chat message; time-ordered (UUIDv7).
    MessageId
);
id_type!(
    /// A login: one device's session, which its refresh tokens renew and which ends
    /// with a logout (then every access token issued for it stops working).
    SessionId
);

/// A position in a conversation's stream. Every persisted event of a conversation
/// (message, edit, delete, reaction) takes the next one: 1, 2, 3, ... with no gaps.
/// `Seq(0)` is the position of a conversation nothing has happened in yet.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// As the stores keep it (a signed 64-bit column).
    pub fn to_db(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    pub fn from_db(value: i64) -> Self {
        Self(u64::try_from(value).unwrap_or(0))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Generates strictly increasing UUIDv7 message ids on one shard, even when the
/// clock stalls or steps back within the process.
#[derive(Debug, Default)]
pub struct MessageIdGen {
    last: u128,
}

impl MessageIdGen {
    pub fn next(&mut self, now: DateTime<Utc>) -> MessageId {
        let ms = u128::from(now.timestamp_millis().max(0).unsigned_abs()) & ((1 << 48) - 1);
        let random: u128 = rand::random::<u128>() & ((1 << 74) - 1);
        let candidate = ms << 80 | random;
        let base = if candidate > self.last {
            candidate
        } else {
            self.last + 1
        };
        self.last = base;
        // Lay the 74 bits below the timestamp around the version and variant fields.
        let rand_a = (base >> 62) & 0xfff;
        let rand_b = base & ((1 << 62) - 1);
        let ts = base >> 80;
        let bits = ts << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b;
        MessageId(Uuid::from_u128(bits))
    }
}

/// A time as Unix seconds, as tokens count it (0 before 1970).
pub fn unix_seconds(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp()).unwrap_or(0)
}

/// A participant's role in a conversation: what they may do beyond taking part.
/// A conversation has at most one owner; a direct conversation has none (its two
/// people are members, and either may do what an owner does to the conversation).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Changes roles and deletes the conversation, besides what an admin does.
    Owner,
    /// Renames and archives the conversation, removes members, deletes any message.
    Admin,
    Member,
}

impl Role {
    /// As the wire and both stores spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// Whether the role moderates: renames, archives, removes members, deletes messages.
    pub const fn moderates(self) -> bool {
        matches!(self, Self::Owner | Self::Admin)
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Formats a timestamp the way the API promises: UTC, microseconds, `Z` suffix.
pub fn format_timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The current time truncated to microseconds, the precision every store keeps.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Serde helper: timestamps in the API's format.
pub mod timestamp {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_timestamp(at))
    }

    /// A time that may be absent: null on the wire.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::Serializer;

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_increase_even_when_the_clock_stalls() {
        let mut gen = MessageIdGen::default();
        let now = Utc::now();
        let mut prev = gen.next(now);
        for _ in 0..10_000 {
            let id = gen.next(now);
            assert!(id > prev, "{id} <= {prev}");
            assert_eq!(id.0.get_version_num(), 7);
            prev = id;
        }
        let earlier = now - chrono::Duration::seconds(5);
        assert!(gen.next(earlier) > prev);
    }

    #[test]
    fn ids_order_like_their_text() {
        let mut gen = MessageIdGen::default();
        let a = gen.next(Utc::now());
        let b = gen.next(Utc::now());
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn timestamps_have_microseconds_and_z() {
        let at = DateTime::from_timestamp_micros(1_770_199_800_123_456).expect("in range");
        assert_eq!(format_timestamp(&at), "2026-02-04T10:10:00.123456Z");
    }
}
