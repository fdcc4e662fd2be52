//! `--scrape-metrics SECONDS`: while the run is measured (from the first measured window
//! or capacity step to the end of the chat), GET `/metrics` of every node at that
//! interval, all nodes at once, as a Prometheus server would, on the run's HTTP client
//! (kept-alive connections). Each scrape's time to the whole body and its size are
//! kept; a failed scrape is counted with its reason and never stops the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::time::MissedTickBehavior;

use crate::state::Run;

/// Longest wait for one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the scrapes of a run found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scrapes {
    pub interval_s: f64,
    pub nodes: usize,
    /// Scrapes that answered 200 with a body.
    pub done: u64,
    pub failed: u64,
    /// Failed scrapes by reason.
    pub failures: BTreeMap<String, u64>,
    /// Time from the request to the whole body, over the scrapes done.
    pub mean_ms: f64,
    pub max_ms: f64,
    /// Body bytes per scrape, over the scrapes done.
    pub mean_bytes: f64,
}

impl Scrapes {
    fn add(
        &mut self,
        result: Result<(Duration, usize), String>,
        total_ms: &mut f64,
        bytes: &mut f64,
    ) {
        match result {
            Ok((took, size)) => {
                let ms = took.as_secs_f64() * 1000.0;
                self.done += 1;
                *total_ms += ms;
                *bytes += size as f64;
                self.max_ms = self.max_ms.max(ms);
            }
            Err(reason) => {
                self.failed += 1;
                *self.failures.entry(reason).or_insert(0) += 1;
            }
        }
    }
}

/// Scrapes every node at `every` until the run stops; starts with the first measured
/// window.
pub async fn scrape(run: Arc<Run>, every: Duration) -> Scrapes {
    let mut out = Scrapes {
        interval_s: every.as_secs_f64(),
        nodes: run.nodes.len(),
        ..Scrapes::default()
    };
    let mut control = run.control.subscribe();
    loop {
        if run.stopping() {
            return out;
        }
        if control.borrow_and_update().phase >= 1 {
            break;
        }
        tokio::select! {
            _ = control.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let urls: Vec<String> = run
        .nodes
        .iter()
        .map(|n| format!("{}/metrics", n.base_url))
        .collect();
    let (mut total_ms, mut bytes) = (0.0, 0.0);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = run.until_stopping() => break,
        }
        let round =
            futures_util::future::join_all(urls.iter().map(|url| once(&run.clients.http, url)))
                .await;
        for result in round {
            out.add(result, &mut total_ms, &mut bytes);
        }
    }
    if out.done > 0 {
        out.mean_ms = total_ms / out.done as f64;
        out.mean_bytes = bytes / out.done as f64;
    }
    out
}

/// One scrape: its time to the whole body and the body's size.
async fn once(client: &reqwest::Client, url: &str) -> Result<(Duration, usize), String> {
    let started = Instant::now();
    let response = client
        .get(url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else {
                format!("request failed: {}", innermost(&e))
            }
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered {}", status.as_u16()));
    }
    let body = response
        .bytes()
        .await
        .map_err(|_| "body cut short".to_string())?;
    Ok((started.elapsed(), body.len()))
}

/// The deepest cause of an error (e.g. the certificate a TLS handshake refused), short.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string().chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_scrapes() {
        let mut s = Scrapes::default();
        let (mut ms, mut bytes) = (0.0, 0.0);
        s.add(Ok((Duration::from_millis(2), 100)), &mut ms, &mut bytes);
        s.add(Ok((Duration::from_millis(4), 300)), &mut ms, &mut bytes);
        s.add(Err("answered 404".into()), &mut ms, &mut bytes);
        s.add(Err("answered 404".into()), &mut ms, &mut bytes);
        assert_eq!((s.done, s.failed), (2, 2));
        assert_eq!(s.failures.get("answered 404"), Some(&2));
        assert!((ms - 6.0).abs() < 1e-9 && (bytes - 400.0).abs() < 1e-9);
        assert!((s.max_ms - 4.0).abs() < 1e-9);
    }
}
