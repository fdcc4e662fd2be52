//! The quick-start guide's curl flows (its sections 1-3, restated in docs/protocol.md)
//! and its message flow example.
#![allow(clippy::unwrap_used)]

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tests::prelude::*;

/// Sections 1-3: log in, create "Team Chat", get its history.
async fn quickstart_rest_flow(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let http = api.http();
    let user1 = unique_name("user1");
    let user2 = unique_name("user2");
    let mut ids = Vec::new();
    for name in [&user1, &user2] {
        let reply = api.register(name, "password123").await?.expect(201)?;
        ids.push(str_field(&reply, "id")?);
    }

    // 1. curl -X POST .../api/auth/login -H "Content-Type: application/json" -d '{...}'
    let body =
        format!("{{\n    \"username\": \"{user1}\",\n    \"password\": \"password123\"\n  }}");
    let resp = http
        .post(api.url("/api/auth/login"))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    ensure!(resp.status() == 200, "login: {}", resp.status());
    let login: Value = resp.json().await?;
    let token = str_field(&login, "access_token")?;
    ensure!(login["token_type"] == "bearer", "{login}");

    // 2. Create a conversation.
    let body = format!(
        r#"{{
    "name": "Team Chat",
    "description": "Our team discussion",
    "is_group": true,
    "participant_ids": ["{}", "{}"]
  }}"#,
        ids[0], ids[1]
    );
    let resp = http
        .post(api.url("/api/chat/conversations"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    ensure!(resp.status() == 201, "create: {}", resp.status());
    let conv: Value = resp.json().await?;
    for field in [
        "id",
        "name",
        "description",
        "is_group",
        "created_at",
        "updated_at",
    ] {
        ensure!(
            conv.get(field).is_some(),
            "conversation lacks {field}: {conv}"
        );
    }
    ensure!(conv["name"] == "Team Chat", "{conv}");
    ensure!(conv["description"] == "Our team discussion", "{conv}");
    ensure!(conv["is_group"] == true, "{conv}");
    let conv_id = str_field(&conv, "id")?;

    // 3. curl -X GET '.../api/chat/conversations/conv-123/messages' -H "Authorization: ..."
    let resp = http
        .get(api.url(&format!("/api/chat/conversations/{conv_id}/messages")))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await?;
    ensure!(resp.status() == 200, "history: {}", resp.status());
    let history: Value = resp.json().await?;
    ensure!(
        history == json!([]),
        "history of a new conversation: {history}"
    );
    Ok(())
}

/// "Message Flow Example": the sender gets its message back, the other participant
/// receives it, and history shows it in the guide's shape.
async fn quickstart_message_flow(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let bob = api.new_user("bob").await?;
    let conv = api
        .create_conversation(&alice, "Team Chat", &[&bob])
        .await?;
    let id = str_field(&conv, "id")?;

    let mut bob_ws = WsClient::connect(&srv.ws_base_url(), &id, &bob.token).await?;
    bob_ws.recv_type("system").await?;
    let mut alice_ws = WsClient::connect(&srv.ws_base_url(), &id, &alice.token).await?;
    let sent = alice_ws.send_message("Hello everyone!").await?;
    for field in [
        "content",
        "sender_id",
        "sender_username",
        "message_id",
        "timestamp",
        "is_edited",
    ] {
        ensure!(
            sent.get(field).is_some(),
            "message event lacks {field}: {sent}"
        );
    }
    ensure!(sent["sender_id"] == alice.user_id.as_str(), "{sent}");
    ensure!(sent["sender_username"] == alice.username.as_str(), "{sent}");
    ensure!(sent["is_edited"] == false, "{sent}");

    let received = bob_ws
        .wait_for("alice's message", |v| v["type"] == "message")
        .await?;
    ensure!(received == sent, "bob got {received}, alice got {sent}");

    let history = api.history_list(&bob, &id, "").await?;
    ensure!(history.len() == 1, "{history:?}");
    let m = &history[0];
    ensure!(m["id"] == sent["message_id"], "{m} vs {sent}");
    ensure!(m["conversation_id"] == id.as_str(), "{m}");
    ensure!(m["sender_id"] == alice.user_id.as_str(), "{m}");
    ensure!(m["content"] == "Hello everyone!", "{m}");
    ensure!(m["is_edited"] == false, "{m}");
    timestamp_field(m, "created_at")?;
    timestamp_field(m, "updated_at")?;
    alice_ws.close().await?;
    bob_ws.close().await?;
    Ok(())
}

tests::e2e!(quickstart_rest_flow, quickstart_message_flow);
