//! The HTTP face of a shard: hyper 1 serves HTTP/1.1 with keep-alive; this module
//! routes each request to its handler and renders every outcome, errors included,
//! as JSON. Handlers never block the shard: store work goes through `Db::call`,
//! password hashing through the password pool.

mod auth;
mod conversations;
pub mod docs;
pub mod dto;
mod request;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use tracing::Instrument;

use crate::error::ApiError;
use crate::shard::Shard;

pub use request::{percent_decode, query_param, Peer};

pub type Body = Full<Bytes>;
pub type Reply = Result<Response<Body>, ApiError>;

/// Entry point of every request on a shard.
pub async fn serve(
    shard: Rc<Shard>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, std::convert::Infallible> {
    req.extensions_mut().insert(Peer(peer));
    let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path());
    // A bug in one handler must cost one request, not the shard thread it runs on.
    let handled = AssertUnwindSafe(route(&shard, req).instrument(span.clone()))
        .catch_unwind()
        .await;
    let response = match handled {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => error_response(&e),
        Err(_) => {
            tracing::error!(parent: &span, "handler panicked");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"detail": "Internal Server Error"}),
            )
        }
    };
    tracing::debug!(parent: &span, status = response.status().as_u16(), "done");
    Ok(response)
}

async fn route(shard: &Rc<Shard>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    // HEAD is GET without the body; hyper leaves the body out on the wire.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    match (segments.as_slice(), &method) {
        (["api", "auth", "register"], &Method::POST) => auth::register(shard, req).await,
        (["api", "auth", "login"], &Method::POST) => auth::login(shard, req).await,
        (["api", "auth", "me"], &Method::GET) => auth::me(shard, req).await,
        (["api", "users"], &Method::GET) => auth::lookup(shard, req).await,
        (["api", "chat", "conversations"], &Method::POST) => {
            conversations::create(shard, req).await
        }
        (["api", "chat", "conversations"], &Method::GET) => conversations::list(shard, req).await,
        (["api", "chat", "conversations", id], &Method::GET) => {
            conversations::get(shard, req, id).await
        }
        (["api", "chat", "conversations", id, "participants"], &Method::POST) => {
            conversations::add_participant(shard, req, id).await
        }
        (["api", "chat", "conversations", id, "participants", user], &Method::DELETE) => {
            conversations::remove_participant(shard, req, id, user).await
        }
        (["api", "chat", "conversations", id, "messages"], &Method::GET) => {
            conversations::history(shard, req, id).await
        }
        (["api", "chat", "ws", id], &Method::GET) => crate::ws::upgrade(shard, req, id).await,
        (["health"], &Method::GET) => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (["ready"], &Method::GET) => docs::ready(shard).await,
        (["openapi.json"], &Method::GET) => Ok(docs::openapi()),
        (["docs", rest @ ..], &Method::GET) => docs::swagger(&rest.join("/")),
        (["redoc", rest @ ..], &Method::GET) => docs::redoc(&rest.join("/")),
        _ => match allowed_methods(&segments) {
            Some(allow) => Err(ApiError::MethodNotAllowed(allow)),
            None => Err(ApiError::NotFound("Not Found".into())),
        },
    }
}

/// The methods routed for this path (the `Allow` header of a 405), or `None` when
/// the path is unknown (404).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["api", "auth", "register" | "login"] => "POST",
        ["api", "chat", "conversations"] => "GET, HEAD, POST",
        ["api", "chat", "conversations", _, "participants"] => "POST",
        ["api", "chat", "conversations", _, "participants", _] => "DELETE",
        ["api", "auth", "me"]
        | ["api", "users"]
        | ["api", "chat", "conversations", _]
        | ["api", "chat", "conversations", _, "messages"]
        | ["api", "chat", "ws", _]
        | ["health" | "ready" | "openapi.json" | "docs" | "redoc", ..] => "GET, HEAD",
        _ => return None,
    })
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut response = json(e.status(), &e.body());
    let headers = response.headers_mut();
    match e {
        ApiError::NotAuthenticated | ApiError::InvalidToken | ApiError::BadCredentials => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        ApiError::MethodNotAllowed(allow) => {
            headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        ApiError::TooManyLogins(seconds) => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(*seconds));
        }
        ApiError::UpgradeRequired => {
            headers.insert(
                header::UPGRADE,
                header::HeaderValue::from_static("websocket"),
            );
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
        }
        _ => {}
    }
    response
}
