//! Validated text from the edges: usernames, passwords, message content and client
//! ids. Each type has a private field and is built only by `parse`, so whoever holds
//! one holds a value that passed the rules; the rules live here and nowhere else.
//! Layer 1: imports nothing of the crate.

use std::fmt;

/// Longest message content, in characters.
pub const CONTENT_MAX_CHARS: usize = 5000;

/// A username: 3-32 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// The refusal is the 422 message.
    pub fn parse(name: String) -> Result<Self, &'static str> {
        if !(3..=32).contains(&name.chars().count()) {
            return Err("Username must be 3-32 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
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
        if !(8..=128).contains(&password.chars().count()) {
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
}

/// Message content: not blank, no NUL, at most 5000 characters; stored as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub fn parse(content: &str) -> Result<Self, ContentError> {
        if content.trim().is_empty() {
            return Err(ContentError::Blank);
        }
        if content.contains('\0') {
            return Err(ContentError::Nul);
        }
        // Cheap byte test first: 5000 characters are at most 20000 bytes.
        if content.len() > CONTENT_MAX_CHARS && content.chars().count() > CONTENT_MAX_CHARS {
            return Err(ContentError::TooLong);
        }
        Ok(Self(content.to_owned()))
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
        assert!(Content::parse(&"é".repeat(CONTENT_MAX_CHARS)).is_ok());
        assert_eq!(
            Content::parse(&"é".repeat(CONTENT_MAX_CHARS + 1)),
            Err(ContentError::TooLong)
        );
    }
}
