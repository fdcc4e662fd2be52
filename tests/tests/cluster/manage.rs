//! Managing a conversation across nodes: a change made through one node (a rename, a
//! role, archiving, a deletion) reaches sockets and user streams on the other at once,
//! and a direct conversation asked for by both people at the same moment, one on each
//! node, is one conversation.

use tests::cluster::ClusterOptions;
use tests::prelude::*;
use tests::realtime::{close_frame, group, is_message_with, join, send_refused};

use super::with_cluster;

/// Alice changes things through node 0; bob's conversation socket and user stream are
/// on node 1: the rename arrives as `conversation` `updated`, the role change as
/// `role`, archiving refuses his send, and the deletion closes his socket with 1008
/// `Conversation deleted` and drops the conversation from his stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_node_reach_the_other() {
    with_cluster(ClusterOptions::new(2), |c| {
        Box::pin(async move {
            let api = c.api(0);
            let ([alice, bob], conv) = group(&api, &["cma", "cmb"]).await?;
            let (mut a0, _) = join(c.node(0), &conv, &alice).await?;
            let (mut b1, _) = join(c.node(1), &conv, &bob).await?;
            let (mut stream, _) =
                WsClient::connect_stream(&c.node(1).ws_base_url(), &bob.token).await?;
            stream.start(&[]).await?;
            a0.send_message("sync").await?;
            stream
                .wait_for("alice's message on bob's stream", |v| {
                    is_message_with(v, "sync")
                })
                .await?;
            b1.wait_for("alice's message on node 1", |v| is_message_with(v, "sync"))
                .await?;

            let patched = api
                .update_conversation(&alice, &conv, &json!({"name": "Across"}))
                .await?
                .expect(200)?;
            let want = json!({"type": "conversation", "action": "updated", "conversation": patched});
            for (ws, name) in [(&mut b1, "bob's socket"), (&mut stream, "bob's stream")] {
                let updated = ws.recv_type("conversation").await.context(name)?;
                ensure!(updated == want, "{name} on node 1: {updated}, expected {want}");
            }

            api.set_role(&alice, &conv, &bob.user_id, "admin")
                .await?
                .expect(200)?;
            let want = json!({"type": "role", "conversation_id": conv, "user_id": bob.user_id, "role": "admin"});
            for (ws, name) in [(&mut b1, "bob's socket"), (&mut stream, "bob's stream")] {
                let role = ws.recv_type("role").await.context(name)?;
                ensure!(role == want, "{name} on node 1: {role}, expected {want}");
            }

            api.update_conversation(&alice, &conv, &json!({"archived": true}))
                .await?
                .expect(200)?;
            b1.recv_type("conversation").await?;
            let err = send_refused(
                &mut b1,
                &json!({"type": "message", "content": "archived?", "ref": "a"}),
                "a send on node 1 to a conversation archived through node 0",
            )
            .await?;
            ensure!(err["detail"] == "Conversation is archived", "{err}");
            // Bob, an admin now, unarchives through node 1; alice on node 0 hears it.
            c.api(1)
                .update_conversation(&bob, &conv, &json!({"archived": false}))
                .await?
                .expect(200)?;
            let updated = a0
                .wait_for("the unarchiving on node 0", |v| {
                    v["type"] == "conversation" && v["conversation"]["archived_at"].is_null()
                })
                .await?;
            ensure!(updated["action"] == "updated", "{updated}");

            api.delete_conversation(&alice, &conv)
                .await?
                .expect_status(204)?;
            let (close, before) = close_frame(&mut b1, "bob's socket on node 1").await?;
            ensure!(
                close == Some((1008, "Conversation deleted".into())),
                "bob's socket on node 1: {close:?} after {before:?}"
            );
            ensure!(
                matches!(
                    before.last(),
                    Some(WsEvent::Json(v)) if *v == json!({"type": "error", "detail": "Conversation deleted"})
                ),
                "the error before the close: {before:?}"
            );
            let deleted = stream
                .wait_for("the deletion on bob's stream", |v| v["type"] == "conversation" && v["action"] == "deleted")
                .await?;
            ensure!(deleted["conversation"] == json!({"id": conv}), "{deleted}");
            stream.send_json(&json!({"type": "ping"})).await?;
            ensure!(
                stream.recv_json().await? == json!({"type": "pong"}),
                "bob's stream stays open"
            );
            c.api(1).get_conversation(&bob, &conv).await?.expect_error(404)?;
            Ok(())
        })
    })
    .await;
}

/// Twenty pairs; in each, one person asks node 0 and the other node 1 for their direct
/// conversation, at the same moment (all pairs at once): one conversation per pair,
/// created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_conversation_raced_across_nodes_is_one() {
    let mut opts = ClusterOptions::new(2);
    opts.env
        .push(("REGISTER_MAX_PER_ADDRESS".into(), "0".into()));
    with_cluster(opts, |c| {
        Box::pin(async move {
            const PAIRS: usize = 20;
            let users = tests::realtime::members(c.node(0), 2 * PAIRS).await?;
            let (api0, api1) = (c.api(0), c.api(1));
            tests::client::race_direct_conversations(&users, [&api0, &api1]).await
        })
    })
    .await;
}
