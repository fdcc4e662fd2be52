//! Data survives restarts, including `kill -9`.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;

/// Users, conversations and participants survive a kill -9 and restart.
async fn rest_data_survives_kill9(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let bob = api.new_user("bob").await?;
    let conv = api.create_conversation(&alice, "durable", &[&bob]).await?;
    let id = str_field(&conv, "id")?;

    srv.kill9()?;
    srv.restart().await?;
    let api = srv.api();

    // Old tokens stay valid (same key), passwords still work.
    api.me(&alice.token).await?.expect(200)?;
    api.login(&bob.username, PASSWORD).await?.expect(200)?;
    let got = api.get_conversation(&bob, &id).await?.expect(200)?;
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    ensure!(participant_ids(&got)? == expected, "{got}");
    ensure!(got["created_at"] == conv["created_at"], "{got} vs {conv}");
    // The username is still taken.
    api.register(&alice.username, PASSWORD)
        .await?
        .expect_error(409)?;
    Ok(())
}

/// An acknowledged message is in history after kill -9.
async fn acked_messages_survive_kill9(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let conv = api.create_conversation(&alice, "durable", &[]).await?;
    let id = str_field(&conv, "id")?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &id, &alice.token).await?;
    let mut acked = Vec::new();
    for i in 0..20 {
        let ack = ws.send_message(&format!("durable {i}")).await?;
        acked.push(str_field(&ack, "message_id")?);
    }
    srv.kill9()?;
    drop(ws);
    srv.restart().await?;
    let history = srv.api().history_list(&alice, &id, "limit=100").await?;
    ensure!(ids(&history) == acked, "history after kill -9: {history:?}");
    Ok(())
}

/// SIGTERM stops the server cleanly (exit status 0) after it has served REST and
/// WebSocket traffic, and what it acknowledged is there after a restart.
async fn sigterm_stops_cleanly(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let conv = api.create_conversation(&alice, "bye", &[]).await?;
    let id = str_field(&conv, "id")?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &id, &alice.token).await?;
    let ack = ws.send_message("last words").await?;
    ws.close().await?;

    // Generous bound: this guards against a hang, it is not a latency assertion.
    let status = srv.terminate(std::time::Duration::from_secs(60)).await?;
    let Some(status) = status else {
        bail!("the server did not exit within 60 s of SIGTERM");
    };
    ensure!(status.success(), "exit status after SIGTERM: {status}");
    // Every connection and the writer finished by themselves, not by the grace
    // period running out.
    let log = srv.stderr_contents();
    for sign in [
        "grace period over",
        "did not finish within the grace period",
    ] {
        ensure!(
            !log.contains(sign),
            "the stop waited out its grace period: {sign}"
        );
    }

    srv.restart().await?;
    let history = srv.api().history_list(&alice, &id, "").await?;
    ensure!(
        ids(&history) == vec![str_field(&ack, "message_id")?],
        "history after SIGTERM and restart: {history:?}"
    );
    Ok(())
}

tests::e2e!(
    rest_data_survives_kill9,
    acked_messages_survive_kill9,
    sigterm_stops_cleanly,
);
