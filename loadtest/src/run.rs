//! [`run()`]: one run of the harness, from the configuration to the report, as a
//! sequence of named steps: raise the open-files limit, start the local nodes (unless
//! `--host` names the target), prepare the run (TLS clients, resolved nodes, loopback
//! source addresses), chat (Goose and the driver side by side, the metrics scraper
//! beside them), drain (and, with `--user-stream`, check the read markers while the
//! sockets are still open), look at the local servers while they still run, read the
//! history back, stop the servers, assemble the report and write it out.
//!
//! It only orders the steps and hands each one's result to the next: it never measures,
//! counts or judges anything itself (the socket tasks, `driver`, `verify` and `report`
//! do), and it never returns with a server it started still running: the nodes are
//! stopped on the way to the report, or dropped (which kills them) on any error.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use goose::client::GooseClientBuilder;
use goose::metrics::GooseMetrics;
use goose::GooseAttack;

use crate::config::Config;
use crate::console::{say, thousands};
use crate::driver::{self, Driven};
use crate::markers::{self, MarkerCheck};
use crate::report::{self, Findings, Report, ServerInfo};
use crate::scrape::{self, Scrapes};
use crate::server::{LocalNodes, LocalServer, ProcessUsage};
use crate::state::{Node, Run, Sources, Stage};
use crate::sys::{self, FdLimit};
use crate::{tls, user, verify};

/// Runs the harness: starts a local server unless `--host` is given, runs the users,
/// measures, checks persistence, stops what it started and returns the report (also
/// written to `--json-report` when set). Goose prints its own report to stdout as it
/// ends; [`report::render`] gives the WebSocket part as text.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    config.validate()?;
    let open_files = raise_open_files(&config);
    let mut local = start_local_nodes(&config).await?;
    let run = prepare(&config, local.as_ref()).await?;
    let chatted = chat(&run, &config).await?;
    let goose = match chatted.goose {
        Ok(metrics) => metrics,
        Err(e) => {
            abandon(&run, local.as_mut()).await;
            return Err(e);
        }
    };
    let markers = drain(&run, &chatted.driven).await;

    // The servers' figures and health are taken before they are stopped, and they are
    // stopped only after the read-back, which needs them.
    let servers = local
        .as_mut()
        .map(|l| l.nodes.as_mut_slice())
        .unwrap_or_default();
    let health = Health::examine(servers);
    say("reading every conversation's history back");
    let persistence = verify::verify(&run).await;
    let server = health.stop(servers);

    let report = report::assemble(Findings {
        run: &run,
        driven: &chatted.driven,
        goose: &goose,
        scrapes: chatted.scrapes,
        persistence,
        markers,
        local: local.as_ref(),
        server,
        open_files,
    });
    write_json(&config, &report)?;
    Ok(report)
}

/// Step 1: enough descriptors for every socket of the run. A local server inherits the
/// limit and holds as many descriptors as we do, so this comes before it starts.
fn raise_open_files(config: &Config) -> FdLimit {
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
    open_files
}

/// Step 2: the local nodes, when no `--host` names the target.
async fn start_local_nodes(config: &Config) -> anyhow::Result<Option<LocalNodes>> {
    if !config.hosts().is_empty() {
        return Ok(None);
    }
    let started = LocalNodes::start(config)
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
    Ok(Some(started))
}

/// Step 3: the state every task of the run shares, pointed at the target: the clients
/// (over TLS when the target is https://), every node resolved, the loopback source
/// addresses the sockets are spread over, and the server processes to sample.
async fn prepare(config: &Config, local: Option<&LocalNodes>) -> anyhow::Result<Arc<Run>> {
    let urls = match local {
        Some(started) => started.nodes.iter().map(|n| n.base_url.clone()).collect(),
        None => config.hosts(),
    };
    let clients = clients(config, local, &urls)?;
    let mut nodes = Vec::with_capacity(urls.len());
    for url in &urls {
        nodes.push(Node::new(url, resolve(url).await?));
    }
    let first = nodes.first().context("no target")?.addr;
    let sources = Sources::new(source_addresses(config, first));
    if sources.addrs().len() > 1 {
        say(&format!(
            "spreading {} sockets over {} loopback source addresses",
            thousands(config.connections() as u64),
            sources.addrs().len()
        ));
    }
    let server_pids = match local {
        Some(started) => started.pids(),
        None => config.server_pid.clone(),
    };
    Ok(Run::new(
        config.clone(),
        nodes,
        sources,
        server_pids,
        clients,
    ))
}

/// The clients of the run, trusting `--tls-ca` and the certificate of local nodes
/// started with `--tls`.
fn clients(
    config: &Config,
    local: Option<&LocalNodes>,
    urls: &[String],
) -> anyhow::Result<tls::Clients> {
    let mut trusted = Vec::new();
    if let Some(path) = &config.tls_ca {
        trusted.push(tls::read_ca(path)?);
    }
    trusted.extend(local.and_then(LocalNodes::trusted));
    let clients = tls::Clients::new(urls, &trusted)?;
    if clients.tls.is_some() {
        say(&format!(
            "over TLS (wss://, https://), trusting {}",
            clients.transport.trust
        ));
    }
    Ok(clients)
}

/// What the chat left behind.
struct Chatted {
    /// The driver's account of the run over time.
    driven: Driven,
    /// `--scrape-metrics`: what the scrapes found.
    scrapes: Option<Scrapes>,
    /// Goose's metrics of the REST calls, or why Goose failed.
    goose: anyhow::Result<GooseMetrics>,
}

/// Step 4: the chat itself. Goose runs the users until the driver ends the run; the
/// driver and the scraper are awaited whether Goose succeeded or not, so nothing of the
/// run is still going when this returns.
async fn chat(run: &Arc<Run>, config: &Config) -> anyhow::Result<Chatted> {
    // A previous run in this process left Goose's stop switch on.
    goose::reset_killswitch();
    let attack = goose_attack(run, config, &run.base_url)?;
    let driver = tokio::spawn(driver::drive(Arc::clone(run)));
    let scraper = config
        .scrape_interval()
        .map(|every| tokio::spawn(scrape::scrape(Arc::clone(run), every)));
    let goose = attack
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("goose: {e}"));
    // Goose is done (or failed to start): make sure the driver ends too.
    run.end_chat();
    run.set_stage(Stage::Stopping);
    let driven = driver.await.context("the run driver panicked")?;
    let scrapes = match scraper {
        Some(task) => Some(task.await.context("the metrics scraper panicked")?),
        None => None,
    };
    Ok(Chatted {
        driven,
        scrapes,
        goose,
    })
}

/// When Goose failed there is no report to make: close every socket and stop the local
/// servers.
async fn abandon(run: &Run, local: Option<&mut LocalNodes>) {
    driver::close_all(run).await;
    for server in local.into_iter().flat_map(|l| l.nodes.iter_mut()) {
        server.stop();
    }
}

/// Step 5: the last acknowledgements and deliveries; with `--user-stream`, the read
/// markers and unread counts of a run that completed (the sockets must still be
/// open); then every socket closed.
async fn drain(run: &Run, driven: &Driven) -> Option<MarkerCheck> {
    say("draining: waiting for the last acknowledgements and deliveries");
    driver::drain(run).await;
    let markers = if run.config.scenario.user_stream && driven.aborted.is_none() {
        Some(markers::check(run).await)
    } else {
        None
    };
    driver::close_all(run).await;
    markers
}

/// The local servers as they were when the chat ended, before the read-back.
struct Health {
    /// The nodes that died during the run: (index, exit status).
    crashes: Vec<(usize, String)>,
    /// CPU, peak memory and threads summed over the nodes; none when one of them
    /// could not be read.
    usage: Option<ProcessUsage>,
}

impl Health {
    /// Step 6: which nodes died, and what they all used.
    fn examine(servers: &mut [LocalServer]) -> Self {
        let crashes = servers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, server)| server.exited().map(|status| (i, status.to_string())))
            .collect();
        let usage = servers.iter().map(LocalServer::usage).try_fold(
            ProcessUsage::default(),
            |sum, usage| {
                let u = usage?;
                Some(ProcessUsage {
                    cpu_seconds: sum.cpu_seconds + u.cpu_seconds,
                    peak_rss_mib: sum.peak_rss_mib + u.peak_rss_mib,
                    threads: sum.threads + u.threads,
                })
            },
        );
        Self { crashes, usage }
    }

    /// Step 7 (after the read-back): stops every node, keeping how each stopped, the
    /// problems in its log and, for a node that died, the end of its log. None when
    /// the harness started no server.
    fn stop(self, servers: &mut [LocalServer]) -> Option<ServerInfo> {
        if servers.is_empty() {
            return None;
        }
        let mut stops = Vec::new();
        let mut log_problems = Vec::new();
        for (i, server) in servers.iter_mut().enumerate() {
            stops.push(server.stop());
            log_problems.extend(server.log_problems(10));
            if self.crashes.iter().any(|(crashed, _)| *crashed == i) {
                log_problems.push(server.log_tail(2000));
            }
        }
        let crashed = self.crashes.iter().map(|(i, status)| match servers.len() {
            1 => status.clone(),
            _ => format!("node {i}: {status}"),
        });
        Some(ServerInfo {
            pid: servers.first().and_then(LocalServer::pid),
            usage: self.usage,
            crashed: (!self.crashes.is_empty()).then(|| crashed.collect::<Vec<_>>().join("; ")),
            stop: stops.join("; "),
            log_problems,
        })
    }
}

/// Step 8: `--json-report`.
fn write_json(config: &Config, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &config.json_report {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        say(&format!("JSON report written to {}", path.display()));
    }
    Ok(())
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
