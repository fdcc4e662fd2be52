//! The WebSocket side, against the real binary: event semantics and what the endpoint
//! refuses, delivery and order across shards, flow control, conversation streams
//! (`since`, `client_id`, deleted messages replayed without content), RFC 6455 on the
//! wire, what one client may hold, how long a connection lives, and what survives
//! `kill -9` or a PostgreSQL outage, and what waits are bounded when the store stalls.
//!
//! One test binary, one module per subject, each with its own scenarios and helpers.
//! Nothing is shared between the modules here: what more than one needs belongs in
//! the kit (`tests/src`, `tests::realtime` above all), where every area can use it.

mod backpressure;
mod big_rooms;
mod deleted;
mod durability;
mod events;
mod limits;
mod manage;
mod persistence;
mod refusals;
mod shards;
mod store_stalls;
mod streams;
mod user_stream;
mod ws_frames;
mod ws_lifecycle;
