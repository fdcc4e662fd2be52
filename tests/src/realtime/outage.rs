//! A TCP relay that can cut one server off its database: how the outage tests make
//! PostgreSQL unreachable for one server without stopping the PostgreSQL every other
//! test shares (the scratch database behind it comes from the test kit).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP relay in front of PostgreSQL for one server: the server's `--database-url`
/// points at the relay, and the test cuts and restores the relay to simulate the
/// database going away and coming back, without touching the shared cluster.
pub struct TcpRelay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpRelay {
    /// Listens on `127.0.0.1:0` and forwards each accepted connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the relay")?;
        let addr = listener.local_addr().context("relay address")?;
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let up = Arc::clone(&up);
            let conns = Arc::clone(&conns);
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        // Down: close at once, as a refused connection would.
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    if let Ok(mut list) = conns.lock() {
                        list.retain(|h| !h.is_finished());
                        list.push(task.abort_handle());
                    }
                }
            })
            .abort_handle()
        };
        Ok(Self {
            addr,
            up,
            conns,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The outage: new connections are closed at once and every relayed connection is
    /// cut (both of its sockets closed).
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.conns.lock() {
            for handle in list.drain(..) {
                handle.abort();
            }
        }
    }

    /// The end of the outage: new connections are relayed again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
