//! What every shard shares: configuration, the store handle, the message writer,
//! token keys, the password pool, login throttling, the cross-shard bus, the TLS
//! configuration, the metrics and, in a cluster, the link to the other nodes. Built once at start-up
//! and read-only afterwards (but for the TLS certificate a SIGHUP swaps), so shards
//! share it without locks.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::{
    Budgets, JwtKeys, LoginThrottle, PasswordPool, Revocations, TokenError, Verified,
};
use crate::bus::Bus;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::ids::UserId;
use crate::limits::{Quota, Slots};
use crate::metrics::{Metrics, Sample};
use crate::store::writer::WriterHandle;
use crate::store::Db;
use crate::tls::Tls;

pub struct App {
    pub config: Config,
    pub db: Db,
    pub writer: WriterHandle,
    pub jwt: JwtKeys,
    /// The tokens that no longer count (ended sessions), shared with the cluster.
    pub revocations: Arc<Revocations>,
    pub passwords: PasswordPool,
    pub logins: LoginThrottle,
    /// Each user's WebSocket event budget, shared by every shard.
    pub budgets: Budgets,
    pub limits: Limits,
    pub bus: Arc<Bus>,
    /// The other nodes, through Redis (`--redis-url`); `None` for a single node.
    pub cluster: Option<Cluster>,
    /// TLS termination (`--tls-cert`); `None` for plain HTTP.
    pub tls: Option<Tls>,
    pub metrics: Metrics,
}

/// What one client may hold or do per window on this node (`limits`), each bound
/// built from its flag.
pub struct Limits {
    /// Open connections per client address (`--max-connections-per-address`).
    pub connections: Slots<IpAddr>,
    /// Open WebSockets per user (`--ws-max-per-user`).
    pub websockets: Slots<UserId>,
    /// Registrations per client address (`--register-max-per-address`).
    pub registrations: Quota<IpAddr>,
    /// Conversations created per user (`--max-new-conversations`).
    pub new_conversations: Quota<UserId>,
    /// User searches by prefix per user (`--user-search-per-minute`).
    pub user_searches: Quota<UserId>,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Self {
            connections: Slots::new(config.max_connections_per_address),
            websockets: Slots::new(config.ws_max_per_user),
            registrations: Quota::new(config.register_max_per_address, config.register_window),
            new_conversations: Quota::new(
                config.max_new_conversations,
                config.new_conversation_window,
            ),
            user_searches: Quota::new(
                config.user_search_per_minute,
                std::time::Duration::from_secs(60),
            ),
        }
    }
}

impl App {
    /// The access token's claims, if it is valid and still counts (its session has
    /// not ended, its account is not gone).
    pub fn authenticate(&self, token: &str) -> Result<Verified, TokenError> {
        let verified = self.jwt.verify(token)?;
        if self.revocations.admits(&verified) {
            Ok(verified)
        } else {
            Err(TokenError)
        }
    }

    /// What `/metrics` answers: the counted series and those read now.
    pub fn scrape(&self) -> String {
        self.metrics.render(Sample {
            password_hash_queue_depth: self.passwords.queued(),
            redis_up: self.cluster.as_ref().map(Cluster::is_healthy),
        })
    }
}
