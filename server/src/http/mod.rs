//! The HTTP face of a shard: hyper 1 serves HTTP/1.1 with keep-alive; this module
//! routes each request to its handler and renders every outcome, errors included,
//! as JSON. Handlers never block the shard: store work goes through `Db::call`,
//! password hashing through the password pool.

mod account;
mod auth;
mod conversations;
pub mod docs;
pub mod dto;
mod markers;
mod origins;
mod page;
mod participants;
mod presence;
mod reply;
/// Public for the fuzz targets (`fuzz/`): what the server parses of a request itself.
pub mod request;
pub mod routes;
pub mod scrape;
mod sessions;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Instant;

use futures_util::FutureExt;
use http::{header, Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::Instrument;

use crate::context::ShardContext;
use crate::error::ApiError;
use crate::metrics::Upgrade;
use origins::Origin;
use routes::Endpoint;

pub use request::{percent_decode, query_param, Peer};

pub use reply::{empty, error_response, json, metrics_response, Body, Reply};

/// Entry point of every request on a shard.
pub async fn serve(
    shard: Rc<ShardContext>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, std::convert::Infallible> {
    req.extensions_mut().insert(Peer(peer));
    let id = request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or_default(),
        method = %req.method(),
        path = %req.uri().path()
    );
    let origin = Origin::of(&shard.app.config, &req);
    let started = Instant::now();
    // The path outlives the request, which its handler takes: the route found here is
    // the one the request is dispatched on and the one its metrics are labelled with.
    let path = req.uri().path().to_owned();
    let found = routes::find(&path);
    // The route's template, never the path: clients must not be able to mint series.
    let label = found.as_ref().map_or("unmatched", |(route, _)| route.path);
    let mut response = respond(&shard, req, found, &origin, &span).await;
    let status = response.status().as_u16();
    shard.metrics.http(label, status, started.elapsed());
    tracing::debug!(parent: &span, status, "done");
    response.headers_mut().insert(REQUEST_ID, id);
    origin.decorate(&mut response);
    Ok(response)
}

/// The response to one request: a preflight or a refused origin answered here, the
/// rest routed to its handler.
async fn respond(
    shard: &Rc<ShardContext>,
    req: Request<Incoming>,
    found: Found<'_>,
    origin: &Origin,
    span: &tracing::Span,
) -> Response<Body> {
    if let Some(answer) = origin.preflight(&req) {
        return answer;
    }
    // Browsers do not preflight WebSocket upgrades: the origin is checked here, with
    // `--production` only. The token travels in the URL, never in a cookie, so a page
    // of another origin holds no credential a browser would add for it: refusing it
    // protects nothing by default, and breaks the quick-start's console snippet and
    // pages opened from files (`Origin: null`).
    if shard.app.config.production
        && matches!(origin, Origin::Refused)
        && fastwebsockets::upgrade::is_upgrade_request(&req)
    {
        shard.metrics.upgrade(Upgrade::Origin);
        return error_response(&ApiError::Forbidden("Origin not allowed"));
    }
    // A bug in one handler must cost one request, not the shard thread it runs on.
    let handled = AssertUnwindSafe(route(shard, req, found).instrument(span.clone()))
        .catch_unwind()
        .await;
    match handled {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => error_response(&e),
        Err(_) => {
            tracing::error!(parent: span, "handler panicked");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"detail": "Internal Server Error"}),
            )
        }
    }
}

/// The header a request's id travels in, both ways.
const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// The request's id: the one a client or proxy sent in `X-Request-Id` when it is a
/// short printable token, a fresh one otherwise. It names the request's span in the
/// logs and is echoed in the response, so one request can be followed end to end.
fn request_id(req: &Request<Incoming>) -> header::HeaderValue {
    req.headers()
        .get(&REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(|| {
            let fresh = uuid::Uuid::new_v4().simple().to_string();
            header::HeaderValue::from_str(&fresh).unwrap_or(header::HeaderValue::from_static("-"))
        })
}

/// The route a request's path matched, with the values of its `{name}` segments.
type Found<'p> = Option<(&'static routes::Route, Vec<&'p str>)>;

async fn route(shard: &Rc<ShardContext>, req: Request<Incoming>, found: Found<'_>) -> Reply {
    let Some((route, values)) = found else {
        return Err(ApiError::NotFound("Not Found".into()));
    };
    // HEAD is GET without the body; hyper leaves the body out on the wire.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    if !route.methods.contains(&method) {
        return Err(ApiError::MethodNotAllowed(route.allow()));
    }
    let value = |i: usize| values.get(i).copied().unwrap_or_default();
    match (route.endpoint, method) {
        (Endpoint::Register, _) => auth::register(shard, req).await,
        (Endpoint::Login, _) => auth::login(shard, req).await,
        (Endpoint::Refresh, _) => sessions::refresh(shard, req).await,
        (Endpoint::Logout, _) => sessions::logout(shard, req).await,
        (Endpoint::LogoutAll, _) => sessions::logout_all(shard, req).await,
        (Endpoint::Me, Method::PATCH) => account::change_password(shard, req).await,
        (Endpoint::Me, Method::DELETE) => account::delete(shard, req).await,
        (Endpoint::Me, _) => auth::me(shard, req).await,
        (Endpoint::Export, _) => account::export(shard, req).await,
        (Endpoint::Users, _) => auth::lookup(shard, req).await,
        (Endpoint::Conversations, Method::POST) => conversations::create(shard, req).await,
        (Endpoint::Conversations, _) => conversations::list(shard, req).await,
        (Endpoint::Conversation, Method::PATCH) => {
            conversations::update(shard, req, value(0)).await
        }
        (Endpoint::Conversation, Method::DELETE) => {
            conversations::delete(shard, req, value(0)).await
        }
        (Endpoint::Conversation, _) => conversations::get(shard, req, value(0)).await,
        (Endpoint::Participants, Method::POST) => participants::add(shard, req, value(0)).await,
        (Endpoint::Participants, _) => participants::list(shard, req, value(0)).await,
        (Endpoint::Participant, Method::PATCH) => {
            participants::set_role(shard, req, value(0), value(1)).await
        }
        (Endpoint::Participant, _) => participants::remove(shard, req, value(0), value(1)).await,
        (Endpoint::Messages, _) => conversations::history(shard, req, value(0)).await,
        (Endpoint::Presence, _) => presence::presence(shard, req, value(0)).await,
        (Endpoint::ReadMarker, _) => markers::mark(shard, req, value(0)).await,
        (Endpoint::WebSocket, _) => {
            let query = crate::ws::Query {
                token: query_param(&req, "token"),
                since: query_param(&req, "since"),
            };
            let wanted = crate::ws::Wanted::Conversation(value(0));
            crate::ws::upgrade(shard, req, wanted, query).await
        }
        (Endpoint::UserStream, _) => {
            let query = crate::ws::Query {
                token: query_param(&req, "token"),
                since: None,
            };
            crate::ws::upgrade(shard, req, crate::ws::Wanted::Stream, query).await
        }
        (Endpoint::Health, _) => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        (Endpoint::Ready, _) => docs::ready(shard).await,
        (Endpoint::Metrics, _) => metrics(shard),
        (Endpoint::OpenApi, _) => Ok(docs::openapi()),
        (Endpoint::SwaggerUi, _) => docs::swagger(value(0)),
        (Endpoint::Redoc, _) => docs::redoc(value(0)),
        (Endpoint::Page, _) => page::index(req.headers()),
        (Endpoint::PageAsset, _) => page::asset(value(0), req.headers()),
    }
}

/// `GET /metrics` on the service port, unless `--metrics-listen` moved it elsewhere.
fn metrics(shard: &ShardContext) -> Reply {
    if shard.app.config.metrics_listen.is_some() {
        return Err(ApiError::NotFound("Not Found".into()));
    }
    Ok(metrics_response(&shard.app))
}
