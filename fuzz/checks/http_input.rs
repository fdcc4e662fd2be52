//! What the server parses of an HTTP request itself (`http::request`): JSON bodies
//! into the REST types, query parameters and their percent-decoding, and the client
//! address behind trusted proxies. Bad input is a 422 that names the body, never a
//! panic; decoding is RFC 3986's, checked against a plain reference.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the server's
//! regression test (`server/tests/fuzz_regressions.rs`), which runs every saved
//! input under `server/tests/fuzz-regressions/http_input/` through it.

use std::net::IpAddr;

use chat_server::error::ApiError;
use chat_server::http::dto::{Credentials, NewConversation, NewParticipant};
use chat_server::http::request::{forwarded_client, json, percent_decode, query_param};
use serde_json::Value;

/// The check, on one input: panics on a violation.
pub fn check(data: &[u8]) {
    let Some((which, input)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            body::<Credentials>(input);
            body::<NewConversation>(input);
            body::<NewParticipant>(input);
        }
        1 => decoding(input),
        2 => query(input),
        _ => forwarded(input),
    }
}

/// A body is the type or a 422 whose every entry names the body.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
    let Err(e) = json::<T>(bytes) else {
        return;
    };
    assert!(
        matches!(e, ApiError::Validation(ref v) if !v.is_empty()),
        "{e:?}"
    );
    assert_eq!(e.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
    let body = e.body();
    let Some(Value::Array(details)) = body.get("detail") else {
        panic!("422 without a list: {body}");
    };
    for d in details {
        assert_eq!(d["loc"][0], "body", "{d}");
        assert!(d["msg"].is_string() && d["type"].is_string(), "{d}");
    }
}

/// `%XX` with two hex digits is that byte, `+` a space, anything else itself; the
/// bytes are then read as UTF-8, lossily.
fn reference_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
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

fn decoding(input: &[u8]) {
    let s = String::from_utf8_lossy(input);
    assert_eq!(percent_decode(&s), reference_decode(&s), "decoding {s:?}");
}

/// Any query a request line can carry: the parameter found is the decoded value of
/// the first pair whose decoded name matches.
fn query(input: &[u8]) {
    let s = String::from_utf8_lossy(input);
    let Ok(uri) = http::Uri::try_from(format!("/api/users?{s}")) else {
        return;
    };
    let Some(raw) = uri.query() else {
        return;
    };
    let req = http::Request::builder()
        .uri(uri.clone())
        .body(())
        .expect("a request from a valid URI");
    for name in ["username", "limit", "token", "since", ""] {
        let expected = raw.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (reference_decode(k) == name).then(|| reference_decode(v))
        });
        assert_eq!(query_param(&req, name), expected, "{name} in {raw:?}");
    }
}

/// The client address is the peer or an address a trusted hop named, never a hop
/// the client could have written past an untrusted one.
fn forwarded(input: &[u8]) {
    let Some((peer_bytes, header)) = input.split_first_chunk::<4>() else {
        return;
    };
    let peer = IpAddr::from(*peer_bytes);
    let trusted: Vec<ipnet::IpNet> = vec![
        "10.0.0.0/8".parse().expect("net"),
        "fd00::/8".parse().expect("net"),
    ];
    let mut headers = http::HeaderMap::new();
    for line in header.split(|b| *b == b'\n') {
        if let Ok(value) = http::HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", value);
        }
    }
    let client = forwarded_client(peer, &headers, &trusted);
    let named = |ip: &IpAddr| {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|hop| hop.trim().parse::<IpAddr>().as_ref() == Ok(ip))
    };
    let peer_trusted = trusted.iter().any(|n| n.contains(&peer));
    assert!(
        client == peer || (peer_trusted && named(&client)),
        "{client}"
    );
    assert_eq!(forwarded_client(peer, &headers, &[]), peer);
}
