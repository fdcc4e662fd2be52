//! `cargo run --release -p loadtest [-- OPTIONS]`: the capacity harness from the
//! command line. Without `--host` it starts a local release server, runs 1,000 users
//! for 30 s (or the capacity search with `--capacity`), prints Goose's report and the
//! WebSocket report, and stops the server. Exit status: 0 when nothing was lost,
//! duplicated or missing, 1 when something was, 2 when the run could not be done.

use std::io::Write;
use std::process::ExitCode;

use loadtest::console::say;
use loadtest::{report, Config};

fn main() -> ExitCode {
    let config = Config::from_env_and_args();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            say(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(loadtest::run(config)) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(report::render(&report).as_bytes());
            let _ = out.flush();
            if report.verdict.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            say(&format!("the run failed: {e:#}"));
            ExitCode::from(2)
        }
    }
}
