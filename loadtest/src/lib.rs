//! Capacity harness for the chat server.
//!
//! Goose drives the simulated users and their REST calls (and reports them); each
//! user's WebSockets are tokio tasks that chat and measure what Goose cannot: ack and
//! delivery latency in HDR histograms, deliveries against what was expected,
//! duplicates, losses, and every stream position once and in order across reconnects
//! (which resume with `since`; unanswered sends are retried with their `client_id`).
//! With `--user-stream` each user has one socket for all its conversations instead,
//! and at the end its unread counts and read markers are checked against what it saw.
//! After the run every acknowledged message is looked up in the history the server
//! returns. An `https://` target is driven over TLS throughout (`wss://`, and REST over
//! `https://`; `--tls` starts the local nodes so, with a certificate made for the run),
//! and `--scrape-metrics` scrapes every node's `/metrics` while the run is measured.
//! [`run()`] does all of it, step by step (see `run.rs`), and returns the [`Report`];
//! `cargo run --release -p loadtest` is the command-line front end.
//!
//! Goose's stop switch is process-wide: run one [`run()`] at a time per process.

pub mod capacity;
pub mod config;
pub mod console;
pub mod driver;
pub mod hostile;
pub mod markers;
pub mod plan;
pub mod report;
mod run;
pub mod scenario;
pub mod scrape;
pub mod server;
pub mod state;
pub mod storm;
pub mod sys;
pub mod tls;
pub mod user;
pub mod verify;
pub mod ws;

pub use config::Config;
pub use report::Report;
pub use run::run;
