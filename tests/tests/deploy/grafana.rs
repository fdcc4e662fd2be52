//! The Grafana dashboard asks only for series the server exposes, and a running node
//! exposes every one it asks for.

use super::*;

/// The series the server exposes at GET /metrics.
const SERIES: [&str; 17] = [
    "chat_connections_open",
    "chat_websockets_open",
    "chat_ws_upgrades_total",
    "chat_client_events_total",
    "chat_refusals_total",
    "chat_deliveries_total",
    "chat_outbound_queue_bytes",
    "chat_slow_consumer_closes_total",
    "chat_writer_batch_size",
    "chat_writer_commit_seconds",
    "chat_store_errors_total",
    "chat_http_requests_total",
    "chat_http_request_duration_seconds",
    "chat_password_hash_queue_depth",
    "chat_login_throttled_total",
    "chat_redis_up",
    "chat_tls_handshake_failures_total",
];

const HISTOGRAMS: [&str; 3] = [
    "chat_writer_batch_size",
    "chat_writer_commit_seconds",
    "chat_http_request_duration_seconds",
];

fn collect_exprs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Every `chat_...` name in `expr`, histogram suffixes taken off.
fn series_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("chat_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let name = &tail[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
                .unwrap_or(name);
            names.push(base.to_string());
        }
        rest = &tail[len..];
    }
    names
}

fn dashboard() -> anyhow::Result<Value> {
    let text = read(&deploy("grafana-dashboard.json"))?;
    serde_json::from_str(&text).context("grafana-dashboard.json is not JSON")
}

fn dashboard_series(dash: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    collect_exprs(dash, &mut exprs);
    exprs.iter().flat_map(|e| series_in(e)).collect()
}

#[test]
fn grafana_dashboard_uses_only_the_servers_series() -> anyhow::Result<()> {
    let dash = dashboard()?;
    let used = dashboard_series(&dash);
    let known: BTreeSet<String> = SERIES.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<&String> = used.difference(&known).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard asks for series the server does not expose: {unknown:?}"
    );
    let unused: Vec<&String> = known.difference(&used).collect();
    ensure!(unused.is_empty(), "no panel shows {unused:?}");

    ensure!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    let variables = dash["templating"]["list"]
        .as_array()
        .context("templating")?;
    ensure!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "no datasource variable"
    );
    let panels = dash["panels"].as_array().context("panels")?;
    let mut ids = BTreeSet::new();
    for panel in panels {
        ensure!(
            ids.insert(panel["id"].as_u64().context("panel id")?),
            "panel id {} twice",
            panel["id"]
        );
        ensure!(
            panel["gridPos"].is_object(),
            "panel {} has no place",
            panel["id"]
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "panel {:?} does not use the datasource variable",
            panel["title"]
        );
        let targets = panel["targets"].as_array().context("targets")?;
        ensure!(
            !targets.is_empty(),
            "panel {:?} shows nothing",
            panel["title"]
        );
        for t in targets {
            ensure!(
                t["expr"].as_str().is_some_and(|e| !series_in(e).is_empty()),
                "panel {:?}: a query without a chat_ series: {t}",
                panel["title"]
            );
        }
    }
    Ok(())
}

/// What GET /metrics of a running node (with Redis, so `chat_redis_up` is there)
/// exposes covers every series of the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_series_are_exposed_by_a_node() {
    let cluster = TestCluster::start(ClusterOptions::new(1))
        .await
        .unwrap_or_else(|e| panic!("could not start the cluster: {e:#}"));
    let result = async {
        let api = cluster.api(0);
        // Traffic, so that labelled series have children.
        let (users, conv) = tests::realtime::group(&api, &["metra", "metrb"]).await?;
        api.login(&users[0].username, "not the password").await?;
        let mut ws =
            WsClient::connect(&cluster.node(0).ws_base_url(), &conv, &users[0].token).await?;
        ws.send_message("counted").await?;
        let reply = api.get("/metrics", None).await?;
        reply.expect_status(200)?;
        let text = reply.text();
        let exposed: BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(series_in)
            .chain(
                text.lines()
                    .filter_map(|l| l.strip_prefix("# TYPE "))
                    .flat_map(series_in),
            )
            .collect();
        let missing: Vec<String> = dashboard_series(&dashboard()?)
            .difference(&exposed)
            .cloned()
            .collect();
        ensure!(
            missing.is_empty(),
            "/metrics does not expose {missing:?}:\n{text}"
        );
        ws.close().await?;
        Ok(())
    }
    .await;
    cluster.finish(result);
}
