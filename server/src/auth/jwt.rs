//! HS256 access tokens: `sub` is the user id, `exp` and `iat` are always set.
//! Verification accepts HS256 only, so `alg: none` and key-confusion tokens fail.

use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Always issued; not required on the way in, as the protocol (docs/protocol.md) asks only `sub` and `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// The session the token was issued for; tokens signed elsewhere have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

/// A refresh token's claims: whose session, which generation of it.
#[derive(Debug, Serialize, Deserialize)]
struct RefreshClaims {
    sub: String,
    sid: String,
    gen: u64,
    exp: u64,
    iat: u64,
}

/// A token that passed verification: whose it is, for which session (none for a
/// token signed elsewhere with the key), when it was issued (0 when it does not say)
/// and until when (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    pub session: Option<SessionId>,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// A refresh token that passed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refresh {
    pub user: UserId,
    pub session: SessionId,
    pub generation: u64,
}

/// Any reason a token is not accepted; callers answer all of them the same way.
#[derive(Debug, thiserror::Error)]
#[error("Invalid token")]
pub struct TokenError;

/// A key pair for one kind of token.
struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

pub struct JwtKeys {
    access: Keys,
    /// Refresh tokens are signed with a key of their own (the secret with a suffix),
    /// so neither kind of token passes for the other.
    refresh: Keys,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        let refresh = [secret, b":refresh".as_slice()].concat();
        Self {
            access: Keys::new(secret),
            refresh: Keys::new(&refresh),
            validation,
            ttl,
        }
    }

    /// How long an access token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// An access token of `user`'s `session`, for `ttl`.
    pub fn issue(&self, user: UserId, session: SessionId) -> Result<String, TokenError> {
        let iat = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iat: Some(iat),
            exp: iat + self.ttl.as_secs(),
            sid: Some(session.to_string()),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.access.encoding,
        )
        .map_err(|_| TokenError)
    }

    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let data = decode::<Claims>(token, &self.access.decoding, &self.validation)
            .map_err(|_| TokenError)?;
        let session = match data.claims.sid {
            Some(sid) => Some(sid.parse().map_err(|_| TokenError)?),
            None => None,
        };
        Ok(Verified {
            user: data.claims.sub.parse().map_err(|_| TokenError)?,
            session,
            issued_at: data.claims.iat.unwrap_or(0),
            expires_at: data.claims.exp,
        })
    }

    /// A refresh token for generation `generation` of the session, until `expires_at`
    /// (Unix seconds).
    pub fn issue_refresh(&self, r: Refresh, expires_at: u64) -> Result<String, TokenError> {
        let claims = RefreshClaims {
            sub: r.user.to_string(),
            sid: r.session.to_string(),
            gen: r.generation,
            exp: expires_at,
            iat: jsonwebtoken::get_current_timestamp(),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.refresh.encoding,
        )
        .map_err(|_| TokenError)
    }

    pub fn verify_refresh(&self, token: &str) -> Result<Refresh, TokenError> {
        let data = decode::<RefreshClaims>(token, &self.refresh.decoding, &self.validation)
            .map_err(|_| TokenError)?;
        Ok(Refresh {
            user: data.claims.sub.parse().map_err(|_| TokenError)?,
            session: data.claims.sid.parse().map_err(|_| TokenError)?,
            generation: data.claims.gen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(b"test-secret-key-of-some-length", Duration::from_secs(3600))
    }

    fn forge(claims: &serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let user = UserId::random();
        let session = SessionId::random();
        let token = k.issue(user, session).expect("issue");
        let verified = k.verify(&token).expect("verify");
        assert_eq!(verified.user, user);
        assert_eq!(verified.session, Some(session));
        let now = jsonwebtoken::get_current_timestamp();
        assert!((now + 3599..=now + 3600).contains(&verified.expires_at));
    }

    #[test]
    fn expired_is_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        let token = forge(
            &serde_json::json!({"sub": UserId::random().to_string(), "iat": now - 7200, "exp": now - 3600}),
            b"test-secret-key-of-some-length",
        );
        assert!(keys().verify(&token).is_err());
    }

    #[test]
    fn wrong_key_is_refused() {
        let other = JwtKeys::new(b"another-key", Duration::from_secs(3600));
        let token = other
            .issue(UserId::random(), SessionId::random())
            .expect("issue");
        assert!(keys().verify(&token).is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        use base64_like::encode_segment;
        let now = jsonwebtoken::get_current_timestamp();
        let header = encode_segment(br#"{"alg":"none","typ":"JWT"}"#);
        let body = encode_segment(
            format!(
                r#"{{"sub":"{}","iat":{now},"exp":{}}}"#,
                UserId::random(),
                now + 3600
            )
            .as_bytes(),
        );
        assert!(keys().verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn refresh_and_access_tokens_do_not_pass_for_each_other() {
        let k = keys();
        let r = Refresh {
            user: UserId::random(),
            session: SessionId::random(),
            generation: 3,
        };
        let now = jsonwebtoken::get_current_timestamp();
        let refresh = k.issue_refresh(r, now + 60).expect("issue");
        assert_eq!(k.verify_refresh(&refresh).expect("verify"), r);
        assert!(
            k.verify(&refresh).is_err(),
            "a refresh token is no access token"
        );
        let access = k.issue(r.user, r.session).expect("issue");
        assert!(k.verify_refresh(&access).is_err(), "nor the other way");
    }

    #[test]
    fn missing_sub_or_bad_sub_is_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        let secret = b"test-secret-key-of-some-length";
        let no_sub = forge(&serde_json::json!({"iat": now, "exp": now + 60}), secret);
        assert!(keys().verify(&no_sub).is_err());
        let bad_sub = forge(
            &serde_json::json!({"sub": "bob", "iat": now, "exp": now + 60}),
            secret,
        );
        assert!(keys().verify(&bad_sub).is_err());
        let no_exp = forge(
            &serde_json::json!({"sub": UserId::random().to_string()}),
            secret,
        );
        assert!(keys().verify(&no_exp).is_err());
    }

    /// Unpadded URL-safe base64, enough to hand-build a token.
    mod base64_like {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        pub fn encode_segment(input: &[u8]) -> String {
            let mut out = String::new();
            for chunk in input.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                }
            }
            out
        }
    }
}
