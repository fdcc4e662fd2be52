//! Conversations and their history: create (a direct conversation once per pair),
//! list, get, change, archive, delete. Every route checks membership through `access`:
//! outsiders get 403, unknown ids 404; what a role may do is `Access`'s to say.

use std::collections::HashSet;
use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::dto::{
    ConversationItem, ConversationListQuery, ConversationOut, ConversationPatch, ErrorBody,
    HistoryQuery, MessageOut, NewConversation,
};
use super::reply::{empty, json, next_cursor, Reply};
use super::request;
use crate::context::ShardContext;
use crate::error::{ApiError, FieldError};
use crate::ids::{now_micros, ConversationId, MessageId, Role, UserId};
use crate::protocol::{conversation_event, ConversationAction};
use crate::store::{
    self, ConversationChange, ConversationRecord, Guarded, ListCursor, ListPage, Page, Store,
};
use crate::text::{
    ConversationName, Description, TextError, DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS,
};

const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 100;
/// Conversations per page of the list: bounded, so no list costs the shard more than
/// one page of JSON whatever the caller is in.
const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 500;

pub(super) fn not_found() -> ApiError {
    ApiError::NotFound("Conversation not found".into())
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("User {id} not found"))
}

/// A participant's hold on a conversation: the conversation and their role in it.
pub(super) struct Access {
    pub conversation: ConversationRecord,
    pub role: Role,
}

impl Access {
    /// Renames, describes, archives: owners and admins, or either person of a direct
    /// conversation.
    fn moderates(&self) -> bool {
        self.role.moderates() || self.conversation.direct
    }

    /// Deletes the conversation: the owner, or either person of a direct one.
    fn owns(&self) -> bool {
        self.role == Role::Owner || self.conversation.direct
    }
}

/// The conversation and the caller's role, if it exists and the caller is in it: one
/// read.
pub(super) async fn access(shard: &ShardContext, me: UserId, id: &str) -> Result<Access, ApiError> {
    let id: ConversationId = id.parse().map_err(|_| not_found())?;
    let (conversation, role) = shard
        .app
        .db
        .call(move |s| async move { s.membership(id, me).await })
        .await?
        .ok_or_else(not_found)?;
    let role = role.ok_or(ApiError::Forbidden("Not a member of this conversation"))?;
    Ok(Access { conversation, role })
}

/// What a guarded change answers: done, a 403 with `refused` (the caller's role no
/// longer allows it: it changed after `access` read it), `missing` (the participant
/// it names), or 404 for a conversation deleted meanwhile.
pub(super) fn guarded<T>(
    outcome: Guarded<T>,
    refused: &'static str,
    missing: impl FnOnce() -> ApiError,
) -> Result<T, ApiError> {
    match outcome {
        Guarded::Done(done) => Ok(done),
        Guarded::Refused => Err(ApiError::Forbidden(refused)),
        Guarded::Missing => Err(missing()),
        Guarded::Gone => Err(not_found()),
    }
}

/// The conversation, if it exists and the caller is in it.
pub(super) async fn member_of(
    shard: &ShardContext,
    me: UserId,
    id: &str,
) -> Result<ConversationRecord, ApiError> {
    Ok(access(shard, me, id).await?.conversation)
}

pub(super) async fn with_participants(shard: &ShardContext, c: &ConversationRecord) -> Reply {
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
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body; name or description too long or holding control characters (the name: any; the description: any but tab and line breaks) or NUL; more `participant_ids` than `--max-participants` allows", body = ErrorBody),
        (status = 429, description = "The caller created `--max-new-conversations` conversations in this window; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the caller may create again")),
            example = json!({"detail": "Too many new conversations, retry later"})),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn create(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(shard, req).await?;
    let new: NewConversation = request::json(&body)?;
    let (name, description) = texts(new.name, new.description)?;
    let participants =
        participant_set(me, &new.participant_ids, shard.app.config.max_participants)?;
    let quota = &shard.app.limits.new_conversations;
    quota.take(me).map_err(|wait| ApiError::RateLimited {
        detail: "Too many new conversations, retry later",
        retry_after: wait.as_secs(),
    })?;
    let now = now_micros();
    let conversation = ConversationRecord {
        id: ConversationId(uuid::Uuid::now_v7()),
        name,
        description,
        is_group: new.is_group,
        created_by: me,
        created_at: now,
        updated_at: now,
        archived_at: None,
        direct: false,
    };
    // Not a group, with exactly one other person: that pair's one conversation.
    if let [_, other] = participants[..] {
        if !new.is_group {
            return create_direct(shard, conversation, other).await;
        }
    }
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
        .await;
    let missing = match missing {
        Ok(missing) if missing.is_empty() => missing,
        // Nothing was created: the attempt does not count against the quota.
        other => {
            quota.give_back(&me);
            other?
        }
    };
    if let Some(id) = missing.first() {
        return Err(user_not_found(&id.to_string()));
    }
    announce_added(shard, &conversation, participants.clone());
    let ids = participants.iter().map(ToString::to_string).collect();
    Ok(json(
        StatusCode::CREATED,
        &ConversationOut::new(&conversation, Some(ids)),
    ))
}

/// The direct conversation of the caller and `other`: created (201), or the one they
/// have (200), with whichever of the two had left it back in.
async fn create_direct(
    shard: &ShardContext,
    conversation: ConversationRecord,
    other: UserId,
) -> Reply {
    let me = conversation.created_by;
    let quota = &shard.app.limits.new_conversations;
    let record = conversation.clone();
    let made = shard
        .app
        .db
        .call(move |s| async move {
            if !s.missing_users(&[other]).await?.is_empty() {
                return Ok(None);
            }
            s.create_direct(&record, other).await.map(Some)
        })
        .await;
    let made = match made {
        Ok(Some(made)) if made.created => made,
        // Nothing was created: the attempt does not count against the quota.
        other_outcome => {
            quota.give_back(&me);
            other_outcome?.ok_or_else(|| user_not_found(&other.to_string()))?
        }
    };
    let pair = vec![me, other];
    let (status, announced) = if made.created {
        (StatusCode::CREATED, pair.clone())
    } else {
        (StatusCode::OK, made.rejoined)
    };
    if !announced.is_empty() {
        announce_added(shard, &made.conversation, announced);
    }
    let ids = pair.iter().map(ToString::to_string).collect();
    Ok(json(
        status,
        &ConversationOut::new(&made.conversation, Some(ids)),
    ))
}

/// A new conversation's name and description under `text`'s rules, or a 422 naming
/// each field that breaks them.
fn texts(
    name: Option<String>,
    description: Option<String>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let name = name.map(ConversationName::parse).transpose();
    let description = description.map(Description::parse).transpose();
    match (name, description) {
        (Ok(n), Ok(d)) => Ok((
            n.map(ConversationName::into_string),
            d.map(Description::into_string),
        )),
        (n, d) => Err(ApiError::Validation(
            [
                (
                    "name",
                    n.err(),
                    NAME_MAX_CHARS,
                    "Must be one line without control characters",
                ),
                (
                    "description",
                    d.err(),
                    DESCRIPTION_MAX_CHARS,
                    "Must not contain control characters other than tab and line breaks",
                ),
            ]
            .into_iter()
            .filter_map(|(field, e, max, controls)| {
                e.map(|e| {
                    let msg = match e {
                        TextError::TooLong => format!("At most {max} characters"),
                        TextError::Nul => "Must not contain NUL characters".to_owned(),
                        TextError::Control => controls.to_owned(),
                    };
                    FieldError::new("body", field, e.kind(), msg)
                })
            })
            .collect(),
        )),
    }
}

/// The creator, then each named user once, in the order given. The list is refused
/// past `max` before an id is parsed, and de-duplicated in one pass.
fn participant_set(me: UserId, raw: &[String], max: usize) -> Result<Vec<UserId>, ApiError> {
    let too_many = || {
        ApiError::field(
            "body",
            "participant_ids",
            "too_long",
            format!("At most {max} participants, the creator included"),
        )
    };
    // Even if every id repeated another, a list this long is not worth parsing.
    if raw.len() > max {
        return Err(too_many());
    }
    let mut seen = HashSet::with_capacity(raw.len() + 1);
    seen.insert(me);
    let mut participants = vec![me];
    for id in raw {
        let id: UserId = id.parse().map_err(|_| user_not_found(id))?;
        if seen.insert(id) {
            participants.push(id);
        }
    }
    if participants.len() > max.max(1) {
        return Err(too_many());
    }
    Ok(participants)
}

/// Where the next page of a conversation list starts, as the list's response tells
/// it in `X-Next-Cursor`: `<updated_at in microseconds>_<id>`. Opaque to clients.
/// The caller's conversations, most recently active first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/chat/conversations",
    operation_id = "list_conversations",
    tag = "conversations",
    security(("bearer" = [])),
    params(ConversationListQuery),
    responses(
        (status = 200, description = "At most `limit` of the caller's conversations, without `participant_ids`, most recently active first, each with the stream's position, the caller's read marker, unread count and the newest message's start", body = Vec<ConversationItem>,
            headers(("X-Next-Cursor" = String, description = "Present when more conversations may follow: pass it as `cursor` for the next page"))),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "`limit` not an integer from 1 to 500, or `cursor` not one this server gave", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn list(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    let limit = request::limit(&req, LIST_DEFAULT, LIST_MAX)?;
    let after = match request::query_param(&req, "cursor") {
        None => None,
        Some(raw) => Some(raw.parse::<ListCursor>().map_err(|()| {
            ApiError::field(
                "query",
                "cursor",
                "value_error",
                "cursor must be an X-Next-Cursor this server gave",
            )
        })?),
    };
    // One more than asked says whether another page follows, without a count.
    let page = ListPage {
        limit: limit + 1,
        after,
    };
    let mut list = shard
        .app
        .db
        .call(move |s| async move { s.conversations_of(me, page).await })
        .await?;
    let more = list.len() > limit as usize;
    list.truncate(limit as usize);
    let out: Vec<ConversationItem> = list.iter().map(ConversationItem::from).collect();
    let cursor = list
        .last()
        .filter(|_| more)
        .map(|last| ListCursor::after(&last.conversation).to_string());
    Ok(next_cursor(json(StatusCode::OK, &out), cursor))
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

/// Tells the user streams of `users` that they are in the conversation now.
pub(super) fn announce_added(
    shard: &ShardContext,
    conversation: &ConversationRecord,
    users: Vec<UserId>,
) {
    let out = ConversationOut::new(conversation, None);
    let frame = conversation_event(ConversationAction::Added, &out);
    shard.hub.added(conversation.id, users, frame);
}

/// Rename, describe anew, archive or unarchive; owners and admins (either person of a
/// direct conversation).
#[utoipa::path(
    patch,
    path = "/api/chat/conversations/{id}",
    operation_id = "update_conversation",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id")),
    request_body = ConversationPatch,
    responses(
        (status = 200, description = "The conversation as it is now (without `participant_ids`); its sockets hear `conversation` `updated` when anything changed", body = ConversationOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant, or not an owner or admin", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body or unknown field; name or description too long or holding control characters or NUL", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn update(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(shard, req).await?;
    let patch: ConversationPatch = request::json(&body)?;
    let (name, description) = texts(
        patch.name.clone().flatten(),
        patch.description.clone().flatten(),
    )?;
    let change = ConversationChange {
        name: patch.name.map(|_| name),
        description: patch.description.map(|_| description),
        archived: patch.archived,
    };
    const NOT_A_MODERATOR: &str = "Only owners and admins can change the conversation";
    let caller = access(shard, me, id).await?;
    if !caller.moderates() {
        return Err(ApiError::Forbidden(NOT_A_MODERATOR));
    }
    let before = caller.conversation;
    if change == ConversationChange::default() {
        return Ok(json(StatusCode::OK, &ConversationOut::new(&before, None)));
    }
    let conversation_id = before.id;
    let now = shard
        .app
        .db
        .call(move |s| async move {
            s.update_conversation(conversation_id, me, &change, now_micros())
                .await
        })
        .await?;
    let now = guarded(now, NOT_A_MODERATOR, not_found)?;
    let out = ConversationOut::new(&now, None);
    let changed = (&now.name, &now.description, now.archived_at)
        != (&before.name, &before.description, before.archived_at);
    if changed {
        let frame = conversation_event(ConversationAction::Updated, &out);
        shard.hub.tell(conversation_id, frame);
    }
    Ok(json(StatusCode::OK, &out))
}

/// Delete a conversation for everyone; the owner only (either person of a direct
/// conversation).
#[utoipa::path(
    delete,
    path = "/api/chat/conversations/{id}",
    operation_id = "delete_conversation",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id")),
    responses(
        (status = 204, description = "Deleted: its conversation sockets close with 1008 `Conversation deleted`, user streams hear `conversation` `deleted`; its history is purged in the background"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant, or not the owner", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn delete(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    const NOT_THE_OWNER: &str = "Only the owner can delete the conversation";
    let caller = access(shard, me, id).await?;
    if !caller.owns() {
        return Err(ApiError::Forbidden(NOT_THE_OWNER));
    }
    let conversation_id = caller.conversation.id;
    let deleted = shard
        .app
        .db
        .call(move |s| async move { s.delete_conversation(conversation_id, me).await })
        .await?;
    guarded(deleted, NOT_THE_OWNER, not_found)?;
    shard.hub.deleted(conversation_id);
    shard.app.db.detach(store::purge);
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
