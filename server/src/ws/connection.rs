//! One upgraded WebSocket connection: a reader that parses, validates and submits
//! client events to the hub, and a writer that drains the connection's outbound queue,
//! handing whatever is queued to the socket (`io`) in one vectored write. Both run in
//! one task; when either ends the other is dropped, the connection is unregistered and
//! its memory freed.
//! Nothing here blocks the shard.
//!
//! Every frame the server writes is one whole, well-formed frame: the frames the
//! protocol obliges (pongs, the close echo) go through the same queue as events, and
//! the writer is never dropped in the middle of a write. When the server closes first
//! it waits briefly for the client's close before ending TCP, so clients see a clean
//! close rather than a reset (a condemned or vanished peer gets no such wait).

use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use super::io::{ReadHalf, WriteHalf};
use super::reader::{FrameReader, ReadError};
use crate::context::ShardContext;
use crate::hub::conn::{Conn, Next};
use crate::hub::{Admitted, Carried, Refused, Registry};
use crate::ids::{ConversationId, Seq};
use crate::metrics::{EventKind, Refusal, ShardMetrics};
use crate::protocol::frame::{self, Opcode};
use crate::protocol::{self, ClientEvent, Close, ProtocolError, ServerEvent};

/// How long a closing connection may take to flush its last frames, and how long it
/// waits for the client's answering close.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

type Reader = FrameReader<ReadHalf>;

pub async fn run(
    shard: &ShardContext,
    (read, mut write): (ReadHalf, WriteHalf),
    admission: Result<Admitted, Close>,
) {
    let mut reader = FrameReader::new(read, shard.app.config.ws_max_message_bytes);
    let admitted = match admission {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let sent = within_grace(write.write_all(&mut refusal.frames())).await;
            if matches!(sent, Ok(Ok(()))) {
                linger(&mut reader).await;
            }
            write.shutdown().await;
            return;
        }
    };
    let span = tracing::debug_span!(
        "ws",
        shard = shard.id,
        user = %admitted.user,
        carries = %admitted.scope()
    );
    async move {
        let registered = Registered {
            registry: &shard.hub.registry,
            conn: shard.hub.registry.register(&admitted),
        };
        // A user stream carries nothing until the client's first event starts it.
        let mut pending = match admitted.carried {
            // Boxed: every idle conversation socket's task holds this field.
            Carried::Stream(stream) => Some(Box::new(Pending {
                memberships: stream.memberships,
                checked_at: admitted.checked_at,
            })),
            Carried::Conversation { .. } => None,
        };
        let conn = &Rc::clone(&registered.conn);
        if shard.shutdown.is_set() {
            // Admitted while the shard was already draining: say goodbye at once.
            conn.close(Close::ShuttingDown);
        }
        let (ended, closed_first) = {
            // One writer future for the whole life of the connection: dropping it in the
            // middle of a write would leave half a frame on the wire.
            let mut writer = std::pin::pin!(write_loop(conn, &mut write, &shard.metrics));
            let ended = monoio::select! {
                end = read_loop(shard, conn, &mut reader, &mut pending) => End::Reader(end),
                end = &mut writer => End::Writer(end),
            };
            // Gone from presence at once, whatever the goodbye below takes.
            drop(registered);
            if ended == End::Reader(ReadEnd::Refused) {
                shard.metrics.refusal(Refusal::BadFrame);
            }
            let closed_first = match ended {
                // The peer vanished: there is nobody to say goodbye to.
                End::Reader(ReadEnd::Gone) => false,
                End::Reader(end) => {
                    // The reader stopped (client close, protocol error, a close queued
                    // by the hub): let the writer send what is queued, the close included.
                    let flushed = within_grace(&mut writer).await;
                    matches!(flushed, Ok(WriterEnd::Closed)) && end != ReadEnd::PeerClosed
                }
                End::Writer(end) => end == WriterEnd::Closed,
            };
            (ended, closed_first)
        };
        if closed_first {
            // Best effort: the reader may have been dropped inside a frame, in which
            // case this gives up early and the TCP close follows sooner.
            linger(&mut reader).await;
        }
        write.shutdown().await;
        tracing::debug!(?ended, "closed");
    }
    .instrument(span)
    .await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Reader(ReadEnd),
    Writer(WriterEnd),
}

/// Why the reader stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The client sent a close frame; its echo is queued.
    PeerClosed,
    /// The client broke the protocol; a close is queued.
    Refused,
    /// The connection was closed from our side while reading.
    Closing,
    /// EOF or an I/O error without a close frame.
    Gone,
}

/// Unregisters the connection from the registry however its task ends, unwinding
/// included.
struct Registered<'a> {
    registry: &'a Registry,
    conn: Rc<Conn>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.unregister(&self.conn);
    }
}

/// After the server's close frame: wait (briefly) for the client's, so the client
/// closes the TCP connection cleanly instead of meeting a reset.
async fn linger(reader: &mut Reader) {
    let _ = within_grace(async {
        while let Ok(frame) = reader.next().await {
            if frame.opcode == Opcode::Close {
                break;
            }
        }
    })
    .await;
}

/// A user stream not started yet: the conversations admission found, and when.
struct Pending {
    memberships: Vec<(ConversationId, Seq)>,
    checked_at: Instant,
}

async fn read_loop(
    shard: &ShardContext,
    conn: &Conn,
    reader: &mut Reader,
    pending: &mut Option<Box<Pending>>,
) -> ReadEnd {
    let config = &shard.app.config;
    let max = config.ws_max_message_bytes;
    // Fragments are joined here, so that the total size of a fragmented message is
    // bounded too, not only each fragment.
    let mut fragments: Vec<u8> = Vec::new();
    let mut fragmented: Option<Opcode> = None;
    // A fragmented message must finish in time and in few frames: otherwise a client
    // could hold its buffer forever, keeping the connection alive with pings.
    let mut unfinished = Unfinished::default();
    let mut flood = Flood::default();
    loop {
        let next = match unfinished.deadline {
            None => reader.next().await,
            // On the heap, and only while a message is unfinished (see `within_grace`).
            Some(at) => match Box::pin(monoio::time::timeout_at(at, reader.next())).await {
                Ok(next) => next,
                Err(_) => {
                    conn.close(Close::FragmentTimeout);
                    return ReadEnd::Refused;
                }
            },
        };
        let frame = match next {
            Ok(frame) => frame,
            Err(e) => return fail(conn, e),
        };
        let part_of_fragmented = match frame.opcode {
            Opcode::Continuation => true,
            Opcode::Text | Opcode::Binary => !frame.fin,
            _ => false,
        };
        if part_of_fragmented {
            let (timeout, most) = (config.ws_fragment_timeout, config.ws_max_fragments);
            if let Err(close) = unfinished.count(timeout, most) {
                conn.close(close);
                return ReadEnd::Refused;
            }
            if frame.fin {
                unfinished = Unfinished::default();
            }
        }
        conn.seen();
        match (frame.opcode, fragmented) {
            // The pong and the close echo the protocol obliges go through the same
            // queue as everything else, so frames never interleave on the wire.
            (Opcode::Ping, _) => conn.push(frame::pong(frame.payload)),
            (Opcode::Close, _) => {
                conn.close_with(protocol::close_echo(frame.payload));
                return ReadEnd::PeerClosed;
            }
            // Pongs answer our heartbeat; being heard from is all they mean.
            (Opcode::Pong, _) => {}
            (Opcode::Text | Opcode::Binary, None) if frame.fin => {
                // On the heap while it runs: inline, the submission's state would be
                // part of every idle connection's task.
                // Built inside `Box::pin`, never bound to a local: a local would keep
                // its room in every idle connection's task, moved or not.
                let refusal = Box::pin(on_message(
                    shard,
                    conn,
                    frame.opcode,
                    frame.payload,
                    pending,
                ))
                .await;
                flood.note(conn, refusal, config.ws_flood_limit);
            }
            (Opcode::Text | Opcode::Binary, None) => {
                fragmented = Some(frame.opcode);
                fragments.clear();
                fragments.extend_from_slice(frame.payload);
            }
            (Opcode::Continuation, Some(opcode)) => {
                if fragments.len() + frame.payload.len() > max {
                    conn.close(Close::TooBig);
                    return ReadEnd::Refused;
                }
                fragments.extend_from_slice(frame.payload);
                if frame.fin {
                    fragmented = None;
                    if opcode == Opcode::Text && std::str::from_utf8(&fragments).is_err() {
                        conn.close(Close::InvalidUtf8);
                        return ReadEnd::Refused;
                    }
                    let refusal =
                        Box::pin(on_message(shard, conn, opcode, &mut fragments, pending)).await;
                    flood.note(conn, refusal, config.ws_flood_limit);
                    // A finished message keeps nothing: idle connections hold no buffer.
                    fragments = Vec::new();
                }
            }
            (Opcode::Text | Opcode::Binary | Opcode::Continuation, _) => {
                conn.close(Close::BadFragmentation);
                return ReadEnd::Refused;
            }
        }
        if !conn.is_open() {
            return ReadEnd::Closing;
        }
    }
}

/// The fragmented message in progress: when it must be finished by, and how many
/// frames it has taken so far.
#[derive(Default)]
struct Unfinished {
    deadline: Option<monoio::time::Instant>,
    frames: usize,
}

impl Unfinished {
    /// Counts one data frame of a fragmented message; its first starts the clock.
    fn count(&mut self, timeout: Duration, max_frames: usize) -> Result<(), Close> {
        self.deadline
            .get_or_insert_with(|| monoio::time::Instant::now() + timeout);
        self.frames += 1;
        if self.frames > max_frames {
            return Err(Close::TooManyFragments);
        }
        Ok(())
    }
}

/// How many of a socket's events the rate limit refused in the current window.
#[derive(Default)]
struct Flood {
    since: Option<monoio::time::Instant>,
    refused: u32,
}

/// The window `--ws-flood-limit` counts refusals in.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);

impl Flood {
    /// Counts a rate-limit refusal; once the window holds more than `limit`, closes
    /// `conn` with `Too many events` (the read loop then ends as after any close
    /// queued from our side). A client that backs off after its errors never gets
    /// near it: the budget it exceeded refills at `--ws-rate-per-second`.
    fn note(&mut self, conn: &Conn, refusal: Option<Refusal>, limit: u32) {
        if refusal != Some(Refusal::RateLimit) || limit == 0 {
            return;
        }
        let now = monoio::time::Instant::now();
        match self.since {
            Some(since) if now.duration_since(since) < FLOOD_WINDOW => self.refused += 1,
            _ => (self.since, self.refused) = (Some(now), 1),
        }
        if self.refused > limit {
            conn.close(Close::Flooding);
        }
    }
}

/// One complete client message: parse, validate, submit; any refusal is an `error`
/// event and the connection stays open (the read loop counts rate-limit refusals
/// against `--ws-flood-limit`). Answers the refusal, if any. The first event of a
/// user stream starts it: a `resume` with its positions, anything else with none.
async fn on_message(
    shard: &ShardContext,
    conn: &Conn,
    opcode: Opcode,
    payload: &mut [u8],
    pending: &mut Option<Box<Pending>>,
) -> Option<Refusal> {
    let (refusal, detail, reference) = if opcode == Opcode::Binary {
        (Refusal::Invalid, ProtocolError::Binary.to_string(), None)
    } else {
        let parsed = protocol::parse(payload);
        let event = match (parsed.event, pending.take()) {
            (Ok(ClientEvent::Resume { positions }), Some(start)) => {
                let registry = &shard.hub.registry;
                registry.start(conn, &positions, start.memberships, start.checked_at);
                return None;
            }
            (event, Some(start)) => {
                let registry = &shard.hub.registry;
                registry.start(conn, &HashMap::new(), start.memberships, start.checked_at);
                event
            }
            (event, None) => event,
        };
        let (refusal, detail) = match event {
            Ok(event) => {
                shard.metrics.event(kind(&event));
                match shard
                    .hub
                    .registry
                    .submit(conn, event, parsed.reference.clone(), parsed.conversation)
                    .await
                {
                    Ok(()) => return None,
                    Err(refused @ Refused::RateLimited) => {
                        (Refusal::RateLimit, refused.to_string())
                    }
                    Err(refused) => (Refusal::Invalid, refused.to_string()),
                }
            }
            Err(e) => (Refusal::Invalid, e.to_string()),
        };
        (refusal, detail, parsed.reference)
    };
    shard.metrics.refusal(refusal);
    conn.push(
        ServerEvent::Error {
            detail: &detail,
            reference: reference.as_deref(),
        }
        .frame(),
    );
    Some(refusal)
}

fn kind(event: &ClientEvent) -> EventKind {
    match event {
        ClientEvent::Message { .. } => EventKind::Message,
        ClientEvent::Typing => EventKind::Typing,
        ClientEvent::Reaction { .. } => EventKind::Reaction,
        ClientEvent::Edit { .. } => EventKind::Edit,
        ClientEvent::Delete { .. } => EventKind::Delete,
        _ => EventKind::Other,
    }
}

/// Closes with the status RFC 6455 gives for what went wrong; I/O errors just end.
fn fail(conn: &Conn, e: ReadError) -> ReadEnd {
    match e {
        ReadError::Gone => ReadEnd::Gone,
        ReadError::Refused(reason) => {
            tracing::debug!(?reason, "broken frame");
            conn.close(reason);
            ReadEnd::Refused
        }
    }
}

/// `work`, given at most `FLUSH_GRACE`. The timer lives on the heap, and only while
/// a connection is closing: inline, its 640 bytes would be part of every idle
/// connection's task, since a future is as large as its largest state.
async fn within_grace<F: Future>(work: F) -> Result<F::Output, monoio::time::error::Elapsed> {
    Box::pin(monoio::time::timeout(FLUSH_GRACE, work)).await
}

/// Why the writer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterEnd {
    /// A close frame went out after everything queued before it.
    Closed,
    /// The connection was condemned (too far behind, silent past the idle timeout).
    Condemned(Close),
    Failed,
}

async fn write_loop(conn: &Conn, write: &mut WriteHalf, metrics: &ShardMetrics) -> WriterEnd {
    let condemned = |reason: Close| {
        if reason == Close::TooFarBehind {
            metrics.slow_consumer_closes.inc();
        }
        WriterEnd::Condemned(reason)
    };
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let mut next = conn.next(&mut batch).await;
        let written = {
            let write_batch = write.write_all(&mut batch);
            let mut write_batch = std::pin::pin!(write_batch);
            monoio::select! {
                r = &mut write_batch => r,
                reason = conn.condemned() => {
                    // Condemned while a write was stuck on a client that stopped
                    // reading. Give the write a moment so the close frame can follow a
                    // whole frame; past that, dropping the socket is the only way out.
                    // A stuck batch that ends in our close frame needs no second one.
                    if next != (Next::Write { last: true }) {
                        next = Next::Condemned(reason);
                    }
                    match within_grace(&mut write_batch).await {
                        Ok(r) => r,
                        Err(_) => return condemned(reason),
                    }
                }
            }
        };
        batch.clear();
        if batch.capacity() > 64 {
            // A burst (a replayed backlog) must not pin its list for the connection's life.
            batch = Vec::new();
        }
        if written.is_err() {
            return WriterEnd::Failed;
        }
        match next {
            Next::Write { last: false } => {}
            Next::Write { last: true } => return WriterEnd::Closed,
            Next::Condemned(reason) => {
                if reason == Close::TooFarBehind {
                    tracing::info!("closing a connection that cannot keep up");
                } else {
                    tracing::debug!(?reason, "closing");
                }
                let _ = within_grace(write.write_all(&mut reason.frames())).await;
                return condemned(reason);
            }
        }
    }
}
