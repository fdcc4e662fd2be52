//! A shard's life: its bus task, its heartbeat, its accept loop, the TLS handshake
//! when the server terminates TLS, and hyper serving each accepted connection until
//! shutdown, then a graceful drain.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_compat::hyper::{MonoioIo, MonoioTimer};

use crate::app::App;
use crate::bus::ShardMsg;
use crate::context::ShardContext;
use crate::hub::conn::Heartbeat;
use crate::limits::{self, Slot};
use crate::protocol::Close;
use crate::socket::OnShard;

/// Where a shard reports that it is serving (with its io driver), or why it could not.
pub(super) type Ready = std::sync::mpsc::Sender<Result<&'static str, String>>;

pub async fn shard_main(
    id: usize,
    app: Arc<App>,
    listener: std::net::TcpListener,
    driver: &'static str,
    ready: Ready,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("listener: {e}")));
            return;
        }
    };
    let shard = ShardContext::new(id, app);
    monoio::spawn(bus_task(Rc::clone(&shard)));
    monoio::spawn(heartbeat(Rc::clone(&shard)));
    let _ = ready.send(Ok(driver));

    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = shard.shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // Finds peers that vanished without a FIN even when no WebSocket
                // heartbeat runs (plain HTTP keep-alive connections).
                let keepalive = shard.app.config.tcp_keepalive();
                if let Some(idle) = keepalive {
                    let _ = stream.set_tcp_keepalive(
                        Some(idle),
                        Some(TCP_KEEPALIVE_INTERVAL),
                        Some(TCP_KEEPALIVE_PROBES),
                    );
                }
                match hold_connection(&shard, peer) {
                    Some(slot) => {
                        monoio::spawn(serve_connection(Rc::clone(&shard), stream, peer, slot));
                    }
                    None => {
                        monoio::spawn(refuse_connection(Rc::clone(&shard), stream));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    drain(&shard).await;
}

/// After the stop signal: close WebSockets with 1001, let HTTP requests finish.
async fn drain(shard: &ShardContext) {
    shard.hub.registry.close_all(Close::ShuttingDown);
    let grace = shard.app.config.shutdown_grace();
    if monoio::time::timeout(grace, shard.connections.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            shard = shard.id,
            open = shard.connections.count(),
            "grace period over; dropping the connections still open"
        );
    }
    tracing::info!(shard = shard.id, "shard stopped");
}

async fn bus_task(shard: Rc<ShardContext>) {
    let mailbox = shard.app.bus.mailbox(shard.id);
    loop {
        mailbox
            .drain(|msg| match msg {
                ShardMsg::Shutdown => shard.shutdown.set(),
                msg => shard.hub.handle(msg),
            })
            .await;
    }
}

/// Between keepalive probes once the connection has been idle.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel gives up on the peer.
const TCP_KEEPALIVE_PROBES: u32 = 3;

/// Visits every WebSocket of the shard a few times per ping interval: one task and
/// one timer per shard, however many connections it holds.
async fn heartbeat(shard: Rc<ShardContext>) {
    let config = &shard.app.config;
    let beat = Heartbeat {
        ping_every: config.ws_ping_interval,
        idle_timeout: config.ws_idle_timeout,
    };
    let tick = (beat.ping_every.min(beat.idle_timeout) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        monoio::select! {
            _ = monoio::time::sleep(tick) => shard.hub.registry.beat(&beat),
            _ = shard.shutdown.wait() => return,
        }
    }
}

/// A held place among the connections of the peer's address, or `None` when it holds
/// `--max-connections-per-address` already. Trusted proxies carry many clients on
/// one address and are not counted, nor is what `Config::counts_address` leaves out.
fn hold_connection(shard: &ShardContext, peer: SocketAddr) -> Option<ConnectionSlot> {
    let config = &shard.app.config;
    let key = limits::client_bucket(peer.ip());
    let proxy = config.trusted_proxies.iter().any(|net| net.contains(&key));
    if proxy || !config.counts_address(key) {
        return Some(Arc::new(Slot::uncounted(key)));
    }
    shard.app.limits.connections.hold(key).map(Arc::new)
}

/// The answer to a connection over the per-address limit: on plain HTTP a 429 in the
/// one error shape, then the connection is closed; on TLS it is closed at once (a
/// handshake would cost more than the connection is worth).
async fn refuse_connection(shard: Rc<ShardContext>, mut stream: TcpStream) {
    if shard.app.tls.is_some() {
        return;
    }
    let body = br#"{"detail":"Too many connections from this address"}"#;
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut answer = head.into_bytes();
    answer.extend_from_slice(body);
    let _ = monoio::time::timeout(REFUSAL_GRACE, async {
        let (written, _) = stream.write_all(answer).await;
        if written.is_ok() {
            let _ = stream.shutdown().await;
            // Read what the client sent, so closing does not reset the connection
            // under the answer before the client has read it.
            let mut buf = vec![0u8; 4096];
            loop {
                let (read, back) = stream.read(buf).await;
                buf = back;
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
            }
        }
    })
    .await;
}

/// How long a refused connection may take to be told so.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// A connection's place among its address's connections (`--max-connections-per-address`),
/// shared with the requests it carries, so that a WebSocket upgraded from it keeps the
/// place for as long as it lives.
type ConnectionSlot = Arc<Slot<IpAddr>>;

async fn serve_connection(
    shard: Rc<ShardContext>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
) {
    let io = match stream.try_into_poll_io() {
        Ok(io) => io,
        Err((e, _)) => {
            tracing::debug!(error = %e, "could not switch the socket to readiness mode");
            return;
        }
    };
    let _open = shard.connections.open();
    let Some(tls) = &shard.app.tls else {
        return serve_http(&shard, io, peer, slot).await;
    };
    // A client that stalls or botches its handshake costs this task, nothing more.
    let handshake = monoio::select! {
        r = monoio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(io)) => r,
        _ = shard.shutdown.wait() => return,
    };
    match handshake {
        Ok(Ok(stream)) => return serve_http(&shard, stream, peer, slot).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
    shard.metrics.tls_handshake_failures.inc();
}

/// Longest a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper serving HTTP/1.1 (and upgrades) on a plain or TLS stream until it closes or
/// the shard stops.
async fn serve_http<T>(shard: &Rc<ShardContext>, io: T, peer: SocketAddr, slot: ConnectionSlot)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let service = {
        let shard = Rc::clone(shard);
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Arc::clone(&slot));
            crate::http::serve(Rc::clone(&shard), req, peer)
        })
    };
    let connection = http1::Builder::new()
        .timer(MonoioTimer)
        .keep_alive(true)
        // The head within the request deadline; `http::request` holds the body to it.
        .header_read_timeout(shard.app.config.request_timeout)
        .serve_connection(OnShard(MonoioIo::new(io)), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = monoio::select! {
        r = connection.as_mut() => r,
        _ = shard.shutdown.wait() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}
