//! The report as text for the console, printed after Goose's own. It only formats:
//! every figure and the verdict come decided in the [`Report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Report;
use crate::capacity::CapacityResult;
use crate::console::thousands;

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
        match (r.target.local_server, r.target.nodes) {
            (true, 1) => format!(" (chat-server started by the harness: {})", r.target.store),
            (true, n) => format!(
                " ({n} chat-server nodes started by the harness: one PostgreSQL database, one Redis; users spread over them)"
            ),
            (false, 1) => String::new(),
            (false, n) => format!(" ({n} nodes; users spread over them)"),
        }
    );
    let _ = writeln!(
        s,
        " Transport: {}",
        match r.target.transport.scheme {
            "tls" => format!(
                "TLS (wss:// and https://), trusting {}",
                r.target.transport.trust
            ),
            _ => "plain (ws:// and http://)".to_string(),
        }
    );
    let _ = writeln!(
        s,
        " Users: {} in {} conversations of {} (largest {}), {} per user, {} sockets ({})",
        thousands(w.users as u64),
        thousands(w.conversations as u64),
        w.group_size,
        w.largest_group,
        w.conversations_per_user,
        thousands(w.sockets as u64),
        match w.socket_kind {
            "user stream" => "one user stream per user, carrying all its conversations".to_string(),
            _ => format!("{} per user, one per conversation", w.sockets_per_user),
        }
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
    let st = &r.streams;
    let _ = writeln!(
        s,
        " Streams: resumed events {}, resyncs {}, gaps {}, duplicates {}, unplaced {}",
        thousands(st.resumed_events),
        thousands(st.resyncs),
        thousands(st.gaps),
        thousands(st.duplicates),
        thousands(st.unplaced)
    );
    let _ = writeln!(
        s,
        " Retried sends (same client_id): {}, answered with the original {}",
        thousands(c.retried_sends),
        thousands(c.answered_with_original)
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
    if let Some(sc) = &r.scrapes {
        let _ = writeln!(
            s,
            " Metrics scrapes: {} done every {} s over {} node{} during the measured time, \
             mean {} ms, max {} ms, {} bytes per scrape; failed {}{}",
            thousands(sc.done),
            sc.interval_s,
            sc.nodes,
            if sc.nodes == 1 { "" } else { "s" },
            ms(sc.mean_ms),
            ms(sc.max_ms),
            thousands(sc.mean_bytes.round() as u64),
            thousands(sc.failed),
            if sc.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", map_line(&sc.failures))
            }
        );
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
    super::scenarios::render(&mut s, r);
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
