//! Validated text from the edges: usernames, passwords, message content and client
//! ids, conversation names and descriptions. Each type has a private field and is built only by `parse`, so whoever holds
//! one holds a value that passed the rules; the rules live here and nowhere else.
//! Layer 1: imports nothing of the crate.

use std::fmt;

/// Longest message content, in characters.
pub const CONTENT_MAX_CHARS: usize = 5000;

/// The longest username, in characters.
pub const USERNAME_MAX_CHARS: usize = 32;

/// Whether a username may hold `c`.
pub fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// A username: 3-32 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// The refusal is the 422 message.
    pub fn parse(name: String) -> Result<Self, &'static str> {
        // Bytes first: a megabyte of name is refused without counting its characters.
        if name.len() > 4 * USERNAME_MAX_CHARS
            || !(3..=USERNAME_MAX_CHARS).contains(&name.chars().count())
        {
            return Err("Username must be 3-32 characters");
        }
        if !name.chars().all(is_username_char) {
            return Err("Username may contain only letters, digits, '_', '.' and '-'");
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A password of 8-128 characters (counted as users count them). Its `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(password: String) -> Result<Self, &'static str> {
        if password.len() > 4 * 128 || !(8..=128).contains(&password.chars().count()) {
            return Err("Password must be 8-128 characters");
        }
        Ok(Self(password))
    }

    /// The secret itself, for hashing.
    pub fn into_secret(self) -> String {
        self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Why content was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentError {
    Blank,
    TooLong,
    /// PostgreSQL text cannot hold NUL; refusing it for both stores keeps them alike
    /// and tells the client why, instead of a commit failure it would retry forever.
    Nul,
    /// A control character other than tab, line feed and carriage return.
    Control,
}

/// Message content: not blank, at most 5000 characters, no control characters but
/// tab, line feed and carriage return (so no NUL); stored as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub fn parse(content: &str) -> Result<Self, ContentError> {
        if content.trim().is_empty() {
            return Err(ContentError::Blank);
        }
        // Cheap byte test first: 5000 characters are at most 20000 bytes.
        if content.len() > CONTENT_MAX_CHARS && content.chars().count() > CONTENT_MAX_CHARS {
            return Err(ContentError::TooLong);
        }
        match check_text(content, Lines::Many) {
            Ok(()) => Ok(Self(content.to_owned())),
            Err(TextError::Nul) => Err(ContentError::Nul),
            Err(_) => Err(ContentError::Control),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The longest `client_id`, in characters.
pub const CLIENT_ID_MAX_CHARS: usize = 64;

/// A client's own id for one send (`client_id`): 1-64 characters, no NUL. A repeat of
/// it by the same sender in the same conversation is the same message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(id: &str) -> Result<Self, &'static str> {
        let n = id.chars().count();
        if n == 0 || n > CLIENT_ID_MAX_CHARS || id.contains('\0') {
            return Err("client_id must be 1-64 characters");
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Whether a text may span lines: names are one line, descriptions and messages many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lines {
    One,
    Many,
}

/// Why a bounded text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    TooLong,
    /// NUL: PostgreSQL text cannot hold it, so both stores refuse it alike.
    Nul,
    /// A control character the field may not hold.
    Control,
}

impl TextError {
    /// The 422 `type`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::TooLong => "string_too_long",
            Self::Nul | Self::Control => "string_pattern_mismatch",
        }
    }
}

/// Refuses NUL, and every control character (C0, DEL, C1) except, where the text may
/// span lines, tab, line feed and carriage return. Such characters mean nothing to a
/// reader and can rewrite a terminal or a log line that shows them.
fn check_text(s: &str, lines: Lines) -> Result<(), TextError> {
    for c in s.chars() {
        if c == '\0' {
            return Err(TextError::Nul);
        }
        if c.is_control() && !(lines == Lines::Many && matches!(c, '\t' | '\n' | '\r')) {
            return Err(TextError::Control);
        }
    }
    Ok(())
}

/// At most `max` characters (the byte length answers first for long input), then
/// `check_text`.
fn bounded(s: &str, max: usize, lines: Lines) -> Result<(), TextError> {
    if s.len() > max && (s.len() > 4 * max || s.chars().count() > max) {
        return Err(TextError::TooLong);
    }
    check_text(s, lines)
}

/// Longest conversation name, in characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Longest conversation description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 2000;

/// A conversation's name: at most 200 characters on one line (no control characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationName(String);

impl ConversationName {
    pub fn parse(name: String) -> Result<Self, TextError> {
        bounded(&name, NAME_MAX_CHARS, Lines::One).map(|()| Self(name))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A conversation's description: at most 2000 characters; tabs and line breaks are
/// its only control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(text: String) -> Result<Self, TextError> {
        bounded(&text, DESCRIPTION_MAX_CHARS, Lines::Many).map(|()| Self(text))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<Username, &'static str> {
        Username::parse(s.to_owned())
    }

    #[test]
    fn username_rules() {
        assert!(name("abc").is_ok());
        assert!(name("Alice_1.x-y").is_ok());
        assert!(name(&"a".repeat(32)).is_ok());
        assert!(name("ab").is_err());
        assert!(name(&"a".repeat(33)).is_err());
        assert!(name("al ice").is_err());
        assert!(name("alicé").is_err());
        assert!(name("a/b").is_err());
        assert!(name("ab\0c").is_err());
        assert!(name("abc\n").is_err());
        assert!(name(&"a".repeat(1 << 20)).is_err());
    }

    #[test]
    fn password_rules() {
        let pw = |s: &str| Password::parse(s.to_owned());
        assert!(pw("12345678").is_ok());
        assert!(pw(&"x".repeat(128)).is_ok());
        assert!(pw("1234567").is_err());
        assert!(pw(&"x".repeat(129)).is_err());
        // Eight characters, more than eight bytes.
        assert!(pw("éééééééé").is_ok());
        assert!(pw("ééééééé").is_err());
        assert_eq!(format!("{:?}", pw("secret-password")), "Ok(Password(..))");
    }

    #[test]
    fn content_rules() {
        assert_eq!(Content::parse("hi").map(|c| c.0), Ok("hi".to_owned()));
        assert_eq!(Content::parse(" \t\n"), Err(ContentError::Blank));
        assert_eq!(Content::parse("a\0b"), Err(ContentError::Nul));
        assert_eq!(Content::parse("a\x1b[2Jb"), Err(ContentError::Control));
        assert_eq!(Content::parse("a\u{85}b"), Err(ContentError::Control));
        assert!(Content::parse("line one\r\n\tline two").is_ok());
        assert!(Content::parse(&"é".repeat(CONTENT_MAX_CHARS)).is_ok());
        assert_eq!(
            Content::parse(&"é".repeat(CONTENT_MAX_CHARS + 1)),
            Err(ContentError::TooLong)
        );
    }

    #[test]
    fn names_are_one_line_descriptions_may_break_lines() {
        let name = |s: &str| ConversationName::parse(s.to_owned());
        let description = |s: &str| Description::parse(s.to_owned());
        assert!(name("").is_ok());
        assert!(name("Team chat 🎉").is_ok());
        assert!(name(&"é".repeat(NAME_MAX_CHARS)).is_ok());
        assert_eq!(
            name(&"é".repeat(NAME_MAX_CHARS + 1)),
            Err(TextError::TooLong)
        );
        assert_eq!(name("a\0b"), Err(TextError::Nul));
        assert_eq!(name("a\nb"), Err(TextError::Control));
        assert_eq!(name("a\tb"), Err(TextError::Control));
        assert_eq!(name("a\x7fb"), Err(TextError::Control));
        assert!(description("first\nsecond\tthird\r\n").is_ok());
        assert_eq!(description("a\0b"), Err(TextError::Nul));
        assert_eq!(description("a\x07b"), Err(TextError::Control));
        assert!(description(&"x".repeat(DESCRIPTION_MAX_CHARS)).is_ok());
        assert_eq!(
            description(&"x".repeat(DESCRIPTION_MAX_CHARS + 1)),
            Err(TextError::TooLong)
        );
        assert_eq!(description(&"x".repeat(1 << 20)), Err(TextError::TooLong));
    }
}
