//! WebSocket event semantics (docs/protocol.md, "WebSocket"), on all four configurations: the
//! guide's message flow, join/leave, typing, presence, ping, edit/delete and reactions.
//! What the server refuses (bad frames, limits, refused connections) is in
//! `refusals`.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use tests::prelude::*;
use tests::realtime::*;
use tokio_tungstenite::tungstenite::Message;

/// The guide's message flow: the sender's echo (its acknowledgement) carries
/// `sender_username`, `message_id`, `timestamp`, `is_edited: false` and
/// `conversation_id`; every other participant receives the identical event; history
/// has it afterwards with the same id, content and sender. The sender's other tab
/// gets it too.
async fn message_echo_and_broadcast(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["alice", "bob", "carol"]).await?;
    let [mut a, mut a2, mut b, mut c] =
        join_each(srv, &conv, [&alice, &alice, &bob, &carol]).await?;

    let content = "Hello everyone! ünïcødé 👋";
    let echo = a.send_message(content).await?;
    let id = check_message_event(&echo, content, &alice, &conv)?;
    let got = recv_everywhere(&mut [&mut a2, &mut b, &mut c], "message", "alice's message").await?;
    ensure!(
        got == echo,
        "alice's second tab, bob and carol got {got}, alice's echo was {echo}"
    );

    // A reply from bob reaches alice and carol, and bob's echo.
    let reply = b.send_message("Hi alice").await?;
    let reply_id = check_message_event(&reply, "Hi alice", &bob, &conv)?;
    ensure!(reply_id != id, "two messages share the id {id}");
    let got = recv_everywhere(&mut [&mut a, &mut c], "message", "bob's reply").await?;
    ensure!(
        got == reply,
        "alice and carol got {got}, bob's echo was {reply}"
    );

    let history = api.history_list(&carol, &conv, "").await?;
    ensure!(
        history_ids(&history) == vec![id.clone(), reply_id.clone()],
        "history ids {:?}, expected [{id}, {reply_id}]: {history:?}",
        history_ids(&history)
    );
    for (m, ev) in history.iter().zip([&echo, &reply]) {
        ensure!(m["content"] == ev["content"], "{m} vs {ev}");
        ensure!(m["sender_id"] == ev["sender_id"], "{m} vs {ev}");
        ensure!(m["sender_username"] == ev["sender_username"], "{m} vs {ev}");
        ensure!(m["conversation_id"] == conv.as_str(), "{m}");
        ensure!(m["is_edited"] == false, "{m}");
        ensure!(
            m["created_at"] == ev["timestamp"],
            "history created_at differs from the event's timestamp: {m} vs {ev}"
        );
    }
    close_all([a, a2, b, c]).await
}

/// `joined` goes to everyone including the joiner, `active_users` lists each connected
/// user once, a second tab gets its own `joined`, and `left` comes only when a user's
/// last connection closes (also when it just drops).
async fn join_and_leave(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["alice", "bob", "carol"]).await?;

    let (mut a, joined) = join(srv, &conv, &alice).await?;
    ensure!(active_users(&joined)? == user_ids(&[&alice]), "{joined}");

    let (mut b1, joined) = join(srv, &conv, &bob).await?;
    ensure!(
        active_users(&joined)? == user_ids(&[&alice, &bob]),
        "{joined}"
    );
    let seen = a
        .wait_for("bob's joined event", |v| is_joined(v, &bob))
        .await?;
    ensure!(seen == joined, "alice got {seen}, bob got {joined}");

    // bob's second tab: its own joined event, bob still listed once.
    let (b2, joined) = join(srv, &conv, &bob).await?;
    let raw = joined["active_users"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        raw.len() == 2 && active_users(&joined)? == user_ids(&[&alice, &bob]),
        "second tab: active_users must list alice and bob once each: {joined}"
    );
    for (name, ws) in [("alice", &mut a), ("bob's first tab", &mut b1)] {
        let seen = ws
            .wait_for("the second tab's joined event", |v| is_joined(v, &bob))
            .await?;
        ensure!(
            seen == joined,
            "{name} got {seen}, the new tab got {joined}"
        );
    }

    // Closing one of bob's two tabs is not a leave.
    b2.close().await?;
    let marker = b1.send_message("bob is still here").await?;
    let events = events_until_message(&mut a, "bob is still here").await?;
    ensure!(
        !events.iter().any(|v| is_left(v, &bob)),
        "alice saw bob leave while his first tab is open: {events:?}"
    );
    ensure!(events.last() == Some(&marker), "{events:?} vs {marker}");

    // carol joins and her connection just drops (no close handshake): she left.
    let (c, _) = join(srv, &conv, &carol).await?;
    drop(c);
    let left = a
        .wait_for("carol's left event", |v| is_left(v, &carol))
        .await?;
    ensure!(
        active_users(&left)? == user_ids(&[&alice, &bob]),
        "after carol left: {left}"
    );

    // bob's last tab closes: left, with alice alone in active_users.
    b1.close().await?;
    let left = a.wait_for("bob's left event", |v| is_left(v, &bob)).await?;
    ensure!(
        active_users(&left)? == user_ids(&[&alice]),
        "after bob left: {left}"
    );
    // No second left event for bob.
    expect_only_echo(&mut a, "alone", "alice after bob left").await?;
    a.close().await
}

/// `typing` reaches the other users' connections only, never any of the sender's own
/// tabs, and never lands in history.
async fn typing_reaches_others_only(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut a1, mut a2, mut b] = join_each(srv, &conv, [&alice, &alice, &bob]).await?;

    a1.send_json(&json!({"type": "typing"})).await?;
    let typing = b.recv_type("typing").await?;
    check_sender(&typing, &alice)?;
    ensure!(typing["conversation_id"] == conv.as_str(), "{typing}");

    // A message after the typing event: none of alice's tabs saw her typing, and bob
    // saw it once.
    let echo = a1.send_message("after typing").await?;
    let events = events_until_message(&mut a2, "after typing").await?;
    ensure!(
        !events.iter().any(|v| kind(v) == "typing"),
        "alice's second tab got her own typing event: {events:?}"
    );
    let events = events_until_message(&mut b, "after typing").await?;
    ensure!(
        !events.iter().any(|v| kind(v) == "typing"),
        "bob got alice's typing event twice: {events:?}"
    );

    // bob types: both of alice's tabs see it, bob does not.
    b.send_json(&json!({"type": "typing"})).await?;
    for ws in [&mut a1, &mut a2] {
        let typing = ws.recv_type("typing").await?;
        ensure!(typing["sender_id"] == bob.user_id.as_str(), "{typing}");
    }
    let events = send_and_collect(&mut b, "bob after typing").await?;
    ensure!(
        !events.iter().any(|v| kind(v) == "typing"),
        "bob got his own typing event: {events:?}"
    );

    let history = api.history_list(&alice, &conv, "").await?;
    ensure!(
        history.len() == 2 && history[0]["id"] == echo["message_id"],
        "history must hold the two messages only: {history:?}"
    );
    close_all([a1, a2, b]).await
}

/// `presence` reaches everyone, the sender included; a bad status is an error event.
async fn presence_broadcast(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut a1, mut a2, mut b] = join_each(srv, &conv, [&alice, &alice, &bob]).await?;

    for status in ["away", "online", "offline"] {
        a1.send_json(&json!({"type": "presence", "status": status}))
            .await?;
        let what = format!("alice's presence {status:?}");
        let ev = recv_everywhere(&mut [&mut a1, &mut a2, &mut b], "presence", &what).await?;
        check_sender(&ev, &alice)?;
        ensure!(ev["status"] == status, "{ev}");
    }

    for (what, frame) in [
        (
            "unknown status",
            json!({"type": "presence", "status": "busy", "ref": "p-busy"}),
        ),
        (
            "missing status",
            json!({"type": "presence", "ref": "p-missing"}),
        ),
        (
            "numeric status",
            json!({"type": "presence", "status": 1, "ref": "p-number"}),
        ),
    ] {
        send_refused(&mut a1, &frame, what).await?;
    }
    // The refused presence events reached nobody; the next valid one does.
    b.send_json(&json!({"type": "presence", "status": "away"}))
        .await?;
    let ev = a2.recv_type("presence").await?;
    ensure!(
        ev["sender_id"] == bob.user_id.as_str() && ev["status"] == "away",
        "alice's second tab got {ev} before bob's presence"
    );
    let ev = a1.recv_type("presence").await?;
    ensure!(ev["sender_id"] == bob.user_id.as_str(), "{ev}");
    ensure!(
        api.history_list(&alice, &conv, "").await?.is_empty(),
        "presence must not be persisted"
    );
    close_all([a1, a2, b]).await
}

/// `{"type":"ping"}` is answered `{"type":"pong"}` to the asking connection only; an
/// RFC 6455 ping frame is answered with a pong frame carrying the same payload.
async fn ping_pong(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;

    a.send_json(&json!({"type": "ping"})).await?;
    let pong = a.recv_json().await?;
    ensure!(pong == json!({"type": "pong"}), "ping answered with {pong}");
    // Only alice got a pong.
    let echo = a.send_message("after ping").await?;
    let events = events_until(&mut b, "alice's message", |v| kind(v) == "message").await?;
    ensure!(
        !events.iter().any(|v| kind(v) == "pong"),
        "bob got alice's pong: {events:?}"
    );
    ensure!(events.last() == Some(&echo), "{events:?}");

    // Protocol-level ping.
    let mut raw = raw_connect(srv, &conv, &alice.token, None).await?;
    raw.send(Message::Ping(b"are you there?".to_vec().into()))
        .await?;
    let mut skipped = Vec::new();
    loop {
        let next = tokio::time::timeout(tests::ws::RECV_TIMEOUT, raw.next())
            .await
            .context("no pong frame")?;
        match next {
            Some(Ok(Message::Pong(payload))) => {
                ensure!(
                    payload[..] == b"are you there?"[..],
                    "pong payload {payload:?}"
                );
                break;
            }
            Some(Ok(Message::Text(t))) => skipped.push(t.as_str().to_string()),
            other => bail!("expected a pong frame, got {other:?}; skipped {skipped:?}"),
        }
    }
    // The connection still works after the ping frame.
    raw.send(Message::text(
        json!({"type": "message", "content": "raw after ping"}).to_string(),
    ))
    .await?;
    let got = b
        .wait_for("the raw client's message", |v| {
            is_message_with(v, "raw after ping")
        })
        .await?;
    ensure!(got["sender_id"] == alice.user_id.as_str(), "{got}");
    let _ = raw.close(None).await;
    close_all([a, b]).await
}

/// edit/delete: only the sender may (others get an error and nothing changes); the
/// `edit` and `delete` broadcasts; history reflects them; unknown ids are
/// `Message not found`.
async fn edit_and_delete(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut a, mut b] = join_each(srv, &conv, [&alice, &bob]).await?;
    let m1 = str_field(&a.send_message("first version").await?, "message_id")?;
    let m2 = str_field(&a.send_message("second message").await?, "message_id")?;
    collect_messages(&mut b, 2).await?;

    // bob may neither edit nor delete alice's message.
    let edit = json!({"type": "edit", "message_id": m1, "content": "hijacked", "ref": "e-bob"});
    send_refused(&mut b, &edit, "bob editing alice's message").await?;
    let delete = json!({"type": "delete", "message_id": m1, "ref": "d-bob"});
    send_refused(&mut b, &delete, "bob deleting alice's message").await?;
    // Nothing was broadcast for them, and history is unchanged.
    let alice_events = send_and_collect(&mut a, "marker").await?;
    let bob_events = events_until_message(&mut b, "marker").await?;
    for (name, events) in [("alice", alice_events), ("bob", bob_events)] {
        ensure!(
            !events
                .iter()
                .any(|v| matches!(kind(v), "edit" | "delete" | "error")),
            "{name} got events for bob's refused edit/delete: {events:?}"
        );
    }
    let history = api.history_list(&bob, &conv, "").await?;
    ensure!(
        history_ids(&history).starts_with(&[m1.clone(), m2.clone()]),
        "{history:?}"
    );
    ensure!(
        history[0]["content"] == "first version" && history[0]["is_edited"] == false,
        "a refused edit changed the message: {}",
        history[0]
    );

    // alice edits: broadcast to both, history updated.
    a.send_json(&json!({"type": "edit", "message_id": m1, "content": "second version ✏️"}))
        .await?;
    let edit = recv_everywhere(&mut [&mut a, &mut b], "edit", "alice's edit").await?;
    ensure!(edit["message_id"] == m1.as_str(), "{edit}");
    ensure!(edit["content"] == "second version ✏️", "{edit}");
    ensure!(edit["sender_id"] == alice.user_id.as_str(), "{edit}");
    ensure!(edit["is_edited"] == true, "{edit}");
    timestamp_field(&edit, "timestamp")?;
    let history = api.history_list(&bob, &conv, "").await?;
    ensure!(
        history_ids(&history).starts_with(&[m1.clone(), m2.clone()]),
        "an edit changed the order or ids: {history:?}"
    );
    let edited = &history[0];
    ensure!(edited["content"] == "second version ✏️", "{edited}");
    ensure!(edited["is_edited"] == true, "{edited}");
    ensure!(
        history[1]["is_edited"] == false && history[1]["content"] == "second message",
        "editing one message changed another: {}",
        history[1]
    );

    // alice deletes: broadcast to both, gone from history.
    a.send_json(&json!({"type": "delete", "message_id": m1}))
        .await?;
    let del = recv_everywhere(&mut [&mut a, &mut b], "delete", "alice's delete").await?;
    ensure!(del["message_id"] == m1.as_str(), "{del}");
    ensure!(del["sender_id"] == alice.user_id.as_str(), "{del}");
    timestamp_field(&del, "timestamp")?;
    let history = api.history_list(&bob, &conv, "").await?;
    ensure!(
        !history_ids(&history).contains(&m1) && history_ids(&history).contains(&m2),
        "after deleting {m1}: {history:?}"
    );

    // Unknown ids: a deleted one, a random UUID, a malformed one, and one from another
    // conversation.
    let ([other], conv2) = group(&api, &["other"]).await?;
    api.add_participant(&other, &conv2, &alice.user_id)
        .await?
        .expect(200)?;
    let (mut a_other, _) = join(srv, &conv2, &alice).await?;
    let foreign = str_field(&a_other.send_message("elsewhere").await?, "message_id")?;
    let random = uuid::Uuid::new_v4().to_string();
    for (i, id) in [m1.as_str(), random.as_str(), "msg-456", foreign.as_str()]
        .into_iter()
        .enumerate()
    {
        for frame in [
            json!({"type": "edit", "message_id": id, "content": "x", "ref": format!("edit-{i}")}),
            json!({"type": "delete", "message_id": id, "ref": format!("delete-{i}")}),
        ] {
            let err = send_refused(&mut a, &frame, &format!("{frame}")).await?;
            ensure!(
                err["detail"] == "Message not found",
                "{frame} answered {err}"
            );
        }
    }
    let foreign_history = api.history_list(&alice, &conv2, "").await?;
    ensure!(
        foreign_history.len() == 1 && foreign_history[0]["content"] == "elsewhere",
        "an edit/delete through another conversation changed {foreign_history:?}"
    );

    // Invalid edit content is refused like a message's.
    for content in ["", "   ", &"x".repeat(5001)] {
        let edit = json!({"type": "edit", "message_id": m2, "content": content});
        send_refused(&mut a, &edit, "an edit with invalid content").await?;
    }
    let history = api.history_list(&bob, &conv, "").await?;
    ensure!(
        history.iter().any(|m| m["id"] == m2.as_str()
            && m["content"] == "second message"
            && m["is_edited"] == false),
        "an invalid edit changed the message: {history:?}"
    );
    close_all([a, b, a_other]).await
}

/// Reactions toggle per user and emoji: `added`, then `removed`; broadcast to all.
async fn reaction_toggle(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["alice", "bob", "carol"]).await?;
    let [mut a, mut b, mut c] = join_each(srv, &conv, [&alice, &bob, &carol]).await?;
    let m = str_field(&a.send_message("react to me").await?, "message_id")?;

    let family = "👩\u{200d}👩\u{200d}👧";
    for (who, ws_index, emoji, action) in [
        (&bob, 1, "👍", "added"),
        (&bob, 1, "👍", "removed"),
        (&bob, 1, "👍", "added"),
        (&alice, 0, "👍", "added"),
        (&bob, 1, "❤️", "added"),
        (&carol, 2, family, "added"),
        (&alice, 0, "👍", "removed"),
    ] {
        let frame = json!({"type": "reaction", "message_id": m, "emoji": emoji});
        let mut sockets = [&mut a, &mut b, &mut c];
        sockets[ws_index].send_json(&frame).await?;
        let what = format!("{} reacting {emoji}", who.username);
        let ev = recv_everywhere(&mut sockets, "reaction", &what).await?;
        ensure!(ev["message_id"] == m.as_str(), "{what}: {ev}");
        ensure!(ev["emoji"] == emoji, "{what}: {ev}");
        check_sender(&ev, who).with_context(|| what.clone())?;
        ensure!(
            ev["action"] == action,
            "{what}: expected {action}, got {ev}"
        );
    }

    // Unknown and deleted messages, bad emoji.
    let gone = str_field(&a.send_message("soon gone").await?, "message_id")?;
    a.send_json(&json!({"type": "delete", "message_id": gone}))
        .await?;
    a.recv_type("delete").await?;
    let random = uuid::Uuid::new_v4().to_string();
    for (i, id) in [random.as_str(), "msg-456", gone.as_str()]
        .into_iter()
        .enumerate()
    {
        let r = format!("react-{i}");
        b.send_json(&json!({"type": "reaction", "message_id": id, "emoji": "👍", "ref": r}))
            .await?;
        let err = b
            .wait_for("the error about an unknown message", |v| kind(v) == "error")
            .await?;
        ensure!(err["detail"] == "Message not found", "{id}: {err}");
        ensure!(err["ref"] == r.as_str(), "{id}: ref not echoed: {err}");
    }
    for frame in [
        json!({"type": "reaction", "message_id": m}),
        json!({"type": "reaction", "message_id": m, "emoji": ""}),
        json!({"type": "reaction", "emoji": "👍"}),
    ] {
        b.send_json(&frame).await?;
        b.wait_for(&format!("the error about {frame}"), |v| kind(v) == "error")
            .await?;
    }
    close_all([a, b, c]).await
}

tests::e2e!(
    message_echo_and_broadcast,
    join_and_leave,
    typing_reaches_others_only,
    presence_broadcast,
    ping_pong,
    edit_and_delete,
    reaction_toggle,
);
