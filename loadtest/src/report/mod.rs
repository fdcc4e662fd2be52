//! The end report: the WebSocket measurements Goose lacks (ack and delivery latency,
//! message and delivery rates, losses, retried sends, each socket's stream across its
//! reconnects), the persistence read-back, the capacity search, the server's and the
//! harness's resource use and a summary of Goose's REST figures; as text for the
//! console (after Goose's own report) and as JSON for scripts. The verdict is decided
//! here, from the figures alone.
//!
//! Layout: this file holds the report's data and the verdict; `assemble` fills the
//! data in from what the run found; `render` the text; `scenarios` the big room's,
//! the hostile clients' and the user streams' sections.

mod assemble;
mod render;
mod scenarios;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use goose::metrics::GooseMetrics;
use serde::Serialize;

use crate::capacity::CapacityResult;
use crate::console::thousands;
use crate::hostile::HostileReport;
use crate::scrape::Scrapes;
use crate::server::ProcessUsage;
use crate::state::Tally;
pub use crate::state::{DeliveryCost, Percentiles};
use crate::sys::FdLimit;
pub use crate::tls::Transport;
use crate::verify::Persistence;
pub use assemble::{assemble, Findings};
pub use render::render;
pub use scenarios::{Room, UserStreams};

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The node URLs, comma-separated.
    pub url: String,
    /// How many nodes the users were spread over.
    pub nodes: usize,
    /// Plain or TLS, and what the TLS client trusted.
    pub transport: Transport,
    /// The store of a server the harness started.
    pub store: String,
    /// Started by the harness (else `--host`).
    pub local_server: bool,
    pub server_binary: Option<String>,
    pub server_log: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub users: usize,
    pub conversations: usize,
    pub group_size: u16,
    pub largest_group: usize,
    pub conversations_per_user: u16,
    /// What each socket carries: `conversation` (one socket per conversation of the
    /// user) or `user stream` (`--user-stream`: one socket for all of them).
    pub socket_kind: &'static str,
    pub sockets_per_user: usize,
    pub sockets: usize,
    pub message_rate_per_user: f64,
    pub typing_ratio: f64,
    pub message_bytes: usize,
    pub think_time_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub seconds: f64,
    pub users_joined: usize,
    pub users_failed: usize,
    pub all_joined: bool,
}

/// The measured time: the steady window, or every capacity step together.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub seconds: f64,
    pub messages_sent: u64,
    pub messages_per_s: f64,
    pub ack: Percentiles,
    pub delivery: Percentiles,
    /// The server's CPU per delivery over the measured phase (or capacity steps), when
    /// its /proc could be read.
    pub server_cost: Option<DeliveryCost>,
}

/// Everything sent during the run (warm-up and measured time) and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct Correctness {
    #[serde(flatten)]
    pub tally: Tally,
    /// The same message delivered twice to one receiver (must be 0).
    pub duplicate_deliveries: u64,
    /// A sender's own message echoed twice (must be 0).
    pub duplicate_acks: u64,
    /// A sender's messages arriving out of order at a receiver (must be 0).
    pub reordered: u64,
    /// A message arriving in the wrong conversation, or unknown (must be 0).
    pub misrouted: u64,
    /// Messages without this run's tag (other clients).
    pub foreign: u64,
    /// Messages written again with their `client_id`, after a reconnect or the server's
    /// "may not have been saved".
    pub retried_sends: u64,
    /// Answers to those that repeated the original (it had been stored; nothing new was).
    pub answered_with_original: u64,
}

/// Each socket's view of its conversation's stream, from its first join to its close,
/// across its reconnects.
#[derive(Clone, Debug, Serialize)]
pub struct Streams {
    /// Events replayed to resumed connections (`since=`) before their `joined` event.
    pub resumed_events: u64,
    /// Replays that began with a `resync`: the positions before it were skipped
    /// legitimately.
    pub resyncs: u64,
    /// Positions a socket never received (must be 0).
    pub gaps: u64,
    /// Positions a socket received twice (must be 0).
    pub duplicates: u64,
    /// Stream events without a position, or before the socket's first `joined` event
    /// (must be 0).
    pub unplaced: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sockets {
    pub connects: u64,
    pub connect_failures: u64,
    pub connect_errors: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub dropped: u64,
    pub drop_reasons: BTreeMap<String, u64>,
    pub join_timeouts: u64,
    pub source_addresses: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Events {
    pub typing_sent: u64,
    pub typing_received: u64,
    pub system_received: u64,
    pub history_reads: u64,
    /// `error` events by detail.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerInfo {
    pub pid: Option<u32>,
    pub usage: Option<ProcessUsage>,
    /// The server died during the run (it is only stopped after the report's data is in).
    pub crashed: Option<String>,
    pub stop: String,
    /// Warnings and errors from its log (first few).
    pub log_problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Harness {
    pub usage: Option<ProcessUsage>,
    pub open_files: FdLimit,
}

/// One Goose request row, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct RestRow {
    pub name: String,
    pub requests: usize,
    pub failures: usize,
    pub mean_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// No loss, no duplicate, nothing misrouted, history complete, server alive.
    pub ok: bool,
    /// The acknowledged messages missing from history (`lost = 0` is the promise).
    pub lost: u64,
    pub problems: Vec<String>,
}

/// The harness's whole result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub target: Target,
    pub workload: Workload,
    pub setup: Setup,
    pub measured: Measured,
    pub correctness: Correctness,
    pub streams: Streams,
    pub sockets: Sockets,
    pub events: Events,
    pub persistence: Persistence,
    pub capacity: Option<CapacityResult>,
    pub server: Option<ServerInfo>,
    pub harness: Harness,
    pub rest: Vec<RestRow>,
    /// `--scrape-metrics`: the scrapes of `/metrics` made during the measured time.
    pub scrapes: Option<Scrapes>,
    /// `--room-size`: the big room's storms and checks.
    pub room: Option<Room>,
    /// `--hostile`: what the hostile clients got (never a problem for the verdict).
    pub hostile: Option<HostileReport>,
    /// `--user-stream`: the end-of-run check of unread counts and read markers.
    pub user_streams: Option<UserStreams>,
    pub aborted: Option<String>,
    pub verdict: Verdict,
}

/// The REST rows of Goose's metrics, by name.
pub fn rest_rows(metrics: &GooseMetrics) -> Vec<RestRow> {
    let mut rows: Vec<RestRow> = metrics
        .requests
        .iter()
        .map(|(name, agg)| RestRow {
            name: name.clone(),
            requests: agg.success_count + agg.fail_count,
            failures: agg.fail_count,
            mean_ms: if agg.raw_data.counter > 0 {
                agg.raw_data.total_time_us as f64 / agg.raw_data.counter as f64 / 1000.0
            } else {
                0.0
            },
            max_ms: agg.raw_data.maximum_time_us as f64 / 1000.0,
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

/// Decides the verdict from the figures.
pub fn verdict(report: &Report) -> Verdict {
    let mut problems = Vec::new();
    let c = &report.correctness;
    let p = &report.persistence;
    let mut must_be_zero = |what: &str, n: u64| {
        if n > 0 {
            problems.push(format!("{} {what}", thousands(n)));
        }
    };
    must_be_zero("acknowledged messages missing from history (lost)", p.lost);
    must_be_zero("deliveries missing", c.tally.missing);
    must_be_zero("duplicate deliveries", c.duplicate_deliveries);
    must_be_zero("duplicate acknowledgements", c.duplicate_acks);
    must_be_zero("messages out of order at a receiver", c.reordered);
    must_be_zero("misrouted or unknown messages", c.misrouted);
    must_be_zero(
        "stream positions never received (gaps)",
        report.streams.gaps,
    );
    must_be_zero("stream positions received twice", report.streams.duplicates);
    must_be_zero("stream events without a place", report.streams.unplaced);
    must_be_zero(
        "deliveries of messages the server refused",
        c.tally.delivered_refused,
    );
    must_be_zero("messages refused by the server", c.tally.failed);
    must_be_zero("messages neither acknowledged nor refused", c.tally.unacked);
    must_be_zero("duplicate messages in history", p.duplicates);
    must_be_zero("messages out of order in history", p.out_of_order);
    must_be_zero("refused messages found in history", p.persisted_refused);
    must_be_zero("sockets dropped by the server", report.sockets.dropped);
    must_be_zero(
        "simulated users that failed to set up",
        report.setup.users_failed as u64,
    );
    if !p.complete {
        problems.push(format!(
            "history read back for only {} of {} conversations",
            p.conversations_read, p.conversations
        ));
    }
    if let Some(crash) = report.server.as_ref().and_then(|s| s.crashed.as_ref()) {
        problems.push(format!("the server died during the run: {crash}"));
    }
    if let Some(room) = &report.room {
        problems.extend(scenarios::room_problems(room));
    }
    if let Some(streams) = &report.user_streams {
        problems.extend(scenarios::user_stream_problems(streams));
    }
    if let Some(why) = &report.aborted {
        problems.push(format!("the run did not complete: {why}"));
    }
    Verdict {
        ok: problems.is_empty(),
        lost: p.lost,
        problems,
    }
}
