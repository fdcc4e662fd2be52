//! Sessions and accounts: refresh rotation and reuse detection, logout, logout
//! everywhere, password change, account deletion, the export, user search.
#![allow(clippy::unwrap_used)]

use reqwest::Method;
use tests::client::encode_query;
use tests::prelude::*;
use tests::realtime::kind;

/// A fresh login of `who`: `(access token, refresh token)`.
async fn login(api: &Api, who: &Session) -> anyhow::Result<(String, String)> {
    let body = api.login(&who.username, PASSWORD).await?.expect(200)?;
    Ok((
        str_field(&body, "access_token")?,
        str_field(&body, "refresh_token")?,
    ))
}

async fn refresh(api: &Api, token: &str) -> anyhow::Result<Reply> {
    api.post(
        "/api/auth/refresh",
        None,
        &json!({ "refresh_token": token }),
    )
    .await
}

/// Login answers a short-lived access token with a refresh token; each refresh
/// answers a new pair and retires the token it took; a retired one presented again
/// ends the session, every token of it included.
async fn refresh_rotates_and_reuse_ends_the_session(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("rot").await?;
    let body = api.login(&alice.username, PASSWORD).await?.expect(200)?;
    ensure!(body["token_type"] == "bearer", "{body}");
    ensure!(body["expires_in"] == 900, "15 minutes by default: {body}");
    ensure!(
        body["refresh_expires_in"] == 30 * 24 * 3600,
        "30 days by default: {body}"
    );
    let first = str_field(&body, "refresh_token")?;

    let renewed = refresh(&api, &first).await?.expect(200)?;
    let (access, second) = (
        str_field(&renewed, "access_token")?,
        str_field(&renewed, "refresh_token")?,
    );
    ensure!(renewed["user_id"] == alice.user_id.as_str(), "{renewed}");
    api.me(&access).await?.expect(200)?;
    let third = str_field(&refresh(&api, &second).await?.expect(200)?, "refresh_token")?;

    // `first` again: someone kept a copy. The session ends, the newest pair with it.
    refresh(&api, &first)
        .await?
        .expect_detail(401, "Refresh token reused: the session has ended")?;
    api.me(&access).await?.expect_error(401)?;
    refresh(&api, &third)
        .await?
        .expect_detail(401, "Session ended")?;
    // The user's other sessions are untouched.
    api.me(&alice.token).await?.expect(200)?;

    // Not a refresh token: an access token, garbage, a missing field.
    refresh(&api, &alice.token)
        .await?
        .expect_detail(401, "Invalid refresh token")?;
    refresh(&api, "a.b.c").await?.expect_error(401)?;
    api.post("/api/auth/refresh", None, &json!({}))
        .await?
        .expect_validation(Some("refresh_token"))?;
    Ok(())
}

/// A logout ends that session only; a logout everywhere ends every other one.
async fn logout_and_logout_everywhere(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let bob = api.new_user("out").await?;
    let (a, a_refresh) = login(&api, &bob).await?;
    let (b, _) = login(&api, &bob).await?;
    api.post("/api/auth/logout", Some(&a), &json!({}))
        .await?
        .expect_status(204)?;
    api.me(&a).await?.expect_error(401)?;
    refresh(&api, &a_refresh)
        .await?
        .expect_detail(401, "Session ended")?;
    api.me(&b).await?.expect(200)?;
    api.post("/api/auth/logout", None, &json!({}))
        .await?
        .expect_error(401)?;

    let (c, _) = login(&api, &bob).await?;
    let ended = api
        .post("/api/auth/logout-all", Some(&c), &json!({}))
        .await?
        .expect(200)?;
    // The session of `new_user`'s login and `b`.
    ensure!(ended["ended_sessions"] == 2, "{ended}");
    api.me(&b).await?.expect_error(401)?;
    api.me(&bob.token).await?.expect_error(401)?;
    api.me(&c).await?.expect(200)?;

    // A token signed elsewhere (no session) ends with a logout everywhere too. Token
    // times are in seconds and the last logout refused the second it ran in: this
    // one is issued after.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let sessionless = tests::jwt::hs256(srv.secret_key(), &bob.user_id, 3600)?;
    api.me(&sessionless).await?.expect(200)?;
    api.post("/api/auth/logout-all", Some(&c), &json!({}))
        .await?
        .expect(200)?;
    api.me(&sessionless).await?.expect_error(401)?;
    api.me(&c).await?.expect(200)?;
    Ok(())
}

/// A password change needs the current password, ends every other session, and the
/// new password is the one that logs in.
async fn password_change(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let carol = api.new_user("pw").await?;
    let (other, _) = login(&api, &carol).await?;
    let patch = |token: &str, body: Value| {
        let token = token.to_owned();
        let api = &api;
        async move { api.patch("/api/auth/me", Some(&token), &body).await }
    };
    patch(
        &carol.token,
        json!({"current_password": "wrong-password", "new_password": "another-pass-1"}),
    )
    .await?
    .expect_detail(403, "Current password is incorrect")?;
    patch(
        &carol.token,
        json!({"current_password": PASSWORD, "new_password": "short"}),
    )
    .await?
    .expect_validation(Some("new_password"))?;
    api.me(&other).await?.expect(200)?;
    let me = patch(
        &carol.token,
        json!({"current_password": PASSWORD, "new_password": "another-pass-1"}),
    )
    .await?
    .expect(200)?;
    ensure!(me["id"] == carol.user_id.as_str(), "{me}");
    api.me(&other).await?.expect_error(401)?;
    api.me(&carol.token).await?.expect(200)?;
    api.login(&carol.username, PASSWORD)
        .await?
        .expect_error(401)?;
    api.login(&carol.username, "another-pass-1")
        .await?
        .expect(200)?;
    Ok(())
}

/// Deleting an account: its tokens stop working, it leaves its conversations (its
/// ownership handed over), its messages stay from a deleted user, its name is free.
async fn delete_account(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [dora, eve] = api.new_users(["del", "stay"]).await?;
    let id = api.new_conversation(&dora, "leaving", &[&eve]).await?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &id, &dora.token).await?;
    ws.send_json(&json!({"type": "message", "content": "goodbye", "client_id": "bye"}))
        .await?;
    ws.wait_for("the ack", |v| kind(v) == "message").await?;
    let (other, _) = login(&api, &dora).await?;

    api.request(
        Method::DELETE,
        "/api/auth/me",
        Some(&dora.token),
        Some(&json!({"password": "not-her-password"})),
    )
    .await?
    .expect_error(403)?;
    api.request(
        Method::DELETE,
        "/api/auth/me",
        Some(&dora.token),
        Some(&json!({"password": PASSWORD})),
    )
    .await?
    .expect_status(204)?;
    // Her socket closes, her tokens are refused, she cannot log in.
    let close = ws.recv_close().await?;
    ensure!(close.as_ref().is_some_and(|c| c.0 == 1008), "{close:?}");
    api.me(&dora.token).await?.expect_error(401)?;
    api.me(&other).await?.expect_error(401)?;
    api.login(&dora.username, PASSWORD)
        .await?
        .expect_error(401)?;
    let found = api
        .lookup_user(Some(&eve.token), &dora.username)
        .await?
        .expect(200)?;
    ensure!(as_list(&found)?.is_empty(), "{found}");

    // Eve owns the conversation now; the message stays, from a deleted user.
    let members = api
        .get(
            &format!("/api/chat/conversations/{id}/participants"),
            Some(&eve.token),
        )
        .await?
        .expect(200)?;
    let members = as_list(&members)?;
    ensure!(
        members.len() == 1 && members[0]["role"] == "owner",
        "{members:?}"
    );
    let history = api.history(&eve, &id, "").await?.expect(200)?;
    let first = &as_list(&history)?[0];
    ensure!(
        first["content"] == "goodbye"
            && first["sender_username"]
                .as_str()
                .is_some_and(|n| n.starts_with("deleted user ")),
        "{first}"
    );
    // The name is free again.
    api.register(&dora.username, PASSWORD).await?.expect(201)?;
    Ok(())
}

/// With `--deleted-account-messages erase`, the messages go too.
async fn delete_account_erasing(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [fay, gus] = api.new_users(["erase", "keep"]).await?;
    let id = api.new_conversation(&fay, "erased", &[&gus]).await?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &id, &fay.token).await?;
    for i in 0..3 {
        ws.send_json(&json!({"type": "message", "content": format!("m{i}")}))
            .await?;
        ws.wait_for("the ack", |v| kind(v) == "message").await?;
    }
    api.request(
        Method::DELETE,
        "/api/auth/me",
        Some(&fay.token),
        Some(&json!({"password": PASSWORD})),
    )
    .await?
    .expect_status(204)?;
    // Erased in the background: a moment at most.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let history = api.history(&gus, &id, "").await?.expect(200)?;
        if as_list(&history)?.is_empty() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still there: {history}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The export lists the user, their conversations with roles, then their own live
/// messages, a page at a time.
async fn export(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [hal, ivy] = api.new_users(["exp", "peer"]).await?;
    let mine = api.new_conversation(&hal, "mine", &[&ivy]).await?;
    let theirs = api.new_conversation(&ivy, "theirs", &[&hal]).await?;
    let mut ws = WsClient::connect(&srv.ws_base_url(), &mine, &hal.token).await?;
    ws.send_json(&json!({"type": "message", "content": "exported"}))
        .await?;
    ws.wait_for("the ack", |v| kind(v) == "message").await?;

    let mut cursor = None::<String>;
    let (mut conversations, mut messages) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let path = match &cursor {
            None => "/api/auth/me/export".to_owned(),
            Some(c) => format!("/api/auth/me/export?cursor={}", encode_query(c)),
        };
        let page = api.get(&path, Some(&hal.token)).await?.expect(200)?;
        ensure!(page["user"]["id"] == hal.user_id.as_str(), "{page}");
        conversations.extend(as_list(&page["conversations"])?.clone());
        messages.extend(as_list(&page["messages"])?.clone());
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let role_of = |id: &str| {
        conversations
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["role"].clone())
    };
    ensure!(role_of(&mine) == Some(json!("owner")), "{conversations:?}");
    ensure!(
        role_of(&theirs) == Some(json!("member")),
        "{conversations:?}"
    );
    ensure!(
        messages.len() == 1 && messages[0]["content"] == "exported",
        "{messages:?}"
    );
    api.get("/api/auth/me/export?cursor=x:y", Some(&hal.token))
        .await?
        .expect_validation(Some("cursor"))?;
    api.get("/api/auth/me/export", None)
        .await?
        .expect_error(401)?;
    Ok(())
}

/// Search by the start of a name, whatever the case, a page at a time.
async fn search_by_prefix(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let stem = tests::client::unique_name("Srch");
    for suffix in ["a", "B", "c"] {
        api.register(&format!("{stem}{suffix}"), PASSWORD)
            .await?
            .expect(201)?;
    }
    let me = api.new_user("seeker").await?;
    let q = stem.to_uppercase();
    let all = api
        .get(&format!("/api/users?q={q}"), Some(&me.token))
        .await?
        .expect(200)?;
    let names: Vec<&str> = as_list(&all)?
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    ensure!(
        names == [format!("{stem}a"), format!("{stem}B"), format!("{stem}c")],
        "{names:?}"
    );
    let first = api
        .get(&format!("/api/users?q={q}&limit=2"), Some(&me.token))
        .await?;
    let cursor = first
        .headers
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("a next cursor")?;
    ensure!(as_list(&first.expect(200)?)?.len() == 2);
    let rest = api
        .get(
            &format!("/api/users?q={q}&limit=2&cursor={}", encode_query(&cursor)),
            Some(&me.token),
        )
        .await?;
    ensure!(rest.headers.get("x-next-cursor").is_none(), "last page");
    let rest = rest.expect(200)?;
    ensure!(
        as_list(&rest)?.len() == 1 && rest[0]["username"] == format!("{stem}c"),
        "{rest}"
    );
    // A prefix no name can hold matches no one; an empty one is refused.
    let none = api
        .get("/api/users?q=%2A%2A", Some(&me.token))
        .await?
        .expect(200)?;
    ensure!(as_list(&none)?.is_empty(), "{none}");
    api.get("/api/users?q=", Some(&me.token))
        .await?
        .expect_validation(Some("q"))?;
    let nobody = api.get("/api/users", Some(&me.token)).await?.expect(200)?;
    ensure!(as_list(&nobody)?.is_empty(), "{nobody}");
    api.get(&format!("/api/users?q={q}&limit=0"), Some(&me.token))
        .await?
        .expect_validation(Some("limit"))?;
    api.get(&format!("/api/users?q={q}"), None)
        .await?
        .expect_error(401)?;
    Ok(())
}

/// Searches are throttled per user.
async fn search_is_throttled(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let me = api.new_user("many").await?;
    for _ in 0..3 {
        api.get("/api/users?q=abc", Some(&me.token))
            .await?
            .expect(200)?;
    }
    let refused = api.get("/api/users?q=abc", Some(&me.token)).await?;
    ensure!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    refused.expect_detail(429, "Too many searches, retry later")?;
    // Another user has searches of their own.
    let other = api.new_user("few").await?;
    api.get("/api/users?q=abc", Some(&other.token))
        .await?
        .expect(200)?;
    Ok(())
}

tests::e2e!(
    refresh_rotates_and_reuse_ends_the_session,
    logout_and_logout_everywhere,
    password_change,
    delete_account,
    export,
    search_by_prefix,
);
tests::e2e!(
    options = |o| o.env("DELETED_ACCOUNT_MESSAGES", "erase");
    delete_account_erasing
);
tests::e2e!(
    options = |o| o.env("USER_SEARCH_PER_MINUTE", "3");
    search_is_throttled
);
