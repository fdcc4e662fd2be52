//! Login storm: 100 concurrent logins (argon2id each) while one client polls
//! `GET /health` on a kept-alive connection. Health latency is measured with and
//! without the storm in the same run, so the comparison survives a noisy machine.
//! The point it makes: hashing runs on its own pool, so shards keep answering.
//!
//! Run: `cargo bench -p benches --bench login_storm` (starts a release server on an
//! ephemeral port with the embedded store), or set `STORM_HOST=http://host:port` to
//! aim at a running server.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOGINS: usize = 100;
const ROUNDS: usize = 5;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (host, _server) = match std::env::var("STORM_HOST") {
        Ok(host) => (host, None),
        Err(_) => {
            let (server, dir) = benches::release_server("login-storm", &[])?;
            (server.base_url().to_string(), Some((server, dir)))
        }
    };
    let client = reqwest::Client::new();
    let password = "storm-password-1";
    let prefix = format!("storm{}", std::process::id());
    for i in 0..LOGINS {
        let body = serde_json::json!({"username": format!("{prefix}_{i}"), "password": password});
        client
            .post(format!("{host}/api/auth/register"))
            .json(&body)
            .send()
            .await?;
    }

    let baseline = poll_health(&client, &host, Duration::from_secs(3), None).await?;
    let storming = Arc::new(AtomicBool::new(true));
    let storm = {
        let (host, prefix, storming) = (host.clone(), prefix.clone(), Arc::clone(&storming));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut ok = 0usize;
            for _ in 0..ROUNDS {
                let mut logins = tokio::task::JoinSet::new();
                for i in 0..LOGINS {
                    let url = format!("{host}/api/auth/login");
                    let body = serde_json::json!({"username": format!("{prefix}_{i}"), "password": password});
                    // A client of its own per login: a storm of distinct users.
                    logins.spawn(async move {
                        let c = reqwest::Client::new();
                        c.post(url)
                            .json(&body)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    });
                }
                while let Some(r) = logins.join_next().await {
                    ok += usize::from(matches!(r, Ok(true)));
                }
            }
            storming.store(false, Ordering::SeqCst);
            (ok, started.elapsed())
        })
    };
    let during = poll_health(&client, &host, Duration::from_secs(600), Some(&storming)).await?;
    let (ok, took) = storm.await?;

    println!("login storm: {ROUNDS} rounds x {LOGINS} concurrent logins, {ok} succeeded in {took:.2?} ({:.0} logins/s)", ok as f64 / took.as_secs_f64());
    report("health, idle server      ", &baseline);
    report("health, during the storm ", &during);
    Ok(())
}

/// Polls `/health` back to back for `limit` or until `while_set` clears.
async fn poll_health(
    client: &reqwest::Client,
    host: &str,
    limit: Duration,
    while_set: Option<&AtomicBool>,
) -> Result<Vec<Duration>, reqwest::Error> {
    let mut samples = Vec::new();
    let end = Instant::now() + limit;
    while Instant::now() < end && while_set.is_none_or(|f| f.load(Ordering::SeqCst)) {
        let t = Instant::now();
        client
            .get(format!("{host}/health"))
            .send()
            .await?
            .bytes()
            .await?;
        samples.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(samples)
}

fn report(label: &str, samples: &[Duration]) {
    let mut s = samples.to_vec();
    s.sort();
    let pick = |q: f64| {
        s.get(((s.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{label}: {} requests, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        s.len(),
        pick(0.50),
        pick(0.99),
        s.last().copied().unwrap_or_default()
    );
}
