//! WebSocket event semantics (API.md "WebSocket"), on all four configurations: the
//! guide's message flow, join/leave, typing, presence, ping, edit/delete, reactions,
//! bad frames, frame size limits, refused connections and `ref` echoing.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use tests::jwt;
use tests::prelude::*;
use tests::realtime::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Asserts the shape of a `message` event (API.md) and returns its `message_id`.
fn check_message_event(
    ev: &Value,
    content: &str,
    sender: &Session,
    conversation: &str,
) -> anyhow::Result<String> {
    ensure!(kind(ev) == "message", "not a message event: {ev}");
    ensure!(ev["content"] == content, "content differs: {ev}");
    ensure!(
        ev["sender_id"] == sender.user_id.as_str(),
        "sender_id: {ev}"
    );
    ensure!(
        ev["sender_username"] == sender.username.as_str(),
        "sender_username: {ev}"
    );
    ensure!(
        ev["conversation_id"] == conversation,
        "conversation_id: {ev}"
    );
    ensure!(ev["is_edited"] == false, "is_edited must be false: {ev}");
    timestamp_field(ev, "timestamp")?;
    let id = str_field(ev, "message_id")?;
    ensure!(!id.is_empty(), "empty message_id: {ev}");
    Ok(id)
}

/// The guide's message flow: the sender's echo (its acknowledgement) carries
/// `sender_username`, `message_id`, `timestamp`, `is_edited: false` and
/// `conversation_id`; every other participant receives the identical event; history
/// has it afterwards with the same id, content and sender. The sender's other tab
/// gets it too.
async fn message_echo_and_broadcast(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut a2, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    let (mut c, _) = join(srv, &conv, carol).await?;

    let content = "Hello everyone! ünïcødé 👋";
    a.send_json(&json!({"type": "message", "content": content}))
        .await?;
    let echo = a
        .wait_for("alice's echo", |v| is_message_with(v, content))
        .await?;
    let id = check_message_event(&echo, content, alice, &conv)?;
    for (name, ws) in [
        ("alice's second tab", &mut a2),
        ("bob", &mut b),
        ("carol", &mut c),
    ] {
        let got = ws
            .wait_for("alice's message", |v| kind(v) == "message")
            .await?;
        ensure!(got == echo, "{name} got {got}, alice's echo was {echo}");
    }

    // A reply from bob reaches alice and carol, and bob's echo.
    let reply = b.send_message("Hi alice").await?;
    let reply_id = check_message_event(&reply, "Hi alice", bob, &conv)?;
    ensure!(reply_id != id, "two messages share the id {id}");
    for (name, ws) in [("alice", &mut a), ("carol", &mut c)] {
        let got = ws.wait_for("bob's reply", |v| kind(v) == "message").await?;
        ensure!(got == reply, "{name} got {got}, bob's echo was {reply}");
    }

    let history = api.history_list(carol, &conv, "").await?;
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
    for ws in [a, a2, b, c] {
        ws.close().await?;
    }
    Ok(())
}

/// `joined` goes to everyone including the joiner, `active_users` lists each connected
/// user once, a second tab gets its own `joined`, and `left` comes only when a user's
/// last connection closes (also when it just drops).
async fn join_and_leave(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);

    let (mut a, joined) = join(srv, &conv, alice).await?;
    ensure!(active_users(&joined)? == user_ids(&[alice]), "{joined}");

    let (mut b1, joined) = join(srv, &conv, bob).await?;
    ensure!(
        active_users(&joined)? == user_ids(&[alice, bob]),
        "{joined}"
    );
    let seen = a
        .wait_for("bob's joined event", |v| is_joined(v, bob))
        .await?;
    ensure!(seen == joined, "alice got {seen}, bob got {joined}");

    // bob's second tab: its own joined event, bob still listed once.
    let (b2, joined) = join(srv, &conv, bob).await?;
    let raw = joined["active_users"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        raw.len() == 2 && active_users(&joined)? == user_ids(&[alice, bob]),
        "second tab: active_users must list alice and bob once each: {joined}"
    );
    for (name, ws) in [("alice", &mut a), ("bob's first tab", &mut b1)] {
        let seen = ws
            .wait_for("the second tab's joined event", |v| is_joined(v, bob))
            .await?;
        ensure!(
            seen == joined,
            "{name} got {seen}, the new tab got {joined}"
        );
    }

    // Closing one of bob's two tabs is not a leave.
    b2.close().await?;
    let marker = b1.send_message("bob is still here").await?;
    let events = events_until(&mut a, "bob's marker message", |v| {
        is_message_with(v, "bob is still here")
    })
    .await?;
    ensure!(
        !events.iter().any(|v| is_left(v, bob)),
        "alice saw bob leave while his first tab is open: {events:?}"
    );
    ensure!(events.last() == Some(&marker), "{events:?} vs {marker}");

    // carol joins and her connection just drops (no close handshake): she left.
    let (c, _) = join(srv, &conv, carol).await?;
    drop(c);
    let left = a
        .wait_for("carol's left event", |v| is_left(v, carol))
        .await?;
    ensure!(
        active_users(&left)? == user_ids(&[alice, bob]),
        "after carol left: {left}"
    );

    // bob's last tab closes: left, with alice alone in active_users.
    b1.close().await?;
    let left = a.wait_for("bob's left event", |v| is_left(v, bob)).await?;
    ensure!(
        active_users(&left)? == user_ids(&[alice]),
        "after bob left: {left}"
    );
    // No second left event for bob.
    a.send_json(&json!({"type": "message", "content": "alone"}))
        .await?;
    let events = events_until(&mut a, "alice's echo", |v| is_message_with(v, "alone")).await?;
    ensure!(
        events.len() == 1,
        "alice got more than her echo after bob left: {events:?}"
    );
    a.close().await?;
    Ok(())
}

/// `typing` reaches the other users' connections only, never any of the sender's own
/// tabs, and never lands in history.
async fn typing_reaches_others_only(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a1, _) = join(srv, &conv, alice).await?;
    let (mut a2, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;

    a1.send_json(&json!({"type": "typing"})).await?;
    let typing = b.recv_type("typing").await?;
    ensure!(typing["sender_id"] == alice.user_id.as_str(), "{typing}");
    ensure!(
        typing["sender_username"] == alice.username.as_str(),
        "{typing}"
    );
    ensure!(typing["conversation_id"] == conv.as_str(), "{typing}");

    // A message after the typing event: none of alice's tabs saw her typing, and bob
    // saw it once.
    let echo = a1.send_message("after typing").await?;
    let events = events_until(&mut a2, "alice's message", |v| {
        is_message_with(v, "after typing")
    })
    .await?;
    ensure!(
        !events.iter().any(|v| kind(v) == "typing"),
        "alice's second tab got her own typing event: {events:?}"
    );
    let events = events_until(&mut b, "alice's message", |v| {
        is_message_with(v, "after typing")
    })
    .await?;
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
    b.send_json(&json!({"type": "message", "content": "bob after typing"}))
        .await?;
    let events = events_until(&mut b, "bob's own echo", |v| {
        is_message_with(v, "bob after typing")
    })
    .await?;
    ensure!(
        !events.iter().any(|v| kind(v) == "typing"),
        "bob got his own typing event: {events:?}"
    );

    let history = api.history_list(alice, &conv, "").await?;
    ensure!(
        history.len() == 2 && history[0]["id"] == echo["message_id"],
        "history must hold the two messages only: {history:?}"
    );
    for ws in [a1, a2, b] {
        ws.close().await?;
    }
    Ok(())
}

/// `presence` reaches everyone, the sender included; a bad status is an error event.
async fn presence_broadcast(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a1, _) = join(srv, &conv, alice).await?;
    let (mut a2, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;

    for status in ["away", "online", "offline"] {
        a1.send_json(&json!({"type": "presence", "status": status}))
            .await?;
        let mut seen = Vec::new();
        for ws in [&mut a1, &mut a2, &mut b] {
            seen.push(ws.recv_type("presence").await?);
        }
        let ev = &seen[0];
        ensure!(ev["sender_id"] == alice.user_id.as_str(), "{ev}");
        ensure!(ev["sender_username"] == alice.username.as_str(), "{ev}");
        ensure!(ev["status"] == status, "{ev}");
        ensure!(
            seen.iter().all(|v| v == ev),
            "presence differs between connections: {seen:?}"
        );
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
        a1.send_json(&frame).await?;
        let err = expect_error_event(&mut a1, what).await?;
        ensure!(err["ref"] == frame["ref"], "{what}: ref not echoed: {err}");
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
        api.history_list(alice, &conv, "").await?.is_empty(),
        "presence must not be persisted"
    );
    for ws in [a1, a2, b] {
        ws.close().await?;
    }
    Ok(())
}

/// `{"type":"ping"}` is answered `{"type":"pong"}` to the asking connection only; an
/// RFC 6455 ping frame is answered with a pong frame carrying the same payload.
async fn ping_pong(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    a.wait_for("bob's joined event", |v| is_joined(v, bob))
        .await?;

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
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// edit/delete: only the sender may (others get an error and nothing changes); the
/// `edit` and `delete` broadcasts; history reflects them; unknown ids are
/// `Message not found`.
async fn edit_and_delete(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    let m1 = str_field(&a.send_message("first version").await?, "message_id")?;
    let m2 = str_field(&a.send_message("second message").await?, "message_id")?;
    collect_messages(&mut b, 2).await?;

    // bob may neither edit nor delete alice's message.
    b.send_json(&json!({"type": "edit", "message_id": m1, "content": "hijacked", "ref": "e-bob"}))
        .await?;
    let err = expect_error_event(&mut b, "bob editing alice's message").await?;
    ensure!(err["ref"] == "e-bob", "ref not echoed: {err}");
    b.send_json(&json!({"type": "delete", "message_id": m1, "ref": "d-bob"}))
        .await?;
    let err = expect_error_event(&mut b, "bob deleting alice's message").await?;
    ensure!(err["ref"] == "d-bob", "ref not echoed: {err}");
    // Nothing was broadcast for them, and history is unchanged.
    a.send_json(&json!({"type": "message", "content": "marker"}))
        .await?;
    for (name, ws) in [("alice", &mut a), ("bob", &mut b)] {
        let events = events_until(ws, "the marker", |v| is_message_with(v, "marker")).await?;
        ensure!(
            !events
                .iter()
                .any(|v| matches!(kind(v), "edit" | "delete" | "error")),
            "{name} got events for bob's refused edit/delete: {events:?}"
        );
    }
    let history = api.history_list(bob, &conv, "").await?;
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
    let edit = a.recv_type("edit").await?;
    ensure!(edit["message_id"] == m1.as_str(), "{edit}");
    ensure!(edit["content"] == "second version ✏️", "{edit}");
    ensure!(edit["sender_id"] == alice.user_id.as_str(), "{edit}");
    ensure!(edit["is_edited"] == true, "{edit}");
    timestamp_field(&edit, "timestamp")?;
    let seen = b.recv_type("edit").await?;
    ensure!(seen == edit, "bob got {seen}, alice got {edit}");
    let history = api.history_list(bob, &conv, "").await?;
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
    let del = a.recv_type("delete").await?;
    ensure!(del["message_id"] == m1.as_str(), "{del}");
    ensure!(del["sender_id"] == alice.user_id.as_str(), "{del}");
    timestamp_field(&del, "timestamp")?;
    let seen = b.recv_type("delete").await?;
    ensure!(seen == del, "bob got {seen}, alice got {del}");
    let history = api.history_list(bob, &conv, "").await?;
    ensure!(
        !history_ids(&history).contains(&m1) && history_ids(&history).contains(&m2),
        "after deleting {m1}: {history:?}"
    );

    // Unknown ids: a deleted one, a random UUID, a malformed one, and one from another
    // conversation.
    let (others, conv2) = group(&api, &["other"]).await?;
    api.add_participant(&others[0], &conv2, &alice.user_id)
        .await?
        .expect(200)?;
    let (mut a_other, _) = join(srv, &conv2, alice).await?;
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
            a.send_json(&frame).await?;
            let err = expect_error_event(&mut a, &format!("{frame}")).await?;
            ensure!(
                err["detail"] == "Message not found",
                "{frame} answered {err}"
            );
            ensure!(err["ref"] == frame["ref"], "ref not echoed: {err}");
        }
    }
    let foreign_history = api.history_list(alice, &conv2, "").await?;
    ensure!(
        foreign_history.len() == 1 && foreign_history[0]["content"] == "elsewhere",
        "an edit/delete through another conversation changed {foreign_history:?}"
    );

    // Invalid edit content is refused like a message's.
    for content in ["", "   ", &"x".repeat(5001)] {
        a.send_json(&json!({"type": "edit", "message_id": m2, "content": content}))
            .await?;
        expect_error_event(&mut a, "an edit with invalid content").await?;
    }
    let history = api.history_list(bob, &conv, "").await?;
    ensure!(
        history.iter().any(|m| m["id"] == m2.as_str()
            && m["content"] == "second message"
            && m["is_edited"] == false),
        "an invalid edit changed the message: {history:?}"
    );
    for ws in [a, b, a_other] {
        ws.close().await?;
    }
    Ok(())
}

/// Reactions toggle per user and emoji: `added`, then `removed`; broadcast to all.
async fn reaction_toggle(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    let (mut c, _) = join(srv, &conv, carol).await?;
    let m = str_field(&a.send_message("react to me").await?, "message_id")?;

    let family = "👩\u{200d}👩\u{200d}👧";
    for (who, ws_index, emoji, action) in [
        (bob, 1, "👍", "added"),
        (bob, 1, "👍", "removed"),
        (bob, 1, "👍", "added"),
        (alice, 0, "👍", "added"),
        (bob, 1, "❤️", "added"),
        (carol, 2, family, "added"),
        (alice, 0, "👍", "removed"),
    ] {
        let frame = json!({"type": "reaction", "message_id": m, "emoji": emoji});
        let sockets = [&mut a, &mut b, &mut c];
        sockets[ws_index].send_json(&frame).await?;
        let mut seen = Vec::new();
        for ws in sockets {
            seen.push(ws.recv_type("reaction").await?);
        }
        let ev = &seen[0];
        let what = format!("{} reacting {emoji}", who.username);
        ensure!(ev["message_id"] == m.as_str(), "{what}: {ev}");
        ensure!(ev["emoji"] == emoji, "{what}: {ev}");
        ensure!(ev["sender_id"] == who.user_id.as_str(), "{what}: {ev}");
        ensure!(
            ev["sender_username"] == who.username.as_str(),
            "{what}: {ev}"
        );
        ensure!(
            ev["action"] == action,
            "{what}: expected {action}, got {ev}"
        );
        ensure!(
            seen.iter().all(|v| v == ev),
            "{what}: differs between connections: {seen:?}"
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
    for ws in [a, b, c] {
        ws.close().await?;
    }
    Ok(())
}

/// Bad frames each get an `error` event with a `detail` (and the frame's `ref` where it
/// could be read); the connection stays usable and nothing reaches others or history.
async fn bad_frames_keep_connection(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    a.wait_for("bob's joined event", |v| is_joined(v, bob))
        .await?;
    let first = a.send_message("before the bad frames").await?;
    let m = str_field(&first, "message_id")?;

    let text = |v: Value| Message::text(v.to_string());
    let too_long: String = "ä".repeat(5001);
    let cases: Vec<(&str, Message, Option<&str>)> = vec![
        ("invalid JSON", Message::text("this is not json"), None),
        (
            "truncated JSON",
            Message::text(r#"{"type": "message", "content": "#),
            None,
        ),
        ("a JSON list", Message::text("[1, 2, 3]"), None),
        ("a JSON string", Message::text(r#""message""#), None),
        ("a JSON null", Message::text("null"), None),
        ("an empty text frame", Message::text(""), None),
        (
            "no type",
            text(json!({"content": "typeless", "ref": "r-notype"})),
            Some("r-notype"),
        ),
        (
            "unknown type",
            text(json!({"type": "shout", "content": "HEY", "ref": "r-unknown"})),
            Some("r-unknown"),
        ),
        (
            "non-string type",
            text(json!({"type": 7, "ref": "r-typenum"})),
            Some("r-typenum"),
        ),
        (
            "missing content",
            text(json!({"type": "message", "ref": "r-missing"})),
            Some("r-missing"),
        ),
        (
            "null content",
            text(json!({"type": "message", "content": null, "ref": "r-null"})),
            Some("r-null"),
        ),
        (
            "numeric content",
            text(json!({"type": "message", "content": 42, "ref": "r-num"})),
            Some("r-num"),
        ),
        (
            "object content",
            text(json!({"type": "message", "content": {"text": "hi"}, "ref": "r-obj"})),
            Some("r-obj"),
        ),
        (
            "empty content",
            text(json!({"type": "message", "content": "", "ref": "r-empty"})),
            Some("r-empty"),
        ),
        (
            "whitespace-only content",
            text(json!({"type": "message", "content": " \t\r\n  ", "ref": "r-ws"})),
            Some("r-ws"),
        ),
        (
            "unicode whitespace-only content",
            text(json!({"type": "message", "content": "\u{3000}\u{a0}\u{2003}", "ref": "r-uws"})),
            Some("r-uws"),
        ),
        (
            "content of 5001 characters",
            text(json!({"type": "message", "content": too_long, "ref": "r-long"})),
            Some("r-long"),
        ),
        (
            "edit without message_id",
            text(json!({"type": "edit", "content": "x", "ref": "r-edit"})),
            Some("r-edit"),
        ),
        (
            "edit without content",
            text(json!({"type": "edit", "message_id": m, "ref": "r-edit2"})),
            Some("r-edit2"),
        ),
        (
            "delete without message_id",
            text(json!({"type": "delete", "ref": "r-delete"})),
            Some("r-delete"),
        ),
        (
            "binary frame",
            Message::binary(
                json!({"type": "message", "content": "binary"})
                    .to_string()
                    .into_bytes(),
            ),
            None,
        ),
    ];
    for (what, frame, reference) in cases {
        a.send_raw(frame).await?;
        let err = expect_error_event(&mut a, what).await?;
        if let Some(r) = reference {
            ensure!(err["ref"] == r, "{what}: ref {r:?} not echoed: {err}");
        }
    }

    // Still usable, and bob saw nothing of the above.
    let after = a.send_message("after the bad frames").await?;
    let events = events_until(&mut b, "alice's message", |v| {
        is_message_with(v, "after the bad frames")
    })
    .await?;
    ensure!(
        events.iter().filter(|v| kind(v) != "message").count() == 0
            && message_ids(&events) == vec![m.clone(), str_field(&after, "message_id")?],
        "bob got events for alice's bad frames: {events:?}"
    );
    let history = api.history_list(bob, &conv, "").await?;
    ensure!(
        history_ids(&history) == message_ids(&events),
        "history holds more than the two valid messages: {history:?}"
    );
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// The 5000 limit counts characters, not bytes: 5000 two- and four-byte characters are
/// accepted and stored exactly; 5001 are refused. Content is stored as sent.
async fn content_length_in_characters(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice"]).await?;
    let alice = &users[0];
    let (mut a, _) = join(srv, &conv, alice).await?;

    let mut accepted = Vec::new();
    for content in [
        "é".repeat(5000),
        "😀".repeat(5000),
        format!("{}{}", "a".repeat(4999), "€"),
        "  padded with spaces  ".to_string(),
    ] {
        let echo = a.send_message(&content).await?;
        ensure!(
            echo["content"] == content.as_str(),
            "echo changed the content"
        );
        accepted.push((str_field(&echo, "message_id")?, content));
    }
    for (i, content) in ["é".repeat(5001), "😀".repeat(5001), "a".repeat(5001)]
        .into_iter()
        .enumerate()
    {
        let r = format!("long-{i}");
        a.send_json(&json!({"type": "message", "content": content, "ref": r}))
            .await?;
        let err = expect_error_event(&mut a, "5001 characters").await?;
        ensure!(err["ref"] == r.as_str(), "{err}");
    }
    let history = api.history_list(alice, &conv, "").await?;
    ensure!(
        history.len() == accepted.len(),
        "{} messages in history",
        history.len()
    );
    for (m, (id, content)) in history.iter().zip(&accepted) {
        ensure!(m["id"] == id.as_str(), "history order/ids differ");
        let stored = m["content"].as_str().unwrap_or_default();
        ensure!(
            stored == content,
            "stored content differs: {} chars / {} bytes stored, {} chars / {} bytes sent",
            stored.chars().count(),
            stored.len(),
            content.chars().count(),
            content.len()
        );
    }
    a.close().await?;
    Ok(())
}

/// Frames up to 64 KiB are read (also when fragmented); a larger text or binary
/// message, in one frame or in fragments, closes the connection with 1009.
async fn frame_size_limit(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut watcher, _) = join(srv, &conv, bob).await?;
    let (mut a, _) = join(srv, &conv, alice).await?;

    // Exactly 64 KiB (JSON whitespace as padding): an ordinary message.
    let head = r#"{"type": "message","#;
    let tail = r#""content": "exactly 64 KiB"}"#;
    let pad = " ".repeat(65536 - head.len() - tail.len());
    let frame = format!("{head}{pad}{tail}");
    ensure!(frame.len() == 65536);
    a.send_text(&frame).await?;
    a.wait_for("the echo of the 64 KiB frame", |v| {
        is_message_with(v, "exactly 64 KiB")
    })
    .await?;

    // A fragmented message (three frames) is one message.
    let whole = json!({"type": "message", "content": "in three fragments"}).to_string();
    let (p1, rest) = whole.split_at(10);
    let (p2, p3) = rest.split_at(10);
    a.send_raw(Message::Frame(Frame::message(
        p1.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await?;
    a.send_raw(Message::Frame(Frame::message(
        p2.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await?;
    a.send_raw(Message::Frame(Frame::message(
        p3.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await?;
    a.wait_for("the echo of the fragmented message", |v| {
        is_message_with(v, "in three fragments")
    })
    .await?;

    // Larger messages close with 1009; every case is tried, failures are reported
    // together.
    let mut problems = Vec::new();
    let pad = " ".repeat(65537 - head.len() - tail.len());
    a.send_text(&format!("{head}{pad}{tail}")).await?;
    match close_frame(&mut a, "a 64 KiB + 1 text frame").await {
        Ok((Some((1009, _)), _)) => {}
        other => problems.push(format!(
            "a 64 KiB + 1 text frame: expected close 1009, got {other:?}"
        )),
    }
    drop(a);

    let (mut a, _) = join(srv, &conv, alice).await?;
    a.send_raw(Message::binary(vec![b'x'; 70 * 1024])).await?;
    match close_frame(&mut a, "a 70 KiB binary frame").await {
        Ok((Some((1009, _)), _)) => {}
        other => problems.push(format!(
            "a 70 KiB binary frame: expected close 1009, got {other:?}"
        )),
    }
    drop(a);

    // A text message over 64 KiB in fragments of 16 KiB each.
    let (mut a, _) = join(srv, &conv, alice).await?;
    let big = json!({"type": "message", "content": "y".repeat(80 * 1024)}).to_string();
    let chunks: Vec<&[u8]> = big.as_bytes().chunks(16 * 1024).collect();
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let opcode = if i == 0 { Data::Text } else { Data::Continue };
        // The server may close before the last fragment; later sends may then fail.
        if a.send_raw(Message::Frame(Frame::message(
            chunk.to_vec(),
            OpCode::Data(opcode),
            i == last,
        )))
        .await
        .is_err()
        {
            break;
        }
    }
    match close_frame(&mut a, "an 80 KiB message in 16 KiB fragments").await {
        Ok((Some((1009, _)), _)) => {}
        other => problems.push(format!(
            "an 80 KiB message in 16 KiB fragments: expected close 1009, got {other:?}"
        )),
    }
    drop(a);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));

    // Nothing of the oversized messages was delivered or stored.
    let history = api.history_list(bob, &conv, "").await?;
    let contents: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect();
    ensure!(
        contents == ["exactly 64 KiB", "in three fragments"],
        "history: {contents:?}"
    );
    let marker = {
        let (mut a, _) = join(srv, &conv, alice).await?;
        let echo = a.send_message("marker").await?;
        a.close().await?;
        echo
    };
    let events = events_until(&mut watcher, "the marker", |v| v == &marker).await?;
    ensure!(
        message_ids(&events).len() == 3,
        "bob got other messages than the three valid ones: {events:?}"
    );
    watcher.close().await?;
    Ok(())
}

/// Refused connections: bad, expired, foreign-key and unsigned tokens get
/// `{"type":"error","detail":"Invalid token"}` then close 1008 `Invalid token`; a
/// non-member, a removed member and an unknown conversation get
/// `Not a member of this conversation` and close 1008 with that reason.
async fn refused_connections(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let outsider = api.new_user("outsider").await?;
    let (mut a, _) = join(srv, &conv, alice).await?;

    async fn expect_refusal(
        srv: &TestServer,
        conversation: &str,
        token: &str,
        detail: &str,
        what: &str,
    ) -> anyhow::Result<()> {
        let mut ws = WsClient::connect(&srv.ws_base_url(), conversation, token)
            .await
            .with_context(|| format!("{what}: the upgrade itself failed"))?;
        let first = ws.recv().await.with_context(|| what.to_string())?;
        let WsEvent::Json(err) = first else {
            bail!("{what}: expected an error event first, got {first:?}");
        };
        ensure!(
            err["type"] == "error" && err["detail"] == detail,
            "{what}: expected error {detail:?}, got {err}"
        );
        let close = ws.recv_close().await.with_context(|| what.to_string())?;
        ensure!(
            close == Some((1008, detail.to_string())),
            "{what}: expected close (1008, {detail:?}), got {close:?}"
        );
        Ok(())
    }

    let secret = srv.secret_key().to_string();
    let bad_tokens = [
        ("garbage token", "not-a-jwt".to_string()),
        ("empty token", String::new()),
        ("expired token", jwt::hs256(&secret, &alice.user_id, -3600)?),
        (
            "token signed with another key",
            jwt::hs256(&jwt::random_key(), &alice.user_id, 3600)?,
        ),
        ("alg none token", jwt::alg_none(&alice.user_id)),
        (
            "tampered token",
            format!("{}x", alice.token.trim_end_matches('=')),
        ),
    ];
    for (what, token) in &bad_tokens {
        expect_refusal(srv, &conv, token, "Invalid token", what).await?;
    }

    const NOT_MEMBER: &str = "Not a member of this conversation";
    expect_refusal(srv, &conv, &outsider.token, NOT_MEMBER, "non-member").await?;
    let unknown = uuid::Uuid::new_v4().to_string();
    expect_refusal(
        srv,
        &unknown,
        &alice.token,
        NOT_MEMBER,
        "unknown conversation",
    )
    .await?;
    expect_refusal(
        srv,
        "conv-123",
        &alice.token,
        NOT_MEMBER,
        "malformed conversation id",
    )
    .await?;
    api.remove_participant(bob, &conv, &bob.user_id)
        .await?
        .expect_status(204)?;
    expect_refusal(srv, &conv, &bob.token, NOT_MEMBER, "removed member").await?;

    // None of the refused connections joined.
    a.send_json(&json!({"type": "message", "content": "still alone"}))
        .await?;
    let events = events_until(&mut a, "alice's echo", |v| {
        is_message_with(v, "still alone")
    })
    .await?;
    ensure!(
        events.len() == 1,
        "alice got events from refused connections: {events:?}"
    );
    a.close().await?;
    Ok(())
}

/// Content a store cannot hold (a NUL character) is refused for that frame alone, the
/// same on every store, with a detail that says why: messages other users send at the
/// same moment are all acknowledged and stored. A JSON lone surrogate escape gets an echo or an error, and
/// the connection stays usable.
async fn hostile_content_is_contained(srv: &TestServer) -> anyhow::Result<()> {
    const NUL: usize = 10;
    const NORMAL: usize = 30;
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    a.wait_for("bob's joined event", |v| is_joined(v, bob))
        .await?;

    // Interleave the frames so that they share the writer's batches.
    for i in 0..NORMAL {
        b.send_json(&json!({"type": "message", "content": format!("bob {i}")}))
            .await?;
        if i < NUL {
            a.send_json(&json!({
                "type": "message",
                "content": format!("nul {i} \u{0} end"),
                "ref": format!("nul-{i}"),
            }))
            .await?;
        }
    }
    // alice: one outcome per NUL message (an echo or an error with its ref).
    let mut alice_acked = Vec::new();
    let mut alice_refused = Vec::new();
    while alice_acked.len() + alice_refused.len() < NUL {
        let ev = a.recv_json().await.context("alice's outcomes")?;
        match kind(&ev) {
            "message" if ev["sender_id"] == alice.user_id.as_str() => alice_acked.push(ev),
            "error" => {
                ensure!(
                    field(&ev, "ref").starts_with("nul-"),
                    "an error without the ref of a NUL message: {ev}"
                );
                ensure!(
                    field(&ev, "detail").contains("NUL"),
                    "the error does not say the NUL character is the problem: {ev}"
                );
                alice_refused.push(ev);
            }
            _ => {}
        }
    }
    ensure!(
        alice_acked.is_empty(),
        "messages with a NUL character were accepted: {alice_acked:?}"
    );
    // bob: every message acknowledged.
    let mut bob_acked = Vec::new();
    while bob_acked.len() < NORMAL {
        let ev = b.recv_json().await.context("bob's echoes")?;
        match kind(&ev) {
            "message" if ev["sender_id"] == bob.user_id.as_str() => bob_acked.push(ev),
            "error" => bail!(
                "bob's plain message was refused while alice sent NUL characters \
                 (after {} of {NORMAL} acknowledged): {ev}",
                bob_acked.len()
            ),
            _ => {}
        }
    }
    let history = api.history_list(bob, &conv, "limit=100").await?;
    let mut expected: Vec<(String, String)> = alice_acked
        .iter()
        .chain(&bob_acked)
        .map(|v| {
            (
                field(v, "message_id").to_string(),
                field(v, "content").to_string(),
            )
        })
        .collect();
    expected.sort();
    let mut stored: Vec<(String, String)> = history
        .iter()
        .map(|m| (field(m, "id").to_string(), field(m, "content").to_string()))
        .collect();
    stored.sort();
    ensure!(
        stored == expected,
        "history differs from the acknowledged messages: {stored:?} vs {expected:?}"
    );

    // A lone surrogate escape: an echo or an error, then business as usual.
    a.send_text(r#"{"type": "message", "content": "x\ud800y", "ref": "surrogate"}"#)
        .await?;
    let ev = a
        .wait_for("the outcome of the lone surrogate", |v| {
            kind(v) == "error" || (kind(v) == "message" && field(v, "content").starts_with('x'))
        })
        .await?;
    // An error may lack the ref when the frame is refused as invalid JSON.
    if kind(&ev) == "error" && ev.get("ref").is_some() {
        ensure!(ev["ref"] == "surrogate", "{ev}");
    }
    a.send_message("after the surrogate").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

tests::e2e!(
    hostile_content_is_contained,
    message_echo_and_broadcast,
    join_and_leave,
    typing_reaches_others_only,
    presence_broadcast,
    ping_pong,
    edit_and_delete,
    reaction_toggle,
    bad_frames_keep_connection,
    content_length_in_characters,
    frame_size_limit,
    refused_connections,
);
