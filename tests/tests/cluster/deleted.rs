//! Deleted means gone across nodes: events a node missed while Redis was away are
//! read back from the store, and a message deleted by then comes back in its place
//! without its content.

use tests::cluster::ClusterOptions;
use tests::prelude::*;
use tests::realtime::{collect_messages, events_until, group, join};

use super::with_cluster;

/// What the deleted message said; no node may send it once it is deleted.
const SECRET: &str = "the vault opens at nine";

/// Redis goes away; on node 0 alice posts, then deletes; once Redis is back, bob on
/// node 1 gets the gap filled from the store: the message in its place, empty and
/// marked deleted, then the delete, and never the content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_filled_from_the_store_holds_no_deleted_content() {
    let mut opts = ClusterOptions::new(2);
    opts.via_relay = true;
    with_cluster(opts, |c| {
        Box::pin(async move {
            c.wait_redis_everywhere("ok").await?;
            let api = c.api(0);
            let ([a, b], conv) = group(&api, &["xa", "xb"]).await?;
            let (mut a0, _) = join(c.node(0), &conv, &a).await?;
            let (mut b1, _) = join(c.node(1), &conv, &b).await?;
            a0.send_message("before").await?;
            collect_messages(&mut b1, 1).await?;

            c.cut_redis().await?;
            let sent = a0.send_message(SECRET).await?;
            let id = sent["message_id"].clone();
            a0.send_json(&json!({"type": "delete", "message_id": id}))
                .await?;
            a0.recv_type("delete").await?;

            c.restore_redis().await?;
            let filled = events_until(&mut b1, "the delete", |v| v["type"] == "delete").await?;
            let text = serde_json::to_string(&filled)?;
            ensure!(
                !text.contains(SECRET),
                "node 1 sent deleted content: {text}"
            );
            let message = filled
                .iter()
                .find(|v| v["type"] == "message")
                .with_context(|| format!("the deleted message's place: {text}"))?;
            ensure!(
                message["message_id"] == id
                    && message["content"] == ""
                    && message["is_deleted"] == true
                    && message["seq"] == sent["seq"],
                "{message}"
            );
            Ok(())
        })
    })
    .await;
}
