//! How long a WebSocket lives, on all four configurations: the server's heartbeat
//! (pings, answered pongs keep a connection, silence past the idle timeout ends it and
//! takes the user out of presence), tokens that expire on open sockets unless
//! refreshed with an `auth` event, and a participant's removal reaching their open
//! sockets at once, on every shard; and TCP keepalive on accepted sockets.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tests::frames::{ByteWs, PING, PONG};
use tests::jwt;
use tests::prelude::*;
use tests::realtime::*;

/// A fast heartbeat so the scenarios do not wait for the 25 s / 60 s defaults.
fn fast_heartbeat(opts: ServerOptions) -> ServerOptions {
    opts.arg("--ws-ping-interval")
        .arg("0.2")
        .arg("--ws-idle-timeout")
        .arg("1")
}

/// The server pings; a client that answers every ping stays connected well past the
/// idle timeout; once it falls silent (no FIN: it simply stops), the server closes it
/// with 1001 and the others see it leave.
async fn heartbeat_and_dead_peers(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["beat", "watch"]).await?;
    let [mut b] = join_each(srv, &conv, [&bob]).await?;
    let mut a = ByteWs::connect(srv, &conv, &alice.token).await?;
    b.wait_for("alice joined", |v| is_joined(v, &alice)).await?;

    // Answer pings for three idle timeouts (bob's library answers his meanwhile).
    let started = std::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(3) {
        tokio::select! {
            frame = a.frame() => {
                let frame = frame?;
                if frame.opcode == PING {
                    ensure!(frame.payload.is_empty(), "heartbeat ping {frame:?}");
                    pings += 1;
                    a.send_frame(true, 0, PONG, &frame.payload).await?;
                }
            }
            ev = b.recv() => bail!("bob got {:?} while nobody spoke", ev?),
        }
    }
    ensure!(pings >= 3, "only {pings} pings in 3 s at a 0.2 s interval");
    // Still connected and chatting.
    a.send_text(&json!({"type": "message", "content": "still here"}).to_string())
        .await?;
    b.wait_for("alice's message", |v| is_message_with(v, "still here"))
        .await?;

    // Now alice goes silent: no pongs, no reads, no FIN.
    let left = b.wait_for("alice left", |v| is_left(v, &alice)).await?;
    ensure!(
        active_users(&left)? == vec![bob.user_id.clone()],
        "presence after the dead peer: {left}"
    );
    let (close, _) = a.until_close().await?;
    ensure!(
        close == (1001, "Idle timeout".into()),
        "closed with {close:?}"
    );
    b.close().await
}

/// Browsers and libraries answer pings by themselves: a tungstenite client that keeps
/// reading stays connected across many idle timeouts without sending anything.
async fn pongs_alone_keep_a_connection(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["quiet", "talker"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;
    for round in 0..3 {
        let content = format!("round {round}");
        // Both only read (their library answers pings) for longer than the idle
        // timeout, then bob talks.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1200)) => {}
            ev = a.recv() => bail!("alice got {:?} while idle", ev?),
            ev = b.recv() => bail!("bob got {:?} while idle", ev?),
        }
        b.send_message(&content).await?;
        a.wait_for(&content, |v| is_message_with(v, &content))
            .await?;
    }
    close_all([a, b]).await
}

/// A socket opened with a token that expires is told so and closed with 1008 at
/// `exp`; one that sent a fresh token first lives on. Refreshing with garbage or with
/// another user's token is an `error` and changes nothing.
async fn tokens_expire_on_open_sockets(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["expiring", "other"]).await?;
    let short = jwt::hs256(srv.secret_key(), &alice.user_id, 2)?;

    // Not refreshed: error event, then close 1008 `Token expired`.
    let mut ws = WsClient::connect(&srv.ws_base_url(), &conv, &short).await?;
    ws.wait_for("the expiry error", |v| {
        kind(v) == "error" && field(v, "detail") == "Token expired"
    })
    .await?;
    let close = ws.recv_close().await?;
    ensure!(close == Some((1008, "Token expired".into())), "{close:?}");

    // Refreshed before `exp`: still usable after it.
    let short = jwt::hs256(srv.secret_key(), &alice.user_id, 2)?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &conv, &short).await?;
    ws.send_json(&json!({"type": "auth", "token": "not.a.jwt", "ref": "bad"}))
        .await?;
    let e = ws.wait_for("error", |v| kind(v) == "error").await?;
    ensure!(
        field(&e, "detail") == "Invalid token" && field(&e, "ref") == "bad",
        "{e}"
    );
    ws.send_json(&json!({"type": "auth", "token": bob.token}))
        .await?;
    let e = ws.wait_for("error", |v| kind(v) == "error").await?;
    ensure!(field(&e, "detail") == "Token is for another user", "{e}");
    ws.send_json(&json!({"type": "auth", "token": alice.token}))
        .await?;
    let ok = ws.wait_for("auth ok", |v| kind(v) == "auth").await?;
    ensure!(field(&ok, "status") == "ok", "{ok}");
    ensure!(is_timestamp(field(&ok, "expires_at")), "{ok}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    ws.send_message("after the first token expired").await?;
    ws.close().await
}

/// `DELETE .../participants/{bob}`: every open socket of bob's in the conversation,
/// on every shard, gets the `error` and close 1008 before anything said after the
/// removal, and the others see bob leave. Self-removal works the same way.
async fn removal_reaches_open_sockets(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["owner", "removed", "stays"]).await?;
    let [mut a, mut c] = join_settled(srv, &conv, [&alice, &carol]).await?;
    // Several tabs, so that both shards are likely to hold one.
    let mut tabs = Vec::new();
    for _ in 0..4 {
        tabs.push(join(srv, &conv, &bob).await?.0);
    }
    a.send_message("before the removal").await?;
    api.remove_participant(&alice, &conv, &bob.user_id)
        .await?
        .expect_status(204)?;
    // Sent at once, without waiting for the sockets to close.
    a.send_json(&json!({"type": "message", "content": "after the removal"}))
        .await?;
    for (i, tab) in tabs.iter_mut().enumerate() {
        let mut seen = Vec::new();
        let close = loop {
            match tab.recv().await? {
                WsEvent::Close(close) => break close,
                WsEvent::Json(v) => seen.push(v),
                other => bail!("tab {i}: {other:?}"),
            }
        };
        ensure!(
            close == Some((1008, "Not a member of this conversation".into())),
            "tab {i}: {close:?}"
        );
        ensure!(
            seen.iter()
                .any(|v| kind(v) == "error"
                    && field(v, "detail") == "Not a member of this conversation"),
            "tab {i}: no error event before the close: {seen:?}"
        );
        ensure!(
            !seen.iter().any(|v| is_message_with(v, "after the removal")),
            "tab {i} got a message said after the removal: {seen:?}"
        );
    }
    let left = c.wait_for("bob left", |v| is_left(v, &bob)).await?;
    let mut active = active_users(&left)?;
    active.sort();
    let mut expected = user_ids(&[&alice, &carol]);
    expected.sort();
    ensure!(active == expected, "presence after the removal: {left}");
    c.wait_for("the message after", |v| {
        is_message_with(v, "after the removal")
    })
    .await?;
    // Bob cannot come back.
    let mut again = WsClient::connect(&srv.ws_base_url(), &conv, &bob.token).await?;
    ensure!(
        again.recv_close().await? == Some((1008, "Not a member of this conversation".into())),
        "bob reconnected after the removal"
    );

    // Carol removes herself.
    api.remove_participant(&carol, &conv, &carol.user_id)
        .await?
        .expect_status(204)?;
    let close = c.recv_close().await?;
    ensure!(
        close == Some((1008, "Not a member of this conversation".into())),
        "{close:?}"
    );
    a.wait_for("carol left", |v| is_left(v, &carol)).await?;
    // Re-added, carol may connect again.
    api.add_participant(&alice, &conv, &carol.user_id)
        .await?
        .expect_status(200)?;
    let (mut c, _) = join(srv, &conv, &carol).await?;
    c.send_message("back again").await?;
    close_all([a, c]).await
}

tests::e2e!(options = super::fast_heartbeat; heartbeat_and_dead_peers, pongs_alone_keep_a_connection);
tests::e2e!(tokens_expire_on_open_sockets, removal_reaches_open_sockets);

/// Accepted sockets carry TCP keepalive (so peers that vanished are found even on
/// plain HTTP keep-alive connections), unless turned off with 0. Read from the
/// kernel's own table: `/proc/net/tcp` timer 2 is the keepalive timer.
async fn tcp_keepalive_on_accepted_sockets(srv: &TestServer) -> anyhow::Result<()> {
    let enabled = !srv
        .options()
        .extra_args
        .windows(2)
        .any(|w| w[0] == "--tcp-keepalive-seconds" && w[1] == "0");
    let addr = server_addr(srv)?;
    let client = tokio::net::TcpStream::connect(addr).await?;
    let client_port = client.local_addr()?.port();
    // The server side of this connection: local port = the server's, remote = ours.
    let timer = || -> anyhow::Result<Option<String>> {
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        Ok(table.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = |col: &str| {
                col.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            (cols.len() > 5
                && port(cols[1]) == Some(addr.port())
                && port(cols[2]) == Some(client_port)
                && cols[3] == "01")
                .then(|| cols[5].split(':').next().unwrap_or("").to_string())
        }))
    };
    // The shard sets the option right after accept: give it a moment.
    let mut seen = None;
    for _ in 0..50 {
        seen = timer()?;
        if seen.as_deref() == Some(if enabled { "02" } else { "00" }) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("server socket timer {seen:?}, keepalive expected: {enabled}")
}

tests::e2e_on!(tcp_keepalive_on_accepted_sockets, |o| o, [
    sqlite_uring => (Sqlite, Uring),
    sqlite_epoll => (Sqlite, Epoll),
]);

/// The same check with `--tcp-keepalive-seconds 0`: no keepalive timer.
async fn tcp_keepalive_can_be_turned_off(srv: &TestServer) -> anyhow::Result<()> {
    tcp_keepalive_on_accepted_sockets(srv).await
}

tests::e2e_on!(
    tcp_keepalive_can_be_turned_off,
    |o| o.arg("--tcp-keepalive-seconds").arg("0"),
    [sqlite_uring => (Sqlite, Uring)]
);
