//! Login throttling: failed logins counted per (username, client address) and per
//! client address, in fixed windows. Only failures count, so a client that logs in
//! correctly thousands of times (a test suite, a load harness) is never slowed, and a
//! user whose name is being guessed from one address still logs in from another.
//!
//! Hand-written rather than taken from a rate-limiting crate: those meter every
//! attempt, while this must look before the password is checked and count only the
//! attempts that fail. It is shared by all shards behind one mutex, held for a map
//! lookup; logins cost an argon2 hash each, so the lock is never the bottleneck.
//!
//! It keys on validated usernames only (`text::Username`, at most 32 characters), so
//! what a failed login leaves behind is a few dozen bytes, whatever the client sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::client_bucket;
use crate::text::Username;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// One username from one address.
    Pair(IpAddr, String),
    /// One address, any username.
    Address(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

pub struct LoginThrottle {
    per_pair: u32,
    per_address: u32,
    window: Duration,
    windows: Mutex<HashMap<Key, Window>>,
}

/// Past this many tracked keys, expired windows are swept out on the next failure.
const SWEEP_ABOVE: usize = 10_000;

impl LoginThrottle {
    pub fn new(per_pair: u32, per_address: u32, window: Duration) -> Self {
        Self {
            per_pair,
            per_address,
            // Bounded so `Instant + window` cannot overflow, whatever is configured.
            window: window.min(Duration::from_secs(365 * 24 * 3600)),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when this username from this address may not try now.
    pub fn check(&self, address: IpAddr, username: &Username) -> Result<(), Duration> {
        let now = Instant::now();
        let windows = self.lock();
        let address = client_bucket(address);
        let blocked = |key: &Key, limit: u32| {
            windows
                .get(key)
                .filter(|w| w.failures >= limit && now < self.ends(w))
                .map(|w| self.ends(w) - now)
        };
        let pair = Key::Pair(address, username.as_str().to_owned());
        match blocked(&pair, self.per_pair)
            .or_else(|| blocked(&Key::Address(address), self.per_address))
        {
            // Whole seconds, rounded up, as `Retry-After` says them.
            Some(wait) => Err(Duration::from_secs(wait.as_secs() + 1)),
            None => Ok(()),
        }
    }

    /// Counts one failed login.
    pub fn failed(&self, address: IpAddr, username: &Username) {
        let now = Instant::now();
        let mut windows = self.lock();
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, w| now < self.ends(w));
        }
        let address = client_bucket(address);
        for key in [
            Key::Pair(address, username.as_str().to_owned()),
            Key::Address(address),
        ] {
            let w = windows.entry(key).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now >= self.ends(w) {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }

    /// A correct password clears that username's failures from that address.
    pub fn succeeded(&self, address: IpAddr, username: &Username) {
        self.lock().remove(&Key::Pair(
            client_bucket(address),
            username.as_str().to_owned(),
        ));
    }

    /// When a window's count stops applying.
    fn ends(&self, w: &Window) -> Instant {
        w.started + self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        // A panic while holding the lock leaves counters, not broken invariants.
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn name(s: &str) -> Username {
        Username::parse(s.to_owned()).expect("valid username")
    }

    #[test]
    fn only_failures_count_and_only_for_that_pair() {
        let t = LoginThrottle::new(3, 100, Duration::from_secs(900));
        for _ in 0..3 {
            assert!(t.check(ip("10.0.0.1"), &name("alice")).is_ok());
            t.failed(ip("10.0.0.1"), &name("alice"));
        }
        let wait = t
            .check(ip("10.0.0.1"), &name("alice"))
            .expect_err("blocked");
        assert!(wait > Duration::from_secs(890) && wait <= Duration::from_secs(900));
        assert!(
            t.check(ip("10.0.0.2"), &name("alice")).is_ok(),
            "another address"
        );
        assert!(
            t.check(ip("10.0.0.1"), &name("bob")).is_ok(),
            "another user"
        );
    }

    #[test]
    fn an_address_trying_many_names_is_stopped() {
        let t = LoginThrottle::new(10, 5, Duration::from_secs(900));
        for i in 0..5 {
            t.failed(ip("10.0.0.1"), &name(&format!("user{i}")));
        }
        assert!(t.check(ip("10.0.0.1"), &name("someone-else")).is_err());
        assert!(t.check(ip("10.0.0.9"), &name("someone-else")).is_ok());
    }

    #[test]
    fn success_clears_the_pair_and_windows_expire() {
        let t = LoginThrottle::new(2, 100, Duration::from_millis(50));
        t.failed(ip("10.0.0.1"), &name("alice"));
        t.succeeded(ip("10.0.0.1"), &name("alice"));
        t.failed(ip("10.0.0.1"), &name("alice"));
        assert!(t.check(ip("10.0.0.1"), &name("alice")).is_ok());
        t.failed(ip("10.0.0.1"), &name("alice"));
        assert!(t.check(ip("10.0.0.1"), &name("alice")).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.check(ip("10.0.0.1"), &name("alice")).is_ok());
    }

    #[test]
    fn ipv6_hosts_are_counted_by_their_64() {
        let t = LoginThrottle::new(2, 100, Duration::from_secs(900));
        t.failed(ip("2001:db8:1:2::1"), &name("alice"));
        t.failed(ip("2001:db8:1:2::ffff"), &name("alice"));
        assert!(t.check(ip("2001:db8:1:2::abcd"), &name("alice")).is_err());
        assert!(t.check(ip("2001:db8:1:3::1"), &name("alice")).is_ok());
        t.failed(ip("::ffff:10.0.0.1"), &name("bob"));
        t.failed(ip("10.0.0.1"), &name("bob"));
        assert!(t.check(ip("10.0.0.1"), &name("bob")).is_err());
    }
}
