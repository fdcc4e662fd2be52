//! Capacity harness for the chat server.
//!
//! Goose drives the simulated users and their REST calls (and reports them); each
//! user's WebSockets are tokio tasks that chat and measure what Goose cannot: ack and
//! delivery latency in HDR histograms, deliveries against what was expected,
//! duplicates, losses, and every stream position once and in order across reconnects
//! (which resume with `since`; unanswered sends are retried with their `client_id`).
//! After the run every acknowledged message is looked up in the history the server
//! returns. An `https://` target is driven over TLS throughout (`wss://`, and REST over
//! `https://`; `--tls` starts the local nodes so, with a certificate made for the run),
//! and `--scrape-metrics` scrapes every node's `/metrics` while the run is measured.
//! [`run`] does all of it and returns the [`Report`];
//! `cargo run --release -p loadtest` is the command-line front end.
//!
//! Goose's stop switch is process-wide: run one [`run`] at a time per process.

pub mod capacity;
pub mod config;
pub mod console;
pub mod driver;
pub mod plan;
pub mod report;
pub mod scrape;
pub mod server;
pub mod state;
pub mod sys;
pub mod tls;
pub mod user;
pub mod verify;
pub mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use goose::client::GooseClientBuilder;
use goose::GooseAttack;

pub use config::Config;
pub use report::Report;

use crate::console::{say, thousands};
use crate::report::{
    Correctness, Events, Harness, Measured, Percentiles, ServerInfo, Setup, Sockets, Streams,
    Target, Workload,
};
use crate::server::{LocalNodes, LocalServer, ProcessUsage};
use crate::state::{lock, Node, Run, Sources, Stage};

/// Runs the harness: starts a local server unless `--host` is given, runs the users,
/// measures, checks persistence, stops what it started and returns the report (also
/// written to `--json-report` when set). Goose prints its own report to stdout as it
/// ends; [`report::render`] gives the WebSocket part as text.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    config.validate()?;
    // A local server inherits the limit and holds as many descriptors as we do.
    let needed = config.descriptors() as u64;
    let open_files = sys::raise_nofile(needed);
    match &open_files.problem {
        Some(problem) => say(problem),
        None if open_files.after > open_files.before => say(&format!(
            "open files limit raised from {} to {}",
            open_files.before, open_files.after
        )),
        None => {}
    }

    let hosts = config.hosts();
    let mut local = if hosts.is_empty() {
        let started = LocalNodes::start(&config)
            .await
            .context("starting the local server")?;
        for server in &started.nodes {
            say(&format!(
                "started {} at {} (log: {})",
                server.binary.display(),
                server.base_url,
                server.log_path().display()
            ));
        }
        Some(started)
    } else {
        None
    };
    let urls = match &local {
        Some(started) => started.nodes.iter().map(|n| n.base_url.clone()).collect(),
        None => hosts,
    };
    // What the clients trust: --tls-ca, and the certificate of local nodes with --tls.
    let mut trusted = Vec::new();
    if let Some(path) = &config.tls_ca {
        trusted.push(tls::read_ca(path)?);
    }
    trusted.extend(local.as_ref().and_then(LocalNodes::trusted));
    let clients = tls::Clients::new(&urls, &trusted)?;
    if clients.tls.is_some() {
        say(&format!(
            "over TLS (wss://, https://), trusting {}",
            clients.transport.trust
        ));
    }
    let mut nodes = Vec::with_capacity(urls.len());
    for url in &urls {
        nodes.push(Node::new(url, resolve(url).await?));
    }
    let first = nodes.first().context("no target")?.addr;
    let sources = Sources::new(source_addresses(&config, first));
    if sources.addrs().len() > 1 {
        say(&format!(
            "spreading {} sockets over {} loopback source addresses",
            thousands(config.connections() as u64),
            sources.addrs().len()
        ));
    }

    let server_pids = match &local {
        Some(started) => started.pids(),
        None => config.server_pid.clone(),
    };
    let run = Run::new(config.clone(), nodes, sources, server_pids, clients);
    // A previous run in this process left Goose's stop switch on.
    goose::reset_killswitch();
    let attack = goose_attack(&run, &config, &run.base_url)?;
    let driver = tokio::spawn(driver::drive(Arc::clone(&run)));
    let scraper = config
        .scrape_interval()
        .map(|every| tokio::spawn(scrape::scrape(Arc::clone(&run), every)));
    let goose_result = attack.execute().await;
    // Goose is done (or failed to start): make sure the driver ends too.
    run.end_chat();
    run.set_stage(Stage::Stopping);
    let driven = driver.await.context("the run driver panicked")?;
    let scrapes = match scraper {
        Some(task) => Some(task.await.context("the metrics scraper panicked")?),
        None => None,
    };
    let metrics = match goose_result {
        Ok(metrics) => Some(metrics),
        Err(e) => {
            driver::close_all(&run).await;
            for server in local.iter_mut().flat_map(|l| l.nodes.iter_mut()) {
                server.stop();
            }
            return Err(anyhow::anyhow!("goose: {e}"));
        }
    };

    say("draining: waiting for the last acknowledgements and deliveries");
    driver::drain(&run).await;
    driver::close_all(&run).await;

    // The server's figures and health before it is stopped.
    let servers = local
        .as_mut()
        .map(|l| l.nodes.as_mut_slice())
        .unwrap_or_default();
    let crashes: Vec<(usize, String)> = servers
        .iter_mut()
        .enumerate()
        .filter_map(|(i, server)| server.exited().map(|status| (i, status.to_string())))
        .collect();
    let server_usage =
        servers
            .iter()
            .map(LocalServer::usage)
            .try_fold(ProcessUsage::default(), |sum, usage| {
                let u = usage?;
                Some(ProcessUsage {
                    cpu_seconds: sum.cpu_seconds + u.cpu_seconds,
                    peak_rss_mib: sum.peak_rss_mib + u.peak_rss_mib,
                    threads: sum.threads + u.threads,
                })
            });

    say("reading every conversation's history back");
    let persistence = verify::verify(&run).await;

    let server = (!servers.is_empty()).then(|| {
        let mut stops = Vec::new();
        let mut log_problems = Vec::new();
        for (i, server) in servers.iter_mut().enumerate() {
            stops.push(server.stop());
            log_problems.extend(server.log_problems(10));
            if crashes.iter().any(|(crashed, _)| *crashed == i) {
                log_problems.push(server.log_tail(2000));
            }
        }
        let crashed = crashes.iter().map(|(i, status)| match servers.len() {
            1 => status.clone(),
            _ => format!("node {i}: {status}"),
        });
        ServerInfo {
            pid: servers.first().and_then(LocalServer::pid),
            usage: server_usage.clone(),
            crashed: (!crashes.is_empty()).then(|| crashed.collect::<Vec<_>>().join("; ")),
            stop: stops.join("; "),
            log_problems,
        }
    });

    let report = build_report(
        &run,
        &config,
        &driven,
        persistence,
        server,
        local.as_ref(),
        metrics.as_ref(),
        open_files,
        scrapes,
    );
    if let Some(path) = &config.json_report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        say(&format!("JSON report written to {}", path.display()));
    }
    Ok(report)
}

/// Goose with the harness's defaults: the target, the users, a launch rate, no run
/// time of its own (the driver ends the run), quiet logs, no telnet controller, one
/// shared HTTP client, and metrics kept from the first request (setup included).
fn goose_attack(run: &Arc<Run>, config: &Config, base_url: &str) -> anyhow::Result<GooseAttack> {
    let mut goose = config.goose.clone();
    let users = config.users();
    goose.host = Some(base_url.to_string());
    goose.users = Some(users);
    goose.run_time = None;
    if goose.increase_rate.is_none() && goose.increase_time.is_none() {
        // Launch everyone within ~10 s; password hashing paces the rest.
        goose.increase_rate = Some(format!("{}", (users as f64 / 10.0).max(50.0)));
    }
    if goose.verbose == 0 && goose.quiet == 0 {
        goose.quiet = 1;
    }
    goose.no_telnet = true;
    goose.no_reset_metrics = true;
    let client = GooseClientBuilder::new()
        .without_cookies()
        .timeout(Duration::from_secs(60))
        .user_agent("chat-loadtest");
    let attack = GooseAttack::initialize_with_config(goose)
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?
        .register_scenario(user::scenario(run).map_err(|e| anyhow::anyhow!("goose: {e}"))?)
        .set_client_builder_without_cookies(client)
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?;
    Ok(attack)
}

/// The socket address behind `http://host:port` (or `https://`).
async fn resolve(base_url: &str) -> anyhow::Result<SocketAddr> {
    let url = reqwest::Url::parse(base_url).with_context(|| format!("--host {base_url:?}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!("--host must be an http:// or https:// URL");
    }
    let host = url
        .host_str()
        .context("--host has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?;
    let first = addrs.next();
    first.with_context(|| format!("{host} resolves to no address"))
}

/// Loopback source addresses to spread client sockets over (one per
/// `--connections-per-source` sockets, or `--source-addresses`), for 127.x targets.
fn source_addresses(config: &Config, target: SocketAddr) -> Vec<IpAddr> {
    let IpAddr::V4(ip) = target.ip() else {
        return Vec::new();
    };
    if !ip.is_loopback() {
        return Vec::new();
    }
    let count = match config.source_addresses {
        Some(n) => usize::from(n),
        None => config.connections().div_ceil(config.connections_per_source),
    }
    .clamp(1, 254);
    if count < 2 {
        return Vec::new();
    }
    (1..=count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(i).unwrap_or(254))))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    run: &Run,
    config: &Config,
    driven: &driver::Driven,
    persistence: verify::Persistence,
    server: Option<ServerInfo>,
    local: Option<&LocalNodes>,
    metrics: Option<&goose::metrics::GooseMetrics>,
    open_files: sys::FdLimit,
    scrapes: Option<scrape::Scrapes>,
) -> Report {
    let c = &run.counters;
    let windows = run.windows();
    let measured_seconds: f64 = windows.iter().map(state::Window::seconds).sum();
    let measured_tally = run.tally(|p| p >= 1);
    let hist = run.latencies.merged(|p| p >= 1);
    let whole = run.tally(|_| true);
    let mut report = Report {
        mode: if config.capacity {
            "capacity"
        } else {
            "steady"
        },
        target: Target {
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
        },
        workload: Workload {
            users: run.plan.users(),
            conversations: run.plan.conversations(),
            group_size: config.group_size,
            largest_group: run.plan.largest_group(),
            conversations_per_user: config.conversations_per_user,
            sockets: run.plan.users() * run.plan.layers(),
            message_rate_per_user: config.message_rate,
            typing_ratio: config.typing_ratio,
            message_bytes: config.message_bytes,
            think_time_s: config.think_time,
        },
        setup: Setup {
            seconds: driven.setup_seconds,
            users_joined: c.users_ready.load(Ordering::Relaxed)
                - c.users_failed.load(Ordering::Relaxed),
            users_failed: c.users_failed.load(Ordering::Relaxed),
            all_joined: driven.all_joined,
        },
        measured: Measured {
            seconds: measured_seconds,
            messages_sent: measured_tally.sent,
            messages_per_s: if measured_seconds > 0.0 {
                measured_tally.sent as f64 / measured_seconds
            } else {
                0.0
            },
            ack: Percentiles::of(&hist.ack, measured_seconds),
            delivery: Percentiles::of(&hist.delivery, measured_seconds),
            server_cost: state::DeliveryCost::of(
                &windows.iter().filter(|w| w.phase >= 1).collect::<Vec<_>>(),
                hist.delivery.len(),
            ),
        },
        correctness: Correctness {
            tally: whole,
            duplicate_deliveries: c.duplicates.load(Ordering::Relaxed),
            duplicate_acks: c.duplicate_acks.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            misrouted: c.misrouted.load(Ordering::Relaxed),
            foreign: c.foreign.load(Ordering::Relaxed),
            retried_sends: c.retried.load(Ordering::Relaxed),
            answered_with_original: c.repeats.load(Ordering::Relaxed),
        },
        streams: Streams {
            resumed_events: c.resumed.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            gaps: c.stream_gaps.load(Ordering::Relaxed),
            duplicates: c.stream_duplicates.load(Ordering::Relaxed),
            unplaced: c.unplaced.load(Ordering::Relaxed),
        },
        sockets: Sockets {
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
        },
        events: Events {
            typing_sent: c.typing_sent.load(Ordering::Relaxed),
            typing_received: c.typing_received.load(Ordering::Relaxed),
            system_received: c.system_received.load(Ordering::Relaxed),
            history_reads: c.history_reads.load(Ordering::Relaxed),
            errors: lock(&c.errors).clone(),
        },
        persistence,
        capacity: driven.capacity.clone(),
        server,
        harness: Harness {
            usage: server::process_usage(std::process::id()),
            open_files,
        },
        rest: metrics.map(report::rest_rows).unwrap_or_default(),
        scrapes,
        aborted: driven.aborted.clone(),
        verdict: report::Verdict {
            ok: false,
            lost: 0,
            problems: Vec::new(),
        },
    };
    report.verdict = report::verdict(&report);
    report
}
