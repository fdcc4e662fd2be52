//! A test cluster: several real `chat-server` nodes on one scratch PostgreSQL database
//! and one Redis key prefix of their own, optionally reaching Redis through a relay the
//! test can cut. Dropping it stops the nodes, drops the database and deletes the keys.

use std::time::Duration;

use anyhow::Context;
use testkit::{ScratchDatabase, ScratchPrefix};

use crate::client::Api;
use crate::realtime::TcpRelay;
use crate::server::{IoDriver, ServerOptions, Store, TestServer};

pub struct TestCluster {
    // Field order is drop order: nodes stop before their database and keys go.
    nodes: Vec<TestServer>,
    relay: Option<TcpRelay>,
    redis: ScratchPrefix,
    db: ScratchDatabase,
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub io_driver: IoDriver,
    /// Seconds after which a silent node counts as gone.
    pub node_ttl: f64,
    /// Reach Redis through a relay the test can cut (`TestCluster::relay`).
    pub via_relay: bool,
    /// Each user's event budget: per second, burst.
    pub rate: (f64, f64),
    /// More flags for every node.
    pub extra_args: Vec<String>,
    /// More environment variables for every node (`RUST_LOG`, say).
    pub env: Vec<(String, String)>,
}

impl ClusterOptions {
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            io_driver: IoDriver::Uring,
            node_ttl: 15.0,
            via_relay: false,
            rate: (1000.0, 1000.0),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl TestCluster {
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        let db = ScratchDatabase::create("chat_cluster").await?;
        let redis = ScratchPrefix::create("chat-cluster")?;
        let relay = if opts.via_relay {
            Some(TcpRelay::start(testkit::redis::address()?).await?)
        } else {
            None
        };
        let redis_url = match &relay {
            Some(relay) => format!("redis://{}", relay.addr()),
            None => testkit::redis::url(),
        };
        let mut cluster = Self {
            nodes: Vec::new(),
            relay,
            redis,
            db,
        };
        for i in 0..opts.nodes {
            let mut server = ServerOptions::new(Store::Postgres, opts.io_driver)
                .shards(2)
                .arg("--redis-url")
                .arg(&redis_url)
                .arg("--redis-prefix")
                .arg(cluster.redis.prefix())
                .arg("--node-ttl")
                .arg(opts.node_ttl.to_string())
                .arg("--ws-rate-per-second")
                .arg(opts.rate.0.to_string())
                .arg("--ws-rate-burst")
                .arg(opts.rate.1.to_string());
            server.extra_args.extend(opts.extra_args.iter().cloned());
            server.env.extend(opts.env.iter().cloned());
            let node = TestServer::start_on_cluster(server, cluster.db.url(), cluster.secret())
                .await
                .with_context(|| format!("starting node {i}"))?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn secret(&self) -> String {
        // One key for the whole cluster, derived from its unique prefix.
        format!("{}-signing-key-0123456789abcdef", self.redis.prefix())
    }

    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut TestServer {
        &mut self.nodes[i]
    }

    pub fn api(&self, i: usize) -> Api {
        self.nodes[i].api()
    }

    /// The relay in front of Redis (with `via_relay`).
    pub fn relay(&self) -> anyhow::Result<&TcpRelay> {
        self.relay
            .as_ref()
            .context("the cluster was started without a relay")
    }

    /// Every Redis key the cluster holds now.
    pub fn redis_keys(&self) -> anyhow::Result<Vec<String>> {
        self.redis.keys()
    }

    /// Records everything the nodes publish from now on.
    pub fn listen(&self) -> anyhow::Result<testkit::redis::Listener> {
        self.redis.listen()
    }

    /// Waits until `/ready` on node `i` reports `redis` as `want`.
    async fn wait_redis(&self, i: usize, want: &str) -> anyhow::Result<()> {
        let api = self.api(i);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let body = api.get("/ready", None).await?.json()?;
            if body["redis"] == want {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "node {i}: /ready still says {body} (want redis {want})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node's `/ready` reports `redis` as `want`.
    pub async fn wait_redis_everywhere(&self, want: &str) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.wait_redis(i, want).await?;
        }
        Ok(())
    }

    /// Cuts every node off Redis (the relay) and waits until each says `degraded`.
    pub async fn cut_redis(&self) -> anyhow::Result<()> {
        self.relay()?.cut();
        self.wait_redis_everywhere("degraded").await
    }

    /// Gives Redis back (the relay) and waits until each node says `ok`.
    pub async fn restore_redis(&self) -> anyhow::Result<()> {
        self.relay()?.restore();
        self.wait_redis_everywhere("ok").await
    }

    /// Panics with every node's output when `result` is an error.
    pub fn finish(self, result: anyhow::Result<()>) {
        if let Err(err) = result {
            let mut logs = String::new();
            for (i, node) in self.nodes.iter().enumerate() {
                logs.push_str(&format!(
                    "--- node {i} output ---\n{}\n",
                    node.stderr_tail(8 * 1024)
                ));
            }
            drop(self);
            panic!("cluster scenario failed: {err:#}\n{logs}");
        }
    }
}
