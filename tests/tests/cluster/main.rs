//! Several nodes on one PostgreSQL database and one Redis (`--redis-url`): what a
//! client of one node sees of what is said on the others. Each test starts its own
//! cluster (its own database and Redis key prefix), so they run in parallel.

use tests::cluster::{ClusterOptions, TestCluster};
use tests::prelude::*;
use tests::realtime::{collect_messages, events_until, group, is_joined, is_left, join, user_ids};
use tests::ws::ws_url;

mod deleted;
mod manage;
mod sessions;
mod user_stream;

async fn with_cluster<F>(opts: ClusterOptions, scenario: F)
where
    F: for<'a> FnOnce(
        &'a mut TestCluster,
    ) -> futures_util::future::LocalBoxFuture<'a, anyhow::Result<()>>,
{
    let mut cluster = TestCluster::start(opts)
        .await
        .unwrap_or_else(|e| panic!("could not start the cluster: {e:#}"));
    let result = scenario(&mut cluster).await;
    cluster.finish(result);
}

fn seq(v: &Value) -> anyhow::Result<u64> {
    v["seq"].as_u64().with_context(|| format!("no seq in {v}"))
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn active(v: &Value) -> anyhow::Result<Vec<String>> {
    tests::realtime::active_users(v).map(sorted)
}

/// Checks that `stream` is every position from `first` on, once, in order.
fn gapless(stream: &[Value], what: &str) -> anyhow::Result<u64> {
    let first = seq(&stream[0])?;
    for (i, v) in stream.iter().enumerate() {
        ensure!(
            seq(v)? == first + i as u64,
            "{what}: position {} at index {i} (first {first}): {stream:?}",
            seq(v)?
        );
    }
    Ok(first)
}

/// Six users, two per node, send at once; every connection on every node gets every
/// message once, in one order, and that order is history's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_nodes_is_exactly_once_in_one_order() {
    with_cluster(ClusterOptions::new(3), |c| {
        Box::pin(async move {
            let api = c.api(0);
            let (users, conv) = group(&api, &["fa", "fb", "fc", "fd", "fe", "ff"]).await?;
            let mut clients = Vec::new();
            for (i, user) in users.iter().enumerate() {
                clients.push(join(c.node(i % 3), &conv, user).await?.0);
            }
            let published = c.listen()?;
            const EACH: usize = 15;
            for k in 0..EACH {
                for (i, ws) in clients.iter_mut().enumerate() {
                    ws.send_json(&json!({
                        "type": "message",
                        "content": format!("m{i}-{k}"),
                        "client_id": format!("c{i}-{k}"),
                    }))
                    .await?;
                }
            }
            let total = EACH * clients.len();
            let mut streams = Vec::new();
            for (i, ws) in clients.iter_mut().enumerate() {
                let got = collect_messages(ws, total)
                    .await
                    .with_context(|| format!("client {i} on node {}", i % 3))?;
                gapless(&got, &format!("client {i}"))?;
                streams.push(got);
            }
            for (i, s) in streams.iter().enumerate() {
                ensure!(
                    s == &streams[0],
                    "client {i} saw another order than client 0"
                );
            }
            for i in 0..clients.len() {
                let own: Vec<&str> = streams[0]
                    .iter()
                    .filter_map(|v| v["content"].as_str())
                    .filter(|t| t.starts_with(&format!("m{i}-")))
                    .collect();
                let sent: Vec<String> = (0..EACH).map(|k| format!("m{i}-{k}")).collect();
                ensure!(own == sent, "sender {i}'s messages out of order: {own:?}");
            }
            let history = api.history_list(&users[0], &conv, "limit=100").await?;
            let history_ids = ids(&history);
            let stream_ids: Vec<String> = streams[0]
                .iter()
                .map(|v| v["message_id"].as_str().unwrap_or_default().to_string())
                .collect();
            ensure!(
                history_ids == stream_ids,
                "history order differs from delivery"
            );
            // Nothing more is owed to anyone: the next message is the next event.
            clients[0]
                .send_json(&json!({"type": "message", "content": "last"}))
                .await?;
            for (i, ws) in clients.iter_mut().enumerate() {
                let next = collect_messages(ws, 1).await?;
                ensure!(next[0]["content"] == "last", "client {i}: {next:?}");
            }
            // One publish per committed event, however many recipients on however many
            // nodes: the payload's tag (after the 16-byte node id) says what it carries.
            let count = || {
                published
                    .messages()
                    .iter()
                    .filter(|(channel, payload)| {
                        channel.ends_with(&conv) && payload.get(16) == Some(&b'E')
                    })
                    .count()
            };
            // Every client has the last message, so it was published; the listener
            // may read it a moment later.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while count() < total + 1 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let events = count();
            ensure!(
                events == total + 1,
                "{events} events published for {} committed",
                total + 1
            );
            Ok(())
        })
    })
    .await;
}

/// A user with a tab on each of two nodes is listed once and leaves only with their
/// last tab; typing reaches the others on every node and not the typist's own tabs; a
/// removal on one node closes the removed user's socket on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_typing_and_removal_across_nodes() {
    with_cluster(ClusterOptions::new(3), |c| {
        Box::pin(async move {
            let api = c.api(0);
            let ([a, b, d], conv) = group(&api, &["pa", "pb", "pd"]).await?;
            let (mut a0, _) = join(c.node(0), &conv, &a).await?;
            let (mut a1, joined) = join(c.node(1), &conv, &a).await?;
            ensure!(
                active(&joined)? == user_ids(&[&a]),
                "two tabs, one user: {joined}"
            );
            let (mut b2, joined) = join(c.node(2), &conv, &b).await?;
            ensure!(active(&joined)? == user_ids(&[&a, &b]), "{joined}");
            let seen = a0
                .wait_for("b's joined event on node 0", |v| is_joined(v, &b))
                .await?;
            ensure!(active(&seen)? == user_ids(&[&a, &b]), "{seen}");
            a1.wait_for("b's joined event on node 1", |v| is_joined(v, &b))
                .await?;

            // Typing: to the others, on every node; not to the typist's other tab.
            a0.send_json(&json!({"type": "typing"})).await?;
            let typing = b2.recv_type("typing").await?;
            ensure!(typing["sender_id"] == a.user_id.as_str(), "{typing}");
            a0.send_json(&json!({"type": "message", "content": "after typing"}))
                .await?;
            let on_a1 =
                events_until(&mut a1, "the message", |v| v["content"] == "after typing").await?;
            ensure!(
                on_a1.iter().all(|v| v["type"] != "typing"),
                "the typist's own tab got its typing: {on_a1:?}"
            );

            // a's tab on node 0 closes: a is still here (node 1). A later joiner on node
            // 0, recorded after that leave, proves it.
            a0.close().await?;
            let (mut d0, joined) = join(c.node(0), &conv, &d).await?;
            ensure!(active(&joined)? == user_ids(&[&a, &b, &d]), "{joined}");
            let on_b = events_until(&mut b2, "d's joined event", |v| is_joined(v, &d)).await?;
            ensure!(
                !on_b.iter().any(|v| is_left(v, &a)),
                "a left with a tab still open: {on_b:?}"
            );
            // Their last tab closes: now they left, everywhere.
            a1.close().await?;
            let left = b2.wait_for("a's left event", |v| is_left(v, &a)).await?;
            ensure!(active(&left)? == user_ids(&[&b, &d]), "{left}");
            d0.wait_for("a's left event on node 0", |v| is_left(v, &a))
                .await?;

            // The creator removes b through node 0; b's socket is on node 2.
            api.remove_participant(&a, &conv, &b.user_id)
                .await?
                .expect_status(204)?;
            let close = b2.recv_close().await?;
            ensure!(
                close.as_ref().map(|(code, _)| *code) == Some(1008),
                "b's socket on node 2: {close:?}"
            );
            Ok(())
        })
    })
    .await;
}

/// `kill -9` of a node in the middle of a burst: nothing it acknowledged is lost, its
/// users leave presence within the node TTL, its client resumes on another node with
/// `since` and misses nothing, resending the burst there with the same `client_id`s
/// stores each message once, and positions go on without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_its_users_leave() {
    let mut opts = ClusterOptions::new(3);
    opts.node_ttl = 2.0;
    with_cluster(opts, |c| {
        Box::pin(async move {
            let api = c.api(0);
            let ([x, y, z], conv) = group(&api, &["kx", "ky", "kz"]).await?;
            let (mut x0, _) = join(c.node(0), &conv, &x).await?;
            let (mut y1, _) = join(c.node(1), &conv, &y).await?;
            let (mut z2, _) = join(c.node(2), &conv, &z).await?;
            let mut acked = Vec::new();
            for k in 0..5 {
                for ws in [&mut x0, &mut z2] {
                    let content = format!("before-{k}-{}", acked.len());
                    acked.push(ws.send_message(&content).await?);
                }
            }
            // z's own echo came last: z has seen everything up to it.
            let mut z_seen = seq(acked.last().context("sent")?)?;
            // A burst without waiting; the node dies under it, some of it acknowledged,
            // some committed unacknowledged, some never taken.
            const BURST: usize = 30;
            for k in 0..BURST {
                z2.send_json(&json!({
                    "type": "message",
                    "content": format!("burst-{k}"),
                    "client_id": format!("zb-{k}"),
                }))
                .await?;
            }
            let burst_acked = collect_messages(&mut z2, 3).await?;
            z_seen = seq(burst_acked.last().context("acked")?)?.max(z_seen);
            acked.extend(burst_acked);
            c.node_mut(2).kill9()?;

            let left = x0
                .wait_for("z's left event after the kill", |v| is_left(v, &z))
                .await?;
            ensure!(active(&left)? == user_ids(&[&x, &y]), "{left}");
            y1.wait_for("z's left event on node 1", |v| is_left(v, &z))
                .await?;

            // Said while z was away, on both surviving nodes.
            for k in 0..3 {
                acked.push(x0.send_message(&format!("during-x-{k}")).await?);
                acked.push(y1.send_message(&format!("during-y-{k}")).await?);
            }
            let missed: Vec<Value> = api
                .history_list(&x, &conv, "limit=100")
                .await?
                .into_iter()
                .filter(|h| h["seq"].as_u64() > Some(z_seen))
                .collect();
            // z comes back on node 1 from where its stream stood.
            let url = format!(
                "{}&since={z_seen}",
                ws_url(&c.node(1).ws_base_url(), &conv, &z.token)
            );
            let mut z1 = WsClient::connect_url(&url).await?;
            let replayed = collect_messages(&mut z1, missed.len()).await?;
            let first = gapless(&replayed, "z's replay")?;
            ensure!(
                first == z_seen + 1,
                "replay starts at {first}, z saw {z_seen}"
            );
            let contents: Vec<&Value> = replayed.iter().map(|v| &v["content"]).collect();
            let stored: Vec<&Value> = missed.iter().map(|v| &v["content"]).collect();
            ensure!(
                contents == stored,
                "replayed {contents:?}, history {stored:?}"
            );

            // Unsure what the dead node took, z sends the whole burst again.
            for k in 0..BURST {
                let (content, client_id) = (format!("burst-{k}"), format!("zb-{k}"));
                z1.send_json(
                    &json!({"type": "message", "content": content, "client_id": client_id}),
                )
                .await?;
                let answer = z1
                    .wait_for(&format!("the answer to {client_id}"), |v| {
                        v["type"] == "message" && v["client_id"] == client_id.as_str()
                    })
                    .await?;
                ensure!(answer["content"] == content.as_str(), "{answer}");
            }

            let history = api.history_list(&x, &conv, "limit=100").await?;
            for m in &acked {
                ensure!(
                    history.iter().any(|h| h["id"] == m["message_id"]),
                    "acknowledged message lost: {m}"
                );
            }
            for k in 0..BURST {
                let copies = history
                    .iter()
                    .filter(|h| h["content"] == format!("burst-{k}").as_str())
                    .count();
                ensure!(copies == 1, "burst-{k} stored {copies} times");
            }
            let positions: Vec<u64> = history.iter().filter_map(|h| h["seq"].as_u64()).collect();
            ensure!(
                positions == (1..=positions.len() as u64).collect::<Vec<_>>(),
                "positions across the kill: {positions:?}"
            );
            Ok(())
        })
    })
    .await;
}

/// Redis goes away mid-stream and comes back: each node keeps serving its own
/// connections and says `redis: degraded`; afterwards every connection has every
/// committed event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_filled_from_the_store_once_it_ends() {
    let mut opts = ClusterOptions::new(2);
    opts.via_relay = true;
    with_cluster(opts, |c| {
        Box::pin(async move {
            c.wait_redis_everywhere("ok").await?;
            let api = c.api(0);
            let ([a, b], conv) = group(&api, &["ra", "rb"]).await?;
            let (mut a0, _) = join(c.node(0), &conv, &a).await?;
            let (mut b1, _) = join(c.node(1), &conv, &b).await?;
            a0.send_message("before").await?;
            let before = collect_messages(&mut b1, 1).await?;
            ensure!(before[0]["content"] == "before", "{before:?}");

            c.cut_redis().await?;
            let own = b1
                .send_message("b during")
                .await
                .context("node 1 serves its own connection alone")?;
            for k in 0..5 {
                a0.send_message(&format!("during-{k}")).await?;
            }

            c.restore_redis().await?;
            let missed = collect_messages(&mut b1, 5).await?;
            let contents: Vec<&str> = missed
                .iter()
                .filter_map(|v| v["content"].as_str())
                .collect();
            ensure!(
                contents == ["during-0", "during-1", "during-2", "during-3", "during-4"],
                "b after the outage: {contents:?}"
            );
            ensure!(
                gapless(&missed, "b's missed events")? == seq(&own)? + 1,
                "b's missed events follow its own message: {missed:?}"
            );
            a0.send_message("after").await?;
            let next = collect_messages(&mut b1, 1).await?;
            ensure!(next[0]["content"] == "after", "nothing twice: {next:?}");
            Ok(())
        })
    })
    .await;
}

/// A user's event budget is one across nodes: two tabs on two nodes that send as fast
/// as they can share it, instead of getting a budget each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rate_limit_holds_across_nodes() {
    let mut opts = ClusterOptions::new(2);
    let (rate, burst) = (1.0, 10.0);
    opts.rate = (rate, burst);
    with_cluster(opts, |c| {
        Box::pin(async move {
            let api = c.api(0);
            // The budget is shared while Redis answers (each node falls back to its own
            // otherwise).
            c.wait_redis_everywhere("ok").await?;
            let ([a, b], conv) = group(&api, &["la", "lb"]).await?;
            let (mut tab0, _) = join(c.node(0), &conv, &a).await?;
            let (mut tab1, _) = join(c.node(1), &conv, &a).await?;
            let (_watcher, _) = join(c.node(1), &conv, &b).await?;
            const EACH: usize = 25;
            let started = std::time::Instant::now();
            for k in 0..EACH {
                for tab in [&mut tab0, &mut tab1] {
                    tab.send_json(&json!({"type": "typing", "ref": format!("t{k}")}))
                        .await?;
                }
            }
            let mut refused = 0;
            for tab in [&mut tab0, &mut tab1] {
                // Events of a connection are taken in order: once the last one is
                // answered (a pong, or its refusal), every earlier one was decided.
                tab.send_json(&json!({"type": "ping", "ref": "last"})).await?;
                let seen = events_until(tab, "the answer to the last event", |v| {
                    v["type"] == "pong" || v["ref"] == "last"
                })
                .await?;
                refused += seen
                    .iter()
                    .filter(|v| v["detail"] == "Rate limit exceeded")
                    .filter(|v| v["ref"] != "last")
                    .count();
            }
            let elapsed = started.elapsed().as_secs_f64();
            let taken = 2 * EACH - refused;
            // The burst, what refilled meanwhile, and at most one unspent lease (one
            // token at this rate) per shard of each node.
            let bound = burst + rate * elapsed + 4.0;
            ensure!(
                (taken as f64) <= bound,
                "{taken} events taken in {elapsed:.1} s: a budget per node, not one per user (bound {bound:.1})"
            );
            ensure!(taken >= burst as usize, "the burst itself was refused: {taken}");
            Ok(())
        })
    })
    .await;
}

/// The guide's Python snippet (`websockets`), twice, on two nodes: alice says hello
/// on node 0, bob answers from node 1 once he has heard her; each prints what the
/// guide's loop prints. The library pings every 0.2 s and fails on any protocol error.
const PYTHON_PAIR: &str = r#"
import asyncio
import json
import sys

import websockets

async def chat(uri, say_first, reply):
    printed = []
    async with websockets.connect(uri, ping_interval=0.2) as websocket:
        if say_first:
            await websocket.send(json.dumps({'type': 'message', 'content': say_first}))
        async for message in websocket:
            data = json.loads(message)
            if data['type'] == 'message':
                printed.append(f"{data['sender_username']}: {data['content']}")
                if reply and data['content'] != reply:
                    await websocket.send(json.dumps({'type': 'message', 'content': reply}))
                elif data['content'] == (reply or 'Hello from node 1'):
                    break
    return {'printed': printed, 'close_code': websocket.close_code}

async def main(alice_uri, bob_uri):
    bob = asyncio.create_task(chat(bob_uri, None, 'Hello from node 1'))
    await asyncio.sleep(0.5)
    alice = await chat(alice_uri, 'Hello from node 0', None)
    print(json.dumps({'alice': alice, 'bob': await bob}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_python_clients_talk_across_nodes() {
    with_cluster(ClusterOptions::new(2), |c| {
        Box::pin(async move {
            let api = c.api(0);
            let ([alice, bob], conv) = group(&api, &["pya", "pyb"]).await?;
            let args = [
                "-c".to_string(),
                PYTHON_PAIR.to_string(),
                ws_url(&c.node(0).ws_base_url(), &conv, &alice.token),
                ws_url(&c.node(1).ws_base_url(), &conv, &bob.token),
            ];
            let out = tests::python::run("websockets", "websockets", &args).await?;
            let got: Value = serde_json::from_str(out.trim())
                .with_context(|| format!("python printed {out}"))?;
            let said = json!([
                format!("{}: Hello from node 0", alice.username),
                format!("{}: Hello from node 1", bob.username),
            ]);
            ensure!(got["alice"]["printed"] == said, "alice: {got}");
            ensure!(got["bob"]["printed"] == said, "bob: {got}");
            ensure!(
                got["alice"]["close_code"] == 1000 && got["bob"]["close_code"] == 1000,
                "not closed cleanly: {got}"
            );
            Ok(())
        })
    })
    .await;
}

/// A conversation past the presence list limit across two nodes: 230 members join at
/// once, half on each node. Each sees its own `joined`; the watcher's announcements
/// carry the count for the whole cluster, never the list, until everyone is counted;
/// either node pages the list of all of them from Redis; and the leaves are counted
/// down again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_across_nodes_counts_everyone_once() {
    let mut opts = ClusterOptions::new(2);
    // Hundreds of members are registered from one address.
    opts.env
        .push(("REGISTER_MAX_PER_ADDRESS".into(), "0".into()));
    with_cluster(opts, |c| {
        Box::pin(async move {
            let n = 230;
            let (users, conv) = tests::realtime::room(c.node(0), n).await?;
            let (mut watcher, _) = join(c.node(0), &conv, &users[0]).await?;
            let mut storm = tokio::task::JoinSet::new();
            for (i, who) in users[1..].iter().cloned().enumerate() {
                let base = c.node(i % 2).ws_base_url();
                let conv = conv.clone();
                storm.spawn(async move {
                    let mut ws = tests::WsClient::connect(&base, &conv, &who.token).await?;
                    let own = ws
                        .wait_for("its own joined event", |v| is_joined(v, &who))
                        .await?;
                    anyhow::Ok((ws, own))
                });
            }
            let mut clients = Vec::new();
            while let Some(joined) = storm.join_next().await {
                let (ws, own) = joined??;
                ensure!(own["seq"].is_u64(), "{own}");
                clients.push(ws);
            }
            loop {
                let ev = watcher.recv_json().await?;
                if ev["type"] != "system" {
                    continue;
                }
                let count = ev["active_count"].as_u64().context("active_count")?;
                ensure!(
                    ev.get("active_users").is_none() || count <= 200,
                    "a list past the limit: {ev}"
                );
                if count == n as u64 {
                    break;
                }
            }
            let page = c
                .api(1)
                .presence(&users[0], &conv, "limit=1000")
                .await?
                .expect(200)?;
            ensure!(page["active_count"] == n as u64, "{page}");
            let mut listed: Vec<String> = page["users"]
                .as_array()
                .context("users")?
                .iter()
                .map(|u| u["id"].as_str().unwrap_or_default().to_string())
                .collect();
            listed.sort();
            ensure!(
                listed == sorted(users.iter().map(|u| u.user_id.clone()).collect()),
                "node 1 does not list every member once"
            );
            for ws in clients {
                ws.close().await?;
            }
            loop {
                let ev = watcher.recv_json().await?;
                if ev["type"] == "system" && ev["active_count"] == 1 {
                    break;
                }
            }
            Ok(())
        })
    })
    .await;
}
