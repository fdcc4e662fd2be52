//! A WebSocket client for `/api/chat/ws/{conversation_id}?token=JWT`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for waiting on one event, so a missing event fails the test instead of
/// hanging it. Not a latency assertion.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// What arrived on the socket.
#[derive(Debug, Clone)]
pub enum WsEvent {
    /// A text frame parsed as JSON.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    Binary(Vec<u8>),
    /// A close frame (code, reason); `None` when the frame had no payload.
    Close(Option<(u16, String)>),
    /// The stream ended without a close frame.
    Ended,
}

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    label: String,
}

/// `ws://HOST/api/chat/ws/{conversation_id}?token=JWT`.
pub fn ws_url(ws_base: &str, conversation_id: &str, token: &str) -> String {
    format!(
        "{}/api/chat/ws/{conversation_id}?token={}",
        ws_base.trim_end_matches('/'),
        crate::client::encode_query(token)
    )
}

/// `ws://HOST/api/chat/ws?token=JWT`: the user stream.
pub fn stream_url(ws_base: &str, token: &str) -> String {
    format!(
        "{}/api/chat/ws?token={}",
        ws_base.trim_end_matches('/'),
        crate::client::encode_query(token)
    )
}

impl WsClient {
    /// Opens the token's user stream and reads its `ready` event; the stream is not
    /// started yet (see `start`).
    pub async fn connect_stream(ws_base: &str, token: &str) -> anyhow::Result<(Self, Value)> {
        let mut ws = Self::connect_url(&stream_url(ws_base, token)).await?;
        let ready = ws.recv_json().await?;
        anyhow::ensure!(
            ready["type"] == "ready",
            "a user stream opens with ready, not {ready}"
        );
        Ok((ws, ready))
    }

    /// Starts a user stream: `resume` with `positions` (conversation id to the last
    /// position seen).
    pub async fn start(&mut self, positions: &[(&str, u64)]) -> anyhow::Result<()> {
        let positions: serde_json::Map<String, Value> = positions
            .iter()
            .map(|(id, seq)| ((*id).to_string(), Value::from(*seq)))
            .collect();
        self.send_json(&serde_json::json!({"type": "resume", "positions": positions}))
            .await
    }

    /// Connects to a conversation as the token's user.
    pub async fn connect(
        ws_base: &str,
        conversation_id: &str,
        token: &str,
    ) -> anyhow::Result<Self> {
        Self::connect_url(&ws_url(ws_base, conversation_id, token)).await
    }

    /// Connects to any URL.
    pub async fn connect_url(url: &str) -> anyhow::Result<Self> {
        Self::connect_url_with(url, None).await
    }

    /// Connects to any URL; `wss://` trusts what `tls` trusts.
    pub async fn connect_url_with(
        url: &str,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let (client, _headers) = Self::connect_request(url.into_client_request()?, tls).await?;
        Ok(client)
    }

    /// Connects with `request` (a URL and any headers: `Origin`, `X-Request-Id`); also
    /// returns the upgrade response's headers.
    pub async fn connect_request(
        request: Request,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<(Self, HeaderMap)> {
        let url = request.uri().to_string();
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
        let (stream, response) = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .with_context(|| format!("WebSocket connect to {url} timed out"))?
            .with_context(|| format!("WebSocket connect to {url}"))?;
        let label = url.split("?token=").next().unwrap_or(&url).to_string();
        Ok((Self { stream, label }, response.headers().clone()))
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream
            .send(Message::text(text.to_string()))
            .await
            .with_context(|| format!("{}: send", self.label))
    }

    pub async fn send_json(&mut self, v: &Value) -> anyhow::Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_raw(&mut self, msg: Message) -> anyhow::Result<()> {
        self.stream
            .send(msg)
            .await
            .with_context(|| format!("{}: send", self.label))
    }

    /// The next event (ping/pong frames are skipped).
    pub async fn recv(&mut self) -> anyhow::Result<WsEvent> {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.stream.next())
                .await
                .with_context(|| format!("{}: no event within {RECV_TIMEOUT:?}", self.label))?;
            let msg = match next {
                None => return Ok(WsEvent::Ended),
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    match e {
                        Error::ConnectionClosed | Error::AlreadyClosed => {
                            return Ok(WsEvent::Ended)
                        }
                        other => bail!("{}: receive error: {other}", self.label),
                    }
                }
                Some(Ok(msg)) => msg,
            };
            return Ok(match msg {
                Message::Text(text) => match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(v) => WsEvent::Json(v),
                    Err(_) => WsEvent::Text(text.as_str().to_string()),
                },
                Message::Binary(b) => WsEvent::Binary(b.to_vec()),
                Message::Close(frame) => WsEvent::Close(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())),
                ),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// The next JSON event; fails on anything else.
    pub async fn recv_json(&mut self) -> anyhow::Result<Value> {
        match self.recv().await? {
            WsEvent::Json(v) => Ok(v),
            other => bail!("{}: expected a JSON event, got {other:?}", self.label),
        }
    }

    /// Skips events until one satisfies `pred`. Fails on close, or on an `error` event
    /// unless `pred` accepts it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut skipped = Vec::new();
        loop {
            let ev = self
                .recv()
                .await
                .with_context(|| format!("waiting for {what}; skipped {skipped:?}"))?;
            match ev {
                WsEvent::Json(v) => {
                    if pred(&v) {
                        return Ok(v);
                    }
                    if v.get("type").and_then(Value::as_str) == Some("error") {
                        bail!("{}: got error {v} while waiting for {what}", self.label);
                    }
                    skipped.push(v);
                }
                other => bail!(
                    "{}: got {other:?} while waiting for {what}; skipped {skipped:?}",
                    self.label
                ),
            }
        }
    }

    /// Skips events until one of type `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> anyhow::Result<Value> {
        self.wait_for(&format!("a {ty:?} event"), |v| {
            v.get("type").and_then(Value::as_str) == Some(ty)
        })
        .await
    }

    /// Sends a chat message and waits for its echo (the acknowledgement); returns it.
    pub async fn send_message(&mut self, content: &str) -> anyhow::Result<Value> {
        self.send_json(&json!({"type": "message", "content": content}))
            .await?;
        self.wait_for(&format!("the echo of {content:?}"), |v| {
            v.get("type").and_then(Value::as_str) == Some("message")
                && v.get("content").and_then(Value::as_str) == Some(content)
        })
        .await
    }

    /// Waits for the close frame; returns (code, reason).
    pub async fn recv_close(&mut self) -> anyhow::Result<Option<(u16, String)>> {
        let mut skipped = Vec::new();
        loop {
            match self.recv().await? {
                WsEvent::Close(frame) => return Ok(frame),
                WsEvent::Ended => bail!(
                    "{}: stream ended without a close frame; skipped {skipped:?}",
                    self.label
                ),
                other => skipped.push(other),
            }
        }
    }

    /// Sends a close frame and drains until the server's close.
    pub async fn close(mut self) -> anyhow::Result<()> {
        // A peer that already closed makes this fail; that is fine for a test client.
        let _ = self.stream.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(RECV_TIMEOUT, self.stream.next()).await {}
        Ok(())
    }
}
