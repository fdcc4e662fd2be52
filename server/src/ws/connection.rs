//! One upgraded WebSocket connection: a reader that parses, validates and submits
//! client events to the hub, and a writer that drains the connection's outbound queue,
//! coalescing whatever is queued into one write. Both run in one task; when either
//! ends the other is dropped, the connection is unregistered and its memory freed.
//! Nothing here blocks the shard.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use super::{Admitted, Refusal};
use crate::hub::conn::{Conn, Next};
use crate::hub::{Hub, Refused};
use crate::protocol::{self, close_frame, ProtocolError, ServerEvent};
use crate::shard::Shard;

/// How long a closing connection may take to flush its last frames.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

type Io = TokioIo<Upgraded>;

pub async fn run(shard: Rc<Shard>, ws: WebSocket<Io>, admission: Result<Admitted, Refusal>) {
    let (read, mut write) = tokio::io::split(ws.into_inner());
    let admitted = match admission {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let mut frames = ServerEvent::Error {
                detail: refusal.reason,
                reference: None,
            }
            .frame()
            .to_vec();
            frames.extend_from_slice(&close_frame(refusal.code, refusal.reason));
            let _ = monoio::time::timeout(FLUSH_GRACE, async {
                let _ = write.write_all(&frames).await;
                let _ = write.shutdown().await;
            })
            .await;
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
            conn: shard
                .hub
                .register(admitted.conversation, admitted.user, admitted.username),
        };
        let conn = &Rc::clone(&registered.conn);
        let (mut reader, _) =
            fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        let ended = monoio::select! {
            _ = read_loop(&shard, conn, &mut reader) => None,
            ended = write_loop(conn, &mut write) => Some(ended),
        };
        drop(registered);
        if ended.is_none() {
            // The reader stopped (client close, protocol error, EOF): let the writer send
            // what is queued, the close frame included.
            let _ = monoio::time::timeout(FLUSH_GRACE, write_loop(conn, &mut write)).await;
        }
        let _ = write.shutdown().await;
        tracing::debug!(writer = ?ended, "closed");
    }
    .instrument(span)
    .await;
}

/// Unregisters the connection from the hub however its task ends, unwinding included.
struct Registered<'a> {
    hub: &'a Hub,
    conn: Rc<Conn>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}

type Reader = WebSocketRead<tokio::io::ReadHalf<Io>>;

async fn read_loop(shard: &Shard, conn: &Conn, reader: &mut Reader) {
    let max = shard.app.config.ws_max_message_bytes;
    // fastwebsockets refuses single frames of `max_message_size` bytes or more.
    reader.set_max_message_size(max + 1);
    // Fragments are reassembled here rather than by fastwebsockets so that the total
    // size of a fragmented message is bounded too, not only each fragment.
    let mut fragments: Vec<u8> = Vec::new();
    let mut fragmented: Option<OpCode> = None;
    loop {
        // Pongs and the close echo that the protocol obliges go through the same queue
        // as everything else, so frames never interleave on the wire.
        let mut obliged = |mut frame: Frame<'_>| {
            let mut buf = Vec::with_capacity(frame.payload.len() + 4);
            frame.write(&mut buf);
            if frame.opcode == OpCode::Close {
                conn.close_with(Bytes::from(buf));
            } else {
                conn.push(Bytes::from(buf));
            }
            std::future::ready(Ok::<(), Infallible>(()))
        };
        let mut frame = match reader.read_frame(&mut obliged).await {
            Ok(frame) => frame,
            Err(e) => return fail(conn, &e),
        };
        match (frame.opcode, fragmented) {
            (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                on_message(shard, conn, frame.opcode, frame.payload.to_mut());
            }
            (OpCode::Text | OpCode::Binary, None) => {
                fragmented = Some(frame.opcode);
                fragments.clear();
                fragments.extend_from_slice(&frame.payload);
            }
            (OpCode::Continuation, Some(opcode)) => {
                if fragments.len() + frame.payload.len() > max {
                    return conn.close(1009, "Message too big");
                }
                fragments.extend_from_slice(&frame.payload);
                if frame.fin {
                    fragmented = None;
                    if opcode == OpCode::Text && std::str::from_utf8(&fragments).is_err() {
                        return conn.close(1007, "Invalid UTF-8");
                    }
                    on_message(shard, conn, opcode, &mut fragments);
                    if fragments.capacity() > 64 * 1024 {
                        fragments = Vec::new();
                    }
                }
            }
            (OpCode::Text | OpCode::Binary | OpCode::Continuation, _) => {
                return conn.close(1002, "Protocol error: bad fragmentation");
            }
            (OpCode::Close, _) => return,
            _ => {}
        }
        if !conn.is_open() {
            return;
        }
    }
}

/// One complete client message: parse, validate, submit; any refusal is an `error`
/// event and the connection stays open.
fn on_message(shard: &Shard, conn: &Conn, opcode: OpCode, payload: &mut [u8]) {
    let (detail, reference) = if opcode == OpCode::Binary {
        (ProtocolError::Binary.to_string(), None)
    } else {
        let parsed = protocol::parse(payload);
        let refused = match parsed.event {
            Ok(event) => match shard.hub.submit(conn, event, parsed.reference.clone()) {
                Ok(()) => return,
                Err(Refused::RateLimited) => "Rate limit exceeded".to_string(),
            },
            Err(e) => e.to_string(),
        };
        (refused, parsed.reference)
    };
    conn.push(
        ServerEvent::Error {
            detail: &detail,
            reference: reference.as_deref(),
        }
        .frame(),
    );
}

/// Closes with the status RFC 6455 gives for what went wrong; I/O errors just end.
fn fail(conn: &Conn, e: &WebSocketError) {
    match e {
        WebSocketError::FrameTooLarge => conn.close(1009, "Message too big"),
        WebSocketError::InvalidUTF8 => conn.close(1007, "Invalid UTF-8"),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => {}
        other => {
            tracing::debug!(error = %other, "protocol error");
            conn.close(1002, "Protocol error");
        }
    }
}

/// Why the writer stopped.
#[derive(Debug)]
pub enum WriterEnd {
    /// A close frame went out.
    Closed,
    /// The client fell behind its budget and was closed with 1013.
    Overflowed,
    Failed,
}

async fn write_loop<W: AsyncWrite + Unpin>(conn: &Conn, write: &mut W) -> WriterEnd {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut coalesced: Vec<u8> = Vec::new();
    loop {
        let mut next = conn.next(&mut batch).await;
        let written = {
            let write_batch = write_batch(write, &batch, &mut coalesced);
            let mut write_batch = std::pin::pin!(write_batch);
            monoio::select! {
                r = &mut write_batch => r,
                _ = conn.overflowed() => {
                    // The client stopped reading while a write was stuck on it. Give
                    // the write a moment so the close frame can follow a whole frame;
                    // past that, dropping the socket is the only way to free it.
                    next = Next::Overflowed;
                    match monoio::time::timeout(FLUSH_GRACE, &mut write_batch).await {
                        Ok(r) => r,
                        Err(_) => return WriterEnd::Overflowed,
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
            Next::Overflowed => {
                tracing::info!("closing a connection that cannot keep up");
                let close = close_frame(1013, "Try again later: too far behind");
                let _ = monoio::time::timeout(FLUSH_GRACE, write.write_all(&close)).await;
                return WriterEnd::Overflowed;
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
