//! Accounts: register, login, who-am-I, and the username lookup clients use to find
//! participant ids.

use std::net::IpAddr;
use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::dto::{Credentials, ErrorBody, Token, UserOut, UserQuery, UserSummary};
use super::reply::{json, next_cursor, Reply};
use super::request;
use super::sessions;
use crate::context::ShardContext;
use crate::error::{ApiError, FieldError};
use crate::ids::{now_micros, UserId};
use crate::limits;
use crate::store::{StoreError, UserRecord};
use crate::text::{self, Password, Username};

/// Create an account.
#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Account created", body = UserOut),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 409, description = "Username already registered", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body, or username or password outside the rules", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the client may try again")),
            example = json!({"detail": "Too many registrations, retry later"})),
        (status = 503, description = "Store or password hashing unavailable; retry", body = ErrorBody),
    )
)]
pub async fn register(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let address = limits::client_bucket(request::client_address(
        &req,
        &shard.app.config.trusted_proxies,
    ));
    let body = request::body(shard, req).await?;
    let (username, password) = credentials(request::json(&body)?)?;
    // A taken name is answered before the quota and the hash, which are what a
    // registration costs; the 409 says no more than it would after them.
    let name = username.as_str().to_owned();
    let taken = shard
        .app
        .db
        .call(move |s| async move { s.user_by_name(&name).await })
        .await?
        .is_some();
    if taken {
        return Err(ApiError::Conflict("Username already registered"));
    }
    let quota = shard
        .app
        .config
        .counts_address(address)
        .then_some(&shard.app.limits.registrations);
    if let Some(quota) = quota {
        quota.take(address).map_err(|wait| ApiError::RateLimited {
            detail: "Too many registrations, retry later",
            retry_after: wait.as_secs(),
        })?;
    }
    let password_hash = match shard.app.passwords.hash(password.into_secret()).await {
        Ok(hash) => hash,
        Err(e) => {
            // Nothing was registered: the attempt does not count.
            if let Some(quota) = quota {
                quota.give_back(&address);
            }
            return Err(e.into());
        }
    };
    let user = UserRecord {
        id: UserId::random(),
        username: username.into_string(),
        password_hash,
        created_at: now_micros(),
    };
    let stored = user.clone();
    match shard
        .app
        .db
        .call(move |s| async move { s.create_user(&stored).await })
        .await
    {
        Ok(()) => Ok(json(StatusCode::CREATED, &UserOut::from(&user))),
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict("Username already registered")),
        Err(e) => Err(e.into()),
    }
}

/// The username and password under the registration rules, or a 422 naming each
/// field that breaks them. Login holds them to the same rules: no account can have
/// a name or password outside them, and an unbounded name must never reach the
/// login throttle, the store or the hash.
fn credentials(creds: Credentials) -> Result<(Username, Password), ApiError> {
    match (
        Username::parse(creds.username),
        Password::parse(creds.password),
    ) {
        (Ok(u), Ok(p)) => Ok((u, p)),
        (u, p) => Err(ApiError::Validation(
            [("username", u.err()), ("password", p.err())]
                .into_iter()
                .filter_map(|(field, e)| {
                    e.map(|msg| FieldError::new("body", field, "value_error", msg))
                })
                .collect(),
        )),
    }
}

/// Exchange a username and password for a bearer token.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Access token (HS256 JWT)", body = Token),
        (status = 401, description = "Incorrect username or password", body = ErrorBody,
            example = json!({"detail": "Incorrect username or password"})),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body, or username or password outside the registration rules (no account has them)", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this username from this address, or from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the client may try again")),
            example = json!({"detail": "Too many login attempts, retry later"})),
        (status = 503, description = "Store or password hashing unavailable; retry", body = ErrorBody),
    )
)]
pub async fn login(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let address = request::client_address(&req, &shard.app.config.trusted_proxies);
    let agent = sessions::user_agent(&req);
    let body = request::body(shard, req).await?;
    let (username, password) = credentials(request::json(&body)?)?;
    check_throttle(shard, address, &username)?;
    let name = username.as_str().to_owned();
    let user = shard
        .app
        .db
        .call(move |s| async move { s.user_by_name(&name).await })
        .await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Unknown users are verified against a decoy too, so both failures take as long.
    let verified = verify_counted(shard, address, &username, password.into_secret(), hash).await?;
    let user = match user {
        Some(user) if verified => user,
        _ => return Err(ApiError::BadCredentials),
    };
    let token = sessions::open(shard, agent, user.id).await?;
    Ok(json(StatusCode::OK, &token))
}

/// Refuses while the login throttle holds (`address`, `username`).
pub(super) fn check_throttle(
    shard: &ShardContext,
    address: IpAddr,
    username: &Username,
) -> Result<(), ApiError> {
    shard.app.logins.check(address, username).map_err(|wait| {
        shard.app.metrics.login_throttled.inc();
        ApiError::TooManyLogins(wait.as_secs())
    })
}

/// Whether `password` is the one `hash` was made from (`None`: checked against a
/// decoy, taking as long), counted by the login throttle: a wrong one as a failure, a
/// right one clearing the count.
pub(super) async fn verify_counted(
    shard: &ShardContext,
    address: IpAddr,
    username: &Username,
    password: String,
    hash: Option<String>,
) -> Result<bool, ApiError> {
    let verified = shard.app.passwords.verify(password, hash).await?;
    let throttle = &shard.app.logins;
    if verified {
        throttle.succeeded(address, username);
    } else {
        throttle.failed(address, username);
    }
    Ok(verified)
}

/// The authenticated user.
#[utoipa::path(
    get,
    path = "/api/auth/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn me(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    let user = shard
        .app
        .db
        .call(move |s| async move { s.user_by_id(me).await })
        .await?;
    // A valid signature over a user that no longer exists is still not a valid login.
    let user = user.ok_or(ApiError::InvalidToken)?;
    Ok(json(StatusCode::OK, &UserOut::from(&user)))
}

/// Find a user by exact username, to learn the id to add as a participant.
#[utoipa::path(
    get,
    path = "/api/users",
    operation_id = "find_users",
    tag = "users",
    security(("bearer" = [])),
    params(UserQuery),
    responses(
        (status = 200, description = "With `username`: the matching user, or an empty list. With `q`: at most `limit` users whose name starts with it, whatever the case, in name order. With neither: an empty list", body = Vec<UserSummary>,
            headers(("X-Next-Cursor" = String, description = "With `q`, when more users may follow: pass it as `cursor` for the next page"))),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "`q` empty or over 32 characters; `limit` not an integer from 1 to 100", body = ErrorBody),
        (status = 429, description = "The caller searched `--user-search-per-minute` times this minute; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the caller may search again"))),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn lookup(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    // Checked whichever way the lookup goes: a malformed query is refused, not ignored.
    let limit = request::limit(&req, SEARCH_DEFAULT, SEARCH_MAX)?;
    if let Some(q) = request::query_param(&req, "q") {
        return search(shard, &req, me, q, limit).await;
    }
    // Asking for no one finds no one.
    let Some(name) = request::query_param(&req, "username") else {
        return Ok(json(StatusCode::OK, &Vec::<UserSummary>::new()));
    };
    // A name outside the rules belongs to no one: the answer needs no store.
    let Ok(name) = Username::parse(name).map(Username::into_string) else {
        return Ok(json(StatusCode::OK, &Vec::<UserSummary>::new()));
    };
    let user = shard
        .app
        .db
        .call(move |s| async move { s.user_by_name(&name).await })
        .await?;
    let found: Vec<UserSummary> = user
        .into_iter()
        .map(|u| UserSummary {
            id: u.id.to_string(),
            username: u.username,
        })
        .collect();
    Ok(json(StatusCode::OK, &found))
}

/// Users per page of a search by prefix.
const SEARCH_DEFAULT: u32 = 20;
const SEARCH_MAX: u32 = 100;

/// Users whose name starts with `q`, whatever the case, a page at a time; each
/// search spends one of the caller's `--user-search-per-minute`.
async fn search(
    shard: &ShardContext,
    req: &Request<Incoming>,
    me: UserId,
    q: String,
    limit: u32,
) -> Reply {
    let prefix = q.trim().to_lowercase();
    if prefix.is_empty() || prefix.chars().count() > text::USERNAME_MAX_CHARS {
        return Err(ApiError::field(
            "query",
            "q",
            "string_too_long",
            format!("q must hold 1 to {} characters", text::USERNAME_MAX_CHARS),
        ));
    }
    let after = request::query_param(req, "cursor");
    shard
        .app
        .limits
        .user_searches
        .take(me)
        .map_err(|wait| ApiError::RateLimited {
            detail: "Too many searches, retry later",
            retry_after: wait.as_secs(),
        })?;
    // No name holds characters outside the rules: such a prefix matches no one.
    if !prefix.chars().all(text::is_username_char) {
        return Ok(json(StatusCode::OK, &Vec::<UserSummary>::new()));
    }
    let mut found = shard
        .app
        .db
        .call(move |s| async move {
            s.users_by_prefix(&prefix, after.as_deref(), limit + 1)
                .await
        })
        .await?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let cursor = found.last().filter(|_| more).map(|(_, name)| name.clone());
    let out: Vec<UserSummary> = found
        .into_iter()
        .map(|(id, username)| UserSummary {
            id: id.to_string(),
            username,
        })
        .collect();
    Ok(next_cursor(json(StatusCode::OK, &out), cursor))
}
