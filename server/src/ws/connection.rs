//! One upgraded WebSocket connection: a reader that parses, validates and submits
//! client events to the hub, and a writer that drains the connection's outbound queue,
//! coalescing whatever is queued into one write. Both run in one task; when either
//! ends the other is dropped, the connection is unregistered and its memory freed.
//! Nothing here blocks the shard.
//!
//! Every frame the server writes is one whole, well-formed frame: the frames the
//! protocol obliges (pongs, the close echo) go through the same queue as events, and
//! the writer is never dropped in the middle of a write. When the server closes first
//! it waits briefly for the client's close before ending TCP, so clients see a clean
//! close rather than a reset (a condemned or vanished peer gets no such wait).

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::context::ShardContext;
use crate::hub::outbox::{Next, Outbox};
use crate::hub::{Admitted, Hub, Refused};
use crate::metrics::{EventKind, Refusal, ShardMetrics};
use crate::protocol::{self, ClientEvent, Close, ProtocolError, ServerEvent};

/// How long a closing connection may take to flush its last frames, and how long it
/// waits for the client's answering close.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// RFC 6455 5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<tokio::io::ReadHalf<Io>>;

pub async fn run(shard: &ShardContext, ws: WebSocket<Io>, admission: Result<Admitted, Close>) {
    let (read, mut write) = tokio::io::split(ws.into_inner());
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    // fastwebsockets refuses single frames of `max_message_size` bytes or more.
    reader.set_max_message_size(shard.app.config.ws_max_message_bytes + 1);
    let admitted = match admission {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let frames = refusal.frames().concat();
            let sent = monoio::time::timeout(FLUSH_GRACE, write.write_all(&frames)).await;
            if matches!(sent, Ok(Ok(()))) {
                linger(&mut reader).await;
            }
            let _ = write.shutdown().await;
            return;
        }
    };
    let span = tracing::debug_span!(
        "ws",
        shard = shard.id,
        user = %admitted.user,
        conversation = %admitted.conversation
    );
    async move {
        let registered = Registered {
            hub: &shard.hub,
            conn: shard.hub.register(&admitted),
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
                end = read_loop(shard, conn, &mut reader) => End::Reader(end),
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
                    let flushed = monoio::time::timeout(FLUSH_GRACE, &mut writer).await;
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
        let _ = write.shutdown().await;
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

/// Unregisters the connection from the hub however its task ends, unwinding included.
struct Registered<'a> {
    hub: &'a Hub,
    conn: Rc<Outbox>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}

/// After the server's close frame: wait (briefly) for the client's, so the client
/// closes the TCP connection cleanly instead of meeting a reset.
async fn linger(reader: &mut Reader) {
    let mut ignore = |_: Frame<'_>| std::future::ready(Ok::<(), Infallible>(()));
    let _ = monoio::time::timeout(FLUSH_GRACE, async {
        while let Ok(frame) = reader.read_frame(&mut ignore).await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

async fn read_loop(shard: &ShardContext, conn: &Outbox, reader: &mut Reader) -> ReadEnd {
    let max = shard.app.config.ws_max_message_bytes;
    // Fragments are reassembled here rather than by fastwebsockets so that the total
    // size of a fragmented message is bounded too, not only each fragment.
    let mut fragments: Vec<u8> = Vec::new();
    let mut fragmented: Option<OpCode> = None;
    loop {
        // Pongs and the close echo that the protocol obliges go through the same queue
        // as everything else, so frames never interleave on the wire.
        let mut obliged = |mut frame: Frame<'_>| {
            conn.seen();
            // fastwebsockets refuses long pings itself, not long closes.
            if frame.payload.len() > MAX_CONTROL_PAYLOAD {
                conn.close(Close::ProtocolError);
            } else if frame.opcode == OpCode::Close && frame.payload.is_empty() {
                // Echoing an empty close would leave the client with 1005 ("no status
                // received"); 1000 tells it the close was normal.
                conn.close_with(Close::Normal.frame());
            } else {
                let mut buf = Vec::with_capacity(frame.payload.len() + 16);
                let written = Bytes::copy_from_slice(frame.write(&mut buf));
                if frame.opcode == OpCode::Close {
                    conn.close_with(written);
                } else {
                    conn.push(written);
                }
            }
            std::future::ready(Ok::<(), Infallible>(()))
        };
        let mut frame = match reader.read_frame(&mut obliged).await {
            Ok(frame) => frame,
            Err(e) => return fail(conn, &e),
        };
        conn.seen();
        match (frame.opcode, fragmented) {
            (OpCode::Close, _) => return ReadEnd::PeerClosed,
            (OpCode::Pong, _) if frame.payload.len() > MAX_CONTROL_PAYLOAD => {
                conn.close(Close::ProtocolError);
                return ReadEnd::Refused;
            }
            (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                on_message(shard, conn, frame.opcode, frame.payload.to_mut()).await;
            }
            (OpCode::Text | OpCode::Binary, None) => {
                fragmented = Some(frame.opcode);
                fragments.clear();
                fragments.extend_from_slice(&frame.payload);
            }
            (OpCode::Continuation, Some(opcode)) => {
                if fragments.len() + frame.payload.len() > max {
                    conn.close(Close::TooBig);
                    return ReadEnd::Refused;
                }
                fragments.extend_from_slice(&frame.payload);
                if frame.fin {
                    fragmented = None;
                    if opcode == OpCode::Text && std::str::from_utf8(&fragments).is_err() {
                        conn.close(Close::InvalidUtf8);
                        return ReadEnd::Refused;
                    }
                    on_message(shard, conn, opcode, &mut fragments).await;
                    if fragments.capacity() > 64 * 1024 {
                        fragments = Vec::new();
                    }
                }
            }
            (OpCode::Text | OpCode::Binary | OpCode::Continuation, _) => {
                conn.close(Close::BadFragmentation);
                return ReadEnd::Refused;
            }
            // Pongs answer our heartbeat; being heard from is all they mean.
            _ => {}
        }
        if !conn.is_open() {
            return ReadEnd::Closing;
        }
    }
}

/// One complete client message: parse, validate, submit; any refusal is an `error`
/// event and the connection stays open.
async fn on_message(shard: &ShardContext, conn: &Outbox, opcode: OpCode, payload: &mut [u8]) {
    let (refusal, detail, reference) = if opcode == OpCode::Binary {
        (Refusal::Invalid, ProtocolError::Binary.to_string(), None)
    } else {
        let parsed = protocol::parse(payload);
        let (refusal, detail) = match parsed.event {
            Ok(event) => {
                shard.metrics.event(kind(&event));
                match shard
                    .hub
                    .submit(conn, event, parsed.reference.clone())
                    .await
                {
                    Ok(()) => return,
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
fn fail(conn: &Outbox, e: &WebSocketError) -> ReadEnd {
    let reason = match e {
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => return ReadEnd::Gone,
        WebSocketError::FrameTooLarge => Close::TooBig,
        WebSocketError::InvalidUTF8 => Close::InvalidUtf8,
        other => {
            tracing::debug!(error = %other, "protocol error");
            Close::ProtocolError
        }
    };
    // A bad close code has its 1002 answer queued by fastwebsockets already.
    conn.close(reason);
    ReadEnd::Refused
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

async fn write_loop<W: AsyncWrite + Unpin>(
    conn: &Outbox,
    write: &mut W,
    metrics: &ShardMetrics,
) -> WriterEnd {
    let condemned = |reason: Close| {
        if reason == Close::TooFarBehind {
            metrics.slow_consumer_closes.inc();
        }
        WriterEnd::Condemned(reason)
    };
    let mut batch: Vec<Bytes> = Vec::new();
    let mut coalesced: Vec<u8> = Vec::new();
    loop {
        let mut next = conn.next(&mut batch).await;
        let written = {
            let write_batch = write_batch(write, &batch, &mut coalesced);
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
                    match monoio::time::timeout(FLUSH_GRACE, &mut write_batch).await {
                        Ok(r) => r,
                        Err(_) => return condemned(reason),
                    }
                }
            }
        };
        batch.clear();
        if coalesced.capacity() > 64 * 1024 {
            // Do not let one burst pin a large buffer for the connection's lifetime.
            coalesced = Vec::new();
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
                let close = reason.frames().concat();
                let _ = monoio::time::timeout(FLUSH_GRACE, write.write_all(&close)).await;
                return condemned(reason);
            }
        }
    }
}

/// Writes the batch: a lone frame straight from its shared buffer, several frames
/// coalesced into one buffer and one write.
async fn write_batch<W: AsyncWrite + Unpin>(
    write: &mut W,
    batch: &[Bytes],
    coalesced: &mut Vec<u8>,
) -> std::io::Result<()> {
    match batch {
        [] => Ok(()),
        [one] => write.write_all(one).await,
        many => {
            coalesced.clear();
            for frame in many {
                coalesced.extend_from_slice(frame);
            }
            write.write_all(coalesced).await
        }
    }
}
