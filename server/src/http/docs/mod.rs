//! The self-description of the server: the OpenAPI document (`/openapi.json`), the
//! Swagger UI (`/docs`) and ReDoc (`/redoc`) pages that render it, and the readiness
//! probe (`/ready`). Every byte these routes serve is built into the binary, so the
//! documentation renders offline; this module never fetches anything and never
//! touches application state beyond the store ping of `/ready`.

mod spec;
mod ui;

use std::rc::Rc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use hyper::Response;

use super::dto::Readiness;
use super::{json, Body, Reply};
use crate::context::ShardContext;

/// `GET /openapi.json`.
pub fn openapi() -> Response<Body> {
    Asset {
        body: spec::json(),
        content_type: "application/json".into(),
        revalidate: true,
    }
    .into_response()
}

/// `GET /docs` and `GET /docs/<rest>`: Swagger UI; `rest` is "" for the page itself.
pub fn swagger(rest: &str) -> Reply {
    ui::swagger(rest).map(Asset::into_response)
}

/// `GET /redoc` and `GET /redoc/<rest>`: ReDoc; `rest` is "" for the page itself.
pub fn redoc(rest: &str) -> Reply {
    ui::redoc(rest).map(Asset::into_response)
}

/// Readiness: the process is up and the store answers a ping.
///
/// Unlike `/health`, this fails while the store is down, so a load balancer stops
/// routing here instead of every request failing with 503. In a cluster it also says
/// whether Redis is reachable; without it the node still serves its own connections
/// (`redis: degraded`, 200).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the store answers", body = Readiness,
            example = json!({"status": "ok", "store": "ok", "redis": "ok"})),
        (status = 503, description = "Not ready: the store does not answer", body = Readiness,
            example = json!({"status": "unavailable", "store": "unavailable"})),
    )
)]
pub async fn ready(shard: &Rc<ShardContext>) -> Reply {
    let redis = shard
        .app
        .cluster
        .as_ref()
        .map(|c| if c.is_healthy() { "ok" } else { "degraded" });
    match shard.app.db.call(|s| async move { s.ping().await }).await {
        Ok(()) => Ok(json(
            StatusCode::OK,
            &Readiness {
                status: "ok",
                store: "ok",
                redis,
            },
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store ping failed");
            let body = Readiness {
                status: "unavailable",
                store: "unavailable",
                redis,
            };
            Ok(json(StatusCode::SERVICE_UNAVAILABLE, &body))
        }
    }
}

/// A file the docs routes serve from the binary.
struct Asset {
    body: Bytes,
    content_type: String,
    /// The spec, the pages and the Swagger initializer change with the binary under
    /// the same URL, so browsers must revalidate them; the big bundles may be kept
    /// for an hour.
    revalidate: bool,
}

impl Asset {
    fn into_response(self) -> Response<Body> {
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
