//! An acknowledged message is never lost: not when the server is killed with SIGKILL
//! while clients stream messages, and not when PostgreSQL goes away and comes back
//! (the server answers `error` meanwhile instead of acknowledging, and recovers by
//! itself).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use tests::prelude::*;
use tests::realtime::*;
use tests::{IoDriver, ServerOptions, Store};

/// How many acknowledgements (over all streams) before the kill.
const ACKS_BEFORE_KILL: usize = 300;

/// Three clients (two in one conversation, one in another) stream messages, each
/// sending the next as soon as the previous one is acknowledged. After
/// `ACKS_BEFORE_KILL` acknowledgements the server gets SIGKILL mid-stream. After a
/// restart on the same store every acknowledged message is in history exactly once,
/// in each stream's order; nothing is there that was not sent; and new messages go
/// after the old ones.
async fn acked_stream_survives_kill9(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv_a) = group(&api, &["a0", "a1"]).await?;
    let (more, conv_b) = group(&api, &["b0"]).await?;
    let streams = [
        (users[0].clone(), conv_a.clone()),
        (users[1].clone(), conv_a.clone()),
        (more[0].clone(), conv_b.clone()),
    ];

    let acked: Arc<Mutex<Vec<(usize, String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (s, (user, conv)) in streams.iter().enumerate() {
        let (mut ws, _) = join(srv, conv, user).await?;
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            // Ends when the server dies under it; sent counts what went out.
            let mut sent = Vec::new();
            for i in 0.. {
                let content = format!("stream{s}-{i:05}");
                sent.push(content.clone());
                match ws.send_message(&content).await {
                    Ok(echo) => {
                        let id = field(&echo, "message_id").to_string();
                        acked.lock().unwrap().push((s, id, content));
                    }
                    Err(_) => break,
                }
            }
            sent
        }));
    }

    // Wait for enough acknowledgements (bounded), then kill mid-stream.
    let mut waited = 0;
    while acked.lock().unwrap().len() < ACKS_BEFORE_KILL {
        ensure!(
            waited < 120_000,
            "only {} acknowledgements after 120 s",
            acked.lock().unwrap().len()
        );
        pause(5).await;
        waited += 5;
    }
    srv.kill9()?;
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.context("stream task panicked")?);
    }
    let acked = acked.lock().unwrap().clone();
    ensure!(acked.len() >= ACKS_BEFORE_KILL);

    srv.restart().await?;
    let api = srv.api();
    let mut stored = Vec::new();
    for (conv, who) in [(&conv_a, &users[0]), (&conv_b, &more[0])] {
        stored.extend(full_history(&api, who, conv).await?);
    }
    let stored_ids = history_ids(&stored);
    let stored_contents: Vec<String> = stored
        .iter()
        .map(|m| field(m, "content").to_string())
        .collect();
    ensure!(
        duplicates(&stored_ids).is_empty() && duplicates(&stored_contents).is_empty(),
        "history holds duplicates: ids {:?}, contents {:?}",
        duplicates(&stored_ids),
        duplicates(&stored_contents)
    );
    let lost: Vec<&(usize, String, String)> = acked
        .iter()
        .filter(|(_, id, _)| !stored_ids.contains(id))
        .collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged messages are missing after kill -9: {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    for (_, id, content) in &acked {
        let m = stored.iter().find(|m| m["id"] == id.as_str()).unwrap();
        ensure!(
            m["content"] == content.as_str(),
            "{id}: stored {m}, acked {content}"
        );
    }
    let unknown: Vec<&String> = stored_contents
        .iter()
        .filter(|c| !sent.contains(c))
        .collect();
    ensure!(
        unknown.is_empty(),
        "history holds unsent messages {unknown:?}"
    );
    // Within each stream, history keeps the sending order.
    for s in 0..streams.len() {
        let prefix = format!("stream{s}-");
        let mine: Vec<&String> = stored_contents
            .iter()
            .filter(|c| c.starts_with(&prefix))
            .collect();
        let mut sorted = mine.clone();
        sorted.sort();
        ensure!(mine == sorted, "stream {s} is out of order in history");
    }

    // The restarted server goes on: a new message sorts after the old ones.
    let (mut ws, _) = join(srv, &conv_a, &users[0]).await?;
    let echo = ws.send_message("after the restart").await?;
    let history = full_history(&api, &users[0], &conv_a).await?;
    ensure!(
        history.last().map(|m| &m["id"]) == Some(&echo["message_id"]),
        "the first message after the restart is not last in history"
    );
    ws.close().await?;
    Ok(())
}

/// Edits, deletes and reactions, once broadcast, survive SIGKILL: after a restart
/// history shows the edit and lacks the deleted message, and toggling the same
/// reaction again removes it.
async fn changes_survive_kill9(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    let mut ids = Vec::new();
    for content in ["to edit", "to delete", "to react to"] {
        ids.push(str_field(&a.send_message(content).await?, "message_id")?);
    }
    a.send_json(
        &json!({"type": "edit", "message_id": ids[0], "content": "edited before the kill"}),
    )
    .await?;
    a.recv_type("edit").await?;
    a.send_json(&json!({"type": "delete", "message_id": ids[1]}))
        .await?;
    a.recv_type("delete").await?;
    b.send_json(&json!({"type": "reaction", "message_id": ids[2], "emoji": "👍"}))
        .await?;
    let reaction = b.recv_type("reaction").await?;
    ensure!(reaction["action"] == "added", "{reaction}");

    srv.kill9()?;
    drop((a, b));
    srv.restart().await?;
    let api = srv.api();
    let history = api.history_list(bob, &conv, "").await?;
    ensure!(
        history_ids(&history) == vec![ids[0].clone(), ids[2].clone()],
        "history after kill -9: expected the edited and the reacted message only: {history:?}"
    );
    ensure!(
        history[0]["content"] == "edited before the kill" && history[0]["is_edited"] == true,
        "the edit was lost: {}",
        history[0]
    );
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;
    b.send_json(&json!({"type": "reaction", "message_id": ids[2], "emoji": "👍"}))
        .await?;
    let reaction = b.recv_type("reaction").await?;
    ensure!(
        reaction["action"] == "removed",
        "toggling the reaction after the restart: expected removed (it was added before \
         the kill), got {reaction}"
    );
    a.send_json(&json!({"type": "edit", "message_id": ids[1], "content": "resurrected?"}))
        .await?;
    let err = a.recv_type("error").await?;
    ensure!(err["detail"] == "Message not found", "{err}");
    a.close().await?;
    b.close().await?;
    Ok(())
}

tests::e2e!(
    options = tests::realtime::no_rate_limit;
    acked_stream_survives_kill9
);

tests::e2e!(changes_survive_kill9);

/// PostgreSQL becomes unreachable for this server only (a relay between it and the
/// shared cluster is cut), then comes back. During the outage a message gets an `error`
/// event, never an echo, and is never stored; the connection stays open. After the
/// relay is restored messages flow again without restarting the server. Every
/// acknowledged message is in history; no refused one is.
async fn postgres_outage(driver: IoDriver) -> anyhow::Result<()> {
    let (_, pg) = testkit::postgres::url_parts()?;
    let target = tokio::net::lookup_host(pg.as_str())
        .await
        .with_context(|| format!("resolving {pg}"))?
        .next()
        .with_context(|| format!("no address for {pg}"))?;
    let relay = TcpRelay::start(target).await?;
    let db = testkit::ScratchDatabase::create("chat_e2e").await?;
    // The store is PostgreSQL through the relay (`--database-url`); the harness's
    // data directory only holds files the server may write besides.
    let opts = ServerOptions::new(Store::Sqlite, driver)
        .arg("--database-url")
        .arg(db.url_via(relay.addr())?);
    let srv = TestServer::start(opts)
        .await
        .context("starting chat-server on PostgreSQL through the relay")?;
    let mut result = outage_scenario(&srv, &relay).await;
    if result.is_ok() {
        result = outage_with_client_id(&srv, &relay).await;
    }
    srv.finish(result);
    drop(db);
    Ok(())
}

/// A send with a `client_id` whose commit fails is told it may not have been saved;
/// once the store is back, resending with the same `client_id` stores it once and
/// every further repeat gets the same ack.
async fn outage_with_client_id(srv: &TestServer, relay: &TcpRelay) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["carol"]).await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    let send = json!({"type": "message", "content": "sent in the dark", "client_id": "dark-1"});
    relay.cut();
    a.send_json(&send).await?;
    let err = a.recv_type("error").await?;
    ensure!(
        err["detail"] == "Message may not have been saved; resend with the same client_id",
        "{err}"
    );
    relay.restore();
    let mut ack = None;
    for _ in 0..60 {
        a.send_json(&send).await?;
        let ev = a
            .wait_for("the resend's outcome", |v| {
                matches!(kind(v), "message" | "error")
            })
            .await?;
        if kind(&ev) == "message" {
            ack = Some(ev);
            break;
        }
        pause(500).await;
    }
    let ack = ack.context("no resend was acknowledged in 30 s after PostgreSQL came back")?;
    ensure!(ack["client_id"] == "dark-1", "{ack}");
    a.send_json(&send).await?;
    ensure!(
        a.recv_type("message").await? == ack,
        "a further repeat gets the same ack"
    );
    let history = full_history(&api, &alice, &conv).await?;
    ensure!(history.len() == 1, "stored once: {history:?}");
    a.close().await
}

/// Sends message number `n` (incremented) of `phase` with a `ref`; its outcome.
async fn send_numbered(
    a: &mut WsClient,
    n: &mut usize,
    phase: &str,
) -> anyhow::Result<(String, Outcome)> {
    *n += 1;
    let content = format!("{phase} {n}");
    let outcome = send_tracked(a, &content, &format!("ref-{n}")).await?;
    Ok((content, outcome))
}

async fn outage_scenario(srv: &TestServer, relay: &TcpRelay) -> anyhow::Result<()> {
    let api = srv.api();
    let (users, conv) = group(&api, &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let (mut a, _) = join(srv, &conv, alice).await?;
    let (mut b, _) = join(srv, &conv, bob).await?;

    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut n = 0;

    for _ in 0..5 {
        let (content, outcome) = send_numbered(&mut a, &mut n, "before").await?;
        match outcome {
            Outcome::Acked(echo) => acked.push((field(&echo, "message_id").to_string(), content)),
            Outcome::Refused(err) => bail!("before the outage {content:?} was refused: {err}"),
        }
    }

    relay.cut();
    for _ in 0..3 {
        let (content, outcome) = send_numbered(&mut a, &mut n, "during").await?;
        match outcome {
            Outcome::Acked(echo) => {
                bail!("during the outage {content:?} was acknowledged: {echo}")
            }
            Outcome::Refused(_) => refused.push(content),
        }
        // Let the pool try (and fail) to reconnect between attempts.
        pause(300).await;
    }
    // Changes are refused too, not broadcast.
    let first = acked[0].0.clone();
    a.send_json(&json!({"type": "edit", "message_id": first, "content": "edited offline", "ref": "edit-out"}))
        .await?;
    let events = events_until(&mut a, "the outcome of an edit during the outage", |v| {
        matches!(kind(v), "edit" | "error")
    })
    .await?;
    ensure!(
        events
            .last()
            .is_some_and(|v| kind(v) == "error" && v["ref"] == "edit-out"),
        "an edit during the outage: expected an error event, got {events:?}"
    );
    b.send_json(
        &json!({"type": "reaction", "message_id": first, "emoji": "👍", "ref": "react-out"}),
    )
    .await?;
    let events = events_until(&mut b, "the outcome of a reaction during the outage", |v| {
        matches!(kind(v), "reaction" | "error")
    })
    .await?;
    ensure!(
        events
            .last()
            .is_some_and(|v| kind(v) == "error" && v["ref"] == "react-out"),
        "a reaction during the outage: expected an error event, got {events:?}"
    );
    let bob_early = message_ids(&events);

    relay.restore();
    // The pool reconnects by itself; retry until a message is acknowledged.
    let mut recovered = false;
    for _ in 0..60 {
        let (content, outcome) = send_numbered(&mut a, &mut n, "recovering").await?;
        match outcome {
            Outcome::Acked(echo) => {
                acked.push((field(&echo, "message_id").to_string(), content));
                recovered = true;
                break;
            }
            Outcome::Refused(_) => {
                refused.push(content);
                pause(500).await;
            }
        }
    }
    ensure!(
        recovered,
        "no message was acknowledged in 60 attempts (30 s) after PostgreSQL came back"
    );
    for _ in 0..5 {
        let (content, outcome) = send_numbered(&mut a, &mut n, "after").await?;
        match outcome {
            Outcome::Acked(echo) => acked.push((field(&echo, "message_id").to_string(), content)),
            Outcome::Refused(err) => bail!("after recovery {content:?} was refused: {err}"),
        }
    }

    let history = full_history(&api, bob, &conv).await?;
    let stored: Vec<(String, String)> = history
        .iter()
        .map(|m| (field(m, "id").to_string(), field(m, "content").to_string()))
        .collect();
    ensure!(
        stored == acked,
        "history differs from the acknowledged messages:\nhistory {stored:?}\nacked   {acked:?}"
    );
    for content in &refused {
        ensure!(
            !stored.iter().any(|(_, c)| c == content),
            "{content:?} was refused but is in history"
        );
    }
    ensure!(
        history[0]["content"] == acked[0].1.as_str() && history[0]["is_edited"] == false,
        "the edit refused during the outage changed the message: {}",
        history[0]
    );
    // bob received exactly the acknowledged messages.
    let early = bob_early.len();
    ensure!(
        acked.len() >= early && bob_early.iter().zip(&acked).all(|(got, (id, _))| got == id),
        "bob's first messages {bob_early:?} differ from the acknowledged ones"
    );
    let got = collect_messages(&mut b, acked.len() - early).await?;
    let got: Vec<(String, String)> = acked[..early]
        .iter()
        .cloned()
        .chain(got.iter().map(|m| {
            (
                field(m, "message_id").to_string(),
                field(m, "content").to_string(),
            )
        }))
        .collect();
    ensure!(got == acked, "bob received {got:?}, acked {acked:?}");
    // The reaction refused during the outage was not stored: toggling adds it now.
    b.send_json(&json!({"type": "reaction", "message_id": first, "emoji": "👍"}))
        .await?;
    let reaction = b.recv_type("reaction").await?;
    ensure!(
        reaction["action"] == "added",
        "a reaction refused during the outage was stored: {reaction}"
    );
    // A new connection works too.
    let (mut b2, _) = join(srv, &conv, bob).await?;
    b2.send_message("new connection after the outage").await?;
    for ws in [a, b, b2] {
        ws.close().await?;
    }
    Ok(())
}

mod postgres_outage {
    #[tokio::test]
    async fn postgres_uring() -> anyhow::Result<()> {
        super::postgres_outage(tests::IoDriver::Uring).await
    }

    #[tokio::test]
    async fn postgres_epoll() -> anyhow::Result<()> {
        super::postgres_outage(tests::IoDriver::Epoll).await
    }
}
