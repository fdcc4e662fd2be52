//! The metrics listener of `--metrics-listen`: `GET /metrics` on an address of its own
//! (a private interface, say), served by hyper on the store runtime, so scrapes never
//! share the public port or a shard. It answers nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::reply::{empty, metrics_response};
use crate::app::App;

/// Binds `addr` and serves scrapes on `runtime` until the process ends; returns the
/// bound address (port 0 resolved).
pub fn spawn(
    app: Arc<App>,
    addr: SocketAddr,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let response = if req.uri().path() == "/metrics" {
                        metrics_response(&app)
                    } else {
                        empty(http::StatusCode::NOT_FOUND)
                    };
                    std::future::ready(Ok::<_, std::convert::Infallible>(response))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}
