//! Per-key bounds on what one client may take, shared by every shard of the node:
//! fixed-window quotas (registrations per address, conversations created per user)
//! and counted slots (connections per address, WebSockets per user), released when
//! their holder is dropped. A limit of 0 turns a bound off.
//!
//! Each map holds one small entry per key in use, never anything the client chose the
//! size of; quotas sweep their expired windows once the map grows. Layer 1: imports
//! nothing of the crate.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The unit one client controls: an IPv4 address, or an IPv6 /64 (one host can pick
/// any address inside its /64).
pub fn client_bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters, not broken invariants.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Past this many tracked keys, expired windows are swept out on the next take.
const SWEEP_ABOVE: usize = 10_000;

/// At most `limit` takes per key in each fixed window.
pub struct Quota<K> {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> Quota<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            // Bounded so `Instant + window` cannot overflow, whatever is configured.
            window: window.min(Duration::from_secs(365 * 24 * 3600)),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one unit for `key`, or `Err(retry_after)` (whole seconds, rounded up)
    /// when its window is spent.
    pub fn take(&self, key: K) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        if windows.len() > SWEEP_ABOVE {
            windows.retain(|_, (started, _)| now < *started + self.window);
        }
        let (started, used) = windows.entry(key).or_insert((now, 0));
        if now >= *started + self.window {
            (*started, *used) = (now, 0);
        }
        if *used >= self.limit {
            let wait = *started + self.window - now;
            return Err(Duration::from_secs(wait.as_secs() + 1));
        }
        *used += 1;
        Ok(())
    }

    /// Gives back the unit just taken (the work it paid for did not happen).
    pub fn give_back(&self, key: &K) {
        if let Some((_, used)) = lock(&self.windows).get_mut(key) {
            *used = used.saturating_sub(1);
        }
    }
}

/// At most `limit` slots held at once per key.
pub struct Slots<K: Hash + Eq> {
    limit: usize,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::default(),
        }
    }

    /// A slot for `key`, held until the returned value is dropped; `None` when the
    /// key holds `limit` already.
    pub fn hold(&self, key: K) -> Option<Slot<K>> {
        if self.limit == 0 {
            return Some(Slot { held: None, key });
        }
        let mut held = lock(&self.held);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            held: Some(Arc::clone(&self.held)),
            key,
        })
    }

    /// How many slots `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        lock(&self.held).get(key).copied().unwrap_or(0)
    }
}

/// One held slot; dropping it frees it.
pub struct Slot<K: Hash + Eq> {
    held: Option<Arc<Mutex<HashMap<K, usize>>>>,
    key: K,
}

impl<K: Hash + Eq> Slot<K> {
    /// A slot no limit counts, for a holder exempt from one.
    pub fn uncounted(key: K) -> Self {
        Self { held: None, key }
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(held) = &self.held else { return };
        let mut held = lock(held);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refuses_past_its_limit_until_the_window_ends() {
        let q = Quota::new(2, Duration::from_millis(50));
        assert!(q.take("a").is_ok());
        assert!(q.take("a").is_ok());
        let wait = q.take("a").expect_err("spent");
        assert!(wait >= Duration::from_secs(1));
        assert!(q.take("b").is_ok(), "another key");
        q.give_back(&"a");
        assert!(q.take("a").is_ok(), "a unit given back");
        std::thread::sleep(Duration::from_millis(60));
        assert!(q.take("a").is_ok(), "a new window");
        assert!(Quota::new(0, Duration::from_secs(1)).take("a").is_ok());
    }

    #[test]
    fn slots_are_freed_when_dropped() {
        let s = Slots::new(2);
        let one = s.hold(1).expect("first");
        let two = s.hold(1).expect("second");
        assert!(s.hold(1).is_none());
        assert!(s.hold(2).is_some(), "another key");
        drop(one);
        assert_eq!(s.held(&1), 1);
        let _three = s.hold(1).expect("freed");
        drop(two);
        let unlimited = Slots::new(0);
        let kept: Vec<_> = (0..100).map(|_| unlimited.hold(1)).collect();
        assert!(kept.iter().all(Option::is_some));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(client_bucket(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(client_bucket(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(
            client_bucket(ip("2001:db8:1:2::ffff")),
            ip("2001:db8:1:2::")
        );
    }
}
