//! How every HTTP outcome is rendered: the body and result types, JSON and empty
//! responses, a paged list's next cursor, an `ApiError` as its status, JSON body and headers, and the metrics
//! scrape.
//!
//! A leaf of `http`: the router and every handler use it; it uses none of them.

use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;

use crate::app::App;
use crate::error::ApiError;

pub type Body = Full<Bytes>;
pub type Reply = Result<Response<Body>, ApiError>;

/// The scrape: Prometheus text format 0.0.4.
pub fn metrics_response(app: &App) -> Response<Body> {
    let text = app.scrape();
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The response header that carries the next page's cursor.
const NEXT_CURSOR: http::HeaderName = http::HeaderName::from_static("x-next-cursor");

/// `response` with the next page's cursor, when there is one.
pub fn next_cursor(mut response: Response<Body>, cursor: Option<String>) -> Response<Body> {
    if let Some(value) = cursor.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(NEXT_CURSOR, value);
    }
    response
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
    if let ApiError::Unavailable { detail, .. } = e {
        // The one place a failure's cause is logged (inside the request's span).
        tracing::warn!(detail, cause = %e.causes(), "request failed on our side");
    }
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
            if let Ok(allow) = header::HeaderValue::from_str(allow) {
                headers.insert(header::ALLOW, allow);
            }
        }
        ApiError::TooManyLogins(seconds)
        | ApiError::RateLimited {
            retry_after: seconds,
            ..
        } => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(*seconds));
        }
        ApiError::RequestTimeout => {
            // The rest of a late body may still be on its way: nothing after it on
            // this connection could be read as a request.
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
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
