//! The HTTP API, against the real binary: registration, login and the user lookup;
//! conversations and their participants; message history; generic HTTP behaviour
//! (unknown routes, methods, body limits, content types); hostile input and the
//! limits on what one client may take; login throttling; browser
//! origins; health, the OpenAPI document (fuzzed as well) and the documentation pages;
//! `/metrics` and the logs an operator reads.
//!
//! One test binary, one module per subject, each with its own scenarios and helpers.
//! Nothing is shared between the modules here: what more than one needs belongs in
//! the kit (`tests/src`), where every area can use it.

mod auth;
mod conversations;
mod direct;
mod docs;
mod errors;
mod history;
mod limits;
mod login_throttle;
mod logs;
mod manage;
mod metrics;
mod openapi_fuzz;
mod origins;
mod sessions;
