//! What one client may hold on a WebSocket, against the real binary: a fragmented
//! message must be finished in time (`--ws-fragment-timeout`) and in few frames
//! (`--ws-max-fragments`), however many pings keep the connection alive meanwhile,
//! and one user holds at most `--ws-max-per-user` sockets on a node. Each bound ends
//! in the close docs/protocol.md gives for it, announced by an `error` event.

use std::time::{Duration, Instant};

use tests::frames::{ByteWs, CONTINUATION, PING, TEXT};
use tests::prelude::*;
use tests::realtime::*;

/// A user alone in a fresh conversation, connected byte by byte, with its own
/// `joined` event read.
async fn alone(srv: &TestServer) -> anyhow::Result<ByteWs> {
    let api = srv.api();
    let ([me], conv) = group(&api, &["fragments"]).await?;
    let mut ws = ByteWs::connect(srv, &conv, &me.token).await?;
    let joined = ws.event_of_type("system").await?;
    ensure!(is_joined(&joined, &me), "first event: {joined}");
    Ok(ws)
}

/// The close that ends `ws`, with the `error` event that announced it.
async fn announced_close(ws: &mut ByteWs, reason: &str) -> anyhow::Result<()> {
    let ((code, got), skipped) = ws.until_close().await?;
    ensure!(
        (code, got.as_str()) == (1008, reason),
        "closed with {code} {got:?}"
    );
    let announced = skipped
        .iter()
        .filter(|f| f.opcode == TEXT)
        .filter_map(|f| f.json().ok())
        .any(|v| v["type"] == "error" && v["detail"] == reason);
    ensure!(announced, "no error event before the close: {skipped:?}");
    ws.finish_close().await
}

/// A message left unfinished while pings keep the connection busy is closed with
/// 1008 `Message not finished in time` once the fragment timeout passes.
async fn an_unfinished_message_is_closed_in_time(srv: &TestServer) -> anyhow::Result<()> {
    let mut ws = alone(srv).await?;
    let started = Instant::now();
    ws.send_frame(false, 0, TEXT, br#"{"type":"message","#)
        .await?;
    // Pings answer in pongs; they must not keep the message open. They stop well
    // after the timeout, so a server that never closes fails below.
    let pings = async {
        for _ in 0..12 {
            ws.send_frame(true, 0, PING, b"alive").await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::Ok(())
    };
    // Writes may fail once the server has closed: what matters is how it closed.
    let _ = pings.await;
    announced_close(&mut ws, "Message not finished in time").await?;
    ensure!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// More frames than `--ws-max-fragments` in one message: 1008 `Message in too many
/// fragments`, while a message within the bound still goes through.
async fn a_message_in_too_many_fragments_is_closed(srv: &TestServer) -> anyhow::Result<()> {
    let mut ws = alone(srv).await?;
    // Four frames are allowed: this message is delivered.
    let parts: [&[u8]; 4] = [
        br#"{"type":"#,
        br#""message","#,
        br#""content":"#,
        br#""four"}"#,
    ];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        ws.send_frame(i == parts.len() - 1, 0, opcode, part).await?;
    }
    let echo = ws.event_of_type("message").await?;
    ensure!(is_message_with(&echo, "four"), "{echo}");
    // Five never end.
    ws.send_frame(false, 0, TEXT, b"{").await?;
    for _ in 0..4 {
        ws.send_frame(false, 0, CONTINUATION, b" ").await?;
    }
    announced_close(&mut ws, "Message in too many fragments").await
}

/// The user's sockets beyond `--ws-max-per-user` are refused with 1008 `Too many
/// connections`; closing one makes room, and other users are not affected.
async fn sockets_per_user_are_capped(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["many-tabs", "other"]).await?;
    let (first, _) = join(srv, &conv, &alice).await?;
    let (_second, _) = join(srv, &conv, &alice).await?;
    let mut third = ByteWs::connect(srv, &conv, &alice.token).await?;
    announced_close(&mut third, "Too many connections").await?;
    // Bob has his own allowance.
    let (_bob, _) = join(srv, &conv, &bob).await?;
    first.close().await?;
    // The freed place is taken back as soon as the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = ByteWs::connect(srv, &conv, &alice.token).await?;
        let first = again.event().await?;
        if first["type"] == "system" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "still refused after a socket closed: {first}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// The limits are set through their environment variables: a server that does not know
// them starts all the same, and the scenarios show what it then fails to bound.
tests::e2e!(
    options = |o| o.env("WS_FRAGMENT_TIMEOUT", "1");
    an_unfinished_message_is_closed_in_time
);
tests::e2e!(
    options = |o| o.env("WS_MAX_FRAGMENTS", "4");
    a_message_in_too_many_fragments_is_closed
);
tests::e2e!(
    options = |o| o.env("WS_MAX_PER_USER", "2");
    sockets_per_user_are_capped
);
