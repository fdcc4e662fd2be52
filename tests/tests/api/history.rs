//! Message history: access rules, validation, and (over WebSocket) content and paging.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;
use tests::realtime::check_message_event;

/// A new conversation has an empty history.
async fn history_empty(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["alice", "bob"]).await?;
    let id = api.new_conversation(&alice, "quiet", &[&bob]).await?;
    for who in [&alice, &bob] {
        let list = api.history_list(who, &id, "").await?;
        ensure!(list.is_empty(), "new conversation has history: {list:?}");
    }
    for query in ["limit=1", "limit=50", "limit=100"] {
        let list = api.history_list(&alice, &id, query).await?;
        ensure!(list.is_empty(), "{query}: {list:?}");
    }
    Ok(())
}

/// 403 for non-members, 404 for unknown conversations and unknown `before`, 401 without
/// token.
async fn history_access(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, eve] = api.new_users(["alice", "eve"]).await?;
    let id = api.new_conversation(&alice, "closed", &[]).await?;

    let unknown = uuid::Uuid::new_v4().to_string();
    let before = format!("before={}", uuid::Uuid::new_v4());
    for (who, conv, query, status) in [
        (&eve, id.as_str(), "", 403),
        (&alice, &unknown, "", 404),
        (&alice, "conv-123", "", 404),
        (&alice, &id, &before, 404),
        (&alice, &id, "before=msg-1", 404),
    ] {
        api.history(who, conv, query)
            .await?
            .expect_error(status)
            .with_context(|| format!("{} reading {conv}?{query}", who.username))?;
    }
    api.get(&format!("/api/chat/conversations/{id}/messages"), None)
        .await?
        .expect_error(401)?;
    Ok(())
}

/// `limit` outside 1..=100 or not a number: 422 naming `limit`.
async fn history_limit_validation(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let id = api.new_conversation(&alice, "limits", &[]).await?;
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=",
    ] {
        let items = api
            .history(&alice, &id, query)
            .await?
            .expect_validation(Some("limit"))
            .with_context(|| format!("query {query}"))?;
        ensure!(
            items.iter().any(|i| i["loc"][0] == "query"),
            "{query}: loc should start with \"query\": {items:?}"
        );
    }
    Ok(())
}

fn check_message_shape(m: &Value) -> anyhow::Result<()> {
    for field in [
        "id",
        "conversation_id",
        "sender_id",
        "sender_username",
        "content",
    ] {
        str_field(m, field)?;
    }
    ensure!(m["is_edited"].is_boolean(), "is_edited: {m}");
    timestamp_field(m, "created_at")?;
    timestamp_field(m, "updated_at")?;
    Ok(())
}

fn contents(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["content"].as_str().unwrap_or("<none>").to_string())
        .collect()
}

/// Messages sent over WebSocket appear in history in order, with limit/before paging.
async fn history_after_messages(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["alice", "bob"]).await?;
    let id = api.new_conversation(&alice, "busy", &[&bob]).await?;

    let mut ws = WsClient::connect(&srv.ws_base_url(), &id, &alice.token).await?;
    let sent: Vec<String> = (1..=7)
        .map(|i| format!("message {i} {}", unique_name("m")))
        .collect();
    let mut acks = Vec::new();
    for content in &sent {
        let ack = ws.send_message(content).await?;
        acks.push(check_message_event(&ack, content, &alice, &id).context("ack")?);
    }
    ws.close().await?;

    let all = api.history_list(&bob, &id, "").await?;
    ensure!(contents(&all) == sent, "history order: {all:?}");
    ensure!(
        ids(&all) == acks,
        "history ids differ from ack message_ids: {all:?} vs {acks:?}"
    );
    for m in &all {
        check_message_shape(m)?;
        ensure!(m["conversation_id"] == id.as_str(), "{m}");
        ensure!(m["sender_id"] == alice.user_id.as_str(), "{m}");
        ensure!(m["sender_username"] == alice.username.as_str(), "{m}");
        ensure!(m["is_edited"] == false, "{m}");
    }
    let all100 = api.history_list(&alice, &id, "limit=100").await?;
    ensure!(ids(&all100) == acks, "limit=100: {all100:?}");

    // The newest `limit`, oldest first.
    let page = api.history_list(&alice, &id, "limit=3").await?;
    ensure!(contents(&page) == sent[4..7], "limit=3: {page:?}");
    let page = api
        .history_list(&alice, &id, &format!("limit=3&before={}", acks[4]))
        .await?;
    ensure!(contents(&page) == sent[1..4], "before m5: {page:?}");
    let page = api
        .history_list(&alice, &id, &format!("limit=3&before={}", acks[1]))
        .await?;
    ensure!(contents(&page) == sent[0..1], "before m2: {page:?}");
    let page = api
        .history_list(&alice, &id, &format!("before={}", acks[0]))
        .await?;
    ensure!(page.is_empty(), "before m1: {page:?}");
    let page = api
        .history_list(&alice, &id, &format!("before={}", acks[6]))
        .await?;
    ensure!(contents(&page) == sent[0..6], "before m7: {page:?}");
    let page = api.history_list(&alice, &id, "limit=1").await?;
    ensure!(contents(&page) == sent[6..7], "limit=1: {page:?}");

    // A message id from another conversation is an unknown `before` here.
    let other_id = api.new_conversation(&alice, "other", &[]).await?;
    api.history(&alice, &other_id, &format!("before={}", acks[3]))
        .await?
        .expect_error(404)?;
    Ok(())
}

/// Deleted messages are absent from history.
async fn history_excludes_deleted(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let id = api.new_conversation(&alice, "deletions", &[]).await?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &id, &alice.token).await?;
    let sent: Vec<String> = (1..=3)
        .map(|i| format!("del {i} {}", unique_name("m")))
        .collect();
    let mut acks = Vec::new();
    for content in &sent {
        acks.push(str_field(&ws.send_message(content).await?, "message_id")?);
    }
    ws.send_json(&json!({"type": "delete", "message_id": acks[1]}))
        .await?;
    let deleted = ws.recv_type("delete").await?;
    ensure!(
        deleted["message_id"] == acks[1].as_str(),
        "delete event: {deleted}"
    );
    ws.close().await?;

    let list = api.history_list(&alice, &id, "").await?;
    ensure!(
        contents(&list) == vec![sent[0].clone(), sent[2].clone()],
        "history after delete: {list:?}"
    );
    Ok(())
}

/// Posting a message makes a conversation the most recently active one.
async fn list_order_follows_activity(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let older_id = api.new_conversation(&alice, "older", &[]).await?;
    let newer_id = api.new_conversation(&alice, "newer", &[]).await?;
    let list = api.conversation_ids(&alice).await?;
    ensure!(list == vec![newer_id.clone(), older_id.clone()], "{list:?}");

    let mut ws = WsClient::connect(&srv.ws_base_url(), &older_id, &alice.token).await?;
    ws.send_message("wake up").await?;
    ws.close().await?;
    let list = api.conversation_ids(&alice).await?;
    ensure!(
        list == vec![older_id, newer_id],
        "a message should move the conversation first: {list:?}"
    );
    Ok(())
}

tests::e2e!(
    history_empty,
    history_access,
    history_limit_validation,
    history_after_messages,
    history_excludes_deleted,
    list_order_follows_activity,
);
