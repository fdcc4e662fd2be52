//! The test kit: everything that starts the real `chat-server` binary or makes
//! throw-away state for it, in one place, for the end-to-end tests, the store tests,
//! the benchmarks and the load harness.
//!
//! - [`binary`]: finding, or building with cargo, the binary to run.
//! - [`process`]: starting it with a readiness signal (`--ready-file`, never a log
//!   line), capturing its output, stopping it (SIGTERM, then SIGKILL).
//! - [`postgres`]: scratch databases on the local PostgreSQL (`TEST_POSTGRES_URL`),
//!   starting the local cluster when it is installed but stopped.
//! - [`redis`]: the local Redis for cluster runs (started when installed but stopped)
//!   and a key prefix of its own per test.
//! - [`procfs`]: what a process uses, from `/proc`.
//!
//! It must never touch a database or key it did not create, nor leave a process behind.

pub mod binary;
pub mod postgres;
pub mod process;
pub mod procfs;
pub mod redis;

pub use binary::{server_binary, Profile};
pub use postgres::ScratchDatabase;
pub use process::{Output, ServerProcess};
pub use redis::ScratchPrefix;
/// The PostgreSQL client [`ScratchDatabase::client`] hands out.
pub use tokio_postgres;
