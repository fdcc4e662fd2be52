//! Identity and its limits: JWT access and refresh tokens, the tokens that no longer
//! count (ended sessions), password hashing off the shards, login throttling, each
//! user's WebSocket event budget.
//! (The rules for usernames and passwords are `text`'s.)

mod budget;
mod jwt;
mod password;
mod revoked;
mod throttle;

pub use budget::Budgets;
pub use jwt::{JwtKeys, Refresh, TokenError, Verified};
pub use password::{HashError, PasswordPool};
pub use revoked::{Revocations, Revoked, EVERY_TOKEN};
pub use throttle::LoginThrottle;
