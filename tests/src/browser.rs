//! A real browser for end-to-end tests: Debian's headless Chromium, driven over the
//! DevTools protocol (JSON over a WebSocket, which this crate already speaks), each
//! run with a fresh profile. When Chromium is missing the first test installs it with
//! `apt-get install -y chromium`, so a fresh machine's test command still passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
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
        .get_or_init(|| crate::apt::provide("chromium", find).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no Chromium: {e}"))
}

fn find() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// One headless Chromium with one page open; [`Browser::open_isolated`] opens more
/// pages, each in a browser context of its own (separate cookies and storage, like
/// separate profiles).
pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    port: u16,
    page: Page,
}

/// One page (a DevTools target) of a [`Browser`].
pub struct Page {
    socket: String,
    next_id: u64,
}

/// The window size of every page, so screenshots are alike from run to run.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

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
                // Pages that are not in front must keep their timers running.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={WIDTH},{HEIGHT}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting Chromium")?;
        let port = devtools_port(profile.path()).await?;
        let mut page = Page {
            socket: page_target(port, url).await?,
            next_id: 0,
        };
        page.wait_loaded(url).await?;
        Ok(Self {
            child,
            _profile: profile,
            port,
            page,
        })
    }

    /// Evaluates `expression` in the first page (see [`Page::evaluate`]).
    pub async fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        self.page.evaluate(expression).await
    }

    /// The page Chromium was started on.
    pub fn page(&mut self) -> &mut Page {
        &mut self.page
    }

    /// Opens `url` in a new page of a new browser context, which shares no cookies or
    /// storage with any other, and waits until it has loaded.
    pub async fn open_isolated(&mut self, url: &str) -> anyhow::Result<Page> {
        let version: Value = reqwest::get(format!("http://127.0.0.1:{}/json/version", self.port))
            .await?
            .json()
            .await
            .context("DevTools /json/version")?;
        let socket = version["webSocketDebuggerUrl"]
            .as_str()
            .context("no browser DevTools socket")?;
        let context = command(socket, 1, "Target.createBrowserContext", json!({})).await?;
        let context = context["browserContextId"]
            .as_str()
            .context("no browserContextId")?;
        let params = json!({
            "url": url,
            "browserContextId": context,
            "width": WIDTH,
            "height": HEIGHT,
        });
        let target = command(socket, 2, "Target.createTarget", params).await?;
        let target = target["targetId"].as_str().context("no targetId")?;
        let mut page = Page {
            socket: format!("ws://127.0.0.1:{}/devtools/page/{target}", self.port),
            next_id: 0,
        };
        page.wait_loaded(url).await?;
        Ok(page)
    }
}

impl Page {
    /// Sends one DevTools command to the page and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        command(&self.socket, self.next_id, method, params).await
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise; returns
    /// its value as JSON. A thrown exception is an error.
    pub async fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        let params = json!({"expression": expression, "awaitPromise": true, "returnByValue": true});
        let result = self.call("Runtime.evaluate", params).await?;
        if let Some(e) = result.get("exceptionDetails") {
            bail!("the page threw: {e}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until its value is truthy (not `false`, `null`, `0`,
    /// `""`), and returns that value; an error names `what` after `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let value = self.evaluate(expression).await;
            match &value {
                Ok(Value::Null | Value::Bool(false)) => {}
                Ok(Value::String(s)) if s.is_empty() => {}
                Ok(Value::Number(n)) if n.as_f64() == Some(0.0) => {}
                Ok(found) => return Ok(found.clone()),
                // Evaluations racing a navigation fail; the next one will not.
                Err(_) => {}
            }
            if started.elapsed() > timeout {
                bail!("timed out waiting for {what}: last value {value:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reloads the page and waits until the new document has loaded.
    pub async fn reload(&mut self) -> anyhow::Result<()> {
        self.evaluate("window.__beforeReload = true").await?;
        self.call("Page.reload", json!({})).await?;
        let done = "!window.__beforeReload && document.readyState === 'complete'";
        self.wait_for("the reload", done, START_TIMEOUT).await?;
        Ok(())
    }

    /// A PNG of what the page shows.
    pub async fn screenshot(&mut self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("screenshot is not base64")
    }

    /// Waits until the document at `url` has loaded: a new page may still be
    /// committing its navigation (an evaluation that races it fails with "Execution
    /// context was destroyed").
    async fn wait_loaded(&mut self, url: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let state = self
                .evaluate("document.readyState === 'complete' ? location.href : ''")
                .await;
            if matches!(&state, Ok(Value::String(href)) if href == url) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("the page never loaded {url}: {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends one DevTools command over a fresh connection to `socket` (a page's or the
/// browser's) and returns its result.
async fn command(socket: &str, id: u64, method: &str, params: Value) -> anyhow::Result<Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(socket)
        .await
        .context("connecting to a DevTools socket")?;
    let call = json!({"id": id, "method": method, "params": params});
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
    .with_context(|| format!("no answer to {method} in time"))??;
    if let Some(e) = reply.get("error") {
        bail!("DevTools error in {method}: {e}");
    }
    Ok(reply["result"].clone())
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
