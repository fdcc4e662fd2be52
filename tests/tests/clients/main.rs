//! Clients nobody wrote for these tests, and the transports they use: the quick-start
//! guide's curl flows and its own browser and Python snippets, the browser client the
//! server serves at `/` (in headless Chromium), and TLS to rustls clients, `curl` and
//! `openssl s_client`.
//!
//! One test binary, one module per subject, each with its own scenarios and helpers.
//! Nothing is shared between the modules here: what more than one needs belongs in
//! the kit (`tests/src`), where every area can use it.

mod page;
mod quickstart;
mod real_clients;
mod tls;
