//! Identity and its limits: JWT access tokens, password hashing off the shards, login
//! throttling, each user's WebSocket event budget.
//! (The rules for usernames and passwords are `text`'s.)

mod budget;
mod jwt;
mod password;
mod throttle;

pub use budget::Budgets;
pub use jwt::{JwtKeys, TokenError, Verified};
pub use password::{HashError, PasswordPool};
pub use throttle::LoginThrottle;
