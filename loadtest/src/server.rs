//! Starting the chat server locally when no `--host` is given: the release binary
//! (built with `cargo build --release -p chat-server` first unless `--no-build`), the
//! embedded store in a temporary directory (or, with `--nodes`, several nodes of one
//! cluster on one PostgreSQL database and one Redis key prefix), an ephemeral loopback
//! port, a random secret key and rate limits far above anything the harness sends; with
//! `--tls`, a certificate generated for the run (the nodes then serve https:// and
//! wss://). The server's output goes to a log file; its CPU time and peak memory are read from /proc. The
//! process itself is the test kit's, as everywhere else in the workspace.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use testkit::{Output, Profile, ScratchDatabase, ScratchPrefix, ServerProcess};

use crate::config::Config;
use crate::console::say;
use crate::tls::GeneratedCert;

const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-user WebSocket rate limit given to a server the harness starts itself.
const GENEROUS_RATE: &str = "100000";

/// A chat-server process started by the harness. Dropping it kills the process.
pub struct LocalServer {
    process: ServerProcess,
    pub base_url: String,
    pub binary: PathBuf,
    log_path: PathBuf,
    _data_dir: tempfile::TempDir,
    _log_dir: Option<tempfile::TempDir>,
    started: Instant,
}

/// What the server process used.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    pub threads: u64,
}

/// What every local node shares: the binary, the signing key and, for a cluster, its
/// database, Redis and key prefix (as arguments).
struct Shared {
    binary: PathBuf,
    secret: String,
    args: Vec<OsString>,
}

/// The servers the harness started: one node with the embedded store, or `--nodes`
/// nodes of one cluster with the database and Redis key prefix they share.
pub struct LocalNodes {
    pub nodes: Vec<LocalServer>,
    /// What they store into, as the report names it.
    store: &'static str,
    // Dropped after the nodes (field order): the certificate, database and keys they
    // used.
    cert: Option<GeneratedCert>,
    _database: Option<ScratchDatabase>,
    _redis: Option<ScratchPrefix>,
}

impl LocalNodes {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let secret = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let (mut database, mut redis, mut args) = (None, None, Vec::<OsString>::new());
        if config.nodes > 1 {
            let url = match std::env::var("DATABASE_URL") {
                Ok(url) => url,
                Err(_) => {
                    let db = ScratchDatabase::create("loadtest")
                        .await
                        .context("--nodes needs DATABASE_URL or a local PostgreSQL")?;
                    let url = db.url();
                    database = Some(db);
                    url
                }
            };
            let (redis_url, prefix) = match std::env::var("REDIS_URL") {
                // Someone else's Redis: a prefix of the run's own, left as it is.
                Ok(url) => (url, format!("loadtest-{:08x}", rand::random::<u32>())),
                Err(_) => {
                    let scratch = ScratchPrefix::create("loadtest")
                        .context("--nodes needs REDIS_URL or a local Redis")?;
                    let prefix = scratch.prefix().to_string();
                    redis = Some(scratch);
                    (testkit::redis::url(), prefix)
                }
            };
            args.extend(["--database-url".into(), url.into()]);
            args.extend(["--redis-url".into(), redis_url.into()]);
            args.extend(["--redis-prefix".into(), prefix.into()]);
        }
        let cert = if config.tls {
            let cert = GeneratedCert::generate()?;
            args.extend(["--tls-cert".into(), cert.cert_path().into()]);
            args.extend(["--tls-key".into(), cert.key_path().into()]);
            Some(cert)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            binary: {
                let config = config.clone();
                tokio::task::spawn_blocking(move || locate_binary(&config))
                    .await
                    .context("locating the server")??
            },
            secret,
            args,
        });
        let mut nodes = Vec::with_capacity(config.nodes);
        for index in 0..config.nodes {
            let (config, shared) = (config.clone(), Arc::clone(&shared));
            // Waiting for readiness blocks: off the runtime.
            let node =
                tokio::task::spawn_blocking(move || LocalServer::start(&config, &shared, index))
                    .await
                    .context("starting a node")??;
            nodes.push(node);
        }
        let postgres = config.nodes > 1
            || config
                .server_arg
                .iter()
                .any(|a| a.starts_with("--database-url"));
        Ok(Self {
            nodes,
            store: if postgres {
                "PostgreSQL"
            } else {
                "embedded store, temporary directory"
            },
            cert,
            _database: database,
            _redis: redis,
        })
    }

    /// The certificate the nodes serve with `--tls`, as (name, PEM) for the clients to
    /// trust.
    pub fn trusted(&self) -> Option<(String, String)> {
        self.cert.as_ref().map(|c| {
            (
                "the certificate generated for the run".to_string(),
                c.pem.clone(),
            )
        })
    }

    pub fn store(&self) -> &'static str {
        self.store
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(LocalServer::pid).collect()
    }
}

impl LocalServer {
    fn start(config: &Config, shared: &Shared, index: usize) -> anyhow::Result<Self> {
        let binary = shared.binary.clone();
        let data_dir = tempfile::Builder::new()
            .prefix("loadtest-chat-")
            .tempdir()
            .context("creating the server's data directory")?;
        let (log_path, log_dir) = match &config.server_log {
            // One log per node: the first at the path given, the others beside it.
            Some(path) if index > 0 => (path.with_extension(format!("{index}.log")), None),
            Some(path) => (path.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("loadtest-log-")
                    .tempdir()
                    .context("creating a log directory")?;
                (dir.path().join("chat-server.log"), Some(dir))
            }
        };
        // Hostile clients flood beyond the rate limit: give them the real one (the
        // server's default burst is three seconds of it).
        let (rate, burst) = match config.scenario.hostile {
            0 => (GENEROUS_RATE.to_string(), GENEROUS_RATE.to_string()),
            _ => (
                format!("{}", config.server_rate_limit),
                format!("{}", (config.server_rate_limit * 3.0).ceil()),
            ),
        };
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            data_dir.path().into(),
            "--secret-key".into(),
            shared.secret.clone().into(),
            "--ws-rate-per-second".into(),
            rate.into(),
            "--ws-rate-burst".into(),
            burst.into(),
        ];
        if let Some(shards) = config.server_shards {
            args.extend(["--shards".into(), shards.to_string().into()]);
        }
        args.extend(shared.args.iter().cloned());
        args.extend(config.server_arg.iter().map(OsString::from));
        // A fresh log per run: the report reads its warnings back.
        std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        // Every simulated user registers and connects from this one machine: the
        // per-address limits, meant for one client each, would stop the run.
        // Simulated users log in once and keep their sockets for the whole run, which
        // may outlast a 15-minute access token: they get the original day-long one.
        let env = [
            ("REGISTER_MAX_PER_ADDRESS".to_owned(), "0".to_owned()),
            ("MAX_CONNECTIONS_PER_ADDRESS".to_owned(), "0".to_owned()),
            ("ACCESS_TOKEN_EXPIRE_MINUTES".to_owned(), "1440".to_owned()),
        ];
        let process = ServerProcess::start(&binary, &args, &env, Output::File(log_path.clone()))?;
        Ok(LocalServer {
            base_url: process.base_url().to_string(),
            process,
            binary,
            log_path,
            _data_dir: data_dir,
            _log_dir: log_dir,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `Some(status)` when the process has exited (crashed: it is never asked to
    /// before `stop`).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    pub fn usage(&self) -> Option<ProcessUsage> {
        self.pid().and_then(process_usage)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last `max` bytes of the server's output.
    pub fn log_tail(&self, max: usize) -> String {
        self.process.output_tail(max)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Lines of the server log that mention a warning or an error (at most `max`).
    pub fn log_problems(&self, max: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.contains(" WARN ")
                    || l.contains(" ERROR ")
                    || l.contains("panicked")
                    || l.contains("cannot keep up")
            })
            .take(max)
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM, then SIGKILL after 30 s. Returns how it ended and how long it took.
    pub fn stop(&mut self) -> String {
        if self.process.pid().is_none() {
            return "not running".into();
        }
        if let Some(status) = self.process.exited() {
            return format!("had already exited: {status}");
        }
        let asked = Instant::now();
        match self.process.stop(STOP_TIMEOUT) {
            Ok(Some(status)) => format!(
                "stopped {:.1} s after SIGTERM: {status}",
                asked.elapsed().as_secs_f64()
            ),
            Ok(None) => format!(
                "did not exit within {} s of SIGTERM, killed",
                STOP_TIMEOUT.as_secs()
            ),
            Err(e) => format!("could not be stopped: {e}"),
        }
    }
}

/// `--server-bin`, else the workspace's release binary, built (or brought up to date)
/// with cargo unless `--no-build`.
fn locate_binary(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(path) = &config.server_bin {
        if !path.is_file() {
            bail!("--server-bin {} is not a file", path.display());
        }
        return Ok(path.clone());
    }
    let existing = testkit::binary::built_binary(Profile::Release);
    let workspace = testkit::binary::workspace_root();
    if !config.no_build && workspace.join("Cargo.toml").is_file() {
        say("building the server: cargo build --release -p chat-server");
        match testkit::server_binary(Profile::Release) {
            Ok(binary) => return Ok(binary),
            Err(e) if existing.is_file() => {
                say(&format!("{e:#}; using the existing {}", existing.display()))
            }
            Err(e) => return Err(e),
        }
    }
    if !existing.is_file() {
        bail!(
            "no chat-server binary at {} (build it with `cargo build --release -p chat-server` or pass --server-bin)",
            existing.display()
        );
    }
    Ok(existing)
}

/// CPU seconds (user + system), peak resident memory and threads of a process.
pub fn process_usage(pid: u32) -> Option<ProcessUsage> {
    let usage = testkit::procfs::usage(pid).ok()?;
    Some(ProcessUsage {
        cpu_seconds: usage.cpu_seconds,
        peak_rss_mib: usage.peak_rss_kib as f64 / 1024.0,
        threads: usage.threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let usage = process_usage(std::process::id()).expect("/proc is readable");
        assert!(usage.threads >= 1);
        assert!(usage.peak_rss_mib > 0.0);
    }
}
