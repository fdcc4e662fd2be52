//! Capacity mode: raise the message rate step by step (each step `--rate-factor` times
//! the last) until p99 delivery latency passes the SLO or anything is lost, and report
//! the highest step that held: "carries N deliveries/s for U users at p99 <= X ms".
//!
//! A step is judged a couple of seconds after it ends (while the next one runs), so
//! its last messages have time to arrive: a message not acknowledged, or a delivery not
//! made, by then counts as lost for the step (it is far beyond any sensible SLO).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::console::{say, thousands};
use crate::state::Run;
use crate::state::{DeliveryCost, Percentiles};

/// How long after a step ends it is judged.
const SETTLE: Duration = Duration::from_secs(2);
/// A step whose sent rate falls below this share of its target means the harness
/// itself (or the machine) could not go faster.
const KEEP_UP: f64 = 0.8;

/// One step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: u16,
    pub target_messages_per_s: f64,
    pub rate_per_user: f64,
    pub seconds: f64,
    pub messages_sent: u64,
    pub messages_per_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub ack: Percentiles,
    pub delivery: Percentiles,
    pub missing: u64,
    pub refused: u64,
    pub unacknowledged: u64,
    pub dropped_connections: u64,
    /// The server's CPU per delivery in this step, when its /proc could be read.
    pub server_cost: Option<DeliveryCost>,
    pub held: bool,
    /// Why it did not hold, if it did not.
    pub failure: Option<String>,
    /// The harness sent less than 80% of the target rate: the client side (CPU shared
    /// with the server on one machine) is the limit, so the search stops here.
    pub harness_limited: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityResult {
    pub slo_p99_ms: f64,
    pub users: usize,
    pub steps: Vec<Step>,
    /// The highest step that held (index into `steps`).
    pub best: Option<usize>,
    pub stopped_because: String,
    /// The one-line answer.
    pub summary: String,
}

/// Runs the steps; returns with chat still on (the caller stops it).
pub async fn search(run: &Arc<Run>) -> CapacityResult {
    let config = &run.config;
    let users = run.plan.users();
    let start = config
        .start_rate
        .unwrap_or(users as f64 * config.message_rate)
        .max(0.1);
    let mut steps: Vec<Step> = Vec::new();
    let mut stopped_because = String::new();
    let mut target = start;
    let step_time = config.step_time();
    // Steps started and not yet judged: (phase, target, drops when it started).
    let mut pending: Option<(u16, f64, u64)> = None;
    let limit_applies = config.goose.host.is_some();

    for index in 1..=config.max_steps {
        let phase = u16::try_from(index).unwrap_or(u16::MAX);
        let per_user = target / users as f64;
        if limit_applies && config.events_per_user(per_user) > config.server_rate_limit * 0.9 {
            stopped_because = format!(
                "the next step needs {:.1} events/s per user, over 90% of the server's \
                 per-user limit ({}/s, --server-rate-limit): add users to go further",
                config.events_per_user(per_user),
                config.server_rate_limit
            );
            break;
        }
        let drops_at_start = run.counters.drops.load(Ordering::Relaxed);
        run.begin_window(phase, per_user);
        say(&format!(
            "capacity step {index}: {:.0} messages/s ({:.3}/s per user)",
            target, per_user
        ));
        // Judge the previous step once this one has run for SETTLE.
        let mut remaining = step_time;
        if let Some((prev, prev_target, prev_drops)) = pending.take() {
            let settle = SETTLE.min(step_time);
            if !run.pause(settle).await {
                stopped_because = "stopped".into();
                break;
            }
            remaining = step_time.saturating_sub(settle);
            let judged = judge(run, prev, prev_target, prev_drops, drops_at_start);
            report_step(&judged);
            let stop = stop_reason(&judged);
            steps.push(judged);
            if let Some(reason) = stop {
                stopped_because = reason;
                break;
            }
        }
        if !run.pause(remaining).await {
            stopped_because = "stopped".into();
            break;
        }
        pending = Some((phase, target, drops_at_start));
        target *= config.rate_factor;
    }
    // The last step started is judged after a quiet settle.
    if let Some((prev, prev_target, prev_drops)) = pending.take() {
        run.end_chat();
        let drops_at_end = run.counters.drops.load(Ordering::Relaxed);
        let _ = run.pause(SETTLE).await;
        let judged = judge(run, prev, prev_target, prev_drops, drops_at_end);
        report_step(&judged);
        if stopped_because.is_empty() {
            stopped_because = stop_reason(&judged).unwrap_or_default();
        }
        steps.push(judged);
    }
    if stopped_because.is_empty() {
        stopped_because = format!("reached --max-steps {}", config.max_steps);
    }
    // The highest held step before the first failure.
    let best = steps.iter().take_while(|s| s.held).count().checked_sub(1);
    let summary = match best.map(|i| &steps[i]) {
        Some(step) => format!(
            "carries {} deliveries/s ({} messages/s) for {} users at p99 <= {} ms (measured p99 {:.1} ms)",
            thousands(step.deliveries_per_s.round() as u64),
            thousands(step.messages_per_s.round() as u64),
            thousands(users as u64),
            config.slo_p99_ms,
            step.delivery.p99_ms
        ),
        None => format!(
            "no step held: even {:.0} messages/s for {} users missed p99 <= {} ms or lost messages",
            start,
            thousands(users as u64),
            config.slo_p99_ms
        ),
    };
    CapacityResult {
        slo_p99_ms: config.slo_p99_ms,
        users,
        steps,
        best,
        stopped_because,
        summary,
    }
}

fn judge(run: &Run, phase: u16, target: f64, drops_before: u64, drops_after: u64) -> Step {
    let config = &run.config;
    let windows = run.windows();
    let step_window = windows.iter().find(|w| w.phase == phase);
    let window = step_window
        .map(|w| (w.seconds(), w.rate_per_user))
        .unwrap_or((config.step_time, target / run.plan.users() as f64));
    let seconds = window.0.max(0.001);
    let tally = run.tally(|p| p == phase);
    let hist = run.latencies.merged(|p| p == phase);
    let deliveries = hist.delivery.len();
    let ack = Percentiles::of(&hist.ack, seconds);
    let delivery = Percentiles::of(&hist.delivery, seconds);
    let dropped = drops_after.saturating_sub(drops_before);
    let messages_per_s = tally.sent as f64 / seconds;
    let mut failure = None;
    if tally.missing > 0 || tally.failed > 0 || tally.unacked > 0 {
        failure = Some(format!(
            "step {phase} lost messages: {} s after it ended {} deliveries had not arrived, \
             {} messages were refused and {} not acknowledged",
            SETTLE.as_secs(),
            tally.missing,
            tally.failed,
            tally.unacked
        ));
    } else if dropped > 0 {
        failure = Some(format!(
            "step {phase}: the server dropped {dropped} connections"
        ));
    } else if delivery.count == 0 && tally.sent > 0 && tally.expected > 0 {
        failure = Some(format!("step {phase}: nothing was delivered"));
    } else if delivery.p99_ms > config.slo_p99_ms {
        failure = Some(format!(
            "step {phase}: p99 delivery {:.1} ms > {} ms",
            delivery.p99_ms, config.slo_p99_ms
        ));
    }
    let harness_limited = messages_per_s < target * KEEP_UP;
    Step {
        step: phase,
        target_messages_per_s: target,
        rate_per_user: window.1,
        seconds,
        messages_sent: tally.sent,
        messages_per_s,
        deliveries,
        deliveries_per_s: deliveries as f64 / seconds,
        ack,
        delivery,
        missing: tally.missing,
        refused: tally.failed,
        unacknowledged: tally.unacked,
        dropped_connections: dropped,
        server_cost: DeliveryCost::of(&step_window.into_iter().collect::<Vec<_>>(), deliveries),
        held: failure.is_none(),
        failure,
        harness_limited,
    }
}

/// Why the search stops after this step, if it does.
fn stop_reason(step: &Step) -> Option<String> {
    if let Some(failure) = &step.failure {
        return Some(failure.clone());
    }
    step.harness_limited.then(|| {
        format!(
            "step {}: the harness sent only {:.0} of {:.0} messages/s, so the client side \
             (sharing this machine's CPU with the server) is the limit, not the SLO",
            step.step, step.messages_per_s, step.target_messages_per_s
        )
    })
}

fn report_step(step: &Step) {
    let cost = step
        .server_cost
        .map(|c| format!(", server {:.2} us CPU per delivery", c.total_us))
        .unwrap_or_default();
    say(&format!(
        "step {}: {:.0} msg/s sent, {} deliveries/s, delivery p50 {:.1} ms p99 {:.1} ms max {:.1} ms{cost} -> {}",
        step.step,
        step.messages_per_s,
        thousands(step.deliveries_per_s.round() as u64),
        step.delivery.p50_ms,
        step.delivery.p99_ms,
        step.delivery.max_ms,
        match (&step.failure, step.harness_limited) {
            (None, false) => "held".to_string(),
            (None, true) => "held, but the harness could not send faster".to_string(),
            (Some(why), _) => format!("FAILED ({why})"),
        }
    ));
}
