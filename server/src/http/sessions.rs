//! Sessions: a login opens one (an access token and a refresh token), a refresh
//! renews it (a new pair; the old refresh token used again ends it), a logout ends
//! it, a logout everywhere ends every other. An ended session's tokens stop working
//! at once on every node and its sockets close (`Hub::tokens_revoked`).

use std::rc::Rc;

use chrono::{DateTime, Utc};
use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::dto::{ErrorBody, LoggedOut, RefreshRequest, Token};
use super::reply::{empty, json, Reply};
use super::request;
use crate::auth::{Refresh, Revoked};
use crate::context::ShardContext;
use crate::error::ApiError;
use crate::ids::{now_micros, unix_seconds, SessionId, UserId};
use crate::store::account::{Ending, NewSession, Renewal, SESSIONS_PER_USER};

/// The most characters of `User-Agent` a session keeps.
const USER_AGENT_MAX_CHARS: usize = 200;

fn to_chrono(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What the client says it is, bounded and printable, to tell sessions apart.
pub(super) fn user_agent(req: &Request<Incoming>) -> Option<String> {
    let raw = req.headers().get(http::header::USER_AGENT)?.to_str().ok()?;
    let clean: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(USER_AGENT_MAX_CHARS)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// The access and refresh tokens of generation `generation` of the session.
fn tokens(shard: &ShardContext, r: Refresh, now: DateTime<Utc>) -> Result<Token, ApiError> {
    let app = &shard.app;
    let refresh_ttl = app.config.refresh_ttl();
    let refresh_until = unix_seconds(now + to_chrono(refresh_ttl));
    let failed = |_| ApiError::InvalidToken;
    Ok(Token {
        access_token: app.jwt.issue(r.user, r.session).map_err(failed)?,
        token_type: "bearer",
        user_id: r.user.to_string(),
        expires_in: app.jwt.ttl().as_secs(),
        refresh_token: app.jwt.issue_refresh(r, refresh_until).map_err(failed)?,
        refresh_expires_in: refresh_ttl.as_secs(),
    })
}

/// Ends `sessions` of `user` everywhere (the store has them ended): their tokens
/// stop working and their sockets close.
fn ended(shard: &ShardContext, user: UserId, sessions: Vec<SessionId>, refuse_before: Option<u64>) {
    if sessions.is_empty() && refuse_before.is_none() {
        return;
    }
    shard.hub.tokens_revoked(Revoked {
        user,
        at: unix_seconds(now_micros()),
        refuse_before,
        sessions,
    });
}

/// Opens a session for a user who just proved who they are: its first tokens. Past
/// `SESSIONS_PER_USER` live sessions the oldest ends.
pub(super) async fn open(
    shard: &ShardContext,
    user_agent: Option<String>,
    user: UserId,
) -> Result<Token, ApiError> {
    let now = now_micros();
    let config = &shard.app.config;
    let new = NewSession {
        id: SessionId::random(),
        user,
        created_at: now,
        expires_at: now + to_chrono(config.refresh_ttl()),
        user_agent,
    };
    // A starting node reads the endings of the last access token lifetime; rows
    // older than that (and a day) are no longer needed.
    let forget_before = now - to_chrono(config.token_ttl()) - chrono::Duration::days(1);
    let session = new.id;
    let evicted = shard
        .app
        .db
        .call(move |s| async move {
            s.create_session(&new, SESSIONS_PER_USER, forget_before)
                .await
        })
        .await?;
    ended(shard, user, evicted, None);
    tokens(
        shard,
        Refresh {
            user,
            session,
            generation: 0,
        },
        now,
    )
}

/// Renew a session: a new access token and a new refresh token.
#[utoipa::path(
    post,
    path = "/api/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens; the refresh token given no longer works", body = Token),
        (status = 401, description = "Not a refresh token of this server, expired, or its session ended; a refresh token used a second time ends its session (every token of it, every socket)", body = ErrorBody,
            example = json!({"detail": "Refresh token reused: the session has ended"})),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn refresh(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let body = request::body(shard, req).await?;
    let asked: RefreshRequest = request::json(&body)?;
    let presented = shard
        .app
        .jwt
        .verify_refresh(asked.refresh_token.trim())
        .map_err(|_| ApiError::Unauthorized("Invalid refresh token"))?;
    let now = now_micros();
    let until = now + to_chrono(shard.app.config.refresh_ttl());
    let Refresh {
        session,
        generation,
        ..
    } = presented;
    let renewal = shard
        .app
        .db
        .call(move |s| async move { s.renew_session(session, generation, now, until).await })
        .await?;
    match renewal {
        Renewal::Renewed { user, generation } => {
            let next = Refresh {
                user,
                session,
                generation,
            };
            Ok(json(StatusCode::OK, &tokens(shard, next, now)?))
        }
        Renewal::Reused { user } => {
            ended(shard, user, vec![session], None);
            Err(ApiError::Unauthorized(
                "Refresh token reused: the session has ended",
            ))
        }
        Renewal::Ended => Err(ApiError::Unauthorized("Session ended")),
    }
}

/// End this session: its tokens stop working and its sockets close, on every node.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn logout(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::caller(shard, &req)?;
    let user = me.user;
    match me.session {
        Some(session) => {
            let now = now_micros();
            let sessions = shard
                .app
                .db
                .call(move |s| async move { s.end_sessions(user, Ending::One(session), now).await })
                .await?;
            ended(shard, user, sessions, None);
        }
        // A token signed elsewhere has no session of its own: its kind ends.
        None => refuse_sessionless(shard, user).await?,
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// The user's tokens without a session issued until now stop counting: from the next
/// second on (token times are in seconds).
async fn refuse_sessionless(shard: &ShardContext, user: UserId) -> Result<(), ApiError> {
    let before = now_micros() + chrono::Duration::seconds(1);
    shard
        .app
        .db
        .call(move |s| async move { s.set_tokens_not_before(user, before).await })
        .await?;
    ended(shard, user, Vec::new(), Some(unix_seconds(before)));
    Ok(())
}

/// Ends every session of `user` but `keep`, and their tokens without a session.
pub(super) async fn end_others(
    shard: &ShardContext,
    user: UserId,
    keep: Option<SessionId>,
) -> Result<usize, ApiError> {
    let now = now_micros();
    let before = now + chrono::Duration::seconds(1);
    let sessions = shard
        .app
        .db
        .call(move |s| async move {
            s.set_tokens_not_before(user, before).await?;
            s.end_sessions(user, Ending::AllBut(keep), now).await
        })
        .await?;
    let count = sessions.len();
    ended(shard, user, sessions, Some(unix_seconds(before)));
    Ok(count)
}

/// End every other session of the caller (and tokens signed elsewhere): on every
/// device but this one, tokens stop working and sockets close.
#[utoipa::path(
    post,
    path = "/api/auth/logout-all",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many sessions ended; the caller's own goes on", body = LoggedOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn logout_all(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::caller(shard, &req)?;
    let ended_sessions = end_others(shard, me.user, me.session).await?;
    Ok(json(StatusCode::OK, &LoggedOut { ended_sessions }))
}
