//! Health, the OpenAPI spec and the locally served documentation pages.
#![allow(clippy::unwrap_used)]

use reqwest::Url;
use tests::prelude::*;

/// `GET /health` is 200 `{"status": "ok"}`.
async fn health(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let body = api.get("/health", None).await?.expect(200)?;
    ensure!(body["status"] == "ok", "health: {body}");
    Ok(())
}

/// Every REST route of docs/protocol.md, as (method, path with `{}` for parameters).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/auth/register"),
    ("post", "/api/auth/login"),
    ("get", "/api/auth/me"),
    ("get", "/api/users"),
    ("post", "/api/chat/conversations"),
    ("get", "/api/chat/conversations"),
    ("get", "/api/chat/conversations/{}"),
    ("post", "/api/chat/conversations/{}/participants"),
    ("delete", "/api/chat/conversations/{}/participants/{}"),
    ("get", "/api/chat/conversations/{}/messages"),
    ("get", "/health"),
];

/// `/api/x/{id}/y` -> `/api/x/{}/y`.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// `GET /openapi.json`: an OpenAPI 3 document with every REST route.
async fn openapi(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let spec = api.get("/openapi.json", None).await?.expect(200)?;
    let version = str_field(&spec, "openapi")?;
    ensure!(version.starts_with("3."), "openapi version {version:?}");
    ensure!(
        spec["info"]["title"].is_string(),
        "info.title: {}",
        spec["info"]
    );
    ensure!(
        spec["info"]["version"].is_string(),
        "info.version: {}",
        spec["info"]
    );
    let paths = spec["paths"]
        .as_object()
        .context("spec has no paths object")?;
    let mut missing = Vec::new();
    for (method, route) in ROUTES {
        let found = paths
            .iter()
            .any(|(p, item)| normalize(p) == *route && item.get(*method).is_some());
        if !found {
            missing.push(format!("{} {route}", method.to_uppercase()));
        }
    }
    ensure!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}; it has {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// Attribute values of `name=` in the HTML (quoted with ' or ").
fn attribute_values(html: &str, name: &str, tag: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut pos = 0;
    let open = format!("<{tag}");
    while let Some(start) = lower[pos..].find(&open) {
        let start = pos + start;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        let tag_text = &html[start..end];
        let tag_lower = &lower[start..end];
        let mut search = 0;
        let needle = format!("{name}=");
        while let Some(i) = tag_lower[search..].find(&needle) {
            let i = search + i;
            let before = tag_lower[..i].chars().last();
            let value_start = i + needle.len();
            search = value_start;
            if !before.is_some_and(char::is_whitespace) {
                continue;
            }
            let rest = &tag_text[value_start..];
            let value = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
                _ => rest
                    .split(|c: char| c.is_whitespace() || c == '>')
                    .next()
                    .unwrap_or(""),
            };
            out.push(value.to_string());
        }
        pos = end;
    }
    out
}

/// Fetches a docs page, checks it is HTML, and that every script and stylesheet it
/// references is served by this server (no CDN).
async fn check_docs_page(srv: &TestServer, path: &str) -> anyhow::Result<()> {
    let api = srv.api();
    let resp = api
        .http()
        .get(api.url(path))
        .send()
        .await
        .with_context(|| format!("GET {path}"))?;
    let page_url = resp.url().clone();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let html = resp.text().await?;
    ensure!(status == 200, "GET {path}: {status}: {html:.500}");
    ensure!(
        content_type.starts_with("text/html"),
        "GET {path}: content-type {content_type:?}"
    );
    let server = Url::parse(srv.base_url())?;
    // Relative references resolve against `<base href>` when the page has one.
    let base_url = match attribute_values(&html, "href", "base").first() {
        Some(base) => page_url
            .join(base)
            .with_context(|| format!("{path}: bad <base href={base:?}>"))?,
        None => page_url.clone(),
    };

    let scripts = attribute_values(&html, "src", "script");
    let styles = attribute_values(&html, "href", "link");
    ensure!(
        !scripts.is_empty(),
        "{path} references no script: {html:.2000}"
    );
    let mut external = Vec::new();
    let mut fetched = Vec::new();
    for reference in scripts.iter().chain(styles.iter()) {
        if reference.is_empty() || reference.starts_with("data:") || reference.starts_with('#') {
            continue;
        }
        let url = base_url
            .join(reference)
            .with_context(|| format!("{path}: bad reference {reference:?}"))?;
        if url.host_str() != server.host_str()
            || url.port_or_known_default() != server.port_or_known_default()
        {
            external.push(reference.clone());
            continue;
        }
        let resp = api.http().get(url.clone()).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        ensure!(status == 200, "{path}: asset {url} -> {status}");
        ensure!(!body.is_empty(), "{path}: asset {url} is empty");
        fetched.push(url.to_string());
    }
    ensure!(
        external.is_empty(),
        "{path} loads scripts/styles from other hosts (must be served locally): {external:?}"
    );
    ensure!(!fetched.is_empty(), "{path}: no local asset fetched");
    Ok(())
}

/// `GET /docs`: Swagger UI, served locally.
async fn swagger_ui(srv: &TestServer) -> anyhow::Result<()> {
    check_docs_page(srv, "/docs").await
}

/// `GET /redoc`: ReDoc, served locally.
async fn redoc(srv: &TestServer) -> anyhow::Result<()> {
    check_docs_page(srv, "/redoc").await
}

#[test]
fn attribute_parsing() {
    let html = r#"<html><head><link rel="stylesheet" href='./a.css'><script src="/b.js"></script>
        <script>var x = "src=nope";</script><SCRIPT SRC=c.js></SCRIPT><img src="d.png"></head></html>"#;
    assert_eq!(
        attribute_values(html, "src", "script"),
        vec!["/b.js", "c.js"]
    );
    assert_eq!(attribute_values(html, "href", "link"), vec!["./a.css"]);
    assert_eq!(
        normalize("/api/x/{conversation_id}/y/{user_id}"),
        "/api/x/{}/y/{}"
    );
}

tests::e2e!(health, openapi, swagger_ui, redoc);
