//! A byte-level WebSocket client: the upgrade written by hand on a raw TCP stream,
//! frames built and masked by hand, and every byte the server sends parsed strictly.
//! It hides nothing and forgives nothing, so it sees what tolerant client libraries
//! let pass: stray bytes after a frame, a missing close, control frames out of place.

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::realtime::server_addr;
use crate::server::TestServer;
use crate::ws::RECV_TIMEOUT;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The payload of a text frame as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        ensure!(self.opcode == TEXT, "expected a text frame, got {self:?}");
        serde_json::from_slice(&self.payload).context("text frame is not JSON")
    }

    /// The status code and reason of a close frame.
    pub fn close(&self) -> anyhow::Result<(u16, String)> {
        ensure!(self.opcode == CLOSE, "expected a close frame, got {self:?}");
        ensure!(
            self.payload.len() >= 2,
            "close frame without a code: {self:?}"
        );
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).context("close reason")?;
        Ok((code, reason))
    }
}

pub struct ByteWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl ByteWs {
    /// Opens `/api/chat/ws/{conversation}?token=` with a hand-written upgrade request.
    pub async fn connect(
        srv: &TestServer,
        conversation: &str,
        token: &str,
    ) -> anyhow::Result<Self> {
        Self::connect_sending(srv, conversation, token, &[]).await
    }

    /// As `connect`, with `early` (frames, say) in the same write as the upgrade
    /// request, as a client that does not wait for the 101 may send them.
    pub async fn connect_sending(
        srv: &TestServer,
        conversation: &str,
        token: &str,
        early: &[u8],
    ) -> anyhow::Result<Self> {
        let addr = server_addr(srv)?;
        let mut stream = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        let request = format!(
            "GET /api/chat/ws/{conversation}?token={token} HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(&[request.as_bytes(), early].concat())
            .await?;
        let mut ws = Self {
            stream,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(ws.fill().await?, "EOF during the handshake");
        };
        let head = String::from_utf8_lossy(&ws.buf[..head_end]).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        // RFC 6455 1.3: the accept value for the sample nonce above.
        ensure!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "wrong Sec-WebSocket-Accept: {head}"
        );
        ws.buf.drain(..head_end);
        Ok(ws)
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(RECV_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .context("no bytes from the server in time")?
            .context("reading")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Sends a final text frame without a mask, as no client may (RFC 6455 5.1).
    pub async fn send_unmasked_text(&mut self, text: &str) -> anyhow::Result<()> {
        ensure!(text.len() < 126, "a short text only");
        let mut frame = vec![0x80 | TEXT, text.len() as u8];
        frame.extend_from_slice(text.as_bytes());
        self.stream
            .write_all(&frame)
            .await
            .context("sending an unmasked frame")
    }

    /// Sends one masked frame; `rsv` are the three reserved bits (0 for a valid frame).
    pub async fn send_frame(
        &mut self,
        fin: bool,
        rsv: u8,
        opcode: u8,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.stream
            .write_all(&masked_frame(fin, rsv, opcode, payload))
            .await
            .context("sending a frame")
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_frame(true, 0, TEXT, text.as_bytes()).await
    }

    /// A close frame with a status code and reason.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> anyhow::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(true, 0, CLOSE, &payload).await
    }

    /// The next frame, parsed strictly: a server frame must be unmasked, use no
    /// reserved bits or opcodes, and keep control frames whole and within 125 bytes.
    /// `None` at EOF on a frame boundary; EOF inside a frame is an error.
    pub async fn read_frame(&mut self) -> anyhow::Result<Option<RawFrame>> {
        loop {
            if let Some((frame, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                ensure!(
                    self.buf.is_empty(),
                    "EOF inside a frame; stray bytes {:?}",
                    self.buf
                );
                return Ok(None);
            }
        }
    }

    /// The next frame, which must exist.
    pub async fn frame(&mut self) -> anyhow::Result<RawFrame> {
        self.read_frame()
            .await?
            .context("the server closed the TCP connection")
    }

    /// The next data frame's JSON, skipping the server's heartbeat pings.
    pub async fn event(&mut self) -> anyhow::Result<serde_json::Value> {
        loop {
            let frame = self.frame().await?;
            if frame.opcode != PING {
                return frame.json();
            }
        }
    }

    /// Reads events until one has `type` = `ty`.
    pub async fn event_of_type(&mut self, ty: &str) -> anyhow::Result<serde_json::Value> {
        let mut skipped = Vec::new();
        loop {
            let ev = self
                .event()
                .await
                .with_context(|| format!("waiting for {ty}; skipped {skipped:?}"))?;
            if ev["type"] == ty {
                return Ok(ev);
            }
            skipped.push(ev);
        }
    }

    /// After the server's close frame: answers it, then the server must end the TCP
    /// connection with nothing more on the wire.
    pub async fn finish_close(&mut self) -> anyhow::Result<()> {
        // Echo the server's close as RFC 6455 asks (1000: we agree).
        let _ = self.send_close(1000, "").await;
        match self.read_frame().await? {
            None => Ok(()),
            Some(frame) => bail!("a frame after the close: {frame:?}"),
        }
    }

    /// Reads frames until a close frame (skipping pings and events); returns it and
    /// everything skipped.
    pub async fn until_close(&mut self) -> anyhow::Result<((u16, String), Vec<RawFrame>)> {
        let mut skipped = Vec::new();
        loop {
            let frame = self
                .frame()
                .await
                .with_context(|| format!("waiting for a close; skipped {skipped:?}"))?;
            if frame.opcode == CLOSE {
                return Ok((frame.close()?, skipped));
            }
            skipped.push(frame);
        }
    }
}

/// One whole frame at the start of `buf` and its length, if it is all there.
fn parse(buf: &[u8]) -> anyhow::Result<Option<(RawFrame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = buf[0] & 0x70;
    let opcode = buf[0] & 0x0F;
    ensure!(
        rsv == 0,
        "server frame with reserved bits: {:02x?}",
        &buf[..2]
    );
    ensure!(
        matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG),
        "server frame with reserved opcode {opcode:#x}: {:02x?}",
        &buf[..buf.len().min(16)]
    );
    ensure!(buf[1] & 0x80 == 0, "server frames must not be masked");
    let (len, start) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().context("length")?) as usize,
            10,
        ),
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if opcode >= CLOSE {
        ensure!(fin, "fragmented control frame from the server");
        ensure!(len <= 125, "control frame of {len} bytes from the server");
    }
    ensure!(
        opcode != CONTINUATION,
        "continuation frame from the server (stray bytes?): {:02x?}",
        &buf[..buf.len().min(16)]
    );
    if buf.len() < start + len {
        return Ok(None);
    }
    let frame = RawFrame {
        fin,
        opcode,
        payload: buf[start..start + len].to_vec(),
    };
    Ok(Some((frame, start + len)))
}

fn rand_mask() -> [u8; 4] {
    uuid::Uuid::new_v4().as_bytes()[..4]
        .try_into()
        .unwrap_or([1, 2, 3, 4])
}

/// One masked client frame; `rsv` are the three reserved bits (0 for a valid frame).
pub fn masked_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0xF)];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand_mask();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}
