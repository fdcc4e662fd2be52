//! The capacity harness, briefly, against a real server: 50 simulated users in group
//! conversations (two sockets each) chat, read history and reconnect for a few seconds.
//! Correctness only, never timing: nothing missing, nothing duplicated, every
//! acknowledged message in history. One run starts its own node over TLS and scrapes
//! its metrics every second meanwhile; `scenarios` runs the big room and the hostile
//! clients.

use loadtest::{Config, Report};
use tests::cluster::{ClusterOptions, TestCluster};
use tests::prelude::*;
use tokio::sync::Mutex;

mod scenarios;

/// Goose's stop switch is process-wide: one harness run at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn short_run(srv: &TestServer) -> anyhow::Result<()> {
    let pid = srv.pid()?.to_string();
    short_run_against(srv.base_url(), &pid, &[]).await
}

/// The short run against `hosts` (comma-separated nodes) whose processes are `pids`.
async fn short_run_against(hosts: &str, pids: &str, extra: &[&str]) -> anyhow::Result<()> {
    let target = ["--host", hosts, "--server-pid", pids];
    let report = short_run_with(&target, extra).await?;
    check(&report).with_context(|| loadtest::report::render(&report))
}

/// The short run's workload with `target` (where to run) and `extra` arguments.
async fn short_run_with(target: &[&str], extra: &[&str]) -> anyhow::Result<Report> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let args = [
        "loadtest",
        "--users",
        "50",
        "--run-time",
        "5s",
        "--warmup",
        "1",
        "--group-size",
        "10",
        "--conversations-per-user",
        "2",
        "--message-rate",
        "2",
        "--think-time",
        "2",
    ];
    let config = Config::try_from_iter(args.iter().chain(target).chain(extra))?;
    loadtest::run(config).await
}

fn check(r: &Report) -> anyhow::Result<()> {
    let t = &r.correctness.tally;
    let p = &r.persistence;
    ensure!(r.aborted.is_none(), "the run did not complete");
    ensure!(r.setup.users_failed == 0, "users failed to set up");
    ensure!(
        t.acked > 0 && t.delivered_expected > 0,
        "nothing was exchanged"
    );
    ensure!(r.sockets.reconnects > 0, "no socket reconnected");
    ensure!(t.missing == 0, "{} deliveries missing", t.missing);
    ensure!(
        t.failed == 0 && t.unacked == 0,
        "messages refused or unacknowledged"
    );
    ensure!(
        r.correctness.duplicate_deliveries == 0,
        "duplicate deliveries"
    );
    ensure!(
        r.correctness.duplicate_acks == 0,
        "duplicate acknowledgements"
    );
    ensure!(r.correctness.reordered == 0, "reordered deliveries");
    ensure!(r.correctness.misrouted == 0, "misrouted messages");
    ensure!(p.complete, "history not read back completely");
    ensure!(
        p.acknowledged == t.acked,
        "not every acknowledged message was checked"
    );
    ensure!(p.lost == 0, "{} acknowledged messages lost", p.lost);
    ensure!(
        p.duplicates == 0 && p.out_of_order == 0,
        "history duplicates or disorder"
    );
    ensure!(r.verdict.ok, "verdict: {:?}", r.verdict.problems);
    // With the server's pid the report states what a delivery cost it.
    let cost = r
        .measured
        .server_cost
        .context("no server CPU per delivery in the report")?;
    ensure!(
        cost.user_us >= 0.0 && cost.kernel_us >= 0.0,
        "negative CPU: {cost:?}"
    );
    Ok(())
}

/// Every simulated user registers and connects from this one machine: the limits per
/// client address, meant for one client each, are lifted (through their environment
/// variables, as the harness documents for a `--host`).
const ONE_ADDRESS: [(&str, &str); 2] = [
    ("REGISTER_MAX_PER_ADDRESS", "0"),
    ("MAX_CONNECTIONS_PER_ADDRESS", "0"),
];

fn from_one_address(mut opts: ServerOptions) -> ServerOptions {
    for (key, value) in ONE_ADDRESS {
        opts = opts.env(key, value);
    }
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_short_run_sqlite() {
    tests::run_with(
        from_one_address(ServerOptions::new(Store::Sqlite, IoDriver::Uring)),
        |srv| Box::pin(short_run(srv)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_short_run_postgres() {
    tests::run_with(
        from_one_address(ServerOptions::new(Store::Postgres, IoDriver::Epoll)),
        |srv| Box::pin(short_run(srv)),
    )
    .await;
}

/// Across two nodes of a cluster: every conversation has members on both, and the same
/// checks hold (order, exactly once, every acknowledged message in history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_short_run_across_two_nodes() {
    let mut opts = ClusterOptions::new(2);
    opts.env
        .extend(ONE_ADDRESS.map(|(k, v)| (k.to_owned(), v.to_owned())));
    let cluster = TestCluster::start(opts)
        .await
        .unwrap_or_else(|e| panic!("could not start the cluster: {e:#}"));
    let result = async {
        let hosts = format!(
            "{},{}",
            cluster.node(0).base_url(),
            cluster.node(1).base_url()
        );
        let pids = format!("{},{}", cluster.node(0).pid()?, cluster.node(1).pid()?);
        // The cluster's shared budget is 1,000 events per second per user.
        short_run_against(&hosts, &pids, &["--server-rate-limit", "1000"]).await
    }
    .await;
    cluster.finish(result);
}

/// A node the harness starts itself with `--tls` (a certificate generated for the run)
/// while it scrapes `/metrics` every second: the same checks hold over wss:// and
/// https://, the report says so, and the scrapes were made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_short_run_over_tls_with_metrics_scrapes() {
    let result = async {
        let binary = testkit::server_binary(testkit::Profile::Current)?;
        let binary = binary.display().to_string();
        let local = ["--server-bin", &binary, "--tls", "--scrape-metrics", "1"];
        let report = short_run_with(&local, &[]).await?;
        let text = loadtest::report::render(&report);
        check(&report).with_context(|| text.clone())?;
        ensure!(
            report.target.url.starts_with("https://") && report.target.transport.scheme == "tls",
            "not over TLS: {}\n{text}",
            report.target.url
        );
        ensure!(
            text.contains(" Transport: TLS (wss:// and https://)"),
            "{text}"
        );
        let scrapes = report
            .scrapes
            .as_ref()
            .context("no scrapes in the report")?;
        ensure!(
            scrapes.done > 0 && scrapes.failed == 0 && scrapes.mean_bytes > 0.0,
            "scrapes: {scrapes:?}\n{text}"
        );
        ensure!(text.contains(" Metrics scrapes: "), "{text}");
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}
