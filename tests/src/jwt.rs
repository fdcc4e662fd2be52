//! Building tokens in tests: valid ones, foreign-key, expired and `alg: none` ones.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An HS256 token `{"sub": sub, "iat": now, "exp": now + exp_in_secs}` signed with
/// `secret` (its UTF-8 bytes, as `SECRET_KEY` is used).
pub fn hs256(secret: &str, sub: &str, exp_in_secs: i64) -> anyhow::Result<String> {
    let now = now();
    hs256_claims(
        secret,
        &json!({"sub": sub, "iat": now.min(now + exp_in_secs), "exp": now + exp_in_secs}),
    )
}

/// An HS256 token with exactly these claims.
pub fn hs256_claims(secret: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("encoding JWT")
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    now()
}

/// An unsigned token with header `{"alg":"none","typ":"JWT"}` and an empty signature.
pub fn alg_none(sub: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": sub, "exp": now() + 3600}).to_string());
    format!("{header}.{claims}.")
}

/// A random key of 64 hex characters, different from any server's.
pub fn random_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
