//! How the server ends a WebSocket: the one table of close codes (each named, with its
//! reason text, whether the client is told why in an `error` event first, and what a
//! client should do next), which close each framing violation earns, and the close
//! echo. The OpenAPI description renders its table from here; the frames themselves
//! are encoded by `frame`.

use bytes::Bytes;

use super::event::ServerEvent;
use super::frame::{self, Opcode, Violation};

/// Every reason the server closes a WebSocket, with its RFC 6455 status code and the
/// reason it sends: the one table of close codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The answer to a client's close that carried no status code.
    Normal,
    /// The client's token was bad, expired or named no user at admission.
    InvalidToken,
    /// The user is not (or no longer) a participant; also for unknown conversations.
    NotAMember,
    /// The conversation was deleted: it is gone for everyone.
    ConversationDeleted,
    /// The token the socket was opened (or last refreshed) with has expired.
    TokenExpired,
    /// The session the socket's token belongs to ended (a logout, a logout
    /// everywhere, a password change, a reused refresh token, a deleted account).
    SessionEnded,
    /// The store could not be asked at admission.
    Unavailable,
    /// The server is stopping.
    ShuttingDown,
    /// Nothing at all arrived from the client within the idle timeout.
    IdleTimeout,
    /// A frame broke RFC 6455 framing rules.
    ProtocolError,
    /// A continuation frame without a message, or a new message inside one.
    BadFragmentation,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A message over the size limit.
    TooBig,
    /// The client did not read its backlog.
    TooFarBehind,
    /// A fragmented message stayed unfinished past `--ws-fragment-timeout`.
    FragmentTimeout,
    /// A fragmented message took more than `--ws-max-fragments` frames.
    TooManyFragments,
    /// The user already holds `--ws-max-per-user` WebSockets on this node.
    TooManySockets,
    /// The socket went on sending past its rate limit (`--ws-flood-limit`).
    Flooding,
}

impl Close {
    /// Every close, in the order of the documentation's table.
    pub const ALL: [Close; 18] = [
        Self::Normal,
        Self::ShuttingDown,
        Self::IdleTimeout,
        Self::ProtocolError,
        Self::BadFragmentation,
        Self::InvalidUtf8,
        Self::InvalidToken,
        Self::NotAMember,
        Self::ConversationDeleted,
        Self::TokenExpired,
        Self::SessionEnded,
        Self::FragmentTimeout,
        Self::TooManyFragments,
        Self::TooManySockets,
        Self::Flooding,
        Self::TooBig,
        Self::Unavailable,
        Self::TooFarBehind,
    ];

    /// What a client should do after this close.
    pub const fn then(self) -> &'static str {
        match self {
            Self::Normal => "nothing: it asked to close",
            Self::ShuttingDown => "reconnect (another node, or this one in a moment)",
            Self::IdleTimeout => "reconnect; answer pings to stay connected",
            Self::ProtocolError | Self::BadFragmentation | Self::InvalidUtf8 => {
                "fix the client; reconnecting repeats the failure"
            }
            Self::InvalidToken | Self::TokenExpired | Self::SessionEnded => {
                "log in again, then reconnect"
            }
            Self::NotAMember => "do not reconnect: access was refused or revoked",
            Self::ConversationDeleted => "do not reconnect: the conversation is gone",
            Self::TooBig => "reconnect and send smaller messages",
            Self::FragmentTimeout | Self::TooManyFragments => {
                "reconnect; send each message whole or its fragments promptly"
            }
            Self::TooManySockets => "close another connection of this user, then reconnect",
            Self::Flooding => "reconnect with backoff; wait after `Rate limit exceeded`",
            Self::Unavailable | Self::TooFarBehind => "reconnect with backoff",
        }
    }

    pub const fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::ShuttingDown | Self::IdleTimeout => 1001,
            Self::ProtocolError | Self::BadFragmentation => 1002,
            Self::InvalidUtf8 => 1007,
            Self::InvalidToken
            | Self::NotAMember
            | Self::ConversationDeleted
            | Self::TokenExpired
            | Self::SessionEnded
            | Self::FragmentTimeout
            | Self::TooManyFragments
            | Self::TooManySockets
            | Self::Flooding => 1008,
            Self::TooBig => 1009,
            Self::Unavailable => 1011,
            Self::TooFarBehind => 1013,
        }
    }

    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "",
            Self::InvalidToken => "Invalid token",
            Self::NotAMember => "Not a member of this conversation",
            Self::ConversationDeleted => "Conversation deleted",
            Self::TokenExpired => "Token expired",
            Self::SessionEnded => "Session ended",
            Self::Unavailable => "Service unavailable, please retry",
            Self::ShuttingDown => "Server shutting down",
            Self::IdleTimeout => "Idle timeout",
            Self::ProtocolError => "Protocol error",
            Self::BadFragmentation => "Protocol error: bad fragmentation",
            Self::InvalidUtf8 => "Invalid UTF-8",
            Self::TooBig => "Message too big",
            Self::TooFarBehind => "Try again later: too far behind",
            Self::FragmentTimeout => "Message not finished in time",
            Self::TooManyFragments => "Message in too many fragments",
            Self::TooManySockets => "Too many connections",
            Self::Flooding => "Too many events",
        }
    }

    /// Whether the client is told why in an `error` event before the close frame, as
    /// docs/protocol.md gives for refusals of access (browsers expose close reasons
    /// poorly).
    pub const fn announced(self) -> bool {
        self.code() == 1008 || matches!(self, Self::Unavailable)
    }

    /// The close frame alone.
    pub fn frame(self) -> Bytes {
        frame::close(self.code(), self.reason())
    }

    /// The close frame, preceded by its `error` event when the reason is announced.
    pub fn frames(self) -> Vec<Bytes> {
        let close = self.frame();
        if self.announced() {
            vec![
                ServerEvent::Error {
                    detail: self.reason(),
                    reference: None,
                }
                .frame(),
                close,
            ]
        } else {
            vec![close]
        }
    }
}

/// The answer to a client's close: its own status code and reason, returned; 1000
/// when it gave none, since an empty echo would leave the client with 1005 ("no
/// status received").
pub fn close_echo(close: &[u8]) -> Bytes {
    if close.is_empty() {
        Close::Normal.frame()
    } else {
        frame::control(Opcode::Close, close)
    }
}

impl From<Violation> for Close {
    fn from(violation: Violation) -> Self {
        match violation {
            Violation::Protocol => Self::ProtocolError,
            Violation::Utf8 => Self::InvalidUtf8,
            Violation::TooBig => Self::TooBig,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documentation's close-code table cannot drift from this one: every code
    /// and reason appears in docs/protocol.md.
    #[test]
    fn every_close_is_documented() {
        let doc = include_str!("../../../docs/protocol.md");
        for close in Close::ALL {
            let row = format!(
                "| {} | {}",
                close.code(),
                match close.reason() {
                    "" => String::new(),
                    reason => format!("`{reason}`"),
                }
            );
            assert!(doc.contains(row.trim_end()), "docs/protocol.md lacks {row}");
        }
    }

    #[test]
    fn closes_the_server_sends_are_accepted_back() {
        for close in Close::ALL {
            assert!(frame::close_code_allowed(close.code()), "{close:?}");
        }
    }
}
