//! Throw-away PostgreSQL databases for tests.
//!
//! Each server gets its own database `chat_e2e_<uuid>` on the local cluster
//! (`postgres://postgres@127.0.0.1:5432`, trust auth; `CHAT_E2E_PG_URL` overrides the
//! admin URL). The database is dropped `WITH (FORCE)` when the server goes away.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static CLUSTER: OnceLock<Result<(), String>> = OnceLock::new();

/// Admin connection URL (database `postgres`).
pub fn admin_url() -> String {
    std::env::var("CHAT_E2E_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// URL of database `db` on the same cluster as [`admin_url`].
pub fn database_url(db: &str) -> String {
    let admin = admin_url();
    match admin.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{db}", &admin[..slash]),
        _ => format!("{admin}/{db}"),
    }
}

fn pg_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5432))
}

fn accepts() -> bool {
    TcpStream::connect_timeout(&pg_addr(), Duration::from_secs(1)).is_ok()
}

/// Makes sure the local cluster accepts connections, starting it with
/// `pg_ctlcluster` when it refuses and the tool exists. Done once per process.
pub fn ensure_running() -> anyhow::Result<()> {
    CLUSTER
        .get_or_init(|| start_cluster_if_needed().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("PostgreSQL is not available: {e}"))
}

fn start_cluster_if_needed() -> anyhow::Result<()> {
    if accepts() {
        return Ok(());
    }
    let tool = Path::new("/usr/bin/pg_ctlcluster");
    if !tool.exists() {
        bail!("127.0.0.1:5432 refuses connections and /usr/bin/pg_ctlcluster does not exist");
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
        if accepts() {
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
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", admin_url()))?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; errors are irrelevant here.
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates a fresh, uniquely named database and returns its name.
pub async fn create_database() -> anyhow::Result<String> {
    tokio::task::spawn_blocking(ensure_running)
        .await
        .context("joining ensure_running")??;
    let name = format!("chat_e2e_{}", uuid::Uuid::new_v4().simple());
    let client = admin_client().await?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    Ok(name)
}

/// Drops the database. Blocking, usable outside any async context (e.g. in `Drop`):
/// it runs on its own thread with its own runtime.
pub fn drop_database_blocking(name: &str) -> anyhow::Result<()> {
    if !name.starts_with("chat_e2e_") {
        bail!("refusing to drop database {name:?}: not a test database");
    }
    let name = name.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building runtime")?;
        rt.block_on(async move {
            let client = admin_client().await?;
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .with_context(|| format!("DROP DATABASE {name}"))?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("drop-database thread panicked"))?
}
