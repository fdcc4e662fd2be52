//! `GET /metrics`: what a Prometheus scrape sees after real traffic: connections,
//! upgrades by result, client events by type, refusals by reason, deliveries, the
//! writer's batches, HTTP requests by route template and status, and Redis health on
//! a cluster node; `--metrics-listen` moves the scrape to an address of its own.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tests::cluster::{ClusterOptions, TestCluster};
use tests::frames::ByteWs;
use tests::prelude::*;
use tests::realtime::{group, no_rate_limit};
use tests::WsClient;

/// The sum of every sample of `name` whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn scrape(url: &str) -> anyhow::Result<String> {
    let reply = reqwest::get(url).await?;
    ensure!(reply.status() == 200, "{url}: {}", reply.status());
    let content_type = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    Ok(reply.text().await?)
}

/// Scrapes until `check` holds: gauges sampled by the heartbeat and counts made after
/// a reply was sent settle a moment later.
async fn scrape_until(
    url: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    for _ in 0..100 {
        let text = scrape(url).await?;
        if check(&text) {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = scrape(url).await?;
    anyhow::bail!("never saw {what} in\n{text}")
}

#[tokio::test]
async fn a_scrape_counts_what_happened() -> anyhow::Result<()> {
    let srv = TestServer::start(no_rate_limit(
        ServerOptions::new(Store::Sqlite, IoDriver::Uring).shards(2),
    ))
    .await?;
    let api = srv.api();
    let url = api.url("/metrics");
    let ([alice, bob], conv) = group(&api, &["met-a", "met-b"]).await?;
    let mut a = WsClient::connect(&srv.ws_base_url(), &conv, &alice.token).await?;
    let mut b = WsClient::connect(&srv.ws_base_url(), &conv, &bob.token).await?;
    a.send_message("counted").await?;
    b.wait_for("the message", |e| e["content"] == "counted")
        .await?;
    a.send_json(&json!({"type": "typing"})).await?;
    a.send_text("not json").await?;
    a.recv_type("error").await?;
    // Refused tokens and strangers are upgrades too.
    let mut refused = WsClient::connect(&srv.ws_base_url(), &conv, "bogus").await?;
    refused.recv_close().await?;
    let stranger = api.new_user("met-c").await?;
    let mut outsider = WsClient::connect(&srv.ws_base_url(), &conv, &stranger.token).await?;
    outsider.recv_close().await?;
    // A frame with a reserved bit set breaks RFC 6455.
    let mut raw = ByteWs::connect(&srv, &conv, &bob.token).await?;
    raw.send_frame(true, 0b100, 0x1, b"{}").await?;
    while raw.read_frame().await?.is_some() {}

    let text = scrape_until(&url, "every count", |t| {
        sum(t, "chat_refusals_total", &[("reason", "bad_frame")]) >= 1.0
            && sum(t, "chat_websockets_open", &[]) == 2.0
    })
    .await?;
    let expect = |name: &str, labels: &[(&str, &str)], ok: &dyn Fn(f64) -> bool| {
        let value = sum(&text, name, labels);
        ensure!(ok(value), "{name}{labels:?} = {value} in\n{text}");
        Ok::<(), anyhow::Error>(())
    };
    expect("chat_websockets_open", &[], &|v| v == 2.0)?;
    expect("chat_connections_open", &[], &|v| v >= 2.0)?;
    expect("chat_ws_upgrades_total", &[("result", "accepted")], &|v| {
        v == 3.0
    })?;
    expect(
        "chat_ws_upgrades_total",
        &[("result", "unauthorized")],
        &|v| v == 1.0,
    )?;
    expect("chat_ws_upgrades_total", &[("result", "forbidden")], &|v| {
        v == 1.0
    })?;
    expect("chat_client_events_total", &[("type", "message")], &|v| {
        v == 1.0
    })?;
    expect("chat_client_events_total", &[("type", "typing")], &|v| {
        v == 1.0
    })?;
    expect("chat_refusals_total", &[("reason", "invalid")], &|v| {
        v == 1.0
    })?;
    expect("chat_refusals_total", &[("reason", "rate_limit")], &|v| {
        v == 0.0
    })?;
    // The message to both, typing to bob; join/leave events add more.
    expect("chat_deliveries_total", &[], &|v| v >= 3.0)?;
    expect("chat_writer_batch_size_count", &[], &|v| v >= 1.0)?;
    expect("chat_writer_commit_seconds_count", &[], &|v| v >= 1.0)?;
    expect("chat_store_errors_total", &[], &|v| v == 0.0)?;
    expect(
        "chat_http_requests_total",
        &[("route", "/api/auth/register"), ("status", "201")],
        &|v| v == 3.0,
    )?;
    expect(
        "chat_http_request_duration_seconds_count",
        &[("route", "/api/chat/conversations")],
        &|v| v >= 1.0,
    )?;
    expect("chat_password_hash_queue_depth", &[], &|v| v == 0.0)?;
    ensure!(
        !text.contains("chat_redis_up"),
        "redis_up without Redis:\n{text}"
    );
    // Unknown paths are one series, whatever the path.
    api.get("/no/such/path/1", None).await?;
    api.get("/no/such/path/2", None).await?;
    let text = scrape(&url).await?;
    ensure!(
        sum(
            &text,
            "chat_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) == 2.0
            && !text.contains("/no/such/path"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn login_throttling_is_counted() -> anyhow::Result<()> {
    let srv = TestServer::start(
        ServerOptions::new(Store::Sqlite, IoDriver::Epoll).arg("--login-max-failures=1"),
    )
    .await?;
    let api = srv.api();
    let who = api.new_user("met-login").await?;
    for _ in 0..3 {
        api.login(&who.username, "wrong password").await?;
    }
    let text = scrape(&api.url("/metrics")).await?;
    ensure!(
        sum(&text, "chat_login_throttled_total", &[]) == 2.0,
        "{text}"
    );
    ensure!(
        sum(
            &text,
            "chat_http_requests_total",
            &[("route", "/api/auth/login"), ("status", "429")]
        ) == 2.0,
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_listen_keeps_scrapes_off_the_service_port() -> anyhow::Result<()> {
    let srv = TestServer::start(
        ServerOptions::new(Store::Sqlite, IoDriver::Uring).arg("--metrics-listen=127.0.0.1:0"),
    )
    .await?;
    let api = srv.api();
    api.get("/metrics", None).await?.expect_status(404)?;
    let mut address = None;
    // The log line precedes readiness, but its pipe is read by another thread.
    for _ in 0..100 {
        let log = srv.stderr_contents();
        address = log
            .split("metrics on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        if address.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let address = address.context("no metrics address logged")?;
    api.get("/health", None).await?.expect_status(200)?;
    let text = scrape(&address).await?;
    ensure!(
        sum(
            &text,
            "chat_http_requests_total",
            &[("route", "/health"), ("status", "200")]
        ) == 1.0,
        "{text}"
    );
    let other = reqwest::get(address.replace("/metrics", "/health")).await?;
    ensure!(other.status() == 404, "{}", other.status());
    Ok(())
}

#[tokio::test]
async fn a_cluster_node_reports_redis() -> anyhow::Result<()> {
    let cluster = TestCluster::start(ClusterOptions::new(1)).await?;
    let url = cluster.api(0).url("/metrics");
    scrape_until(&url, "chat_redis_up 1", |t| {
        sum(t, "chat_redis_up", &[]) == 1.0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn rate_limited_events_are_counted() -> anyhow::Result<()> {
    let srv = TestServer::start(
        ServerOptions::new(Store::Sqlite, IoDriver::Epoll)
            .arg("--ws-rate-burst=1")
            .arg("--ws-rate-per-second=0.001"),
    )
    .await?;
    let api = srv.api();
    let ([alice, _bob], conv) = group(&api, &["met-rate-a", "met-rate-b"]).await?;
    let mut a = WsClient::connect(&srv.ws_base_url(), &conv, &alice.token).await?;
    for _ in 0..3 {
        a.send_json(&json!({"type": "typing"})).await?;
    }
    for _ in 0..2 {
        let refused = a.recv_type("error").await?;
        ensure!(
            refused["detail"] == "Rate limit exceeded",
            "refused with {refused}"
        );
    }
    let text = scrape(&api.url("/metrics")).await?;
    ensure!(
        sum(&text, "chat_refusals_total", &[("reason", "rate_limit")]) == 2.0
            && sum(&text, "chat_client_events_total", &[("type", "typing")]) == 3.0,
        "{text}"
    );
    Ok(())
}
