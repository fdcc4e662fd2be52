//! Identity: JWT access tokens, password hashing off the shards, login throttling.
//! (The rules for usernames and passwords are `text`'s.)

mod jwt;
mod password;
mod throttle;

pub use jwt::{JwtKeys, TokenError, Verified};
pub use password::{HashError, PasswordPool};
pub use throttle::LoginThrottle;
