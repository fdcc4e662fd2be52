//! Per-user token buckets for incoming WebSocket events, kept per shard: a user's
//! events on this shard draw from one bucket however many tabs they have open here.
//! In a cluster the budget lives in Redis (`cluster`) and this bucket is the fallback
//! while Redis does not answer.

use std::time::Instant;

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
}
