//! The one error type of request handling and the one place it becomes an HTTP status
//! and a FastAPI-shaped `{"detail": ...}` body.

use http::StatusCode;
use serde_json::{json, Value};

use crate::auth::HashError;
use crate::store::StoreError;

/// One entry of a 422 body, FastAPI style: where (`loc`), what (`msg`), which rule (`type`).
#[derive(Debug, Clone)]
pub struct FieldError {
    pub loc: Vec<Value>,
    pub msg: String,
    pub kind: &'static str,
}

impl FieldError {
    pub fn new(
        source: &str,
        field: impl Into<Value>,
        kind: &'static str,
        msg: impl Into<String>,
    ) -> Self {
        Self {
            loc: vec![Value::from(source), field.into()],
            msg: msg.into(),
            kind,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("Not authenticated")]
    NotAuthenticated,
    #[error("Invalid token")]
    InvalidToken,
    #[error("Incorrect username or password")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    /// With the methods the path does take, for the `Allow` header.
    #[error("Method Not Allowed")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("Request body too large")]
    PayloadTooLarge,
    /// Login throttled; retry after this many seconds.
    #[error("Too many login attempts, retry later")]
    TooManyLogins(u64),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("Expected a WebSocket upgrade")]
    UpgradeRequired,
}

impl ApiError {
    pub fn field(source: &str, field: &str, kind: &'static str, msg: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(source, field, kind, msg)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotAuthenticated | Self::InvalidToken | Self::BadCredentials => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyLogins(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// The response body.
    pub fn body(&self) -> Value {
        match self {
            Self::Validation(errors) => json!({
                "detail": errors
                    .iter()
                    .map(|e| json!({"type": e.kind, "loc": e.loc, "msg": e.msg}))
                    .collect::<Vec<_>>()
            }),
            other => json!({ "detail": other.to_string() }),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Self::Conflict("Conflict"),
            StoreError::Unavailable(_) | StoreError::Query(_) => {
                tracing::warn!(error = %e, "store call failed");
                Self::Unavailable("Database unavailable, please retry")
            }
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::Unavailable("Server busy, please retry"),
            HashError::Failed => Self::Unavailable("Password hashing failed"),
        }
    }
}
