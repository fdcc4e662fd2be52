//! The big room's storms (`--room-size`): the join storm, every member's socket
//! connecting at once once everyone is in the room over REST, and the reconnect storm
//! (`--reconnect-storm`), every member closing and resuming with its last `since` at
//! once. Each is timed from its signal to the last socket told of its own `joined`
//! event, with the frames and bytes the members received meanwhile (and over a settle
//! after it, while the coalesced presence announcements still come) and the sockets the
//! server closed meanwhile, by code.
//!
//! It gives the signals and counts; it never judges (the report's verdict does) and
//! never closes a socket for good.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::console::{say, thousands};
use crate::state::{lock, Run, Stage};
use crate::ws::Command;

/// How long after a storm the bytes go on being counted: the server sums up joins and
/// leaves of a big room at most once per `--presence-interval-ms` (1 s by default).
const SETTLE: Duration = Duration::from_secs(3);

/// One storm, as measured.
#[derive(Clone, Debug, Serialize)]
pub struct Storm {
    /// `join` or `reconnect`.
    pub kind: &'static str,
    pub sockets: usize,
    /// From the signal to the last socket's own `joined` event (or the timeout).
    pub seconds: f64,
    /// Sockets that received their own `joined` event within the storm.
    pub joined: usize,
    /// Sockets that did not (connect failed, no `joined` in time, closed).
    pub failed: usize,
    /// Each socket's time from the signal to its own `joined` event.
    pub join_p50_ms: f64,
    pub join_p99_ms: f64,
    pub join_max_ms: f64,
    /// Text frames and their bytes received by all members during the storm.
    pub frames_received: u64,
    pub bytes_received: u64,
    /// The same, from the signal to the end of the settle after the storm.
    pub frames_settled: u64,
    pub bytes_settled: u64,
    /// Of the frames received during the storm: those that carried the member list
    /// (and their bytes), and the summaries of several joins and leaves.
    pub listed_frames: u64,
    pub listed_bytes: u64,
    pub summary_frames: u64,
    /// Sockets the server (or the network) ended from the signal to the end of the
    /// settle, by close code or reason.
    pub closes: BTreeMap<String, u64>,
    /// The storm did not finish within --setup-timeout (or the run was stopped).
    pub incomplete: Option<String>,
}

/// The counters a storm is measured by, at one moment.
struct Snapshot {
    frames: u64,
    bytes: u64,
    listed_frames: u64,
    listed_bytes: u64,
    summary_frames: u64,
    drops: BTreeMap<String, u64>,
}

impl Snapshot {
    fn take(run: &Run) -> Self {
        let c = &run.counters;
        let read = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        Self {
            frames: read(&c.frames_received),
            bytes: read(&c.bytes_received),
            listed_frames: read(&c.listed_frames),
            listed_bytes: read(&c.listed_bytes),
            summary_frames: read(&c.summary_frames),
            drops: lock(&c.drop_reasons).clone(),
        }
    }
}

/// The join storm: every user is set up over REST and waits; the signal lets all
/// their sockets connect at once. Returns once every socket has joined (or failed),
/// and the settle after it has passed.
pub async fn join_storm(run: &Run) -> Storm {
    let users = run.plan.users();
    let before = Snapshot::take(run);
    let start_us = run.now_us();
    let started = Instant::now();
    say(&format!(
        "join storm: {} sockets connect at once",
        thousands(users as u64)
    ));
    run.set_stage(Stage::Storm);
    let deadline = started + run.config.setup_timeout();
    let mut next_note = started + Duration::from_secs(5);
    let mut incomplete = None;
    while run.counters.users_ready.load(Ordering::Relaxed) < users {
        if run.stopping() {
            incomplete = Some("stopped during the join storm".to_string());
            break;
        }
        if Instant::now() >= deadline {
            incomplete = Some(format!(
                "the join storm did not end within {:.0} s (--setup-timeout)",
                run.config.setup_timeout
            ));
            break;
        }
        if Instant::now() >= next_note {
            say(&format!(
                "join storm: {} of {} sockets joined, {:.0} s",
                thousands(lock(&run.counters.storm_joins_us).len() as u64),
                thousands(users as u64),
                started.elapsed().as_secs_f64()
            ));
            next_note += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times: Vec<u64> = lock(&run.counters.storm_joins_us)
        .iter()
        .map(|at| at.saturating_sub(start_us))
        .collect();
    finish(run, "join", users, started, before, times, incomplete).await
}

/// The reconnect storm: every socket is told at once to close and connect again,
/// resuming with its last `since`.
pub async fn reconnect_storm(run: &Run) -> Storm {
    let before = Snapshot::take(run);
    let start_us = run.now_us();
    let started = Instant::now();
    let mut replies = Vec::new();
    for slot in &run.sockets {
        let commands = lock(slot).as_ref().map(|h| h.commands.clone());
        let Some(commands) = commands else { continue };
        let (tx, rx) = oneshot::channel();
        if commands.send(Command::Reconnect(tx)).await.is_ok() {
            replies.push(rx);
        }
    }
    let sockets = replies.len();
    say(&format!(
        "reconnect storm: {} sockets close and resume at once",
        thousands(sockets as u64)
    ));
    let answers = join_all(replies.into_iter().map(|rx| async move {
        let outcome = rx.await.ok()?;
        outcome.ok.then(|| run.now_us().saturating_sub(start_us))
    }));
    let (times, incomplete) = match tokio::time::timeout(run.config.setup_timeout(), answers).await
    {
        Ok(answers) => (answers.into_iter().flatten().collect(), None),
        Err(_) => (
            Vec::new(),
            Some(format!(
                "the reconnect storm did not end within {:.0} s (--setup-timeout)",
                run.config.setup_timeout
            )),
        ),
    };
    finish(
        run,
        "reconnect",
        sockets,
        started,
        before,
        times,
        incomplete,
    )
    .await
}

/// Closes a storm's account: its time now, its bytes now and after the settle.
async fn finish(
    run: &Run,
    kind: &'static str,
    sockets: usize,
    started: Instant,
    before: Snapshot,
    mut times: Vec<u64>,
    incomplete: Option<String>,
) -> Storm {
    let during = Snapshot::take(run);
    times.sort_unstable();
    // The driver looks every few milliseconds: when every socket joined, the last
    // one's own time is the storm's.
    let seconds = match times.last() {
        Some(&last) if incomplete.is_none() && times.len() == sockets => last as f64 / 1e6,
        _ => started.elapsed().as_secs_f64(),
    };
    let _ = run.pause(SETTLE).await;
    let settled = Snapshot::take(run);
    let at = |q: f64| -> f64 {
        if times.is_empty() {
            return 0.0;
        }
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i] as f64 / 1000.0
    };
    let storm = Storm {
        kind,
        sockets,
        seconds,
        joined: times.len(),
        failed: sockets.saturating_sub(times.len()),
        join_p50_ms: at(0.5),
        join_p99_ms: at(0.99),
        join_max_ms: at(1.0),
        frames_received: during.frames - before.frames,
        bytes_received: during.bytes - before.bytes,
        frames_settled: settled.frames - before.frames,
        bytes_settled: settled.bytes - before.bytes,
        listed_frames: during.listed_frames - before.listed_frames,
        listed_bytes: during.listed_bytes - before.listed_bytes,
        summary_frames: during.summary_frames - before.summary_frames,
        closes: difference(&settled.drops, &before.drops),
        incomplete,
    };
    say(&format!(
        "{kind} storm: {} of {} sockets joined in {:.2} s (p50 {:.0} ms, p99 {:.0} ms); \
         {} bytes in {} frames received meanwhile, {} bytes {:.0} s later; {} closed",
        thousands(storm.joined as u64),
        thousands(sockets as u64),
        seconds,
        storm.join_p50_ms,
        storm.join_p99_ms,
        thousands(storm.bytes_received),
        thousands(storm.frames_received),
        thousands(storm.bytes_settled),
        SETTLE.as_secs_f64(),
        storm.closes.values().sum::<u64>()
    ));
    storm
}

/// What `after` counted beyond `before`, per key.
fn difference(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &n)| {
            let grew = n.saturating_sub(before.get(k).copied().unwrap_or(0));
            (grew > 0).then(|| (k.clone(), grew))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_counted_from_the_signal() {
        let before = BTreeMap::from([("server closed with 1013".to_string(), 2)]);
        let after = BTreeMap::from([
            ("server closed with 1013".to_string(), 5),
            ("read: reset".to_string(), 1),
        ]);
        let grew = difference(&after, &before);
        assert_eq!(grew.get("server closed with 1013"), Some(&3));
        assert_eq!(grew.get("read: reset"), Some(&1));
        assert!(difference(&before, &before).is_empty());
    }
}
