//! Generic HTTP behaviour: unknown routes, wrong methods (with `Allow`), body size
//! limit, content types, bodies that are JSON but not objects, empty query values.
#![allow(clippy::unwrap_used)]

use reqwest::Method;
use tests::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// Unknown routes: 404 `{"detail": "Not Found"}`.
async fn unknown_route(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("nf").await?;
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/api/nope"),
        (Method::POST, "/api/chat/nope"),
        (Method::GET, "/api/auth"),
        (Method::GET, "/api/chat/conversations/x/y/z/w"),
        (Method::DELETE, "/api/users/123"),
    ] {
        api.request(method.clone(), path, Some(&user.token), None)
            .await?
            .expect_detail(404, "Not Found")
            .with_context(|| format!("{method} {path}"))?;
        api.request(method.clone(), path, None, None)
            .await?
            .expect_detail(404, "Not Found")
            .with_context(|| format!("{method} {path} without token"))?;
    }
    Ok(())
}

/// Known route, wrong method: 405 `{"detail": "Method Not Allowed"}`.
async fn wrong_method(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("mna").await?;
    let conv = api.create_conversation(&user, "m", &[]).await?;
    let id = str_field(&conv, "id")?;
    let cases = [
        (Method::GET, "/api/auth/register".to_string()),
        (Method::PUT, "/api/auth/register".to_string()),
        (Method::GET, "/api/auth/login".to_string()),
        (Method::POST, "/api/auth/me".to_string()),
        (Method::DELETE, "/health".to_string()),
        (Method::POST, "/api/users".to_string()),
        (Method::PATCH, "/api/chat/conversations".to_string()),
        (Method::PUT, format!("/api/chat/conversations/{id}")),
        (
            Method::PUT,
            format!("/api/chat/conversations/{id}/participants"),
        ),
        (
            Method::POST,
            format!("/api/chat/conversations/{id}/messages"),
        ),
    ];
    for (method, path) in cases {
        let reply = api
            .request(method.clone(), &path, Some(&user.token), None)
            .await?;
        reply
            .expect_detail(405, "Method Not Allowed")
            .with_context(|| format!("{method} {path}"))?;
        // RFC 9110 15.5.6: a 405 says which methods the resource does take.
        let allow = reply
            .headers
            .get("allow")
            .with_context(|| format!("{method} {path}: 405 without Allow"))?
            .to_str()?
            .to_string();
        ensure!(
            !allow.split(',').any(|m| m.trim() == method.as_str()),
            "{method} {path}: Allow {allow:?} lists the refused method"
        );
        // What Allow lists is really routed (not 405 again).
        for allowed in allow.split(',').map(str::trim).filter(|m| *m != "HEAD") {
            let m = Method::from_bytes(allowed.as_bytes())?;
            let status = api
                .request(m, &path, Some(&user.token), Some(&json!({})))
                .await?
                .status;
            ensure!(
                status != 405,
                "{path}: Allow lists {allowed} but it is refused"
            );
        }
    }
    Ok(())
}

/// Every route that takes a body refuses JSON that is not an object with a 422
/// naming `body`, as FastAPI does, and creates nothing.
async fn non_object_bodies_are_422(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("shape").await?;
    let conv = api.create_conversation(&user, "shape", &[]).await?;
    let id = str_field(&conv, "id")?;
    let before = api.conversation_ids(&user).await?;
    let routes = [
        "/api/auth/register".to_string(),
        "/api/auth/login".to_string(),
        "/api/chat/conversations".to_string(),
        format!("/api/chat/conversations/{id}/participants"),
    ];
    for path in &routes {
        for body in [
            "[]",
            "[null, null]",
            r#"["bob", "password123"]"#,
            r#""text""#,
            "42",
            "true",
            "null",
        ] {
            let reply = api
                .post_json_bytes(path, Some(&user.token), body.as_bytes())
                .await?;
            let errors = reply
                .expect_validation(None)
                .with_context(|| format!("POST {path} {body}"))?;
            ensure!(
                errors.iter().any(|e| e["loc"] == json!(["body"])),
                "POST {path} {body}: {errors:?}"
            );
        }
    }
    ensure!(
        api.conversation_ids(&user).await? == before,
        "a non-object body created a conversation"
    );
    Ok(())
}

/// A plain GET of the WebSocket route: 426 with `Upgrade: websocket`, or 422 naming
/// `token` when that is missing too.
async fn plain_get_of_the_websocket_route(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("plainget").await?;
    let conv = api.create_conversation(&user, "p", &[]).await?;
    let id = str_field(&conv, "id")?;
    let path = format!("/api/chat/ws/{id}?token={}", user.token);
    let reply = api.get(&path, None).await?;
    reply.expect_detail(426, "Expected a WebSocket upgrade")?;
    ensure!(
        reply.headers.get("upgrade").and_then(|v| v.to_str().ok()) == Some("websocket"),
        "426 without Upgrade: {:?}",
        reply.headers
    );
    api.get(&format!("/api/chat/ws/{id}"), None)
        .await?
        .expect_validation(Some("token"))?;
    Ok(())
}

/// `before=` with no value is refused (422 naming `before`), not read as absent.
async fn empty_before_is_422(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("emptybefore").await?;
    let conv = api.create_conversation(&user, "b", &[]).await?;
    let id = str_field(&conv, "id")?;
    for query in ["before=", "before=%20", "limit=10&before="] {
        let errors = api
            .history(&user, &id, query)
            .await?
            .expect_validation(Some("before"))
            .with_context(|| query.to_string())?;
        ensure!(!errors.is_empty());
    }
    Ok(())
}

/// A valid registration body padded with JSON whitespace to `size` bytes.
fn padded_register_body(size: usize) -> Vec<u8> {
    let json = format!(
        r#"{{"username":"{}","password":"password123"}}"#,
        unique_name("big")
    );
    let mut body = json.into_bytes();
    let pad = size.saturating_sub(body.len());
    body.extend(std::iter::repeat_n(b' ', pad));
    body
}

/// Bodies over 1 MiB get 413; bodies under it are processed.
async fn body_too_large(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("big").await?;

    let over = padded_register_body(MIB + 1);
    assert_eq!(over.len(), MIB + 1);
    api.request_raw(
        Method::POST,
        "/api/auth/register",
        None,
        "application/json",
        over,
    )
    .await?
    .expect_error(413)?;
    let over = vec![b' '; 2 * MIB];
    api.request_raw(
        Method::POST,
        "/api/chat/conversations",
        Some(&user.token),
        "application/json",
        over,
    )
    .await?
    .expect_error(413)?;

    // Just under the limit is accepted.
    let under = padded_register_body(MIB - 1024);
    api.request_raw(
        Method::POST,
        "/api/auth/register",
        None,
        "application/json",
        under,
    )
    .await?
    .expect(201)?;

    // The server still serves normally afterwards.
    api.me(&user.token).await?.expect(200)?;
    Ok(())
}

/// A chunked body (no Content-Length) over 1 MiB also gets 413.
async fn chunked_body_too_large(srv: &TestServer) -> anyhow::Result<()> {
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /api/auth/register HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b' '; 64 * 1024];
    // The server may answer and close before the whole body is sent: stop writing then.
    for _ in 0..24 {
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    ensure!(read.is_ok(), "no response to a 1.5 MiB chunked body");
    let text = String::from_utf8_lossy(&response);
    ensure!(
        text.starts_with("HTTP/1.1 413"),
        "expected 413 for a chunked body over 1 MiB, got: {text:.300}"
    );
    Ok(())
}

/// JSON responses say `application/json`, for successes and errors alike.
async fn json_content_type(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let name = unique_name("ct");
    let replies = vec![
        api.register(&name, PASSWORD).await?,
        api.register(&name, PASSWORD).await?,
        api.register("x", PASSWORD).await?,
        api.login(&name, PASSWORD).await?,
        api.login(&name, "wrong-password").await?,
        api.get("/api/auth/me", None).await?,
        api.get("/health", None).await?,
        api.get("/openapi.json", None).await?,
        api.get("/nope", None).await?,
        api.request(Method::PUT, "/health", None, None).await?,
    ];
    for reply in replies {
        ensure!(
            reply.content_type().starts_with("application/json"),
            "{} -> {}: content-type {:?}",
            reply.request,
            reply.status,
            reply.content_type()
        );
        reply.json()?;
    }
    Ok(())
}

tests::e2e!(
    unknown_route,
    wrong_method,
    body_too_large,
    chunked_body_too_large,
    json_content_type,
    non_object_bodies_are_422,
    empty_before_is_422,
    plain_get_of_the_websocket_route,
);

/// The body limit follows `--max-body-bytes`.
async fn body_limit_is_configurable(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    api.request_raw(
        Method::POST,
        "/api/auth/register",
        None,
        "application/json",
        padded_register_body(1000),
    )
    .await?
    .expect(201)?;
    api.request_raw(
        Method::POST,
        "/api/auth/register",
        None,
        "application/json",
        padded_register_body(3000),
    )
    .await?
    .expect_error(413)?;
    Ok(())
}

tests::e2e!(
    options = |opts| opts.arg("--max-body-bytes").arg("2048");
    body_limit_is_configurable,
);
