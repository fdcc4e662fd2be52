//! `GET /api/chat/conversations/{id}/presence`: who is connected to a conversation, a
//! page at a time in arrival order. Above the presence list limit the `system` events
//! carry only `active_count`, so this is how a client of a large conversation reads
//! the list. On one node the conversation's home answers (over the bus); in a cluster
//! Redis does, for every node at once.
//!
//! It reads presence, never changes it.

use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::conversations::member_of;
use super::dto::{PresenceOut, PresentUser};
use super::reply::{json, Reply};
use super::request;
use crate::bus::{Roster, ShardMsg};
use crate::context::ShardContext;
use crate::error::ApiError;

/// Users per page when the client does not say.
const PRESENCE_DEFAULT: u32 = 100;
/// The most users one page lists.
pub const PRESENCE_MAX: u32 = 1000;

/// Who is connected to a conversation; members only.
#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}/presence",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id"), super::dto::PresenceQuery),
    responses(
        (status = 200, description = "At most `limit` connected users in arrival order, after the cursor `after`, with the count of all of them", body = PresenceOut),
        (status = 401, description = "Missing, invalid or expired token", body = super::dto::ErrorBody),
        (status = 403, description = "The caller is not a participant", body = super::dto::ErrorBody),
        (status = 404, description = "No such conversation", body = super::dto::ErrorBody),
        (status = 422, description = "`limit` not an integer from 1 to 1000, or `after` not a cursor", body = super::dto::ErrorBody),
        (status = 503, description = "Presence unavailable; retry", body = super::dto::ErrorBody),
    )
)]
pub async fn presence(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let limit = request::limit(&req, PRESENCE_DEFAULT, PRESENCE_MAX)? as usize;
    let after = match request::query_param(&req, "after") {
        None => None,
        Some(raw) => Some(raw.trim().parse::<u64>().map_err(|_| {
            ApiError::field(
                "query",
                "after",
                "value_error",
                "after must be a cursor from an earlier page",
            )
        })?),
    };
    let conversation = member_of(shard, me, id).await?.id;
    let roster = match &shard.app.cluster {
        Some(cluster) => {
            cluster
                .roster(conversation, after, limit)
                .await
                .ok_or(ApiError::Unavailable {
                    detail: "Presence unavailable",
                    cause: None,
                })?
        }
        None => {
            let (reply, answer) = futures_channel::oneshot::channel::<Roster>();
            let home = shard.app.bus.home_of(conversation);
            shard.app.bus.post(
                home,
                ShardMsg::Presence {
                    conversation,
                    after,
                    limit,
                    reply,
                },
            );
            answer.await.unwrap_or_default()
        }
    };
    // A full page may have more behind it; the cursor is the last user's place.
    let next_cursor = (roster.users.len() == limit)
        .then(|| {
            roster
                .users
                .last()
                .map(|(arrival, _, _)| arrival.to_string())
        })
        .flatten();
    let out = PresenceOut {
        active_count: roster.count,
        users: roster
            .users
            .into_iter()
            .map(|(_, id, username)| PresentUser {
                id: id.to_string(),
                username: username.to_string(),
            })
            .collect(),
        next_cursor,
    };
    Ok(json(StatusCode::OK, &out))
}
