//! Which tokens no longer count although their signature and expiry are fine: those
//! of sessions that ended (a logout, a reused refresh token, a password change), a
//! user's tokens without a session (signed elsewhere with the key) issued before a
//! time, and every token of a deleted account.
//!
//! Every node holds this in memory, so checking a token costs no store round trip:
//! the node that ends a session records it here and tells the others (the cluster),
//! and a starting node reads what ended recently from the store before it serves.
//! It must never be asked to remember an ended session longer than an access token
//! of it can live.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use super::jwt::Verified;
use crate::ids::{SessionId, UserId};

/// `refuse_before` for an account that is gone: every token of it is refused.
pub const EVERY_TOKEN: u64 = u64::MAX;

/// Slack beyond an access token's lifetime, as verification allows on `exp`.
const LEEWAY_SECS: u64 = 5;

/// A revocation, as the node that made it records it and tells the others: sessions
/// of `user` that ended at `at` (Unix seconds), and, when given, the time before which
/// the user's tokens without a session are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub user: UserId,
    pub at: u64,
    pub refuse_before: Option<u64>,
    pub sessions: Vec<SessionId>,
}

/// The tokens that no longer count, on this node.
pub struct Revocations {
    /// Ended sessions, each until no access token issued for it can still be valid
    /// (Unix seconds).
    sessions: RwLock<HashMap<SessionId, u64>>,
    /// Per user: tokens without a session issued before this (Unix seconds) are
    /// refused; `EVERY_TOKEN`: all of the user's tokens.
    users: RwLock<HashMap<UserId, u64>>,
    /// How long an access token lives.
    access_ttl: u64,
}

impl Revocations {
    pub fn new(access_ttl: Duration) -> Self {
        Self {
            sessions: RwLock::default(),
            users: RwLock::default(),
            access_ttl: access_ttl.as_secs() + LEEWAY_SECS,
        }
    }

    /// Whether a verified token still counts.
    pub fn admits(&self, token: &Verified) -> bool {
        let refused_before = self
            .users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&token.user)
            .copied();
        if let Some(before) = refused_before {
            if before == EVERY_TOKEN || (token.session.is_none() && token.issued_at < before) {
                return false;
            }
        }
        token.session.is_none_or(|session| {
            !self
                .sessions
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&session)
        })
    }

    /// Records a revocation: its sessions' tokens, and when it says so the user's
    /// tokens without a session, no longer count.
    pub fn record(&self, r: &Revoked) {
        self.end(r.sessions.iter().map(|s| (*s, r.at)));
        if let Some(before) = r.refuse_before {
            self.refuse_before(r.user, before);
        }
    }

    /// These sessions ended, each at its time (Unix seconds): their tokens no longer
    /// count.
    pub fn end(&self, sessions: impl IntoIterator<Item = (SessionId, u64)>) {
        let mut sessions = sessions.into_iter().peekable();
        if sessions.peek().is_none() {
            return;
        }
        let now = jsonwebtoken::get_current_timestamp();
        let mut ended = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // What no token can need any more goes, so the map holds at most one access
        // token lifetime's worth of endings.
        ended.retain(|_, until| *until > now);
        for (session, at) in sessions {
            ended.insert(session, at.saturating_add(self.access_ttl));
        }
    }

    /// The user's tokens without a session issued before `at` (Unix seconds; or
    /// `EVERY_TOKEN`) no longer count.
    pub fn refuse_before(&self, user: UserId, at: u64) {
        let mut users = self.users.write().unwrap_or_else(PoisonError::into_inner);
        let before = users.entry(user).or_insert(at);
        *before = (*before).max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: UserId, session: Option<SessionId>, issued_at: u64) -> Verified {
        Verified {
            user,
            session,
            issued_at,
            expires_at: issued_at + 900,
        }
    }

    #[test]
    fn an_ended_session_refuses_its_tokens_only() {
        let r = Revocations::new(Duration::from_secs(900));
        let now = jsonwebtoken::get_current_timestamp();
        let (user, ended, other) = (UserId::random(), SessionId::random(), SessionId::random());
        r.end([(ended, now)]);
        assert!(!r.admits(&token(user, Some(ended), now)));
        assert!(r.admits(&token(user, Some(other), now)));
        assert!(r.admits(&token(user, None, now)));
    }

    #[test]
    fn refusing_before_a_time_spares_session_tokens_but_not_a_deleted_account() {
        let r = Revocations::new(Duration::from_secs(900));
        let (user, session) = (UserId::random(), SessionId::random());
        r.refuse_before(user, 1000);
        assert!(!r.admits(&token(user, None, 999)));
        assert!(r.admits(&token(user, None, 1000)));
        assert!(r.admits(&token(user, Some(session), 10)));
        r.refuse_before(user, 500);
        assert!(!r.admits(&token(user, None, 999)), "never moves back");
        r.refuse_before(user, EVERY_TOKEN);
        assert!(!r.admits(&token(user, Some(session), 2000)));
        assert!(r.admits(&token(UserId::random(), None, 0)));
    }
}
