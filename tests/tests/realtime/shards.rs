//! Delivery across shards and message order: every connection of a conversation gets
//! every `message` event exactly once, all in the same order, the order of history.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;
use tests::realtime::*;
use tokio::task::JoinHandle;

/// Waits for every client task and returns their results in order; a task that
/// panicked or failed fails the test.
async fn finish_all<T>(tasks: Vec<JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<Vec<T>> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("client task panicked")??);
    }
    Ok(results)
}

/// The ids of a whole history, which must be `total` ids without duplicates.
fn distinct_history_ids(history: &[Value], total: usize) -> anyhow::Result<Vec<String>> {
    let ids = history_ids(history);
    ensure!(
        ids.len() == total && duplicates(&ids).is_empty(),
        "history has {} messages ({} duplicated ids), expected {total}",
        ids.len(),
        duplicates(&ids).len()
    );
    Ok(ids)
}

/// 4 shards, 4 users with 3 tabs each (12 connections, spread over the shards by
/// SO_REUSEPORT): each tab sends messages concurrently; every tab receives every
/// message exactly once, in the same order as every other tab and as history. Then the
/// tabs of one user close one by one: `left` only after the last.
async fn cross_shard_fanout(srv: &TestServer) -> anyhow::Result<()> {
    const USERS: usize = 4;
    const TABS: usize = 3;
    const PER_TAB: usize = 3;
    let api = srv.api();
    let (users, conv) = group(&api, &["u0", "u1", "u2", "u3"]).await?;

    // Connect one after the other; each tab then knows how many joined events follow.
    let mut clients = Vec::new();
    for tab in 0..TABS {
        for user in &users {
            let (ws, joined) = join(srv, &conv, user).await?;
            let present: Vec<&Session> = users
                .iter()
                .take(if tab == 0 { clients.len() + 1 } else { USERS })
                .collect();
            ensure!(
                active_users(&joined)? == user_ids(&present),
                "tab {tab} of {}: {joined}",
                user.username
            );
            ensure!(
                joined["active_users"].as_array().map(Vec::len) == Some(present.len()),
                "a user listed twice: {joined}"
            );
            clients.push((user.clone(), tab, ws));
        }
    }
    let total = USERS * TABS * PER_TAB;

    // Everyone sends and reads at once.
    let mut tasks = Vec::new();
    for (user, tab, mut ws) in clients {
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..PER_TAB {
                let content = format!("{}-tab{tab}-{i}", user.username);
                ws.send_json(&json!({"type": "message", "content": content}))
                    .await?;
                sent.push(content);
            }
            let got = collect_messages(&mut ws, total)
                .await
                .with_context(|| format!("{} tab {tab}", user.username))?;
            anyhow::Ok((user, tab, ws, sent, got))
        }));
    }
    let results = finish_all(tasks).await?;

    let history = full_history(&api, &users[0], &conv).await?;
    let expected = distinct_history_ids(&history, total)?;
    let mut all_sent: Vec<String> = results.iter().flat_map(|r| r.3.clone()).collect();
    all_sent.sort();
    let mut stored: Vec<String> = history
        .iter()
        .map(|m| field(m, "content").to_string())
        .collect();
    stored.sort();
    ensure!(
        stored == all_sent,
        "history contents differ from what was sent"
    );

    for (user, tab, _, _, got) in &results {
        let ids = message_ids(got);
        ensure!(
            duplicates(&ids).is_empty(),
            "{} tab {tab} got duplicates: {:?}",
            user.username,
            duplicates(&ids)
        );
        let missing: Vec<&String> = expected.iter().filter(|id| !ids.contains(id)).collect();
        ensure!(
            missing.is_empty(),
            "{} tab {tab} missed {missing:?}",
            user.username
        );
        ensure!(
            ids == expected,
            "{} tab {tab} got the messages in another order than history:\n{ids:?}\nvs\n{expected:?}",
            user.username
        );
    }

    // A sentinel: nothing (no late duplicate) arrives before it.
    let mut clients: Vec<(Session, usize, WsClient)> = results
        .into_iter()
        .map(|(user, tab, ws, _, _)| (user, tab, ws))
        .collect();
    clients[0]
        .2
        .send_json(&json!({"type": "message", "content": "sentinel"}))
        .await?;
    for (user, tab, ws) in clients.iter_mut() {
        let events = events_until(ws, "the sentinel", |v| is_message_with(v, "sentinel")).await?;
        ensure!(
            events.len() == 1,
            "{} tab {tab} got more than the sentinel: {events:?}",
            user.username
        );
    }

    // Other broadcasts across the shards: u0 types (not to u0's tabs), u1 sets a
    // presence, u2 edits its first message and u3 reacts to it. Every tab gets each
    // exactly once (a sentinel message afterwards catches late duplicates).
    let target = history
        .iter()
        .find(|m| m["sender_id"] == users[2].user_id.as_str())
        .map(|m| field(m, "id").to_string())
        .context("no message of u2 in history")?;
    clients[0].2.send_json(&json!({"type": "typing"})).await?;
    clients[1]
        .2
        .send_json(&json!({"type": "presence", "status": "away"}))
        .await?;
    clients[2]
        .2
        .send_json(
            &json!({"type": "edit", "message_id": target, "content": "edited across shards"}),
        )
        .await?;
    clients[3]
        .2
        .send_json(&json!({"type": "reaction", "message_id": target, "emoji": "🎉"}))
        .await?;
    let mut seen = Vec::new();
    for (user, tab, ws) in clients.iter_mut() {
        let mut events = Vec::new();
        let wanted = ["presence", "edit", "reaction"];
        while !wanted
            .iter()
            .all(|w| events.iter().any(|v: &Value| kind(v) == *w))
        {
            let ev = ws.recv_json().await.with_context(|| {
                format!(
                    "{} tab {tab} waiting for {wanted:?}; got {events:?}",
                    user.username
                )
            })?;
            ensure!(kind(&ev) != "error", "{} tab {tab}: {ev}", user.username);
            events.push(ev);
        }
        seen.push(events);
    }
    clients[0]
        .2
        .send_json(&json!({"type": "message", "content": "sentinel 2"}))
        .await?;
    for ((user, tab, ws), events) in clients.iter_mut().zip(seen.iter_mut()) {
        events.extend(
            events_until(ws, "the second sentinel", |v| {
                is_message_with(v, "sentinel 2")
            })
            .await?,
        );
        let count = |k: &str| events.iter().filter(|v| kind(v) == k).count();
        let typing = if user.user_id == users[0].user_id {
            0
        } else {
            1
        };
        ensure!(
            count("typing") == typing
                && count("presence") == 1
                && count("edit") == 1
                && count("reaction") == 1
                && count("message") == 1
                && events.len() == typing + 4,
            "{} tab {tab}: expected typing x{typing}, presence, edit, reaction and the \
             sentinel once each, got {events:?}",
            user.username
        );
        let edit = events.iter().find(|v| kind(v) == "edit").unwrap();
        ensure!(
            edit["message_id"] == target.as_str() && edit["content"] == "edited across shards",
            "{edit}"
        );
        let reaction = events.iter().find(|v| kind(v) == "reaction").unwrap();
        ensure!(
            reaction["sender_id"] == users[3].user_id.as_str() && reaction["action"] == "added",
            "{reaction}"
        );
    }

    // u0's tabs close one by one: only the last one is a leave.
    let leaver = users[0].clone();
    let mut leaving = Vec::new();
    let mut staying = Vec::new();
    for (user, tab, ws) in clients {
        if user.user_id == leaver.user_id {
            leaving.push(ws);
        } else {
            staying.push((user, tab, ws));
        }
    }
    let last = leaving.pop().context("u0 has no tabs")?;
    for ws in leaving {
        ws.close().await?;
    }
    staying[0]
        .2
        .send_json(&json!({"type": "message", "content": "sentinel 3"}))
        .await?;
    for (user, tab, ws) in staying.iter_mut() {
        let events = events_until(ws, "the third sentinel", |v| {
            is_message_with(v, "sentinel 3")
        })
        .await?;
        ensure!(
            !events.iter().any(|v| is_left(v, &leaver)),
            "{} tab {tab} saw u0 leave while u0 still has a tab open: {events:?}",
            user.username
        );
    }
    last.close().await?;
    for (user, tab, ws) in staying.iter_mut() {
        let left = ws
            .wait_for("u0's left event", |v| is_left(v, &leaver))
            .await
            .with_context(|| format!("{} tab {tab}", user.username))?;
        ensure!(
            active_users(&left)? == user_ids(&[&users[1], &users[2], &users[3]]),
            "{left}"
        );
    }
    for (_, _, ws) in staying {
        ws.close().await?;
    }
    Ok(())
}

/// 4 senders on their own connections fire 50 messages each at once, without waiting;
/// two more users (one with two tabs) only read. Every connection sees the same 200
/// message ids in the same order, which is the order of history; each sender's
/// messages keep the order in which it sent them.
async fn concurrent_senders_one_order(srv: &TestServer) -> anyhow::Result<()> {
    const SENDERS: usize = 4;
    const EACH: usize = 50;
    let total = SENDERS * EACH;
    let api = srv.api();
    let (users, conv) = group(&api, &["s0", "s1", "s2", "s3", "r0", "r1"]).await?;

    let mut clients = Vec::new();
    for user in &users {
        clients.push((user.clone(), join(srv, &conv, user).await?.0));
    }
    clients.push((users[4].clone(), join(srv, &conv, &users[4]).await?.0));

    let mut tasks = Vec::new();
    for (i, (user, mut ws)) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            if i < SENDERS {
                for n in 0..EACH {
                    ws.send_json(&json!({"type": "message", "content": format!("s{i}-{n:03}")}))
                        .await?;
                }
            }
            let got = collect_messages(&mut ws, total)
                .await
                .with_context(|| format!("connection {i} ({})", user.username))?;
            ws.close().await?;
            anyhow::Ok((i, got))
        }));
    }
    let results = finish_all(tasks).await?;

    let history = full_history(&api, &users[0], &conv).await?;
    let expected = distinct_history_ids(&history, total)?;
    for (i, got) in &results {
        let ids = message_ids(got);
        if ids != expected {
            let first_diff = ids
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(ids.len().min(expected.len()));
            bail!(
                "connection {i} saw another order than history: first difference at \
                 position {first_diff} of {} (got {} ids, {} duplicated)",
                expected.len(),
                ids.len(),
                duplicates(&ids).len()
            );
        }
    }
    // Each sender's messages in its sending order; history content matches events.
    let events = &results[0].1;
    for (m, ev) in history.iter().zip(events) {
        ensure!(m["content"] == ev["content"], "{m} vs {ev}");
        ensure!(m["sender_id"] == ev["sender_id"], "{m} vs {ev}");
    }
    for s in 0..SENDERS {
        let prefix = format!("s{s}-");
        let mine: Vec<&str> = history
            .iter()
            .map(|m| field(m, "content"))
            .filter(|c| c.starts_with(&prefix))
            .collect();
        let want: Vec<String> = (0..EACH).map(|n| format!("s{s}-{n:03}")).collect();
        ensure!(
            mine == want,
            "sender {s}'s messages are not in sending order: {mine:?}"
        );
    }
    Ok(())
}

tests::e2e_on!(cross_shard_fanout, |o| o.shards(4), [
    sqlite_uring => (Sqlite, Uring),
    sqlite_epoll => (Sqlite, Epoll),
]);

tests::e2e!(options = |o| o.shards(4); concurrent_senders_one_order);
