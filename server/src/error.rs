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
    /// A 401 that says more (a refresh token that no longer works, say).
    #[error("{0}")]
    Unauthorized(&'static str),
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
    /// Another per-client quota spent (registrations, new conversations); retry after
    /// `retry_after` seconds.
    #[error("{detail}")]
    RateLimited {
        detail: &'static str,
        retry_after: u64,
    },
    /// The request (head and body) did not arrive within `--request-timeout`.
    #[error("Request not received in time")]
    RequestTimeout,
    /// Something on our side failed; `detail` is what the client is told, `cause`
    /// what the log is told (once, where the response is made).
    #[error("{detail}")]
    Unavailable {
        detail: &'static str,
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
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
            Self::NotAuthenticated
            | Self::InvalidToken
            | Self::BadCredentials
            | Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyLogins(_) | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
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

impl ApiError {
    pub fn unavailable(
        detail: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            detail,
            cause: Some(cause.into()),
        }
    }

    /// The cause chain, for the log line of a failed request.
    pub fn causes(&self) -> String {
        let mut chain = String::new();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&cause.to_string());
            next = cause.source();
        }
        chain
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Self::Conflict("Conflict"),
            StoreError::Unavailable(_) | StoreError::Query(_) => {
                Self::unavailable("Database unavailable, please retry", e)
            }
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        let detail = match e {
            HashError::Busy => "Server busy, please retry",
            HashError::Failed => "Password hashing failed",
        };
        Self::unavailable(detail, e)
    }
}
