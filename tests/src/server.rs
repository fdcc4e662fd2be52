//! A test server: the real `chat-server` process (started through the test kit) with
//! its own data directory or scratch database, for one test.

use std::ffi::OsString;
use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context};
use testkit::{server_binary, Output, Profile, ScratchDatabase, ServerProcess};

use crate::client::Api;

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
    Postgres(ScratchDatabase),
    /// A database several servers share (a cluster's); its owner drops it.
    Shared(String),
}

/// A running `chat-server` child process with its own data directory or database.
/// Dropping it kills the process and removes the data.
pub struct TestServer {
    opts: ServerOptions,
    backing: Option<Backing>,
    secret_key: String,
    process: Option<ServerProcess>,
    /// Output of the runs before the current one (restarts).
    earlier_output: String,
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
            Store::Postgres => Backing::Postgres(ScratchDatabase::create("chat_e2e").await?),
        };
        let secret_key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self::launch(opts, backing, secret_key).await
    }

    /// Starts one node of a cluster: on a database it does not own, signing tokens
    /// with the cluster's key; waits until it listens.
    pub async fn start_on_cluster(
        opts: ServerOptions,
        database_url: String,
        secret_key: String,
    ) -> anyhow::Result<Self> {
        Self::launch(opts, Backing::Shared(database_url), secret_key).await
    }

    async fn launch(
        opts: ServerOptions,
        backing: Backing,
        secret_key: String,
    ) -> anyhow::Result<Self> {
        let mut server = TestServer {
            opts,
            backing: Some(backing),
            secret_key,
            process: None,
            earlier_output: String::new(),
            base_url: String::new(),
            runs: 0,
        };
        // On error `server` is dropped here, which cleans up the database.
        server.spawn().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `ws://127.0.0.1:PORT`, or `wss://` when the server terminates TLS (no trailing
    /// slash).
    pub fn ws_base_url(&self) -> String {
        match self.base_url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => self.base_url.replacen("http://", "ws://", 1),
        }
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
            Some(Backing::Postgres(db)) => Some(db.name()),
            _ => None,
        }
    }

    /// A client of the server's own database, for Postgres-backed servers.
    pub async fn sql(&self) -> anyhow::Result<testkit::tokio_postgres::Client> {
        match &self.backing {
            Some(Backing::Postgres(db)) => db.client().await,
            _ => anyhow::bail!("{} has no PostgreSQL database of its own", self.opts),
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
        let current = self.process.as_ref().map(ServerProcess::output);
        format!("{}{}", self.earlier_output, current.unwrap_or_default())
    }

    /// The pid of the running server process.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.process
            .as_ref()
            .and_then(ServerProcess::pid)
            .context("the server is not running")
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
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILL the process (no graceful shutdown) and reap it. Data stays.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill();
            self.earlier_output.push_str(&process.output());
        }
        Ok(())
    }

    /// SIGTERM the process and wait (up to `timeout`) for it to exit; SIGKILL after
    /// (then `None`).
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut process) = self.process.take() else {
            return Ok(None);
        };
        let (process, status) = tokio::task::spawn_blocking(move || {
            let status = process.stop(timeout);
            (process, status)
        })
        .await
        .context("joining the stop")?;
        self.earlier_output.push_str(&process.output());
        status
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

    fn args(&self) -> anyhow::Result<Vec<OsString>> {
        let mut args: Vec<OsString> = vec![
            "--shards".into(),
            self.opts.shards.to_string().into(),
            "--io-driver".into(),
            self.opts.io_driver.as_arg().into(),
        ];
        match &self.backing {
            Some(Backing::Sqlite(dir)) => {
                args.extend(["--data-dir".into(), dir.path().into()]);
            }
            Some(Backing::Postgres(db)) => {
                args.extend(["--database-url".into(), db.url().into()]);
            }
            Some(Backing::Shared(url)) => {
                args.extend(["--database-url".into(), url.into()]);
            }
            None => bail!("server data already removed"),
        }
        args.extend(["--secret-key".into(), self.secret_key.clone().into()]);
        args.extend(self.opts.extra_args.iter().map(OsString::from));
        Ok(args)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        if self.runs > 1 {
            self.earlier_output
                .push_str(&format!("===== server start #{} =====\n", self.runs));
        }
        let (args, env) = (self.args()?, self.opts.env.clone());
        // Waiting for readiness blocks: off this runtime, whose tasks (a relay in front
        // of the database, say) the starting server may need.
        let process = tokio::task::spawn_blocking(move || {
            let binary = server_binary(Profile::Current)?;
            ServerProcess::start(&binary, &args, &env, Output::Memory)
        })
        .await
        .context("joining the start")?
        .with_context(|| format!("chat-server ({})", self.opts))?;
        self.base_url = process.base_url().to_string();
        self.process = Some(process);
        Ok(())
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let killed = self.kill9();
        let dropped = match self.backing.take() {
            // The scratch database drops itself; a shared one is its owner's.
            Some(Backing::Postgres(_) | Backing::Shared(_)) | None => Ok(()),
            Some(Backing::Sqlite(dir)) => dir.close().context("removing data dir"),
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
