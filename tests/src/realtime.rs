//! Helpers for the real-time (WebSocket) tests: event predicates and shape checks,
//! joining a conversation in a known order, collecting events, frames the server must
//! refuse, paging through history, low-level WebSocket connections (raw frames, a small
//! receive buffer), the server's resident memory; and (in `outage`) a TCP relay that
//! can cut one server off its database.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{str_field, unique_name, Api, Session, PASSWORD};
use crate::server::{ServerOptions, TestServer};
use crate::ws::{ws_url, WsClient, WsEvent};

mod outage;
pub use outage::TcpRelay;

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
pub async fn group<const N: usize>(
    api: &Api,
    prefixes: &[&str; N],
) -> anyhow::Result<([Session; N], String)> {
    let users = api.new_users(*prefixes).await?;
    let Some((creator, others)) = users.split_first() else {
        bail!("a group needs at least one user");
    };
    let others: Vec<&Session> = others.iter().collect();
    let id = api.new_conversation(creator, "realtime", &others).await?;
    Ok((users, id))
}

/// [`join`] for each of `who` in order (the same user may come more than once, for
/// several tabs); returns the clients. Each has read its own `joined` event only: the
/// `joined` events of those connected after it are still to be read.
pub async fn join_each<const N: usize>(
    srv: &TestServer,
    conversation: &str,
    who: [&Session; N],
) -> anyhow::Result<[WsClient; N]> {
    let mut clients = Vec::with_capacity(N);
    for user in who {
        clients.push(join(srv, conversation, user).await?.0);
    }
    clients
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected {N} clients"))
}

/// [`join_each`], and every client also reads the `joined` events of those connected
/// after it, so that once this returns no client has a `joined` event left to read.
pub async fn join_settled<const N: usize>(
    srv: &TestServer,
    conversation: &str,
    who: [&Session; N],
) -> anyhow::Result<[WsClient; N]> {
    let mut clients: Vec<WsClient> = Vec::with_capacity(N);
    for user in who {
        let (ws, _) = join(srv, conversation, user).await?;
        for earlier in &mut clients {
            earlier
                .wait_for(&format!("{}'s joined event", user.username), |v| {
                    is_joined(v, user)
                })
                .await?;
        }
        clients.push(ws);
    }
    clients
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected {N} clients"))
}

/// Closes every client (see [`WsClient::close`]).
pub async fn close_all(clients: impl IntoIterator<Item = WsClient>) -> anyhow::Result<()> {
    for ws in clients {
        ws.close().await?;
    }
    Ok(())
}

/// Asserts that an event's `sender_id` and `sender_username` are `who`'s.
pub fn check_sender(ev: &Value, who: &Session) -> anyhow::Result<()> {
    ensure!(
        ev["sender_id"] == who.user_id.as_str(),
        "sender_id is not {}'s: {ev}",
        who.username
    );
    ensure!(
        ev["sender_username"] == who.username.as_str(),
        "sender_username is not {}'s: {ev}",
        who.username
    );
    Ok(())
}

/// Asserts the shape of a `message` event (docs/protocol.md): type, content, sender, conversation,
/// `is_edited: false`, a timestamp and a non-empty `message_id`, which it returns.
pub fn check_message_event(
    ev: &Value,
    content: &str,
    sender: &Session,
    conversation: &str,
) -> anyhow::Result<String> {
    ensure!(kind(ev) == "message", "not a message event: {ev}");
    ensure!(ev["content"] == content, "content differs: {ev}");
    check_sender(ev, sender)?;
    ensure!(
        ev["conversation_id"] == conversation,
        "conversation_id: {ev}"
    );
    ensure!(ev["is_edited"] == false, "is_edited must be false: {ev}");
    crate::client::timestamp_field(ev, "timestamp")?;
    let id = crate::client::str_field(ev, "message_id")?;
    ensure!(!id.is_empty(), "empty message_id: {ev}");
    Ok(id)
}

/// The next event of type `ty` on each of `clients` in turn; it must be the same on all
/// of them, and is returned.
pub async fn recv_everywhere(
    clients: &mut [&mut WsClient],
    ty: &str,
    what: &str,
) -> anyhow::Result<Value> {
    let mut seen = Vec::with_capacity(clients.len());
    for ws in clients.iter_mut() {
        seen.push(ws.recv_type(ty).await.with_context(|| what.to_string())?);
    }
    let Some(first) = seen.first().cloned() else {
        bail!("{what}: no clients");
    };
    ensure!(
        seen.iter().all(|v| v == &first),
        "{what}: differs between connections: {seen:?}"
    );
    Ok(first)
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

/// [`events_until`] the `message` event with this content.
pub async fn events_until_message(ws: &mut WsClient, content: &str) -> anyhow::Result<Vec<Value>> {
    events_until(ws, &format!("the message {content:?}"), |v| {
        is_message_with(v, content)
    })
    .await
}

/// Sends a chat message without a `ref` and returns every event up to its echo, the
/// echo included (see [`events_until`]).
pub async fn send_and_collect(ws: &mut WsClient, content: &str) -> anyhow::Result<Vec<Value>> {
    ws.send_json(&json!({"type": "message", "content": content}))
        .await?;
    events_until_message(ws, content).await
}

/// Sends a chat message and fails unless its echo is the very next event, i.e. nothing
/// else was pending for `ws`; `what` says why nothing else was expected.
pub async fn expect_only_echo(ws: &mut WsClient, content: &str, what: &str) -> anyhow::Result<()> {
    let events = send_and_collect(ws, content).await?;
    ensure!(
        events.len() == 1,
        "{what}: got more than the echo of {content:?}: {events:?}"
    );
    Ok(())
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

/// Sends `frame`, expects the next event to be the error about it (see
/// [`expect_error_event`]) carrying `reference` when given, and returns the error.
pub async fn send_raw_refused(
    ws: &mut WsClient,
    frame: Message,
    reference: Option<&str>,
    what: &str,
) -> anyhow::Result<Value> {
    ws.send_raw(frame).await?;
    let err = expect_error_event(ws, what).await?;
    if let Some(r) = reference {
        ensure!(err["ref"] == r, "{what}: ref {r:?} not echoed: {err}");
    }
    Ok(err)
}

/// [`send_raw_refused`] for a JSON frame, with the frame's own `ref` if it has one.
pub async fn send_refused(ws: &mut WsClient, frame: &Value, what: &str) -> anyhow::Result<Value> {
    let reference = frame.get("ref").and_then(Value::as_str);
    send_raw_refused(ws, Message::text(frame.to_string()), reference, what).await
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

// ---- process memory -----------------------------------------------------------------

/// `VmRSS` of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(testkit::procfs::usage(pid)?.rss_kib)
}

/// Sleeps; for waiting on a token-bucket refill or a reconnect, never for asserting time.
pub async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Registers `n` users at once (one password hash each) and signs their tokens with
/// the server's key, so rooms of hundreds are set up in seconds.
pub async fn members(srv: &TestServer, n: usize) -> anyhow::Result<Vec<Session>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let api = srv.api();
        let secret = srv.secret_key().to_string();
        set.spawn(async move {
            let username = unique_name(&format!("big{i}"));
            let user = api.register(&username, PASSWORD).await?.expect(201)?;
            let user_id = str_field(&user, "id")?;
            let token = crate::jwt::hs256(&secret, &user_id, 3600)?;
            anyhow::Ok((
                i,
                Session {
                    username,
                    user_id,
                    token,
                },
            ))
        });
    }
    let mut users: Vec<(usize, Session)> = Vec::with_capacity(n);
    while let Some(done) = set.join_next().await {
        users.push(done??);
    }
    users.sort_by_key(|(i, _)| *i);
    Ok(users.into_iter().map(|(_, s)| s).collect())
}

/// `n` members of one new conversation, created by the first.
pub async fn room(srv: &TestServer, n: usize) -> anyhow::Result<(Vec<Session>, String)> {
    let users = members(srv, n).await?;
    let others: Vec<&Session> = users[1..].iter().collect();
    let conv = srv
        .api()
        .new_conversation(&users[0], "big room", &others)
        .await?;
    Ok((users, conv))
}
