//! The shared state of one run: the conversations with every message sent and who
//! received it, each socket's connected intervals, the counters, the latency
//! histograms, and the control signals (phase, rate, stop) the driver sets.
//!
//! Every chat message is a [`Record`] under its conversation's mutex, indexed by the
//! sender's slot and sequence number, with a bit per member that received it. Whether a
//! member *had* to receive it is decided at the end from the member's connected
//! intervals (see [`Run::tally`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, OnceCell, Semaphore};

use crate::config::Config;
use crate::plan::Plan;

/// Highest latency the histograms hold, in microseconds (10 minutes).
const HIST_MAX_US: u64 = 600_000_000;
const HIST_SHARDS: usize = 4;

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
    /// Bit per member slot: received by that member.
    pub delivered: u128,
    pub phase: u16,
    /// The server answered with an `error` event for it.
    pub failed: bool,
}

/// A socket's time in the conversation: from its own `joined` event to its close.
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
    Chat,
    Stopping,
}

/// Plain counters, shared by every task.
#[derive(Default)]
pub struct Counters {
    pub users_ready: AtomicUsize,
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
    fn new() -> Self {
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
}

impl Window {
    pub fn seconds(&self) -> f64 {
        self.end_us.saturating_sub(self.start_us) as f64 / 1e6
    }
}

/// Everything the tasks of one run share.
pub struct Run {
    pub config: Config,
    pub plan: Plan,
    /// Random tag in every message of this run (other runs' messages are ignored).
    pub run_tag: String,
    pub user_prefix: String,
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    /// `ws://host:port`.
    pub ws_url: String,
    pub target: SocketAddr,
    pub sources: Sources,
    epoch: Instant,
    pub convs: Vec<Conv>,
    pub accounts: Vec<OnceLock<Account>>,
    pub next_user: AtomicUsize,
    pub auth_gate: Semaphore,
    pub counters: Counters,
    pub latencies: Latencies,
    pub control: watch::Sender<Control>,
    pub stage: watch::Sender<Stage>,
    pub windows: Mutex<Vec<Window>>,
    /// Per user, per layer: the socket task's handle.
    pub sockets: Vec<Mutex<Option<crate::ws::SocketHandle>>>,
    pub message_filler: String,
}

impl Run {
    pub fn new(
        config: Config,
        base_url: String,
        target: SocketAddr,
        sources: Sources,
    ) -> Arc<Self> {
        let users = config.users();
        let plan = Plan::new(
            users,
            usize::from(config.group_size),
            usize::from(config.conversations_per_user),
        );
        let convs = (0..plan.conversations())
            .map(|index| {
                let members = plan.members(index);
                let n = members.len();
                Conv {
                    index,
                    members,
                    info: OnceCell::new(),
                    state: Mutex::new(ConvState {
                        records: vec![Vec::new(); n],
                        live: vec![Vec::new(); n],
                    }),
                }
            })
            .collect();
        let run_tag = format!("{:08x}", rand::random::<u32>());
        let user_prefix = config
            .user_prefix
            .clone()
            .unwrap_or_else(|| format!("lt{run_tag}"));
        let ws_url = base_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        let (control, _) = watch::channel(Control {
            rate_per_user: 0.0,
            phase: 0,
            sending: false,
        });
        let (stage, _) = watch::channel(Stage::Setup);
        let filler =
            "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
                .repeat(config.message_bytes / 70 + 1);
        let sockets = (0..plan.users() * plan.layers())
            .map(|_| Mutex::new(None))
            .collect();
        let auth_gate = Semaphore::new(config.auth_concurrency);
        Arc::new(Run {
            plan,
            run_tag,
            user_prefix,
            base_url,
            ws_url,
            target,
            sources,
            epoch: Instant::now(),
            convs,
            accounts: (0..users).map(|_| OnceLock::new()).collect(),
            next_user: AtomicUsize::new(0),
            auth_gate,
            counters: Counters::default(),
            latencies: Latencies::new(),
            control,
            stage,
            windows: Mutex::new(Vec::new()),
            sockets,
            message_filler: filler,
            config,
        })
    }

    /// Microseconds since the run started (the clock of every timestamp in messages).
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn username(&self, user: usize) -> String {
        format!("{}-{user}", self.user_prefix)
    }

    pub fn set_control(&self, control: Control) {
        self.control.send_replace(control);
    }

    pub fn set_stage(&self, stage: Stage) {
        self.stage.send_if_modified(|s| {
            if *s < stage {
                *s = stage;
                true
            } else {
                false
            }
        });
    }

    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    /// Whether the run is ending (the driver finished or Goose was stopped, e.g. Ctrl-C).
    pub fn stopping(&self) -> bool {
        self.stage() == Stage::Stopping || goose::is_killswitch_triggered()
    }

    /// Resolves once the run is ending.
    pub async fn until_stopping(&self) {
        let mut stage = self.stage.subscribe();
        loop {
            if self.stopping() {
                return;
            }
            tokio::select! {
                _ = stage.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Resolves once chat starts (or the run ends first).
    pub async fn until_chat(&self) {
        let mut stage = self.stage.subscribe();
        loop {
            if self.stage() >= Stage::Chat || self.stopping() {
                return;
            }
            tokio::select! {
                _ = stage.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Opens a measured window (or capacity step) and tells every socket.
    pub fn begin_window(&self, phase: u16, rate_per_user: f64) {
        let now = self.now_us();
        {
            let mut windows = lock(&self.windows);
            if let Some(last) = windows.last_mut() {
                if last.end_us == 0 {
                    last.end_us = now;
                }
            }
            if phase > 0 {
                windows.push(Window {
                    phase,
                    rate_per_user,
                    start_us: now,
                    end_us: 0,
                });
            }
        }
        self.set_control(Control {
            rate_per_user,
            phase,
            sending: true,
        });
    }

    /// Stops all chat and closes the last window.
    pub fn end_chat(&self) {
        let now = self.now_us();
        if let Some(last) = lock(&self.windows).last_mut() {
            if last.end_us == 0 {
                last.end_us = now;
            }
        }
        let mut control = *self.control.borrow();
        control.sending = false;
        control.rate_per_user = 0.0;
        self.set_control(control);
    }

    pub fn windows(&self) -> Vec<Window> {
        lock(&self.windows).clone()
    }

    /// Counts what happened to the messages of the phases accepted by `keep`.
    pub fn tally(&self, keep: impl Fn(u16) -> bool) -> Tally {
        let margin = self.config.close_margin_ms.saturating_mul(1000);
        let mut t = Tally::default();
        for conv in &self.convs {
            let state = lock(&conv.state);
            for (sender, records) in state.records.iter().enumerate() {
                for rec in records.iter().filter(|r| keep(r.phase)) {
                    t.sent += 1;
                    let others = rec.delivered & !(1u128 << sender);
                    if rec.failed {
                        t.failed += 1;
                        t.delivered_refused += u64::from(others.count_ones());
                        continue;
                    }
                    if rec.ack_us == 0 {
                        t.unacked += 1;
                        t.delivered_unacked += u64::from(others.count_ones());
                        continue;
                    }
                    t.acked += 1;
                    for (receiver, intervals) in state.live.iter().enumerate() {
                        if receiver == sender {
                            continue;
                        }
                        let got = rec.delivered & (1u128 << receiver) != 0;
                        let certain = intervals.iter().any(|i| {
                            i.from_us < rec.sent_us
                                && (i.to_us == u64::MAX
                                    || rec.ack_us.saturating_add(margin) < i.to_us)
                        });
                        match (certain, got) {
                            (true, true) => {
                                t.expected += 1;
                                t.delivered_expected += 1;
                            }
                            (true, false) => {
                                t.expected += 1;
                                t.missing += 1;
                            }
                            (false, true) => t.delivered_uncertain += 1,
                            (false, false) => {}
                        }
                    }
                }
            }
        }
        t
    }

    /// Every acknowledged message of this run, per conversation: `(slot, seq)`.
    pub fn acknowledged(&self, conv: &Conv) -> Vec<(usize, usize)> {
        let state = lock(&conv.state);
        let mut out = Vec::new();
        for (slot, records) in state.records.iter().enumerate() {
            for (seq, rec) in records.iter().enumerate() {
                if rec.ack_us != 0 && !rec.failed {
                    out.push((slot, seq));
                }
            }
        }
        out
    }
}

/// What happened to a set of messages.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub acked: u64,
    /// Refused by the server with an `error` event.
    pub failed: u64,
    /// Neither acknowledged nor refused.
    pub unacked: u64,
    /// (message, receiver) pairs that had to be delivered: the receiver was connected
    /// before the message was sent and stayed until well after it was acknowledged.
    pub expected: u64,
    pub delivered_expected: u64,
    pub missing: u64,
    /// Deliveries to receivers that joined or left around the time of the message.
    pub delivered_uncertain: u64,
    /// Deliveries of messages whose acknowledgement never came.
    pub delivered_unacked: u64,
    /// Deliveries of messages the server refused (should be 0).
    pub delivered_refused: u64,
}

/// The measurement tag at the start of every chat message:
/// `[lt RUNTAG c=CONV s=SLOT q=SEQ t=SENT_US] filler...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag<'a> {
    pub run: &'a str,
    pub conv: usize,
    pub slot: usize,
    pub seq: usize,
    pub sent_us: u64,
}

impl Tag<'_> {
    /// Writes the message content, `len` characters long (at least the tag).
    pub fn content(&self, filler: &str, len: usize) -> String {
        let mut s = format!(
            "[lt {} c={} s={} q={} t={}] ",
            self.run, self.conv, self.slot, self.seq, self.sent_us
        );
        if s.len() < len {
            let need = len - s.len();
            s.push_str(&filler[..need.min(filler.len())]);
        }
        s
    }
}

/// Reads the tag of a message's content; `None` when it has none.
pub fn parse_tag(content: &str) -> Option<Tag<'_>> {
    let rest = content.strip_prefix("[lt ")?;
    let end = rest.find(']')?;
    let mut fields = rest[..end].split(' ');
    let run = fields.next()?;
    let mut field = |key: &str| -> Option<u64> { fields.next()?.strip_prefix(key)?.parse().ok() };
    let conv = usize::try_from(field("c=")?).ok()?;
    let slot = usize::try_from(field("s=")?).ok()?;
    let seq = usize::try_from(field("q=")?).ok()?;
    let sent_us = field("t=")?;
    Some(Tag {
        run,
        conv,
        slot,
        seq,
        sent_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let tag = Tag {
            run: "0badf00d",
            conv: 12,
            slot: 3,
            seq: 4567,
            sent_us: 123_456_789,
        };
        let filler = "abc ".repeat(100);
        let content = tag.content(&filler, 120);
        assert_eq!(content.len(), 120);
        assert_eq!(parse_tag(&content), Some(tag));
        assert_eq!(parse_tag("hello"), None);
        assert_eq!(parse_tag("[lt x c=1 s=2 q=3] nope"), None);
    }

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
