//! The report assembled from what each part of the harness found once the run is
//! over: the run's shared state (plan, counters, histograms, measured windows), the
//! driver's account, Goose's metrics, the scrapes, the history read-back and the local
//! servers. One function per section of the [`Report`].
//!
//! It only reads and copies figures: it never changes the run, and never judges them;
//! the verdict is `verdict`'s, applied to the finished report.

use std::sync::atomic::Ordering;

use goose::metrics::GooseMetrics;

use super::{
    rest_rows, scenarios, verdict, Correctness, Events, Harness, Measured, Report, ServerInfo,
    Setup, Sockets, Streams, Target, Verdict, Workload,
};
use crate::driver::Driven;
use crate::markers::MarkerCheck;
use crate::scrape::Scrapes;
use crate::server::{self, LocalNodes};
use crate::state::{lock, DeliveryCost, Percentiles, Run, Window};
use crate::sys::FdLimit;
use crate::verify::Persistence;

/// What the run found, from each part of the harness that found it.
pub struct Findings<'a> {
    /// The run's shared state: its configuration, plan, nodes, counters, latency
    /// histograms and measured windows.
    pub run: &'a Run,
    /// The driver's account of the run over time: setup, the capacity search, an abort.
    pub driven: &'a Driven,
    /// Goose's metrics of the REST calls.
    pub goose: &'a GooseMetrics,
    /// `--scrape-metrics`: what the scrapes of `/metrics` found.
    pub scrapes: Option<Scrapes>,
    /// The history read back after the run.
    pub persistence: Persistence,
    /// `--user-stream`: the unread counts and read markers checked at the end.
    pub markers: Option<MarkerCheck>,
    /// The nodes the harness started; none when `--host` named the target.
    pub local: Option<&'a LocalNodes>,
    /// Those nodes' health, use and stop; none when the harness started no server.
    pub server: Option<ServerInfo>,
    /// The harness's open-files limit, as raised for the run.
    pub open_files: FdLimit,
}

/// The whole report, its verdict included.
pub fn assemble(findings: Findings<'_>) -> Report {
    let Findings {
        run,
        driven,
        goose,
        scrapes,
        persistence,
        markers,
        local,
        server,
        open_files,
    } = findings;
    let measured = measured(run);
    let correctness = correctness(run);
    let room = scenarios::room(run, driven, &measured, correctness.tally.delivered_expected);
    let mut report = Report {
        mode: if run.config.capacity {
            "capacity"
        } else {
            "steady"
        },
        target: target(run, local),
        workload: workload(run),
        setup: setup(run, driven),
        measured,
        correctness,
        streams: streams(run),
        sockets: sockets(run),
        events: events(run),
        persistence,
        capacity: driven.capacity.clone(),
        server,
        harness: Harness {
            usage: server::process_usage(std::process::id()),
            open_files,
        },
        rest: rest_rows(goose),
        scrapes,
        room,
        hostile: driven.hostile.clone(),
        user_streams: scenarios::user_streams(run, markers),
        aborted: driven.aborted.clone(),
        // Decided below, from the finished report.
        verdict: Verdict {
            ok: false,
            lost: 0,
            problems: Vec::new(),
        },
    };
    report.verdict = verdict(&report);
    report
}

fn target(run: &Run, local: Option<&LocalNodes>) -> Target {
    Target {
        url: run
            .nodes
            .iter()
            .map(|n| n.base_url.as_str())
            .collect::<Vec<_>>()
            .join(","),
        nodes: run.nodes.len(),
        transport: run.clients.transport.clone(),
        store: local.map(LocalNodes::store).unwrap_or_default().into(),
        local_server: local.is_some(),
        server_binary: local
            .and_then(|l| l.nodes.first())
            .map(|s| s.binary.display().to_string()),
        server_log: local
            .and_then(|l| l.nodes.first())
            .map(|s| s.log_path().display().to_string()),
    }
}

fn workload(run: &Run) -> Workload {
    let config = &run.config;
    Workload {
        users: run.plan.users(),
        conversations: run.plan.conversations(),
        group_size: u16::try_from(config.group_members()).unwrap_or(u16::MAX),
        largest_group: run.plan.largest_group(),
        conversations_per_user: u16::try_from(run.plan.layers()).unwrap_or(u16::MAX),
        socket_kind: if config.scenario.user_stream {
            "user stream"
        } else {
            "conversation"
        },
        sockets_per_user: config.sockets_per_user(),
        sockets: run.plan.users() * config.sockets_per_user(),
        message_rate_per_user: config.message_rate,
        typing_ratio: config.typing_ratio,
        message_bytes: config.message_bytes,
        think_time_s: config.think_time,
    }
}

fn setup(run: &Run, driven: &Driven) -> Setup {
    let c = &run.counters;
    Setup {
        seconds: driven.setup_seconds,
        users_joined: c.users_ready.load(Ordering::Relaxed)
            - c.users_failed.load(Ordering::Relaxed),
        users_failed: c.users_failed.load(Ordering::Relaxed),
        all_joined: driven.all_joined,
    }
}

/// The measured time: phases 1 and up (phase 0 is the warm-up).
fn measured(run: &Run) -> Measured {
    let windows = run.windows();
    let seconds: f64 = windows.iter().map(Window::seconds).sum();
    let tally = run.tally(|p| p >= 1);
    let hist = run.latencies.merged(|p| p >= 1);
    Measured {
        seconds,
        messages_sent: tally.sent,
        messages_per_s: if seconds > 0.0 {
            tally.sent as f64 / seconds
        } else {
            0.0
        },
        ack: Percentiles::of(&hist.ack, seconds),
        delivery: Percentiles::of(&hist.delivery, seconds),
        server_cost: DeliveryCost::of(
            &windows.iter().filter(|w| w.phase >= 1).collect::<Vec<_>>(),
            hist.delivery.len(),
        ),
    }
}

/// Every message of the run, warm-up included.
fn correctness(run: &Run) -> Correctness {
    let c = &run.counters;
    Correctness {
        tally: run.tally(|_| true),
        duplicate_deliveries: c.duplicates.load(Ordering::Relaxed),
        duplicate_acks: c.duplicate_acks.load(Ordering::Relaxed),
        reordered: c.reordered.load(Ordering::Relaxed),
        misrouted: c.misrouted.load(Ordering::Relaxed),
        foreign: c.foreign.load(Ordering::Relaxed),
        retried_sends: c.retried.load(Ordering::Relaxed),
        answered_with_original: c.repeats.load(Ordering::Relaxed),
    }
}

fn streams(run: &Run) -> Streams {
    let c = &run.counters;
    Streams {
        resumed_events: c.resumed.load(Ordering::Relaxed),
        resyncs: c.resyncs.load(Ordering::Relaxed),
        gaps: c.stream_gaps.load(Ordering::Relaxed),
        duplicates: c.stream_duplicates.load(Ordering::Relaxed),
        unplaced: c.unplaced.load(Ordering::Relaxed),
    }
}

fn sockets(run: &Run) -> Sockets {
    let c = &run.counters;
    Sockets {
        connects: c.connects.load(Ordering::Relaxed),
        connect_failures: c.connect_failures.load(Ordering::Relaxed),
        connect_errors: lock(&c.connect_errors).clone(),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        dropped: c.drops.load(Ordering::Relaxed),
        drop_reasons: lock(&c.drop_reasons).clone(),
        join_timeouts: c.join_timeouts.load(Ordering::Relaxed),
        source_addresses: run
            .sources
            .addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

fn events(run: &Run) -> Events {
    let c = &run.counters;
    Events {
        typing_sent: c.typing_sent.load(Ordering::Relaxed),
        typing_received: c.typing_received.load(Ordering::Relaxed),
        system_received: c.system_received.load(Ordering::Relaxed),
        history_reads: c.history_reads.load(Ordering::Relaxed),
        errors: lock(&c.errors).clone(),
    }
}
