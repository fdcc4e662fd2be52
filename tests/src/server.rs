//! Starting and stopping the real `chat-server` process.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::binary::server_binary;
use crate::client::Api;
use crate::postgres;

/// How long a server may take to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const LISTENING_MARKER: &str = "listening on http://";

/// The store behind a test server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// The I/O driver the shards are forced to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    Uring,
    Epoll,
}

impl IoDriver {
    pub fn as_arg(self) -> &'static str {
        match self {
            IoDriver::Uring => "uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub store: Store,
    pub io_driver: IoDriver,
    pub shards: usize,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    pub fn new(store: Store, io_driver: IoDriver) -> Self {
        Self {
            store,
            io_driver,
            shards: 2,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

impl fmt::Display for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}/{:?}/{} shards",
            self.store, self.io_driver, self.shards
        )
    }
}

/// The four configurations every scenario runs against.
pub fn all_configs() -> [ServerOptions; 4] {
    [
        ServerOptions::new(Store::Sqlite, IoDriver::Uring),
        ServerOptions::new(Store::Sqlite, IoDriver::Epoll),
        ServerOptions::new(Store::Postgres, IoDriver::Uring),
        ServerOptions::new(Store::Postgres, IoDriver::Epoll),
    ]
}

enum Backing {
    Sqlite(tempfile::TempDir),
    Postgres { database: String },
}

/// A running `chat-server` child process with its own data directory or database.
/// Dropping it kills the process and removes the data.
pub struct TestServer {
    opts: ServerOptions,
    backing: Option<Backing>,
    secret_key: String,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    base_url: String,
    runs: usize,
}

impl TestServer {
    /// Starts a server and waits until it listens.
    pub async fn start(opts: ServerOptions) -> anyhow::Result<Self> {
        let backing = match opts.store {
            Store::Sqlite => Backing::Sqlite(
                tempfile::Builder::new()
                    .prefix("chat-e2e-")
                    .tempdir()
                    .context("creating data dir")?,
            ),
            Store::Postgres => Backing::Postgres {
                database: postgres::create_database().await?,
            },
        };
        let secret_key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut server = TestServer {
            opts,
            backing: Some(backing),
            secret_key,
            child: None,
            logs: Arc::new(Mutex::new(String::new())),
            base_url: String::new(),
            runs: 0,
        };
        // On error `server` is dropped here, which cleans up the database.
        server.spawn().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `ws://127.0.0.1:PORT` (no trailing slash).
    pub fn ws_base_url(&self) -> String {
        self.base_url.replacen("http://", "ws://", 1)
    }

    /// An API client for this server.
    pub fn api(&self) -> Api {
        Api::new(&self.base_url)
    }

    /// The HS256 key the server signs tokens with.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The database name, for Postgres-backed servers.
    pub fn database(&self) -> Option<&str> {
        match &self.backing {
            Some(Backing::Postgres { database }) => Some(database),
            _ => None,
        }
    }

    /// The data directory, for SQLite-backed servers.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match &self.backing {
            Some(Backing::Sqlite(dir)) => Some(dir.path()),
            _ => None,
        }
    }

    /// Everything the server wrote to stderr/stdout so far (all runs).
    pub fn stderr_contents(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last `max` bytes of the server output, for failure messages.
    pub fn stderr_tail(&self, max: usize) -> String {
        let logs = self.stderr_contents();
        if logs.len() <= max {
            return logs;
        }
        let mut start = logs.len() - max;
        while !logs.is_char_boundary(start) {
            start += 1;
        }
        format!("...{}", &logs[start..])
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the process (no graceful shutdown) and reap it. Data stays.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // kill() fails only if the process already exited; wait() reaps it either way.
            let _ = child.kill();
            child.wait().context("waiting for killed server")?;
        }
        Ok(())
    }

    /// SIGTERM the process and wait (up to `timeout`) for it to exit; SIGKILL after.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", child.id());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().context("try_wait")? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait().context("waiting for killed server")?;
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process if it runs and starts it again on the same data dir or database
    /// with the same secret key. The port (and so `base_url`) changes.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn().await
    }

    /// Stops the server and removes its data.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    /// Turns a scenario result into a test outcome: panics with the error and the
    /// server's output on failure.
    pub fn finish(self, result: anyhow::Result<()>) {
        if let Err(err) = result {
            let tail = self.stderr_tail(16 * 1024);
            let config = self.opts.to_string();
            drop(self);
            panic!("scenario failed on {config}: {err:#}\n--- server output ---\n{tail}");
        }
    }

    fn command(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(server_binary()?);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--shards")
            .arg(self.opts.shards.to_string())
            .arg("--io-driver")
            .arg(self.opts.io_driver.as_arg());
        match &self.backing {
            Some(Backing::Sqlite(dir)) => {
                cmd.arg("--data-dir").arg(dir.path());
            }
            Some(Backing::Postgres { database }) => {
                cmd.arg("--database-url")
                    .arg(postgres::database_url(database));
            }
            None => bail!("server data already removed"),
        }
        cmd.arg("--secret-key").arg(&self.secret_key);
        cmd.args(&self.opts.extra_args);
        // Every setting is also an environment variable: start from an empty
        // environment so the developer's (DATABASE_URL, SHARDS, ...) cannot change what
        // is under test.
        cmd.env_clear();
        for var in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command()?;
        self.runs += 1;
        if self.runs > 1 {
            if let Ok(mut logs) = self.logs.lock() {
                logs.push_str(&format!("===== server start #{} =====\n", self.runs));
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;

        let (tx, rx) = mpsc::channel::<Option<String>>();
        let logs = Arc::clone(&self.logs);
        std::thread::spawn(move || drain(stderr, logs, Some(tx)));
        let logs = Arc::clone(&self.logs);
        std::thread::spawn(move || drain(stdout, logs, None));
        self.child = Some(child);

        let waited = tokio::task::spawn_blocking(move || rx.recv_timeout(STARTUP_TIMEOUT))
            .await
            .context("joining startup wait")?;
        match waited {
            Ok(Some(url)) => {
                self.base_url = url;
                Ok(())
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = match self.child.take() {
                    Some(mut c) => {
                        let _ = c.kill();
                        c.wait().map(|s| s.to_string()).unwrap_or_default()
                    }
                    None => String::new(),
                };
                bail!(
                    "chat-server ({}) exited before listening ({status}); output:\n{}",
                    self.opts,
                    self.stderr_tail(16 * 1024)
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.kill9();
                bail!(
                    "chat-server ({}) did not log `{LISTENING_MARKER}...` within {STARTUP_TIMEOUT:?}; output:\n{}",
                    self.opts,
                    self.stderr_tail(16 * 1024)
                )
            }
        }
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let killed = self.kill9();
        let dropped = match self.backing.take() {
            Some(Backing::Postgres { database }) => postgres::drop_database_blocking(&database),
            Some(Backing::Sqlite(dir)) => dir.close().context("removing data dir"),
            None => Ok(()),
        };
        killed.and(dropped)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let result = self.shutdown();
        if std::thread::panicking() || result.is_err() {
            report(&format!(
                "chat-server ({}) cleanup: {result:?}\n--- server output ---\n{}",
                self.opts,
                self.stderr_tail(16 * 1024)
            ));
        }
    }
}

/// Test output goes to the test harness's captured stderr (shown for failing tests).
#[allow(clippy::print_stderr)]
fn report(message: &str) {
    eprintln!("{message}");
}

/// Reads lines from a pipe into the shared log until EOF. When `ready` is given, sends
/// the base URL once the listening line shows up, and `None` at EOF.
fn drain(pipe: impl Read, logs: Arc<Mutex<String>>, ready: Option<mpsc::Sender<Option<String>>>) {
    let mut reader = BufReader::new(pipe);
    let mut ready = ready;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        if let Ok(mut logs) = logs.lock() {
            logs.push_str(&line);
            if !line.ends_with('\n') {
                logs.push('\n');
            }
        }
        if let Some(url) = ready.as_ref().and_then(|_| parse_listening(&line)) {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Some(url));
            }
        }
    }
    if let Some(tx) = ready {
        let _ = tx.send(None);
    }
}

/// Extracts `http://host:port` from a log line containing `listening on http://...`.
fn parse_listening(line: &str) -> Option<String> {
    let clean = strip_ansi(line);
    let start = clean.find(LISTENING_MARKER)? + "listening on ".len();
    let url: String = clean[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '[' | ']'))
        .collect();
    let url = url.trim_end_matches(['/', '.']).to_string();
    let port = url.rsplit(':').next()?;
    (port.parse::<u16>().ok()? != 0).then_some(url)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_listening;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening("2026-01-01T00:00:00Z INFO chat_server: listening on http://127.0.0.1:40123 shards=2\n"),
            Some("http://127.0.0.1:40123".to_string())
        );
        assert_eq!(
            parse_listening("\u{1b}[32m INFO\u{1b}[0m listening on http://127.0.0.1:5000/"),
            Some("http://127.0.0.1:5000".to_string())
        );
        assert_eq!(parse_listening("listening on http://127.0.0.1:0"), None);
        assert_eq!(parse_listening("starting"), None);
    }
}
