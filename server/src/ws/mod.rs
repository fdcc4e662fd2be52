//! The WebSocket endpoint `/api/chat/ws/{conversation_id}?token=`: admission (token,
//! membership) while the upgrade request is still HTTP, the upgrade itself
//! (fastwebsockets on the shard's hyper connection), then the connection's life in
//! `connection`. Refusals follow API.md: an `error` event, then close 1008.

mod connection;

use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;

use crate::error::ApiError;
use crate::http::{query_param, Reply};
use crate::ids::{ConversationId, UserId};
use crate::shard::Shard;

/// Who may join which conversation, or why not (the close reason).
pub struct Admitted {
    pub user: UserId,
    pub username: Arc<str>,
    pub conversation: ConversationId,
}

pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
}

const INVALID_TOKEN: Refusal = Refusal {
    code: 1008,
    reason: "Invalid token",
};
const NOT_A_MEMBER: Refusal = Refusal {
    code: 1008,
    reason: "Not a member of this conversation",
};
const UNAVAILABLE: Refusal = Refusal {
    code: 1011,
    reason: "Service unavailable, please retry",
};

pub async fn upgrade(shard: &Rc<Shard>, mut req: Request<Incoming>, conversation: &str) -> Reply {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
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
) -> Result<Admitted, Refusal> {
    let user = token
        .and_then(|t| shard.app.jwt.verify(&t).ok())
        .ok_or(INVALID_TOKEN)?;
    // An unknown or malformed conversation id looks exactly like one the user is not in.
    let conversation: ConversationId = conversation.parse().map_err(|_| NOT_A_MEMBER)?;
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
        }),
        Ok(Some((_, false))) => Err(NOT_A_MEMBER),
        Ok(None) => Err(INVALID_TOKEN),
        Err(e) => {
            tracing::warn!(error = %e, "websocket admission failed");
            Err(UNAVAILABLE)
        }
    }
}
