//! The series `GET /metrics` exposes, in the Prometheus text format (prometheus-client),
//! and the handles the rest of the server counts with.
//!
//! What the WebSocket path counts is per shard: each shard holds its own handles
//! (`ShardMetrics`, series labelled `shard`), atomics no other thread writes, so a
//! count costs one uncontended atomic add; the shards' series meet only when a scrape
//! encodes them. Counting never blocks, never allocates and never fails. The list of
//! series with their meaning is in `docs/operations.md`; the dashboard in
//! `deploy/grafana-dashboard.json` uses exactly these names.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What a client's WebSocket event was, for `chat_client_events_total{type}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Message,
    Typing,
    Reaction,
    Edit,
    Delete,
    Other,
}

impl EventKind {
    const ALL: [EventKind; 6] = [
        EventKind::Message,
        EventKind::Typing,
        EventKind::Reaction,
        EventKind::Edit,
        EventKind::Delete,
        EventKind::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Typing => "typing",
            EventKind::Reaction => "reaction",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::Other => "other",
        }
    }
}

/// Why a client's event or frame was refused, for `chat_refusals_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the user's event rate.
    RateLimit,
    /// A frame that breaks RFC 6455 (the connection is closed).
    BadFrame,
    /// An event that does not parse or validate, or that the hub refuses.
    Invalid,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::RateLimit, Refusal::BadFrame, Refusal::Invalid];

    fn label(self) -> &'static str {
        match self {
            Refusal::RateLimit => "rate_limit",
            Refusal::BadFrame => "bad_frame",
            Refusal::Invalid => "invalid",
        }
    }
}

/// How a WebSocket upgrade request ended, for `chat_ws_upgrades_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    Accepted,
    /// Missing, bad or expired token, or its user is gone (close 1008).
    Unauthorized,
    /// Not a participant, or no such conversation (close 1008).
    Forbidden,
    /// The store could not be asked (close 1011).
    Unavailable,
    /// A browser origin not in `--allowed-origins` (403).
    Origin,
    /// Not a valid WebSocket handshake (426 or 422).
    BadRequest,
    /// The user holds `--ws-max-per-user` sockets already (close 1008).
    Limited,
}

impl Upgrade {
    const ALL: [Upgrade; 7] = [
        Upgrade::Accepted,
        Upgrade::Unauthorized,
        Upgrade::Forbidden,
        Upgrade::Unavailable,
        Upgrade::Origin,
        Upgrade::BadRequest,
        Upgrade::Limited,
    ];

    fn label(self) -> &'static str {
        match self {
            Upgrade::Accepted => "accepted",
            Upgrade::Unauthorized => "unauthorized",
            Upgrade::Forbidden => "forbidden",
            Upgrade::Unavailable => "unavailable",
            Upgrade::Origin => "origin",
            Upgrade::BadRequest => "bad_request",
            Upgrade::Limited => "limited",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    shard: usize,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    shard: usize,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    shard: usize,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    shard: usize,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// The writer's series: batch sizes, commit latency, failed commits.
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub store_errors: Counter,
}

impl Default for WriterMetrics {
    /// Series nobody scrapes (store tests).
    fn default() -> Self {
        Self {
            batch_size: batch_histogram(),
            commit_seconds: seconds_histogram(),
            store_errors: Counter::default(),
        }
    }
}

/// 1 to 4096 messages.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// 100 us to about 13 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every series of the server, registered once at start-up.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_open: Family<ShardLabel, Gauge>,
    websockets_open: Family<ShardLabel, Gauge>,
    ws_upgrades: Family<ResultLabels, Counter>,
    client_events: Family<TypeLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    deliveries: Family<ShardLabel, Counter>,
    outbound_queue_bytes: Family<ShardLabel, Gauge>,
    slow_consumer_closes: Family<ShardLabel, Counter>,
    tls_handshake_failures: Family<ShardLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabel, Histogram>,
    pub writer: WriterMetrics,
    pub login_throttled: Counter,
    password_hash_queue_depth: Gauge,
    /// Registered only when the node has Redis.
    redis_up: Option<Gauge>,
}

/// What is read when a scrape comes rather than counted as it happens.
pub struct Sample {
    pub password_hash_queue_depth: usize,
    /// Whether the link to Redis is healthy; `None` without Redis.
    pub redis_up: Option<bool>,
}

impl Metrics {
    pub fn new(with_redis: bool) -> Self {
        let mut registry = Registry::with_prefix("chat");
        let m = Metrics {
            connections_open: Family::default(),
            websockets_open: Family::default(),
            ws_upgrades: Family::default(),
            client_events: Family::default(),
            refusals: Family::default(),
            deliveries: Family::default(),
            outbound_queue_bytes: Family::default(),
            slow_consumer_closes: Family::default(),
            tls_handshake_failures: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(seconds_histogram),
            writer: WriterMetrics::default(),
            login_throttled: Counter::default(),
            password_hash_queue_depth: Gauge::default(),
            redis_up: with_redis.then(Gauge::default),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_open",
            "Open TCP connections (HTTP and WebSocket)",
            m.connections_open.clone(),
        );
        r.register(
            "websockets_open",
            "Open WebSocket connections",
            m.websockets_open.clone(),
        );
        r.register(
            "ws_upgrades",
            "WebSocket upgrade requests by result",
            m.ws_upgrades.clone(),
        );
        r.register(
            "client_events",
            "Events received from WebSocket clients, by type",
            m.client_events.clone(),
        );
        r.register(
            "refusals",
            "Client events or frames refused, by reason",
            m.refusals.clone(),
        );
        r.register(
            "deliveries",
            "Conversation events queued to WebSocket connections",
            m.deliveries.clone(),
        );
        r.register(
            "outbound_queue_bytes",
            "Bytes queued to WebSocket clients and not yet written (sampled each heartbeat)",
            m.outbound_queue_bytes.clone(),
        );
        r.register(
            "slow_consumer_closes",
            "Connections closed with 1013 because they fell too far behind",
            m.slow_consumer_closes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route template and status",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency by route template, until the response head",
            m.http_duration.clone(),
        );
        r.register(
            "writer_batch_size",
            "Messages per batch the writer commits",
            m.writer.batch_size.clone(),
        );
        r.register(
            "writer_commit_seconds",
            "Time to commit one message batch",
            m.writer.commit_seconds.clone(),
        );
        r.register(
            "store_errors",
            "Store operations that failed (unavailable or refused), batches included",
            m.writer.store_errors.clone(),
        );
        r.register(
            "login_throttled",
            "Logins refused with 429 by login throttling",
            m.login_throttled.clone(),
        );
        r.register(
            "password_hash_queue_depth",
            "Password hashes waiting for a hashing thread",
            m.password_hash_queue_depth.clone(),
        );
        if let Some(up) = &m.redis_up {
            r.register(
                "redis_up",
                "1 while the link to Redis is healthy, 0 otherwise",
                up.clone(),
            );
        }
        Metrics { registry, ..m }
    }

    /// The handles shard `shard` counts with.
    pub fn shard(&self, shard: usize) -> ShardMetrics {
        let label = ShardLabel { shard };
        ShardMetrics {
            shard,
            connections_open: self.connections_open.get_or_create_owned(&label),
            websockets_open: self.websockets_open.get_or_create_owned(&label),
            deliveries: self.deliveries.get_or_create_owned(&label),
            outbound_queue_bytes: self.outbound_queue_bytes.get_or_create_owned(&label),
            slow_consumer_closes: self.slow_consumer_closes.get_or_create_owned(&label),
            tls_handshake_failures: self.tls_handshake_failures.get_or_create_owned(&label),
            client_events: EventKind::ALL.map(|kind| {
                self.client_events.get_or_create_owned(&TypeLabels {
                    shard,
                    r#type: kind.label(),
                })
            }),
            refusals: Refusal::ALL.map(|reason| {
                self.refusals.get_or_create_owned(&ReasonLabels {
                    shard,
                    reason: reason.label(),
                })
            }),
            upgrades: Upgrade::ALL.map(|result| {
                self.ws_upgrades.get_or_create_owned(&ResultLabels {
                    shard,
                    result: result.label(),
                })
            }),
            http_requests: self.http_requests.clone(),
            http_duration: self.http_duration.clone(),
        }
    }

    /// The text a scrape gets.
    pub fn render(&self, sample: Sample) -> String {
        self.password_hash_queue_depth
            .set(i64::try_from(sample.password_hash_queue_depth).unwrap_or(i64::MAX));
        if let (Some(gauge), Some(up)) = (&self.redis_up, sample.redis_up) {
            gauge.set(i64::from(up));
        }
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One shard's handles: what it counts touches nothing another shard writes.
#[derive(Debug)]
pub struct ShardMetrics {
    pub shard: usize,
    pub connections_open: Gauge,
    pub websockets_open: Gauge,
    pub deliveries: Counter,
    pub outbound_queue_bytes: Gauge,
    pub slow_consumer_closes: Counter,
    pub tls_handshake_failures: Counter,
    client_events: [Counter; EventKind::ALL.len()],
    refusals: [Counter; Refusal::ALL.len()],
    upgrades: [Counter; Upgrade::ALL.len()],
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabel, Histogram>,
}

impl ShardMetrics {
    pub fn event(&self, kind: EventKind) {
        self.client_events[kind as usize].inc();
    }

    pub fn refusal(&self, reason: Refusal) {
        self.refusals[reason as usize].inc();
    }

    pub fn upgrade(&self, result: Upgrade) {
        self.upgrades[result as usize].inc();
    }

    /// One HTTP request on route template `route` (the path for unknown routes is
    /// never a label: it would let clients mint series).
    pub fn http(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                shard: self.shard,
                route,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_count_apart_and_meet_in_the_scrape() {
        let metrics = Metrics::new(true);
        let (a, b) = (metrics.shard(0), metrics.shard(1));
        a.deliveries.inc_by(3);
        b.deliveries.inc();
        a.event(EventKind::Message);
        b.refusal(Refusal::RateLimit);
        a.upgrade(Upgrade::Unauthorized);
        a.http("/api/auth/login", 429, Duration::from_millis(2));
        metrics.writer.batch_size.observe(10.0);
        let text = metrics.render(Sample {
            password_hash_queue_depth: 4,
            redis_up: Some(true),
        });
        for line in [
            "chat_deliveries_total{shard=\"0\"} 3",
            "chat_deliveries_total{shard=\"1\"} 1",
            "chat_client_events_total{shard=\"0\",type=\"message\"} 1",
            "chat_refusals_total{shard=\"1\",reason=\"rate_limit\"} 1",
            "chat_ws_upgrades_total{shard=\"0\",result=\"unauthorized\"} 1",
            "chat_http_requests_total{shard=\"0\",route=\"/api/auth/login\",status=\"429\"} 1",
            "chat_http_request_duration_seconds_count{route=\"/api/auth/login\"} 1",
            "chat_writer_batch_size_count 1",
            "chat_password_hash_queue_depth 4",
            "chat_redis_up 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!Metrics::new(false)
            .render(Sample {
                password_hash_queue_depth: 0,
                redis_up: None
            })
            .contains("redis_up"));
    }
}
