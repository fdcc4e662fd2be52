//! Conversation streams: nothing missed, nothing twice. Every persisted event carries
//! its position `seq` (1, 2, 3, ... in history order); a client that reconnects with
//! `since` gets exactly what it missed, then live events, with no gap or duplicate at
//! the seam even while others post during the replay; a send repeated with the same
//! `client_id` (on the same socket, after a reconnect, after `kill -9`) is answered
//! with the original ack and stored once; history pages forward with `after`.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use tests::prelude::*;
use tests::realtime::*;
use tests::ws::ws_url;

/// A connection that resumes after `since` (raw text: the server must cope with any).
async fn resume(
    srv: &TestServer,
    conv: &str,
    who: &Session,
    since: &str,
) -> anyhow::Result<WsClient> {
    let url = format!(
        "{}&since={since}",
        ws_url(&srv.ws_base_url(), conv, &who.token)
    );
    WsClient::connect_url(&url).await
}

fn seq(v: &Value) -> u64 {
    v.get("seq").and_then(Value::as_u64).unwrap_or(0)
}

/// Whether an event is one of the stream's (it carries a position).
fn is_stream_event(v: &Value) -> bool {
    matches!(kind(v), "message" | "edit" | "delete" | "reaction")
}

/// Reads events until `who`'s own joined event; returns the stream events before it
/// (a resume's replay) and the position the joined event names.
async fn replay_then_joined(ws: &mut WsClient, who: &Session) -> anyhow::Result<(Vec<Value>, u64)> {
    let mut replayed = Vec::new();
    loop {
        let ev = ws.recv_json().await?;
        if is_joined(&ev, who) {
            ensure!(ev.get("seq").is_some(), "joined without its position: {ev}");
            return Ok((replayed, seq(&ev)));
        }
        ensure!(kind(&ev) != "error", "error while resuming: {ev}");
        if is_stream_event(&ev) || kind(&ev) == "resync" {
            replayed.push(ev);
        }
    }
}

/// Stream events as `bob` saw them live, until `n` of them.
async fn stream_events(ws: &mut WsClient, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = ws.recv_json().await?;
        ensure!(kind(&ev) != "error", "error: {ev}");
        if is_stream_event(&ev) {
            got.push(ev);
        }
    }
    Ok(got)
}

/// Carol leaves; alice and bob post, edit, react, unreact and delete; carol comes back
/// with the position of her joined event and gets exactly those events, in order and
/// as bob saw them live (but for the deleted message's content), then her joined event
/// at the new position, then live ones.
async fn resume_replays_exactly_what_was_missed(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["sa", "sb", "sc"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;
    let (c, joined) = join(srv, &conv, &carol).await?;
    let since = seq(&joined);
    ensure!(since == 0, "a new conversation is at 0: {joined}");
    c.close().await?;

    let m1 = a.send_message("first while carol is away").await?;
    let id1 = field(&m1, "message_id").to_string();
    let seen = b
        .wait_for("the first message", |v| {
            kind(v) == "message" && v["message_id"] == id1.as_str()
        })
        .await?;
    ensure!(
        seen == m1,
        "bob and alice saw different frames: {seen} vs {m1}"
    );
    let m2 = b.send_message("second while carol is away").await?;
    let id2 = field(&m2, "message_id").to_string();
    a.send_json(&json!({"type": "edit", "message_id": id1, "content": "first, edited"}))
        .await?;
    b.send_json(&json!({"type": "reaction", "message_id": id1, "emoji": "👍"}))
        .await?;
    b.send_json(&json!({"type": "reaction", "message_id": id1, "emoji": "👍"}))
        .await?;
    b.send_json(&json!({"type": "delete", "message_id": id2}))
        .await?;
    let mut live = vec![m1, m2];
    live.extend(stream_events(&mut b, 4).await?);
    ensure!(
        live.iter().map(seq).collect::<Vec<_>>() == (1..=6).collect::<Vec<_>>(),
        "positions 1..6 in broadcast order: {live:?}"
    );
    // Two toggles sent back to back are applied in the order sent.
    let actions: Vec<&Value> = live
        .iter()
        .filter(|e| kind(e) == "reaction")
        .map(|e| &e["action"])
        .collect();
    ensure!(
        actions == [&json!("added"), &json!("removed")],
        "reaction actions {actions:?}"
    );

    let mut c = resume(srv, &conv, &carol, &since.to_string()).await?;
    let (replayed, position) = replay_then_joined(&mut c, &carol).await?;
    // As bob saw it live, except that the deleted message keeps only its place.
    let mut expected = live.clone();
    expected[1]["content"] = json!("");
    expected[1]["is_deleted"] = json!(true);
    ensure!(
        replayed == expected,
        "replay differs from the live stream:\n{replayed:#?}\nvs\n{expected:#?}"
    );
    ensure!(position == 6, "joined at {position}, not 6");

    let m3 = a.send_message("after carol is back").await?;
    let next = c.recv_type("message").await?;
    ensure!(
        next == m3 && seq(&m3) == 7,
        "the live message after the replay: {next}"
    );

    // Resuming from where she is now replays nothing.
    c.close().await?;
    let mut c = resume(srv, &conv, &carol, "7").await?;
    let (replayed, position) = replay_then_joined(&mut c, &carol).await?;
    ensure!(
        replayed.is_empty() && position == 7,
        "{replayed:?} at {position}"
    );
    close_all([a, b, c]).await
}

/// Alice and bob keep posting while carol resumes, again and again: each time carol's
/// stream (replay, then live) holds every position once, in order, up to the last
/// message posted.
async fn resume_seam_holds_while_others_post(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["ta", "tb", "tc"]).await?;
    let mut writers = Vec::new();
    for who in [&alice, &bob] {
        let (mut ws, _) = join(srv, &conv, who).await?;
        let name = who.username.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..150 {
                ws.send_message(&format!("{name} {i}")).await?;
            }
            ws.close().await?;
            anyhow::Ok(())
        }));
    }
    let mut position = 0;
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..6 {
        let mut c = resume(srv, &conv, &carol, &position.to_string()).await?;
        let (replayed, joined_at) = replay_then_joined(&mut c, &carol).await?;
        seen.extend(replayed.iter().map(seq));
        ensure!(
            seen.last().copied().unwrap_or(0) == joined_at,
            "the replay ends at the joined position {joined_at}: {seen:?}"
        );
        // A few live ones, then away again.
        for ev in stream_events(&mut c, 20).await? {
            seen.push(seq(&ev));
        }
        position = *seen.last().unwrap();
        c.close().await?;
    }
    for w in writers {
        w.await??;
    }
    let mut c = resume(srv, &conv, &carol, &position.to_string()).await?;
    let (replayed, joined_at) = replay_then_joined(&mut c, &carol).await?;
    seen.extend(replayed.iter().map(seq));
    ensure!(
        joined_at == 300,
        "300 messages were posted; joined at {joined_at}"
    );
    ensure!(
        seen == (1..=300).collect::<Vec<_>>(),
        "every position once, in order: {seen:?}"
    );
    // History agrees: the same order, the same positions.
    let history = full_history(&api, &carol, &conv).await?;
    let positions: Vec<u64> = history.iter().map(seq).collect();
    ensure!(
        positions == (1..=300).collect::<Vec<_>>(),
        "history positions {positions:?}"
    );
    c.close().await
}

/// Four senders, each on its own connection (spread over the shards), post and react
/// concurrently: the positions have no gaps, every listener gets them in order, and
/// history's order is position order.
async fn positions_have_no_gaps_under_concurrent_senders(
    srv: &mut TestServer,
) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["ga", "gb", "gc", "gd", "listen"]).await?;
    let [mut listener] = join_each(srv, &conv, [&users[4]]).await?;
    let mut tasks = Vec::new();
    for who in users[..4].iter().cloned() {
        let (mut ws, _) = join(srv, &conv, &who).await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let echo = ws.send_message(&format!("{} {i}", who.username)).await?;
                if i % 4 == 0 {
                    let id = field(&echo, "message_id").to_string();
                    ws.send_json(&json!({"type": "reaction", "message_id": id, "emoji": "🎉"}))
                        .await?;
                }
            }
            // Stay until every reaction was persisted: the listener counts them.
            anyhow::Ok(ws)
        }));
    }
    let total = 4 * 40 + 4 * 10;
    let got = stream_events(&mut listener, total).await?;
    let positions: Vec<u64> = got.iter().map(seq).collect();
    ensure!(
        positions == (1..=total as u64).collect::<Vec<_>>(),
        "delivered positions: {positions:?}"
    );
    let mut senders = Vec::new();
    for t in tasks {
        senders.push(t.await??);
    }
    let history = full_history(&api, &users[4], &conv).await?;
    let message_positions: Vec<u64> = got
        .iter()
        .filter(|e| kind(e) == "message")
        .map(seq)
        .collect();
    ensure!(
        history.iter().map(seq).collect::<Vec<_>>() == message_positions,
        "history order is position order"
    );
    ensure!(
        ids(&history)
            == got
                .iter()
                .filter(|e| kind(e) == "message")
                .map(|e| field(e, "message_id").to_string())
                .collect::<Vec<_>>(),
        "history holds the delivered messages in delivery order"
    );
    close_all(senders.into_iter().chain([listener])).await
}

/// A `since` that is no position, or one the conversation has not reached, is an
/// `error`; the socket stays usable, live from now (each round posts one message).
async fn bad_since_is_an_error_and_the_socket_stays(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["bs"]).await?;
    for (since, detail) in [
        (
            "abc",
            "Invalid since: expected a stream position (0 or more)",
        ),
        (
            "-1",
            "Invalid since: expected a stream position (0 or more)",
        ),
        ("1000", "Invalid since: the conversation is at 2"),
    ] {
        let mut ws = resume(srv, &conv, &alice, since).await?;
        let err = ws.recv_type("error").await?;
        ensure!(err["detail"] == detail, "since={since}: {err}");
        ws.wait_for("alice's joined event", |v| is_joined(v, &alice))
            .await?;
        let echo = ws
            .send_message(&format!("since {since} still works"))
            .await?;
        ensure!(seq(&echo) > 0, "{echo}");
        ws.close().await?;
    }
    Ok(())
}

/// A replay longer than 1,000 events sends the newest 1,000 after a `resync` naming
/// the first of them.
async fn long_replay_starts_with_resync(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["la", "lb"]).await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    for i in 0..1010 {
        a.send_json(&json!({"type": "message", "content": format!("m{i}")}))
            .await?;
    }
    let last = a
        .wait_for("the last echo", |v| v["content"] == "m1009")
        .await?;
    ensure!(seq(&last) == 1010, "{last}");
    let mut b = resume(srv, &conv, &bob, "0").await?;
    let (replayed, position) = replay_then_joined(&mut b, &bob).await?;
    ensure!(position == 1010);
    ensure!(
        replayed.first()
            == Some(&json!({"type": "resync", "from_seq": 11, "conversation_id": conv})),
        "first: {:?}",
        replayed.first()
    );
    let positions: Vec<u64> = replayed[1..].iter().map(seq).collect();
    ensure!(
        positions == (11..=1010).collect::<Vec<_>>(),
        "replayed {} events",
        positions.len()
    );
    close_all([a, b]).await
}

/// The same `client_id` sent twice, again after a reconnect, and again after the
/// server was killed and restarted: one row, the same ack each time, echoing the id;
/// the others see the message once.
async fn client_id_makes_sends_idempotent(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["ia", "ib"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;
    let send = json!({"type": "message", "content": "only once", "client_id": "send-42"});
    a.send_json(&send).await?;
    let ack = a.recv_type("message").await?;
    ensure!(ack["client_id"] == "send-42" && seq(&ack) == 1, "{ack}");
    a.send_json(&send).await?;
    let again = a.recv_type("message").await?;
    ensure!(again == ack, "the repeat's ack {again} differs from {ack}");
    // Bob saw it once: the next message he sees is the next one.
    ensure!(b.recv_type("message").await? == ack);
    let other = a.send_message("the next one").await?;
    let next = b.recv_type("message").await?;
    ensure!(next == other, "bob saw {next} before the next message");

    a.close().await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    a.send_json(&send).await?;
    ensure!(a.recv_type("message").await? == ack, "after a reconnect");

    b.close().await?;
    a.close().await?;
    srv.kill9()?;
    srv.restart().await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    a.send_json(&send).await?;
    ensure!(
        a.recv_type("message").await? == ack,
        "after kill -9 and a restart"
    );
    let history = full_history(&srv.api(), &alice, &conv).await?;
    ensure!(history.len() == 2, "stored once: {history:?}");
    ensure!(history[0]["id"] == ack["message_id"] && seq(&history[0]) == 1);
    // Another sender may use the same id: it is theirs, not alice's.
    let (mut b, _) = join(srv, &conv, &bob).await?;
    b.send_json(&send).await?;
    let bobs = b
        .wait_for("bob's own message", |v| {
            kind(v) == "message" && v["sender_id"] == bob.user_id.as_str()
        })
        .await?;
    ensure!(
        bobs["message_id"] != ack["message_id"] && seq(&bobs) == 3,
        "{bobs}"
    );
    // Not an id at all: refused, the socket stays.
    a.send_json(&json!({"type": "message", "content": "x", "client_id": ""}))
        .await?;
    let err = a.recv_type("error").await?;
    ensure!(
        err["detail"] == "client_id must be 1-64 characters",
        "{err}"
    );
    close_all([a, b]).await
}

/// REST history: every message carries its position, and `after` pages forward.
async fn history_pages_forward_with_after(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["ha"]).await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    let mut acks = Vec::new();
    for i in 0..7 {
        acks.push(a.send_message(&format!("h{i}")).await?);
    }
    let page = api
        .history(
            &alice,
            &conv,
            &format!("after={}&limit=3", field(&acks[1], "message_id")),
        )
        .await?
        .expect(200)?;
    let page = as_list(&page)?;
    ensure!(
        ids(page)
            == acks[2..5]
                .iter()
                .map(|m| field(m, "message_id").to_string())
                .collect::<Vec<_>>(),
        "the three after the second, oldest first: {page:?}"
    );
    ensure!(page.iter().map(seq).collect::<Vec<_>>() == vec![3, 4, 5]);
    let between = api
        .history(
            &alice,
            &conv,
            &format!(
                "after={}&before={}",
                field(&acks[4], "message_id"),
                field(&acks[6], "message_id")
            ),
        )
        .await?
        .expect(200)?;
    ensure!(ids(as_list(&between)?) == vec![field(&acks[5], "message_id").to_string()]);
    api.history(&alice, &conv, "after=")
        .await?
        .expect_validation(Some("after"))?;
    api.history(&alice, &conv, &format!("after={}", uuid_like()))
        .await?
        .expect_detail(404, "Message not found")?;
    let unique: HashSet<u64> = acks.iter().map(seq).collect();
    ensure!(unique.len() == 7);
    a.close().await
}

fn uuid_like() -> &'static str {
    "0190a6b2-0000-7000-8000-000000000000"
}

tests::e2e!(
    options = |o| tests::realtime::no_rate_limit(o.shards(4));
    resume_replays_exactly_what_was_missed,
    resume_seam_holds_while_others_post,
    positions_have_no_gaps_under_concurrent_senders,
    client_id_makes_sends_idempotent,
);

tests::e2e_on!(
    bad_since_is_an_error_and_the_socket_stays,
    |o| o,
    [sqlite_uring => (Sqlite, Uring), postgres_epoll => (Postgres, Epoll)]
);

tests::e2e_on!(
    long_replay_starts_with_resync,
    |o| tests::realtime::no_rate_limit(o.shards(2)),
    [sqlite_epoll => (Sqlite, Epoll), postgres_uring => (Postgres, Uring)]
);

tests::e2e_on!(
    history_pages_forward_with_after,
    |o| o,
    [sqlite_uring => (Sqlite, Uring), postgres_uring => (Postgres, Uring)]
);
