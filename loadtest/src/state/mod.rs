//! The shared state of one run: the conversations with every message sent and who
//! received it, each socket's connected intervals, the counters, the latency
//! histograms, and the control signals (phase, rate, stop) the driver sets.
//!
//! Every chat message is a [`Record`] under its conversation's mutex, indexed by the
//! sender's slot and sequence number, with a bit per member that received it. Whether a
//! member *had* to receive it is decided at the end from the member's connected
//! intervals (see [`Run::tally`]). A seat that resumes its stream without a resync has
//! missed nothing while away, so its interval continues across the reconnect.
//!
//! Layout: this file holds the plain data (records, intervals, conversations,
//! accounts, control, stage, counters, source addresses, windows); `run` owns
//! [`Run`] and its end-of-run [`Tally`]; `latency` the HDR histograms; `tag` the
//! measurement tag written into and read back from every chat message.

mod latency;
mod run;
mod tag;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::OnceCell;

pub use latency::{Latencies, Percentiles, PhaseHist};
pub use run::{Node, Run, Tally};

pub use tag::{client_number, parse_tag, Tag};

/// Locks a mutex, ignoring poisoning (a panicking task must not hide the results).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One chat message sent by the harness.
#[derive(Clone, Debug)]
pub struct Record {
    pub sent_us: u64,
    /// When the sender's own copy (the acknowledgement) came back; 0: not (yet).
    pub ack_us: u64,
    /// Received by each member slot (a big room has thousands).
    pub delivered: Receivers,
    pub phase: u16,
    /// The server answered with an `error` event for it.
    pub failed: bool,
    /// Times it was written again with its `client_id` (after a reconnect, or the
    /// server's "may not have been saved").
    pub resends: u32,
    /// The sender's copies of it that came back: the acknowledgement and, for a resent
    /// message, maybe the server's repeat of the original.
    pub answers: u32,
}

/// One bit per member slot of a conversation: the members that received a message.
/// Grown on demand, so a message nobody received yet costs nothing.
#[derive(Clone, Debug, Default)]
pub struct Receivers(Vec<u64>);

impl Receivers {
    /// Whether `slot` received it.
    pub fn has(&self, slot: usize) -> bool {
        self.0
            .get(slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }

    /// Marks `slot` as a receiver; `false` when it already was one.
    pub fn mark(&mut self, slot: usize) -> bool {
        let word = slot / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let bit = 1 << (slot % 64);
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    /// Receivers other than `slot`.
    pub fn count_except(&self, slot: usize) -> u64 {
        let all: u64 = self.0.iter().map(|w| u64::from(w.count_ones())).sum();
        all - u64::from(self.has(slot))
    }
}

/// A socket's time in the conversation: from its own `joined` event to its close (or,
/// when it resumed without a resync, to the close after that).
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    pub from_us: u64,
    /// `u64::MAX` while open, and for sockets kept open until the end of the run.
    pub to_us: u64,
}

#[derive(Default)]
pub struct ConvState {
    /// `records[slot][seq]`.
    pub records: Vec<Vec<Record>>,
    /// `live[slot]`: the member's connected intervals.
    pub live: Vec<Vec<Interval>>,
}

/// What the member that created the conversation left for the others.
#[derive(Clone, Debug)]
pub struct ConvInfo {
    pub id: String,
    pub owner_token: String,
}

pub struct Conv {
    pub index: usize,
    pub members: Vec<usize>,
    pub info: OnceCell<ConvInfo>,
    pub state: Mutex<ConvState>,
}

/// A logged-in simulated user.
#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: String,
    pub token: String,
}

/// The driver's instructions to every socket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Control {
    /// Chat messages per second per user (0: silent).
    pub rate_per_user: f64,
    /// Phase stamped on new messages (0: warm-up, 1..: measured windows or steps).
    pub phase: u16,
    /// Whether sockets may send at all.
    pub sending: bool,
}

/// How far the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Setup,
    /// `--room-size`: everyone is set up over REST; the sockets connect now.
    Storm,
    Chat,
    Stopping,
}

/// Plain counters, shared by every task.
#[derive(Default)]
pub struct Counters {
    pub users_ready: AtomicUsize,
    /// `--room-size`: users set up over REST, waiting for the join storm.
    pub users_prepared: AtomicUsize,
    /// Seats whose first connection received its own `joined` event.
    pub first_joins: AtomicU64,
    /// Text frames the sockets received, and their bytes.
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Of those, the `system` frames that carried the member list (`active_users`),
    /// and their bytes; and the summaries of several joins and leaves.
    pub listed_frames: AtomicU64,
    pub listed_bytes: AtomicU64,
    pub summary_frames: AtomicU64,
    /// `--room-size`: how long each socket of the join storm took, in microseconds.
    pub storm_joins_us: Mutex<Vec<u64>>,
    pub users_failed: AtomicUsize,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub duplicate_acks: AtomicU64,
    pub failed: AtomicU64,
    /// Messages sent and neither acknowledged nor refused yet.
    pub outstanding: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub reordered: AtomicU64,
    pub misrouted: AtomicU64,
    pub foreign: AtomicU64,
    pub typing_sent: AtomicU64,
    pub typing_received: AtomicU64,
    pub system_received: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub join_timeouts: AtomicU64,
    pub reconnects: AtomicU64,
    pub drops: AtomicU64,
    pub history_reads: AtomicU64,
    /// Stream events replayed to resumed connections, before their own `joined`.
    pub resumed: AtomicU64,
    /// Replays that began with a `resync` (the server replays only the newest events).
    pub resyncs: AtomicU64,
    /// Stream positions a seat never saw, and positions it saw twice.
    pub stream_gaps: AtomicU64,
    pub stream_duplicates: AtomicU64,
    /// Stream events a seat could not place: no `seq`, or before its first `joined`.
    pub unplaced: AtomicU64,
    /// Messages written again with their `client_id`.
    pub retried: AtomicU64,
    /// Answers to resent messages that repeated the original to its sender.
    pub repeats: AtomicU64,
    /// Error events by detail.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Connect failures by reason.
    pub connect_errors: Mutex<BTreeMap<String, u64>>,
    /// Connections the server (or the network) ended, by close code or reason.
    pub drop_reasons: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        let mut map = lock(map);
        match map.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                map.insert(key.to_string(), 1);
            }
        }
    }
}

/// Round-robin loopback source addresses for client sockets (none: let the kernel pick).
pub struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        Sources {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    pub fn next(&self) -> Option<IpAddr> {
        if self.addrs.len() < 2 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }

    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }
}

/// A measured window (steady run) or a capacity step.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub phase: u16,
    pub rate_per_user: f64,
    #[serde(skip)]
    pub start_us: u64,
    #[serde(skip)]
    pub end_us: u64,
    /// The server's CPU (user, kernel seconds) when the window opened and closed, when
    /// the harness can read it.
    #[serde(skip)]
    pub cpu_start: Option<(f64, f64)>,
    #[serde(skip)]
    pub cpu_end: Option<(f64, f64)>,
}

impl Window {
    pub fn seconds(&self) -> f64 {
        self.end_us.saturating_sub(self.start_us) as f64 / 1e6
    }

    /// The server's (user, kernel) CPU seconds spent inside the window.
    pub fn server_cpu(&self) -> Option<(f64, f64)> {
        let ((u0, k0), (u1, k1)) = (self.cpu_start?, self.cpu_end?);
        Some((u1 - u0, k1 - k0))
    }
}

/// What the server spent per delivery, in microseconds of CPU.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct DeliveryCost {
    pub user_us: f64,
    pub kernel_us: f64,
    pub total_us: f64,
}

impl DeliveryCost {
    /// From the windows' CPU and the deliveries made in them; `None` without a reading.
    pub fn of(windows: &[&Window], deliveries: u64) -> Option<Self> {
        if deliveries == 0 {
            return None;
        }
        let mut user = 0.0;
        let mut kernel = 0.0;
        for w in windows {
            let (u, k) = w.server_cpu()?;
            user += u;
            kernel += k;
        }
        let per = |s: f64| s * 1e6 / deliveries as f64;
        Some(Self {
            user_us: per(user),
            kernel_us: per(kernel),
            total_us: per(user + kernel),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(cpu_start: (f64, f64), cpu_end: (f64, f64)) -> Window {
        Window {
            phase: 1,
            rate_per_user: 1.0,
            start_us: 0,
            end_us: 1,
            cpu_start: Some(cpu_start),
            cpu_end: Some(cpu_end),
        }
    }

    #[test]
    fn receivers_of_a_big_room() {
        let mut r = Receivers::default();
        assert!(!r.has(0) && !r.has(18_999));
        assert!(r.mark(18_999));
        assert!(!r.mark(18_999));
        assert!(r.mark(3));
        assert!(r.has(3) && r.has(18_999) && !r.has(64));
        assert_eq!(r.count_except(3), 1);
        assert_eq!(r.count_except(5), 2);
    }

    #[test]
    fn delivery_cost_sums_the_windows() {
        let a = window((1.0, 2.0), (1.5, 2.25));
        let b = window((3.0, 3.0), (3.5, 3.75));
        let cost = DeliveryCost::of(&[&a, &b], 1_000_000).expect("cost");
        assert!((cost.user_us - 1.0).abs() < 1e-9);
        assert!((cost.kernel_us - 1.0).abs() < 1e-9);
        assert!((cost.total_us - 2.0).abs() < 1e-9);
        let unread = Window { cpu_end: None, ..a };
        assert_eq!(DeliveryCost::of(&[&unread], 10), None);
        assert_eq!(DeliveryCost::of(&[&b], 0), None);
    }
}
