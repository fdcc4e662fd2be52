//! The user stream (`/api/chat/ws`, docs/protocol.md "The user stream") and read
//! markers: several conversations on one socket, each in its own order; sends acked
//! after commit; a resume of several conversations at once with writers posting
//! through it; markers shared by a user's devices, receipts, exact unread counts; the
//! inbox (added, removed) and removal stopping a conversation at once.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;
use tests::realtime::*;

/// The events of type `ty` of conversation `conv` among `events`.
fn of<'a>(events: &'a [Value], conv: &str, ty: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|v| kind(v) == ty && v["conversation_id"] == conv)
        .collect()
}

fn seqs(events: &[&Value]) -> Vec<u64> {
    events.iter().filter_map(|v| v["seq"].as_u64()).collect()
}

/// Reads events until `pred` holds for one; returns them all, that one included.
async fn until(
    ws: &mut WsClient,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let mut seen = Vec::new();
    loop {
        let v = ws
            .recv_json()
            .await
            .with_context(|| format!("waiting for {what}; saw {seen:?}"))?;
        let done = pred(&v);
        seen.push(v);
        if done {
            return Ok(seen);
        }
    }
}

/// Reads events until each of `preds` has held for one; returns them all.
async fn until_all(
    ws: &mut WsClient,
    what: &str,
    preds: &[&dyn Fn(&Value) -> bool],
) -> anyhow::Result<Vec<Value>> {
    let mut seen: Vec<Value> = Vec::new();
    while !preds.iter().all(|p| seen.iter().any(p)) {
        let v = ws
            .recv_json()
            .await
            .with_context(|| format!("waiting for {what}; saw {seen:?}"))?;
        seen.push(v);
    }
    Ok(seen)
}

fn message_in(conv: &str, content: &str) -> impl Fn(&Value) -> bool {
    let (conv, content) = (conv.to_string(), content.to_string());
    move |v| kind(v) == "message" && v["conversation_id"] == conv && v["content"] == content
}

/// One socket, two conversations: `ready` lists both with their positions; each
/// conversation's events arrive with its id and in its order; a send through the
/// stream is acknowledged after commit and reaches the conversation's other members;
/// a send without a conversation, or to one the user is not in, is refused and the
/// socket stays open.
async fn one_socket_many_conversations(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave] = api.new_users(["us_a", "us_b", "us_c", "us_d"]).await?;
    let with_bob = api.new_conversation(&alice, "with bob", &[&bob]).await?;
    let with_carol = api
        .new_conversation(&carol, "with carol", &[&alice])
        .await?;
    let elsewhere = api.new_conversation(&dave, "not alice's", &[&bob]).await?;
    let (mut b, _) = join(srv, &with_bob, &bob).await?;
    b.send_message("before").await?;

    let (mut stream, ready) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    ensure!(ready["user_id"] == alice.user_id.as_str(), "{ready}");
    ensure!(
        ready["positions"] == json!({ with_bob.clone(): 1, with_carol.clone(): 0 }),
        "positions: {ready}"
    );
    let listed: Vec<&str> = ready["conversations"]
        .as_array()
        .context("conversations")?
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    ensure!(
        listed == [with_bob.as_str(), with_carol.as_str()],
        "most recently active first (bob's has a message): {ready}"
    );
    stream.start(&[]).await?;

    let (mut c, _) = join(srv, &with_carol, &carol).await?;
    for i in 0..5 {
        b.send_message(&format!("from bob {i}")).await?;
        c.send_message(&format!("from carol {i}")).await?;
    }
    let got = until_all(
        &mut stream,
        "both last messages",
        &[
            &message_in(&with_carol, "from carol 4"),
            &message_in(&with_bob, "from bob 4"),
        ],
    )
    .await?;
    let bobs = seqs(&of(&got, &with_bob, "message"));
    let carols = seqs(&of(&got, &with_carol, "message"));
    ensure!(
        bobs == [2, 3, 4, 5, 6],
        "bob's conversation in order: {bobs:?}"
    );
    ensure!(carols == [1, 2, 3, 4, 5], "carol's in order: {carols:?}");

    // Sends through the stream: acked after commit, with the client's id.
    stream
        .send_json(&json!({"type": "message", "conversation_id": with_bob, "content": "via stream", "client_id": "s-1"}))
        .await?;
    let ack = stream
        .wait_for("the ack", message_in(&with_bob, "via stream"))
        .await?;
    ensure!(ack["client_id"] == "s-1" && ack["seq"] == 7, "{ack}");
    let heard = b
        .wait_for("alice's send", |v| is_message_with(v, "via stream"))
        .await?;
    ensure!(heard == ack, "bob heard {heard}, alice's ack was {ack}");

    let refused = send_refused(
        &mut stream,
        &json!({"type": "message", "content": "where?"}),
        "no conversation",
    )
    .await?;
    ensure!(
        refused["detail"] == "Field 'conversation_id' is required",
        "{refused}"
    );
    let refused = send_refused(
        &mut stream,
        &json!({"type": "typing", "conversation_id": elsewhere}),
        "another's conversation",
    )
    .await?;
    ensure!(
        refused["detail"] == "Not a member of this conversation",
        "{refused}"
    );
    let late = send_refused(
        &mut stream,
        &json!({"type": "resume", "positions": {}}),
        "a late resume",
    )
    .await?;
    ensure!(
        late["detail"] == "resume must be the first event of a user stream",
        "{late}"
    );
    stream
        .send_json(
            &json!({"type": "message", "conversation_id": with_carol, "content": "still open"}),
        )
        .await?;
    stream
        .wait_for(
            "the socket still works",
            message_in(&with_carol, "still open"),
        )
        .await?;
    close_all([stream, b, c]).await
}

/// A resume of two conversations at once while a writer posts into one of them: each
/// is replayed from its position, with no gap and no duplicate at the seam, a
/// conversation not listed starts live, and a position past the stream is an error.
async fn resume_many_at_the_seam(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["ur_a", "ur_b"]).await?;
    let busy = api.new_conversation(&bob, "busy", &[&alice]).await?;
    let quiet = api.new_conversation(&bob, "quiet", &[&alice]).await?;
    let unlisted = api.new_conversation(&bob, "unlisted", &[&alice]).await?;
    let wrong = api.new_conversation(&bob, "wrong", &[&alice]).await?;
    let (mut b_busy, _) = join(srv, &busy, &bob).await?;
    let (mut b_quiet, _) = join(srv, &quiet, &bob).await?;
    let (mut b_unlisted, _) = join(srv, &unlisted, &bob).await?;
    for i in 0..30 {
        b_busy.send_message(&format!("busy {i}")).await?;
    }
    for i in 0..3 {
        b_quiet.send_message(&format!("quiet {i}")).await?;
        b_unlisted.send_message(&format!("unlisted {i}")).await?;
    }

    let (mut stream, _) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    // The writer posts while the replay runs.
    let writer = tokio::spawn(async move {
        for i in 30..60 {
            b_busy.send_message(&format!("busy {i}")).await?;
        }
        anyhow::Ok(b_busy)
    });
    stream
        .start(&[(&busy, 10), (&quiet, 1), (&wrong, 99)])
        .await?;
    let quiet_last = message_in(&quiet, "quiet 2");
    let refusal = |v: &Value| {
        kind(v) == "error"
            && v["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&wrong) && d.contains("is at 0"))
    };
    let got = until_all(
        &mut stream,
        "the writer's last, quiet's replay and the refusal",
        &[&message_in(&busy, "busy 59"), &quiet_last, &refusal],
    )
    .await?;
    let busy_seqs = seqs(&of(&got, &busy, "message"));
    ensure!(
        busy_seqs == (11..=60).collect::<Vec<_>>(),
        "busy from 11 to 60, each once, in order: {busy_seqs:?}"
    );
    let b_busy = writer.await??;
    b_unlisted.send_message("unlisted live").await?;
    let later = until(
        &mut stream,
        "the unlisted live one",
        message_in(&unlisted, "unlisted live"),
    )
    .await?;
    let all = [got, later].concat();
    ensure!(
        seqs(&of(&all, &quiet, "message")) == [2, 3],
        "quiet from 2: {all:?}"
    );
    ensure!(
        seqs(&of(&all, &unlisted, "message")) == [4],
        "an unlisted conversation starts live: {all:?}"
    );
    close_all([stream, b_busy, b_quiet, b_unlisted]).await
}

/// Read markers: one device's `read` reaches the user's other devices, and the other
/// member gets a receipt; markers never move back or past the stream; unread counts are
/// exact with the user's own messages, deletes and edits in the mix.
async fn markers_and_unread_counts(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["um_a", "um_b"]).await?;
    let conv = api.new_conversation(&bob, "markers", &[&alice]).await?;
    let (mut b, _) = join(srv, &conv, &bob).await?;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(b.send_message(&format!("bob {i}")).await?);
    }
    let (mut a_ws, _) = join(srv, &conv, &alice).await?;
    a_ws.send_message("alice 0").await?;
    // bob's messages at 1-3, alice's at 4; bob edits his first (position 5).
    b.send_json(
        &json!({"type": "edit", "message_id": sent[0]["message_id"], "content": "bob 0 edited"}),
    )
    .await?;
    b.recv_type("edit").await?;

    let item = |list: &Value| -> anyhow::Result<Value> {
        as_list(list)?
            .iter()
            .find(|c| c["id"] == conv.as_str())
            .cloned()
            .context("listed")
    };
    let listed = item(&api.list_conversations(&alice).await?.expect(200)?)?;
    ensure!(
        (
            listed["last_seq"].as_u64(),
            listed["last_read_seq"].as_u64(),
            listed["unread_count"].as_u64()
        ) == (Some(5), Some(0), Some(3)),
        "bob's three, not alice's own; an edit is no new message: {listed}"
    );
    ensure!(listed["last_message"]["content"] == "alice 0", "{listed}");

    let (mut phone, _) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    let (mut laptop, _) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    phone.start(&[]).await?;
    laptop.start(&[]).await?;
    // Both devices are in the conversation once alice's joins reach bob.
    for _ in 0..2 {
        b.wait_for("alice's stream joining", |v| is_joined(v, &alice))
            .await?;
    }
    phone
        .send_json(&json!({"type": "read", "conversation_id": conv, "seq": 2}))
        .await?;
    let want = json!({"type": "read", "conversation_id": conv, "seq": 2});
    for (ws, name) in [
        (&mut phone, "phone"),
        (&mut laptop, "laptop"),
        (&mut a_ws, "alice's conversation socket"),
    ] {
        let got = ws
            .recv_type("read")
            .await
            .with_context(|| name.to_string())?;
        ensure!(got == want, "{name}: {got}");
    }
    let receipt = b.recv_type("receipt").await?;
    ensure!(
        receipt
            == json!({"type": "receipt", "conversation_id": conv, "user_id": alice.user_id, "seq": 2}),
        "{receipt}"
    );

    // Backwards stays; past the stream means everything.
    let path = format!("/api/chat/conversations/{conv}/read");
    let kept = api
        .post(&path, Some(&alice.token), &json!({"seq": 1}))
        .await?
        .expect(200)?;
    ensure!(
        kept == json!({"conversation_id": conv, "last_read_seq": 2}),
        "{kept}"
    );
    api.post(&path, Some(&alice.token), &json!({"seq": -1}))
        .await?
        .expect_status(422)?;
    let all = api
        .post(&path, Some(&bob.token), &json!({"seq": i64::MAX}))
        .await?
        .expect(200)?;
    ensure!(all["last_read_seq"] == 5, "{all}");
    api.post(&path, Some(&bob.token), &json!({"seq": u64::MAX}))
        .await?
        .expect_status(422)?;
    let whole = api
        .post(&path, Some(&bob.token), &json!({"seq": 5.0}))
        .await?
        .expect(200)?;
    ensure!(
        whole["last_read_seq"] == 5,
        "5.0 is a whole number: {whole}"
    );
    api.post(&path, Some(&bob.token), &json!({"seq": 4.5}))
        .await?
        .expect_status(422)?;
    let stranger = api.new_user("um_s").await?;
    api.post(&path, Some(&stranger.token), &json!({"seq": 1}))
        .await?
        .expect_status(403)?;
    laptop
        .send_json(&json!({"type": "read", "conversation_id": conv, "seq": 1}))
        .await?;
    let told = laptop.recv_type("read").await?;
    ensure!(
        told["seq"] == 2,
        "a marker behind is answered with where it is: {told}"
    );

    let listed = item(&api.list_conversations(&alice).await?.expect(200)?)?;
    ensure!(
        listed["unread_count"] == 1 && listed["last_read_seq"] == 2,
        "{listed}"
    );
    // Deleting bob's unread one leaves nothing unread.
    b.send_json(&json!({"type": "delete", "message_id": sent[2]["message_id"]}))
        .await?;
    b.recv_type("delete").await?;
    let listed = item(&api.list_conversations(&alice).await?.expect(200)?)?;
    ensure!(
        listed["unread_count"] == 0 && listed["last_seq"] == 6,
        "{listed}"
    );
    // REST moves it too, and the devices hear of it.
    let moved = api
        .post(&path, Some(&alice.token), &json!({"seq": 6}))
        .await?
        .expect(200)?;
    ensure!(moved["last_read_seq"] == 6, "{moved}");
    let heard = phone.recv_type("read").await?;
    ensure!(heard["seq"] == 6, "{heard}");
    close_all([phone, laptop, a_ws, b]).await
}

/// The inbox: a conversation created with the user, or one they are added to, is
/// announced and carried from then on; removal is announced, stops the conversation's
/// events at once and refuses sends to it, and the socket goes on serving the others.
async fn inbox_added_and_removed(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol] = api.new_users(["ui_a", "ui_b", "ui_c"]).await?;
    let home = api.new_conversation(&alice, "alice's", &[&carol]).await?;
    let (mut stream, _) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    stream.start(&[]).await?;

    let created = api.new_conversation(&bob, "bob's", &[&alice]).await?;
    let added = stream.recv_type("conversation").await?;
    ensure!(
        added["action"] == "added"
            && added["conversation"]["id"] == created.as_str()
            && added["conversation"]["name"] == "bob's",
        "{added}"
    );
    let (mut b, _) = join(srv, &created, &bob).await?;
    b.send_message("to the new one").await?;
    stream
        .wait_for(
            "a message of the new conversation",
            message_in(&created, "to the new one"),
        )
        .await?;

    let later = api.new_conversation(&bob, "later", &[&carol]).await?;
    api.add_participant(&bob, &later, &alice.user_id)
        .await?
        .expect(200)?;
    let added = stream.recv_type("conversation").await?;
    ensure!(
        added["action"] == "added" && added["conversation"]["id"] == later.as_str(),
        "{added}"
    );
    // Adding again announces nothing: the next inbox event is the removal below.

    api.remove_participant(&bob, &created, &alice.user_id)
        .await?
        .expect_status(204)?;
    let removed = stream.recv_type("conversation").await?;
    ensure!(
        removed
            == json!({"type": "conversation", "action": "removed", "conversation": {"id": created}}),
        "{removed}"
    );
    api.add_participant(&bob, &later, &alice.user_id)
        .await?
        .expect(200)?;
    b.send_message("after the removal").await?;
    stream
        .send_json(&json!({"type": "message", "conversation_id": created, "content": "let me in"}))
        .await?;
    let refused = stream
        .wait_for("the refusal of a send to a conversation she left", |v| {
            kind(v) == "error"
        })
        .await?;
    ensure!(
        refused["detail"] == "Not a member of this conversation",
        "{refused}"
    );
    // The socket serves the others; nothing of the removed conversation came first.
    let (mut c, _) = join(srv, &home, &carol).await?;
    c.send_message("still here").await?;
    let got = until(
        &mut stream,
        "the other conversation",
        message_in(&home, "still here"),
    )
    .await?;
    ensure!(
        !got.iter()
            .any(|v| v["conversation_id"] == created.as_str() && kind(v) == "message"),
        "nothing of the removed conversation: {got:?}"
    );
    ensure!(
        !got.iter().any(|v| kind(v) == "conversation"),
        "a repeated add announces nothing: {got:?}"
    );
    close_all([stream, b, c]).await
}

/// Away for a long time: a conversation with more missed events than a replay reaches
/// back starts with a `resync` naming it, then the newest 1,000 come; a second
/// conversation's replay follows. All of it through a small outbound queue, read
/// slowly at first, without a close: the replay waits for the reader.
async fn a_long_absence_is_paced_not_closed(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["ul_a", "ul_b"]).await?;
    let busy = api.new_conversation(&bob, "busy", &[&alice]).await?;
    let small = api.new_conversation(&bob, "small", &[&alice]).await?;
    let (mut b, _) = join(srv, &busy, &bob).await?;
    // In rounds, reading the echoes: the sender's own queue is small too.
    for round in 0..22 {
        for i in round * 50..(round + 1) * 50 {
            b.send_json(&json!({"type": "message", "content": format!("m{i}")}))
                .await?;
        }
        let last = format!("m{}", round * 50 + 49);
        b.wait_for("the round's last echo", |v| v["content"] == last.as_str())
            .await?;
    }
    let (mut b_small, _) = join(srv, &small, &bob).await?;
    for i in 0..3 {
        b_small.send_message(&format!("s{i}")).await?;
    }
    let (mut stream, _) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    stream.start(&[(&busy, 0), (&small, 0)]).await?;
    // A slow reader for a while: the server must wait, not close.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let got = until_all(
        &mut stream,
        "both replays",
        &[&message_in(&busy, "m1099"), &message_in(&small, "s2")],
    )
    .await?;
    let resync = got
        .iter()
        .find(|v| kind(v) == "resync")
        .context("a resync")?;
    ensure!(
        *resync == json!({"type": "resync", "from_seq": 101, "conversation_id": busy}),
        "{resync}"
    );
    ensure!(
        seqs(&of(&got, &busy, "message")) == (101..=1100).collect::<Vec<_>>(),
        "the newest 1,000, in order"
    );
    ensure!(seqs(&of(&got, &small, "message")) == [1, 2, 3], "{got:?}");
    close_all([stream, b, b_small]).await
}

tests::e2e_on!(
    a_long_absence_is_paced_not_closed,
    |o| tests::realtime::no_rate_limit(o).arg("--ws-outbound-limit-bytes").arg("16384"),
    [sqlite_uring => (Sqlite, Uring), postgres_epoll => (Postgres, Epoll)]
);

tests::e2e!(
    options = tests::realtime::no_rate_limit;
    one_socket_many_conversations,
    resume_many_at_the_seam,
    markers_and_unread_counts,
    inbox_added_and_removed
);
