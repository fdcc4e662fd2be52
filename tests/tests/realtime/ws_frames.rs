//! RFC 6455 on the wire, byte by byte, on all four configurations: every frame the
//! server writes is exactly one well-formed frame (pongs and close echoes included, no
//! stray bytes after them), a close is answered once and then the TCP connection ends,
//! fragmented messages with control frames between their fragments are reassembled,
//! and frames that break the framing rules (an unmasked client frame included) get the
//! close code RFC 6455 gives.
#![allow(clippy::unwrap_used)]

use tests::frames::{masked_frame, ByteWs, BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
use tests::prelude::*;
use tests::realtime::*;

/// A user alone in a fresh conversation, connected byte by byte, with its own
/// `joined` event read.
async fn alone(srv: &TestServer) -> anyhow::Result<(Session, String, ByteWs)> {
    let api = srv.api();
    let ([me], conv) = group(&api, &["frames"]).await?;
    let ws = connected(srv, &conv, &me).await?;
    Ok((me, conv, ws))
}

async fn connected(srv: &TestServer, conv: &str, who: &Session) -> anyhow::Result<ByteWs> {
    let mut ws = ByteWs::connect(srv, conv, &who.token).await?;
    let joined = ws.event_of_type("system").await?;
    ensure!(is_joined(&joined, who), "first event: {joined}");
    Ok(ws)
}

/// Sends a chat message and expects its acknowledgement as the very next data frame.
async fn message_round_trip(ws: &mut ByteWs, content: &str) -> anyhow::Result<()> {
    ws.send_text(&json!({"type": "message", "content": content}).to_string())
        .await?;
    let echo = ws.event().await?;
    ensure!(
        is_message_with(&echo, content),
        "expected the echo, got {echo}"
    );
    Ok(())
}

/// Ping -> exactly one pong with the same payload and nothing after it; the
/// connection goes on chatting.
async fn ping_gets_exactly_one_pong(srv: &TestServer) -> anyhow::Result<()> {
    let (_, _, mut ws) = alone(srv).await?;
    for payload in [&b"hello"[..], b"", &[0xAB; 125]] {
        ws.send_frame(true, 0, PING, payload).await?;
        let pong = ws.frame().await?;
        ensure!(
            pong.opcode == PONG && pong.fin && pong.payload == payload,
            "ping {payload:?} answered with {pong:?}"
        );
        // Stray bytes after the pong would be parsed here as a bogus frame.
        message_round_trip(&mut ws, &format!("after a ping of {}", payload.len())).await?;
    }
    // An unsolicited pong is allowed and ignored.
    ws.send_frame(true, 0, PONG, b"unsolicited").await?;
    message_round_trip(&mut ws, "after a pong").await
}

/// Close -> exactly one close frame echoing the code, then EOF.
async fn close_is_answered_once_then_eof(srv: &TestServer) -> anyhow::Result<()> {
    for (code, reason) in [(1000, "bye"), (1001, ""), (4000, "application code")] {
        let (_, _, mut ws) = alone(srv).await?;
        ws.send_close(code, reason).await?;
        let (got, skipped) = ws.until_close().await?;
        ensure!(
            skipped.iter().all(|f| f.opcode == PING),
            "before the close: {skipped:?}"
        );
        ensure!(got.0 == code, "close {code} answered with {got:?}");
        let after = ws.read_frame().await?;
        ensure!(after.is_none(), "after the close echo: {after:?}");
    }
    // A close without a status code is answered with a normal close (1000).
    let (_, _, mut ws) = alone(srv).await?;
    ws.send_frame(true, 0, CLOSE, b"").await?;
    let (got, _) = ws.until_close().await?;
    ensure!(got.0 == 1000, "answered with {got:?}");
    ensure!(ws.read_frame().await?.is_none(), "bytes after the close");
    Ok(())
}

/// A message in fragments, with pings between them, is one message; the pongs come
/// back at once and whole.
async fn fragments_with_interleaved_control_frames(srv: &TestServer) -> anyhow::Result<()> {
    let (_, _, mut ws) = alone(srv).await?;
    let text = json!({"type": "message", "content": "in three fragments"}).to_string();
    let (a, rest) = text.split_at(10);
    let (b, c) = rest.split_at(12);
    ws.send_frame(false, 0, TEXT, a.as_bytes()).await?;
    ws.send_frame(true, 0, PING, b"between").await?;
    let pong = ws.frame().await?;
    ensure!(
        pong.opcode == PONG && pong.payload == b"between",
        "{pong:?}"
    );
    ws.send_frame(false, 0, CONTINUATION, b.as_bytes()).await?;
    ws.send_frame(true, 0, PONG, b"").await?;
    ws.send_frame(true, 0, CONTINUATION, c.as_bytes()).await?;
    let echo = ws.event().await?;
    ensure!(is_message_with(&echo, "in three fragments"), "{echo}");
    // A UTF-8 character split across fragments is fine.
    let text = json!({"type": "message", "content": "café"}).to_string();
    let split = text.find('é').unwrap() + 1;
    ws.send_frame(false, 0, TEXT, &text.as_bytes()[..split])
        .await?;
    ws.send_frame(true, 0, CONTINUATION, &text.as_bytes()[split..])
        .await?;
    let echo = ws.event().await?;
    ensure!(is_message_with(&echo, "café"), "{echo}");
    Ok(())
}

/// Each frame that breaks RFC 6455 gets the close code the RFC gives, then nothing
/// but the end of the connection.
async fn broken_frames_get_the_rfc_close_code(srv: &TestServer) -> anyhow::Result<()> {
    type Frame = (bool, u8, u8, Vec<u8>);
    let text = |s: &str| s.as_bytes().to_vec();
    let cases: Vec<(&str, Vec<Frame>, u16)> = vec![
        (
            "reserved bit 1",
            vec![(true, 0b100, TEXT, text("{}"))],
            1002,
        ),
        (
            "reserved bit 3",
            vec![(true, 0b001, TEXT, text("{}"))],
            1002,
        ),
        (
            "reserved data opcode",
            vec![(true, 0, 0x3, text("{}"))],
            1002,
        ),
        (
            "reserved control opcode",
            vec![(true, 0, 0xB, vec![])],
            1002,
        ),
        (
            "ping of 126 bytes",
            vec![(true, 0, PING, vec![0; 126])],
            1002,
        ),
        (
            "pong of 126 bytes",
            vec![(true, 0, PONG, vec![0; 126])],
            1002,
        ),
        (
            "close of 126 bytes",
            vec![(true, 0, CLOSE, [&[3, 232][..], &[b'x'; 124]].concat())],
            1002,
        ),
        ("fragmented ping", vec![(false, 0, PING, vec![])], 1002),
        (
            "continuation with no message",
            vec![(true, 0, CONTINUATION, text("{}"))],
            1002,
        ),
        (
            "new message inside a fragmented one",
            vec![(false, 0, TEXT, text("{\"ty")), (true, 0, TEXT, text("{}"))],
            1002,
        ),
        (
            "close with a one-byte payload",
            vec![(true, 0, CLOSE, vec![3])],
            1002,
        ),
        (
            "close with code 1005",
            vec![(true, 0, CLOSE, 1005u16.to_be_bytes().to_vec())],
            1002,
        ),
        (
            "close with code 999",
            vec![(true, 0, CLOSE, 999u16.to_be_bytes().to_vec())],
            1002,
        ),
        (
            "text that is not UTF-8",
            vec![(true, 0, TEXT, vec![b'"', 0xC3, 0x28, b'"'])],
            1007,
        ),
        (
            "fragmented text that is not UTF-8",
            vec![
                (false, 0, TEXT, vec![b'"', 0xE2]),
                (true, 0, CONTINUATION, vec![0x28, 0xA1, b'"']),
            ],
            1007,
        ),
        (
            "close reason that is not UTF-8",
            vec![(true, 0, CLOSE, vec![3, 232, 0xFF, 0xFE])],
            1007,
        ),
    ];
    for (what, frames, code) in cases {
        let (_, _, mut ws) = alone(srv).await?;
        for (fin, rsv, opcode, payload) in frames {
            ws.send_frame(fin, rsv, opcode, &payload).await?;
        }
        let (got, skipped) = ws.until_close().await.with_context(|| what.to_string())?;
        ensure!(
            got.0 == code,
            "{what}: closed with {got:?}, expected {code}"
        );
        ensure!(
            skipped.iter().all(|f| f.opcode == PING),
            "{what}: before the close: {skipped:?}"
        );
        ws.finish_close().await.with_context(|| what.to_string())?;
    }
    // A client frame without a mask: the server must close (RFC 6455 5.1).
    let (_, _, mut ws) = alone(srv).await?;
    ws.send_unmasked_text("{}").await?;
    let (got, _) = ws.until_close().await.context("unmasked frame")?;
    ensure!(got.0 == 1002, "unmasked frame: closed with {got:?}");
    ws.finish_close().await.context("unmasked frame")?;
    // A binary frame is refused with an error event; the connection stays.
    let (_, _, mut ws) = alone(srv).await?;
    ws.send_frame(true, 0, BINARY, b"\x00\x01").await?;
    let error = ws.event().await?;
    ensure!(kind(&error) == "error", "binary frame: {error}");
    message_round_trip(&mut ws, "after a binary frame").await
}

/// A client library with its own keepalive (pings every 200 ms, as the quick-start
/// guide's Python client does every 20 s) stays connected and chatting, and every
/// ping gets its pong.
async fn library_keepalive_keeps_chatting(srv: &TestServer) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["keep", "alive"]).await?;
    let [mut b] = join_each(srv, &conv, [&bob]).await?;
    let mut a = raw_connect(srv, &conv, &alice.token, None).await?;
    let mut pongs = 0;
    let mut echoes = 0;
    for round in 0..10 {
        a.send(Message::Ping(
            format!("keepalive {round}").into_bytes().into(),
        ))
        .await?;
        let content = format!("chatting through keepalive {round}");
        a.send(Message::text(
            json!({"type": "message", "content": content}).to_string(),
        ))
        .await?;
        let mut got_pong = false;
        let mut got_echo = false;
        while !(got_pong && got_echo) {
            let next = tokio::time::timeout(tests::ws::RECV_TIMEOUT, a.next())
                .await
                .context("keepalive round timed out")?
                .context("stream ended")??;
            match next {
                Message::Pong(p) => {
                    ensure!(
                        p.as_ref() == format!("keepalive {round}").as_bytes(),
                        "pong {p:?}"
                    );
                    got_pong = true;
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if is_message_with(&v, &content) {
                        got_echo = true;
                    }
                }
                Message::Ping(_) => {}
                other => bail!("round {round}: unexpected {other:?}"),
            }
        }
        pongs += 1;
        echoes += 1;
        b.wait_for(&content, |v| is_message_with(v, &content))
            .await?;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    ensure!(pongs == 10 && echoes == 10);
    a.close(None).await?;
    b.close().await
}

/// Frames a client sends in the same packet as its upgrade request (the server has
/// read them along with the request) are answered like any others.
async fn frames_behind_the_upgrade_request_are_read(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([me], conv) = group(&api, &["early"]).await?;
    let message = json!({"type": "message", "content": "sent with the upgrade"}).to_string();
    let early = [
        masked_frame(true, 0, PING, b"early"),
        masked_frame(true, 0, TEXT, message.as_bytes()),
    ]
    .concat();
    let mut ws = ByteWs::connect_sending(srv, &conv, &me.token, &early).await?;
    let (mut pong, mut echo) = (false, false);
    while !(pong && echo) {
        let frame = ws.frame().await?;
        match frame.opcode {
            PONG => {
                ensure!(frame.payload == b"early" && !pong, "{frame:?}");
                pong = true;
            }
            TEXT => echo |= is_message_with(&frame.json()?, "sent with the upgrade"),
            _ => bail!("unexpected {frame:?}"),
        }
    }
    message_round_trip(&mut ws, "and after it").await
}

tests::e2e!(
    ping_gets_exactly_one_pong,
    close_is_answered_once_then_eof,
    fragments_with_interleaved_control_frames,
    broken_frames_get_the_rfc_close_code,
    library_keepalive_keeps_chatting,
    frames_behind_the_upgrade_request_are_read,
);
