//! The chat server: the wire contract of `docs/protocol.md` on the thread-per-core
//! design of `docs/architecture.md`.
//!
//! Data flows one way: socket -> `shard` -> `http` / `ws` -> `protocol` -> `hub` ->
//! `store` -> `hub` -> `ws` -> socket, and imports follow the layers below: a module
//! may import only modules of a lower layer, never one above it.
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | 1 | `config`, `ids`, `text`, `limits`, `metrics`, `socket` | the one configuration struct; id newtypes and timestamps; validated usernames, passwords, content, names; per-client quotas and slots; the Prometheus series and each shard's handles; an accepted socket as hyper serves it, taken back after an upgrade |
//! | 2 | `protocol`, `auth`, `store`, `tls` | wire events, the frame codec and close codes; tokens, passwords, login throttling; persistence; the certificate and the rustls configuration |
//! | 3 | `error`, `roster`, `views` | the one error type and its HTTP shape; how presence is told in conversations of any size; the JSON shapes of a conversation REST and WebSocket events share |
//! | 4 | `bus` | the cross-shard mailboxes and what travels on them |
//! | 5 | `cluster` | the other nodes through Redis: live events, presence, heartbeats, rate budgets |
//! | 6 | `app` | what every shard shares, built once |
//! | 7 | `hub` | per shard: the registry of its connections and the homes of the conversations hashed to it |
//! | 8 | `context` | one shard's context as its tasks see it |
//! | 9 | `ws` | admission, upgrade, the socket's halves (completion or readiness path), the frame reader, a connection's reader and writer |
//! | 10 | `http` | routing, REST handlers, OpenAPI and docs pages, `/metrics` (and its own listener with `--metrics-listen`) |
//! | 11 | `shard` | threads, runtimes, listeners, accept loop, TLS handshakes, heartbeat |
//! | 12 | `server` | start-up and shutdown, wiring everything |
//!
//! This table is the one statement of the layers: `tests/layers.rs` holds every
//! `crate::` path of the server to it, so a new module takes its place here first.

pub mod config;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod socket;
pub mod text;

pub mod auth;
pub mod protocol;
pub mod store;
pub mod tls;

pub mod error;
pub mod roster;
pub mod views;

pub mod bus;

pub mod cluster;

pub mod app;

pub mod hub;

pub mod context;

pub mod ws;

pub mod http;

pub mod shard;

pub mod server;
