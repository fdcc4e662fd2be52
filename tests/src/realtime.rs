//! Helpers for the real-time (WebSocket) tests: event predicates, joining a
//! conversation in a known order, paging through history, low-level WebSocket
//! connections (raw frames, a small receive buffer), a TCP relay that can cut one
//! server off its database, and the server's resident memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;

use crate::client::{Api, Session};
use crate::server::{ServerOptions, TestServer};
use crate::ws::{ws_url, WsClient, WsEvent};

/// `e2e_on!(scenario, |opts| opts.shards(4), [sqlite_uring => (Sqlite, Uring), ...]);`
/// generates a module `scenario` with one `#[tokio::test]` per listed configuration,
/// like [`crate::e2e!`] but for a chosen subset of configurations.
#[macro_export]
macro_rules! e2e_on {
    ($scenario:ident, $opts:expr, [$($name:ident => ($store:ident, $driver:ident)),+ $(,)?]) => {
        mod $scenario {
            $(
                #[::tokio::test]
                async fn $name() {
                    let customize: fn($crate::ServerOptions) -> $crate::ServerOptions = $opts;
                    $crate::run_with(
                        customize($crate::ServerOptions::new(
                            $crate::Store::$store,
                            $crate::IoDriver::$driver,
                        )),
                        |server| ::std::boxed::Box::pin(super::$scenario(server)),
                    )
                    .await
                }
            )+
        }
    };
}

/// Raises the per-user rate limit so far that a test sending hundreds of events is
/// never limited.
pub fn no_rate_limit(opts: ServerOptions) -> ServerOptions {
    opts.arg("--ws-rate-per-second")
        .arg("1000000")
        .arg("--ws-rate-burst")
        .arg("1000000")
}

/// The `type` of an event (`""` when absent).
pub fn kind(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A string field (`""` when absent).
pub fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The `joined` system event of `who`.
pub fn is_joined(v: &Value, who: &Session) -> bool {
    kind(v) == "system"
        && field(v, "sender_id") == who.user_id
        && field(v, "content") == format!("User {} joined the conversation", who.username)
}

/// The `left` system event of `who`.
pub fn is_left(v: &Value, who: &Session) -> bool {
    kind(v) == "system"
        && field(v, "sender_id") == who.user_id
        && field(v, "content") == format!("User {} left the conversation", who.username)
}

/// The `message` event with this content.
pub fn is_message_with(v: &Value, content: &str) -> bool {
    kind(v) == "message" && field(v, "content") == content
}

/// The `message_id`s of the `message` events among `events`, in order.
pub fn message_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|v| kind(v) == "message")
        .map(|v| field(v, "message_id").to_string())
        .collect()
}

/// The sorted `active_users` of a system event.
pub fn active_users(v: &Value) -> anyhow::Result<Vec<String>> {
    let list = v
        .get("active_users")
        .and_then(Value::as_array)
        .with_context(|| format!("no active_users list in {v}"))?;
    let mut users = list
        .iter()
        .map(|u| u.as_str().map(str::to_string).context("non-string user id"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    users.sort();
    Ok(users)
}

/// Sorted user ids of `sessions`, without duplicates.
pub fn user_ids(sessions: &[&Session]) -> Vec<String> {
    let mut ids: Vec<String> = sessions.iter().map(|s| s.user_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Connects `who` to the conversation and waits for the `joined` event of this very
/// connection, so that once this returns the server has registered it and every later
/// broadcast reaches it. Connecting clients one after the other with this gives each
/// of them a known set of `joined` events to expect. Returns the client and its event.
pub async fn join(
    srv: &TestServer,
    conversation: &str,
    who: &Session,
) -> anyhow::Result<(WsClient, Value)> {
    let mut ws = WsClient::connect(&srv.ws_base_url(), conversation, &who.token).await?;
    let joined = ws
        .wait_for(&format!("{}'s own joined event", who.username), |v| {
            is_joined(v, who)
        })
        .await?;
    Ok((ws, joined))
}

/// Registers users named after `prefixes` (unique names) and a group conversation
/// created by the first of them with all of them as participants.
pub async fn group(api: &Api, prefixes: &[&str]) -> anyhow::Result<(Vec<Session>, String)> {
    let mut users = Vec::new();
    for prefix in prefixes {
        users.push(api.new_user(prefix).await?);
    }
    let Some((creator, others)) = users.split_first() else {
        bail!("a group needs at least one user");
    };
    let others: Vec<&Session> = others.iter().collect();
    let conv = api
        .create_conversation(creator, "realtime", &others)
        .await?;
    let id = conv
        .get("id")
        .and_then(Value::as_str)
        .with_context(|| format!("conversation without id: {conv}"))?
        .to_string();
    Ok((users, id))
}

/// Reads until `n` `message` events have arrived and returns them; other events are
/// skipped, an error event or the end of the connection fails.
pub async fn collect_messages(ws: &mut WsClient, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let ev = ws
            .recv()
            .await
            .with_context(|| format!("waiting for message {} of {n}", got.len() + 1))?;
        match ev {
            WsEvent::Json(v) if kind(&v) == "message" => got.push(v),
            WsEvent::Json(v) if kind(&v) == "error" => {
                bail!(
                    "error event while waiting for message {} of {n}: {v}",
                    got.len() + 1
                )
            }
            WsEvent::Json(_) => {}
            other => bail!(
                "got {other:?} while waiting for message {} of {n}",
                got.len() + 1
            ),
        }
    }
    Ok(got)
}

/// Reads JSON events until one satisfies `stop` and returns all of them, that one
/// included. Error events are collected like any other. Fails on a close, the end of
/// the stream or a non-JSON frame.
pub async fn events_until(
    ws: &mut WsClient,
    what: &str,
    stop: impl Fn(&Value) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let mut seen = Vec::new();
    loop {
        let ev = ws
            .recv()
            .await
            .with_context(|| format!("waiting for {what}; got so far {seen:?}"))?;
        match ev {
            WsEvent::Json(v) => {
                let done = stop(&v);
                seen.push(v);
                if done {
                    return Ok(seen);
                }
            }
            other => bail!("got {other:?} while waiting for {what}; got so far {seen:?}"),
        }
    }
}

/// Reads until the close frame and returns it, with every event before it. Fails,
/// listing what arrived, when the stream ends without a close frame or nothing more
/// arrives.
pub async fn close_frame(
    ws: &mut WsClient,
    what: &str,
) -> anyhow::Result<(Option<(u16, String)>, Vec<WsEvent>)> {
    let mut before = Vec::new();
    loop {
        let ev = ws.recv().await.with_context(|| {
            format!("{what}: waiting for a close frame; got instead {before:?}")
        })?;
        match ev {
            WsEvent::Close(frame) => return Ok((frame, before)),
            WsEvent::Ended => {
                bail!("{what}: the stream ended without a close frame; got before {before:?}")
            }
            other => before.push(other),
        }
    }
}

/// The next event, which must be an `error` with a non-empty string `detail`.
pub async fn expect_error_event(ws: &mut WsClient, after: &str) -> anyhow::Result<Value> {
    let ev = ws
        .recv()
        .await
        .with_context(|| format!("waiting for the error event after {after}"))?;
    let WsEvent::Json(v) = ev else {
        bail!("after {after}: expected an error event, got {ev:?}");
    };
    ensure!(
        kind(&v) == "error",
        "after {after}: expected an error event, got {v}"
    );
    ensure!(
        v.get("detail")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.trim().is_empty()),
        "after {after}: error event without a non-empty string detail: {v}"
    );
    Ok(v)
}

/// What became of one chat message: its echo, or the error event about it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Acked(Value),
    Refused(Value),
}

/// Sends a message with a `ref` and waits for its echo or for the error carrying that
/// `ref` (other events are skipped). Any other error event fails.
pub async fn send_tracked(
    ws: &mut WsClient,
    content: &str,
    reference: &str,
) -> anyhow::Result<Outcome> {
    ws.send_json(&json!({"type": "message", "content": content, "ref": reference}))
        .await?;
    let events = events_until(ws, &format!("the outcome of {content:?}"), |v| {
        is_message_with(v, content) || kind(v) == "error"
    })
    .await?;
    let Some(last) = events.last() else {
        bail!("no event for {content:?}");
    };
    if kind(last) == "error" {
        ensure!(
            field(last, "ref") == reference,
            "error event without the ref {reference:?} of {content:?}: {last}"
        );
        Ok(Outcome::Refused(last.clone()))
    } else {
        Ok(Outcome::Acked(last.clone()))
    }
}

/// The whole history of a conversation, oldest first, paging backwards with
/// `limit=100&before=<oldest id of the page>`.
pub async fn full_history(
    api: &Api,
    who: &Session,
    conversation: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10_000 {
        let query = match &before {
            Some(id) => format!("limit=100&before={id}"),
            None => "limit=100".to_string(),
        };
        let page = api.history_list(who, conversation, &query).await?;
        let full = page.len() == 100;
        let oldest = page.first().map(|m| field(m, "id").to_string());
        let mut page = page;
        page.append(&mut all);
        all = page;
        match oldest {
            Some(id) if full => before = Some(id),
            _ => return Ok(all),
        }
    }
    bail!("history of {conversation} did not end after 10000 pages")
}

/// The ids of a history list, in order.
pub fn history_ids(history: &[Value]) -> Vec<String> {
    history.iter().map(|m| field(m, "id").to_string()).collect()
}

/// Items that occur more than once.
pub fn duplicates(items: &[String]) -> Vec<String> {
    let mut sorted = items.to_vec();
    sorted.sort();
    let mut dups: Vec<String> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].clone())
        .collect();
    dups.dedup();
    dups
}

// ---- low-level WebSocket ------------------------------------------------------------

/// A WebSocket client on a plain TCP stream, for what [`WsClient`] hides: control
/// frames, raw frames, and not reading at all.
pub type RawWs = WebSocketStream<TcpStream>;

/// The `host:port` of `http://host:port`.
pub fn server_addr(srv: &TestServer) -> anyhow::Result<SocketAddr> {
    let hostport = srv
        .base_url()
        .strip_prefix("http://")
        .with_context(|| format!("unexpected base url {}", srv.base_url()))?;
    hostport
        .parse()
        .with_context(|| format!("parsing {hostport} as a socket address"))
}

/// Connects a [`RawWs`] to a conversation. With `recv_buffer`, the socket's receive
/// buffer is set to that size before connecting (so the window stays small).
pub async fn raw_connect(
    srv: &TestServer,
    conversation: &str,
    token: &str,
    recv_buffer: Option<u32>,
) -> anyhow::Result<RawWs> {
    let addr = server_addr(srv)?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating socket")?;
    if let Some(size) = recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .context("setting SO_RCVBUF")?;
    }
    let url = ws_url(&srv.ws_base_url(), conversation, token);
    let connect = async {
        let stream = socket.connect(addr).await.context("TCP connect")?;
        let (ws, _response) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .context("WebSocket handshake")?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(crate::ws::RECV_TIMEOUT, connect)
        .await
        .context("WebSocket connect timed out")?
}

// ---- PostgreSQL outage ----------------------------------------------------------------

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

/// The user-info and `host:port` of the harness's PostgreSQL admin URL
/// (`postgres://USERINFO@HOST:PORT/DB`).
pub fn postgres_parts() -> anyhow::Result<(String, String)> {
    let admin = crate::postgres::admin_url();
    let rest = admin
        .strip_prefix("postgres://")
        .or_else(|| admin.strip_prefix("postgresql://"))
        .with_context(|| format!("unexpected PostgreSQL URL {admin}"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.to_string(), h.to_string()),
        None => (String::new(), authority.to_string()),
    };
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:5432")
    };
    Ok((userinfo, hostport))
}

/// A database created for one test and dropped (`WITH (FORCE)`) when this goes away.
pub struct ScratchDatabase {
    pub name: String,
}

impl ScratchDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        Ok(Self {
            name: crate::postgres::create_database().await?,
        })
    }

    /// The URL of this database reached through `via` (e.g. a [`TcpRelay`]).
    pub fn url_via(&self, via: SocketAddr) -> anyhow::Result<String> {
        let (userinfo, _) = postgres_parts()?;
        let at = if userinfo.is_empty() {
            String::new()
        } else {
            format!("{userinfo}@")
        };
        Ok(format!("postgres://{at}{via}/{}", self.name))
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Best effort: a leftover test database is harmless.
        let _ = crate::postgres::drop_database_blocking(&self.name);
    }
}

// ---- process memory -----------------------------------------------------------------

/// The pid of the server process, found by its unique data directory or database name
/// on its command line.
pub fn server_pid(srv: &TestServer) -> anyhow::Result<u32> {
    let needle = match (srv.data_dir(), srv.database()) {
        (Some(dir), _) => dir.to_string_lossy().into_owned(),
        (None, Some(db)) => db.to_string(),
        (None, None) => bail!("server has neither a data dir nor a database"),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_server = args.first().is_some_and(|a| a.ends_with("chat-server"));
        if is_server && args.iter().any(|a| a.contains(&needle)) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        other => bail!("expected one chat-server process using {needle}, found {other:?}"),
    }
}

/// `VmRSS` of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    line.split_whitespace()
        .nth(1)
        .context("VmRSS without a value")?
        .parse()
        .context("parsing VmRSS")
}

/// Sleeps; for waiting on a token-bucket refill or a reconnect, never for asserting time.
pub async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
