//! `POST /api/chat/conversations/{id}/read`: moves the caller's read marker forward
//! (never back; a position past the stream means all of it), then the conversation's home tells the
//! caller's sockets and, in small conversations, the other members (as a socket's
//! `read` event does).
//!
//! It writes the marker and nothing else.

use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::conversations::member_of;
use super::dto::ErrorBody;
use super::reply::{json, Reply};
use super::request;
use crate::context::ShardContext;
use crate::error::ApiError;
use crate::ids::{ConversationId, Seq};
use crate::store::ReadOutcome;

/// Body of a read marker update.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReadMarker {
    /// The position read up to: the `seq` of the newest event the user has seen.
    #[serde(deserialize_with = "position")]
    #[schema(value_type = i64, minimum = 0)]
    pub seq: Seq,
}

/// A stream position as JSON writes a whole number: `7`, or `7.0` (JSON Schema
/// counts both as integers), from 0 to 2^63 - 1.
fn position<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Seq, D::Error> {
    let number = serde_json::Number::deserialize(de)?;
    let whole = match (number.as_u64(), number.as_f64()) {
        (Some(n), _) => Some(n),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..9.2e18).contains(&f) => Some(f as u64),
        _ => None,
    };
    whole
        .filter(|&n| i64::try_from(n).is_ok())
        .map(Seq)
        .ok_or_else(|| serde::de::Error::custom("seq must be a whole number from 0 to 2^63 - 1"))
}

/// Where the caller's read marker stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadMarkerOut {
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    #[schema(value_type = u64)]
    pub last_read_seq: Seq,
}

/// Mark a conversation read up to a position; members only.
#[utoipa::path(
    post,
    path = "/api/chat/conversations/{id}/read",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id")),
    request_body = ReadMarker,
    responses(
        (status = 200, description = "The marker now: `seq` (the conversation's position when `seq` is past it), or where it already was if that is further (markers never move back)", body = ReadMarkerOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 422, description = "`seq` not a whole number, 0 or more", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn mark(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(shard, req).await?;
    let ReadMarker { seq } = request::json(&body)?;
    let conversation: ConversationId = id
        .parse()
        .map_err(|_| ApiError::NotFound("Conversation not found".into()))?;
    let outcome = shard
        .app
        .db
        .call(move |s| async move { s.mark_read(conversation, me, seq).await })
        .await?;
    let marker = match outcome {
        ReadOutcome::Moved(seq) => {
            shard.hub.marked(conversation, me, seq);
            seq
        }
        ReadOutcome::Kept(marker) => marker,
        // Which refusal (403 or 404) is member_of's to say.
        ReadOutcome::NotMember => {
            member_of(shard, me, id).await?;
            return Err(ApiError::Forbidden("Not a member of this conversation"));
        }
    };
    Ok(json(
        StatusCode::OK,
        &ReadMarkerOut {
            conversation_id: conversation,
            last_read_seq: marker,
        },
    ))
}
