//! When the store stalls, every wait is bounded, against the real binary and a store
//! stalled for real (the test holds a lock the server's writes need):
//!
//! - messages waiting for the writer are bounded in bytes (`--writer-queue-limit-bytes`):
//!   past the bound a sender gets `Server busy, message not sent; please retry` at
//!   once, and what was taken is committed and acknowledged once the store moves;
//! - edits, deletes and reactions waiting their turn in one conversation are bounded in
//!   count (`--changes-queue-limit`), with `Server busy, change not applied; please retry`;
//! - on the embedded store a REST write that cannot get the database answers 503 within
//!   the wait deadline, however many are waiting, instead of queueing behind each other.

use std::time::{Duration, Instant};

use tests::prelude::*;
use tests::realtime::*;

const MESSAGE_BUSY: &str = "Server busy, message not sent; please retry";
const CHANGE_BUSY: &str = "Server busy, change not applied; please retry";

/// Holds `LOCK TABLE messages IN EXCLUSIVE MODE` until dropped or released: every
/// write of a message (insert, edit, delete) waits, reads go on.
struct MessagesLocked(testkit::tokio_postgres::Client);

impl MessagesLocked {
    async fn take(srv: &TestServer) -> anyhow::Result<Self> {
        let sql = srv.sql().await?;
        sql.batch_execute("BEGIN; LOCK TABLE messages IN EXCLUSIVE MODE")
            .await?;
        Ok(Self(sql))
    }

    async fn release(self) -> anyhow::Result<()> {
        Ok(self.0.batch_execute("COMMIT").await?)
    }
}

/// Reads events until `n` of them satisfy `wanted`; returns those. Fails on a close.
async fn gather(
    ws: &mut WsClient,
    n: usize,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = ws.recv_json().await.with_context(|| {
            format!("waiting for {what} ({} of {n}); got {got:?}", got.len() + 1)
        })?;
        if wanted(&ev) {
            got.push(ev);
        }
    }
    Ok(got)
}

fn is_error(v: &Value, detail: &str) -> bool {
    kind(v) == "error" && field(v, "detail") == detail
}

/// Ten messages of 1,000 characters sent while the messages table is locked, under a
/// writer bound of 3,000 bytes: the first three are taken, the other seven refused at
/// once (each error carrying its `ref`). Once the lock goes, the three are
/// acknowledged, and history holds exactly them. A server without a byte bound takes
/// all ten.
async fn the_writer_queue_is_bounded_in_bytes(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([me], conv) = group(&api, &["bytes"]).await?;
    let (mut ws, _) = join(srv, &conv, &me).await?;
    let lock = MessagesLocked::take(srv).await?;

    let contents: Vec<String> = (0..10).map(|i| format!("{i}{}", "x".repeat(999))).collect();
    for (i, content) in contents.iter().enumerate() {
        ws.send_json(&json!({"type": "message", "content": content, "ref": format!("m{i}")}))
            .await?;
    }
    let refused = gather(&mut ws, 7, "the refusals", |v| is_error(v, MESSAGE_BUSY)).await?;
    let refs: Vec<&str> = refused.iter().map(|v| field(v, "ref")).collect();
    ensure!(
        refs == ["m3", "m4", "m5", "m6", "m7", "m8", "m9"],
        "refused: {refs:?}"
    );

    lock.release().await?;
    let acked = collect_messages(&mut ws, 3).await?;
    let acked: Vec<&str> = acked.iter().map(|v| field(v, "content")).collect();
    ensure!(acked == contents[..3], "acknowledged: {acked:?}");
    let history = full_history(&api, &me, &conv).await?;
    let stored: Vec<&str> = history.iter().map(|v| field(v, "content")).collect();
    ensure!(
        stored == contents[..3],
        "history: {} messages",
        stored.len()
    );
    // The bound was the queue, not the sender: a message goes through again.
    ws.send_message("after the stall").await?;
    Ok(())
}

/// Six edits of one message while the messages table is locked, under a chain bound
/// of two: two wait their turn, four are refused. Once the lock goes the two are
/// applied in order, and the message reads as the second.
async fn the_changes_of_a_conversation_are_bounded(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([me], conv) = group(&api, &["changes"]).await?;
    let (mut ws, _) = join(srv, &conv, &me).await?;
    let message = ws.send_message("to be edited").await?;
    let id = field(&message, "message_id").to_string();
    let lock = MessagesLocked::take(srv).await?;

    for i in 0..6 {
        ws.send_json(&json!({"type": "edit", "message_id": id, "content": format!("edit {i}")}))
            .await?;
    }
    gather(&mut ws, 4, "the refusals", |v| is_error(v, CHANGE_BUSY)).await?;

    lock.release().await?;
    let edits = gather(&mut ws, 2, "the edits", |v| kind(v) == "edit").await?;
    let applied: Vec<&str> = edits.iter().map(|v| field(v, "content")).collect();
    ensure!(applied == ["edit 0", "edit 1"], "applied: {applied:?}");
    let history = full_history(&api, &me, &conv).await?;
    ensure!(
        history.len() == 1 && field(&history[0], "content") == "edit 1",
        "history: {history:?}"
    );
    Ok(())
}

tests::e2e_on!(
    the_writer_queue_is_bounded_in_bytes,
    |o| super::no_rate_limit(o).arg("--writer-queue-limit-bytes").arg("3000"),
    [postgres_uring => (Postgres, Uring)]
);
tests::e2e_on!(
    the_changes_of_a_conversation_are_bounded,
    |o| super::no_rate_limit(o).arg("--changes-queue-limit").arg("2"),
    [postgres_uring => (Postgres, Uring)]
);

/// How long the test holds the embedded database's write lock: past the server's
/// busy timeout (5 s) and its wait deadline (4 s), so every write waiting meanwhile
/// must give up on its own.
const HELD: Duration = Duration::from_secs(12);

/// Three REST writes while another process holds the embedded database's write lock:
/// each is answered 503 within the deadlines (the first after the busy timeout, the
/// others after waiting for the writer connection), none waits for those before it.
/// Reads go on meanwhile; once the lock goes, writes succeed again.
async fn a_stalled_embedded_store_answers_503_in_time(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let me = api.new_user("stalled").await?;
    let file = srv
        .data_dir()
        .context("an embedded store's data directory")?
        .join("chat.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || -> anyhow::Result<()> {
        let db = rusqlite::Connection::open(&file)?;
        db.execute_batch("BEGIN EXCLUSIVE")?;
        locked_tx.send(())?;
        std::thread::sleep(HELD);
        db.execute_batch("COMMIT")?;
        Ok(())
    });
    tokio::task::spawn_blocking(move || locked_rx.recv()).await??;

    let started = Instant::now();
    let writes = (0..3).map(|i| {
        let (api, me) = (api.clone(), me.clone());
        async move {
            let body = json!({"name": format!("stalled {i}"), "participant_ids": []});
            let reply = api.create_conversation_raw(&me, &body).await?;
            anyhow::Ok((reply, started.elapsed()))
        }
    });
    for (reply, after) in futures_util::future::try_join_all(writes).await? {
        reply.expect_status(503)?;
        // 5 s of busy timeout at most, plus slack for a loaded machine; queued behind
        // each other the third would answer after 15 s.
        ensure!(after < Duration::from_secs(9), "answered after {after:?}");
    }
    ensure!(
        started.elapsed() < HELD,
        "the answers outlasted the lock, so they did not test the deadline"
    );
    api.list_conversations(&me).await?.expect_status(200)?;

    tokio::task::spawn_blocking(move || holder.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the lock holder panicked"))??;
    api.new_conversation(&me, "after the stall", &[]).await?;
    Ok(())
}

tests::e2e_on!(
    a_stalled_embedded_store_answers_503_in_time,
    |o| o,
    [sqlite_uring => (Sqlite, Uring)]
);
