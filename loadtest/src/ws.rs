//! One simulated user's WebSocket in one conversation, as a tokio task: it connects
//! (from a chosen loopback source address when the run spreads sockets over several),
//! waits for its own `joined` event, then chats at the rate the driver sets (Poisson
//! arrivals, a `typing` event before some messages) and measures what comes back:
//!
//! - its own copy of a message is the acknowledgement: ack latency = now - send time;
//! - another member's message is a delivery: delivery latency = now - the send time
//!   written in the message's tag (one process, one clock);
//! - duplicates, per-sender reordering, `error` events and unexpected closes are
//!   counted.
//!
//! A reconnect or close first stops sending and waits for the acknowledgements of the
//! messages in flight, so the sender knows the fate of everything it sent; an
//! unexpected close is counted and followed by a reconnect after a short back-off.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::state::{lock, parse_tag, Control, Counters, Interval, Record, Run, Tag};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a typing indicator precedes its message.
const TYPING_LEAD: Duration = Duration::from_millis(300);

type Ws = WebSocketStream<TcpStream>;

/// Which socket: the user, the conversation and the user's seat in it.
#[derive(Clone, Debug)]
pub struct SocketSpec {
    pub user: usize,
    pub conv: usize,
    pub slot: usize,
    pub conv_id: String,
    pub user_id: String,
    pub token: String,
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
    mut commands: mpsc::Receiver<Command>,
    first: oneshot::Sender<ConnectOutcome>,
) {
    let mut reply = Some(first);
    let mut backoff = BACKOFF_MIN;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    loop {
        let started = Instant::now();
        match connect(&run, &spec).await {
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
                let session = Session::new(&run, &spec, ws, reply.take(), started, &mut rng);
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
        let wait = tokio::select! {
            command = commands.recv() => command,
            () = tokio::time::sleep(backoff) => None,
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
            None => {}
        }
    }
}

/// TCP connect (bound to a source address when the run spreads sockets) and upgrade.
async fn connect(run: &Run, spec: &SocketSpec) -> Result<Ws, String> {
    let socket = match run.target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(source) = run.sources.next() {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {}", e.kind()))?;
    }
    let stream = timeout(CONNECT_TIMEOUT, socket.connect(run.target))
        .await
        .map_err(|_| "tcp connect: timed out".to_string())?
        .map_err(|e| format!("tcp connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let url = format!(
        "{}/api/chat/ws/{}?token={}",
        run.ws_url, spec.conv_id, spec.token
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _response) = timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
    )
    .await
    .map_err(|_| "upgrade: timed out".to_string())?
    .map_err(|e| {
        let text = e.to_string();
        format!("upgrade: {}", text.chars().take(80).collect::<String>())
    })?;
    Ok(ws)
}

/// A string field borrowed from the frame when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// The frames the harness reads; everything else in them is ignored.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    sender_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    detail: Option<Text<'a>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Text<'a>>,
}

enum Mode {
    /// Connected (maybe still waiting for the own `joined` event).
    Live,
    /// Not sending; waiting for the acknowledgements in flight.
    Quiescing(After),
    /// Close sent; reading until the server's close.
    Closing(After),
}

enum After {
    Reconnect(oneshot::Sender<ConnectOutcome>),
    Close {
        done: Option<oneshot::Sender<()>>,
        final_close: bool,
    },
}

impl After {
    fn into_end(self) -> End {
        match self {
            After::Reconnect(reply) => End::Reconnect(reply),
            After::Close { done, .. } => End::Closed(done),
        }
    }

    fn is_final(&self) -> bool {
        matches!(
            self,
            After::Close {
                final_close: true,
                ..
            }
        )
    }
}

/// What the send timer fires next.
#[derive(Clone, Copy)]
enum Next {
    Typing { message_at: Instant },
    Message,
}

struct Session<'a> {
    run: &'a Run,
    spec: &'a SocketSpec,
    ws: Ws,
    rng: &'a mut SmallRng,
    reply: Option<oneshot::Sender<ConnectOutcome>>,
    started: Instant,
    joined: bool,
    /// This connection's messages not yet acknowledged or refused.
    outstanding: u64,
    /// Per sender slot: 1 + the highest sequence number delivered on this connection.
    last_seq: Vec<usize>,
    control: Control,
    next: Option<Next>,
}

impl<'a> Session<'a> {
    fn new(
        run: &'a Run,
        spec: &'a SocketSpec,
        ws: Ws,
        reply: Option<oneshot::Sender<ConnectOutcome>>,
        started: Instant,
        rng: &'a mut SmallRng,
    ) -> Self {
        let members = run.convs[spec.conv].members.len();
        Session {
            run,
            spec,
            ws,
            rng,
            reply,
            started,
            joined: false,
            outstanding: 0,
            last_seq: vec![0; members],
            control: *run.control.borrow(),
            next: None,
        }
    }

    async fn run(mut self, commands: &mut mpsc::Receiver<Command>) -> End {
        let mut control_rx = self.run.control.subscribe();
        self.control = *control_rx.borrow_and_update();
        let mut mode = Mode::Live;
        let send_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(send_timer);
        let deadline = tokio::time::sleep(JOIN_TIMEOUT);
        tokio::pin!(deadline);
        let mut deadline_armed = true;

        loop {
            // (Re)arm the send timer when sending is possible and nothing is scheduled.
            let may_send = self.joined
                && matches!(mode, Mode::Live)
                && self.control.sending
                && self.control.rate_per_user > 0.0;
            if !may_send {
                self.next = None;
            } else if self.next.is_none() {
                let at = self.schedule();
                send_timer.as_mut().reset(at);
            }
            // A quiescing socket with nothing in flight closes now.
            if let Mode::Quiescing(_) = mode {
                if self.outstanding == 0 {
                    mode = self.begin_close(mode).await;
                    deadline.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                    deadline_armed = true;
                }
            }

            tokio::select! {
                biased;
                command = commands.recv(), if matches!(mode, Mode::Live) => {
                    let after = match command {
                        Some(Command::Reconnect(reply)) => After::Reconnect(reply),
                        Some(Command::Close { done, final_close }) => After::Close { done, final_close },
                        None => After::Close { done: None, final_close: true },
                    };
                    if self.joined {
                        mode = Mode::Quiescing(after);
                        deadline.as_mut().reset(Instant::now() + self.run.config.drain_timeout());
                    } else {
                        mode = self.begin_close(Mode::Quiescing(after)).await;
                        deadline.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                    }
                    deadline_armed = true;
                }
                changed = control_rx.changed() => {
                    if changed.is_ok() {
                        self.control = *control_rx.borrow_and_update();
                        self.next = None;
                    }
                }
                frame = self.ws.next() => {
                    let closing = matches!(mode, Mode::Closing(_));
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(ended) = self.on_text(text.as_str()) {
                                if !closing {
                                    return self.dropped(ended);
                                }
                            }
                            if self.joined && deadline_armed && matches!(mode, Mode::Live) {
                                deadline_armed = false;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            if let Mode::Closing(after) = mode {
                                return self.finish(after);
                            }
                            let reason = match frame {
                                Some(f) => format!("server closed with {}", u16::from(f.code)),
                                None => "server closed without a code".to_string(),
                            };
                            return self.dropped(reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            if let Mode::Closing(after) = mode {
                                return self.finish(after);
                            }
                            return self.dropped(format!("read: {}", short(&e.to_string())));
                        }
                        None => {
                            if let Mode::Closing(after) = mode {
                                return self.finish(after);
                            }
                            return self.dropped("connection ended without a close".to_string());
                        }
                    }
                }
                () = &mut send_timer, if self.next.is_some() => {
                    match self.fire().await {
                        Ok(Some(at)) => send_timer.as_mut().reset(at),
                        Ok(None) => {}
                        Err(e) => return self.dropped(format!("write: {}", short(&e))),
                    }
                }
                () = &mut deadline, if deadline_armed => {
                    match mode {
                        Mode::Live => {
                            // No own `joined` event in time.
                            self.run.counters.join_timeouts.fetch_add(1, Ordering::Relaxed);
                            return self.dropped("no joined event".to_string());
                        }
                        Mode::Quiescing(after) => {
                            // Give up on the acknowledgements still missing.
                            self.abandon_outstanding();
                            mode = self.begin_close(Mode::Quiescing(after)).await;
                            deadline.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                        }
                        Mode::Closing(after) => return self.finish(after),
                    }
                }
            }
        }
    }

    /// Picks when the next message goes out (and whether a typing event precedes it).
    fn schedule(&mut self) -> Instant {
        let layers = self.run.plan.layers() as f64;
        let rate = self.control.rate_per_user / layers;
        let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let gap = Duration::from_secs_f64((-uniform.ln() / rate).min(3600.0));
        let now = Instant::now();
        let message_at = now + gap;
        if self
            .rng
            .random_bool(self.run.config.typing_ratio.clamp(0.0, 1.0))
        {
            let lead = (gap / 2).min(TYPING_LEAD);
            self.next = Some(Next::Typing { message_at });
            message_at - lead
        } else {
            self.next = Some(Next::Message);
            message_at
        }
    }

    /// Sends what the timer was set for; returns when the timer must fire next, if
    /// that is already decided (the message after its typing indicator).
    async fn fire(&mut self) -> Result<Option<Instant>, String> {
        match self.next.take() {
            Some(Next::Typing { message_at }) => {
                self.ws
                    .send(Message::text(r#"{"type":"typing"}"#))
                    .await
                    .map_err(|e| e.to_string())?;
                self.run
                    .counters
                    .typing_sent
                    .fetch_add(1, Ordering::Relaxed);
                self.next = Some(Next::Message);
                Ok(Some(message_at))
            }
            Some(Next::Message) => self.send_message().await.map(|()| None),
            None => Ok(None),
        }
    }

    async fn send_message(&mut self) -> Result<(), String> {
        let run = self.run;
        let now = run.now_us();
        let seq = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            let records = &mut state.records[self.spec.slot];
            records.push(Record {
                sent_us: now,
                ack_us: 0,
                delivered: 0,
                phase: self.control.phase,
                failed: false,
            });
            records.len() - 1
        };
        let content = Tag {
            run: &run.run_tag,
            conv: self.spec.conv,
            slot: self.spec.slot,
            seq,
            sent_us: now,
        }
        .content(&run.message_filler, run.config.message_bytes);
        let frame = format!(r#"{{"type":"message","content":"{content}","ref":"{seq}"}}"#);
        self.outstanding += 1;
        run.counters.outstanding.fetch_add(1, Ordering::Relaxed);
        run.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())
    }

    /// Handles one text frame; `Some(reason)` when the connection must be dropped.
    fn on_text(&mut self, text: &str) -> Option<String> {
        let run = self.run;
        let Ok(event) = serde_json::from_str::<Incoming<'_>>(text) else {
            Counters::bump(&run.counters.errors, "unparsable frame from the server");
            return None;
        };
        match event.kind.as_str() {
            "message" => {
                if let Some(content) = event.content.as_ref().map(Text::as_str) {
                    self.on_message(content);
                }
            }
            "error" => {
                let detail = event.detail.as_ref().map_or("(no detail)", Text::as_str);
                Counters::bump(&run.counters.errors, detail);
                if let Some(seq) = event
                    .reference
                    .as_ref()
                    .and_then(|r| r.as_str().parse().ok())
                {
                    self.on_refused(seq);
                }
                if !self.joined
                    && (detail == "Invalid token" || detail == "Not a member of this conversation")
                {
                    return Some(format!("refused: {detail}"));
                }
            }
            "system" => {
                run.counters.system_received.fetch_add(1, Ordering::Relaxed);
                let own =
                    event.sender_id.as_ref().map(Text::as_str) == Some(self.spec.user_id.as_str());
                let joined = event
                    .content
                    .as_ref()
                    .is_some_and(|c| c.as_str().ends_with("joined the conversation"));
                if own && joined && !self.joined {
                    self.on_joined();
                }
            }
            "typing" => {
                run.counters.typing_received.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        None
    }

    fn on_joined(&mut self) {
        self.joined = true;
        let now = self.run.now_us();
        lock(&self.run.convs[self.spec.conv].state).live[self.spec.slot].push(Interval {
            from_us: now,
            to_us: u64::MAX,
        });
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ConnectOutcome {
                ok: true,
                elapsed: self.started.elapsed(),
                error: None,
            });
        }
    }

    fn on_message(&mut self, content: &str) {
        let run = self.run;
        let counters = &run.counters;
        let Some(tag) = parse_tag(content) else {
            counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if tag.run != run.run_tag {
            counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tag.conv != self.spec.conv {
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = run.now_us();
        let latency = now.saturating_sub(tag.sent_us);
        let key = self.spec.conv;
        if tag.slot == self.spec.slot {
            // Our own message: the acknowledgement.
            let phase = {
                let mut state = lock(&run.convs[self.spec.conv].state);
                match state.records[tag.slot].get_mut(tag.seq) {
                    Some(rec) if rec.ack_us == 0 => {
                        rec.ack_us = now.max(1);
                        let was_failed = rec.failed;
                        Some((rec.phase, was_failed))
                    }
                    Some(_) => None,
                    None => {
                        counters.misrouted.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            match phase {
                Some((phase, was_failed)) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    if !was_failed {
                        self.settle_one();
                    }
                    run.latencies.ack(key, phase, latency);
                }
                None => {
                    counters.duplicate_acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let bit = 1u128 << self.spec.slot;
        let phase = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            let Some(rec) = state
                .records
                .get_mut(tag.slot)
                .and_then(|r| r.get_mut(tag.seq))
            else {
                counters.misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if rec.delivered & bit != 0 {
                None
            } else {
                rec.delivered |= bit;
                Some(rec.phase)
            }
        };
        let Some(phase) = phase else {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        };
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        run.latencies.delivery(key, phase, latency);
        if let Some(last) = self.last_seq.get_mut(tag.slot) {
            if tag.seq < *last {
                counters.reordered.fetch_add(1, Ordering::Relaxed);
            } else {
                *last = tag.seq + 1;
            }
        }
    }

    /// The server refused message `seq` of this socket's user.
    fn on_refused(&mut self, seq: usize) {
        let run = self.run;
        let refused = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            match state.records[self.spec.slot].get_mut(seq) {
                Some(rec) if rec.ack_us == 0 && !rec.failed => {
                    rec.failed = true;
                    true
                }
                _ => false,
            }
        };
        if refused {
            run.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.settle_one();
        }
    }

    fn settle_one(&mut self) {
        if self.outstanding > 0 {
            self.outstanding -= 1;
            self.run
                .counters
                .outstanding
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn abandon_outstanding(&mut self) {
        self.run
            .counters
            .outstanding
            .fetch_sub(self.outstanding, Ordering::Relaxed);
        self.outstanding = 0;
    }

    /// Ends the connected interval and sends the close frame.
    async fn begin_close(&mut self, mode: Mode) -> Mode {
        let after = match mode {
            Mode::Quiescing(after) | Mode::Closing(after) => after,
            Mode::Live => After::Close {
                done: None,
                final_close: false,
            },
        };
        if self.joined && !after.is_final() {
            self.end_interval();
        }
        // A failure to send shows up as the end of the stream, which ends the close.
        let _ = timeout(
            CLOSE_TIMEOUT,
            self.ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))),
        )
        .await;
        Mode::Closing(after)
    }

    fn end_interval(&mut self) {
        let now = self.run.now_us();
        let mut state = lock(&self.run.convs[self.spec.conv].state);
        if let Some(last) = state.live[self.spec.slot].last_mut() {
            if last.to_us == u64::MAX {
                last.to_us = now;
            }
        }
    }

    fn finish(mut self, after: After) -> End {
        self.abandon_outstanding();
        after.into_end()
    }

    fn dropped(mut self, reason: String) -> End {
        if self.joined {
            self.end_interval();
        }
        self.abandon_outstanding();
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ConnectOutcome {
                ok: false,
                elapsed: self.started.elapsed(),
                error: Some(reason.clone()),
            });
        }
        End::Dropped(reason)
    }
}

fn short(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_frames_parse() {
        let text = r#"{"type":"message","message_id":"m","conversation_id":"c","content":"[lt ab c=1 s=2 q=3 t=4] x","sender_id":"u","sender_username":"n","timestamp":"t","is_edited":false}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.kind.as_str(), "message");
        assert!(matches!(event.content, Some(Text(Cow::Borrowed(_)))));
        let text = r#"{"type":"error","detail":"Rate limit exceeded","ref":"17"}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.reference.as_ref().map(Text::as_str), Some("17"));
        let text = r#"{"type":"system","content":"User a joined the conversation","sender_id":"u","active_users":["u"]}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.sender_id.as_ref().map(Text::as_str), Some("u"));
        let text = r#"{"type":"message","content":"say \"hi\""}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.content.as_ref().map(Text::as_str), Some("say \"hi\""));
    }
}
