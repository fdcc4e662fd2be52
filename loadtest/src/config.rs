//! The harness's whole configuration: its own flags (workload, capacity search, local
//! server, client network, output) plus every Goose flag, flattened in. Every flag is
//! also an environment variable: the harness's own are named in `--help`, and each Goose
//! flag `--some-flag` reads `LOADTEST_SOME_FLAG` (for example `LOADTEST_USERS=5000`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};
use goose::config::GooseConfiguration;

use crate::scenario::Scenario;

/// Users simulated when `--users` is not given.
pub const DEFAULT_USERS: usize = 1000;
/// Measured time when `--run-time` is not given.
pub const DEFAULT_RUN_TIME: Duration = Duration::from_secs(30);

const ABOUT: &str = "Capacity harness for the chat server: simulated users chat over \
    WebSockets while Goose drives their REST calls. Without --host it starts a local release \
    server, runs, and stops it.";

const AFTER_HELP: &str = "Goose's own options follow the harness's. --users (default 1000) is \
    the number of simulated users and --run-time (default 30s) the measured time once every \
    user has joined; --report-file writes Goose's HTML/JSON report. Every option is also an \
    environment variable: LOADTEST_<OPTION>, e.g. LOADTEST_USERS=5000.";

#[derive(Clone, Debug, Parser)]
#[command(name = "loadtest")]
pub struct Config {
    // ----- workload -----
    /// Members of each group conversation (2-64; the last group of a layer takes the
    /// remainder, so it may be larger).
    #[arg(long, env = "LOADTEST_GROUP_SIZE", default_value_t = 10, help_heading = "Workload",
          value_parser = clap::value_parser!(u16).range(2..=64))]
    pub group_size: u16,

    /// Conversations each user belongs to: one WebSocket each (at most 16), or all on
    /// one user stream with --user-stream (at most 64).
    #[arg(long, env = "LOADTEST_CONVERSATIONS_PER_USER", default_value_t = 2, help_heading = "Workload",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub conversations_per_user: u16,

    /// Chat messages each user sends per second, over all its conversations (Poisson
    /// arrivals).
    #[arg(
        long,
        env = "LOADTEST_MESSAGE_RATE",
        default_value_t = 0.5,
        help_heading = "Workload"
    )]
    pub message_rate: f64,

    /// Share of messages (0-1) preceded by a typing indicator.
    #[arg(
        long,
        env = "LOADTEST_TYPING_RATIO",
        default_value_t = 0.3,
        help_heading = "Workload"
    )]
    pub typing_ratio: f64,

    /// Length of each chat message in characters, measurement tag included.
    #[arg(
        long,
        env = "LOADTEST_MESSAGE_BYTES",
        default_value_t = 120,
        help_heading = "Workload"
    )]
    pub message_bytes: usize,

    /// Mean seconds between a user's REST activities (reading history, reconnecting).
    #[arg(
        long,
        env = "LOADTEST_THINK_TIME",
        default_value_t = 10.0,
        help_heading = "Workload"
    )]
    pub think_time: f64,

    /// Relative weight of "read history" among a user's activities.
    #[arg(
        long,
        env = "LOADTEST_HISTORY_WEIGHT",
        default_value_t = 3,
        help_heading = "Workload"
    )]
    pub history_weight: usize,

    /// Relative weight of "disconnect and reconnect one socket" (0: never).
    #[arg(
        long,
        env = "LOADTEST_RECONNECT_WEIGHT",
        default_value_t = 1,
        help_heading = "Workload"
    )]
    pub reconnect_weight: usize,

    /// Keep each user's REST connection open between its calls (`false`: every REST
    /// call asks `Connection: close`). Kept open, each user holds one more descriptor
    /// on both sides for the whole run; closing them is how 19,000 WebSockets fit under
    /// a 20,000 open-files limit.
    #[arg(
        long,
        env = "LOADTEST_REST_KEEP_ALIVE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        help_heading = "Workload"
    )]
    pub rest_keep_alive: bool,

    /// Usernames are PREFIX-0, PREFIX-1, ...; existing accounts are reused (each user
    /// logs in first and registers only when that fails). Default: a fresh random prefix
    /// per run.
    #[arg(long, env = "LOADTEST_USER_PREFIX", help_heading = "Workload")]
    pub user_prefix: Option<String>,

    /// Password of every simulated account.
    #[arg(
        long,
        env = "LOADTEST_PASSWORD",
        default_value = "loadtest-password",
        hide_env_values = true,
        help_heading = "Workload"
    )]
    pub password: String,

    /// Register/login requests in flight at once (password hashing is slow by design;
    /// more only queues on the server).
    #[arg(
        long,
        env = "LOADTEST_AUTH_CONCURRENCY",
        default_value_t = 16,
        help_heading = "Workload"
    )]
    pub auth_concurrency: usize,

    /// Seconds of chat after every user joined and before measuring (excluded from the
    /// latency figures, included in the correctness checks).
    #[arg(
        long,
        env = "LOADTEST_WARMUP",
        default_value_t = 2.0,
        help_heading = "Workload"
    )]
    pub warmup: f64,

    /// Longest wait, in seconds, for every user to register, log in, join and connect.
    #[arg(
        long,
        env = "LOADTEST_SETUP_TIMEOUT",
        default_value_t = 900.0,
        help_heading = "Workload"
    )]
    pub setup_timeout: f64,

    /// Seconds a closing socket waits for the acknowledgements of its messages in flight,
    /// and the end of the run waits for the last deliveries.
    #[arg(
        long,
        env = "LOADTEST_DRAIN_TIMEOUT",
        default_value_t = 15.0,
        help_heading = "Workload"
    )]
    pub drain_timeout: f64,

    /// A receiver that disconnects must have seen a message only when its
    /// acknowledgement came at least this many milliseconds before the disconnect
    /// (closer calls are counted as neither missing nor expected).
    #[arg(
        long,
        env = "LOADTEST_CLOSE_MARGIN_MS",
        default_value_t = 1000,
        help_heading = "Workload"
    )]
    pub close_margin_ms: u64,

    /// Events per second per user that the target server allows (its
    /// --ws-rate-per-second). With --host the harness stays under it; a server it
    /// starts itself gets limits far above any rate used.
    #[arg(
        long,
        env = "LOADTEST_SERVER_RATE_LIMIT",
        default_value_t = 20.0,
        help_heading = "Workload"
    )]
    pub server_rate_limit: f64,

    // ----- capacity search -----
    /// Capacity mode: raise the message rate step by step until p99 delivery latency
    /// passes the SLO or anything is lost; report the highest rate that held.
    #[arg(long, env = "LOADTEST_CAPACITY", help_heading = "Capacity")]
    pub capacity: bool,

    /// The p99 delivery latency objective, in milliseconds.
    #[arg(
        long,
        env = "LOADTEST_SLO_P99_MS",
        default_value_t = 100.0,
        help_heading = "Capacity"
    )]
    pub slo_p99_ms: f64,

    /// Seconds each capacity step lasts.
    #[arg(
        long,
        env = "LOADTEST_STEP_TIME",
        default_value_t = 10.0,
        help_heading = "Capacity"
    )]
    pub step_time: f64,

    /// Messages per second (all users together) of the first step. Default: users x
    /// --message-rate.
    #[arg(long, env = "LOADTEST_START_RATE", help_heading = "Capacity")]
    pub start_rate: Option<f64>,

    /// Each step's rate is the previous one times this.
    #[arg(
        long,
        env = "LOADTEST_RATE_FACTOR",
        default_value_t = 1.5,
        help_heading = "Capacity"
    )]
    pub rate_factor: f64,

    /// Most capacity steps.
    #[arg(
        long,
        env = "LOADTEST_MAX_STEPS",
        default_value_t = 15,
        help_heading = "Capacity"
    )]
    pub max_steps: usize,

    /// With --host: the pid of that server when it runs on this machine (comma-separated,
    /// one per node), so the report can state its CPU per delivery (read from /proc). A
    /// server the harness starts itself is measured without it.
    #[arg(long, env = "LOADTEST_SERVER_PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Without --host: start this many local nodes as one cluster, on one PostgreSQL
    /// database (DATABASE_URL, or a scratch database on the local PostgreSQL) and one
    /// Redis (REDIS_URL, or the local one) under a key prefix of their own; users are
    /// spread over them. 1: one node with the embedded store.
    #[arg(
        long,
        env = "LOADTEST_NODES",
        default_value_t = 1,
        help_heading = "Local server"
    )]
    pub nodes: usize,

    // ----- local server -----
    /// The chat-server binary to start when no --host is given. Default: the workspace's
    /// target/release/chat-server, built with `cargo build --release -p chat-server`.
    #[arg(long, env = "LOADTEST_SERVER_BIN", help_heading = "Local server")]
    pub server_bin: Option<PathBuf>,

    /// Do not run `cargo build --release -p chat-server` before starting the local
    /// server (an existing binary is used as it is).
    #[arg(long, env = "LOADTEST_NO_BUILD", help_heading = "Local server")]
    pub no_build: bool,

    /// Shards of the local server (default: its own default, one per core).
    #[arg(long, env = "LOADTEST_SERVER_SHARDS", help_heading = "Local server")]
    pub server_shards: Option<usize>,

    /// Extra argument for the local server, repeatable (e.g.
    /// --server-arg=--database-url=postgres://...).
    #[arg(
        long,
        env = "LOADTEST_SERVER_ARG",
        allow_hyphen_values = true,
        help_heading = "Local server"
    )]
    pub server_arg: Vec<String>,

    /// Keep the local server's log in this file (default: a temporary file, its tail
    /// shown when the server fails).
    #[arg(long, env = "LOADTEST_SERVER_LOG", help_heading = "Local server")]
    pub server_log: Option<PathBuf>,

    /// Start the local nodes with TLS: a self-signed certificate for localhost and
    /// 127.0.0.1 is generated for the run, the nodes serve https:// and wss:// with it,
    /// and the harness trusts it (and nothing else).
    #[arg(long, env = "LOADTEST_TLS", help_heading = "Local server")]
    pub tls: bool,

    // ----- client network -----
    /// PEM file of the certificates to trust for an https:// target (e.g. a self-signed
    /// test certificate) instead of the web PKI roots.
    #[arg(long, env = "LOADTEST_TLS_CA", help_heading = "Client network")]
    pub tls_ca: Option<PathBuf>,

    /// Loopback source addresses (127.0.0.1, 127.0.0.2, ...) the WebSockets are spread
    /// over. Default: one per --connections-per-source sockets, when the target is a
    /// 127.x address.
    #[arg(
        long,
        env = "LOADTEST_SOURCE_ADDRESSES",
        help_heading = "Client network"
    )]
    pub source_addresses: Option<u8>,

    /// Sockets per loopback source address before another is used (the ephemeral port
    /// range holds about 28,000).
    #[arg(
        long,
        env = "LOADTEST_CONNECTIONS_PER_SOURCE",
        default_value_t = 20_000,
        help_heading = "Client network"
    )]
    pub connections_per_source: usize,

    // ----- output -----
    /// Write the WebSocket, persistence and capacity results (and a summary of the REST
    /// requests) as JSON to this file.
    #[arg(long, env = "LOADTEST_JSON_REPORT", help_heading = "Output")]
    pub json_report: Option<PathBuf>,

    /// During the measured time, GET /metrics of every node every SECONDS (as a
    /// Prometheus server would); the report states the scrapes done, their latency and
    /// size. A failed scrape is counted, never fatal.
    #[arg(
        long,
        env = "LOADTEST_SCRAPE_METRICS",
        value_name = "SECONDS",
        help_heading = "Output"
    )]
    pub scrape_metrics: Option<f64>,

    /// The big room and the hostile clients.
    #[command(flatten)]
    pub scenario: Scenario,

    /// Goose's options.
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

impl Config {
    /// Parses the command line and the environment (`LOADTEST_*`), exiting with usage on
    /// error, as clap does.
    pub fn from_env_and_args() -> Self {
        match Self::try_from_iter(std::env::args_os()) {
            Ok(config) => config,
            Err(e) => e.exit(),
        }
    }

    /// Parses the given arguments (the first is the program name) and the environment.
    pub fn try_from_iter<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut matches = Self::command_with_env().try_get_matches_from(args)?;
        Self::from_arg_matches_mut(&mut matches)
    }

    /// The clap command, with an environment variable on every flag that lacks one.
    pub fn command_with_env() -> clap::Command {
        // The flattened Goose options bring their own long description: replace it.
        Self::command()
            .about(ABOUT)
            .long_about(ABOUT)
            .after_help(AFTER_HELP)
            .after_long_help(AFTER_HELP)
            // Goose options whose meaning or default the harness changes.
            .mut_arg("host", |a| {
                a.help("Target server, http://HOST:PORT or https://HOST:PORT, or several nodes of one cluster separated by commas (users are spread over them) [default: start a local chat-server]")
                    .long_help(None)
            })
            .mut_arg("users", |a| {
                a.help("Simulated users [default: 1000]").long_help(None)
            })
            .mut_arg("run_time", |a| {
                a.help("Measured time once every user has joined, e.g. 30s or 2m [default: 30s]")
                    .long_help(None)
            })
            .mut_arg("increase_rate", |a| {
                a.help("Users started per second [default: users/10, at least 50]")
                    .long_help(None)
            })
            .mut_args(with_env)
    }

    /// The target nodes of `--host` (a comma-separated list), without trailing slashes.
    pub fn hosts(&self) -> Vec<String> {
        self.goose
            .host
            .iter()
            .flat_map(|h| h.split(','))
            .map(|h| h.trim().trim_end_matches('/').to_string())
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// Simulated users (`--room-size`, else `--users`, default 1000).
    pub fn users(&self) -> usize {
        self.scenario
            .room_size
            .unwrap_or_else(|| self.goose.users.unwrap_or(DEFAULT_USERS))
    }

    /// The measured time (`--run-time`, default 30 s) once every user joined.
    pub fn run_time(&self) -> anyhow::Result<Duration> {
        match &self.goose.run_time {
            None => Ok(DEFAULT_RUN_TIME),
            Some(text) => goose::util::parse_timespan(text)
                .map(|secs| Duration::from_secs(secs as u64))
                .with_context(|| format!("--run-time {text:?} is not a time span like 30s or 2m")),
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.users() == 0 {
            bail!("--users must be at least 1");
        }
        if self.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        if self.nodes > 1 && self.goose.host.is_some() {
            bail!("--nodes starts local nodes; with --host, list the nodes there instead");
        }
        if self.tls && self.goose.host.is_some() {
            bail!("--tls starts local nodes with a certificate of their own; with --host, give https:// URLs (and --tls-ca for a certificate of your own)");
        }
        if let Some(every) = self.scrape_metrics {
            if !(every.is_finite() && every >= 0.05) {
                bail!("--scrape-metrics must be at least 0.05 seconds");
            }
        }
        if !(self.message_rate.is_finite() && self.message_rate >= 0.0) {
            bail!("--message-rate must be a number >= 0");
        }
        if !(0.0..=1.0).contains(&self.typing_ratio) {
            bail!("--typing-ratio must be between 0 and 1");
        }
        if self.message_bytes < 48 || self.message_bytes > 5000 {
            bail!("--message-bytes must be between 48 (the measurement tag) and 5000");
        }
        if !(self.think_time.is_finite() && self.think_time > 0.0) {
            bail!("--think-time must be > 0");
        }
        if self.history_weight + self.reconnect_weight == 0 {
            bail!("--history-weight and --reconnect-weight cannot both be 0");
        }
        if self.auth_concurrency == 0 {
            bail!("--auth-concurrency must be at least 1");
        }
        for (name, value) in [
            ("--warmup", self.warmup),
            ("--setup-timeout", self.setup_timeout),
            ("--drain-timeout", self.drain_timeout),
            ("--step-time", self.step_time),
            ("--slo-p99-ms", self.slo_p99_ms),
            ("--server-rate-limit", self.server_rate_limit),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                bail!("{name} must be a number >= 0");
            }
        }
        if self.capacity {
            if self.step_time < 1.0 {
                bail!("--step-time must be at least 1 second");
            }
            if !(self.rate_factor.is_finite() && self.rate_factor > 1.0) {
                bail!("--rate-factor must be > 1");
            }
            if self.max_steps == 0 {
                bail!("--max-steps must be at least 1");
            }
            if let Some(rate) = self.start_rate {
                if !(rate.is_finite() && rate > 0.0) {
                    bail!("--start-rate must be > 0");
                }
            }
        }
        if self.connections_per_source == 0 {
            bail!("--connections-per-source must be at least 1");
        }
        if self.goose.iterations.is_some() {
            bail!("--iterations is not supported: the harness decides when the run ends (--run-time, --capacity)");
        }
        self.validate_scenario()?;
        self.run_time()?;
        Ok(())
    }

    /// The interval of `--scrape-metrics`, when given.
    pub fn scrape_interval(&self) -> Option<Duration> {
        self.scrape_metrics.map(Duration::from_secs_f64)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.setup_timeout)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout)
    }

    pub fn step_time(&self) -> Duration {
        Duration::from_secs_f64(self.step_time)
    }

    /// WebSockets the run opens at once.
    pub fn connections(&self) -> usize {
        self.users() * self.sockets_per_user()
    }

    /// Descriptors a run holds on each side: its WebSockets, each user's kept-alive
    /// REST connection, and room for files and connections in passing.
    pub fn descriptors(&self) -> usize {
        let rest = if self.rest_keep_alive {
            self.users()
        } else {
            0
        };
        self.connections() + rest + 1024
    }

    /// Chat events (messages and typing indicators) one user sends per second at
    /// `message_rate` messages per second.
    pub fn events_per_user(&self, message_rate: f64) -> f64 {
        message_rate * (1.0 + self.typing_ratio)
    }
}

/// Gives a flag without an environment variable the variable `LOADTEST_<FLAG>`.
fn with_env(arg: Arg) -> Arg {
    let id = arg.get_id().as_str().to_owned();
    if arg.get_env().is_some()
        || arg.is_positional()
        || matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
        || id == "help"
    {
        return arg;
    }
    let name = format!("LOADTEST_{}", id.to_ascii_uppercase().replace('-', "_"));
    arg.env(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_consistent() {
        Config::command_with_env().debug_assert();
    }

    #[test]
    fn defaults() {
        let c = Config::try_from_iter(["loadtest"]).expect("parses");
        assert_eq!(c.users(), DEFAULT_USERS);
        assert_eq!(c.run_time().expect("run time"), DEFAULT_RUN_TIME);
        assert!(c.goose.host.is_none());
        assert!(!c.capacity);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn goose_flags_are_flattened() {
        let c = Config::try_from_iter([
            "loadtest",
            "--host",
            "http://127.0.0.1:8000",
            "-u",
            "50",
            "-t",
            "5s",
            "--report-file",
            "r.html",
            "--capacity",
            "--group-size",
            "5",
        ])
        .expect("parses");
        assert_eq!(c.goose.host.as_deref(), Some("http://127.0.0.1:8000"));
        assert_eq!(c.users(), 50);
        assert_eq!(c.run_time().expect("run time"), Duration::from_secs(5));
        assert_eq!(c.goose.report_file, vec!["r.html".to_string()]);
        assert!(c.capacity);
        assert_eq!(c.group_size, 5);
    }

    #[test]
    fn every_flag_has_an_env_var() {
        let cmd = Config::command_with_env();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
    }

    #[test]
    fn tls_and_scrapes() {
        let c =
            Config::try_from_iter(["loadtest", "--tls", "--scrape-metrics", "1"]).expect("parses");
        assert!(c.tls);
        assert_eq!(c.scrape_interval(), Some(Duration::from_secs(1)));
        c.validate().expect("valid");
        let remote =
            Config::try_from_iter(["loadtest", "--tls", "--host", "https://x:1"]).expect("parses");
        assert!(remote.validate().is_err(), "--tls is for local nodes");
        let zero = Config::try_from_iter(["loadtest", "--scrape-metrics", "0"]).expect("parses");
        assert!(zero.validate().is_err());
    }

    #[test]
    fn rejects_iterations() {
        let c = Config::try_from_iter(["loadtest", "--iterations", "3"]).expect("parses");
        assert!(c.validate().is_err());
    }
}
