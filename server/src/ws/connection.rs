//! One upgraded WebSocket connection: a reader that parses, validates and submits
//! client events to the hub, and a writer that drains the connection's outbound queue,
//! coalescing whatever is queued into one write. Both run in one task; when either
//! ends the other is dropped, the connection is unregistered and its memory freed.
//! Nothing here blocks the shard.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Role, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use super::{Admitted, Refusal};
use crate::hub::conn::{Conn, Next};
use crate::hub::Refused;
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
        let conn = shard
            .hub
            .register(admitted.conversation, admitted.user, admitted.username);
        let (reader, _) =
            fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        let mut reader = FragmentCollectorRead::new(reader);
        let ended = monoio::select! {
            _ = read_loop(&shard, &conn, &mut reader) => None,
            ended = write_loop(&conn, &mut write) => Some(ended),
        };
        shard.hub.unregister(&conn);
        if ended.is_none() {
            // The reader stopped (client close, protocol error, EOF): let the writer send
            // what is queued, the close frame included.
            let _ = monoio::time::timeout(FLUSH_GRACE, write_loop(&conn, &mut write)).await;
        }
        let _ = write.shutdown().await;
        tracing::debug!("closed");
    }
    .instrument(span)
    .await;
}

type Reader = FragmentCollectorRead<tokio::io::ReadHalf<Io>>;

async fn read_loop(shard: &Shard, conn: &Conn, reader: &mut Reader) {
    let max = shard.app.config.ws_max_message_bytes;
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
        match frame.opcode {
            OpCode::Text if frame.payload.len() > max => {
                return conn.close(1009, "Message too big")
            }
            OpCode::Text => {
                let parsed = protocol::parse(frame.payload.to_mut());
                let outcome = match parsed.event {
                    Ok(event) => shard
                        .hub
                        .submit(conn, event, parsed.reference.clone())
                        .map_err(|Refused::RateLimited| "Rate limit exceeded".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(detail) = outcome {
                    conn.push(
                        ServerEvent::Error {
                            detail: &detail,
                            reference: parsed.reference.as_deref(),
                        }
                        .frame(),
                    );
                }
            }
            OpCode::Binary => {
                let detail = ProtocolError::Binary.to_string();
                conn.push(
                    ServerEvent::Error {
                        detail: &detail,
                        reference: None,
                    }
                    .frame(),
                );
            }
            OpCode::Close => return,
            _ => {}
        }
        if !conn.is_open() {
            return;
        }
    }
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
        let next = conn.next(&mut batch).await;
        let result = match batch.as_slice() {
            [] => Ok(()),
            [one] => write.write_all(one).await,
            many => {
                coalesced.clear();
                for frame in many {
                    coalesced.extend_from_slice(frame);
                }
                write.write_all(&coalesced).await
            }
        };
        batch.clear();
        if coalesced.capacity() > 64 * 1024 {
            // Do not let one burst pin a large buffer for the connection's lifetime.
            coalesced = Vec::new();
        }
        if result.is_err() {
            return WriterEnd::Failed;
        }
        match next {
            Next::Write { last: false } => {}
            Next::Write { last: true } => return WriterEnd::Closed,
            Next::Overflowed => {
                tracing::info!("closing a connection that cannot keep up");
                let _ = write
                    .write_all(&close_frame(1013, "Try again later: too far behind"))
                    .await;
                return WriterEnd::Overflowed;
            }
        }
    }
}
