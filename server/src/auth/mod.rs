//! Identity: JWT access tokens, password hashing off the shards, login throttling,
//! and the rules for usernames and passwords.

mod jwt;
mod password;
mod throttle;

pub use jwt::{JwtKeys, TokenError, Verified};
pub use password::{HashError, PasswordPool};
pub use throttle::LoginThrottle;

/// Why a username is refused, as the 422 message says it.
pub fn check_username(name: &str) -> Result<(), &'static str> {
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err("Username must be 3-32 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("Username may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Why a password is refused. Counted in characters, as users count them.
pub fn check_password(password: &str) -> Result<(), &'static str> {
    let len = password.chars().count();
    if !(8..=128).contains(&len) {
        return Err("Password must be 8-128 characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        assert!(check_username("abc").is_ok());
        assert!(check_username("Alice_1.x-y").is_ok());
        assert!(check_username(&"a".repeat(32)).is_ok());
        assert!(check_username("ab").is_err());
        assert!(check_username(&"a".repeat(33)).is_err());
        assert!(check_username("al ice").is_err());
        assert!(check_username("alicé").is_err());
        assert!(check_username("a/b").is_err());
    }

    #[test]
    fn password_rules() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"x".repeat(128)).is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
        // Eight characters, more than eight bytes.
        assert!(check_password("éééééééé").is_ok());
        assert!(check_password("ééééééé").is_err());
    }
}
