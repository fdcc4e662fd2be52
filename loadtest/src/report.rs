//! The end report: the WebSocket measurements Goose lacks (ack and delivery latency,
//! message and delivery rates, losses), the persistence read-back, the capacity
//! search, the server's and the harness's resource use and a summary of Goose's REST
//! figures; as text for the console (after Goose's own report) and as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use goose::metrics::GooseMetrics;
use serde::Serialize;

use crate::capacity::CapacityResult;
use crate::console::thousands;
use crate::server::ProcessUsage;
use crate::state::Tally;
pub use crate::state::{DeliveryCost, Percentiles};
use crate::sys::FdLimit;
use crate::verify::Persistence;

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub url: String,
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
    pub sockets: Sockets,
    pub events: Events,
    pub persistence: Persistence,
    pub capacity: Option<CapacityResult>,
    pub server: Option<ServerInfo>,
    pub harness: Harness,
    pub rest: Vec<RestRow>,
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
    if let Some(why) = &report.aborted {
        problems.push(format!("the run did not complete: {why}"));
    }
    Verdict {
        ok: problems.is_empty(),
        lost: p.lost,
        problems,
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        thousands(v.round() as u64)
    } else {
        format!("{v:.1}")
    }
}

fn map_line(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} x{}", thousands(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

const RULE: &str =
    " ------------------------------------------------------------------------------------------";

/// The text report (printed after Goose's).
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let w = &r.workload;
    let _ = writeln!(s, "\n === WEBSOCKET METRICS ===");
    let _ = writeln!(
        s,
        " Target: {}{}",
        r.target.url,
        if r.target.local_server {
            " (chat-server started by the harness: embedded store, temporary directory)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        " Users: {} in {} conversations of {} (largest {}), {} per user, {} sockets",
        thousands(w.users as u64),
        thousands(w.conversations as u64),
        w.group_size,
        w.largest_group,
        w.conversations_per_user,
        thousands(w.sockets as u64)
    );
    let _ = writeln!(
        s,
        " Setup: {} users registered, logged in, joined and connected in {:.1} s ({} failed)",
        thousands(r.setup.users_joined as u64),
        r.setup.seconds,
        r.setup.users_failed
    );
    let m = &r.measured;
    let _ = writeln!(
        s,
        " Measured: {:.1} s; {} messages of {} chars{}; typing before {:.0}% of them",
        m.seconds,
        thousands(m.messages_sent),
        w.message_bytes,
        if r.capacity.is_some() {
            " over the capacity steps".to_string()
        } else {
            format!(" at {} msg/s per user", w.message_rate_per_user)
        },
        w.typing_ratio * 100.0
    );
    let _ = writeln!(s, "{RULE}");
    let _ = writeln!(
        s,
        " {:<22}| {:>10} | {:>9} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8}",
        "Latency", "count", "per s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let _ = writeln!(s, "{RULE}");
    for (name, p) in [
        ("ack (own echo)", &m.ack),
        ("delivery (others)", &m.delivery),
    ] {
        let _ = writeln!(
            s,
            " {:<22}| {:>10} | {:>9} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8}",
            name,
            thousands(p.count),
            rate(p.per_second),
            ms(p.p50_ms),
            ms(p.p90_ms),
            ms(p.p99_ms),
            ms(p.p99_9_ms),
            ms(p.max_ms)
        );
    }
    let _ = writeln!(s, "{RULE}");
    let c = &r.correctness;
    let t = &c.tally;
    let _ = writeln!(
        s,
        " Messages (whole run): sent {}, acknowledged {}, refused {}, unacknowledged {}",
        thousands(t.sent),
        thousands(t.acked),
        thousands(t.failed),
        thousands(t.unacked)
    );
    let _ = writeln!(
        s,
        " Deliveries: expected {}, delivered {}, missing {}, duplicates {}, reordered {}, misrouted {}",
        thousands(t.expected),
        thousands(t.delivered_expected),
        thousands(t.missing),
        thousands(c.duplicate_deliveries),
        thousands(c.reordered),
        thousands(c.misrouted)
    );
    let _ = writeln!(
        s,
        "   (+ {} delivered to sockets joining or leaving around the message, not counted either way)",
        thousands(t.delivered_uncertain + t.delivered_unacked)
    );
    let k = &r.sockets;
    let _ = writeln!(
        s,
        " Sockets: {} connects ({} reconnects), connect failures {}{}, dropped by the server {}{}",
        thousands(k.connects),
        thousands(k.reconnects),
        thousands(k.connect_failures),
        if k.connect_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", map_line(&k.connect_errors))
        },
        thousands(k.dropped),
        if k.drop_reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", map_line(&k.drop_reasons))
        }
    );
    if k.source_addresses.len() > 1 {
        let _ = writeln!(
            s,
            " Client sockets spread over {} source addresses: {} .. {}",
            k.source_addresses.len(),
            k.source_addresses.first().map_or("", String::as_str),
            k.source_addresses.last().map_or("", String::as_str)
        );
    }
    let e = &r.events;
    let _ = writeln!(
        s,
        " Events: typing sent {} / received {}, system {}, history reads {}, errors: {}",
        thousands(e.typing_sent),
        thousands(e.typing_received),
        thousands(e.system_received),
        thousands(e.history_reads),
        map_line(&e.errors)
    );
    let p = &r.persistence;
    let _ = writeln!(
        s,
        " Persistence: {} acknowledged messages checked against the history of {} of {} conversations \
         ({} messages read): lost = {}{}",
        thousands(p.acknowledged),
        p.conversations_read,
        p.conversations,
        thousands(p.history_messages),
        thousands(p.lost),
        if p.lost == 0 && p.complete {
            " (every acknowledged message is persisted)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "   history duplicates {}, out of order {}, persisted without ack {}, refused but stored {}",
        p.duplicates, p.out_of_order, p.persisted_unacknowledged, p.persisted_refused
    );
    for err in &p.errors {
        let _ = writeln!(s, "   read-back error: {err}");
    }
    match &m.server_cost {
        Some(c) => {
            let _ = writeln!(
                s,
                " Cost: {:.2} us of server CPU per delivery over the measured phase ({:.2} user + {:.2} kernel)",
                c.total_us, c.user_us, c.kernel_us
            );
        }
        None => {
            let _ = writeln!(
                s,
                " Cost: not measured (the server is remote; on this machine pass --server-pid)"
            );
        }
    }
    if let Some(server) = &r.server {
        if let Some(u) = &server.usage {
            let _ = writeln!(
                s,
                " Server: {:.1} s CPU, peak RSS {:.0} MiB, {} threads; {}",
                u.cpu_seconds, u.peak_rss_mib, u.threads, server.stop
            );
        }
        for line in &server.log_problems {
            let _ = writeln!(s, "   server log: {line}");
        }
    }
    if let Some(u) = &r.harness.usage {
        let _ = writeln!(
            s,
            " Harness: {:.1} s CPU, peak RSS {:.0} MiB; open files limit {} (needed ~{}){}",
            u.cpu_seconds,
            u.peak_rss_mib,
            r.harness.open_files.after,
            r.harness.open_files.needed,
            r.harness
                .open_files
                .problem
                .as_ref()
                .map(|p| format!(" -- {p}"))
                .unwrap_or_default()
        );
    }
    if let Some(cap) = &r.capacity {
        render_capacity(&mut s, cap);
    }
    let _ = writeln!(s, "{RULE}");
    if r.verdict.ok {
        let _ = writeln!(
            s,
            " Verdict: OK -- lost = 0, nothing missing, duplicated or reordered"
        );
    } else {
        let _ = writeln!(s, " Verdict: PROBLEMS (lost = {})", r.verdict.lost);
        for problem in &r.verdict.problems {
            let _ = writeln!(s, "   - {problem}");
        }
    }
    s
}

fn render_capacity(s: &mut String, cap: &CapacityResult) {
    let _ = writeln!(
        s,
        "\n === CAPACITY (SLO: p99 delivery <= {} ms, nothing lost) ===",
        cap.slo_p99_ms
    );
    let _ = writeln!(s, "{RULE}");
    let _ = writeln!(
        s,
        " {:>4} | {:>9} | {:>9} | {:>12} | {:>7} | {:>7} | {:>8} | {:>7} | {:>8} | {:>6} | result",
        "step",
        "target/s",
        "sent/s",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "us/deliv",
        "lost"
    );
    let _ = writeln!(s, "{RULE}");
    for step in &cap.steps {
        let lost = step.missing + step.refused + step.unacknowledged;
        let _ = writeln!(
            s,
            " {:>4} | {:>9} | {:>9} | {:>12} | {:>7} | {:>7} | {:>8} | {:>7} | {:>8} | {:>6} | {}",
            step.step,
            rate(step.target_messages_per_s),
            rate(step.messages_per_s),
            rate(step.deliveries_per_s),
            ms(step.delivery.p50_ms),
            ms(step.delivery.p99_ms),
            ms(step.delivery.p99_9_ms),
            ms(step.delivery.max_ms),
            step.server_cost
                .map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.total_us)),
            thousands(lost),
            if step.held {
                if step.harness_limited {
                    "held (harness-limited)"
                } else {
                    "held"
                }
            } else {
                "FAILED"
            }
        );
    }
    let _ = writeln!(s, "{RULE}");
    let _ = writeln!(s, " Result: {}", cap.summary);
    let _ = writeln!(s, " Stopped: {}", cap.stopped_because);
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;

    use super::*;

    #[test]
    fn percentiles_in_ms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let p = Percentiles::of(&h, 10.0);
        assert_eq!(p.count, 1000);
        assert!((p.per_second - 100.0).abs() < 1e-9);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 2.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(
            Percentiles::of(&Histogram::new(3).expect("h"), 1.0).count,
            0
        );
    }
}
