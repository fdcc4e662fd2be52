//! Shards: one OS thread per core, pinned, each running its own monoio runtime
//! (io_uring, or epoll when io_uring is refused or asked against) and accepting on its
//! own `SO_REUSEPORT` listener. A connection lives its whole life on the shard that
//! accepted it. A shard never blocks: store work, hashing and the writer live
//! elsewhere.

mod listen;
mod serve;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use monoio::time::TimeDriver;
use monoio::{FusionDriver, FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::app::App;
use crate::config::IoDriver;
pub use listen::bind;
use serve::Ready;

/// A running shard thread, and the driver its runtime got.
pub struct Started {
    pub thread: JoinHandle<()>,
    pub driver: &'static str,
}

/// Starts one shard per listener and waits until each runs (or failed to start).
pub fn start(
    app: &Arc<App>,
    listeners: Vec<std::net::TcpListener>,
    driver: IoDriver,
) -> anyhow::Result<Vec<Started>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut started = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let app = Arc::clone(app);
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Err(e) = monoio::utils::bind_to_cpu_set([id % cores]) {
                    tracing::warn!(shard = id, error = ?e, "could not pin shard to a core");
                }
                run(id, app, listener, driver, ready_tx);
            })?;
        let driver = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("shard {id} died while starting"))?
            .map_err(|e| anyhow::anyhow!("shard {id}: {e}"))?;
        tracing::info!(shard = id, driver, "shard started");
        started.push(Started { thread, driver });
    }
    Ok(started)
}

fn run(id: usize, app: Arc<App>, listener: std::net::TcpListener, driver: IoDriver, ready: Ready) {
    const ENTRIES: u32 = 4096;
    let main = |name: &'static str| serve::shard_main(id, app, listener, name, ready.clone());
    match driver {
        IoDriver::Uring => match RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(ENTRIES)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(main("io_uring")),
            Err(e) => {
                let _ = ready.send(Err(format!("io_uring unavailable: {e}")));
            }
        },
        IoDriver::Epoll => match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
            Ok(mut rt) => rt.block_on(main("epoll")),
            Err(e) => {
                let _ = ready.send(Err(format!("epoll runtime failed: {e}")));
            }
        },
        IoDriver::Auto => {
            let built: std::io::Result<
                FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>,
            > = RuntimeBuilder::<FusionDriver>::new()
                .with_entries(ENTRIES)
                .enable_timer()
                .build();
            match built {
                Ok(FusionRuntime::Uring(mut rt)) => rt.block_on(main("io_uring")),
                Ok(FusionRuntime::Legacy(mut rt)) => {
                    tracing::warn!(
                        shard = id,
                        "io_uring refused by the kernel or seccomp; falling back to epoll"
                    );
                    rt.block_on(main("epoll"))
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("runtime failed: {e}")));
                }
            }
        }
    }
}
