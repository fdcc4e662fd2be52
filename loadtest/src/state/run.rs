//! [`Run`]: everything the tasks of one run share, its clock, the stage and control
//! signals the driver sets, the measured windows, and the end-of-run accounting of
//! what happened to every message ([`Run::tally`], [`Tally`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, OnceCell, Semaphore};

use super::{lock, Account, Control, Conv, ConvState, Counters, Latencies, Sources, Stage, Window};
use crate::config::Config;
use crate::plan::Plan;

/// Everything the tasks of one run share.
pub struct Run {
    pub config: Config,
    pub plan: Plan,
    /// Random tag in every message of this run (other runs' messages are ignored).
    pub run_tag: String,
    pub user_prefix: String,
    /// `http(s)://host:port` of the first node, no trailing slash: REST and the final
    /// history check go there.
    pub base_url: String,
    /// Every node; user `i`'s sockets go to node `i % nodes.len()`, so the members of
    /// a conversation (consecutive users) sit on different nodes.
    pub nodes: Vec<Node>,
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
    /// The server processes (one per node) whose CPU the windows sample, when they run
    /// on this host.
    pub server_pids: Vec<u32>,
    /// Per user, per socket (one per layer, or its one user stream): the socket
    /// task's handle. See [`Run::sockets_of`].
    pub sockets: Vec<Mutex<Option<crate::ws::SocketHandle>>>,
    pub message_filler: String,
    /// The TLS configuration and HTTP client every part of the run uses.
    pub clients: crate::tls::Clients,
}

/// One node of the target.
#[derive(Clone, Debug)]
pub struct Node {
    /// `http://host:port` (or `https://`), no trailing slash.
    pub base_url: String,
    /// `ws://host:port` (or `wss://`).
    pub ws_url: String,
    pub addr: SocketAddr,
}

impl Node {
    pub fn new(base_url: &str, addr: SocketAddr) -> Self {
        Self {
            base_url: base_url.to_string(),
            ws_url: base_url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1),
            addr,
        }
    }
}

impl Run {
    pub fn new(
        config: Config,
        nodes: Vec<Node>,
        sources: Sources,
        server_pids: Vec<u32>,
        clients: crate::tls::Clients,
    ) -> Arc<Self> {
        let users = config.users();
        let plan = Plan::new(users, config.group_members(), config.layers());
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
        let (control, _) = watch::channel(Control {
            rate_per_user: 0.0,
            phase: 0,
            sending: false,
        });
        let (stage, _) = watch::channel(Stage::Setup);
        let filler =
            "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
                .repeat(config.message_bytes / 70 + 1);
        let sockets = (0..plan.users() * config.sockets_per_user())
            .map(|_| Mutex::new(None))
            .collect();
        let auth_gate = Semaphore::new(config.auth_concurrency);
        Arc::new(Run {
            plan,
            run_tag,
            user_prefix,
            base_url: nodes
                .first()
                .map(|n| n.base_url.clone())
                .unwrap_or_default(),
            nodes,
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
            server_pids,
            sockets,
            message_filler: filler,
            clients,
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

    /// Sleeps `d`, or less if the run is stopped; `false` when it was.
    pub async fn pause(&self, d: std::time::Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => !self.stopping(),
            () = self.until_stopping() => false,
        }
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

    /// Resolves once the join storm starts (or the run ends first).
    pub async fn until_storm(&self) {
        self.until(Stage::Storm).await;
    }

    /// Resolves once chat starts (or the run ends first).
    pub async fn until_chat(&self) {
        self.until(Stage::Chat).await;
    }

    async fn until(&self, wanted: Stage) {
        let mut stage = self.stage.subscribe();
        loop {
            if self.stage() >= wanted || self.stopping() {
                return;
            }
            tokio::select! {
                _ = stage.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// The server's (user, kernel) CPU seconds now, over all its nodes, if they can be
    /// read.
    fn server_cpu(&self) -> Option<(f64, f64)> {
        if self.server_pids.is_empty() {
            return None;
        }
        self.server_pids
            .iter()
            .try_fold((0.0, 0.0), |(user, kernel), &pid| {
                let usage = testkit::procfs::usage(pid).ok()?;
                Some((user + usage.user_seconds, kernel + usage.system_seconds))
            })
    }

    /// The socket tasks of `user`: one per conversation (by layer), or its user stream.
    pub fn sockets_of(&self, user: usize) -> &[Mutex<Option<crate::ws::SocketHandle>>] {
        let per_user = self.config.sockets_per_user();
        &self.sockets[user * per_user..(user + 1) * per_user]
    }

    /// The node user `user`'s sockets connect to.
    pub fn node_of(&self, user: usize) -> &Node {
        &self.nodes[user % self.nodes.len()]
    }

    /// Opens a measured window (or capacity step) and tells every socket.
    pub fn begin_window(&self, phase: u16, rate_per_user: f64) {
        let now = self.now_us();
        let cpu = self.server_cpu();
        {
            let mut windows = lock(&self.windows);
            if let Some(last) = windows.last_mut() {
                if last.end_us == 0 {
                    last.end_us = now;
                    last.cpu_end = cpu;
                }
            }
            if phase > 0 {
                windows.push(Window {
                    phase,
                    rate_per_user,
                    start_us: now,
                    end_us: 0,
                    cpu_start: cpu,
                    cpu_end: None,
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
        let cpu = self.server_cpu();
        if let Some(last) = lock(&self.windows).last_mut() {
            if last.end_us == 0 {
                last.end_us = now;
                last.cpu_end = cpu;
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
                    let others = rec.delivered.count_except(sender);
                    if rec.failed {
                        t.failed += 1;
                        t.delivered_refused += others;
                        continue;
                    }
                    if rec.ack_us == 0 {
                        t.unacked += 1;
                        t.delivered_unacked += others;
                        continue;
                    }
                    t.acked += 1;
                    for (receiver, intervals) in state.live.iter().enumerate() {
                        if receiver == sender {
                            continue;
                        }
                        let got = rec.delivered.has(receiver);
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
