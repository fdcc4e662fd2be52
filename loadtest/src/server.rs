//! Starting the chat server locally when no `--host` is given: the release binary
//! (built with `cargo build --release -p chat-server` first unless `--no-build`), the
//! embedded store in a temporary directory, an ephemeral loopback port, a random
//! secret key and rate limits far above anything the harness sends. The server's
//! output goes to a log file; its CPU time and peak memory are read from /proc. The
//! process itself is the test kit's, as everywhere else in the workspace.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use testkit::{Output, Profile, ServerProcess};

use crate::config::Config;
use crate::console::say;

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

impl LocalServer {
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        let binary = locate_binary(config)?;
        let data_dir = tempfile::Builder::new()
            .prefix("loadtest-chat-")
            .tempdir()
            .context("creating the server's data directory")?;
        let (log_path, log_dir) = match &config.server_log {
            Some(path) => (path.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("loadtest-log-")
                    .tempdir()
                    .context("creating a log directory")?;
                (dir.path().join("chat-server.log"), Some(dir))
            }
        };
        let secret = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            data_dir.path().into(),
            "--secret-key".into(),
            secret.into(),
            "--ws-rate-per-second".into(),
            GENEROUS_RATE.into(),
            "--ws-rate-burst".into(),
            GENEROUS_RATE.into(),
        ];
        if let Some(shards) = config.server_shards {
            args.extend(["--shards".into(), shards.to_string().into()]);
        }
        args.extend(config.server_arg.iter().map(OsString::from));
        // A fresh log per run: the report reads its warnings back.
        std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let process = ServerProcess::start(&binary, &args, &[], Output::File(log_path.clone()))?;
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
