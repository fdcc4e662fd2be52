//! Starting the chat server locally when no `--host` is given: the release binary
//! (built with `cargo build --release -p chat-server` first unless `--no-build`), the
//! embedded store in a temporary directory, an ephemeral loopback port, a random
//! secret key and rate limits far above anything the harness sends. The server's
//! output goes to a log file; its CPU time and peak memory are read from /proc.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::Config;
use crate::console::say;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const LISTENING_MARKER: &str = "listening on http://";
/// Per-user WebSocket rate limit given to a server the harness starts itself.
const GENEROUS_RATE: &str = "100000";

/// A chat-server process started by the harness. Dropping it kills the process.
pub struct LocalServer {
    child: Option<Child>,
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
        let mut cmd = Command::new(&binary);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--secret-key")
            .arg(&secret)
            .arg("--ws-rate-per-second")
            .arg(GENEROUS_RATE)
            .arg("--ws-rate-burst")
            .arg(GENEROUS_RATE);
        if let Some(shards) = config.server_shards {
            cmd.arg("--shards").arg(shards.to_string());
        }
        cmd.args(&config.server_arg);
        // Every server flag is also an environment variable: keep the developer's
        // environment (DATABASE_URL, SHARDS, ...) from changing what is measured.
        cmd.env_clear();
        for var in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        let log_err = log.try_clone().context("cloning the log file")?;
        std::thread::spawn(move || pump(stderr, log_err, Some(tx)));
        std::thread::spawn(move || pump(stdout, log, None));

        let mut server = LocalServer {
            child: Some(child),
            base_url: String::new(),
            binary,
            log_path,
            _data_dir: data_dir,
            _log_dir: log_dir,
            started: Instant::now(),
        };
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(url)) => {
                server.base_url = url;
                Ok(server)
            }
            Ok(None) | Err(_) => {
                let status = server.kill();
                bail!(
                    "chat-server did not start ({status}); its output:\n{}",
                    server.log_tail(4096)
                )
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` when the process has exited (crashed: it is never asked to
    /// before `stop`).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn usage(&self) -> Option<ProcessUsage> {
        self.pid().and_then(process_usage)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last `max` bytes of the server's output.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).into_owned()
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
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had already exited: {status}");
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let asked = Instant::now();
        let deadline = asked + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return format!(
                        "stopped {:.1} s after SIGTERM: {status}",
                        asked.elapsed().as_secs_f64()
                    )
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return format!(
                        "did not exit within {} s of SIGTERM, killed: {status}",
                        STOP_TIMEOUT.as_secs()
                    );
                }
            }
        }
    }

    fn kill(&mut self) -> String {
        match self.child.take() {
            Some(mut child) => {
                let _ = child.kill();
                child.wait().map(|s| s.to_string()).unwrap_or_default()
            }
            None => String::new(),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies a pipe into the log; with `ready`, sends the base URL once the listening
/// line shows up (`None` at EOF before it).
fn pump(pipe: impl Read, mut log: std::fs::File, ready: Option<mpsc::Sender<Option<String>>>) {
    let mut reader = BufReader::new(pipe);
    let mut ready = ready;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let _ = log.write_all(&line);
        if ready.is_some() {
            if let Some(url) = parse_listening(&String::from_utf8_lossy(&line)) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Some(url));
                }
            }
        }
    }
    if let Some(tx) = ready {
        let _ = tx.send(None);
    }
}

/// `http://host:port` from a line containing `listening on http://host:port ...`.
pub fn parse_listening(line: &str) -> Option<String> {
    let start = line.find(LISTENING_MARKER)? + "listening on ".len();
    let url: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '[' | ']'))
        .collect();
    let url = url.trim_end_matches(['/', '.']).to_string();
    let port: u16 = url.rsplit(':').next()?.parse().ok()?;
    (port != 0).then_some(url)
}

/// The workspace this crate was built in (for `cargo build` and target/).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
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
    let binary = target_dir().join("release").join("chat-server");
    let workspace = workspace_root();
    if !config.no_build && workspace.join("Cargo.toml").is_file() {
        say("building the server: cargo build --release -p chat-server");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "build",
                "--release",
                "-p",
                "chat-server",
                "--bin",
                "chat-server",
            ])
            .arg("--target-dir")
            .arg(target_dir())
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) if binary.is_file() => say(&format!(
                "cargo build failed ({s}); using the existing {}",
                binary.display()
            )),
            Ok(s) => bail!("cargo build --release -p chat-server failed: {s}"),
            Err(e) if binary.is_file() => say(&format!(
                "could not run cargo ({e}); using the existing {}",
                binary.display()
            )),
            Err(e) => bail!("could not run cargo to build chat-server: {e}"),
        }
    }
    if !binary.is_file() {
        bail!(
            "no chat-server binary at {} (build it with `cargo build --release -p chat-server` or pass --server-bin)",
            binary.display()
        );
    }
    Ok(binary)
}

/// CPU seconds (user + system), peak resident memory and threads of a process.
pub fn process_usage(pid: u32) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let threads = fields.get(17).and_then(|t| t.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Some(ProcessUsage {
        // Linux reports in USER_HZ, 100 per second on every common configuration.
        cpu_seconds: ticks as f64 / 100.0,
        peak_rss_mib: peak_kib / 1024.0,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening("2026-01-01T00:00:00Z INFO chat_server::server: listening on http://127.0.0.1:40123 shards=2\n"),
            Some("http://127.0.0.1:40123".into())
        );
        assert_eq!(parse_listening("listening on http://127.0.0.1:0"), None);
        assert_eq!(parse_listening("starting"), None);
    }

    #[test]
    fn reads_own_usage() {
        let usage = process_usage(std::process::id()).expect("/proc is readable");
        assert!(usage.threads >= 1);
        assert!(usage.peak_rss_mib > 0.0);
    }
}
