//! What every shard shares: configuration, the store handle, the message writer,
//! token keys, the password pool, login throttling, the cross-shard bus, the TLS
//! configuration, the metrics and, in a cluster, the link to the other nodes. Built once at start-up
//! and read-only afterwards (but for the TLS certificate a SIGHUP swaps), so shards
//! share it without locks.

use std::sync::Arc;

use crate::auth::{Budgets, JwtKeys, LoginThrottle, PasswordPool};
use crate::bus::Bus;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{Metrics, Sample};
use crate::store::writer::WriterHandle;
use crate::store::Db;
use crate::tls::Tls;

pub struct App {
    pub config: Config,
    pub db: Db,
    pub writer: WriterHandle,
    pub jwt: JwtKeys,
    pub passwords: PasswordPool,
    pub logins: LoginThrottle,
    /// Each user's WebSocket event budget, shared by every shard.
    pub budgets: Budgets,
    pub bus: Arc<Bus>,
    /// The other nodes, through Redis (`--redis-url`); `None` for a single node.
    pub cluster: Option<Cluster>,
    /// TLS termination (`--tls-cert`); `None` for plain HTTP.
    pub tls: Option<Tls>,
    pub metrics: Metrics,
}

impl App {
    /// What `/metrics` answers: the counted series and those read now.
    pub fn scrape(&self) -> String {
        self.metrics.render(Sample {
            password_hash_queue_depth: self.passwords.queued(),
            redis_up: self.cluster.as_ref().map(Cluster::is_healthy),
        })
    }
}
