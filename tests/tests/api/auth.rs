//! Registration, login, `/api/auth/me` and the user lookup.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tests::jwt;
use tests::prelude::*;

fn short_id(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..n].to_string()
}

/// Asserts that a user object carries no password or hash under any usual name.
fn ensure_no_password(user: &Value, what: &str) -> anyhow::Result<()> {
    for secret in ["password", "hashed_password", "password_hash"] {
        ensure!(user.get(secret).is_none(), "{what} leaks {secret}: {user}");
    }
    Ok(())
}

/// Registers a fresh user named `<prefix>_<hex>` with [`PASSWORD`] (201) and logs in
/// (200); returns the name, the registration body and the login body.
async fn register_and_login(api: &Api, prefix: &str) -> anyhow::Result<(String, Value, Value)> {
    let name = unique_name(prefix);
    let registered = api.register(&name, PASSWORD).await?.expect(201)?;
    let login = api.login(&name, PASSWORD).await?.expect(200)?;
    Ok((name, registered, login))
}

/// 201 with `{id, username, created_at}`, boundary lengths and every allowed character.
async fn register_success(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let name = unique_name("reg");
    let reply = api.register(&name, PASSWORD).await?;
    let body = reply.expect(201)?;
    ensure!(!str_field(&body, "id")?.is_empty(), "empty id: {body}");
    ensure!(
        str_field(&body, "username")? == name,
        "username not echoed: {body}"
    );
    timestamp_field(&body, "created_at")?;
    ensure_no_password(&body, "register")?;

    // Boundaries: 3 and 32 characters of username, 8 and 128 of password.
    let three = format!("a{}", short_id(2));
    api.register(&three, "12345678").await?.expect(201)?;
    let thirty_two = format!("b{}", short_id(31));
    assert_eq!(thirty_two.len(), 32);
    api.register(&thirty_two, &"p".repeat(128))
        .await?
        .expect(201)?;
    // Every allowed character class: [A-Za-z0-9_.-]
    let mixed = format!("Ab9_.-{}", short_id(8));
    let body = api.register(&mixed, PASSWORD).await?.expect(201)?;
    ensure!(
        str_field(&body, "username")? == mixed,
        "username not echoed: {body}"
    );
    // Two users get different ids.
    let other = api
        .register(&unique_name("reg2"), PASSWORD)
        .await?
        .expect(201)?;
    ensure!(
        other["id"] != body["id"],
        "two users share an id: {body} {other}"
    );
    Ok(())
}

/// 409 when the username is taken (also with a different password).
async fn register_conflict(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let name = unique_name("dup");
    api.register(&name, PASSWORD).await?.expect(201)?;
    api.register(&name, PASSWORD).await?.expect_error(409)?;
    api.register(&name, "another-password")
        .await?
        .expect_error(409)?;
    // The original password still works.
    api.login(&name, PASSWORD).await?.expect(200)?;
    Ok(())
}

/// 422 with FastAPI's list-shaped detail naming the field.
async fn register_validation(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ok = unique_name("val");
    let bad_usernames = [
        ("too short", json!("ab")),
        ("too long", json!("c".repeat(33))),
        ("empty", json!("")),
        ("with space", json!("bad name")),
        ("with !", json!("bad!name")),
        ("with /", json!("bad/name")),
        ("non-ascii", json!("bädname")),
        ("is a number", json!(5)),
        ("is null", Value::Null),
        ("is a list", json!([ok])),
    ];
    let bad_passwords = [
        ("too short", json!("1234567")),
        ("too long", json!("p".repeat(129))),
        ("is a number", json!(12345678)),
    ];
    let mut cases: Vec<(String, Value, &str)> = vec![
        (
            "password missing".into(),
            json!({"username": ok}),
            "password",
        ),
        (
            "username missing".into(),
            json!({"password": PASSWORD}),
            "username",
        ),
    ];
    for (what, username) in bad_usernames {
        let body = json!({"username": username, "password": PASSWORD});
        cases.push((format!("username {what}"), body, "username"));
    }
    for (what, password) in bad_passwords {
        let body = json!({"username": ok, "password": password});
        cases.push((format!("password {what}"), body, "password"));
    }
    for (what, body, field) in cases {
        let reply = api.post("/api/auth/register", None, &body).await?;
        reply
            .expect_validation(Some(field))
            .with_context(|| format!("case: {what}"))?;
    }
    // None of those created the otherwise valid user.
    api.login(&ok, PASSWORD).await?.expect_error(401)?;
    Ok(())
}

/// Unknown fields are ignored, as by a FastAPI (pydantic) model: clients may send more.
async fn register_ignores_unknown_fields(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let name = unique_name("extra");
    let body = json!({"username": name, "password": PASSWORD, "email": "a@example.com"});
    let created = api
        .post("/api/auth/register", None, &body)
        .await?
        .expect(201)?;
    ensure!(created["username"] == name.as_str(), "{created}");
    let body = json!({"username": name, "password": PASSWORD, "remember_me": true});
    api.post("/api/auth/login", None, &body)
        .await?
        .expect(200)?;
    Ok(())
}

/// Malformed or non-object JSON bodies: 422, never 400/500.
async fn register_malformed_json(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let bodies: [&[u8]; 5] = [
        br#"{"username": "abcdef", "password": "#,
        b"not json at all",
        b"[]",
        b"\"a string\"",
        b"",
    ];
    for raw in bodies {
        let reply = api.post_json_bytes("/api/auth/register", None, raw).await?;
        let detail = reply
            .expect_validation(None)
            .with_context(|| format!("body {:?}", String::from_utf8_lossy(raw)))?;
        let first_loc = detail[0]["loc"][0].as_str();
        ensure!(
            first_loc == Some("body"),
            "malformed body {:?}: loc should start with \"body\": {detail:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Invalid JSON specifically: FastAPI reports `["body", <position>]`.
    let reply = api
        .post_json_bytes("/api/auth/register", None, b"{\"username\": ")
        .await?;
    let detail = reply.expect_validation(None)?;
    ensure!(
        detail[0]["loc"].as_array().is_some_and(|l| l.len() == 2),
        "malformed JSON loc should be [\"body\", <pos>]: {detail:?}"
    );
    Ok(())
}

/// 200 `{access_token, token_type: "bearer", user_id}`; the JWT is HS256 with `sub`
/// = user id and an `exp`.
async fn login_success(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (name, registered, body) = register_and_login(&api, "login").await?;
    ensure!(body["token_type"] == "bearer", "token_type: {body}");
    ensure!(
        body["user_id"] == registered["id"],
        "user_id {body} vs {registered}"
    );
    let token = str_field(&body, "access_token")?;
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "access_token is not a JWT: {token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
    ensure!(header["alg"] == "HS256", "JWT alg: {header}");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    ensure!(claims["sub"] == registered["id"], "JWT sub: {claims}");
    let exp = claims["exp"]
        .as_i64()
        .context("JWT exp is not an integer")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    ensure!(exp > now, "JWT already expired: {claims}");
    // A second login works too and the token is usable.
    let again = api.login(&name, PASSWORD).await?.expect(200)?;
    api.me(&str_field(&again, "access_token")?)
        .await?
        .expect(200)?;
    Ok(())
}

/// 401 `{"detail": "Incorrect username or password"}`.
async fn login_failures(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let name = unique_name("loginf");
    api.register(&name, PASSWORD).await?.expect(201)?;
    let wrong = "Incorrect username or password";
    api.login(&name, "wrong-password")
        .await?
        .expect_detail(401, wrong)?;
    api.login(&name, &PASSWORD.to_uppercase())
        .await?
        .expect_detail(401, wrong)?;
    api.login(&unique_name("nobody"), PASSWORD)
        .await?
        .expect_detail(401, wrong)?;
    // Validation errors are 422, not 401.
    api.post("/api/auth/login", None, &json!({"username": name}))
        .await?
        .expect_validation(Some("password"))?;
    api.post("/api/auth/login", None, &json!({"password": PASSWORD}))
        .await?
        .expect_validation(Some("username"))?;
    Ok(())
}

/// 200 `{id, username, created_at}` for the token's user.
async fn me_success(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let (name, registered, login) = register_and_login(&api, "me").await?;
    let me = api
        .me(&str_field(&login, "access_token")?)
        .await?
        .expect(200)?;
    ensure!(me["id"] == registered["id"], "me {me} vs {registered}");
    ensure!(me["username"] == name.as_str(), "me {me}");
    ensure!(
        me["created_at"] == registered["created_at"],
        "created_at differs: {me} vs {registered}"
    );
    timestamp_field(&me, "created_at")?;
    Ok(())
}

/// Every way of not being authenticated gets 401 with a string `detail`.
async fn me_unauthorized(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("meu").await?;
    api.get("/api/auth/me", None).await?.expect_error(401)?;

    let bad_tokens = vec![
        ("garbage", "garbage".to_string()),
        ("three garbage parts", "aaa.bbb.ccc".to_string()),
        (
            "other key",
            jwt::hs256(&jwt::random_key(), &user.user_id, 3600)?,
        ),
        (
            "expired",
            jwt::hs256(srv.secret_key(), &user.user_id, -3600)?,
        ),
        ("alg none", jwt::alg_none(&user.user_id)),
        (
            "truncated signature",
            user.token[..user.token.len() - 4].to_string(),
        ),
    ];
    for (what, token) in bad_tokens {
        api.me(&token)
            .await?
            .expect_error(401)
            .with_context(|| format!("token: {what}"))?;
    }

    // Wrong scheme and empty bearer.
    for header in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        user.token.as_str(),
    ] {
        let reply = api
            .send(
                format!("GET /api/auth/me (Authorization: {header:.12}...)"),
                api.http()
                    .get(api.url("/api/auth/me"))
                    .header("Authorization", header),
            )
            .await?;
        reply.expect_error(401)?;
    }
    Ok(())
}

/// A token the test signs with the server's key for a real user is accepted (HS256,
/// `sub` = user id, key from the configured secret); for an unknown user it is 401.
async fn token_signed_with_server_key(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("forge").await?;
    let token = jwt::hs256(srv.secret_key(), &user.user_id, 3600)?;
    let me = api.me(&token).await?.expect(200)?;
    ensure!(me["id"] == user.user_id.as_str(), "me: {me}");

    // Other well-formed claims sets are fine too.
    let now = jwt::unix_now();
    let token = jwt::hs256_claims(
        srv.secret_key(),
        &json!({"sub": user.user_id, "iat": now, "exp": now + 600, "jti": "x", "type": "access"}),
    )?;
    api.me(&token).await?.expect(200)?;

    let ghost = uuid::Uuid::new_v4().to_string();
    let token = jwt::hs256(srv.secret_key(), &ghost, 3600)?;
    api.me(&token).await?.expect_error(401)?;
    Ok(())
}

/// The token shape of the FastAPI original (python-jose): only `sub` and `exp`, no
/// `iat`. The protocol (docs/protocol.md) requires just those two, so such a token must be accepted.
async fn token_with_sub_and_exp_only(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("subexp").await?;
    let token = jwt::hs256_claims(
        srv.secret_key(),
        &json!({"sub": user.user_id, "exp": jwt::unix_now() + 3600}),
    )?;
    let me = api.me(&token).await?.expect(200)?;
    ensure!(me["id"] == user.user_id.as_str(), "me: {me}");
    // Without `exp` it is refused.
    let token = jwt::hs256_claims(srv.secret_key(), &json!({"sub": user.user_id}))?;
    api.me(&token).await?.expect_error(401)?;
    Ok(())
}

/// `GET /api/users?username=NAME`: exact match, empty list when none, 401 without token.
async fn users_lookup(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let me = api.new_user("look").await?;
    let target = unique_name("target");
    let registered = api.register(&target, PASSWORD).await?.expect(201)?;
    // A user whose name extends the target's: must not match.
    let longer = format!("{target}x");
    api.register(&longer, PASSWORD).await?.expect(201)?;

    let found = api
        .lookup_user(Some(&me.token), &target)
        .await?
        .expect(200)?;
    let list = as_list(&found)?;
    ensure!(list.len() == 1, "exact match should give one user: {found}");
    ensure!(list[0]["id"] == registered["id"], "lookup id: {found}");
    ensure!(
        list[0]["username"] == target.as_str(),
        "lookup username: {found}"
    );
    ensure_no_password(&list[0], "lookup")?;

    // Prefix of a name and unknown names: empty list.
    let prefix = &target[..target.len() - 1];
    for name in [prefix, &unique_name("none")] {
        let none = api.lookup_user(Some(&me.token), name).await?.expect(200)?;
        ensure!(
            as_list(&none)?.is_empty(),
            "lookup {name:?} should be empty: {none}"
        );
    }

    api.lookup_user(None, &target).await?.expect_error(401)?;
    api.lookup_user(Some("garbage"), &target)
        .await?
        .expect_error(401)?;
    Ok(())
}

tests::e2e!(
    register_success,
    register_conflict,
    register_validation,
    register_malformed_json,
    register_ignores_unknown_fields,
    login_success,
    login_failures,
    me_success,
    me_unauthorized,
    token_signed_with_server_key,
    token_with_sub_and_exp_only,
    users_lookup,
);
