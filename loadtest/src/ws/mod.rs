//! One simulated user's WebSocket as a tokio task: a conversation socket
//! (`/api/chat/ws/{id}`, one seat: the user in one conversation) or, with
//! `--user-stream`, the user stream (`/api/chat/ws`, a seat in every conversation of
//! the user). It connects (from a chosen loopback source address when the run spreads
//! sockets over several; over TLS when the node is https://), waits for its own
//! `joined` event in each conversation it carries, then chats at the rate the driver
//! sets (Poisson arrivals, a `typing` event before some messages; a user stream sends
//! the user's whole rate, each message to one of its conversations at random) and
//! measures what comes back:
//!
//! - its own copy of a message is the acknowledgement, matched by the `client_id` every
//!   send carries: ack latency = now - send time;
//! - another member's message is a delivery: delivery latency = now - the send time
//!   written in the message's tag (one process, one clock);
//! - every stream event's `seq` is checked against its seat's last one, across
//!   reconnects: each position once, in order, per conversation (see `stream`);
//! - duplicates, per-sender reordering, `error` events and unexpected closes are
//!   counted.
//!
//! Every connection after a seat's first `joined` event resumes that seat's
//! conversation from its last seq seen (`since=` on a conversation socket, the
//! `resume` event on a user stream, see `ready`): the events replayed before the new
//! `joined` are counted as resumed. A reconnect or close first stops sending and waits
//! for the acknowledgements of the messages in flight; whatever is still unanswered
//! when a connection ends (closed, dropped, or answered "may not have been saved") is
//! written again with the same `client_id` once a connection is live, so the sender
//! learns the fate of everything it sent and nothing is stored twice. An unexpected
//! close is counted and followed by a reconnect after a short back-off.
//!
//! Layout: this file owns the task (spawn, connect, back-off and reconnect loop);
//! `seat` what the task keeps per conversation across connections; `stream` the pure
//! check of stream positions; `ready` the user stream's opening (`ready`, then
//! `resume`); `session` one connection's life (the select loop, quiescing and
//! closing), with `session::send` for what goes out and `session::receive` for what
//! comes in.

mod ready;
mod seat;
mod session;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::state::{Counters, Node, Run};
use seat::Seat;
pub use seat::SeatView;
use session::Session;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a typing indicator precedes its message.
const TYPING_LEAD: Duration = Duration::from_millis(300);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which socket: the user, and the conversations it carries.
#[derive(Clone, Debug)]
pub struct SocketSpec {
    pub user: usize,
    pub user_id: String,
    pub token: String,
    /// The user stream (`/api/chat/ws`, every seat of the user) rather than a
    /// conversation socket (`/api/chat/ws/{id}`, exactly one seat).
    pub user_stream: bool,
    pub seats: Vec<SeatSpec>,
}

/// The user's seat in one conversation the socket carries.
#[derive(Clone, Debug)]
pub struct SeatSpec {
    /// Global conversation index.
    pub conv: usize,
    /// The user's slot among the conversation's members.
    pub slot: usize,
    pub conv_id: String,
}

/// What the owner of a socket task can ask of it.
pub enum Command {
    /// Finish what is in flight, close, connect again; the reply says how it went.
    Reconnect(oneshot::Sender<ConnectOutcome>),
    /// Finish what is in flight and close for good. `final_close`: the run is over
    /// (the socket counts as connected until the end).
    Close {
        done: Option<oneshot::Sender<()>>,
        final_close: bool,
    },
    /// What each seat has seen of its conversation so far, in the socket's seat order.
    View(oneshot::Sender<Vec<SeatView>>),
    /// Move the user's read marker in seat `seat`'s conversation to `seq` (a `read`
    /// event); the reply is the marker the server's `read` event then names. Dropped
    /// unanswered when the socket is not connected or the connection ends first.
    Read {
        seat: usize,
        seq: u64,
        echoed: oneshot::Sender<u64>,
    },
}

/// How a connect (TCP, upgrade, own `joined` event) went.
#[derive(Clone, Debug)]
pub struct ConnectOutcome {
    pub ok: bool,
    pub elapsed: Duration,
    pub error: Option<String>,
}

pub struct SocketHandle {
    pub commands: mpsc::Sender<Command>,
    pub task: JoinHandle<()>,
}

/// Starts the socket task; the receiver gets the outcome of the first connect.
pub fn spawn(run: Arc<Run>, spec: SocketSpec) -> (SocketHandle, oneshot::Receiver<ConnectOutcome>) {
    let (tx, rx) = mpsc::channel(4);
    let (first_tx, first_rx) = oneshot::channel();
    let task = tokio::spawn(socket_main(run, spec, rx, first_tx));
    (SocketHandle { commands: tx, task }, first_rx)
}

/// Why a session ended.
enum End {
    Reconnect(oneshot::Sender<ConnectOutcome>),
    Closed(Option<oneshot::Sender<()>>),
    Dropped(String),
}

async fn socket_main(
    run: Arc<Run>,
    spec: SocketSpec,
    commands: mpsc::Receiver<Command>,
    first: oneshot::Sender<ConnectOutcome>,
) {
    let mut seats: Vec<Seat> = spec.seats.iter().map(Seat::new).collect();
    connections(&run, &spec, commands, first, &mut seats).await;
    for seat in &mut seats {
        seat.abandon(&run);
    }
}

/// Connects, runs sessions and reconnects until the seat is closed for good.
async fn connections(
    run: &Run,
    spec: &SocketSpec,
    mut commands: mpsc::Receiver<Command>,
    first: oneshot::Sender<ConnectOutcome>,
    seats: &mut [Seat],
) {
    let mut reply = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        match connect(run, spec, seats).await {
            Err(error) => {
                run.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                Counters::bump(&run.counters.connect_errors, &error);
                if let Some(reply) = reply.take() {
                    let _ = reply.send(ConnectOutcome {
                        ok: false,
                        elapsed: started.elapsed(),
                        error: Some(error),
                    });
                }
            }
            Ok(ws) => {
                run.counters.connects.fetch_add(1, Ordering::Relaxed);
                let session = Session::new(run, spec, ws, reply.take(), started, seats);
                match session.run(&mut commands).await {
                    End::Reconnect(next) => {
                        run.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        reply = Some(next);
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                    End::Closed(done) => {
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    End::Dropped(reason) => {
                        run.counters.drops.fetch_add(1, Ordering::Relaxed);
                        Counters::bump(&run.counters.drop_reasons, &reason);
                    }
                }
            }
        }
        // Back off before the next attempt, but obey commands meanwhile.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        let wait = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::View(reply)) => {
                        let _ = reply.send(seat::views(seats));
                    }
                    // Not connected: the marker cannot be moved (the reply is dropped).
                    Some(Command::Read { .. }) => {}
                    other => break other,
                },
                () = &mut sleep => break None,
            }
        };
        backoff = (backoff * 2).min(BACKOFF_MAX);
        match wait {
            Some(Command::Close { done, .. }) => {
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Some(Command::Reconnect(next)) => {
                if let Some(old) = reply.replace(next) {
                    let _ = old.send(ConnectOutcome {
                        ok: false,
                        elapsed: Duration::ZERO,
                        error: Some("superseded".into()),
                    });
                }
            }
            None if commands.is_closed() => return,
            None | Some(Command::View(_) | Command::Read { .. }) => {}
        }
    }
}

/// TCP connect (bound to a source address when the run spreads sockets), the TLS
/// handshake for a wss:// node, and upgrade: a conversation socket resuming its seat's
/// stream after `since` once it has a position; a user stream started with the
/// positions of every seat that has one.
async fn connect(run: &Run, spec: &SocketSpec, seats: &[Seat]) -> Result<Ws, String> {
    let node = run.node_of(spec.user);
    if spec.user_stream {
        let target = Target {
            node,
            conv_id: None,
            token: &spec.token,
            since: None,
            recv_buffer: None,
        };
        let ws = open(run, &target).await?;
        return ready::start(run, ws, seats).await;
    }
    let seat = seats
        .first()
        .ok_or("a conversation socket without its seat")?;
    let target = Target {
        node,
        conv_id: Some(&seat.conv_id),
        token: &spec.token,
        since: seat.since(),
        recv_buffer: None,
    };
    open(run, &target).await
}

/// Where a socket goes, and how.
pub struct Target<'a> {
    pub node: &'a Node,
    /// The conversation of a conversation socket; none: the user stream.
    pub conv_id: Option<&'a str>,
    pub token: &'a str,
    /// Resume the stream after this position.
    pub since: Option<u64>,
    /// A receive buffer this small (a client that means not to read).
    pub recv_buffer: Option<u32>,
}

/// Opens a WebSocket to `target` the way every socket of the run is opened (the hostile
/// clients too): TCP, TLS for a wss:// node, upgrade, each within `--join-timeout`.
pub async fn open(run: &Run, target: &Target<'_>) -> Result<Ws, String> {
    let node = target.node;
    let socket = match node.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(bytes) = target.recv_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| format!("receive buffer: {}", e.kind()))?;
    }
    if let Some(source) = run.sources.next() {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {}", e.kind()))?;
    }
    let connect_timeout = run.config.scenario.join_timeout();
    let stream = timeout(connect_timeout, socket.connect(node.addr))
        .await
        .map_err(|_| "tcp connect: timed out".to_string())?
        .map_err(|e| format!("tcp connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut url = match target.conv_id {
        Some(conv_id) => format!(
            "{}/api/chat/ws/{conv_id}?token={}",
            node.ws_url, target.token
        ),
        None => format!("{}/api/chat/ws?token={}", node.ws_url, target.token),
    };
    if let Some(since) = target.since {
        url.push_str(&format!("&since={since}"));
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    // wss:// when the node is https://: the run's rustls configuration (the same
    // handshake cost for every socket); ws:// ignores the connector.
    let connector = run.clients.tls.clone().map(Connector::Rustls);
    let (ws, _response) = timeout(
        connect_timeout,
        tokio_tungstenite::client_async_tls_with_config(url, stream, Some(config), connector),
    )
    .await
    .map_err(|_| "upgrade: timed out".to_string())?
    .map_err(|e| {
        let text = e.to_string();
        format!("upgrade: {}", text.chars().take(80).collect::<String>())
    })?;
    Ok(ws)
}

fn short(text: &str) -> String {
    text.chars().take(80).collect()
}
