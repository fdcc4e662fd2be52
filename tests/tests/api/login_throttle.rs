//! Login throttling: failed logins for one username from one address, or from one
//! address across usernames, get 429 with `Retry-After`; only failures count; the
//! client address comes from `X-Forwarded-For` only when the peer is a trusted proxy.
//! Not socket-level, so one store and driver suffice.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;

fn throttled(opts: ServerOptions) -> ServerOptions {
    opts.arg("--login-max-failures")
        .arg("3")
        .arg("--login-max-failures-per-address")
        .arg("5")
        .arg("--trusted-proxies")
        .arg("127.0.0.1")
}

/// A login as if from `client`, through the (trusted) loopback proxy.
async fn login_from(
    api: &Api,
    client: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<Reply> {
    let body = json!({"username": username, "password": password});
    api.send(
        format!("login {username} from {client}"),
        api.http()
            .post(api.url("/api/auth/login"))
            .header("x-forwarded-for", client)
            .json(&body),
    )
    .await
}

fn expect_throttled(reply: &Reply) -> anyhow::Result<()> {
    reply.expect_detail(429, "Too many login attempts, retry later")?;
    let retry: u64 = reply
        .headers
        .get("retry-after")
        .context("429 without Retry-After")?
        .to_str()?
        .parse()
        .context("Retry-After is not a number of seconds")?;
    ensure!((1..=900).contains(&retry), "Retry-After {retry}");
    Ok(())
}

async fn failed_logins_are_throttled(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("guessed").await?;
    let attacker = "203.0.113.7";
    // Successes never count.
    for _ in 0..10 {
        login_from(&api, attacker, &alice.username, PASSWORD)
            .await?
            .expect_status(200)?;
    }
    for i in 0..3 {
        login_from(&api, attacker, &alice.username, "wrong-password")
            .await?
            .expect_detail(401, "Incorrect username or password")
            .with_context(|| format!("failure {i}"))?;
    }
    // Blocked for this pair, even with the right password.
    expect_throttled(&login_from(&api, attacker, &alice.username, "wrong-password").await?)?;
    expect_throttled(&login_from(&api, attacker, &alice.username, PASSWORD).await?)?;
    // Alice, from her own address, still logs in; so does the loopback peer itself.
    login_from(&api, "198.51.100.20", &alice.username, PASSWORD)
        .await?
        .expect_status(200)?;
    api.login(&alice.username, PASSWORD)
        .await?
        .expect_status(200)?;

    // One address spraying usernames (unknown ones included) is stopped as a whole.
    let sprayer = "192.0.2.99";
    for i in 0..5 {
        login_from(
            &api,
            sprayer,
            &unique_name(&format!("spray{i}")),
            "wrong-password",
        )
        .await?
        .expect_status(401)?;
    }
    let bob = api.new_user("innocent").await?;
    expect_throttled(&login_from(&api, sprayer, &bob.username, PASSWORD).await?)?;
    login_from(&api, "192.0.2.100", &bob.username, PASSWORD)
        .await?
        .expect_status(200)?;
    Ok(())
}

/// Without `--trusted-proxies`, `X-Forwarded-For` is the client's word and ignored:
/// forging a new address for each attempt does not escape the limit.
async fn forwarded_for_from_untrusted_peers_is_ignored(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("forger").await?;
    for i in 0..3 {
        login_from(
            &api,
            &format!("203.0.113.{i}"),
            &alice.username,
            "wrong-password",
        )
        .await?
        .expect_status(401)?;
    }
    expect_throttled(&login_from(&api, "203.0.113.200", &alice.username, PASSWORD).await?)
}

tests::e2e_on!(failed_logins_are_throttled, super::throttled, [sqlite_uring => (Sqlite, Uring)]);
tests::e2e_on!(
    forwarded_for_from_untrusted_peers_is_ignored,
    |o| o.arg("--login-max-failures").arg("3"),
    [sqlite_epoll => (Sqlite, Epoll)]
);
