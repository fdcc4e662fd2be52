//! The chat server: the wire contract of `docs/protocol.md` on the thread-per-core
//! design of `docs/architecture.md`.
//!
//! Data flows one way: socket -> `shard` -> `http` / `ws` -> `protocol` -> `hub` ->
//! `store` -> `hub` -> `ws` -> socket, and imports follow the layers below: a module
//! may import only modules of a lower layer, never one above it.
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | 1 | `config`, `ids`, `text`, `metrics`, `socket` | the one configuration struct; id newtypes, timestamps; validated usernames, passwords, content; the Prometheus series; an accepted socket as hyper serves it |
//! | 2 | `protocol`, `auth`, `store`, `tls` | wire events and close codes; tokens, passwords, login throttling; persistence; certificates and the TLS configuration |
//! | 3 | `error` | the one error type and its HTTP shape |
//! | 4 | `bus` | the cross-shard mailboxes and what travels on them |
//! | 5 | `cluster` | the other nodes through Redis: live events, presence, heartbeats |
//! | 6 | `app` | what every shard shares, built once |
//! | 7 | `hub` | per shard: the connection registry and the conversation homes |
//! | 8 | `context` | one shard's context as its tasks see it |
//! | 9 | `ws` | admission, upgrade, a connection's reader and writer |
//! | 10 | `http` | routing, REST handlers, OpenAPI and docs pages |
//! | 11 | `shard` | threads, runtimes, listeners, accept loop, heartbeat |
//! | 12 | `server` | start-up and shutdown, wiring everything |

pub mod config;
pub mod ids;
pub mod metrics;
pub mod socket;
pub mod text;

pub mod auth;
pub mod protocol;
pub mod store;
pub mod tls;

pub mod error;

pub mod bus;

pub mod cluster;

pub mod app;

pub mod hub;

pub mod context;

pub mod ws;

pub mod http;

pub mod shard;

pub mod server;
