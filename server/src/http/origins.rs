//! Which browser origins may use the API (`--allowed-origins`): CORS for REST
//! (preflights answered, `Access-Control-Allow-Origin` on responses to listed
//! origins) and the `Origin` check of WebSocket upgrades, which browsers never
//! preflight. Requests without `Origin` (curl, mobile apps, scripts) and from the
//! server's own origin are always allowed; anything else gets no CORS headers unless
//! listed, and its WebSocket upgrade is refused with `--production` only (the router
//! decides; auth is a token in the URL, so an origin's upgrade carries no credential
//! a browser added on its own).
//!
//! It only reads headers and builds headers; it never touches a handler's work.

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::reply::Body;
use crate::config::Config;

/// Where a request comes from, as far as origins go.
pub enum Origin {
    /// No `Origin` header: not a browser, or a same-origin GET.
    Absent,
    /// The server's own origin: no CORS involved.
    Same,
    /// A listed origin (or any, with `*`): answered with CORS headers.
    Allowed(HeaderValue),
    /// Any other origin.
    Refused,
}

impl Origin {
    pub fn of(config: &Config, req: &Request<Incoming>) -> Self {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Origin::Absent;
        };
        let Ok(text) = origin.to_str() else {
            return Origin::Refused;
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let authority = text.split_once("://").map(|(_, rest)| rest);
        if authority.is_some()
            && authority.map(str::to_ascii_lowercase) == host.map(str::to_ascii_lowercase)
        {
            return Origin::Same;
        }
        let listed = config.allowed_origins.iter().any(|allowed| {
            let allowed = allowed.trim().trim_end_matches('/');
            allowed == "*" || allowed.eq_ignore_ascii_case(text)
        });
        if listed {
            Origin::Allowed(origin.clone())
        } else {
            Origin::Refused
        }
    }

    /// A preflight (`OPTIONS` with `Access-Control-Request-Method`): the answer, which
    /// no handler is asked for. What every response to a listed origin carries is
    /// added by `decorate`, as for any other response.
    pub fn preflight(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        if req.method() != Method::OPTIONS
            || !req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::new(Body::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        if let Origin::Allowed(_) = self {
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, x-request-id"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        } else {
            *response.status_mut() = StatusCode::FORBIDDEN;
        }
        Some(response)
    }

    /// Adds what a listed origin's browser needs to read the response.
    pub fn decorate(&self, response: &mut Response<Body>) {
        if let Origin::Allowed(origin) = self {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("x-request-id, retry-after, x-next-cursor"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}
