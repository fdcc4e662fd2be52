//! What an operator reads: JSON log lines (`--log-format json`) and the request id
//! every HTTP response carries (`X-Request-Id`, taken from the request when sane).

use tests::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let opts = ServerOptions::new(Store::Sqlite, IoDriver::Uring)
        .arg("--log-format")
        .arg("json");
    tests::run_with(opts, |srv| {
        Box::pin(async move {
            srv.api().get("/health", None).await?.expect_status(200)?;
            let logs = srv.stderr_contents();
            let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
            ensure!(lines.len() >= 3, "too few log lines: {logs}");
            for line in &lines {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("not a JSON line: {line}"))?;
                for field in ["timestamp", "level", "target"] {
                    ensure!(v.get(field).is_some(), "no {field} in {line}");
                }
                ensure!(v["fields"]["message"].is_string(), "no message in {line}");
            }
            ensure!(
                lines.iter().any(|l| l.contains("listening on http://")),
                "no start-up line: {logs}"
            );
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_names_its_request() {
    tests::run_with(ServerOptions::new(Store::Sqlite, IoDriver::Epoll), |srv| {
        Box::pin(async move {
            let url = srv.api().url("/health");
            let http = reqwest::Client::new();
            let id_of = |r: &reqwest::Response| {
                r.headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let given = http
                .get(&url)
                .header("X-Request-Id", "edge-7f3a:42")
                .send()
                .await?;
            ensure!(
                id_of(&given).as_deref() == Some("edge-7f3a:42"),
                "{:?}",
                given.headers()
            );
            let (a, b) = (http.get(&url).send().await?, http.get(&url).send().await?);
            let (a, b) = (id_of(&a), id_of(&b));
            ensure!(
                a.is_some() && b.is_some() && a != b,
                "fresh ids: {a:?} {b:?}"
            );
            // Too long to be anyone's id: replaced, not echoed.
            let long = "x".repeat(200);
            let replaced = http.get(&url).header("X-Request-Id", &long).send().await?;
            let id = id_of(&replaced).unwrap_or_default();
            ensure!(!id.is_empty() && id != long, "{id}");
            // Errors carry it too.
            let missing = http.get(srv.api().url("/nowhere")).send().await?;
            ensure!(
                missing.status() == 404 && id_of(&missing).is_some(),
                "{missing:?}"
            );
            Ok(())
        })
    })
    .await;
}
