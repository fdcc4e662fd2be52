//! The WebSocket endpoints, `/api/chat/ws/{conversation_id}?token=` (a conversation
//! socket) and `/api/chat/ws?token=` (the user stream, every conversation of the
//! user): admission (token, memberships) while the upgrade request is still HTTP, the
//! upgrade itself (fastwebsockets' handshake on the shard's hyper connection), then
//! the connection's life in `connection`, reading the client's frames with `frame`
//! from the socket halves of `io`. Refusals follow the protocol (docs/protocol.md): an `error` event,
//! then close 1008 (1011 when the store could not be asked). A user holds at most
//! `--ws-max-per-user` sockets on a node; one more is refused with 1008 like the others.
//!
//! Below `http`: the router hands it the request and the token; it never imports the
//! HTTP layer back.

mod connection;
mod io;
/// Public for the fuzz targets (`fuzz/`), which feed it hostile bytes.
pub mod reader;

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::context::ShardContext;
use crate::error::ApiError;
use crate::hub::{Admitted, Carried, Resume, StreamAdmission};
use crate::ids::{ConversationId, Seq, UserId};
use crate::limits::Slot;
use crate::metrics::Upgrade;
use crate::protocol::{framed, Close};
use crate::store::{ListCursor, ListPage, Store, StoreError};
use crate::views::ConversationItem;

/// What the upgrade request's query says: `token`, and `since` for a resume.
pub struct Query {
    pub token: Option<String>,
    pub since: Option<String>,
}

/// Which socket the client asked for.
pub enum Wanted<'a> {
    /// A conversation socket, by the id as the path gave it.
    Conversation(&'a str),
    /// The user stream.
    Stream,
}

/// How many conversations, with their read markers and unread counts, the user
/// stream's `ready` event lists (the rest are paged over REST from its `next_cursor`).
const READY_PAGE: u32 = 50;

/// Upgrades `req` to a WebSocket: a conversation socket or the user stream.
pub async fn upgrade(
    shard: &Rc<ShardContext>,
    mut req: Request<Incoming>,
    wanted: Wanted<'_>,
    Query { token, since }: Query,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        shard.metrics.upgrade(Upgrade::BadRequest);
        // Plain HTTP is validated like any route (a missing parameter is a 422) and
        // then told to upgrade. A real upgrade hears about its token on the socket,
        // where a browser can read it.
        if token.is_none() {
            return Err(ApiError::field(
                "query",
                "token",
                "missing",
                "Field required",
            ));
        }
        return Err(ApiError::UpgradeRequired);
    }
    // The handshake is checked before admission costs a store read.
    let (response, upgraded) = fastwebsockets::upgrade::upgrade(&mut req).map_err(|_| {
        shard.metrics.upgrade(Upgrade::BadRequest);
        ApiError::UpgradeRequired
    })?;
    let resume = match since {
        None => Resume::Fresh,
        Some(raw) => raw
            .trim()
            .parse()
            .map_or(Resume::Invalid, |n| Resume::Since(Seq(n))),
    };
    let mut admission = match wanted {
        Wanted::Conversation(conversation) => admit(shard, token, conversation, resume).await,
        Wanted::Stream => admit_stream(shard, token).await,
    };
    // The user's place among their WebSockets on this node, held for the socket's life.
    let socket_slot = match &admission {
        Ok(admitted) => {
            let slot = shard.app.limits.websockets.hold(admitted.user);
            if slot.is_none() {
                admission = Err(Close::TooManySockets);
            }
            slot
        }
        Err(_) => None,
    };
    shard.metrics.upgrade(match &admission {
        Ok(_) => Upgrade::Accepted,
        Err(Close::InvalidToken) => Upgrade::Unauthorized,
        Err(Close::Unavailable) => Upgrade::Unavailable,
        Err(Close::TooManySockets) => Upgrade::Limited,
        Err(_) => Upgrade::Forbidden,
    });
    // The connection's place among its address's connections outlives the HTTP
    // connection it came on: the WebSocket is the same TCP connection.
    let connection_slot = req.extensions_mut().remove::<Arc<Slot<IpAddr>>>();
    let shard = Rc::clone(shard);
    monoio::spawn(async move {
        let _open = shard.connections.open();
        let _held = (socket_slot, connection_slot);
        // Only the socket is kept: what the upgrade returned around it would stay in
        // the task for the connection's whole life.
        let halves = match upgraded
            .await
            .map(|ws| io::split(ws.into_inner().into_inner()))
        {
            Ok(Ok(halves)) => halves,
            Ok(Err(e)) => return tracing::debug!(error = %e, "could not take the socket"),
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        // A bug in one connection must not take the shard thread down with it.
        let run = AssertUnwindSafe(connection::run(&shard, halves, admission));
        if run.catch_unwind().await.is_err() {
            tracing::error!("websocket connection task panicked");
        }
    });
    Ok(response.map(|_| Full::new(Bytes::new())))
}

/// What both endpoints' admissions share: the token is checked, then, after noting
/// when, the store is asked who the user is and what the socket will carry (`read`),
/// which `carry` turns into the socket's conversations or a refusal.
async fn admit_as<T, F, Fut>(
    shard: &ShardContext,
    token: Option<String>,
    read: F,
    carry: impl FnOnce(T) -> Result<Carried, Close>,
) -> Result<Admitted, Close>
where
    T: Send + 'static,
    F: FnOnce(Arc<dyn Store>, UserId) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let token = token
        .and_then(|t| shard.app.authenticate(&t).ok())
        .ok_or(Close::InvalidToken)?;
    let user = token.user;
    let checked_at = Instant::now();
    let found = shard
        .app
        .db
        .call(move |s| async move {
            let Some(u) = s.user_by_id(user).await? else {
                return Ok(None);
            };
            Ok(Some((u.username, read(s, user).await?)))
        })
        .await;
    match found {
        Ok(Some((username, found))) => Ok(Admitted {
            user,
            username: username.into(),
            expires_at: token.expires_at,
            session: token.session,
            issued_at: token.issued_at,
            checked_at,
            carried: carry(found)?,
        }),
        Ok(None) => Err(Close::InvalidToken),
        Err(e) => {
            tracing::warn!(error = %e, "websocket admission failed");
            Err(Close::Unavailable)
        }
    }
}

/// A conversation socket's admission: the user must be a participant.
async fn admit(
    shard: &ShardContext,
    token: Option<String>,
    conversation: &str,
    resume: Resume,
) -> Result<Admitted, Close> {
    // An unknown or malformed conversation id looks exactly like one the user is not in.
    let conversation: Option<ConversationId> = conversation.parse().ok();
    let read = move |s: Arc<dyn Store>, user| async move {
        match conversation {
            Some(c) => s.member_position(c, user).await,
            None => Ok(None),
        }
    };
    admit_as(shard, token, read, |position| {
        match (conversation, position) {
            (Some(conversation), Some(position)) => Ok(Carried::Conversation {
                conversation,
                position,
                resume,
            }),
            _ => Err(Close::NotAMember),
        }
    })
    .await
}

/// The user stream's admission: the user's conversations (at most
/// `--stream-max-conversations`, most recently active first) with their positions,
/// and the `ready` event: the first page of the conversation list, and every carried
/// conversation's position.
async fn admit_stream(shard: &ShardContext, token: Option<String>) -> Result<Admitted, Close> {
    let carried = shard.app.config.stream_max_conversations;
    let read = move |s: Arc<dyn Store>, user| async move {
        let memberships = s.memberships(user, carried).await?;
        let page = ListPage {
            limit: READY_PAGE + 1,
            after: None,
        };
        Ok((user, memberships, s.conversations_of(user, page).await?))
    };
    admit_as(shard, token, read, |(user, memberships, mut listed)| {
        let more = listed.len() > READY_PAGE as usize;
        listed.truncate(READY_PAGE as usize);
        let ready = Ready {
            kind: "ready",
            user_id: user,
            conversations: listed.iter().map(ConversationItem::from).collect(),
            next_cursor: listed
                .last()
                .filter(|_| more)
                .map(|s| ListCursor::after(&s.conversation).to_string()),
            positions: memberships.iter().copied().collect(),
        };
        Ok(Carried::Stream(Box::new(StreamAdmission {
            memberships,
            ready: framed(&ready),
        })))
    })
    .await
}

/// The user stream's first event.
#[derive(serde::Serialize)]
struct Ready {
    #[serde(rename = "type")]
    kind: &'static str,
    user_id: UserId,
    /// The first page of the conversation list, as REST gives it.
    conversations: Vec<ConversationItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    /// Each conversation the stream carries, with its position now.
    positions: std::collections::BTreeMap<ConversationId, Seq>,
}
