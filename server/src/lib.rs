//! The chat server: the contract of API.md on a thread-per-core design (DESIGN.md).
//!
//! Data flows one way: `shard` (sockets) -> `http` / `ws` -> `protocol` -> `hub`
//! -> `store` -> `hub` -> `ws` -> socket. `server::run` wires it together.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod ids;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod store;
pub mod ws;
