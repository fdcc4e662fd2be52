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
