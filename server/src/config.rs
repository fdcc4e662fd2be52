//! The server's whole configuration: one struct, every flag also an environment
//! variable, every default documented in `--help`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which I/O driver the shards run on.
/// How much one WebSocket connection may queue: past `soft` it is falling behind and is
/// closed once it stays there for `slow_for`; past `hard` it is closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub soft: usize,
    pub hard: usize,
    pub slow_for: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, otherwise epoll (logged).
    Auto,
    /// io_uring only; refuse to start without it.
    Uring,
    /// epoll only.
    Epoll,
}

/// How log lines are written to stderr.
/// What becomes of a deleted account's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeletedMessages {
    /// They stay, from a sender named `deleted user <id>`.
    Keep,
    /// They are erased, as a delete erases a message (in the background).
    Erase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields, and the
    /// fields of every span it happened in (request id, shard, user, conversation).
    Json,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "Thread-per-core WebSocket chat server"
)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT). Port 0 picks a free port.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Once every shard listens, write `http://ADDRESS` (the bound address, port 0
    /// resolved) to this file: the readiness signal for supervisors and test harnesses.
    #[arg(long, env = "READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Number of shards (threads, one runtime each). Default: available cores.
    #[arg(long, env = "SHARDS")]
    pub shards: Option<usize>,

    /// I/O driver of the shards.
    #[arg(long, env = "IO_DRIVER", value_enum, default_value = "auto")]
    pub io_driver: IoDriver,

    /// PostgreSQL URL (`postgres://...`). Absent: the embedded SQLite store in `--data-dir`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory of the embedded store and of the generated development key.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// JWT signing key (HS256), at least 32 bytes with `--production`. Absent or empty:
    /// a development key generated into `--data-dir` (refused with `--production`).
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Refuse what is unsafe on a public host: a missing or short (under 32 bytes)
    /// `SECRET_KEY`,
    /// `--allowed-origins '*'`, and plain HTTP on a non-loopback address (unless
    /// `--behind-proxy`).
    #[arg(long, env = "PRODUCTION")]
    pub production: bool,

    /// PEM certificate chain: with `--tls-key`, the port serves `https://` and `wss://`
    /// (TLS 1.2 and 1.3). Both files are read again on SIGHUP.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// TLS ends at a proxy in front of this server: `--production` then accepts plain
    /// HTTP on a public address.
    #[arg(long, env = "BEHIND_PROXY")]
    pub behind_proxy: bool,

    /// Lifetime of access tokens, in minutes. Short, because a client renews them with
    /// its refresh token; tokens of an ended session stop working at once anyway.
    #[arg(long, env = "ACCESS_TOKEN_EXPIRE_MINUTES", default_value_t = 15)]
    pub token_ttl_minutes: u64,

    /// Days a session lasts without being used: its refresh token stops working
    /// then (each refresh starts the period again).
    #[arg(long, env = "REFRESH_TOKEN_EXPIRE_DAYS", default_value_t = 30)]
    pub refresh_ttl_days: u64,

    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds a client has to send a whole request, head and body; later: 408 and
    /// the connection is closed.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30", value_parser = seconds)]
    pub request_timeout: Duration,

    /// Open connections (HTTP and WebSocket) from one client address (IPv6: /64) on
    /// this node; beyond it a new connection gets 429 and is closed. Peers listed in
    /// `--trusted-proxies`, and loopback peers, are not counted. 0: no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1024)]
    pub max_connections_per_address: usize,

    /// Open WebSockets of one user on this node; beyond it an upgrade is closed with
    /// 1008 `Too many connections`. 0: no limit.
    #[arg(long, env = "WS_MAX_PER_USER", default_value_t = 32)]
    pub ws_max_per_user: usize,

    /// Conversations one user stream (`/api/chat/ws`) carries: the user's most
    /// recently active ones when it opens, and those the user is added to while
    /// there is room. Its `ready` event says which.
    #[arg(long, env = "STREAM_MAX_CONVERSATIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub stream_max_conversations: u32,

    /// Count loopback peers against the per-address limits
    /// (`--max-connections-per-address`, `--register-max-per-address`). Off by
    /// default: a peer on this host is a local reverse proxy or the operator's own
    /// tools (a proxy elsewhere belongs in `--trusted-proxies`).
    #[arg(long, env = "LIMIT_LOOPBACK")]
    pub limit_loopback: bool,

    /// Registrations from one client address (IPv6: /64) per `--register-window`;
    /// beyond it 429 with `Retry-After`. Loopback is not counted. 0: no limit.
    #[arg(long, env = "REGISTER_MAX_PER_ADDRESS", default_value_t = 20)]
    pub register_max_per_address: u32,

    /// The registration window, in seconds.
    #[arg(long, env = "REGISTER_WINDOW", default_value = "3600", value_parser = seconds)]
    pub register_window: Duration,

    /// Conversations one user may create per `--new-conversation-window`; beyond it
    /// 429 with `Retry-After`. 0: no limit.
    #[arg(long, env = "MAX_NEW_CONVERSATIONS", default_value_t = 100)]
    pub max_new_conversations: u32,

    /// The conversation-creation window, in seconds.
    #[arg(long, env = "NEW_CONVERSATION_WINDOW", default_value = "3600", value_parser = seconds)]
    pub new_conversation_window: Duration,

    /// Most participants one conversation may have (the creator included); creating
    /// or adding beyond it: 422.
    #[arg(long, env = "MAX_PARTICIPANTS", default_value_t = 10_000)]
    pub max_participants: usize,

    /// What becomes of a deleted account's messages: `keep` (from a deleted user) or
    /// `erase`.
    #[arg(long, env = "DELETED_ACCOUNT_MESSAGES", value_enum, default_value_t = DeletedMessages::Keep)]
    pub deleted_account_messages: DeletedMessages,

    /// User searches by name prefix one user may make per minute; beyond it 429 with
    /// `Retry-After`. 0: no limit.
    #[arg(long, env = "USER_SEARCH_PER_MINUTE", default_value_t = 60)]
    pub user_search_per_minute: u32,

    /// Threads hashing passwords (argon2id), off the shards.
    #[arg(long, env = "HASH_THREADS", default_value_t = 2)]
    pub hash_threads: usize,

    /// Password hashes waiting beyond this are refused with 503 instead of queued.
    #[arg(long, env = "HASH_QUEUE", default_value_t = 1024)]
    pub hash_queue: usize,

    /// Connections per store pool (PostgreSQL) or reader connections (SQLite).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,

    /// Most messages committed in one batch.
    #[arg(long, env = "WRITER_MAX_BATCH", default_value_t = 1024)]
    pub writer_max_batch: usize,

    /// Most content bytes committed in one batch.
    #[arg(long, env = "WRITER_MAX_BATCH_BYTES", default_value_t = 4 << 20)]
    pub writer_max_batch_bytes: usize,

    /// Longest a message waits for its batch to fill, in microseconds. 0: a message
    /// that finds the writer idle is committed at once; those arriving during a
    /// commit form the next batch.
    #[arg(long, env = "WRITER_MAX_DELAY_US", default_value_t = 0)]
    pub writer_max_delay_us: u64,

    /// Largest WebSocket message accepted, in bytes (larger: close 1009).
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub ws_max_message_bytes: usize,

    /// Events of one WebSocket refused for the rate limit within 10 s after which the
    /// socket is closed with 1008 `Too many events`: a client that ignores its
    /// `Rate limit exceeded` errors is cut off instead of keeping a shard busy
    /// refusing it. 0: never closed.
    #[arg(long, env = "WS_FLOOD_LIMIT", default_value_t = 100)]
    pub ws_flood_limit: u32,

    /// Seconds a fragmented WebSocket message may stay unfinished; later: close 1008.
    #[arg(long, env = "WS_FRAGMENT_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub ws_fragment_timeout: Duration,

    /// Most frames one fragmented WebSocket message may have; more: close 1008.
    #[arg(long, env = "WS_MAX_FRAGMENTS", default_value_t = 64)]
    pub ws_max_fragments: usize,

    /// Bytes queued for one connection that count as falling behind: a connection
    /// whose queue stays over this for `--ws-slow-client-seconds` is closed with 1013.
    /// A replay never queues past it.
    #[arg(long, env = "WS_OUTBOUND_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub ws_outbound_limit_bytes: usize,

    /// Bytes queued for one connection that close it with 1013 at once, whatever the
    /// time; 0 means four times `--ws-outbound-limit-bytes`.
    #[arg(long, env = "WS_OUTBOUND_HARD_LIMIT_BYTES", default_value_t = 0)]
    pub ws_outbound_hard_limit_bytes: usize,

    /// How long a connection's queue may stay over `--ws-outbound-limit-bytes` (a
    /// client that does not read) before it is closed with 1013, in seconds.
    #[arg(long, env = "WS_SLOW_CLIENT_SECONDS", default_value_t = 10)]
    pub ws_slow_client_seconds: u64,

    /// Conversations with more users connected than this announce joins and leaves
    /// without the `active_users` list (with `active_count`), at most once per
    /// `--presence-interval-ms`; the list is paged over REST instead.
    #[arg(long, env = "PRESENCE_LIST_LIMIT", default_value_t = 200)]
    pub presence_list_limit: usize,

    /// Above the presence list limit, the shortest time between two joined/left
    /// announcements of one conversation; changes in between are summed up.
    #[arg(long, env = "PRESENCE_INTERVAL_MS", default_value_t = 1000)]
    pub presence_interval_ms: u64,

    /// Sustained events per second one user may send (over all their connections on a
    /// shard; over the whole cluster with `--redis-url`).
    #[arg(long, env = "WS_RATE_PER_SECOND", default_value_t = 20.0)]
    pub ws_rate_per_second: f64,

    /// Burst of events a user may send above the sustained rate.
    #[arg(long, env = "WS_RATE_BURST", default_value_t = 60.0)]
    pub ws_rate_burst: f64,

    /// Messages waiting for the writer beyond this are refused with an error event.
    #[arg(long, env = "WRITER_QUEUE_LIMIT", default_value_t = 100_000)]
    pub writer_queue_limit: usize,

    /// Content bytes waiting for the writer beyond this are refused the same way.
    #[arg(long, env = "WRITER_QUEUE_LIMIT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub writer_queue_limit_bytes: usize,

    /// Edits, deletes and reactions of one conversation waiting their turn (they are
    /// applied one at a time) beyond this are refused with an error event.
    #[arg(long, env = "CHANGES_QUEUE_LIMIT", default_value_t = 1000)]
    pub changes_queue_limit: u32,

    /// How long shutdown waits for in-flight requests and connections, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    /// Seconds between the WebSocket pings the server sends to every client.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "25", value_parser = seconds)]
    pub ws_ping_interval: Duration,

    /// Seconds without any frame from a client (pongs included) before its connection
    /// is closed with 1001, so a peer that vanished leaves presence.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub ws_idle_timeout: Duration,

    /// Seconds of silence before TCP keepalive probes start on accepted sockets; 0: off.
    #[arg(long, env = "TCP_KEEPALIVE_SECONDS", default_value_t = 60)]
    pub tcp_keepalive_seconds: u64,

    /// Failed logins for one username from one client address, within the window,
    /// after which that pair gets 429 until the window ends.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 10)]
    pub login_max_failures: u32,

    /// Failed logins from one client address (any usernames; IPv6 by /64) within the
    /// window, after which that address gets 429 until the window ends.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ADDRESS", default_value_t = 100)]
    pub login_max_failures_per_address: u32,

    /// The login failure window, in seconds.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW", default_value = "900", value_parser = seconds)]
    pub login_failure_window: Duration,

    /// Browser origins (`https://app.example.com`, comma-separated) allowed to call the
    /// API across origins (CORS) and, with `--production`, to open WebSockets (without
    /// it any origin may); `*` allows any (refused with `--production`). Requests
    /// without `Origin` (non-browser clients) and from the server's own origin are
    /// always allowed.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Serve `GET /metrics` on this address (`127.0.0.1:9100`, say) instead of on the
    /// service port, so scrapes stay off the public listener.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log line format on stderr (`RUST_LOG` sets what is logged).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Redis URL (`redis://HOST:PORT/DB`). Present: this node joins the cluster of every
    /// node configured with the same Redis, key prefix and database, and they share
    /// live events, presence and rate limits through it. Absent: one node, no Redis.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel this cluster uses, so several clusters
    /// (or test runs) can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "chat")]
    pub redis_prefix: String,

    /// Seconds after its last heartbeat in Redis that a node counts as gone: its users
    /// leave presence and the others announce that they left.
    #[arg(long, env = "NODE_TTL", default_value = "15", value_parser = seconds)]
    pub node_ttl: Duration,

    /// Proxies whose `X-Forwarded-For` is believed (comma-separated addresses or
    /// CIDR ranges). From any other peer the header is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = ip_range)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A positive number of seconds, fractions allowed.
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("not a number: {s}"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("must be a positive number of seconds: {s}"))
}

/// `10.0.0.1`, `10.0.0.0/8` or `fd00::/8`.
fn ip_range(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("not an address or CIDR range: {s}"))
}

impl Config {
    /// Whether the per-address limits count a client at `address` (a client
    /// bucket): loopback only with `--limit-loopback`.
    pub fn counts_address(&self, address: std::net::IpAddr) -> bool {
        self.limit_loopback || !address.is_loopback()
    }

    /// The queue bounds of one WebSocket connection.
    pub fn outbound_limits(&self) -> Outbound {
        let soft = self.ws_outbound_limit_bytes;
        Outbound {
            soft,
            hard: match self.ws_outbound_hard_limit_bytes {
                0 => soft.saturating_mul(4),
                hard => hard.max(soft),
            },
            slow_for: Duration::from_secs(self.ws_slow_client_seconds),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_minutes.saturating_mul(60))
    }

    pub fn refresh_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_ttl_days.saturating_mul(24 * 3600))
    }

    pub fn writer_max_delay(&self) -> Duration {
        Duration::from_micros(self.writer_max_delay_us)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The certificate and key files, when the server terminates TLS itself.
    pub fn tls_files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }

    pub fn tcp_keepalive(&self) -> Option<Duration> {
        (self.tcp_keepalive_seconds > 0).then(|| Duration::from_secs(self.tcp_keepalive_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::try_parse_from(["chat-server"]).expect("defaults parse");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(c.io_driver, IoDriver::Auto);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.token_ttl(), Duration::from_secs(15 * 60));
        assert_eq!(c.refresh_ttl(), Duration::from_secs(30 * 24 * 3600));
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.ws_max_message_bytes, 64 << 10);
        assert_eq!(c.ws_ping_interval, Duration::from_secs(25));
        assert_eq!(c.ws_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.tcp_keepalive(), Some(Duration::from_secs(60)));
        assert_eq!(c.login_max_failures, 10);
        assert_eq!(c.login_max_failures_per_address, 100);
        assert_eq!(c.login_failure_window, Duration::from_secs(900));
        assert!(c.trusted_proxies.is_empty());
        assert!(!c.limit_loopback);
        assert!(c.redis_url.is_none());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.allowed_origins.is_empty());
        assert_eq!(c.redis_prefix, "chat");
        assert_eq!(c.node_ttl, Duration::from_secs(15));
        assert!(c.shard_count() >= 1);
        assert!(c.tls_cert.is_none() && c.tls_key.is_none() && !c.behind_proxy);
        assert!(c.metrics_listen.is_none());
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections_per_address, 1024);
        assert_eq!(c.ws_max_per_user, 32);
        assert_eq!(c.ws_flood_limit, 100);
        assert_eq!(c.register_max_per_address, 20);
        assert_eq!(c.register_window, Duration::from_secs(3600));
        assert_eq!(c.max_new_conversations, 100);
        assert_eq!(c.new_conversation_window, Duration::from_secs(3600));
        assert_eq!(c.max_participants, 10_000);
        assert_eq!(c.deleted_account_messages, DeletedMessages::Keep);
        assert_eq!(c.user_search_per_minute, 60);
        assert_eq!(c.ws_fragment_timeout, Duration::from_secs(10));
        assert_eq!(c.ws_max_fragments, 64);
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "chat-server",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "4",
            "--io-driver",
            "epoll",
            "--database-url",
            "postgres://postgres@127.0.0.1/x",
            "--production",
            "--ws-ping-interval",
            "0.5",
            "--trusted-proxies",
            "10.0.0.1,fd00::/8",
        ])
        .expect("flags parse");
        assert_eq!(c.ws_ping_interval, Duration::from_millis(500));
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.shard_count(), 4);
        assert_eq!(c.io_driver, IoDriver::Epoll);
        assert!(c.production);
        assert!(c.database_url.is_some());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::try_parse_from(["chat-server", "--io-driver", "kqueue"]).is_err());
        assert!(Config::try_parse_from(["chat-server", "--listen", "nowhere"]).is_err());
        assert!(Config::try_parse_from(["chat-server", "--shards", "-1"]).is_err());
        assert!(Config::try_parse_from(["chat-server", "--ws-idle-timeout", "0"]).is_err());
        assert!(Config::try_parse_from(["chat-server", "--ws-ping-interval", "-1"]).is_err());
        assert!(Config::try_parse_from(["chat-server", "--trusted-proxies", "proxy"]).is_err());
        // A certificate without its key, or a key without its certificate.
        assert!(Config::try_parse_from(["chat-server", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["chat-server", "--tls-key", "k.pem"]).is_err());
    }
}
