//! One shard's context as its tasks see it: the shard's id, what all shards share
//! (`App`), the shard's hub, its metrics, the stop signal and the count of open
//! connections.
//!
//! A leaf below `ws`, `http` and `shard`, so the handlers that receive it and the
//! runtime that builds it need not import each other. It holds state, never logic:
//! nothing here does I/O.

mod latch;

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use prometheus_client::metrics::gauge::Gauge;

use crate::app::App;
use crate::hub::Hub;
use crate::metrics::ShardMetrics;
pub use latch::Latch;

/// One shard's state, shared by its tasks (never across threads).
pub struct ShardContext {
    pub id: usize,
    pub app: Arc<App>,
    pub hub: Hub,
    pub metrics: Rc<ShardMetrics>,
    /// Set when the server is asked to stop.
    pub shutdown: Latch,
    /// HTTP and WebSocket connections still open, for a graceful stop.
    pub connections: Connections,
}

impl ShardContext {
    pub fn new(id: usize, app: Arc<App>) -> Rc<Self> {
        let metrics = Rc::new(app.metrics.shard(id));
        Rc::new(Self {
            id,
            hub: Hub::new(id, Arc::clone(&app), Rc::clone(&metrics)),
            connections: Connections::new(metrics.connections_open.clone()),
            metrics,
            app,
            shutdown: Latch::default(),
        })
    }
}

/// Counts a shard's open connections; the shutdown drain waits for the count to reach
/// zero instead of polling it. The count is the shard's `chat_connections_open` gauge
/// itself: only this shard writes it, `/metrics` reads it.
pub struct Connections {
    open: Gauge,
    drained: Cell<Option<Waker>>,
}

/// Held by a connection's task for its lifetime, unwinding included.
pub struct Open<'a>(&'a Connections);

impl Connections {
    fn new(open: Gauge) -> Self {
        Self {
            open,
            drained: Cell::new(None),
        }
    }

    pub fn open(&self) -> Open<'_> {
        self.open.inc();
        Open(self)
    }

    pub fn count(&self) -> usize {
        usize::try_from(self.open.get()).unwrap_or(0)
    }

    /// Resolves once no connection is open. One waiter at a time (the drain).
    pub async fn all_closed(&self) {
        poll_fn(|cx| {
            if self.count() == 0 {
                Poll::Ready(())
            } else {
                self.drained.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        // `dec` answers the count before this connection left.
        if self.0.open.dec() == 1 {
            if let Some(waker) = self.0.drained.take() {
                waker.wake();
            }
        }
    }
}
