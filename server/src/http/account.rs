//! The caller's own account: changing the password (which ends every other session),
//! deleting the account (every token and socket of it ends, it leaves every
//! conversation, its messages stay from a deleted user or are erased, by
//! `--deleted-account-messages`), and the export of its data, a page at a time.

use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;

use super::dto::{
    AccountDeletion, ErrorBody, ExportPage, ExportQuery, ExportedConversation, MessageOut,
    PasswordChange, UserOut,
};
use super::reply::{empty, json, Reply};
use super::request;
use super::{auth, sessions};
use crate::auth::{Revoked, EVERY_TOKEN};
use crate::config::DeletedMessages;
use crate::context::ShardContext;
use crate::error::{ApiError, FieldError};
use crate::ids::{now_micros, unix_seconds, ConversationId, MessageId, Role, UserId};
use crate::protocol::role_event;
use crate::store::{self, UserRecord};
use crate::text::{Password, Username};
use crate::views::ConversationOut;

/// Conversations per page of the export.
const EXPORT_PAGE: u32 = 500;
/// Messages (anyone's) a page of the export looks through for the caller's.
const EXPORT_SCAN: u32 = 5000;

/// The caller's account, if their password is `password`: a wrong one counts as a
/// failed login (the same throttle), so a stolen token cannot guess it.
async fn with_password(
    shard: &ShardContext,
    address: std::net::IpAddr,
    me: UserId,
    password: String,
) -> Result<UserRecord, ApiError> {
    let user = shard
        .app
        .db
        .call(move |s| async move { s.user_by_id(me).await })
        .await?
        .ok_or(ApiError::InvalidToken)?;
    // Stored names always pass the rules; one that does not cannot be throttled by.
    let name = Username::parse(user.username.clone()).map_err(|_| ApiError::InvalidToken)?;
    auth::check_throttle(shard, address, &name)?;
    let hash = Some(user.password_hash.clone());
    if !auth::verify_counted(shard, address, &name, password, hash).await? {
        return Err(ApiError::Forbidden("Current password is incorrect"));
    }
    Ok(user)
}

/// Change the password; every other session ends.
#[utoipa::path(
    patch,
    path = "/api/auth/me",
    operation_id = "change_password",
    tag = "auth",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; every other session of the account ended (its tokens and sockets), this one goes on", body = UserOut),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "`current_password` is wrong", body = ErrorBody),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body, or the new password outside the rules", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords (the login throttle); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "Store or password hashing unavailable; retry", body = ErrorBody),
    )
)]
pub async fn change_password(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::caller(shard, &req)?;
    let address = request::client_address(&req, &shard.app.config.trusted_proxies);
    let body = request::body(shard, req).await?;
    let change: PasswordChange = request::json(&body)?;
    let new = Password::parse(change.new_password).map_err(|msg| {
        ApiError::Validation(vec![FieldError::new(
            "body",
            "new_password",
            "value_error",
            msg,
        )])
    })?;
    let user = with_password(shard, address, me.user, change.current_password).await?;
    let hash = shard.app.passwords.hash(new.into_secret()).await?;
    let id = user.id;
    shard
        .app
        .db
        .call(move |s| async move { s.set_password(id, &hash).await })
        .await?;
    sessions::end_others(shard, id, me.session).await?;
    Ok(json(StatusCode::OK, &UserOut::from(&user)))
}

/// Delete the account.
#[utoipa::path(
    delete,
    path = "/api/auth/me",
    operation_id = "delete_account",
    tag = "auth",
    security(("bearer" = [])),
    request_body = AccountDeletion,
    responses(
        (status = 204, description = "Deleted: every token and socket of it ends, on every node; it left every conversation (an owner's passes to its longest-standing admin, else member); its messages stay from `deleted user <id>`, or are erased with `--deleted-account-messages erase`"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "`password` is wrong", body = ErrorBody),
        (status = 408, description = "The request did not arrive within `--request-timeout`", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 422, description = "Malformed body", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords (the login throttle); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "Store or password hashing unavailable; retry", body = ErrorBody),
    )
)]
pub async fn delete(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::caller(shard, &req)?;
    let address = request::client_address(&req, &shard.app.config.trusted_proxies);
    let body = request::body(shard, req).await?;
    let asked: AccountDeletion = request::json(&body)?;
    let user = with_password(shard, address, me.user, asked.password)
        .await?
        .id;
    let erase = shard.app.config.deleted_account_messages == DeletedMessages::Erase;
    let now = now_micros();
    let deleted = shard
        .app
        .db
        .call(move |s| async move { s.delete_account(user, erase, now).await })
        .await?
        .ok_or(ApiError::InvalidToken)?;
    shard.hub.tokens_revoked(Revoked {
        user,
        at: unix_seconds(now),
        refuse_before: Some(EVERY_TOKEN),
        sessions: deleted.sessions,
    });
    for (conversation, heir) in deleted.left {
        shard.hub.revoke(conversation, user);
        if let Some(heir) = heir {
            let frame = role_event(conversation, heir, Role::Owner);
            shard.hub.tell(conversation, frame);
        }
    }
    if erase {
        shard.app.db.detach(store::purge);
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Where an export goes on: after a conversation, or after a message.
enum ExportCursor {
    Conversations(Option<ConversationId>),
    Messages(Option<MessageId>),
}

impl ExportCursor {
    fn parse(raw: Option<String>) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::field(
                "query",
                "cursor",
                "value_error",
                "cursor must be a next_cursor this server gave",
            )
        };
        let Some(raw) = raw else {
            return Ok(Self::Conversations(None));
        };
        match raw.trim().split_once(':') {
            Some(("c", id)) => Ok(Self::Conversations(Some(id.parse().map_err(|_| bad())?))),
            Some(("m", id)) => Ok(Self::Messages(Some(id.parse().map_err(|_| bad())?))),
            _ => Err(bad()),
        }
    }
}

/// Export the caller's data: the profile, the conversations they are in (with their
/// role), and every message of theirs that is not deleted, a page at a time.
#[utoipa::path(
    get,
    path = "/api/auth/me/export",
    operation_id = "export_account",
    tag = "auth",
    security(("bearer" = [])),
    params(ExportQuery),
    responses(
        (status = 200, description = "A page: conversations first (500 a page), then messages: each page looks through the next 5,000 messages of the server in time order for the caller's, so a page may hold none; follow `next_cursor` until it is absent", body = ExportPage),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 422, description = "`cursor` not one this server gave", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    )
)]
pub async fn export(shard: &Rc<ShardContext>, req: Request<Incoming>) -> Reply {
    let me = request::bearer(shard, &req)?;
    let cursor = ExportCursor::parse(request::query_param(&req, "cursor"))?;
    let page = shard
        .app
        .db
        .call(move |s| async move {
            let user = s.user_by_id(me).await?;
            let page = match cursor {
                ExportCursor::Conversations(after) => {
                    let conversations = s.export_conversations(me, after, EXPORT_PAGE).await?;
                    let next = match conversations.last() {
                        Some(last) if conversations.len() == EXPORT_PAGE as usize => {
                            format!("c:{}", last.conversation.id)
                        }
                        // The conversations are done: the messages come next.
                        _ => "m:00000000-0000-0000-0000-000000000000".to_owned(),
                    };
                    (conversations, Vec::new(), Some(next))
                }
                ExportCursor::Messages(after) => {
                    let (mine, last) = s.export_messages(me, after, EXPORT_SCAN).await?;
                    (Vec::new(), mine, last.map(|id| format!("m:{id}")))
                }
            };
            Ok((user, page))
        })
        .await?;
    let (user, (conversations, messages, next_cursor)) = page;
    let user = user.ok_or(ApiError::InvalidToken)?;
    Ok(json(
        StatusCode::OK,
        &ExportPage {
            user: UserOut::from(&user),
            conversations: conversations
                .iter()
                .map(|m| ExportedConversation {
                    conversation: ConversationOut::new(&m.conversation, None),
                    role: m.role,
                    joined_at: m.joined_at,
                })
                .collect(),
            messages: messages.into_iter().map(MessageOut::from).collect(),
            next_cursor,
        },
    ))
}
