//! A real browser for end-to-end tests: Debian's headless Chromium, driven over the
//! DevTools protocol (JSON over a WebSocket, which this crate already speaks), each
//! run with a fresh profile. When Chromium is missing the first test installs it with
//! `apt-get install -y chromium`, so a fresh machine's test command still passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CANDIDATES: [&str; 3] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];
const START_TIMEOUT: Duration = Duration::from_secs(60);

static CHROMIUM: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The Chromium binary, installed from the distribution's packages if need be.
pub fn chromium() -> anyhow::Result<PathBuf> {
    CHROMIUM
        .get_or_init(|| provide().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no Chromium: {e}"))
}

fn find() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn provide() -> anyhow::Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    // A fresh machine may have no package lists yet: update once if the install fails.
    let installed = apt(&["install", "-y", "-q", "chromium"]).is_ok_and(|o| o.status.success())
        || (apt(&["update", "-q"]).is_ok_and(|o| o.status.success())
            && apt(&["install", "-y", "-q", "chromium"]).is_ok_and(|o| o.status.success()));
    match find() {
        Some(found) => Ok(found),
        None if installed => bail!("apt-get installed chromium but no binary is at {CANDIDATES:?}"),
        None => bail!("Chromium is not installed and `apt-get install -y chromium` failed (needs root and the Debian package mirror)"),
    }
}

/// One headless Chromium with one page open.
pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    page: String,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium on `url` and waits until the page has loaded.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let binary = chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("chat-browser-")
            .tempdir()
            .context("profile directory")?;
        let child = tokio::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting Chromium")?;
        let port = devtools_port(profile.path()).await?;
        let page = page_target(port, url).await?;
        let mut browser = Self {
            child,
            _profile: profile,
            page,
            next_id: 0,
        };
        // The first page may still be committing its navigation: ask until the
        // document at `url` has loaded (an evaluation that races the navigation
        // fails with "Execution context was destroyed").
        let started = Instant::now();
        loop {
            let state = browser
                .evaluate("document.readyState === 'complete' ? location.href : ''")
                .await;
            if matches!(&state, Ok(Value::String(href)) if href == url) {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("the page never loaded {url}: {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(browser)
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise; returns
    /// its value as JSON. A thrown exception is an error.
    pub async fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let (mut ws, _) = tokio_tungstenite::connect_async(self.page.as_str())
            .await
            .context("connecting to the page's DevTools socket")?;
        let call = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "awaitPromise": true, "returnByValue": true},
        });
        ws.send(Message::text(call.to_string())).await?;
        let reply = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(msg) = ws.next().await {
                if let Message::Text(text) = msg? {
                    let v: Value = serde_json::from_str(text.as_str())?;
                    if v["id"] == id {
                        return anyhow::Ok(v);
                    }
                }
            }
            bail!("DevTools socket closed")
        })
        .await
        .context("no answer from the page in time")??;
        if let Some(e) = reply.get("error") {
            bail!("DevTools error: {e}");
        }
        let result = &reply["result"];
        if let Some(e) = result.get("exceptionDetails") {
            bail!("the page threw: {e}");
        }
        Ok(result["result"]["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The port Chromium chose, from the `DevToolsActivePort` file in its profile.
async fn devtools_port(profile: &Path) -> anyhow::Result<u16> {
    let file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return Ok(port);
            }
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("Chromium did not open its DevTools port");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DevTools socket of the page showing `url`.
async fn page_target(port: u16, url: &str) -> anyhow::Result<String> {
    let list = format!("http://127.0.0.1:{port}/json/list");
    let started = Instant::now();
    loop {
        if let Ok(resp) = reqwest::get(&list).await {
            if let Ok(targets) = resp.json::<Vec<Value>>().await {
                let page = targets
                    .iter()
                    .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url));
                if let Some(ws) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                    return Ok(ws.to_string());
                }
            }
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("no page showing {url} in Chromium");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
