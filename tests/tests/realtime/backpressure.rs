//! Flow control: the per-user rate limit on incoming events (and the close of a socket
//! that keeps flooding past it), and the bounded outbound queue that closes a client
//! which cannot keep up (1013) instead of growing memory.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tests::prelude::*;
use tests::realtime::*;
use tokio_tungstenite::tungstenite::Message;

/// With `--ws-rate-per-second 1 --ws-rate-burst 5`, 20 messages sent at once: at least
/// the burst is acknowledged, at least one gets `error` `Rate limit exceeded` (with its
/// `ref`), the connection stays open, and after the bucket refills a message goes
/// through. Other users are not limited by it. Refused messages are not stored.
async fn rate_limit(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut b, _) = join(srv, &conv, bob).await?;
    let (mut a, _) = join(srv, &conv, alice).await?;

    for i in 0..20 {
        a.send_json(&json!({"type": "message", "content": format!("flood {i}"), "ref": format!("flood-{i}")}))
            .await?;
    }
    let mut acked = Vec::new();
    let mut limited = Vec::new();
    while acked.len() + limited.len() < 20 {
        let ev = a.recv_json().await.with_context(|| {
            format!(
                "{} acknowledged, {} limited so far",
                acked.len(),
                limited.len()
            )
        })?;
        match kind(&ev) {
            "message" => acked.push(ev),
            "error" => {
                ensure!(
                    ev["detail"] == "Rate limit exceeded",
                    "unexpected error during the flood: {ev}"
                );
                let r = field(&ev, "ref");
                ensure!(
                    r.starts_with("flood-"),
                    "rate limit error without the frame's ref: {ev}"
                );
                limited.push(r.to_string());
            }
            _ => {}
        }
    }
    ensure!(
        !limited.is_empty(),
        "20 messages at once with burst 5 and 1/s: none was rate limited"
    );
    ensure!(
        acked.len() >= 5,
        "only {} of the first 20 messages were accepted; the burst is 5",
        acked.len()
    );
    let acked_contents: Vec<&str> = acked.iter().map(|v| field(v, "content")).collect();
    for r in &limited {
        let content = format!("flood {}", r.trim_start_matches("flood-"));
        ensure!(
            !acked_contents.contains(&content.as_str()),
            "{content:?} was both acknowledged and rate limited"
        );
    }

    // Another user is not affected.
    b.send_json(&json!({"type": "message", "content": "bob is not limited"}))
        .await?;
    let mut bob_saw = events_until(&mut b, "bob's own echo", |v| {
        kind(v) == "error" || is_message_with(v, "bob is not limited")
    })
    .await?;
    ensure!(
        bob_saw.last().is_some_and(|v| kind(v) == "message"),
        "bob was limited by alice's flood: {bob_saw:?}"
    );

    // The connection stays open; once the bucket refills a message goes through.
    let mut after = None;
    for attempt in 0..30 {
        pause(1000).await;
        match send_tracked(
            &mut a,
            &format!("after the flood {attempt}"),
            &format!("after-{attempt}"),
        )
        .await?
        {
            Outcome::Acked(echo) => {
                after = Some(echo);
                break;
            }
            Outcome::Refused(err) => ensure!(
                err["detail"] == "Rate limit exceeded",
                "unexpected error after the flood: {err}"
            ),
        }
    }
    let after = after.context("no message accepted within 30 s after the flood")?;

    // History: exactly the accepted messages, in order; bob got them too.
    let mut expected = message_ids(&acked);
    expected.push(field(&after, "message_id").to_string());
    let history = api.history_list(bob, &conv, "limit=100").await?;
    let stored: Vec<String> = history
        .iter()
        .filter(|m| m["sender_id"] == alice.user_id.as_str())
        .map(|m| field(m, "id").to_string())
        .collect();
    ensure!(
        stored == expected,
        "history {stored:?} vs accepted {expected:?}"
    );
    bob_saw.extend(events_until(&mut b, "alice's message after the flood", |v| v == &after).await?);
    let got: Vec<String> = bob_saw
        .iter()
        .filter(|v| kind(v) == "message" && v["sender_id"] == alice.user_id.as_str())
        .map(|v| field(v, "message_id").to_string())
        .collect();
    ensure!(
        got == expected,
        "bob received {got:?}, accepted were {expected:?}"
    );
    a.close().await?;
    b.close().await?;
    Ok(())
}

tests::e2e!(
    options = |o| o.arg("--ws-rate-per-second").arg("1").arg("--ws-rate-burst").arg("5");
    rate_limit
);

/// Outbound limit 64 KiB. A client that completed the handshake (with a small receive
/// buffer) and never reads falls behind while a sender streams 4000-character
/// messages: the server closes it with 1013 (what it finds when it finally reads:
/// frames up to a point, in order, then the close frame). A normal client in the same
/// conversation receives every message, and the server's memory stays bounded.
async fn slow_consumer_closed(srv: &TestServer) -> anyhow::Result<()> {
    // Enough bytes to fill any kernel socket buffers on the way (net.ipv4.tcp_wmem
    // allows a send buffer of up to 4 MiB by default) and then the 64 KiB queue.
    const VOLUME: usize = 8 * 1024 * 1024;
    let api = srv.api();
    let (users, conv) = group(&api, &["sender", "reader", "slow"]).await?;
    let (sender, reader, slow) = (&users[0], &users[1], &users[2]);
    let (mut s, _) = join(srv, &conv, sender).await?;
    let (mut r, _) = join(srv, &conv, reader).await?;
    let mut slow_ws = raw_connect(srv, &conv, &slow.token, Some(4096)).await?;
    s.wait_for("the slow client's joined event", |v| is_joined(v, slow))
        .await?;
    r.wait_for("the slow client's joined event", |v| is_joined(v, slow))
        .await?;

    let pid = srv.pid()?;
    let rss_before = vm_rss_kib(pid)?;

    // 4000 characters, 3 bytes each: about 12 KB per frame.
    let filler = "€".repeat(3990);
    let count = VOLUME / (filler.len() + 100) + 1;
    // Everything the normal reader sees is kept: the slow client's `left` event may
    // arrive while the messages are still streaming.
    let last = format!("slow{:05} ", count - 1);
    let reading = tokio::spawn(async move {
        let got = events_until(&mut r, "the last message", |v| {
            kind(v) == "message" && field(v, "content").starts_with(&last)
        })
        .await;
        (r, got)
    });
    let mut acked = Vec::new();
    for i in 0..count {
        let content = format!("slow{i:05} {filler}");
        let content: String = content.chars().take(4000).collect();
        let echo = s
            .send_message(&content)
            .await
            .with_context(|| format!("message {i} of {count}"))?;
        acked.push(field(&echo, "message_id").to_string());
    }
    let (mut r, seen) = reading.await.context("reader task panicked")?;
    let seen = seen.context("the normal reader")?;
    let got: Vec<Value> = seen
        .iter()
        .filter(|v| kind(v) == "message")
        .cloned()
        .collect();
    ensure!(
        message_ids(&got) == acked,
        "the normal reader did not receive every message in order"
    );

    // Now the slow client reads what reached it.
    let mut received = Vec::new();
    let mut other = Vec::new();
    let end = loop {
        let next = tokio::time::timeout(Duration::from_secs(30), slow_ws.next()).await;
        let msg = match next {
            Err(_) => {
                break format!(
                    "still open: nothing more within 30 s after {} messages",
                    received.len()
                )
            }
            Ok(None) => break "stream ended without a close frame".to_string(),
            Ok(Some(Err(e))) => break format!("connection error: {e}"),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str())
                    .with_context(|| format!("slow client: a non-JSON frame {text:?}"))?;
                if kind(&v) == "message" {
                    received.push(field(&v, "message_id").to_string());
                } else {
                    other.push(v);
                }
            }
            Message::Close(frame) => {
                break format!(
                    "close {:?}",
                    frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                )
            }
            _ => {}
        }
    };
    ensure!(
        received.len() < acked.len(),
        "the slow client received all {} messages ({end}); it was never closed",
        acked.len()
    );
    ensure!(
        acked.starts_with(&received),
        "the slow client's messages are not an in-order prefix of the stream"
    );
    ensure!(
        end.starts_with("close Some((1013,")
            || end.starts_with("stream ended")
            || end.starts_with("connection error"),
        "the slow client: expected a close with 1013 (or a reset), got {end} after {} of {} \
         messages; other events {other:?}",
        received.len(),
        acked.len()
    );

    // The others go on, and memory went back down.
    let echo = s.send_message("after the slow client").await?;
    let events = events_until(&mut r, "the message after the slow client", |v| v == &echo).await?;
    if !seen.iter().chain(&events).any(|v| is_left(v, slow)) {
        r.wait_for("the slow client's left event", |v| is_left(v, slow))
            .await?;
    }
    let rss_after = vm_rss_kib(pid)?;
    ensure!(
        rss_after < rss_before + 64 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    s.close().await?;
    r.close().await?;
    Ok(())
}

fn slow_options(opts: ServerOptions) -> ServerOptions {
    no_rate_limit(opts)
        .arg("--ws-outbound-limit-bytes")
        .arg("65536")
}

/// A client that ignores its `Rate limit exceeded` errors is cut off: with a burst of
/// 5 and `--ws-flood-limit 10`, 40 messages at once get at most the burst (and what
/// refilled) accepted, eleven refusals, then `error` `Too many events` and close 1008
/// with that reason. What was accepted is stored and delivered (its echoes may not
/// reach the flooder before the close); another member's socket stays open.
async fn a_flood_is_closed(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["flooder", "bystander"]).await?;
    let (mut other, _) = join(srv, &conv, &users[1]).await?;
    let (mut flooder, _) = join(srv, &conv, &users[0]).await?;
    for i in 0..40 {
        flooder
            .send_json(&json!({"type": "message", "content": format!("flood {i}")}))
            .await?;
    }
    let mut events = Vec::new();
    let close = loop {
        match flooder.recv().await? {
            WsEvent::Json(v) => events.push(v),
            WsEvent::Close(close) => break close,
            other => bail!("got {other:?}; before it {events:?}"),
        }
    };
    ensure!(
        close == Some((1008, "Too many events".to_string())),
        "closed with {close:?}"
    );
    let refusals = |detail: &str| {
        events
            .iter()
            .filter(|v| kind(v) == "error" && v["detail"] == detail)
            .count()
    };
    let limited = refusals("Rate limit exceeded");
    ensure!(
        limited == 11,
        "{limited} refused before the close: {events:?}"
    );
    ensure!(
        refusals("Too many events") == 1,
        "the close was not announced: {events:?}"
    );

    let seen = send_and_collect(&mut other, "still here").await?;
    let delivered: Vec<&str> = seen
        .iter()
        .filter(|v| kind(v) == "message" && v["sender_id"] == users[0].user_id.as_str())
        .map(|v| field(v, "content"))
        .collect();
    ensure!(
        (5..=6).contains(&delivered.len()),
        "delivered: {delivered:?}"
    );
    let history = full_history(&api, &users[1], &conv).await?;
    let stored: Vec<&str> = history.iter().map(|v| field(v, "content")).collect();
    ensure!(
        stored[..stored.len() - 1] == delivered[..],
        "stored {stored:?}, delivered {delivered:?}"
    );
    Ok(())
}

tests::e2e!(
    options = |o| o
        .arg("--ws-rate-per-second")
        .arg("1")
        .arg("--ws-rate-burst")
        .arg("5")
        .arg("--ws-flood-limit")
        .arg("10");
    a_flood_is_closed
);

tests::e2e_on!(slow_consumer_closed, super::slow_options, [
    sqlite_uring => (Sqlite, Uring),
    sqlite_epoll => (Sqlite, Epoll),
]);

/// A backlog larger than the outbound limit (the default 1 MiB): 80 messages of 5,000
/// three-byte characters, about 1.2 MB of frames. A client resuming from before them
/// reads and receives every one, in order, then goes live: a replay waits for the
/// client to take what is queued, it does not mistake a big backlog for a client that
/// does not read.
async fn a_backlog_over_the_outbound_limit_is_resumed(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["poster", "resumer"]).await?;
    let (poster, resumer) = (&users[0], &users[1]);
    let (mut p, joined) = join(srv, &conv, poster).await?;
    let since = joined["seq"].as_u64().context("seq")?;
    let filler = "€".repeat(4990);
    let mut acked = Vec::new();
    for i in 0..80 {
        let echo = p.send_message(&format!("big{i:03} {filler}")).await?;
        acked.push(field(&echo, "message_id").to_string());
    }
    let url = format!(
        "{}&since={since}",
        tests::ws::ws_url(&srv.ws_base_url(), &conv, &resumer.token)
    );
    let mut r = WsClient::connect_url(&url).await?;
    let mut replayed = Vec::new();
    while replayed.len() < acked.len() {
        let ev = r.recv_json().await.with_context(|| {
            format!(
                "after {} of {} replayed messages",
                replayed.len(),
                acked.len()
            )
        })?;
        match kind(&ev) {
            "message" => replayed.push(field(&ev, "message_id").to_string()),
            "resync" | "error" => bail!("the replay was cut short: {ev}"),
            _ => {}
        }
    }
    ensure!(replayed == acked, "the replay is not the stream, in order");
    r.wait_for("its own joined event", |v| is_joined(v, resumer))
        .await?;
    let echo = p.send_message("live after the replay").await?;
    r.wait_for("the live message", |v| v == &echo).await?;
    Ok(())
}

tests::e2e_on!(a_backlog_over_the_outbound_limit_is_resumed, super::no_rate_limit, [
    sqlite_uring => (Sqlite, Uring),
    postgres_epoll => (Postgres, Epoll),
]);

/// With `--ws-rate-per-second 1 --ws-rate-burst 5`: a user who spent the burst and
/// reconnects (on whichever shard) finds the budget still spent, so reconnecting is no
/// way around the limit.
async fn the_rate_limit_survives_a_reconnect(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["spender"]).await?;
    let spender = &users[0];
    let (mut ws, _) = join(srv, &conv, spender).await?;
    for i in 0..5 {
        ws.send_message(&format!("burst {i}")).await?;
    }
    ws.close().await?;
    for attempt in 0..4 {
        let (mut again, _) = join(srv, &conv, spender).await?;
        again
            .send_json(
                &json!({"type": "message", "content": format!("again {attempt}"), "ref": "again"}),
            )
            .await?;
        let answer = again
            .wait_for("the answer to the message", |v| {
                kind(v) == "error" || is_message_with(v, &format!("again {attempt}"))
            })
            .await?;
        if kind(&answer) == "error" {
            ensure!(answer["detail"] == "Rate limit exceeded", "{answer}");
            return Ok(());
        }
        again.close().await?;
    }
    bail!("four reconnects each got a fresh budget: the burst of 5 at 1/s was spent")
}

tests::e2e!(
    options = |o| o.arg("--ws-rate-per-second").arg("1").arg("--ws-rate-burst").arg("5");
    the_rate_limit_survives_a_reconnect
);
