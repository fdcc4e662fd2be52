//! The user stream across nodes: a stream on one node hears a conversation whose
//! other members are on another, with one order; additions travel through the inbox
//! channel, removals and read markers through the conversation's; a resume on another
//! node after an absence misses nothing.

use tests::cluster::ClusterOptions;
use tests::prelude::*;
use tests::realtime::{join, kind};

use super::{gapless, with_cluster};

fn in_conversation(conv: &str, ty: &'static str) -> impl Fn(&Value) -> bool {
    let conv = conv.to_string();
    move |v| kind(v) == ty && v["conversation_id"] == conv
}

/// Alice's stream on node 0, her second device's on node 1, bob on node 1: bob creates
/// a conversation with her on node 1 and both her streams hear of it; his messages
/// reach her in order and hers through the stream reach him; her read marker reaches
/// her other device and a receipt reaches bob; his removal of her reaches her stream
/// on node 0, and nothing of the conversation follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stream_hears_every_node() {
    with_cluster(ClusterOptions::new(2), |c| {
        Box::pin(async move {
            let api = c.api(1);
            let [alice, bob] = api.new_users(["csa", "csb"]).await?;
            let (mut laptop, _) =
                WsClient::connect_stream(&c.node(0).ws_base_url(), &alice.token).await?;
            let (mut phone, _) =
                WsClient::connect_stream(&c.node(1).ws_base_url(), &alice.token).await?;
            laptop.start(&[]).await?;
            phone.start(&[]).await?;

            let conv = api.new_conversation(&bob, "across", &[&alice]).await?;
            for (ws, name) in [(&mut laptop, "node 0"), (&mut phone, "node 1")] {
                let added = ws
                    .recv_type("conversation")
                    .await
                    .with_context(|| format!("the addition on {name}"))?;
                ensure!(added["action"] == "added" && added["conversation"]["id"] == conv.as_str(), "{name}: {added}");
            }
            let (mut b, _) = join(c.node(1), &conv, &bob).await?;
            for i in 0..10 {
                b.send_message(&format!("bob {i}")).await?;
            }
            let mut got = Vec::new();
            while got.len() < 10 {
                let v = laptop.wait_for("bob's messages", in_conversation(&conv, "message")).await?;
                got.push(v);
            }
            gapless(&got, "alice's stream on node 0")?;

            laptop
                .send_json(&json!({"type": "message", "conversation_id": conv, "content": "from node 0", "client_id": "x"}))
                .await?;
            let heard = b.wait_for("alice's message", |v| v["content"] == "from node 0").await?;
            ensure!(heard["seq"] == 11, "{heard}");

            laptop
                .send_json(&json!({"type": "read", "conversation_id": conv, "seq": 11}))
                .await?;
            let read = phone.wait_for("the marker on node 1", in_conversation(&conv, "read")).await?;
            ensure!(read["seq"] == 11, "{read}");
            let receipt = b.recv_type("receipt").await?;
            ensure!(receipt["user_id"] == alice.user_id.as_str() && receipt["seq"] == 11, "{receipt}");

            api.remove_participant(&bob, &conv, &alice.user_id).await?.expect_status(204)?;
            let removed = laptop.recv_type("conversation").await?;
            ensure!(removed["action"] == "removed" && removed["conversation"]["id"] == conv.as_str(), "{removed}");
            b.send_message("after").await?;
            // A conversation of alice's own, on node 0, shows the stream still works
            // and that nothing of the other came before.
            let own = c.api(0).new_conversation(&alice, "own", &[]).await?;
            let (mut a_own, _) = join(c.node(0), &own, &alice).await?;
            a_own.send_message("mine").await?;
            let next = laptop
                .wait_for("her own message", |v| kind(v) == "message")
                .await?;
            ensure!(next["content"] == "mine", "nothing after the removal: {next}");
            Ok(())
        })
    })
    .await;
}

/// Alice read up to a position on node 0 and left; while she was away bob posted on
/// node 1; her stream on node 1 resumes from that position and gets every message
/// after it once, in order, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_node_misses_nothing() {
    with_cluster(ClusterOptions::new(2), |c| {
        Box::pin(async move {
            let api = c.api(0);
            let [alice, bob] = api.new_users(["cra", "crb"]).await?;
            let conv = api.new_conversation(&bob, "resume", &[&alice]).await?;
            let (mut b, _) = join(c.node(1), &conv, &bob).await?;
            for i in 0..5 {
                b.send_message(&format!("seen {i}")).await?;
            }
            let (mut away, _) =
                WsClient::connect_stream(&c.node(0).ws_base_url(), &alice.token).await?;
            away.start(&[(&conv, 0)]).await?;
            let mut seen = Vec::new();
            while seen.len() < 5 {
                seen.push(
                    away.wait_for("the first five", in_conversation(&conv, "message"))
                        .await?,
                );
            }
            away.close().await?;
            for i in 0..20 {
                b.send_message(&format!("missed {i}")).await?;
            }
            let (mut back, ready) =
                WsClient::connect_stream(&c.node(1).ws_base_url(), &alice.token).await?;
            ensure!(ready["positions"][&conv] == 25, "{ready}");
            back.start(&[(&conv, 5)]).await?;
            b.send_message("live").await?;
            let mut got = Vec::new();
            loop {
                let v = back
                    .wait_for(
                        "the replay and the live one",
                        in_conversation(&conv, "message"),
                    )
                    .await?;
                let last = v["content"] == "live";
                got.push(v);
                if last {
                    break;
                }
            }
            ensure!(gapless(&got, "the resumed stream")? == 6, "{got:?}");
            ensure!(got.len() == 21, "twenty missed and one live: {got:?}");
            Ok(())
        })
    })
    .await;
}
