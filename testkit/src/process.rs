//! One running `chat-server` process: started with `--listen 127.0.0.1:0` and a
//! `--ready-file` the server writes its address to once every shard listens (the
//! readiness signal; no log line is parsed), its output captured, stopped with
//! SIGTERM and, past a grace period, SIGKILL. Dropping it kills the process.
//!
//! The environment is cleared but for a few basics, because every server flag is
//! also an environment variable: a developer's `DATABASE_URL` or `SHARDS` must not
//! change what is under test.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a server may take to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server's stdout and stderr go.
#[derive(Clone, Debug)]
pub enum Output {
    /// Kept in memory (tests show it when they fail).
    Memory,
    /// Appended to a file (long runs).
    File(PathBuf),
}

pub struct ServerProcess {
    child: Option<Child>,
    base_url: String,
    memory: Arc<Mutex<String>>,
    output: Output,
    ready_file: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` with `args` (after `--listen 127.0.0.1:0`) and `env`, and waits
    /// until it is ready.
    pub fn start(
        binary: &Path,
        args: &[OsString],
        env: &[(String, String)],
        output: Output,
    ) -> anyhow::Result<Self> {
        let ready_file = std::env::temp_dir().join(format!(
            "chat-server-ready-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = Command::new(binary);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .env_clear();
        for var in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The sinks first: once the child runs, nothing may fail before it is owned.
        let memory = Arc::new(Mutex::new(String::new()));
        let sinks = [Sink::new(&output, &memory)?, Sink::new(&output, &memory)?];
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        for (pipe, sink) in [stdout, stderr].into_iter().zip(sinks) {
            if let Some(pipe) = pipe {
                std::thread::spawn(move || pump(pipe, sink));
            }
        }
        let mut process = Self {
            child: Some(child),
            base_url: String::new(),
            memory,
            output,
            ready_file,
        };
        process.base_url = process.wait_ready()?;
        Ok(process)
    }

    fn wait_ready(&mut self) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready_file) {
                if let Some(url) = text.lines().next().filter(|l| l.starts_with("http")) {
                    return Ok(url.trim().to_string());
                }
            }
            if let Some(status) = self.exited() {
                bail!(
                    "chat-server exited before it was ready ({status}); its output:\n{}",
                    self.output_tail(16 * 1024)
                );
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                self.kill();
                bail!(
                    "chat-server was not ready within {STARTUP_TIMEOUT:?}; its output:\n{}",
                    self.output_tail(16 * 1024)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything the server wrote so far.
    pub fn output(&self) -> String {
        match &self.output {
            Output::Memory => self.memory.lock().map(|m| m.clone()).unwrap_or_default(),
            Output::File(path) => std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        }
    }

    /// The last `max` bytes of the output.
    pub fn output_tail(&self, max: usize) -> String {
        let all = self.output();
        let mut start = all.len().saturating_sub(max);
        while !all.is_char_boundary(start) {
            start += 1;
        }
        all[start..].to_string()
    }

    /// SIGKILL and reap; no graceful shutdown.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. `Ok(Some(status))`
    /// when it exited by itself, `Ok(None)` when it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait().context("reaping the killed server")?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.ready_file);
    }
}

/// Where one pipe's lines go.
enum Sink {
    Memory(Arc<Mutex<String>>),
    File(std::fs::File),
}

impl Sink {
    fn new(output: &Output, memory: &Arc<Mutex<String>>) -> anyhow::Result<Self> {
        Ok(match output {
            Output::Memory => Self::Memory(Arc::clone(memory)),
            Output::File(path) => Self::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
        })
    }
}

fn pump(pipe: Box<dyn Read + Send>, mut sink: Sink) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match &mut sink {
            Sink::Memory(memory) => {
                if let Ok(mut m) = memory.lock() {
                    m.push_str(&String::from_utf8_lossy(&line));
                }
            }
            Sink::File(file) => {
                let _ = file.write_all(&line);
            }
        }
    }
}
