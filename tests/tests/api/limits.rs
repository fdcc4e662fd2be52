//! Hostile input over REST, against the real binary: every field and request is
//! bounded where it enters and answered with a clear 4xx in the one error shape,
//! never a 5xx or a hang. Text fields (NUL, control characters, lengths) are refused
//! before the store sees them; login usernames before the login throttle; the
//! conversation list comes in pages; participant lists, conversations created per
//! user, registrations per address, the time a request may take and the connections
//! one address may hold are capped.
//!
//! Limits are set through their environment variables, so a server that does not know
//! them starts all the same and the scenario shows what it fails to bound.

use std::time::Duration;

use tests::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of `chat_store_errors_total` on the service port.
async fn store_errors(api: &Api) -> anyhow::Result<f64> {
    let text = api.get("/metrics", None).await?.text();
    text.lines()
        .find_map(|l| l.strip_prefix("chat_store_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no chat_store_errors_total in\n{text}"))
}

/// NUL and control characters in names, descriptions and usernames are 422s that
/// name the field (on PostgreSQL a NUL used to be a 503 counted as a store error);
/// line breaks and tabs stay allowed in descriptions.
async fn control_characters_are_refused_where_they_enter(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let errors_before = store_errors(&api).await?;
    api.post(
        "/api/auth/login",
        None,
        &json!({"username": "ali\u{0}ce", "password": PASSWORD}),
    )
    .await?
    .expect_validation(Some("username"))?;
    let alice = api.new_user("control").await?;
    let create = |body: Value| {
        let api = &api;
        let alice = &alice;
        async move { api.create_conversation_raw(alice, &body).await }
    };
    for (body, field) in [
        (json!({"name": "a\u{0}b"}), "name"),
        (json!({"name": "two\nlines"}), "name"),
        (json!({"name": "bell\u{7}"}), "name"),
        (json!({"description": "nul \u{0} inside"}), "description"),
        (json!({"description": "escape \u{1b}[2J"}), "description"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"description": "x".repeat(2001)}), "description"),
    ] {
        create(body.clone())
            .await?
            .expect_validation(Some(field))
            .with_context(|| format!("creating {body}"))?;
    }
    let created = create(json!({
        "name": "Team chat 🎉",
        "description": "first line\n\tsecond line\r\n",
        "is_group": true,
    }))
    .await?
    .expect(201)?;
    ensure!(
        created["description"] == "first line\n\tsecond line\r\n",
        "{created}"
    );
    // A name no one can have is looked up without the store: nobody.
    let found = api
        .lookup_user(Some(&alice.token), "ali\u{0}ce")
        .await?
        .expect(200)?;
    ensure!(found == json!([]), "{found}");
    let errors_after = store_errors(&api).await?;
    ensure!(
        errors_after == errors_before,
        "store errors went from {errors_before} to {errors_after}"
    );
    Ok(())
}

/// Login usernames and passwords outside the registration rules are 422s before the
/// throttle counts anything: a megabyte of username is not kept per failure, and such
/// attempts do not use up the address's failure budget.
async fn login_fields_are_bounded_before_the_throttle(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("bounded").await?;
    let huge = "u".repeat(256 * 1024);
    for i in 0..6 {
        api.login(&format!("{huge}{i}"), "wrong-password")
            .await?
            .expect_validation(Some("username"))
            .with_context(|| format!("attempt {i}"))?;
    }
    api.login(&alice.username, &"p".repeat(129))
        .await?
        .expect_validation(Some("password"))?;
    // The per-address budget (3) is untouched: a real login still works.
    api.login(&alice.username, PASSWORD)
        .await?
        .expect_status(200)?;
    Ok(())
}

/// `participant_ids` counts each user once, holds at most `MAX_PARTICIPANTS` ids (3
/// here), and a conversation holds at most that many participants: beyond it,
/// creating or adding is a 422.
async fn participants_are_deduplicated_and_capped(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave] = api.new_users(["cap", "cap", "cap", "cap"]).await?;
    let body = json!({
        "name": "repeats",
        "is_group": true,
        "participant_ids": [bob.user_id, alice.user_id, bob.user_id],
    });
    let created = api
        .create_conversation_raw(&alice, &body)
        .await?
        .expect(201)?;
    let mut members = participant_ids(&created)?;
    members.sort();
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    ensure!(members == expected, "{created}");
    let too_many = json!({
        "name": "too many",
        "participant_ids": [bob.user_id, carol.user_id, dave.user_id],
    });
    api.create_conversation_raw(&alice, &too_many)
        .await?
        .expect_validation(Some("participant_ids"))?;
    // A long list is refused before its ids are even read.
    let flood = json!({"participant_ids": vec![bob.user_id.clone(); 20_000]});
    api.create_conversation_raw(&alice, &flood)
        .await?
        .expect_validation(Some("participant_ids"))?;
    let id = str_field(&created, "id")?;
    api.add_participant(&alice, &id, &carol.user_id)
        .await?
        .expect_status(200)?;
    api.add_participant(&alice, &id, &dave.user_id)
        .await?
        .expect_validation(Some("user_id"))?;
    // Adding someone already in is not a new participant.
    api.add_participant(&alice, &id, &bob.user_id)
        .await?
        .expect_status(200)?;
    Ok(())
}

/// The list comes in pages: at most 100 by default, `limit` up to 500, and
/// `X-Next-Cursor` leads through every conversation once, in the list's order.
async fn the_conversation_list_is_paged(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("pages").await?;
    let mut created = Vec::new();
    for i in 0..101 {
        created.push(
            api.new_conversation(&alice, &format!("page {i}"), &[])
                .await?,
        );
    }
    let first = api.list_conversations(&alice).await?;
    let page = first.expect(200)?;
    ensure!(
        as_list(&page)?.len() == 100,
        "default page: {}",
        as_list(&page)?.len()
    );
    ensure!(
        first.headers.contains_key("x-next-cursor"),
        "no cursor on a full page: {:?}",
        first.headers
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!(
                "/api/chat/conversations?limit=7&cursor={}",
                tests::client::encode_query(c)
            ),
            None => "/api/chat/conversations?limit=7".to_string(),
        };
        let reply = api.get(&path, Some(&alice.token)).await?;
        let page = reply.expect(200)?;
        let page = as_list(&page)?;
        ensure!(page.len() <= 7, "{} on a page of 7", page.len());
        seen.extend(ids(page));
        cursor = reply
            .headers
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if cursor.is_none() {
            break;
        }
        ensure!(
            seen.len() <= created.len(),
            "pages never end: {}",
            seen.len()
        );
    }
    // Newest first: the reverse of creation, each once.
    created.reverse();
    ensure!(
        seen == created,
        "paged list differs from the conversations created"
    );
    let all = api
        .get("/api/chat/conversations?limit=500", Some(&alice.token))
        .await?;
    ensure!(
        ids(as_list(&all.expect(200)?)?) == created && !all.headers.contains_key("x-next-cursor"),
        "one page of 500"
    );
    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=nonsense",
        "cursor=1_2",
    ] {
        api.get(
            &format!("/api/chat/conversations?{bad}"),
            Some(&alice.token),
        )
        .await?
        .expect_validation(None)
        .with_context(|| bad.to_string())?;
    }
    Ok(())
}

/// Past `MAX_NEW_CONVERSATIONS` (2 here) a user's creations get 429 with
/// `Retry-After`; a creation that failed does not count, and others are not limited.
async fn conversations_created_per_user_are_limited(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["creator", "other"]).await?;
    let unknown = json!({"name": "x", "participant_ids": ["00000000-0000-7000-8000-000000000000"]});
    api.create_conversation_raw(&alice, &unknown)
        .await?
        .expect_status(404)?;
    for i in 0..2 {
        api.new_conversation(&alice, &format!("allowed {i}"), &[])
            .await?;
    }
    let refused = api
        .create_conversation_raw(&alice, &json!({"name": "one too many"}))
        .await?;
    refused.expect_detail(429, "Too many new conversations, retry later")?;
    ensure!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    api.new_conversation(&bob, "bob's own", &[]).await?;
    Ok(())
}

/// Past `REGISTER_MAX_PER_ADDRESS` (2 here) an address's registrations get 429 with
/// `Retry-After`; a taken name is still a 409 (found before anything is spent), and
/// another client address (through the trusted loopback proxy) registers.
async fn registrations_per_address_are_limited(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let first = unique_name("reg");
    api.register(&first, PASSWORD).await?.expect(201)?;
    api.register(&unique_name("reg"), PASSWORD)
        .await?
        .expect(201)?;
    let refused = api.register(&unique_name("reg"), PASSWORD).await?;
    refused.expect_detail(429, "Too many registrations, retry later")?;
    ensure!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    api.register(&first, PASSWORD)
        .await?
        .expect_detail(409, "Username already registered")?;
    let elsewhere = api
        .send(
            "register from 198.51.100.7".into(),
            api.http()
                .post(api.url("/api/auth/register"))
                .header("x-forwarded-for", "198.51.100.7")
                .json(&json!({"username": unique_name("reg"), "password": PASSWORD})),
        )
        .await?;
    elsewhere.expect_status(201)?;
    Ok(())
}

/// Reads from `stream` until EOF or `within`, whatever arrived.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    got
}

/// A body announced and never sent is answered 408 within `REQUEST_TIMEOUT` (1 s
/// here), and the connection is closed: a stalled upload holds nothing for long.
async fn a_stalled_body_gets_408(srv: &TestServer) -> anyhow::Result<()> {
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /api/auth/register HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{{\"username\":"
    );
    stream.write_all(head.as_bytes()).await?;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("Request not received in time"),
        "answer to a stalled body: {answer:?}"
    );
    Ok(())
}

/// `n` connections to `srv`, each shown taken in by an answered request.
async fn hold_connections(
    srv: &TestServer,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        stream
            .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        ensure!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "connection {}: {:?}",
            held.len() + 1,
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(stream);
    }
    Ok(held)
}

/// One address holds at most `MAX_CONNECTIONS_PER_ADDRESS` (4 here) connections: the
/// next is answered 429 and closed; closing one makes room.
async fn connections_per_address_are_capped(srv: &TestServer) -> anyhow::Result<()> {
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    let mut held = hold_connections(srv, 4).await?;
    let mut extra = tokio::net::TcpStream::connect(&addr).await?;
    let _ = extra
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let answer = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        answer.starts_with("HTTP/1.1 429")
            && answer.contains("Too many connections from this address"),
        "the connection over the cap got {answer:?}"
    );
    drop(held.pop());
    // The server notices the close on its own time.
    for attempt in 0.. {
        let reply = srv.api().get("/health", None).await;
        match reply {
            Ok(r) if r.status == 200 => return Ok(()),
            _ if attempt < 50 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => bail!("no room after a connection closed: {other:?}"),
        }
    }
    Ok(())
}

/// Loopback peers (a proxy on the same host, a load client) are not counted against
/// the per-address limits unless `--limit-loopback`: with a cap of 4 connections and
/// 2 registrations, ten of each from 127.0.0.1 are all taken.
async fn loopback_is_not_counted_by_default(srv: &TestServer) -> anyhow::Result<()> {
    let _held = hold_connections(srv, 10).await?;
    for _ in 0..10 {
        srv.api().new_user("local").await?;
    }
    Ok(())
}

tests::e2e!(control_characters_are_refused_where_they_enter);
tests::e2e!(
    options = |o| o
        .env("MAX_CONNECTIONS_PER_ADDRESS", "4")
        .env("REGISTER_MAX_PER_ADDRESS", "2");
    loopback_is_not_counted_by_default
);
tests::e2e!(
    options = |o| o.env("LOGIN_MAX_FAILURES_PER_ADDRESS", "3");
    login_fields_are_bounded_before_the_throttle
);
tests::e2e!(
    options = |o| o.env("MAX_PARTICIPANTS", "3");
    participants_are_deduplicated_and_capped
);
tests::e2e!(
    options = |o| o.env("MAX_NEW_CONVERSATIONS", "0");
    the_conversation_list_is_paged
);
tests::e2e!(
    options = |o| o.env("MAX_NEW_CONVERSATIONS", "2");
    conversations_created_per_user_are_limited
);
tests::e2e!(
    options = |o| o
        .env("REGISTER_MAX_PER_ADDRESS", "2")
        .arg("--limit-loopback")
        .arg("--trusted-proxies")
        .arg("127.0.0.1");
    registrations_per_address_are_limited
);
tests::e2e!(options = |o| o.env("REQUEST_TIMEOUT", "1"); a_stalled_body_gets_408);
tests::e2e!(
    // The test connects over loopback, which is not counted unless asked.
    options = |o| o.env("MAX_CONNECTIONS_PER_ADDRESS", "4").arg("--limit-loopback");
    connections_per_address_are_capped
);

/// Runs the server binary with `args` and `SECRET_KEY` as given; its exit status, or
/// `None` when it was still running after a few seconds (then it is stopped).
fn exit_of(args: &[&str], secret_key: &str) -> Option<std::process::ExitStatus> {
    let binary = testkit::server_binary(testkit::Profile::Current).expect("the server binary");
    let data = tempfile::tempdir().expect("a data directory");
    let mut child = std::process::Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env("SECRET_KEY", secret_key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running the server");
    for _ in 0..100 {
        if let Some(status) = child.try_wait().expect("waiting") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn production_refuses_an_empty_or_short_secret_key() {
    for key in ["", "   ", "only-31-bytes-long-0123456789ab"] {
        let exit = exit_of(&["--production"], key);
        assert!(
            exit.is_some_and(|s| !s.success()),
            "--production with SECRET_KEY {key:?}: {exit:?}"
        );
    }
}

/// An empty `SECRET_KEY` without `--production` means the generated development key:
/// a token signed with no key at all is refused.
async fn empty_secret_key_is_the_development_key(api: &Api) -> anyhow::Result<()> {
    let alice = api.new_user("keyless").await?;
    api.me(&alice.token).await?.expect_status(200)?;
    let forged = tests::jwt::hs256("", &alice.user_id, 3600)?;
    api.me(&forged).await?.expect_status(401)?;
    Ok(())
}

#[tokio::test]
async fn an_empty_secret_key_never_signs_with_nothing() {
    let binary = testkit::server_binary(testkit::Profile::Current).expect("the server binary");
    let data = tempfile::tempdir().expect("a data directory");
    let args = vec!["--data-dir".into(), data.path().as_os_str().to_owned()];
    let env = [("SECRET_KEY".to_owned(), String::new())];
    let mut process = testkit::ServerProcess::start(&binary, &args, &env, testkit::Output::Memory)
        .expect("the server starts with an empty SECRET_KEY");
    let api = Api::new(process.base_url());
    let result = empty_secret_key_is_the_development_key(&api).await;
    let output = process.output_tail(4096);
    process.kill();
    if let Err(e) = result {
        panic!("{e:#}\n--- server output ---\n{output}");
    }
}
