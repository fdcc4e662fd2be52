//! The browser client: `GET /` serves a small chat page (plain HTML, CSS and
//! JavaScript) and `GET /static/<file>` its files, all built into the binary. It is a
//! client of the public API like any other, not part of it: the OpenAPI document does
//! not describe these routes.
//!
//! The script is a handful of ES modules (`app.js` imports the others). Each file's
//! URL carries the page's version (`?v=`), so the files may be cached for long and a
//! new binary's page still never runs with an older one: the version is written into
//! the HTML and into every module's imports (`{{version}}`) when they are served, since
//! a module's imports would otherwise name the files without it.
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
const STYLE_CSS: &str = include_str!("style.css");
const ICON_SVG: &str = include_str!("icon.svg");

/// The modules, by the name they are served under: the entry first.
const SCRIPTS: [(&str, &str); 8] = [
    ("app.js", include_str!("app.js")),
    ("shared.js", include_str!("shared.js")),
    ("session.js", include_str!("session.js")),
    ("stream.js", include_str!("stream.js")),
    ("conversations.js", include_str!("conversations.js")),
    ("messages.js", include_str!("messages.js")),
    ("manage.js", include_str!("manage.js")),
    ("search.js", include_str!("search.js")),
];

/// A fingerprint of the files, put in their URLs (`?v=`) so a new binary's page never
/// runs with a cached older script, while the files themselves may be cached for long.
const VERSION: u64 = fingerprint();

const fn fingerprint() -> u64 {
    let mut hash = fnv1a(FNV_OFFSET, INDEX.as_bytes());
    hash = fnv1a(hash, STYLE_CSS.as_bytes());
    hash = fnv1a(hash, ICON_SVG.as_bytes());
    let mut i = 0;
    while i < SCRIPTS.len() {
        hash = fnv1a(hash, SCRIPTS[i].1.as_bytes());
        i += 1;
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The text with the page's version in place of every `{{version}}`.
fn versioned(text: &str) -> Bytes {
    Bytes::from(text.replace("{{version}}", &format!("{VERSION:016x}")))
}

/// The policy without the WebSocket sources, which name the request's host.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
    connect-src 'self'";

/// `GET /`: the page.
pub fn index(headers: &HeaderMap) -> Reply {
    Ok(respond(
        versioned(INDEX),
        "text/html; charset=utf-8",
        "no-cache",
        headers,
    ))
}

/// `GET /static/<name>`.
pub fn asset(name: &str, headers: &HeaderMap) -> Reply {
    let (body, content_type) = match name {
        "style.css" => (
            Bytes::from_static(STYLE_CSS.as_bytes()),
            "text/css; charset=utf-8",
        ),
        "icon.svg" => (Bytes::from_static(ICON_SVG.as_bytes()), "image/svg+xml"),
        _ => match SCRIPTS.iter().find(|(file, _)| *file == name) {
            Some((_, script)) => (versioned(script), "text/javascript; charset=utf-8"),
            None => return Err(ApiError::NotFound("Not Found".into())),
        },
    };
    // The page asks for these under a URL that changes with their content.
    let cache = "public, max-age=31536000, immutable";
    Ok(respond(body, content_type, cache, headers))
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
        let files = SCRIPTS.iter().map(|(file, _)| *file);
        for file in files.chain(["style.css", "icon.svg"]) {
            assert!(html.contains(&format!("/static/{file}?v=x")), "{file}");
            assert!(asset(file, &HeaderMap::new()).is_ok(), "{file}");
        }
        assert!(html.contains(r#"<script type="module" src="/static/app.js?v=x">"#));
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
        for (file, script) in SCRIPTS {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!script.contains(banned), "{file} uses {banned}");
            }
        }
    }

    /// One module per URL: an import without the version would load a second copy
    /// of a module (with its own state) beside the one the page preloads.
    #[test]
    fn modules_import_each_other_by_versioned_url() {
        let names: Vec<&str> = SCRIPTS.iter().map(|(file, _)| *file).collect();
        for (file, script) in SCRIPTS {
            let imports = script
                .lines()
                .filter(|l| l.starts_with("import ") || l.starts_with("} from "));
            for line in imports.filter(|l| l.contains(" from \"")) {
                let target = line.split(" from \"").nth(1).unwrap_or_default();
                let target = target.split('"').next().unwrap_or_default();
                let (path, version) = target.split_once('?').unwrap_or((target, ""));
                let name = path.strip_prefix("./").unwrap_or_default();
                assert!(names.contains(&name), "{file} imports {target}");
                assert_eq!(version, "v={{version}}", "{file} imports {target}");
            }
        }
        let body = versioned(SCRIPTS[0].1);
        let text = std::str::from_utf8(&body).expect("utf-8");
        assert!(!text.contains("{{version}}"));
        assert!(text.contains(&format!("./shared.js?v={VERSION:016x}")));
    }
}
