//! Shared scaffolding of the criterion benches: throw-away databases on the local
//! PostgreSQL, so a bench measures a fresh, known schema and leaves nothing behind.
//!
//! It must never touch a database it did not create: everything it drops it made.

use std::time::Duration;

use tokio_postgres::NoTls;

/// The maintenance database benches create their scratch databases from; override with
/// `BENCH_DATABASE_URL` (a URL whose last path segment is the database name).
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one bench run, dropped (connections and all) with this value.
pub struct ScratchDatabase {
    admin_url: String,
    url: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<random>` next to the maintenance database.
    pub async fn create(prefix: &str) -> Result<Self, tokio_postgres::Error> {
        let admin_url =
            std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let base = admin_url
            .split_once('?')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = format!("{server}/{name}");
        admin(&admin_url)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(Self {
            admin_url,
            url,
            name,
        })
    }

    /// Where the store under test connects.
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn admin(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let admin_url = std::mem::take(&mut self.admin_url);
        let name = std::mem::take(&mut self.name);
        // Drop may run on a runtime thread that must not block on itself: the clean-up
        // gets a thread and a runtime of its own.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                admin(&admin_url)
                    .await?
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        // A leftover scratch database is harmless and visible by its name; nothing
        // else useful can be done from a destructor.
        let _ = cleaner.join();
    }
}
