//! Turning a raw request into typed input: the bounded body, JSON with FastAPI-shaped
//! 422 errors that name the field, query parameters, and the bearer token. Every
//! failure here is the client's and becomes a 4xx, never a 500.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::Verified;
use crate::context::ShardContext;
use crate::error::{ApiError, FieldError};
use crate::ids::UserId;

/// Reads the whole body: more than `--max-body-bytes` is a 413, a body not complete
/// within `--request-timeout` of its head (hyper bounds the head itself) a 408, so a
/// client that announces a large body and stalls holds nothing for long.
pub async fn body(shard: &ShardContext, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let config = &shard.app.config;
    monoio::time::timeout(
        config.request_timeout,
        read_body(req, config.max_body_bytes),
    )
    .await
    .unwrap_or(Err(ApiError::RequestTimeout))
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = req.into_body();
    let mut collected = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::field(
                "body",
                "",
                "body_error",
                "Could not read the request body",
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= limit {
            collected.extend_from_slice(&data);
        } else if total > limit.saturating_mul(DRAIN_FACTOR) {
            // Far too large to be worth reading: answer now and let the connection go.
            return Err(ApiError::PayloadTooLarge);
        }
    }
    // An oversized body is read to its end (up to a cap) before the 413, so a client
    // still sending sees the answer instead of a reset connection.
    if total > limit {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(collected.freeze())
}

/// How far past the limit an oversized body is still drained, as a multiple of it.
const DRAIN_FACTOR: usize = 8;

/// Parses a JSON object body into `T`; any mismatch is a 422 whose `loc` names the
/// field, and a body that is JSON but not an object is a 422 naming `body`.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err(ApiError::field("body", "", "missing", "Field required")),
        // serde would read a list as a struct's fields in order; FastAPI does not.
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            return Err(ApiError::Validation(vec![
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => FieldError {
                        loc: vec![Value::from("body")],
                        msg: "Input should be a valid dictionary or object to extract fields from"
                            .into(),
                        kind: "model_attributes_type",
                    },
                    Err(e) => field_error(None, &e),
                },
            ]));
        }
        Some(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::Validation(vec![field_error(Some(e.path()), e.inner())]))?;
    de.end()
        .map_err(|e| ApiError::Validation(vec![field_error(None, &e)]))?;
    Ok(value)
}

fn field_error(path: Option<&serde_path_to_error::Path>, inner: &serde_json::Error) -> FieldError {
    let mut loc: Vec<Value> = vec![Value::from("body")];
    for segment in path.into_iter().flat_map(|p| p.iter()) {
        match segment {
            serde_path_to_error::Segment::Seq { index } => loc.push(Value::from(*index)),
            serde_path_to_error::Segment::Map { key } => loc.push(Value::from(key.as_str())),
            serde_path_to_error::Segment::Enum { variant } => {
                loc.push(Value::from(variant.as_str()))
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    let message = inner.to_string();
    let (kind, msg) = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            loc.truncate(1);
            loc.push(Value::from(inner.column()));
            ("json_invalid", "JSON decode error".to_string())
        }
        _ if message.starts_with("missing field") => {
            if let Some(name) = message.split('`').nth(1) {
                loc.push(Value::from(name));
            }
            ("missing", "Field required".to_string())
        }
        _ => {
            // serde's own wording ("invalid type: integer `5`, expected a string")
            // without the trailing position, which means nothing to a JSON client.
            let text = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            ("type_error", text)
        }
    };
    FieldError { loc, msg, kind }
}

/// The TCP peer of the connection a request came on (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the
/// nearest untrusted hop of `X-Forwarded-For` (each proxy appends the address it
/// saw, so only the hops added by trusted proxies can be believed).
pub fn client_address(req: &Request<Incoming>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = req
        .extensions()
        .get::<Peer>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
    forwarded_client(peer, req.headers(), trusted)
}

/// `client_address` from its parts: the TCP peer, the request's headers and the
/// trusted proxies.
pub fn forwarded_client(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // From the right: each hop a trusted proxy added may be believed, up to the first
    // untrusted one. A hop that is not a bare address (`ip:port`, `unknown`) ends the
    // walk: what lies left of it cannot be attributed, so the peer is used.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    client
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// The `limit` query parameter of a paged list: `default` when absent, else an integer
/// from 1 to `max` (422 otherwise).
pub fn limit(req: &Request<Incoming>, default: u32, max: u32) -> Result<u32, ApiError> {
    match query_param(req, "limit") {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "query",
                    "limit",
                    "value_error",
                    format!("limit must be an integer from 1 to {max}"),
                )
            }),
    }
}

/// `%XX` with two hex digits is that byte, `+` a space, anything else itself; the
/// bytes are then read as UTF-8, lossily.
pub fn percent_decode(s: &str) -> String {
    // Exactly one hex digit, so `%+5` is not read as a signed number.
    fn hex(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The authenticated caller, from `Authorization: Bearer <jwt>`.
pub fn bearer(shard: &ShardContext, req: &Request<Incoming>) -> Result<UserId, ApiError> {
    caller(shard, req).map(|t| t.user)
}

/// The caller's token as verified (whose, which session), from `Authorization:
/// Bearer <jwt>`: valid, and still counting.
pub fn caller(shard: &ShardContext, req: &Request<Incoming>) -> Result<Verified, ApiError> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or(ApiError::NotAuthenticated)?;
    let value = header.to_str().map_err(|_| ApiError::InvalidToken)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(ApiError::NotAuthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::NotAuthenticated);
    }
    shard
        .app
        .authenticate(token.trim())
        .map_err(|_| ApiError::InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Creds {
        username: String,
        password: String,
    }

    fn detail(e: ApiError) -> Value {
        e.body()["detail"][0].clone()
    }

    #[test]
    fn missing_field_is_named() {
        let d = detail(json::<Creds>(br#"{"username":"bob"}"#).expect_err("missing"));
        assert_eq!(d["loc"], serde_json::json!(["body", "password"]));
        assert_eq!(d["type"], "missing");
    }

    #[test]
    fn wrong_type_is_named() {
        let d = detail(json::<Creds>(br#"{"username":5,"password":"x"}"#).expect_err("type"));
        assert_eq!(d["loc"], serde_json::json!(["body", "username"]));
        assert_eq!(d["type"], "type_error");
    }

    #[test]
    fn malformed_json_is_422() {
        let d = detail(json::<Creds>(br#"{"username":"#).expect_err("syntax"));
        assert_eq!(d["type"], "json_invalid");
        assert!(json::<Creds>(b"").is_err());
        assert!(json::<Creds>(br#"{"username":"a","password":"b"} trailing"#).is_err());
    }

    #[test]
    fn only_objects_are_bodies() {
        for body in [
            "[]",
            "[null, null]",
            " [\"bob\", \"password1\"]",
            "\"x\"",
            "5",
            "null",
            "true",
        ] {
            let e = json::<Creds>(body.as_bytes()).expect_err(body);
            let d = detail(e);
            assert_eq!(d["loc"], serde_json::json!(["body"]), "{body}");
            assert_eq!(d["type"], "model_attributes_type", "{body}");
        }
        // Malformed is still a decode error, not a type error.
        assert_eq!(
            detail(json::<Creds>(b"[1,").expect_err("syntax"))["type"],
            "json_invalid"
        );
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.1.1.1".parse().expect("hv"),
        );
        // Behind two trusted hops, the client is the first untrusted one from the right;
        // whatever the client wrote itself (6.6.6.6) is not believed.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // From an untrusted peer the header is ignored.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &headers, &[]),
            ip("10.0.0.1")
        );
        // No usable header: the peer.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &http::HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // A hop that is not an address stops the walk; nothing left of it is believed.
        let mut odd = http::HeaderMap::new();
        odd.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7:4711".parse().expect("hv"),
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &odd, &trusted),
            ip("10.0.0.1")
        );
        // Only trusted hops: the leftmost of them.
        let mut inner = http::HeaderMap::new();
        inner.insert("x-forwarded-for", "10.0.0.7, 10.0.0.8".parse().expect("hv"));
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &inner, &trusted),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
        // Two hex digits, nothing else: a sign is no digit.
        assert_eq!(percent_decode("%+a%-1%+"), "% a%-1% ");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%4a%4A"), "JJ");
    }
}
