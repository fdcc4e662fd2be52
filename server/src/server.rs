//! Start-up and shutdown: opens the store (migrations included) on the store runtime,
//! settles the signing key, starts the writer, the cluster link (with `--redis-url`)
//! and the shards, then waits for SIGINT or SIGTERM and stops in order: shards stop
//! accepting and drain, then the writer flushes what it holds, then the node leaves
//! the cluster. SIGHUP reloads the TLS certificate and key.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::app::{App, Limits};
use crate::auth::{Budgets, JwtKeys, LoginThrottle, PasswordPool, Revocations, EVERY_TOKEN};
use crate::bus::{Bus, ShardMsg};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::ids::unix_seconds;
use crate::metrics::Metrics;
use crate::shard;
use crate::store::writer::{self, BatchPolicy};
use crate::store::{self, Db};
use crate::tls::Tls;

const DEV_KEY_FILE: &str = "dev-secret-key";

pub fn run(config: Config) -> anyhow::Result<()> {
    refuse_unsafe_production(&config)?;
    let tls = match config.tls_files() {
        Some((cert, key)) => Some(Tls::load(cert, key).context("--tls-cert / --tls-key")?),
        None => None,
    };
    let secret = signing_key(&config)?;
    let shards = config.shard_count();
    let store_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("store")
        .enable_all()
        .build()
        .context("store runtime")?;
    let store = store_runtime
        .block_on(store::open(
            config.database_url.as_deref(),
            &config.data_dir,
            config.db_pool_size,
        ))
        .context("opening the store")?;
    tracing::info!(
        store = if config.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        "store ready, migrations applied"
    );
    let policy = BatchPolicy {
        max_batch: config.writer_max_batch,
        max_bytes: config.writer_max_batch_bytes,
        max_delay: config.writer_max_delay(),
    };
    let metrics = Metrics::new(config.redis_url.is_some());
    let (writer, writer_done) = writer::spawn(
        Arc::clone(&store),
        policy,
        metrics.writer.clone(),
        store_runtime.handle(),
    );
    let bus = Arc::new(Bus::new(shards));
    let revocations = Arc::new(Revocations::new(config.token_ttl()));
    learn_revocations(&store, &store_runtime, &revocations, config.token_ttl())?;
    let cluster = match &config.redis_url {
        Some(url) => Some(
            Cluster::start(
                &config,
                url,
                Arc::clone(&bus),
                Arc::clone(&revocations),
                store_runtime.handle(),
            )
            .context("--redis-url")?,
        ),
        None => None,
    };
    let app = Arc::new(App {
        db: Db::new(
            store,
            store_runtime.handle().clone(),
            metrics.writer.store_errors.clone(),
        ),
        writer,
        jwt: JwtKeys::new(&secret, config.token_ttl()),
        revocations,
        passwords: PasswordPool::new(config.hash_threads, config.hash_queue)
            .context("password pool")?,
        budgets: Budgets::new(config.ws_rate_per_second, config.ws_rate_burst),
        logins: LoginThrottle::new(
            config.login_max_failures,
            config.login_max_failures_per_address,
            config.login_failure_window,
        ),
        limits: Limits::new(&config),
        bus,
        cluster,
        tls,
        metrics,
        config,
    });
    // What a deletion interrupted by a stop left to purge.
    app.db.detach(crate::store::purge);

    if let Some(addr) = app.config.metrics_listen {
        let bound = crate::http::scrape::spawn(Arc::clone(&app), addr, store_runtime.handle())
            .with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("signal handlers")?;
    let (listeners, addr) = shard::bind(app.config.listen, shards)
        .with_context(|| format!("binding {}", app.config.listen))?;
    let started = shard::start(&app, listeners, app.config.io_driver)?;
    let url = format!(
        "{}://{addr}",
        if app.tls.is_some() { "https" } else { "http" }
    );
    tracing::info!(shards, "listening on {url}");
    if let Some(path) = &app.config.ready_file {
        write_ready_file(path, &url)?;
    }

    for signal in signals.forever() {
        if signal == SIGHUP {
            reload_tls(&app);
            continue;
        }
        tracing::info!(
            signal,
            "stopping: no new connections, finishing in-flight work"
        );
        break;
    }
    app.bus.broadcast(|| ShardMsg::Shutdown);
    for s in started {
        let _ = s.thread.join();
    }
    // The shards are gone, so nothing new reaches the writer: it commits what it
    // holds, reports each outcome, and ends.
    let grace = app.config.shutdown_grace();
    app.writer.stop();
    let flushed = store_runtime.block_on(async { tokio::time::timeout(grace, writer_done).await });
    if flushed.is_err() {
        tracing::warn!("the writer did not finish within the grace period");
    }
    if let Some(cluster) = &app.cluster {
        store_runtime.block_on(cluster.leave(grace));
    }
    store_runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    tracing::info!("stopped");
    Ok(())
}

/// What `--production` refuses to start with.
/// Reads from the store which tokens stopped counting lately (sessions that ended
/// within an access token's lifetime, every user's time before which tokens without
/// a session are refused), so a node that starts refuses them as the others do.
fn learn_revocations(
    store: &Arc<dyn store::Store>,
    runtime: &tokio::runtime::Runtime,
    revocations: &Revocations,
    access_ttl: std::time::Duration,
) -> anyhow::Result<()> {
    let since = crate::ids::now_micros()
        - chrono::Duration::from_std(access_ttl).unwrap_or(chrono::Duration::MAX)
        - chrono::Duration::seconds(5);
    let ended = runtime
        .block_on(store.ended_tokens(since))
        .context("reading ended sessions")?;
    revocations.end(
        ended
            .sessions
            .iter()
            .map(|(session, _, at)| (*session, unix_seconds(*at))),
    );
    for (user, before) in &ended.users {
        let before = if *before >= store::account::account_gone() {
            EVERY_TOKEN
        } else {
            unix_seconds(*before)
        };
        revocations.refuse_before(*user, before);
    }
    Ok(())
}

fn refuse_unsafe_production(config: &Config) -> anyhow::Result<()> {
    if !config.production {
        return Ok(());
    }
    if config.allowed_origins.iter().any(|o| o.trim() == "*") {
        anyhow::bail!("--production refuses --allowed-origins '*': list the origins");
    }
    // Tokens and passwords would cross the network in the clear.
    if config.tls_files().is_none() && !config.behind_proxy && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "--production refuses plain HTTP on {}: give --tls-cert and --tls-key, \
             or --behind-proxy when TLS ends at a proxy in front",
            config.listen
        );
    }
    Ok(())
}

/// SIGHUP: new handshakes get the certificate and key read from disk now.
fn reload_tls(app: &App) {
    let Some(tls) = &app.tls else {
        tracing::info!("SIGHUP: no TLS configured, nothing to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the certificate in use")
        }
    }
}

/// Writes the address atomically (a temporary file renamed into place), so a reader
/// never sees half of it.
fn write_ready_file(path: &Path, url: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{url}\n"))
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

/// Shortest `SECRET_KEY` `--production` accepts: HS256 wants a key as long as its
/// hash, and a short one can be guessed offline from any token.
const MIN_PRODUCTION_KEY_BYTES: usize = 32;

/// The JWT key: `SECRET_KEY`, or a development key kept in the data directory. An
/// empty (or blank) `SECRET_KEY` is no key at all, never a key of no bytes: signing
/// with nothing would let anyone mint tokens.
fn signing_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    let given = config
        .secret_key
        .as_deref()
        .filter(|k| !k.trim().is_empty());
    match given {
        Some(key) if key.len() >= MIN_PRODUCTION_KEY_BYTES => return Ok(key.as_bytes().to_vec()),
        Some(_) if config.production => anyhow::bail!(
            "--production requires a SECRET_KEY of at least {MIN_PRODUCTION_KEY_BYTES} bytes"
        ),
        Some(key) => {
            tracing::warn!("SECRET_KEY is shorter than 32 bytes; use a long random key");
            return Ok(key.as_bytes().to_vec());
        }
        None if config.production => anyhow::bail!(
            "--production requires SECRET_KEY: refusing to sign tokens with a development key"
        ),
        None => {}
    }
    let key = dev_key(&config.data_dir)?;
    tracing::warn!(
        "SECRET_KEY is not set: using a generated DEVELOPMENT key from {}. Set SECRET_KEY in production.",
        config.data_dir.join(DEV_KEY_FILE).display()
    );
    Ok(key)
}

fn dev_key(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(DEV_KEY_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing.trim().len() >= 32 {
            return Ok(existing.trim().as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key: String = (0..64)
        .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
        .collect();
    std::fs::write(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    Ok(key.into_bytes())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn production(args: &[&str]) -> anyhow::Result<()> {
        let mut argv = vec!["chat-server", "--production"];
        argv.extend_from_slice(args);
        refuse_unsafe_production(&Config::try_parse_from(argv)?)
    }

    #[test]
    fn production_needs_tls_a_proxy_or_loopback() {
        assert!(production(&["--listen", "0.0.0.0:8000"]).is_err());
        assert!(production(&["--listen", "[::]:8000"]).is_err());
        assert!(production(&["--listen", "0.0.0.0:8000", "--behind-proxy"]).is_ok());
        assert!(production(&["--listen", "127.0.0.1:8000"]).is_ok());
        assert!(production(&[
            "--listen",
            "0.0.0.0:8443",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem"
        ])
        .is_ok());
        assert!(production(&["--listen", "127.0.0.1:8000", "--allowed-origins", "*"]).is_err());
    }

    #[test]
    fn production_needs_a_long_secret_key() {
        let key = |args: &[&str]| {
            let mut argv = vec!["chat-server"];
            argv.extend_from_slice(args);
            signing_key(&Config::try_parse_from(argv).expect("flags parse"))
        };
        let long = "k".repeat(MIN_PRODUCTION_KEY_BYTES);
        assert!(key(&["--production", "--secret-key", ""]).is_err());
        assert!(key(&["--production", "--secret-key", "   "]).is_err());
        assert!(key(&["--production", "--secret-key", "short"]).is_err());
        assert_eq!(
            key(&["--production", "--secret-key", &long]).expect("long key"),
            long.as_bytes()
        );
        assert_eq!(key(&["--secret-key", "short"]).expect("dev"), b"short");
        // Empty without --production: the generated development key, never no key.
        let dir = std::env::temp_dir().join(format!("chat-key-{}", std::process::id()));
        let dir = dir.to_str().expect("utf-8 path");
        let generated = key(&["--secret-key", "", "--data-dir", dir]).expect("dev key");
        assert!(generated.len() >= 32);
        let _ = std::fs::remove_dir_all(dir);
    }
}
