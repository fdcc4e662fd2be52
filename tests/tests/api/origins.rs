//! Browser origins (`--allowed-origins`): REST preflights are answered for listed
//! origins only, and only listed origins get `Access-Control-Allow-Origin`. WebSocket
//! upgrades (which browsers never preflight) depend on the mode: without
//! `--production` any origin may open one (auth is a token in the URL, not a cookie),
//! `Origin: null` from a page opened from a file included; with `--production` an
//! origin that is not listed is refused with 403. Clients without `Origin` and the
//! server's own origin are always allowed.

use tests::prelude::*;
use tests::realtime::group;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const APP: &str = "http://app.example";

/// The HTTP status of a WebSocket upgrade sent with `origin` (101 when it opened).
async fn upgrade_status(
    srv: &TestServer,
    conv: &str,
    token: &str,
    origin: Option<&str>,
) -> anyhow::Result<u16> {
    let url = tests::ws::ws_url(&srv.ws_base_url(), conv, token);
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse()?);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(WsError::Http(response)) => Ok(response.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

/// Without `--production`: a WebSocket from any origin opens (the quick-start's
/// console snippet on another site, a page opened from a file), while REST stays
/// same-origin for browsers.
async fn any_origin_opens_a_websocket_by_default(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["origin"]).await?;
    for origin in [None, Some(srv.base_url()), Some(APP), Some("null")] {
        let status = upgrade_status(srv, &conv, &alice.token, origin).await?;
        ensure!(status == 101, "origin {origin:?}: {status}");
    }
    rest_is_same_origin_only(&api).await
}

/// CORS is not granted to an unlisted origin: no `Access-Control-Allow-Origin`, and
/// its preflight is refused.
async fn rest_is_same_origin_only(api: &Api) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let read = http
        .get(api.url("/health"))
        .header("origin", APP)
        .send()
        .await?;
    ensure!(
        read.headers().get("access-control-allow-origin").is_none(),
        "CORS granted by default: {:?}",
        read.headers()
    );
    let preflight = http
        .request(reqwest::Method::OPTIONS, api.url("/api/auth/login"))
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    ensure!(
        preflight.status() == 403,
        "preflight: {}",
        preflight.status()
    );
    Ok(())
}

/// With `--production`: WebSockets from the server's own origin and from clients
/// without `Origin` only.
async fn production_is_same_origin_only(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["origin"]).await?;
    let own = srv.base_url().to_string();
    ensure!(
        upgrade_status(srv, &conv, &alice.token, None).await? == 101,
        "no Origin"
    );
    ensure!(
        upgrade_status(srv, &conv, &alice.token, Some(&own)).await? == 101,
        "own origin"
    );
    for foreign in [APP, "null"] {
        ensure!(
            upgrade_status(srv, &conv, &alice.token, Some(foreign)).await? == 403,
            "origin {foreign} opened a WebSocket"
        );
    }
    rest_is_same_origin_only(&api).await
}

async fn listed_origins_get_cors_and_websockets(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["origin"]).await?;
    ensure!(
        upgrade_status(srv, &conv, &alice.token, Some(APP)).await? == 101,
        "listed origin"
    );
    ensure!(
        upgrade_status(srv, &conv, &alice.token, Some("http://evil.example")).await? == 403,
        "unlisted origin"
    );
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, api.url("/api/auth/login"))
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?;
    ensure!(
        preflight.status() == 204,
        "preflight: {}",
        preflight.status()
    );
    let h = preflight.headers();
    ensure!(
        h.get("access-control-allow-origin")
            .is_some_and(|v| v == APP),
        "{h:?}"
    );
    ensure!(
        h.get("access-control-allow-headers")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("authorization") && v.contains("content-type")),
        "{h:?}"
    );
    let read = http
        .get(api.url("/api/auth/me"))
        .header("origin", APP)
        .bearer_auth(&alice.token)
        .send()
        .await?;
    ensure!(read.status() == 200, "{}", read.status());
    ensure!(
        read.headers()
            .get("access-control-allow-origin")
            .is_some_and(|v| v == APP),
        "{:?}",
        read.headers()
    );
    Ok(())
}

tests::e2e_on!(
    any_origin_opens_a_websocket_by_default,
    |o| o,
    [sqlite_uring => (Sqlite, Uring), postgres_epoll => (Postgres, Epoll)]
);
tests::e2e_on!(
    production_is_same_origin_only,
    |o| o.arg("--production"),
    [sqlite_uring => (Sqlite, Uring)]
);
tests::e2e_on!(
    listed_origins_get_cors_and_websockets,
    |o| o
        .arg("--production")
        .arg("--allowed-origins")
        .arg("http://app.example,https://other.example"),
    [sqlite_epoll => (Sqlite, Epoll)]
);

#[test]
fn production_refuses_any_origin() {
    let binary = testkit::server_binary(testkit::Profile::Current).expect("the server binary");
    let out = std::process::Command::new(binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--production",
            "--allowed-origins",
            "*",
        ])
        .env(
            "SECRET_KEY",
            "a-production-key-that-is-long-enough-0123456789",
        )
        .output()
        .expect("running the server");
    assert!(!out.status.success(), "started with --production and '*'");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allowed-origins"), "{stderr}");
}
