//! Managing a conversation as its sockets see it (docs/protocol.md "Roles, direct and
//! archived conversations", "Losing access"): changes and roles told to conversation
//! sockets and user streams alike; an archived conversation refusing what would be
//! stored while its sockets stay open; owners and admins deleting others' messages;
//! a deletion closing conversation sockets and dropping the conversation from user
//! streams, which stay open.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;
use tests::realtime::*;

/// `who`'s user stream, started live and known to carry `conv`: `ws` (a socket in
/// `conv`) says something and the stream hears it.
async fn stream_in(
    srv: &TestServer,
    who: &Session,
    conv: &str,
    ws: &mut WsClient,
    say: &str,
) -> anyhow::Result<WsClient> {
    let (mut stream, _) = WsClient::connect_stream(&srv.ws_base_url(), &who.token).await?;
    stream.start(&[]).await?;
    ws.send_message(say).await?;
    stream
        .wait_for(&format!("{say:?} on {}'s stream", who.username), |v| {
            is_message_with(v, say) && v["conversation_id"] == conv
        })
        .await?;
    Ok(stream)
}

fn role_event(conv: &str, who: &Session, role: &str) -> Value {
    json!({"type": "role", "conversation_id": conv, "user_id": who.user_id, "role": role})
}

/// The next `n` events of type `ty` on `ws`, sorted by their text (for events whose
/// relative order is not promised).
async fn next_of_type(ws: &mut WsClient, ty: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(ws.recv_type(ty).await?);
    }
    got.sort_by_key(ToString::to_string);
    Ok(got)
}

/// A rename reaches the conversation sockets and a member's user stream as
/// `conversation` `updated` with the conversation as the PATCH answered it; a PATCH
/// that changes nothing tells nobody; role changes, a hand-over and an owner's leaving
/// reach them as `role`.
async fn changes_and_roles_reach_sockets_and_streams(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["mu_a", "mu_b", "mu_c"]).await?;
    let [mut a, mut b, mut c] = join_settled(srv, &conv, [&alice, &bob, &carol]).await?;
    let mut stream = stream_in(srv, &bob, &conv, &mut a, "sync").await?;
    // Dave's stream is open before he is added: it carries the conversation from the
    // addition on.
    let dave = api.new_user("mu_d").await?;
    let (mut daves, _) = WsClient::connect_stream(&srv.ws_base_url(), &dave.token).await?;
    daves.start(&[]).await?;
    api.add_participant(&alice, &conv, &dave.user_id)
        .await?
        .expect(200)?;
    let added = daves.recv_type("conversation").await?;
    ensure!(
        added["action"] == "added" && added["conversation"]["id"] == conv.as_str(),
        "{added}"
    );
    // His stream is present there now: bob's socket hears him join (and has nothing
    // else left to read when the PATCH below is made).
    b.wait_for("dave's stream joining", |v| is_joined(v, &dave))
        .await?;

    let patched = api
        .update_conversation(
            &alice,
            &conv,
            &json!({"name": "Renamed", "description": "new words"}),
        )
        .await?
        .expect(200)?;
    let want = json!({"type": "conversation", "action": "updated", "conversation": patched});
    ensure!(
        want["conversation"]["id"] == conv.as_str() && want["conversation"]["name"] == "Renamed",
        "{patched}"
    );
    for (ws, name) in [
        (&mut a, "alice's socket"),
        (&mut b, "bob's socket"),
        (&mut c, "carol's socket"),
        (&mut stream, "bob's stream"),
        (&mut daves, "dave's stream"),
    ] {
        let updated = ws.recv_type("conversation").await.context(name)?;
        ensure!(updated == want, "{name}: {updated}, expected {want}");
    }

    // Nothing changed: nothing told. Bob's message is the next thing everyone hears.
    api.update_conversation(&alice, &conv, &json!({"name": "Renamed"}))
        .await?
        .expect(200)?;
    expect_only_echo(&mut b, "after a no-op", "a PATCH that changed nothing").await?;
    for (ws, name) in [(&mut a, "alice's socket"), (&mut stream, "bob's stream")] {
        let seen = events_until_message(ws, "after a no-op")
            .await
            .context(name)?;
        ensure!(
            !seen.iter().any(|v| kind(v) == "conversation"),
            "{name} heard of a PATCH that changed nothing: {seen:?}"
        );
    }

    // A role change.
    api.set_role(&alice, &conv, &bob.user_id, "admin")
        .await?
        .expect(200)?;
    let want = role_event(&conv, &bob, "admin");
    for (ws, name) in [
        (&mut a, "alice's socket"),
        (&mut b, "bob's socket"),
        (&mut c, "carol's socket"),
        (&mut stream, "bob's stream"),
        (&mut daves, "dave's stream"),
    ] {
        let role = ws.recv_type("role").await.context(name)?;
        ensure!(role == want, "{name}: {role}, expected {want}");
    }

    // A hand-over: two changes, both told.
    api.set_role(&alice, &conv, &bob.user_id, "owner")
        .await?
        .expect(200)?;
    let mut want = vec![
        role_event(&conv, &alice, "admin"),
        role_event(&conv, &bob, "owner"),
    ];
    want.sort_by_key(ToString::to_string);
    for (ws, name) in [
        (&mut a, "alice's socket"),
        (&mut b, "bob's socket"),
        (&mut c, "carol's socket"),
        (&mut stream, "bob's stream"),
    ] {
        let got = next_of_type(ws, "role", 2).await.context(name)?;
        ensure!(got == want, "{name}: {got:?}, expected {want:?}");
    }

    // The owner leaves: the admin inherits, and the others hear it.
    api.remove_participant(&bob, &conv, &bob.user_id)
        .await?
        .expect_status(204)?;
    let want = role_event(&conv, &alice, "owner");
    for (ws, name) in [(&mut a, "alice's socket"), (&mut c, "carol's socket")] {
        let role = ws.recv_type("role").await.context(name)?;
        ensure!(role == want, "{name}: {role}, expected {want}");
    }
    let removed = stream.recv_type("conversation").await?;
    ensure!(
        removed
            == json!({"type": "conversation", "action": "removed", "conversation": {"id": conv}}),
        "bob's stream after he left: {removed}"
    );
    let (close, _) = close_frame(&mut b, "bob's socket after he left").await?;
    ensure!(
        close == Some((1008, "Not a member of this conversation".into())),
        "{close:?}"
    );
    // A user stream's `ready` lists each conversation with the user's role in it.
    let (fresh, ready) = WsClient::connect_stream(&srv.ws_base_url(), &alice.token).await?;
    let item = ready["conversations"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i["id"] == conv.as_str()))
        .with_context(|| format!("the conversation in alice's ready: {ready}"))?;
    ensure!(
        item["role"] == "owner" && item["name"] == "Renamed" && item["archived_at"].is_null(),
        "{item}"
    );
    close_all([a, c, stream, daves, fresh]).await
}

/// While archived, a message (with or without `client_id`), an edit, a delete and a
/// reaction each get `Conversation is archived`, on a conversation socket and on a user
/// stream, and the sockets stay open; nothing takes a position. Unarchived, the next
/// message is acknowledged at the next position.
async fn archived_refuses_on_sockets(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["ma_a", "ma_b"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;
    let first = b.send_message("first").await?;
    ensure!(first["seq"] == 1, "{first}");
    let id = field(&first, "message_id").to_string();
    let mut stream = stream_in(srv, &bob, &conv, &mut a, "second").await?;
    b.wait_for("alice's message", |v| is_message_with(v, "second"))
        .await?;

    api.update_conversation(&alice, &conv, &json!({"archived": true}))
        .await?
        .expect(200)?;
    for (ws, name) in [(&mut b, "bob's socket"), (&mut stream, "bob's stream")] {
        let updated = ws.recv_type("conversation").await.context(name)?;
        ensure!(
            updated["action"] == "updated"
                && updated["conversation"]["archived_at"]
                    .as_str()
                    .is_some_and(is_timestamp),
            "{name}: {updated}"
        );
    }
    let refused = [
        json!({"type": "message", "content": "while archived", "ref": "m"}),
        json!({"type": "message", "content": "while archived", "client_id": "c-1", "ref": "mc"}),
        json!({"type": "edit", "message_id": id, "content": "edited", "ref": "e"}),
        json!({"type": "reaction", "message_id": id, "emoji": "👍", "ref": "r"}),
        json!({"type": "delete", "message_id": id, "ref": "d"}),
    ];
    for frame in &refused {
        let err = send_refused(&mut b, frame, &format!("{frame} when archived")).await?;
        ensure!(
            err["detail"] == "Conversation is archived",
            "{frame}: {err}"
        );
    }
    for frame in &refused {
        let mut frame = frame.clone();
        frame["conversation_id"] = json!(conv);
        let err = send_refused(&mut stream, &frame, &format!("{frame} on the stream")).await?;
        ensure!(
            err["detail"] == "Conversation is archived",
            "{frame}: {err}"
        );
    }
    // Open still.
    for (ws, name) in [(&mut b, "bob's socket"), (&mut stream, "bob's stream")] {
        ws.send_json(&json!({"type": "ping"})).await?;
        let pong = ws.recv_json().await.context(name)?;
        ensure!(pong == json!({"type": "pong"}), "{name}: {pong}");
    }
    // Read markers still move.
    b.send_json(&json!({"type": "read", "seq": 2})).await?;
    let read = b.recv_type("read").await?;
    ensure!(read["seq"] == 2, "a read marker when archived: {read}");
    let history = api.history_list(&alice, &conv, "").await?;
    ensure!(
        history.len() == 2 && history[0]["content"] == "first" && history[0]["is_edited"] == false,
        "nothing stored while archived: {history:?}"
    );

    api.update_conversation(&bob, &conv, &json!({"archived": false}))
        .await
        .and_then(|r| r.expect_error(403).map(|_| ()))
        .context("a member does not unarchive")?;
    api.update_conversation(&alice, &conv, &json!({"archived": false}))
        .await?
        .expect(200)?;
    let updated = b.recv_type("conversation").await?;
    ensure!(
        updated["conversation"]["archived_at"].is_null(),
        "{updated}"
    );
    let after = b.send_message("after").await?;
    ensure!(after["seq"] == 3, "the refusals took no position: {after}");
    let heard = a
        .wait_for("bob's message after", |v| is_message_with(v, "after"))
        .await?;
    ensure!(heard == after, "{heard} vs {after}");
    b.send_json(&json!({"type": "edit", "message_id": id, "content": "edited"}))
        .await?;
    let edit = b.recv_type("edit").await?;
    ensure!(edit["seq"] == 4 && edit["content"] == "edited", "{edit}");
    close_all([a, b, stream]).await
}

/// Sends a chat message without waiting for anything.
async fn say(ws: &mut WsClient, content: &str) -> anyhow::Result<()> {
    ws.send_json(&json!({"type": "message", "content": content}))
        .await
}

/// Owners and admins delete anyone's message and everyone hears the `delete`; a member
/// deleting another's, or an admin editing another's, gets an `error` and nothing
/// changes; an admin demoted a moment ago is refused at once.
async fn moderators_delete_others_messages(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol, dave], conv) = group(&api, &["md_a", "md_b", "md_c", "md_d"]).await?;
    api.set_role(&alice, &conv, &bob.user_id, "admin")
        .await?
        .expect(200)?;
    let [mut a, mut b, mut c, mut d] =
        join_settled(srv, &conv, [&alice, &bob, &carol, &dave]).await?;
    let mut all = [&mut a, &mut b, &mut c, &mut d];
    say(all[2], "carol's").await?;
    let carols = recv_everywhere(&mut all, "message", "carol's message").await?;
    say(all[3], "dave's").await?;
    let daves = recv_everywhere(&mut all, "message", "dave's message").await?;
    let (carols, daves) = (field(&carols, "message_id"), field(&daves, "message_id"));

    // A member does not delete another's message; an admin does not edit one.
    let err = send_refused(
        all[3],
        &json!({"type": "delete", "message_id": carols, "ref": "x"}),
        "a member deleting another's message",
    )
    .await?;
    ensure!(kind(&err) == "error", "{err}");
    send_refused(
        all[1],
        &json!({"type": "edit", "message_id": carols, "content": "mine now", "ref": "y"}),
        "an admin editing another's message",
    )
    .await?;
    let history = api.history_list(&carol, &conv, "").await?;
    ensure!(
        history.len() == 2
            && history[0]["content"] == "carol's"
            && history[0]["is_edited"] == false,
        "{history:?}"
    );

    // The admin deletes carol's message, the owner dave's: everyone hears each.
    all[1]
        .send_json(&json!({"type": "delete", "message_id": carols}))
        .await?;
    let deleted = recv_everywhere(&mut all, "delete", "the admin's delete").await?;
    ensure!(
        deleted["message_id"] == carols
            && deleted["seq"] == 3
            && deleted["conversation_id"] == conv.as_str(),
        "{deleted}"
    );
    all[0]
        .send_json(&json!({"type": "delete", "message_id": daves}))
        .await?;
    let deleted = recv_everywhere(&mut all, "delete", "the owner's delete").await?;
    ensure!(
        deleted["message_id"] == daves && deleted["seq"] == 4,
        "{deleted}"
    );
    ensure!(
        api.history_list(&dave, &conv, "").await?.is_empty(),
        "both messages are gone from history"
    );

    // Demoted, the admin is refused at once.
    api.set_role(&alice, &conv, &bob.user_id, "member")
        .await?
        .expect(200)?;
    say(all[2], "carol's second").await?;
    let second = all[1]
        .wait_for("carol's second", |v| is_message_with(v, "carol's second"))
        .await?;
    let err = send_refused(
        all[1],
        &json!({"type": "delete", "message_id": field(&second, "message_id"), "ref": "z"}),
        "a demoted admin deleting",
    )
    .await?;
    ensure!(kind(&err) == "error", "{err}");
    let history = api.history_list(&carol, &conv, "").await?;
    ensure!(
        history.len() == 1 && history[0]["content"] == "carol's second",
        "{history:?}"
    );
    close_all([a, b, c, d]).await
}

/// The owner deletes the conversation: every conversation socket in it (several tabs,
/// so both shards) gets `Conversation deleted` and close 1008 with that reason, and
/// nothing after; a member's user stream hears `conversation` `deleted` and stays
/// open for their other conversations; nobody connects to it again.
async fn deletion_closes_sockets_and_tells_streams(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob, carol], conv) = group(&api, &["mx_a", "mx_b", "mx_c"]).await?;
    let side = api.new_conversation(&carol, "side", &[&bob]).await?;
    let mut sockets = vec![join(srv, &conv, &alice).await?.0];
    for _ in 0..3 {
        sockets.push(join(srv, &conv, &bob).await?.0);
    }
    let mut stream = stream_in(srv, &bob, &conv, &mut sockets[0], "before").await?;

    api.delete_conversation(&alice, &conv)
        .await?
        .expect_status(204)?;
    for (i, ws) in sockets.iter_mut().enumerate() {
        let (close, before) = close_frame(ws, &format!("socket {i}")).await?;
        ensure!(
            close == Some((1008, "Conversation deleted".into())),
            "socket {i}: {close:?}"
        );
        let last = before.last().cloned();
        let Some(WsEvent::Json(last)) = last else {
            bail!("socket {i}: no error event before the close: {before:?}");
        };
        ensure!(
            last == json!({"type": "error", "detail": "Conversation deleted"}),
            "socket {i}: the last event before the close: {last} (all: {before:?})"
        );
    }

    let deleted = stream.recv_type("conversation").await?;
    ensure!(
        deleted
            == json!({"type": "conversation", "action": "deleted", "conversation": {"id": conv}}),
        "{deleted}"
    );
    stream.send_json(&json!({"type": "ping"})).await?;
    let pong = stream.recv_json().await?;
    ensure!(pong == json!({"type": "pong"}), "the stream after: {pong}");
    let refused = send_refused(
        &mut stream,
        &json!({"type": "message", "conversation_id": conv, "content": "hello?", "ref": "q"}),
        "a send to the deleted conversation",
    )
    .await?;
    ensure!(
        refused["detail"] == "Not a member of this conversation",
        "{refused}"
    );
    let (mut c, _) = join(srv, &side, &carol).await?;
    c.send_message("elsewhere").await?;
    let seen = events_until(&mut stream, "the other conversation's message", |v| {
        is_message_with(v, "elsewhere")
    })
    .await?;
    ensure!(
        seen.last()
            .is_some_and(|v| v["conversation_id"] == side.as_str()),
        "{seen:?}"
    );
    ensure!(
        !seen.iter().any(|v| v["conversation_id"] == conv.as_str()),
        "the deleted conversation after its deletion: {seen:?}"
    );

    // Nobody comes back to it.
    for who in [&alice, &bob] {
        let mut again = WsClient::connect(&srv.ws_base_url(), &conv, &who.token).await?;
        let (close, _) = close_frame(&mut again, "a socket to a deleted conversation").await?;
        ensure!(
            close == Some((1008, "Not a member of this conversation".into())),
            "{close:?}"
        );
    }
    let (fresh, ready) = WsClient::connect_stream(&srv.ws_base_url(), &bob.token).await?;
    ensure!(
        ready["positions"].get(&conv).is_none() && ready["positions"].get(&side).is_some(),
        "a new stream carries the deleted conversation: {ready}"
    );
    close_all([stream, c, fresh]).await
}

/// Rows the store holds for a conversation: its own row, its messages, and the log of
/// their edits, deletes and reactions.
async fn rows_of(srv: &TestServer, conv: &str) -> anyhow::Result<[i64; 3]> {
    const TABLES: [(&str, &str); 3] = [
        ("conversations", "id"),
        ("messages", "conversation_id"),
        ("message_changes", "conversation_id"),
    ];
    if let Some(dir) = srv.data_dir() {
        let (file, conv) = (dir.join("chat.db"), conv.to_string());
        return tokio::task::spawn_blocking(move || {
            let db = rusqlite::Connection::open_with_flags(
                &file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let mut counts = [0; 3];
            for (count, (table, column)) in counts.iter_mut().zip(TABLES) {
                *count = db.query_row(
                    &format!("SELECT count(*) FROM {table} WHERE {column} = ?1"),
                    [&conv],
                    |row| row.get(0),
                )?;
            }
            anyhow::Ok(counts)
        })
        .await?;
    }
    let sql = srv.sql().await?;
    let id: uuid::Uuid = conv.parse()?;
    let mut counts = [0; 3];
    for (count, (table, column)) in counts.iter_mut().zip(TABLES) {
        *count = sql
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE {column} = $1"),
                &[&id],
            )
            .await?
            .get(0);
    }
    Ok(counts)
}

/// A deleted conversation's history, more than one purge chunk of it (2,000 messages)
/// with edits and reactions, leaves the store soon after, row by row; another
/// conversation's stays.
async fn deletion_purges_history(srv: &TestServer) -> anyhow::Result<()> {
    const MESSAGES: usize = 2_050;
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["mp_a", "mp_b"]).await?;
    let other = api.new_conversation(&bob, "stays", &[&alice]).await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    let (mut o, _) = join(srv, &other, &bob).await?;
    let first = a.send_message("edited and reacted to").await?;
    let id = field(&first, "message_id").to_string();
    a.send_json(&json!({"type": "edit", "message_id": id, "content": "edited"}))
        .await?;
    a.recv_type("edit").await?;
    a.send_json(&json!({"type": "reaction", "message_id": id, "emoji": "🔥"}))
        .await?;
    a.recv_type("reaction").await?;
    // In rounds, reading the echoes, so the sender's queue stays small.
    for round in 0..MESSAGES / 50 {
        for i in 0..50 {
            say(&mut a, &format!("m{round}-{i}")).await?;
        }
        let last = format!("m{round}-49");
        a.wait_for("the round's last echo", |v| is_message_with(v, &last))
            .await?;
    }
    o.send_message("kept").await?;
    let total = MESSAGES as i64 + 1;
    let before = rows_of(srv, &conv).await?;
    ensure!(
        before == [1, total, 2],
        "rows before the deletion: {before:?}"
    );
    let kept = rows_of(srv, &other).await?;
    ensure!(kept == [1, 1, 0], "the other conversation: {kept:?}");

    api.delete_conversation(&alice, &conv)
        .await?
        .expect_status(204)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = rows_of(srv, &conv).await?;
        if now == [0, 0, 0] {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still in the store a minute after the deletion: {now:?} (conversation, messages, changes)"
        );
        pause(100).await;
    }
    ensure!(
        rows_of(srv, &other).await? == kept,
        "the purge touched another conversation"
    );
    ensure!(
        api.history_list(&bob, &other, "").await?.len() == 1,
        "the other conversation's history"
    );
    close_all([a, o]).await
}

/// A direct conversation on the user streams: leaving it is announced as `removed`;
/// asking for it again (the other person asks) brings the leaver back, announced as
/// `added`, and the stream carries it again.
async fn direct_rejoin_reaches_the_stream(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["mr_a", "mr_b"]).await?;
    let body = |other: &Session| json!({"is_group": false, "participant_ids": [other.user_id]});
    let (mut stream, _) = WsClient::connect_stream(&srv.ws_base_url(), &bob.token).await?;
    stream.start(&[]).await?;
    let created = api
        .create_conversation_raw(&alice, &body(&bob))
        .await?
        .expect(201)?;
    let conv = str_field(&created, "id")?;
    let added = stream.recv_type("conversation").await?;
    ensure!(
        added["action"] == "added"
            && added["conversation"]["id"] == conv.as_str()
            && added["conversation"]["is_direct"] == true,
        "{added}"
    );
    // Asked again with both in: nothing to announce.
    api.create_conversation_raw(&alice, &body(&bob))
        .await?
        .expect(200)?;
    api.remove_participant(&bob, &conv, &bob.user_id)
        .await?
        .expect_status(204)?;
    let removed = stream.recv_type("conversation").await?;
    ensure!(
        removed
            == json!({"type": "conversation", "action": "removed", "conversation": {"id": conv}}),
        "{removed}"
    );
    api.create_conversation_raw(&alice, &body(&bob))
        .await?
        .expect(200)?;
    let added = stream.recv_type("conversation").await?;
    ensure!(
        added["action"] == "added" && added["conversation"]["id"] == conv.as_str(),
        "bob is back in: {added}"
    );
    let (mut a, _) = join(srv, &conv, &alice).await?;
    a.send_message("welcome back").await?;
    stream
        .wait_for("the direct conversation's message", |v| {
            is_message_with(v, "welcome back") && v["conversation_id"] == conv.as_str()
        })
        .await?;
    close_all([stream, a]).await
}

tests::e2e!(
    options = tests::realtime::no_rate_limit;
    direct_rejoin_reaches_the_stream,
    deletion_purges_history,
    changes_and_roles_reach_sockets_and_streams,
    archived_refuses_on_sockets,
    moderators_delete_others_messages,
    deletion_closes_sockets_and_tells_streams,
);
