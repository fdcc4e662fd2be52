//! What the WebSocket endpoint refuses (docs/protocol.md, "WebSocket"), on all four
//! configurations: bad frames (an error event, the connection stays usable), the 5000
//! character content limit, the 64 KiB frame limit (close 1009), refused connections
//! (close 1008), content a store cannot hold, and `ref` echoing on errors.
#![allow(clippy::unwrap_used)]

use tests::jwt;
use tests::prelude::*;
use tests::realtime::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Bad frames each get an `error` event with a `detail` (and the frame's `ref` where it
/// could be read); the connection stays usable and nothing reaches others or history.
async fn bad_frames_keep_connection(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;
    let first = a.send_message("before the bad frames").await?;
    let m = str_field(&first, "message_id")?;

    // Frames without a readable `ref`.
    for (what, text) in [
        ("invalid JSON", "this is not json"),
        ("truncated JSON", r#"{"type": "message", "content": "#),
        ("a JSON list", "[1, 2, 3]"),
        ("a JSON string", r#""message""#),
        ("a JSON null", "null"),
        ("an empty text frame", ""),
    ] {
        send_raw_refused(&mut a, Message::text(text), None, what).await?;
    }
    // Objects with a `ref`, which the error must echo.
    let too_long: String = "ä".repeat(5001);
    for (what, frame) in [
        ("no type", json!({"content": "typeless", "ref": "r-notype"})),
        (
            "unknown type",
            json!({"type": "shout", "content": "HEY", "ref": "r-unknown"}),
        ),
        ("non-string type", json!({"type": 7, "ref": "r-typenum"})),
        (
            "missing content",
            json!({"type": "message", "ref": "r-missing"}),
        ),
        (
            "null content",
            json!({"type": "message", "content": null, "ref": "r-null"}),
        ),
        (
            "numeric content",
            json!({"type": "message", "content": 42, "ref": "r-num"}),
        ),
        (
            "object content",
            json!({"type": "message", "content": {"text": "hi"}, "ref": "r-obj"}),
        ),
        (
            "empty content",
            json!({"type": "message", "content": "", "ref": "r-empty"}),
        ),
        (
            "whitespace-only content",
            json!({"type": "message", "content": " \t\r\n  ", "ref": "r-ws"}),
        ),
        (
            "unicode whitespace-only content",
            json!({"type": "message", "content": "\u{3000}\u{a0}\u{2003}", "ref": "r-uws"}),
        ),
        (
            "content of 5001 characters",
            json!({"type": "message", "content": too_long, "ref": "r-long"}),
        ),
        (
            "edit without message_id",
            json!({"type": "edit", "content": "x", "ref": "r-edit"}),
        ),
        (
            "edit without content",
            json!({"type": "edit", "message_id": m, "ref": "r-edit2"}),
        ),
        (
            "delete without message_id",
            json!({"type": "delete", "ref": "r-delete"}),
        ),
    ] {
        send_refused(&mut a, &frame, what).await?;
    }
    let binary = json!({"type": "message", "content": "binary"})
        .to_string()
        .into_bytes();
    send_raw_refused(&mut a, Message::binary(binary), None, "binary frame").await?;

    // Still usable, and bob saw nothing of the above.
    let after = a.send_message("after the bad frames").await?;
    let events = events_until_message(&mut b, "after the bad frames").await?;
    ensure!(
        events.iter().filter(|v| kind(v) != "message").count() == 0
            && message_ids(&events) == vec![m.clone(), str_field(&after, "message_id")?],
        "bob got events for alice's bad frames: {events:?}"
    );
    let history = api.history_list(&bob, &conv, "").await?;
    ensure!(
        history_ids(&history) == message_ids(&events),
        "history holds more than the two valid messages: {history:?}"
    );
    close_all([a, b]).await
}

/// The 5000 limit counts characters, not bytes: 5000 two- and four-byte characters are
/// accepted and stored exactly; 5001 are refused. Content is stored as sent.
async fn content_length_in_characters(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["alice"]).await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;

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
        let frame = json!({"type": "message", "content": content, "ref": format!("long-{i}")});
        send_refused(&mut a, &frame, "5001 characters").await?;
    }
    let history = api.history_list(&alice, &conv, "").await?;
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
    a.close().await
}

/// Sends `parts` as the fragments of one text message (a text frame, then
/// continuation frames, the last one final). Stops at the first frame that cannot be
/// sent and returns that error.
async fn send_fragmented(ws: &mut WsClient, parts: &[&[u8]]) -> anyhow::Result<()> {
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 { Data::Text } else { Data::Continue };
        let fin = i + 1 == parts.len();
        ws.send_raw(Message::Frame(Frame::message(
            part.to_vec(),
            OpCode::Data(opcode),
            fin,
        )))
        .await?;
    }
    Ok(())
}

/// `None` when the server closes `ws` with 1009 (message too big), else the problem.
async fn problem_unless_1009(mut ws: WsClient, what: &str) -> Option<String> {
    match close_frame(&mut ws, what).await {
        Ok((Some((1009, _)), _)) => None,
        other => Some(format!("{what}: expected close 1009, got {other:?}")),
    }
}

/// Frames up to 64 KiB are read (also when fragmented); a larger text or binary
/// message, in one frame or in fragments, closes the connection with 1009.
async fn frame_size_limit(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut watcher, mut a] = join_each(srv, &conv, [&bob, &alice]).await?;

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
    send_fragmented(&mut a, &[p1.as_bytes(), p2.as_bytes(), p3.as_bytes()]).await?;
    a.wait_for("the echo of the fragmented message", |v| {
        is_message_with(v, "in three fragments")
    })
    .await?;

    // Larger messages close with 1009; every case is tried, failures are reported
    // together.
    let mut problems = Vec::new();
    let pad = " ".repeat(65537 - head.len() - tail.len());
    a.send_text(&format!("{head}{pad}{tail}")).await?;
    problems.extend(problem_unless_1009(a, "a 64 KiB + 1 text frame").await);

    let (mut a, _) = join(srv, &conv, &alice).await?;
    a.send_raw(Message::binary(vec![b'x'; 70 * 1024])).await?;
    problems.extend(problem_unless_1009(a, "a 70 KiB binary frame").await);

    // A text message over 64 KiB in fragments of 16 KiB each.
    let (mut a, _) = join(srv, &conv, &alice).await?;
    let big = json!({"type": "message", "content": "y".repeat(80 * 1024)}).to_string();
    let chunks: Vec<&[u8]> = big.as_bytes().chunks(16 * 1024).collect();
    // The server may close before the last fragment; later sends may then fail.
    let _ = send_fragmented(&mut a, &chunks).await;
    problems.extend(problem_unless_1009(a, "an 80 KiB message in 16 KiB fragments").await);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));

    // Nothing of the oversized messages was delivered or stored.
    let history = api.history_list(&bob, &conv, "").await?;
    let contents: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect();
    ensure!(
        contents == ["exactly 64 KiB", "in three fragments"],
        "history: {contents:?}"
    );
    let marker = {
        let (mut a, _) = join(srv, &conv, &alice).await?;
        let echo = a.send_message("marker").await?;
        a.close().await?;
        echo
    };
    let events = events_until(&mut watcher, "the marker", |v| v == &marker).await?;
    ensure!(
        message_ids(&events).len() == 3,
        "bob got other messages than the three valid ones: {events:?}"
    );
    watcher.close().await
}

/// Refused connections: bad, expired, foreign-key and unsigned tokens get
/// `{"type":"error","detail":"Invalid token"}` then close 1008 `Invalid token`; a
/// non-member, a removed member and an unknown conversation get
/// `Not a member of this conversation` and close 1008 with that reason.
async fn refused_connections(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let outsider = api.new_user("outsider").await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;

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
    api.remove_participant(&bob, &conv, &bob.user_id)
        .await?
        .expect_status(204)?;
    expect_refusal(srv, &conv, &bob.token, NOT_MEMBER, "removed member").await?;

    // None of the refused connections joined.
    expect_only_echo(&mut a, "still alone", "alice after the refused connections").await?;
    a.close().await
}

/// Content a store cannot hold (a NUL character) is refused for that frame alone, the
/// same on every store, with a detail that says why: messages other users send at the
/// same moment are all acknowledged and stored. A JSON lone surrogate escape gets an
/// echo or an error, and the connection stays usable.
async fn hostile_content_is_contained(srv: &TestServer) -> anyhow::Result<()> {
    const NUL: usize = 10;
    const NORMAL: usize = 30;
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["alice", "bob"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&alice, &bob]).await?;

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
    let history = api.history_list(&bob, &conv, "limit=100").await?;
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
    close_all([a, b]).await
}

tests::e2e!(
    hostile_content_is_contained,
    bad_frames_keep_connection,
    content_length_in_characters,
    frame_size_limit,
    refused_connections,
);
