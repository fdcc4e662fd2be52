//! Throw-away PostgreSQL databases on the local cluster.
//!
//! The cluster is reached through one admin URL: `TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres` (trust auth). When it refuses
//! connections and `pg_ctlcluster` is installed, the cluster is started, once per
//! process. Each scratch database is named `<prefix>_<uuid>` and dropped
//! `WITH (FORCE)` when its value is dropped; nothing else is ever dropped.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL (its database is the maintenance one scratch databases are made from).
pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// `(userinfo, host:port)` of the admin URL `postgres://USERINFO@HOST:PORT/DB`.
pub fn url_parts() -> anyhow::Result<(String, String)> {
    let admin = admin_url();
    let rest = admin
        .strip_prefix("postgres://")
        .or_else(|| admin.strip_prefix("postgresql://"))
        .with_context(|| format!("unexpected PostgreSQL URL {admin}"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.to_string(), h.to_string()),
        None => (String::new(), authority.to_string()),
    };
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:5432")
    };
    Ok((userinfo, hostport))
}

/// The URL of database `name` at `hostport` (the cluster's own, or a relay's).
fn url_at(hostport: &str, name: &str) -> anyhow::Result<String> {
    let (userinfo, _) = url_parts()?;
    let at = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    Ok(format!("postgres://{at}{hostport}/{name}"))
}

static CLUSTER: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes sure the cluster accepts connections, starting the local one with
/// `pg_ctlcluster` when it refuses and the tool exists. Done once per process.
pub fn ensure_running() -> anyhow::Result<()> {
    CLUSTER
        .get_or_init(|| start_cluster_if_needed().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("PostgreSQL is not available: {e}"))
}

fn accepts(addr: &[SocketAddr]) -> bool {
    addr.iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
}

fn start_cluster_if_needed() -> anyhow::Result<()> {
    let (_, hostport) = url_parts()?;
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .collect();
    if accepts(&addrs) {
        return Ok(());
    }
    let tool = Path::new("/usr/bin/pg_ctlcluster");
    if !tool.exists() {
        bail!(
            "{hostport} refuses connections and {} does not exist",
            tool.display()
        );
    }
    let mut versions = std::fs::read_dir("/etc/postgresql")
        .context("reading /etc/postgresql")?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    versions.sort();
    let version = match versions.as_slice() {
        [one] => one.clone(),
        other => bail!("expected one PostgreSQL version in /etc/postgresql, found {other:?}"),
    };
    let output = Command::new(tool)
        .args(["--skip-systemctl-redirect", &version, "main", "start"])
        .output()
        .context("running pg_ctlcluster")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if accepts(&addrs) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "PostgreSQL did not accept connections after pg_ctlcluster {version} main start ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn admin_client() -> anyhow::Result<tokio_postgres::Client> {
    connect(&admin_url()).await
}

/// A client of the database at `url`, its connection driven on the current runtime.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("PostgreSQL URL")?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        // Ends when the client is dropped; its errors mean nothing here.
        let _ = connection.await;
    });
    Ok(client)
}

/// A database of its own for one test or bench run, dropped with this value.
pub struct ScratchDatabase {
    name: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<uuid>`, starting the local cluster first if need be.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(ensure_running)
            .await
            .context("joining ensure_running")??;
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        admin_client()
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where a client of this database connects.
    pub fn url(&self) -> String {
        let hostport = url_parts().map(|(_, h)| h).unwrap_or_default();
        url_at(&hostport, &self.name).unwrap_or_default()
    }

    /// A client of this database, for a test that looks at or locks what the server
    /// stored.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url()).await
    }

    /// The URL of this database reached through `via` (a relay in front of the cluster).
    pub fn url_via(&self, via: SocketAddr) -> anyhow::Result<String> {
        url_at(&via.to_string(), &self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop may run on a runtime thread that must not block on itself: the clean-up
        // gets a thread and a runtime of its own. A leftover scratch database is
        // harmless and visible by its name.
        let _ = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    admin_client()
                        .await?
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await?;
                    anyhow::Ok(())
                })
        })
        .join();
    }
}
