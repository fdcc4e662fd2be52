//! The browser client: `GET /` serves a small chat page (plain HTML, CSS and
//! JavaScript) and `GET /static/<file>` its files, all built into the binary. It is a
//! client of the public API like any other, not part of it: the OpenAPI document does
//! not describe these routes.
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles and images
//! from this origin only, nothing inline, and connections only to this origin (fetch,
//! and the WebSocket under either scheme).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use hyper::Response;

use super::reply::{Body, Reply};
use crate::error::ApiError;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");
const ICON_SVG: &str = include_str!("icon.svg");

/// A fingerprint of the files, put in their URLs (`?v=`) so a new binary's page never
/// runs with a cached older script, while the files themselves may be cached for long.
const VERSION: u64 = fnv1a(&[APP_JS.as_bytes(), STYLE_CSS.as_bytes(), ICON_SVG.as_bytes()]);

const fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut p = 0;
    while p < parts.len() {
        let bytes = parts[p];
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        p += 1;
    }
    hash
}

/// The policy without the WebSocket sources, which name the request's host.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
    connect-src 'self'";

/// `GET /`: the page.
pub fn index(headers: &HeaderMap) -> Reply {
    let html = INDEX.replace("{{version}}", &format!("{VERSION:016x}"));
    Ok(respond(
        Bytes::from(html),
        "text/html; charset=utf-8",
        "no-cache",
        headers,
    ))
}

/// `GET /static/<name>`.
pub fn asset(name: &str, headers: &HeaderMap) -> Reply {
    let (body, content_type) = match name {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return Err(ApiError::NotFound("Not Found".into())),
    };
    // The page asks for these under a URL that changes with their content.
    let cache = "public, max-age=31536000, immutable";
    Ok(respond(
        Bytes::from_static(body.as_bytes()),
        content_type,
        cache,
        headers,
    ))
}

fn respond(
    body: Bytes,
    content_type: &'static str,
    cache: &'static str,
    request: &HeaderMap,
) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, policy(request));
    response
}

/// The policy, with this host's `ws:` and `wss:` named beside `'self'`: CSP 3 lets
/// `'self'` cover the WebSocket schemes of the page's origin, but older browsers
/// need them spelled out. A Host header that is not a plain host[:port] adds nothing.
fn policy(request: &HeaderMap) -> HeaderValue {
    let host = request
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| (1..=255).contains(&h.len()))
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let value = match host {
        Some(host) => format!("{POLICY} ws://{host} wss://{host}"),
        None => POLICY.to_owned(),
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(POLICY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response<Body>, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn host(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn page_references_only_its_own_files() {
        let page = index(&host("localhost:8000")).expect("page");
        assert_eq!(
            header(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&page, header::CACHE_CONTROL), "no-cache");
        let html = INDEX.replace("{{version}}", "x");
        assert!(!html.contains("http:") && !html.contains("https:"));
        assert!(!html.contains("<script>") && !html.contains("style="));
        for file in ["app.js", "style.css", "icon.svg"] {
            assert!(html.contains(&format!("/static/{file}?v=x")), "{file}");
            assert!(asset(file, &HeaderMap::new()).is_ok(), "{file}");
        }
        assert!(matches!(
            asset("nope.js", &HeaderMap::new()),
            Err(ApiError::NotFound(_))
        ));
    }

    #[test]
    fn policy_names_the_host_for_websockets() {
        let csp = policy(&host("chat.example:8443"));
        let csp = csp.to_str().expect("ascii");
        assert!(csp.starts_with("default-src 'none'; script-src 'self';"));
        assert!(csp.ends_with("connect-src 'self' ws://chat.example:8443 wss://chat.example:8443"));
        // A strange Host header changes nothing but the policy's tail.
        let odd = policy(&host("evil; script-src *"));
        assert_eq!(odd.to_str().expect("ascii"), POLICY);
        assert_eq!(policy(&HeaderMap::new()).to_str().expect("ascii"), POLICY);
    }

    #[test]
    fn script_never_writes_markup() {
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("outerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("document.write"));
        assert!(!APP_JS.contains("eval("));
    }
}
