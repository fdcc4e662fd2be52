//! Redis for cluster tests and runs: the local server (`TEST_REDIS_URL`, by default
//! `redis://127.0.0.1:6379`), started with `redis-server` when it is installed but not
//! running, and a key prefix of its own per test, whose keys are deleted when the value
//! is dropped. Nothing outside a prefix it made is ever deleted.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

pub fn url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// `host:port` of the Redis URL.
pub fn address() -> anyhow::Result<SocketAddr> {
    let url = url();
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("unexpected Redis URL {url}"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("no address for {hostport}"))
}

static SERVER: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes sure Redis accepts connections, starting a local `redis-server` (nothing
/// kept on disk) when it refuses and the program exists. Done once per process.
pub fn ensure_running() -> anyhow::Result<()> {
    SERVER
        .get_or_init(|| start_if_needed().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("Redis is not available: {e}"))
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn start_if_needed() -> anyhow::Result<()> {
    let addr = address()?;
    if accepts(addr) {
        return Ok(());
    }
    let output = Command::new("redis-server")
        .args(["--daemonize", "yes", "--bind", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .output()
        .context("running redis-server (is it installed?)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if accepts(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "Redis did not accept connections at {addr} after redis-server ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A key prefix of its own on the test Redis; its keys are deleted on drop.
pub struct ScratchPrefix {
    prefix: String,
}

impl ScratchPrefix {
    pub fn create(label: &str) -> anyhow::Result<Self> {
        ensure_running()?;
        Ok(Self {
            prefix: format!("{label}-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key of this prefix.
    pub fn keys(&self) -> anyhow::Result<Vec<String>> {
        let mut conn = ::redis::Client::open(url())?.get_connection()?;
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)?;
        Ok(keys)
    }

    fn clean(&self) -> anyhow::Result<()> {
        let keys = self.keys()?;
        if !keys.is_empty() {
            let mut conn = ::redis::Client::open(url())?.get_connection()?;
            ::redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
        }
        Ok(())
    }
}

impl Drop for ScratchPrefix {
    fn drop(&mut self) {
        // Nothing else to do on failure: a few stray keys under a unique prefix.
        let _ = self.clean();
    }
}

/// (channel, payload) of each message published.
type Published = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Everything published on a prefix's channels while it lives: a pattern subscription
/// on a connection of its own, read in a thread.
pub struct Listener {
    seen: Published,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScratchPrefix {
    /// Starts listening to every channel of this prefix; returns once subscribed.
    pub fn listen(&self) -> anyhow::Result<Listener> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let mut conn = ::redis::Client::open(url())?.get_connection()?;
        conn.set_read_timeout(Some(Duration::from_millis(100)))?;
        let pattern = format!("{}:*", self.prefix);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, subscribed) = std::sync::mpsc::channel();
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut pubsub = conn.as_pubsub();
                let _ = ready.send(pubsub.psubscribe(&pattern).map_err(|e| e.to_string()));
                while !stop.load(Ordering::Relaxed) {
                    match pubsub.get_message() {
                        Ok(msg) => {
                            if let Ok(mut seen) = seen.lock() {
                                let channel = msg.get_channel_name().to_string();
                                seen.push((channel, msg.get_payload_bytes().to_vec()));
                            }
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(_) => break,
                    }
                }
            })
        };
        subscribed
            .recv()
            .context("the listener thread ended")?
            .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?;
        Ok(Listener {
            seen,
            stop,
            thread: Some(thread),
        })
    }
}

impl Listener {
    /// (channel, payload) of everything published so far.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
