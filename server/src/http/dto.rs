//! Request and response bodies of the REST API, field for field as docs/protocol.md
//! gives them.
//! They derive `ToSchema` so the OpenAPI document is generated from the same types
//! the handlers use.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::ToSchema;

use crate::ids::{timestamp, Role, Seq};
use crate::store::{MessageRecord, UserRecord};
pub use crate::views::{ConversationItem, ConversationOut, PreviewOut};

/// Body of register and login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    /// 3-32 characters of `[A-Za-z0-9_.-]`.
    #[schema(
        example = "alice",
        min_length = 3,
        max_length = 32,
        pattern = "^[A-Za-z0-9_.-]+$"
    )]
    pub username: String,
    /// 8-128 characters.
    #[schema(example = "password123", min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub username: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime, example = "2026-02-04T10:00:00.000000Z")]
    pub created_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserOut {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: u.id.to_string(),
            username: u.username.clone(),
            created_at: u.created_at,
        }
    }
}

/// A user as the lookup endpoint lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSummary {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub username: String,
}

/// What a login or a refresh answers: an access token for the API and the sockets,
/// and the refresh token that renews it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub access_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    #[schema(value_type = String, format = Uuid)]
    pub user_id: String,
    /// Seconds the access token lives (`ACCESS_TOKEN_EXPIRE_MINUTES`).
    pub expires_in: u64,
    /// Renews the session once (`POST /api/auth/refresh`): each use answers a new
    /// one; using one twice ends the session.
    pub refresh_token: String,
    /// Seconds the refresh token works if not used (`REFRESH_TOKEN_EXPIRE_DAYS`).
    pub refresh_expires_in: u64,
}

/// Body of `PATCH /api/auth/me`: a new password, with the current one.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChange {
    pub current_password: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// Body of `DELETE /api/auth/me`: the password, once more.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AccountDeletion {
    pub password: String,
}

/// A conversation in the export of a user's data.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedConversation {
    #[serde(flatten)]
    pub conversation: ConversationOut,
    pub role: Role,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: DateTime<Utc>,
}

/// A page of the export of the caller's data: the profile, then their conversations,
/// then their own messages, each in id order. Pass `next_cursor` as `cursor` until it
/// is absent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportPage {
    pub user: UserOut,
    pub conversations: Vec<ExportedConversation>,
    pub messages: Vec<MessageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/auth/me/export`, described only (see `HistoryQuery`).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// The `next_cursor` of the page before; the first page when absent.
    #[param(pattern = r"^[cm]:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// Query of `GET /api/users`, described only (see `HistoryQuery`): `username` or `q`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// An exact username.
    pub username: Option<String>,
    /// The start of usernames, whatever the case (1 to 32 characters); the answer is
    /// a page, with `X-Next-Cursor` when more may follow.
    #[param(min_length = 1, max_length = 32)]
    pub q: Option<String>,
    /// With `q`: how many users at most.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
    /// With `q`: the `X-Next-Cursor` of the page before.
    pub cursor: Option<String>,
}

/// Body of `POST /api/auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// What a logout everywhere ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoggedOut {
    /// How many sessions (other than the caller's) ended.
    pub ended_sessions: usize,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewConversation {
    /// One line: no control characters, no NUL.
    #[schema(
        example = "Team Chat",
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"
    )]
    #[serde(default)]
    pub name: Option<String>,
    /// Tabs and line breaks are the only control characters allowed; no NUL.
    #[schema(
        example = "Our team discussion",
        max_length = 2000,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
    )]
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub is_group: bool,
    /// Other participants; the creator is always added. Repeats count once; at most
    /// `--max-participants` (10,000) in all.
    #[schema(max_items = 10000)]
    #[serde(default)]
    pub participant_ids: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewParticipant {
    #[schema(value_type = String, format = Uuid)]
    pub user_id: String,
}

/// Body of `PATCH /api/chat/conversations/{id}`: each field given is set (`null`
/// clears the name or description), each one left out stays as it is.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationPatch {
    /// One line: no control characters, no NUL.
    #[schema(
        value_type = Option<String>,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"
    )]
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    /// Tabs and line breaks are the only control characters allowed; no NUL.
    #[schema(
        value_type = Option<String>,
        max_length = 2000,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
    )]
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    /// `true` archives (read-only: history stays readable, nothing new is taken),
    /// `false` unarchives.
    #[serde(default)]
    pub archived: Option<bool>,
}

/// A field that was given, `null` included (`Some(None)`), as opposed to left out
/// (`None`, from `default`).
fn present<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(de).map(Some)
}

/// Body of `PATCH /api/chat/conversations/{id}/participants/{user_id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleChange {
    pub role: Role,
}

/// A participant's role, as the `role` event says it too.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleOut {
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: String,
    #[schema(value_type = String, format = Uuid)]
    pub user_id: String,
    pub role: Role,
}

/// A participant as the member list shows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantOut {
    #[schema(value_type = String, format = Uuid)]
    pub user_id: String,
    pub username: String,
    pub role: Role,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: DateTime<Utc>,
}

/// Query of `GET /api/chat/conversations/{id}/participants`, described only (see
/// `HistoryQuery`).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParticipantListQuery {
    /// How many participants at most.
    #[param(minimum = 1, maximum = 500, default = 100)]
    pub limit: Option<u32>,
    /// Where the page starts: the `X-Next-Cursor` of the page before (a user id); the
    /// first page when absent.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageOut {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: String,
    #[schema(value_type = String, format = Uuid)]
    pub sender_id: String,
    pub sender_username: String,
    pub content: String,
    pub is_edited: bool,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// The message's position in the conversation's stream (the `seq` of its
    /// `message` event); history is in this order.
    #[schema(value_type = u64, minimum = 1)]
    pub seq: Seq,
    /// Each emoji given, with who gave it, in the order first given.
    pub reactions: Vec<ReactionOut>,
}

/// One emoji on a message and who reacted with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReactionOut {
    pub emoji: String,
    #[schema(value_type = Vec<String>)]
    pub user_ids: Vec<String>,
}

impl From<MessageRecord> for MessageOut {
    fn from(m: MessageRecord) -> Self {
        Self {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            sender_id: m.sender_id.to_string(),
            sender_username: m.sender_username,
            content: m.content,
            is_edited: m.is_edited,
            created_at: m.created_at,
            updated_at: m.updated_at,
            seq: m.seq,
            reactions: m
                .reactions
                .into_iter()
                .map(|r| ReactionOut {
                    emoji: r.emoji,
                    user_ids: r.users.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }
    }
}

/// Every error body: `detail` is a string, or FastAPI's list of field errors on 422.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"detail": "Not a member of this conversation"}))]
pub struct ErrorBody {
    /// A message, or on 422 a list of `{"type", "loc", "msg"}` field errors.
    #[schema(schema_with = error_detail_schema)]
    pub detail: serde_json::Value,
}

/// Body of `GET /health`: the process answers; it says nothing about the store.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Body of `GET /ready`, with 200 or 503: whether the store answers a ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    pub store: &'static str,
    /// In a cluster (`--redis-url`) only: `ok`, or `degraded` while Redis is
    /// unreachable (this node serves its own connections alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "ok")]
    pub redis: Option<&'static str>,
}

/// Query of `GET /api/chat/conversations/{id}/messages`. The handler reads the query
/// itself; this type only describes it, because a path attribute's inline parameters
/// cannot carry a default.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How many messages at most.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
    /// Only messages older than this message id; the newest page when absent.
    #[param(value_type = Option<String>, format = Uuid)]
    pub before: Option<String>,
    /// Only messages newer than this message id, the oldest of them first: pages
    /// forward. With `before` too, the messages between the two.
    #[param(value_type = Option<String>, format = Uuid)]
    pub after: Option<String>,
}

/// Query of `GET /api/chat/conversations/{id}/presence` (described only; the handler
/// reads it).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// How many users at most.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before; the first page when absent.
    #[param(pattern = "^[0-9]{1,19}$")]
    pub after: Option<String>,
}

/// A connected user, as the presence page lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresentUser {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub username: String,
}

/// A page of who is connected to a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceOut {
    /// How many users are connected in all (each once, however many tabs).
    pub active_count: usize,
    /// Connected users in arrival order.
    pub users: Vec<PresentUser>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/chat/conversations`, described only (see `HistoryQuery`).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationListQuery {
    /// How many conversations at most.
    #[param(minimum = 1, maximum = 500, default = 100)]
    pub limit: Option<u32>,
    /// Where the page starts: the `X-Next-Cursor` of the page before; the first page
    /// when absent.
    #[param(
        value_type = Option<String>,
        pattern = r"^[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    pub cursor: Option<String>,
}

/// The `detail` of an error body: a message, or on 422 FastAPI's list of field errors.
/// `serde_json::Value` in the type says nothing, so the shape is spelled out here.
pub fn error_detail_schema() -> Schema {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let field_error = ObjectBuilder::new()
        .property(
            "type",
            string().description(Some("Which rule failed, e.g. `missing`")),
        )
        .property(
            "loc",
            ArrayBuilder::new()
                .items(
                    OneOfBuilder::new()
                        .item(string())
                        .item(ObjectBuilder::new().schema_type(Type::Integer)),
                )
                .description(Some("Where: `body`, `query` or `path`, then the field"))
                .examples([serde_json::json!(["body", "password"])]),
        )
        .property(
            "msg",
            string().description(Some("What is wrong, for humans")),
        )
        .required("type")
        .required("loc")
        .required("msg");
    OneOfBuilder::new()
        .item(string().description(Some("What went wrong, for humans")))
        .item(
            ArrayBuilder::new()
                .items(field_error)
                .description(Some("422 only: one entry per invalid field")),
        )
        .into()
}
