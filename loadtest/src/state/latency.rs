//! Ack and delivery latency histograms (HDR, microseconds), per phase and sharded to
//! keep lock contention low. Only records and merges: it never decides which phases
//! count (callers pass the filter).

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::lock;

/// Highest latency the histograms hold, in microseconds (10 minutes).
const HIST_MAX_US: u64 = 600_000_000;
const HIST_SHARDS: usize = 4;

/// Ack and delivery latency of one phase.
#[derive(Clone)]
pub struct PhaseHist {
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
}

impl PhaseHist {
    pub fn new() -> Self {
        let new = || Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant, valid bounds");
        PhaseHist {
            ack: new(),
            delivery: new(),
        }
    }

    pub fn add(&mut self, other: &PhaseHist) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.ack.add(&other.ack);
        let _ = self.delivery.add(&other.delivery);
    }
}

impl Default for PhaseHist {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency histograms per phase, sharded to keep lock contention low.
pub struct Latencies {
    shards: Vec<Mutex<Vec<PhaseHist>>>,
}

impl Latencies {
    pub(super) fn new() -> Self {
        Latencies {
            shards: (0..HIST_SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn with<F: FnOnce(&mut PhaseHist)>(&self, key: usize, phase: u16, f: F) {
        let mut shard = lock(&self.shards[key % HIST_SHARDS]);
        let phase = usize::from(phase);
        if shard.len() <= phase {
            shard.resize_with(phase + 1, PhaseHist::new);
        }
        f(&mut shard[phase]);
    }

    pub fn ack(&self, key: usize, phase: u16, micros: u64) {
        self.with(key, phase, |h| h.ack.saturating_record(micros.max(1)));
    }

    pub fn delivery(&self, key: usize, phase: u16, micros: u64) {
        self.with(key, phase, |h| h.delivery.saturating_record(micros.max(1)));
    }

    /// The phases accepted by `keep`, merged.
    pub fn merged(&self, keep: impl Fn(u16) -> bool) -> PhaseHist {
        let mut out = PhaseHist::new();
        for shard in &self.shards {
            let shard = lock(shard);
            for (phase, hist) in shard.iter().enumerate() {
                if keep(u16::try_from(phase).unwrap_or(u16::MAX)) {
                    out.add(hist);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_by_phase() {
        let l = Latencies::new();
        l.ack(0, 0, 10);
        l.ack(1, 1, 1000);
        l.delivery(2, 1, 2000);
        l.delivery(3, 2, 3000);
        let measured = l.merged(|p| p >= 1);
        assert_eq!(measured.ack.len(), 1);
        assert_eq!(measured.delivery.len(), 2);
        let all = l.merged(|_| true);
        assert_eq!(all.ack.len(), 2);
    }
}

/// Latency percentiles in milliseconds, and the rate of the samples.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub per_second: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds collected over `seconds`.
    pub fn of(h: &Histogram<u64>, seconds: f64) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            per_second: if seconds > 0.0 {
                h.len() as f64 / seconds
            } else {
                0.0
            },
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}
