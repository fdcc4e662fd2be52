//! Per-user token buckets for incoming WebSocket events, one per user for the whole
//! process: a user's events draw from one bucket however many tabs they have open, on
//! whichever shards, and a reconnect does not refill it (a bucket is forgotten only once
//! it has refilled by itself). In a cluster the budget lives in Redis (`cluster`) and
//! this one is the fallback while Redis does not answer.
//!
//! Shared by every shard: the buckets sit in striped maps behind short locks (one
//! bucket update each), so two shards rarely meet on one stripe. It never blocks on
//! anything else.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::ids::UserId;

/// Stripes of the table; a power of two.
const STRIPES: usize = 64;
/// A stripe is swept of full buckets once it holds this many, and then again each time
/// it doubles, so sweeping costs O(1) per event amortised.
const SWEEP_AT: usize = 256;

/// The event budgets of every user of this process.
pub struct Budgets {
    stripes: Box<[Mutex<Stripe>]>,
    hasher: RandomState,
    rate: f64,
    burst: f64,
}

#[derive(Default)]
struct Stripe {
    buckets: HashMap<UserId, Bucket>,
    sweep_at: usize,
}

impl Budgets {
    /// `rate` events per second sustained, `burst` above it, per user.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            rate,
            burst,
        }
    }

    /// Takes one token of `user`'s budget, if there is one.
    pub fn take(&self, user: UserId, now: Instant) -> bool {
        let i = self.hasher.hash_one(user) as usize % STRIPES;
        let mut stripe = self.stripes[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if stripe.buckets.len() >= stripe.sweep_at.max(SWEEP_AT) {
            let (rate, burst) = (self.rate, self.burst);
            stripe.buckets.retain(|_, b| !b.is_full(rate, burst, now));
            stripe.sweep_at = stripe.buckets.len() * 2;
        }
        let (rate, burst) = (self.rate, self.burst);
        stripe
            .buckets
            .entry(user)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(rate, burst, now)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Whether it would be full by `now`: forgetting it changes nothing.
    fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }

    /// Takes one token if there is one, refilling at `rate` per second up to `burst`.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let start = Instant::now();
        let mut b = Bucket::full(3.0, start);
        assert!(b.take(1.0, 3.0, start));
        assert!(b.take(1.0, 3.0, start));
        assert!(b.take(1.0, 3.0, start));
        assert!(!b.take(1.0, 3.0, start));
        assert!(b.take(1.0, 3.0, start + Duration::from_secs(1)));
        assert!(!b.take(1.0, 3.0, start + Duration::from_secs(1)));
        // Refill never exceeds the burst.
        let later = start + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.take(1.0, 3.0, later));
        }
        assert!(!b.take(1.0, 3.0, later));
    }

    #[test]
    fn one_budget_per_user_whoever_asks() {
        let budgets = Budgets::new(1.0, 2.0);
        let (a, b) = (UserId::random(), UserId::random());
        let now = Instant::now();
        assert!(budgets.take(a, now));
        assert!(budgets.take(a, now));
        assert!(!budgets.take(a, now), "spent, from any shard");
        assert!(budgets.take(b, now), "another user's budget is their own");
        assert!(budgets.take(a, now + Duration::from_secs(1)));
    }

    #[test]
    fn full_buckets_are_swept_and_spent_ones_kept() {
        let budgets = Budgets::new(1.0, 1.0);
        let now = Instant::now();
        let many = STRIPES * SWEEP_AT * 2;
        for _ in 0..many {
            budgets.take(UserId::random(), now);
        }
        // Five seconds on, those buckets are full again; this one is spent.
        let later = now + Duration::from_secs(5);
        let spent = UserId::random();
        assert!(budgets.take(spent, later));
        for _ in 0..many {
            budgets.take(UserId::random(), later);
        }
        let held: usize = budgets
            .stripes
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum();
        assert!(held < 2 * many, "nothing was swept: {held}");
        assert!(
            !budgets.take(spent, later),
            "a spent bucket survives the sweeps"
        );
    }
}
