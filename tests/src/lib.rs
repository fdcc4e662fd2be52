//! Harness for black-box end-to-end tests of the real `chat-server` binary.
//!
//! Every scenario is an `async fn(&TestServer) -> anyhow::Result<()>` (or `&mut
//! TestServer` when it restarts the server). [`e2e!`] turns each scenario into a module
//! with one `#[tokio::test]` per configuration, so a failure names its configuration:
//!
//! ```ignore
//! use tests::prelude::*;
//!
//! async fn register_rules(srv: &TestServer) -> anyhow::Result<()> { ... }
//!
//! tests::e2e!(register_rules);
//! // -> register_rules::sqlite_uring, register_rules::sqlite_epoll,
//! //    register_rules::postgres_uring, register_rules::postgres_epoll
//! ```
//!
//! Each test gets its own server with its own data directory or database, and every
//! scenario creates uniquely named users, so tests run in parallel safely.

pub mod apt;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod frames;
pub mod jwt;
pub mod nginx;
pub mod python;
pub mod realtime;
pub mod server;
pub mod ws;

pub use client::{Api, Reply, Session};
pub use server::{all_configs, IoDriver, ServerOptions, Store, TestServer};
pub use ws::{WsClient, WsEvent};

/// What test files usually need.
pub mod prelude {
    pub use crate::client::{
        as_list, ids, is_timestamp, participant_ids, str_field, timestamp_field, unique_name, Api,
        Reply, Session, PASSWORD,
    };
    pub use crate::server::{IoDriver, ServerOptions, Store, TestServer};
    pub use crate::ws::{WsClient, WsEvent};
    pub use anyhow::{bail, ensure, Context};
    pub use serde_json::{json, Value};
}

/// Starts a server with `opts`, runs `scenario` against it and panics with the
/// server's output when the scenario fails. Used by [`e2e!`].
pub async fn run_with<F>(opts: ServerOptions, scenario: F)
where
    F: for<'a> FnOnce(
        &'a mut TestServer,
    ) -> futures_util::future::LocalBoxFuture<'a, anyhow::Result<()>>,
{
    let config = opts.to_string();
    let mut server = match TestServer::start(opts).await {
        Ok(server) => server,
        Err(err) => panic!("could not start chat-server ({config}): {err:#}"),
    };
    let result = scenario(&mut server).await;
    server.finish(result);
}

/// Runs `scenario` against each of the four configurations in turn (one server each),
/// for a single `#[tokio::test]` covering all of them:
/// `for_all_configs(|srv| Box::pin(scenario(srv))).await`.
pub async fn for_all_configs<F>(scenario: F)
where
    F: for<'a> Fn(
        &'a mut TestServer,
    ) -> futures_util::future::LocalBoxFuture<'a, anyhow::Result<()>>,
{
    for opts in all_configs() {
        run_with(opts, &scenario).await;
    }
}

/// Generates, for each named scenario `async fn NAME(&TestServer) -> anyhow::Result<()>`
/// (or `&mut TestServer`), a module `NAME` with the tests `sqlite_uring`,
/// `sqlite_epoll`, `postgres_uring` and `postgres_epoll` (2 shards each).
///
/// `e2e!(options = |o| o.arg("--max-body-bytes").arg("1024"); NAME, ...)` adjusts the
/// options of every configuration (the closure must not capture anything).
#[macro_export]
macro_rules! e2e {
    (options = $opts:expr; $($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                $crate::e2e!(@test $scenario, sqlite_uring, Sqlite, Uring, $opts);
                $crate::e2e!(@test $scenario, sqlite_epoll, Sqlite, Epoll, $opts);
                $crate::e2e!(@test $scenario, postgres_uring, Postgres, Uring, $opts);
                $crate::e2e!(@test $scenario, postgres_epoll, Postgres, Epoll, $opts);
            }
        )+
    };
    (@test $scenario:ident, $name:ident, $store:ident, $driver:ident, $opts:expr) => {
        #[::tokio::test]
        async fn $name() {
            let customize: fn($crate::ServerOptions) -> $crate::ServerOptions = $opts;
            $crate::run_with(
                customize($crate::ServerOptions::new($crate::Store::$store, $crate::IoDriver::$driver)),
                |server| ::std::boxed::Box::pin(super::$scenario(server)),
            )
            .await
        }
    };
    ($($scenario:ident),+ $(,)?) => {
        $crate::e2e!(options = |opts| opts; $($scenario),+);
    };
}
