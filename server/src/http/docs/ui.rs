//! The two documentation UIs, served from bytes built into the binary: Swagger UI as
//! embedded by `utoipa-swagger-ui` (feature `vendored`), ReDoc from the bundle vendored
//! in `server/assets/`. Both read `/openapi.json`. Nothing here references another
//! origin: no CDN, no web fonts, no online validator.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use utoipa_swagger_ui::Config;

use http::{header, HeaderValue};
use hyper::Response;

use crate::error::ApiError;
use crate::http::reply::Body;

/// Where the UIs fetch the document from.
const SPEC_URL: &str = "/openapi.json";

/// Where Swagger UI's files live. The router cannot tell `/docs` from `/docs/` (it
/// trims the slash), so instead of redirecting, the page declares this base: its
/// relative asset URLs (`./swagger-ui.css`) then resolve under `/docs/` either way.
const SWAGGER_BASE: &str = "/docs/";

const REDOC_JS: &[u8] = include_bytes!("../../../assets/redoc.standalone.js");
const REDOC_LICENSES: &[u8] = include_bytes!("../../../assets/redoc.standalone.js.LICENSE.txt");

/// ReDoc's page. No font link: ReDoc's own examples load Google Fonts, which would
/// break offline use and leak visits; the theme falls back to local fonts.
const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Chat API - ReDoc</title>
    <style>body { margin: 0; padding: 0; }</style>
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"></script>
  </body>
</html>
"#;

fn not_found() -> ApiError {
    ApiError::NotFound("Not Found".into())
}

/// Swagger UI's configuration, shared by every shard.
fn swagger_config() -> Arc<Config<'static>> {
    static CONFIG: OnceLock<Arc<Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // Without `none`, Swagger UI sends the document to validator.swagger.io and
            // shows its badge: an external request on every page view.
            let config = Config::new([SPEC_URL])
                .validator_url("none")
                .persist_authorization(true);
            Arc::new(config)
        })
        .clone()
}

/// A file of Swagger UI; `rest` is "" for the page.
pub(super) fn swagger(rest: &str) -> Result<Asset, ApiError> {
    let name = if rest.is_empty() { "index.html" } else { rest };
    let file = utoipa_swagger_ui::serve(name, swagger_config())
        .map_err(|e| ApiError::unavailable("Documentation unavailable", e.to_string()))?
        .ok_or_else(not_found)?;
    let mut body = file.bytes;
    if name == "index.html" {
        body = Cow::Owned(with_base(&body).into_bytes());
    }
    let body = match body {
        Cow::Borrowed(bytes) => Bytes::from_static(bytes),
        Cow::Owned(bytes) => Bytes::from(bytes),
    };
    // The page and the initializer (which embeds the configuration) must follow the
    // binary; the bundles are the same for a given crate version.
    let revalidate = name.ends_with(".html") || name == "swagger-initializer.js";
    Ok(Asset {
        body,
        content_type: with_charset(&file.content_type),
        revalidate,
    })
}

/// Swagger's `index.html` with `<base href="/docs/">` as the first element of `<head>`.
fn with_base(page: &[u8]) -> String {
    let page = String::from_utf8_lossy(page);
    let base = format!("<base href=\"{SWAGGER_BASE}\">");
    match page.find("<head>") {
        Some(at) => {
            let end = at + "<head>".len();
            format!("{}\n    {base}{}", &page[..end], &page[end..])
        }
        // Not the page layout this was written for: the base still works at the top.
        None => format!("{base}\n{page}"),
    }
}

/// Text types say their encoding, so no browser guesses another one.
fn with_charset(content_type: &str) -> String {
    if content_type.starts_with("text/") && !content_type.contains("charset") {
        format!("{content_type}; charset=utf-8")
    } else {
        content_type.to_owned()
    }
}

/// A file of ReDoc; `rest` is "" for the page.
pub(super) fn redoc(rest: &str) -> Result<Asset, ApiError> {
    let (body, content_type, revalidate) = match rest {
        "" | "index.html" => (REDOC_PAGE.as_bytes(), "text/html; charset=utf-8", true),
        "redoc.standalone.js" => (REDOC_JS, "text/javascript; charset=utf-8", false),
        // The bundle's first line points here for its third-party licences.
        "redoc.standalone.js.LICENSE.txt" => (REDOC_LICENSES, "text/plain; charset=utf-8", false),
        _ => return Err(not_found()),
    };
    Ok(Asset {
        body: Bytes::from_static(body),
        content_type: content_type.into(),
        revalidate,
    })
}

/// A file the docs routes serve from the binary.
pub(super) struct Asset {
    pub(super) body: Bytes,
    pub(super) content_type: String,
    /// The spec, the pages and the Swagger initializer change with the binary under
    /// the same URL, so browsers must revalidate them; the big bundles may be kept
    /// for an hour.
    pub(super) revalidate: bool,
}

impl Asset {
    pub(super) fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::new(self.body));
        let headers = response.headers_mut();
        let content_type = HeaderValue::from_str(&self.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CONTENT_TYPE, content_type);
        let cache = if self.revalidate {
            "no-cache"
        } else {
            "public, max-age=3600"
        };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        // Content types are exact, so browsers must not second-guess them.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(asset: &Asset) -> &str {
        std::str::from_utf8(&asset.body).expect("utf-8")
    }

    /// The values of every `src="..."` and `href="..."` of a page.
    fn references(page: &str) -> Vec<String> {
        let mut refs = Vec::new();
        for attr in ["src=\"", "href=\""] {
            for chunk in page.split(attr).skip(1) {
                refs.push(chunk.split('"').next().unwrap_or_default().to_owned());
            }
        }
        refs
    }

    fn is_external(url: &str) -> bool {
        let url = url.to_ascii_lowercase();
        url.starts_with("http:") || url.starts_with("https:") || url.starts_with("//")
    }

    #[test]
    fn swagger_page_loads_only_local_files() {
        for rest in ["", "index.html"] {
            let page = swagger(rest).expect("index");
            assert_eq!(page.content_type, "text/html; charset=utf-8");
            let html = text(&page);
            assert!(html.contains("<base href=\"/docs/\">"), "{html}");
            let refs = references(html);
            assert!(refs.len() >= 4, "{refs:?}");
            for url in refs.iter().filter(|u| u.as_str() != SWAGGER_BASE) {
                assert!(!is_external(url), "external reference {url}");
                // Resolved against the base, each one must be served.
                let name = url.trim_start_matches("./");
                assert!(swagger(name).is_ok(), "{url} not served");
            }
        }
    }

    #[test]
    fn swagger_files_have_their_content_types() {
        let expect = [
            ("swagger-ui.css", "text/css; charset=utf-8"),
            ("index.css", "text/css; charset=utf-8"),
            ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
            (
                "swagger-ui-standalone-preset.js",
                "text/javascript; charset=utf-8",
            ),
            ("favicon-32x32.png", "image/png"),
        ];
        for (name, content_type) in expect {
            let asset = swagger(name).unwrap_or_else(|_| panic!("{name}"));
            assert_eq!(asset.content_type, content_type, "{name}");
            assert!(!asset.body.is_empty(), "{name}");
        }
        assert!(matches!(swagger("nope.js"), Err(ApiError::NotFound(_))));
    }

    #[test]
    fn swagger_reads_the_local_spec_without_the_online_validator() {
        let init = swagger("swagger-initializer.js").expect("initializer");
        let js = text(&init);
        assert!(js.contains("\"url\": \"/openapi.json\""), "{js}");
        assert!(js.contains("\"validatorUrl\": \"none\""), "{js}");
        assert!(!js.contains("{{config}}"), "{js}");
        assert!(init.revalidate);
    }

    #[test]
    fn redoc_page_is_self_contained() {
        for rest in ["", "index.html"] {
            let page = redoc(rest).expect("page");
            assert_eq!(page.content_type, "text/html; charset=utf-8");
            let html = text(&page);
            assert!(
                !html.contains("http://") && !html.contains("https://"),
                "{html}"
            );
            assert!(!html.contains("fonts.googleapis"), "{html}");
            assert!(html.contains("<redoc spec-url=\"/openapi.json\">"));
            let refs = references(html);
            assert_eq!(refs, ["/redoc/redoc.standalone.js"]);
            for url in refs {
                let name = url.trim_start_matches("/redoc/");
                assert!(redoc(name).is_ok(), "{url} not served");
            }
        }
    }

    #[test]
    fn redoc_bundle_is_served_with_its_licence_pointer() {
        let js = redoc("redoc.standalone.js").expect("bundle");
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
        assert!(js.body.starts_with(
            b"/*! For license information please see redoc.standalone.js.LICENSE.txt */"
        ));
        let licences = redoc("redoc.standalone.js.LICENSE.txt").expect("licences");
        assert!(text(&licences).contains("ReDoc"));
        assert!(matches!(redoc("other.js"), Err(ApiError::NotFound(_))));
    }
}
