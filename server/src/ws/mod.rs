//! The WebSocket endpoint `/api/chat/ws/{conversation_id}?token=`: admission (token,
//! membership) while the upgrade request is still HTTP, the upgrade itself
//! (fastwebsockets on the shard's hyper connection), then the connection's life in
//! `connection`. Refusals follow the protocol (docs/protocol.md): an `error` event,
//! then close 1008.

mod connection;

use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;

use crate::error::ApiError;
use crate::http::{query_param, Reply};
use crate::ids::{ConversationId, UserId};
use crate::protocol::Close;
use crate::shard::Shard;

/// Who may join which conversation, until when, and since when we know it.
pub struct Admitted {
    pub user: UserId,
    pub username: Arc<str>,
    pub conversation: ConversationId,
    /// When the token expires (Unix seconds); the socket is closed then.
    pub expires_at: u64,
    /// Taken before membership was read: a removal committed after this instant may
    /// not have been seen, so the home checks it against its recent removals.
    pub checked_at: Instant,
}

pub async fn upgrade(shard: &Rc<Shard>, mut req: Request<Incoming>, conversation: &str) -> Reply {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        // Plain HTTP is validated like any route (a missing parameter is a 422) and
        // then told to upgrade. A real upgrade hears about its token on the socket,
        // where a browser can read it.
        if query_param(&req, "token").is_none() {
            return Err(ApiError::field(
                "query",
                "token",
                "missing",
                "Field required",
            ));
        }
        return Err(ApiError::UpgradeRequired);
    }
    let admission = admit(shard, query_param(&req, "token"), conversation).await;
    let (response, upgraded) =
        fastwebsockets::upgrade::upgrade(&mut req).map_err(|_| ApiError::UpgradeRequired)?;
    let shard = Rc::clone(shard);
    monoio::spawn(async move {
        match upgraded.await {
            Ok(ws) => {
                // A bug in one connection must not take the shard thread down with it.
                let run = AssertUnwindSafe(connection::run(shard, ws, admission));
                if run.catch_unwind().await.is_err() {
                    tracing::error!("websocket connection task panicked");
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok(response.map(|_| Full::new(Bytes::new())))
}

async fn admit(
    shard: &Shard,
    token: Option<String>,
    conversation: &str,
) -> Result<Admitted, Close> {
    let token = token
        .and_then(|t| shard.app.jwt.verify(&t).ok())
        .ok_or(Close::InvalidToken)?;
    let user = token.user;
    // An unknown or malformed conversation id looks exactly like one the user is not in.
    let conversation: ConversationId = conversation.parse().map_err(|_| Close::NotAMember)?;
    let checked_at = Instant::now();
    let found = shard
        .app
        .db
        .call(move |s| async move {
            let Some(u) = s.user_by_id(user).await? else {
                return Ok(None);
            };
            Ok(Some((u.username, s.is_member(conversation, user).await?)))
        })
        .await;
    match found {
        Ok(Some((username, true))) => Ok(Admitted {
            user,
            username: username.into(),
            conversation,
            expires_at: token.expires_at,
            checked_at,
        }),
        Ok(Some((_, false))) => Err(Close::NotAMember),
        Ok(None) => Err(Close::InvalidToken),
        Err(e) => {
            tracing::warn!(error = %e, "websocket admission failed");
            Err(Close::Unavailable)
        }
    }
}
