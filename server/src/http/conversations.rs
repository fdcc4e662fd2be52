//! Conversations, their participants and their history. Every route checks
//! membership: outsiders get 403, unknown ids 404.

use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::dto::{
    ConversationOut, ErrorBody, HistoryQuery, MessageOut, NewConversation, NewParticipant,
};
use super::reply::{empty, json, Reply};
use super::request;
use crate::context::ShardContext;
use crate::error::{ApiError, FieldError};
use crate::ids::{now_micros, ConversationId, MessageId, UserId};
use crate::store::{ConversationRecord, Page, Store};

const NAME_MAX: usize = 200;
const DESCRIPTION_MAX: usize = 2000;
const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 100;

fn not_found() -> ApiError {
    ApiError::NotFound("Conversation not found".into())
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("User {id} not found"))
}

/// The conversation, if it exists and the caller is in it.
pub(super) async fn member_of(
    shard: &ShardContext,
    me: UserId,
    id: &str,
) -> Result<ConversationRecord, ApiError> {
    let id: ConversationId = id.parse().map_err(|_| not_found())?;
    let (conversation, member) = shard
        .app
        .db
        .call(move |s| async move {
            let c = s.conversation(id).await?;
            let member = if c.is_some() {
                s.is_member(id, me).await?
            } else {
                false
            };
            Ok((c, member))
        })
        .await?;
    let conversation = conversation.ok_or_else(not_found)?;
    if !member {
        return Err(ApiError::Forbidden("Not a member of this conversation"));
    }
    Ok(conversation)
}

async fn with_participants(shard: &ShardContext, c: &ConversationRecord) -> Reply {
    let id = c.id;
    let ids = shard
        .app
        .db
        .call(move |s| async move { s.participants(id).await })
        .await?;
    let ids = ids.iter().map(ToString::to_string).collect();
    Ok(json(StatusCode::OK, &ConversationOut::new(c, Some(ids))))
}

/// Create a conversation; the caller is always a participant.
#[utoipa::path(
    post,
    path = "/api/chat/conversations",
    operation_id = "create_conversation",
    tag = "conversations",
    security(("bearer" = [])),
    request_body = NewConversation,
    responses(
        (status = 201, description = "Created, with `participant_ids`", body = ConversationOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "A participant id names no user", body = ErrorBody,
            example = json!({"detail": "User 0190e0c4-0000-7000-8000-000000000000 not found"})),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body, or name or description too long", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn create(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(req, shard.app.config.max_body_bytes).await?;
    let new: NewConversation = request::json(&body)?;
    let mut errors = Vec::new();
    if new
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > NAME_MAX)
    {
        errors.push(FieldError::new(
            "body",
            "name",
            "string_too_long",
            format!("At most {NAME_MAX} characters"),
        ));
    }
    if new
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > DESCRIPTION_MAX)
    {
        errors.push(FieldError::new(
            "body",
            "description",
            "string_too_long",
            format!("At most {DESCRIPTION_MAX} characters"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut participants = vec![me];
    for raw in &new.participant_ids {
        let id: UserId = raw.parse().map_err(|_| user_not_found(raw))?;
        if !participants.contains(&id) {
            participants.push(id);
        }
    }
    let now = now_micros();
    let conversation = ConversationRecord {
        id: ConversationId(uuid::Uuid::now_v7()),
        name: new.name,
        description: new.description,
        is_group: new.is_group,
        created_by: me,
        created_at: now,
        updated_at: now,
    };
    let record = conversation.clone();
    let members = participants.clone();
    let missing = shard
        .app
        .db
        .call(move |s| async move {
            let missing = s.missing_users(&members).await?;
            if missing.is_empty() {
                s.create_conversation(&record, &members).await?;
            }
            Ok(missing)
        })
        .await?;
    if let Some(id) = missing.first() {
        return Err(user_not_found(&id.to_string()));
    }
    let ids = participants.iter().map(ToString::to_string).collect();
    Ok(json(
        StatusCode::CREATED,
        &ConversationOut::new(&conversation, Some(ids)),
    ))
}

/// The caller's conversations, most recently active first.
#[utoipa::path(
    get,
    path = "/api/chat/conversations",
    operation_id = "list_conversations",
    tag = "conversations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's conversations, without `participant_ids`", body = Vec<ConversationOut>),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn list(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    let list = shard
        .app
        .db
        .call(move |s| async move { s.conversations_of(me).await })
        .await?;
    let out: Vec<ConversationOut> = list.iter().map(|c| ConversationOut::new(c, None)).collect();
    Ok(json(StatusCode::OK, &out))
}

/// One conversation with its participants.
#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}",
    operation_id = "get_conversation",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation, with `participant_ids`", body = ConversationOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn get(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let conversation = member_of(shard, me, id).await?;
    with_participants(shard, &conversation).await
}

/// Add a user to a conversation; members only.
#[utoipa::path(
    post,
    path = "/api/chat/conversations/{id}/participants",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id")),
    request_body = NewParticipant,
    responses(
        (status = 200, description = "The conversation, with `participant_ids`", body = ConversationOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation or user", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn add_participant(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(req, shard.app.config.max_body_bytes).await?;
    let new: NewParticipant = request::json(&body)?;
    let conversation = member_of(shard, me, id).await?;
    let user: UserId = new
        .user_id
        .parse()
        .map_err(|_| user_not_found(&new.user_id))?;
    let conversation_id = conversation.id;
    let added = shard
        .app
        .db
        .call(move |s| async move {
            if s.user_by_id(user).await?.is_none() {
                return Ok(false);
            }
            s.add_participant(conversation_id, user).await?;
            Ok(true)
        })
        .await?;
    if !added {
        return Err(user_not_found(&new.user_id));
    }
    with_participants(shard, &conversation).await
}

/// Remove a participant: a member may remove themself, only the creator may remove others.
#[utoipa::path(
    delete,
    path = "/api/chat/conversations/{id}/participants/{user_id}",
    tag = "conversations",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "Conversation id"),
        ("user_id" = String, Path, format = Uuid, description = "The participant to remove"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "Not a participant, or removing someone else without being the creator", body = ErrorBody),
        (status = 404, description = "No such conversation, or the user is not a participant", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn remove_participant(
    shard: &Rc<ShardContext>,
    req: Request<Incoming>,
    id: &str,
    user: &str,
) -> Reply {
    let me = request::bearer(shard, &req)?;
    let conversation = member_of(shard, me, id).await?;
    let user: UserId = user.parse().map_err(|_| user_not_found(user))?;
    if user != me && conversation.created_by != me {
        return Err(ApiError::Forbidden(
            "Only the creator can remove other participants",
        ));
    }
    let conversation_id = conversation.id;
    let removed = shard
        .app
        .db
        .call(move |s| async move { s.remove_participant(conversation_id, user).await })
        .await?;
    if !removed {
        return Err(ApiError::NotFound(format!(
            "User {user} is not a participant"
        )));
    }
    // Committed: their open sockets in the conversation lose access now, on every shard.
    shard.hub.revoke(conversation_id, user);
    Ok(empty(StatusCode::NO_CONTENT))
}

/// A history anchor (`before`, `after`): absent, or a message id. Ids are opaque, so a
/// malformed one is merely unknown (404); an empty one is no id at all (422).
fn anchor(req: &Request<Incoming>, name: &'static str) -> Result<Option<MessageId>, ApiError> {
    match request::query_param(req, name) {
        None => Ok(None),
        Some(raw) if raw.trim().is_empty() => Err(ApiError::field(
            "query",
            name,
            "string_too_short",
            format!("{name} must be a message id"),
        )),
        Some(raw) => raw
            .parse()
            .map(Some)
            .map_err(|_| ApiError::NotFound("Message not found".into())),
    }
}

/// Message history, oldest first; deleted messages are absent.
#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}/messages",
    operation_id = "list_messages",
    tag = "messages",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id"), HistoryQuery),
    responses(
        (status = 200, description = "At most `limit` messages, oldest first: the newest ones (older than `before` when given), or with `after` the oldest ones newer than it", body = Vec<MessageOut>),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation, or `before` or `after` names no message of it", body = ErrorBody),
        (status = 422, description = "`limit` not an integer from 1 to 100, or `before` or `after` empty", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn history(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let limit = request::limit(&req, HISTORY_DEFAULT, HISTORY_MAX)?;
    let before = anchor(&req, "before")?;
    let after = anchor(&req, "after")?;
    let conversation = member_of(shard, me, id).await?;
    let conversation_id = conversation.id;
    let page = shard
        .app
        .db
        .call(move |s: std::sync::Arc<dyn Store>| async move {
            let page = Page {
                limit,
                before,
                after,
            };
            s.history(conversation_id, page).await
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("Message not found".into()))?;
    let out: Vec<MessageOut> = page.into_iter().map(MessageOut::from).collect();
    Ok(json(StatusCode::OK, &out))
}
