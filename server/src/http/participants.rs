//! A conversation's participants: the member list with roles, adding, removing
//! (leaving included) and changing roles. Who may do what is `Access`'s to say; every
//! change is told to the conversation's sockets on every node once it is committed.

use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::conversations::{access, announce_added, guarded, not_found, with_participants, Access};
use super::dto::{
    ConversationOut, ErrorBody, NewParticipant, ParticipantListQuery, ParticipantOut, RoleChange,
    RoleOut,
};
use super::reply::{empty, json, next_cursor, Reply};
use super::request;
use crate::context::ShardContext;
use crate::error::ApiError;
use crate::ids::{ConversationId, Role, UserId};
use crate::protocol::role_event;
use crate::store::Guarded;

const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 500;

fn user_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("User {id} not found"))
}

const NOT_ALLOWED_TO_REMOVE: &str = "Only owners and admins can remove other participants";

fn not_a_participant(user: UserId) -> ApiError {
    ApiError::NotFound(format!("User {user} is not a participant"))
}

/// Tells every socket in the conversation, on every node, of each role that changed.
fn tell_roles(shard: &ShardContext, conversation: ConversationId, changed: &[(UserId, Role)]) {
    for &(user, role) in changed {
        shard
            .hub
            .tell(conversation, role_event(conversation, user, role));
    }
}

/// The conversation's participants with their usernames and roles, in user id order,
/// a page at a time.
#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}/participants",
    operation_id = "list_participants",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id"), ParticipantListQuery),
    responses(
        (status = 200, description = "At most `limit` participants, in user id order", body = Vec<ParticipantOut>,
            headers(("X-Next-Cursor" = String, description = "Present when more participants may follow: pass it as `cursor` for the next page"))),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 422, description = "`limit` not an integer from 1 to 500, or `cursor` not a user id", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn list(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let limit = request::limit(&req, LIST_DEFAULT, LIST_MAX)?;
    let after = match request::query_param(&req, "cursor") {
        None => None,
        Some(raw) => Some(raw.trim().parse::<UserId>().map_err(|_| {
            ApiError::field(
                "query",
                "cursor",
                "value_error",
                "cursor must be an X-Next-Cursor this server gave",
            )
        })?),
    };
    let conversation = access(shard, me, id).await?.conversation.id;
    // One more than asked says whether another page follows.
    let mut page = shard
        .app
        .db
        .call(move |s| async move { s.participant_page(conversation, after, limit + 1).await })
        .await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let out: Vec<ParticipantOut> = page
        .iter()
        .map(|p| ParticipantOut {
            user_id: p.user_id.to_string(),
            username: p.username.clone(),
            role: p.role,
            joined_at: p.joined_at,
        })
        .collect();
    let cursor = page.last().filter(|_| more).map(|p| p.user_id.to_string());
    Ok(next_cursor(json(StatusCode::OK, &out), cursor))
}

/// Add a user to a conversation; any member may, as in the quick-start guide.
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
        (status = 403, description = "The caller is not a participant, or the conversation is direct (it gains no members)", body = ErrorBody),
        (status = 404, description = "No such conversation or user", body = ErrorBody),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 409, description = "The conversation is archived", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body, or the conversation has `--max-participants` participants already", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn add(shard: &Rc<ShardContext>, req: Request<Incoming>, id: &str) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(shard, req).await?;
    let new: NewParticipant = request::json(&body)?;
    let Access { conversation, .. } = access(shard, me, id).await?;
    let user: UserId = new
        .user_id
        .parse()
        .map_err(|_| user_not_found(&new.user_id))?;
    const DIRECT: &str = "A direct conversation cannot gain members";
    const ARCHIVED: &str = "Conversation is archived";
    if conversation.direct {
        return Err(ApiError::Forbidden(DIRECT));
    }
    if conversation.archived_at.is_some() {
        return Err(ApiError::Conflict(ARCHIVED));
    }
    let conversation_id = conversation.id;
    let max = shard.app.config.max_participants;
    let added = shard
        .app
        .db
        .call(move |s| async move {
            if s.user_by_id(user).await?.is_none() {
                return Ok(Added::NoSuchUser);
            }
            if s.is_member(conversation_id, user).await? {
                return Ok(Added::Already);
            }
            // The list is bounded by the cap, so counting it costs at most one cap's
            // worth of ids.
            if s.participants(conversation_id).await?.len() >= max {
                return Ok(Added::Full);
            }
            Ok(match s.add_participant(conversation_id, user).await? {
                Guarded::Done(()) => Added::Done,
                // Archived since `access` read it (a direct one never gains anyone).
                Guarded::Refused => Added::Archived,
                Guarded::Missing | Guarded::Gone => Added::Gone,
            })
        })
        .await?;
    match added {
        Added::Done => announce_added(shard, &conversation, vec![user]),
        Added::Already => {}
        Added::Archived => return Err(ApiError::Conflict(ARCHIVED)),
        Added::Gone => return Err(not_found()),
        Added::NoSuchUser => return Err(user_not_found(&new.user_id)),
        Added::Full => {
            return Err(ApiError::field(
                "body",
                "user_id",
                "too_long",
                format!("The conversation has the most participants allowed ({max})"),
            ))
        }
    }
    with_participants(shard, &conversation).await
}

/// What became of adding a participant.
enum Added {
    Done,
    Already,
    NoSuchUser,
    Full,
    Archived,
    Gone,
}

/// Remove a participant. Anyone may leave; the owner removes anyone, an admin removes
/// members. An owner who leaves hands the conversation to its longest-standing admin,
/// or else member.
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
        (status = 403, description = "Not a participant; removing someone else as a member, an admin or the owner as an admin; removing the other person of a direct conversation", body = ErrorBody),
        (status = 404, description = "No such conversation, or the user is not a participant", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn remove(
    shard: &Rc<ShardContext>,
    req: Request<Incoming>,
    id: &str,
    user: &str,
) -> Reply {
    let me = request::bearer(shard, &req)?;
    let caller = access(shard, me, id).await?;
    let user: UserId = user.parse().map_err(|_| user_not_found(user))?;
    let conversation = caller.conversation.id;
    if user != me {
        if caller.conversation.direct {
            return Err(ApiError::Forbidden(
                "Nobody is removed from a direct conversation; each may leave it",
            ));
        }
        if !caller.role.moderates() {
            return Err(ApiError::Forbidden(NOT_ALLOWED_TO_REMOVE));
        }
        if caller.role == Role::Admin {
            let theirs = shard
                .app
                .db
                .call(move |s| async move { s.membership(conversation, user).await })
                .await?
                .and_then(|(_, role)| role)
                .ok_or_else(|| not_a_participant(user))?;
            if theirs != Role::Member {
                return Err(ApiError::Forbidden("Admins can remove members only"));
            }
        }
    }
    let removed = shard
        .app
        .db
        .call(move |s| async move { s.remove_participant(conversation, me, user).await })
        .await?;
    // Refused only when the caller's role changed since `access` read it.
    let removed = guarded(removed, NOT_ALLOWED_TO_REMOVE, || not_a_participant(user))?;
    // Committed: their open sockets in the conversation lose access now, on every shard.
    shard.hub.revoke(conversation, user);
    if let Some(owner) = removed.new_owner {
        tell_roles(shard, conversation, &[(owner, Role::Owner)]);
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Change a participant's role; the owner only. Making someone owner hands the
/// conversation over: the owner becomes an admin.
#[utoipa::path(
    patch,
    path = "/api/chat/conversations/{id}/participants/{user_id}",
    operation_id = "set_role",
    tag = "conversations",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "Conversation id"),
        ("user_id" = String, Path, format = Uuid, description = "The participant"),
    ),
    request_body = RoleChange,
    responses(
        (status = 200, description = "The participant's role now", body = RoleOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not the owner, or the conversation is direct (it has no roles)", body = ErrorBody),
        (status = 404, description = "No such conversation, or the user is not a participant", body = ErrorBody),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 409, description = "The owner tried to step down without naming a new owner, or another change of roles came first (retry)", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body: `role` must be `owner`, `admin` or `member`", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn set_role(
    shard: &Rc<ShardContext>,
    req: Request<Incoming>,
    id: &str,
    user: &str,
) -> Reply {
    let me = request::bearer(shard, &req)?;
    let body = request::body(shard, req).await?;
    let change: RoleChange = request::json(&body)?;
    let caller = access(shard, me, id).await?;
    let user: UserId = user.parse().map_err(|_| user_not_found(user))?;
    if caller.conversation.direct {
        return Err(ApiError::Forbidden("A direct conversation has no roles"));
    }
    const NOT_THE_OWNER: &str = "Only the owner can change roles";
    if caller.role != Role::Owner {
        return Err(ApiError::Forbidden(NOT_THE_OWNER));
    }
    if user == me && change.role != Role::Owner {
        return Err(ApiError::Conflict(
            "The owner steps down by making another participant the owner",
        ));
    }
    let conversation = caller.conversation.id;
    let role = change.role;
    let changed = shard
        .app
        .db
        .call(move |s| async move { s.set_role(conversation, me, user, role).await })
        .await?;
    let changed = guarded(changed, NOT_THE_OWNER, || not_a_participant(user))?;
    tell_roles(shard, conversation, &changed);
    Ok(json(
        StatusCode::OK,
        &RoleOut {
            conversation_id: conversation.to_string(),
            user_id: user.to_string(),
            role,
        },
    ))
}
