//! What each kind of hostile client does, and how it reads the server's answer into
//! outcomes. Each is bounded: a flood sends at most [`FLOOD_MAX`] events, a one-shot
//! waits at most [`ANSWER_TIMEOUT`] for its answer, and a client that waits for the
//! server (the slow reader, the stalled body) gives up when the run stops. None of them
//! touches the normal users' state or counters.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::{Got, Hostile};
use crate::state::Run;
use crate::ws::{self, Target, Ws};

/// Most events one flooding client sends.
const FLOOD_MAX: u64 = 100_000;
/// Longest a one-shot client waits for the server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client reads what is left on its socket at the end.
const DRAIN: Duration = Duration::from_secs(3);
/// The slow reader's receive buffer: small, so the server's queue is what fills.
const SLOW_READER_BUFFER: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SlowReader,
    StalledBody,
    Flood,
    HugeUsername,
    LongMessage,
    OversizedFrame,
    HugeParticipantList,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::SlowReader,
        Kind::StalledBody,
        Kind::Flood,
        Kind::HugeUsername,
        Kind::LongMessage,
        Kind::OversizedFrame,
        Kind::HugeParticipantList,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::SlowReader => "slow reader",
            Kind::StalledBody => "stalled body",
            Kind::Flood => "flood",
            Kind::HugeUsername => "1 MB username",
            Kind::LongMessage => "6,000-character message",
            Kind::OversizedFrame => "oversized frame",
            Kind::HugeParticipantList => "huge participant list",
        }
    }

    /// For its account's username.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::SlowReader => "slow",
            Kind::StalledBody => "stall",
            Kind::Flood => "flood",
            Kind::HugeUsername => "name",
            Kind::LongMessage => "long",
            Kind::OversizedFrame => "frame",
            Kind::HugeParticipantList => "list",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Kind::SlowReader => "opens a socket in the normal users' conversation with a 4 KB receive buffer and never reads it",
            Kind::StalledBody => "sends a login's headers with Content-Length: 1000 and 10 bytes of body, then nothing",
            Kind::Flood => "sends message events as fast as its socket takes them, beyond the rate limit (at most 100,000)",
            Kind::HugeUsername => "logs in with a 1,000,000-character username",
            Kind::LongMessage => "sends one 6,000-character message over its socket",
            Kind::OversizedFrame => "sends one 100,000-byte frame over its socket",
            Kind::HugeParticipantList => "creates a conversation with 25,000 unknown participant ids (a body just under 1 MiB)",
        }
    }

    pub fn needs_account(self) -> bool {
        !matches!(self, Kind::StalledBody | Kind::HugeUsername)
    }
}

/// Runs one hostile client of `kind` to its end.
pub async fn act(run: &Run, kind: Kind, account: Option<Hostile>) -> Got {
    let mut got = Got::new(kind);
    match (kind, account) {
        (Kind::StalledBody, _) => stalled_body(run, &mut got).await,
        (Kind::HugeUsername, _) => huge_username(run, &mut got).await,
        (_, None) => got.note("no account"),
        (Kind::HugeParticipantList, Some(a)) => huge_participant_list(run, &a, &mut got).await,
        (Kind::SlowReader, Some(a)) => slow_reader(run, &a, &mut got).await,
        (Kind::Flood, Some(a)) => flood(run, &a, &mut got).await,
        (Kind::LongMessage, Some(a)) => {
            let text = serde_json::json!({ "type": "message", "content": "x".repeat(6000) });
            one_frame(run, &a, Message::text(text.to_string()), &mut got).await;
        }
        (Kind::OversizedFrame, Some(a)) => {
            let text = format!(
                r#"{{"type":"message","content":"{}"}}"#,
                "y".repeat(100_000)
            );
            one_frame(run, &a, Message::text(text), &mut got).await;
        }
    }
    got
}

async fn open(run: &Run, account: &Hostile, recv_buffer: Option<u32>) -> Result<Ws, String> {
    let target = Target {
        node: &run.nodes[0],
        conv_id: Some(&account.conv_id),
        token: &account.token,
        since: None,
        recv_buffer,
    };
    ws::open(run, &target).await
}

/// What a server frame says, as an outcome; `None` for frames that say nothing of
/// this client (other members' traffic, presence).
fn outcome_of(frame: &Message) -> Option<String> {
    match frame {
        Message::Text(text) => {
            let value: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
            match value.get("type")?.as_str()? {
                "error" => Some(format!(
                    "error: {}",
                    value.get("detail").and_then(|d| d.as_str()).unwrap_or("?")
                )),
                _ => None,
            }
        }
        Message::Close(Some(close)) => Some(format!("closed with {}", u16::from(close.code))),
        Message::Close(None) => Some("closed without a code".into()),
        _ => None,
    }
}

/// Reads what the server left on the socket until it closes, or `DRAIN` passes.
async fn drain(ws: &mut Ws, got: &mut Got) {
    let until = Instant::now() + DRAIN;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => {
                got.note("still open at the end");
                return;
            }
            Ok(None) => {
                got.note("connection ended without a close");
                return;
            }
            Ok(Some(Err(e))) => {
                got.note(format!("read error: {}", short(&e.to_string())));
                return;
            }
            Ok(Some(Ok(frame))) => {
                if let Some(outcome) = outcome_of(&frame) {
                    let closed = outcome.starts_with("closed");
                    got.note(outcome);
                    if closed {
                        return;
                    }
                }
            }
        }
    }
}

fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

/// Connects with a tiny receive buffer and never reads until the run stops; then reads
/// what is left to learn whether the server closed it, and how.
async fn slow_reader(run: &Run, account: &Hostile, got: &mut Got) {
    let mut ws = match open(run, account, Some(SLOW_READER_BUFFER)).await {
        Ok(ws) => ws,
        Err(e) => return got.note(format!("connect failed: {e}")),
    };
    let started = Instant::now();
    let closed = tokio::select! {
        // Reading nothing but the end of the stream: a close frame waits behind the
        // unread data, so only the connection's end is seen here.
        () = run.until_stopping() => false,
        () = ended(&mut ws) => true,
    };
    if closed {
        got.answer_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    }
    drain(&mut ws, got).await;
}

/// Resolves when the connection is reset or ended by the peer, without reading data:
/// a zero-length peek would need the socket itself, so this polls its readiness only
/// for errors (the unread data stays where it is).
async fn ended(ws: &mut Ws) {
    let stream = ws.get_ref();
    let tcp = match stream {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => return std::future::pending().await,
    };
    loop {
        let mut byte = [0u8; 1];
        // peek does not consume: the data stays unread, as a slow reader's would.
        match tcp.peek(&mut byte).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Sends the headers of a login and a few bytes of its body, then stalls until the
/// server answers or closes, or the run stops.
async fn stalled_body(run: &Run, got: &mut Got) {
    if run.clients.tls.is_some() {
        return got.note("not tried over TLS");
    }
    let node = &run.nodes[0];
    let Ok(mut stream) = TcpStream::connect(node.addr).await else {
        return got.note("connect failed");
    };
    let head = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"username\"",
        node.addr
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return got.note("write failed");
    }
    got.sent = 1;
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let read = tokio::select! {
        read = stream.read(&mut buf) => Some(read),
        () = run.until_stopping() => None,
    };
    let answered = read.is_some();
    let outcome = match read {
        None => format!(
            "still open at the end ({:.0} s)",
            started.elapsed().as_secs_f64()
        ),
        Some(Ok(0)) => "closed without an answer".to_string(),
        Some(Ok(n)) => {
            let answer = String::from_utf8_lossy(&buf[..n]);
            match answer.split_whitespace().nth(1) {
                Some(code) => format!("HTTP {code}"),
                None => "an answer that is not HTTP".to_string(),
            }
        }
        Some(Err(e)) => format!("read error: {}", e.kind()),
    };
    if answered {
        got.answer_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    }
    got.note(outcome);
}

/// Sends message events as fast as the socket takes them while reading what comes
/// back, until the run stops, the server closes, or `FLOOD_MAX` were sent.
async fn flood(run: &Run, account: &Hostile, got: &mut Got) {
    let ws = match open(run, account, None).await {
        Ok(ws) => ws,
        Err(e) => return got.note(format!("connect failed: {e}")),
    };
    let (mut sink, mut stream) = ws.split();
    let mut sent = 0u64;
    let mut closed = false;
    let stop = run.until_stopping();
    tokio::pin!(stop);
    while !closed {
        tokio::select! {
            biased;
            () = &mut stop => break,
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) if own_message(text.as_str(), account) => {
                    got.note("own message delivered back");
                }
                Some(Ok(frame)) => {
                    if let Some(o) = outcome_of(&frame) {
                        closed = o.starts_with("closed");
                        got.note(o);
                    }
                }
                Some(Err(e)) => {
                    got.note(format!("read error: {}", short(&e.to_string())));
                    closed = true;
                }
                None => {
                    got.note("connection ended without a close");
                    closed = true;
                }
            },
            written = sink.send(Message::text(format!(r#"{{"type":"message","content":"flood {sent}"}}"#))), if sent < FLOOD_MAX => {
                if written.is_err() {
                    got.note("write failed");
                    closed = true;
                } else {
                    sent += 1;
                }
            }
        }
    }
    got.sent = sent;
    if !closed {
        let _ = timeout(DRAIN, sink.close()).await;
    }
}

/// Sends one frame and reports what the server made of it (an `error`, a close, or
/// the message coming back).
async fn one_frame(run: &Run, account: &Hostile, frame: Message, got: &mut Got) {
    let mut ws = match open(run, account, None).await {
        Ok(ws) => ws,
        Err(e) => return got.note(format!("connect failed: {e}")),
    };
    let started = Instant::now();
    if ws.send(frame).await.is_err() {
        return got.note("write failed");
    }
    got.sent = 1;
    let until = started + ANSWER_TIMEOUT;
    let outcome = loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break "no answer".to_string(),
            Ok(None) => break "connection ended without a close".to_string(),
            Ok(Some(Err(e))) => break format!("read error: {}", short(&e.to_string())),
            Ok(Some(Ok(Message::Text(text)))) if own_message(text.as_str(), account) => {
                break "stored and delivered".to_string()
            }
            Ok(Some(Ok(frame))) => {
                if let Some(outcome) = outcome_of(&frame) {
                    break outcome;
                }
            }
        }
    };
    got.answer_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    got.note(outcome);
    let _ = timeout(DRAIN, ws.close(None)).await;
}

/// Whether a frame is a chat message this client sent, come back (stored).
fn own_message(text: &str, account: &Hostile) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    value.get("type").and_then(|t| t.as_str()) == Some("message")
        && value.get("sender_id").and_then(|t| t.as_str()) == Some(account.user_id.as_str())
}

/// A REST call's status (or why there was none) and how long the answer took.
async fn answer(got: &mut Got, request: reqwest::RequestBuilder) {
    let started = Instant::now();
    got.sent = 1;
    let outcome = match timeout(ANSWER_TIMEOUT, request.send()).await {
        Err(_) => "no answer".to_string(),
        Ok(Ok(response)) => format!("HTTP {}", response.status().as_u16()),
        Ok(Err(e)) => format!("request failed: {}", short(&e.to_string())),
    };
    got.answer_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    got.note(outcome);
}

async fn huge_username(run: &Run, got: &mut Got) {
    let body = serde_json::json!({ "username": "u".repeat(1_000_000), "password": "x" });
    let url = format!("{}/api/auth/login", run.nodes[0].base_url);
    answer(got, run.clients.http.post(url).json(&body)).await;
}

async fn huge_participant_list(run: &Run, account: &Hostile, got: &mut Got) {
    let ids: Vec<String> = (0..25_000u128)
        .map(|i| {
            let n = rand::random::<u128>() ^ i;
            let h = format!("{n:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        })
        .collect();
    let body = serde_json::json!({
        "name": "hostile",
        "is_group": true,
        "participant_ids": ids,
    });
    let url = format!("{}/api/chat/conversations", run.nodes[0].base_url);
    let request = run
        .clients
        .http
        .post(url)
        .bearer_auth(&account.token)
        .json(&body);
    answer(got, request).await;
}
