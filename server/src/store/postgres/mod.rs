//! The PostgreSQL store: a deadpool of tokio-postgres connections, prepared statements
//! from each connection's statement cache, one round trip per operation wherever one
//! statement can do the work.
//!
//! It owns the PostgreSQL schema (applied from `sql/postgres` at connect, under an
//! advisory lock so several nodes can start at once) and the mapping between records
//! and rows. It must never wait on the database without a deadline: every call is
//! bounded so a dead or blackholed server turns into `StoreError::Unavailable` within
//! seconds, and a connection that missed its deadline is thrown away, never reused.
//!
//! This file holds the connection side (configuration, migrations, the pool, deadlines
//! and error mapping); `queries` holds the statements and the row mapping, `batch` the
//! message batch.

mod accounts;
mod batch;
mod inbox;
mod manage;
mod queries;
mod sessions;
#[cfg(test)]
mod tests;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::model::StoreError;

mod embedded {
    refinery::embed_migrations!("../sql/postgres");
}

/// Key of the advisory lock that serialises migrations between nodes starting together.
const MIGRATION_LOCK: i64 = 0x6368_6174_5f6d_6967;

/// How long the start-up migrations may take before connect gives up.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Deadlines of the store. Every call (waiting for a connection, opening one, running
/// the statement) must finish within `operation`; below the batched writer's own
/// commit deadline, so the store reports and discards first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// TCP connect plus PostgreSQL start-up handshake of one new connection.
    pub(crate) connect: Duration,
    /// One whole store call.
    pub(crate) operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            operation: Duration::from_secs(4),
        }
    }
}

/// The production store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PostgresStore {
    pool: Pool,
    timeouts: Timeouts,
}

impl PostgresStore {
    /// Connects to `url`, applies pending migrations and opens a pool of at most
    /// `pool_size` connections (at least one). Fails with `Unavailable` if the server
    /// cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        Self::connect_with(url, pool_size, Timeouts::default()).await
    }

    pub(crate) async fn connect_with(
        url: &str,
        pool_size: usize,
        timeouts: Timeouts,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad DATABASE_URL: {e}")))?;
        config
            .connect_timeout(timeouts.connect)
            .application_name("chat-server")
            // A peer that vanished without a FIN (power loss, blackholed route) is
            // noticed by the kernel instead of leaving a connection half-open forever.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));

        migrate(&config, timeouts).await?;

        let manager = Manager::from_config(
            config,
            NoTls,
            // Fast only checks `is_closed`; connections that missed a deadline are
            // detached by `run`, and the keepalives close the silently dead ones.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeouts.operation))
            .create_timeout(Some(timeouts.connect))
            .recycle_timeout(Some(timeouts.connect))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        Ok(Self { pool, timeouts })
    }

    /// Runs one store call on a pooled connection, all of it (waiting for the
    /// connection included) within the operation deadline, and turns its outcome into
    /// the store's answer.
    ///
    /// A connection that missed the deadline is kept out of the pool: whatever it was
    /// doing may still be in flight, and a blackholed peer would stall the next caller
    /// too.
    async fn run<T>(
        &self,
        call: impl AsyncFnOnce(&Object) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeouts.operation;
        let client = timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| {
                StoreError::Unavailable("timed out waiting for a database connection".into())
            })?
            .map_err(|e| StoreError::Unavailable(format!("database connection: {e}")))?;
        match timeout_at(deadline, call(&client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(pg_error(&e, client.is_closed())),
            Err(_) => {
                drop(Object::take(client));
                Err(StoreError::Unavailable(
                    "database did not answer in time".into(),
                ))
            }
        }
    }
}

async fn migrate(config: &tokio_postgres::Config, timeouts: Timeouts) -> Result<(), StoreError> {
    let (mut client, connection) = tokio::time::timeout(timeouts.connect, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Unavailable("timed out connecting to postgres".into()))?
        .map_err(|e| StoreError::Unavailable(format!("connecting to postgres: {e}")))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection ended");
        }
    });
    let result = tokio::time::timeout(MIGRATION_TIMEOUT, async {
        // Held until this connection closes, which also releases it if we crash.
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres migration lock: {e}")))?;
        embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres migrations: {e}")))
    })
    .await;
    drop(client);
    driver.abort();
    let report =
        result.map_err(|_| StoreError::Unavailable("postgres migrations timed out".into()))??;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied postgres migration");
    }
    Ok(())
}

fn pg_error(e: &tokio_postgres::Error, connection_closed: bool) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No SQLSTATE: either the connection broke, or a row did not decode.
        return if connection_closed || e.is_closed() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Query(e.to_string())
        };
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return StoreError::Conflict(match db.constraint() {
            Some("users_username_key") => "username",
            Some("messages_pkey") => "message id",
            _ => "id",
        });
    }
    // The one-owner constraint, checked at commit: another change of roles came first.
    if *code == SqlState::EXCLUSION_VIOLATION {
        return StoreError::Conflict("another change of roles came first; retry");
    }
    // Classes 08 (connection), 53 (resources), 57 (operator intervention, e.g. a
    // shutdown or failover) and 58 (system) are the server being unwell, not the
    // statement being wrong.
    if ["08", "53", "57", "58"]
        .iter()
        .any(|class| code.code().starts_with(class))
    {
        return StoreError::Unavailable(db.to_string());
    }
    StoreError::Query(db.to_string())
}
