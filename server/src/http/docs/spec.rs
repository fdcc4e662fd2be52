//! The OpenAPI 3 document. REST operations come from the `#[utoipa::path]` attributes
//! on the real handlers (so a handler and its documentation sit side by side);
//! the routes without a handler of their own (`/health`, answered inline by the
//! router, and the WebSocket upgrade, which is not REST) are added with utoipa's
//! builder. The document is serialized once per process; this module never changes
//! it afterwards.

use std::sync::OnceLock;

use bytes::Bytes;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::http::dto::{
    AccountDeletion, ConversationItem, ConversationOut, ConversationPatch, Credentials, ErrorBody,
    ExportPage, ExportedConversation, Liveness, LoggedOut, MessageOut, NewConversation,
    NewParticipant, ParticipantOut, PasswordChange, PresenceOut, PresentUser, PreviewOut,
    ReactionOut, Readiness, RefreshRequest, RoleChange, RoleOut, Token, UserOut, UserSummary,
};
use crate::http::markers::{ReadMarker, ReadMarkerOut};
use crate::ids::Role;
use crate::protocol::{Close, CONTENT_MAX_CHARS, EMOJI_MAX_CHARS, REF_MAX_CHARS};
use crate::text::CLIENT_ID_MAX_CHARS;

/// Name of the security scheme the protected operations refer to (`security(("bearer" = []))`).
pub const BEARER: &str = "bearer";

pub const WS_PATH: &str = "/api/chat/ws/{conversation_id}";
pub const STREAM_PATH: &str = "/api/chat/ws";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chat API",
        description = "REST and WebSocket API of the chat server. Protected routes take \
            `Authorization: Bearer <jwt>`, the `access_token` of `POST /api/auth/login`. \
            Errors are `{\"detail\": ...}` with the status that says why."
    ),
    paths(
        crate::http::auth::register,
        crate::http::auth::login,
        crate::http::sessions::refresh,
        crate::http::sessions::logout,
        crate::http::sessions::logout_all,
        crate::http::auth::me,
        crate::http::account::change_password,
        crate::http::account::delete,
        crate::http::account::export,
        crate::http::auth::lookup,
        crate::http::conversations::create,
        crate::http::conversations::list,
        crate::http::conversations::get,
        crate::http::conversations::update,
        crate::http::conversations::delete,
        crate::http::participants::list,
        crate::http::participants::add,
        crate::http::participants::remove,
        crate::http::participants::set_role,
        crate::http::conversations::history,
        crate::http::presence::presence,
        crate::http::markers::mark,
        super::ready::ready,
    ),
    components(schemas(
        Credentials,
        UserOut,
        UserSummary,
        Token,
        RefreshRequest,
        LoggedOut,
        PasswordChange,
        AccountDeletion,
        ExportPage,
        ExportedConversation,
        NewConversation,
        NewParticipant,
        ConversationPatch,
        ParticipantOut,
        RoleChange,
        RoleOut,
        Role,
        ConversationOut,
        ConversationItem,
        PreviewOut,
        ReactionOut,
        ReadMarker,
        ReadMarkerOut,
        MessageOut,
        PresenceOut,
        PresentUser,
        ErrorBody,
        Liveness,
        Readiness,
    )),
    modifiers(&BearerScheme, &UnroutedPaths),
    tags(
        (name = "auth", description = "Accounts and access tokens"),
        (name = "users", description = "Finding other users"),
        (name = "conversations", description = "Conversations and their participants"),
        (name = "messages", description = "Message history"),
        (name = "websocket", description = "Real-time messaging over a WebSocket"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
struct ApiDoc;

/// The document, built fresh; `json()` is the cached form the route serves.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // utoipa already defaults to the crate version; set it explicitly so a change in
    // that default cannot silently change what clients see.
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

/// The serialized document, built on first use and shared by every shard.
pub fn json() -> Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serializing maps of strings cannot fail; should it ever, an empty document is
        // better than a panic on a shard thread (the unit tests catch it first).
        let body = serde_json::to_vec(&document()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "serializing the OpenAPI document failed");
            b"{}".to_vec()
        });
        Bytes::from(body)
    })
    .clone()
}

/// The bearer-JWT scheme the protected operations name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "The `access_token` from `POST /api/auth/login` (HS256, 24 h by default).",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// Routes served without a handler function to hang a path attribute on.
struct UnroutedPaths;

impl Modify for UnroutedPaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.paths
            .add_path_operation("/health", vec![HttpMethod::Get], health());
        doc.paths
            .add_path_operation(WS_PATH, vec![HttpMethod::Get], websocket());
        doc.paths
            .add_path_operation(STREAM_PATH, vec![HttpMethod::Get], user_stream());
    }
}

fn health() -> Operation {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Liveness")))
        .example(Some(serde_json::json!({"status": "ok"})))
        .build();
    OperationBuilder::new()
        .tag("health")
        .operation_id(Some("health"))
        .summary(Some("Liveness: the process answers"))
        .description(Some("Says nothing about the store; `GET /ready` does."))
        .response(
            "200",
            ResponseBuilder::new()
                .description("Alive")
                .content("application/json", body)
                .build(),
        )
        .build()
}

fn websocket() -> Operation {
    let uuid = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
    };
    let conversation = ParameterBuilder::new()
        .name("conversation_id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(uuid()))
        .description(Some("The conversation to join"));
    let since = ParameterBuilder::new()
        .name("since")
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        ))
        .description(Some(
            "Resume: the highest `seq` the client has seen; every event after it is \
             replayed before the live ones",
        ));
    upgrade(
        OperationBuilder::new()
            .operation_id(Some("websocket"))
            .summary(Some("Join a conversation in real time (WebSocket upgrade)"))
            .description(Some(websocket_description()))
            .parameter(conversation)
            .parameter(token())
            .parameter(since),
    )
}

/// The `token` query parameter of both upgrades. Browsers cannot set headers on a
/// WebSocket handshake, hence a query parameter rather than the bearer scheme of the
/// REST routes.
fn token() -> ParameterBuilder {
    ParameterBuilder::new()
        .name("token")
        .parameter_in(ParameterIn::Query)
        .required(Required::True)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some("The `access_token` from `POST /api/auth/login`"))
}

fn user_stream() -> Operation {
    upgrade(
        OperationBuilder::new()
            .operation_id(Some("user_stream"))
            .summary(Some(
                "Every conversation of the user on one WebSocket (WebSocket upgrade)",
            ))
            .description(Some(
                "The user stream: one socket carries the events of every conversation the \
                 user belongs to, each with its `conversation_id`. It opens with a `ready` \
                 event (the first page of the conversation list with read markers and unread \
                 counts, and each carried conversation's position); the client's first event \
                 starts it: `{\"type\":\"resume\",\"positions\":{\"<conversation id>\":<seq>}}` \
                 replays what each listed conversation missed, any other event starts every \
                 conversation live. Client events are those of a conversation socket with a \
                 `conversation_id`; see docs/protocol.md, \"The user stream\".",
            ))
            .parameter(token()),
    )
}

/// What both upgrades answer.
fn upgrade(operation: OperationBuilder) -> Operation {
    operation
        .tag("websocket")
        .response(
            "101",
            ResponseBuilder::new()
                .description(
                    "Switching Protocols: the connection is now a WebSocket carrying the JSON \
                     events described above. Token and membership failures are reported on the \
                     socket (an `error` event, then close 1008), not as an HTTP status.",
                )
                .build(),
        )
        .response(
            "403",
            ResponseBuilder::new()
                .description(
                    "With `--production` only: a browser `Origin` that is neither this \
                     server's nor listed in `--allowed-origins`",
                )
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .example(Some(serde_json::json!({"detail": "Origin not allowed"})))
                        .build(),
                )
                .build(),
        )
        .response(
            "422",
            ResponseBuilder::new()
                .description("A plain HTTP request without `token`")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
        .response(
            "426",
            ResponseBuilder::new()
                .description(
                    "Not a WebSocket upgrade request: a plain GET always gets this \
                     (with `Upgrade: websocket`); open a WebSocket instead",
                )
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .example(Some(
                            serde_json::json!({"detail": "Expected a WebSocket upgrade"}),
                        ))
                        .build(),
                )
                .build(),
        )
        .build()
}

/// The event protocol of docs/protocol.md, rendered as Markdown. Limits come from the protocol
/// module so the page cannot drift from what the server enforces.
fn websocket_description() -> String {
    format!(
        r#"Open a WebSocket (`ws://` or `wss://`) to this path with a valid token. Every frame
is one JSON object in a text frame, with a `type`.

**Joining.** A bad or expired token gets `{{"type":"error","detail":"Invalid token"}}` and
close code 1008 (`Invalid token`). A user who is not a participant, or an unknown
conversation, gets `{{"type":"error","detail":"Not a member of this conversation"}}` and
close 1008 with that reason. A user who already holds the most WebSockets a node allows
one user (`--ws-max-per-user`, 32) gets `{{"type":"error","detail":"Too many connections"}}`
and close 1008 `Too many connections`. On success everyone in the conversation, the joiner
included, receives a `system` event `User <name> joined the conversation` with `seq`, the
conversation's position at the join.

**Client to server**

| type | fields | effect |
|---|---|---|
| `message` | `content` (1-{CONTENT_MAX_CHARS} characters, not blank, no control characters but tab, line feed and carriage return), optional `client_id` (1-{CLIENT_ID_MAX_CHARS} characters) | persisted, then broadcast to every connection of the conversation, the sender's included; a repeated `client_id` is answered with the original and stores nothing |
| `typing` | | `typing` to the other participants' connections; never persisted |
| `edit` | `message_id`, `content` | sender of that message only; persisted; broadcast |
| `delete` | `message_id` | sender of that message only; soft delete; broadcast |
| `reaction` | `message_id`, `emoji` (1-{EMOJI_MAX_CHARS} characters) | toggles the caller's reaction; persisted; broadcast |
| `presence` | `status`: `online`, `away` or `offline` | broadcast to the conversation |
| `ping` | | answered with `{{"type":"pong"}}` (RFC 6455 ping frames are answered too) |
| `auth` | `token` | a fresh token of the same user for this socket; answered `{{"type":"auth","status":"ok","expires_at"}}` |

Any client event may carry a `ref` string (at most {REF_MAX_CHARS} characters), echoed in
an `error` about that event.

**Server to client**

```
{{"type":"message","message_id","conversation_id","content","sender_id","sender_username","timestamp","is_edited":false,"seq","is_deleted":true?,"client_id"?}}
{{"type":"system","content":"User alice joined the conversation","sender_id","active_users":[user ids connected now],"seq"}}
{{"type":"system","content":"User alice left the conversation","sender_id","active_users":[...]}}
{{"type":"typing","sender_id","sender_username","conversation_id"}}
{{"type":"edit","message_id","content","sender_id","is_edited":true,"timestamp","seq","is_deleted":true?}}
{{"type":"delete","message_id","sender_id","timestamp","seq"}}
{{"type":"reaction","message_id","emoji","sender_id","sender_username","action":"added"|"removed","seq"}}
{{"type":"presence","sender_id","sender_username","status"}}
{{"type":"resync","from_seq"}}
{{"type":"pong"}}
{{"type":"auth","status":"ok","expires_at"}}
{{"type":"error","detail","ref"?}}
```

**Staying connected.** The server pings every 25 s (RFC 6455 ping frames, which browsers
and libraries answer by themselves) and closes with 1001 `Idle timeout` a connection
that sent nothing at all, pongs included, for 60 s. At the token's `exp` the socket
gets `{{"type":"error","detail":"Token expired"}}` and close 1008 `Token expired`, unless
a fresh token arrived first in an `auth` event. A participant removed from the
conversation gets `{{"type":"error","detail":"Not a member of this conversation"}}` and
close 1008 on each of their sockets there, before anything said after the removal.

**Streams.** Every persisted event (`message`, `edit`, `delete`, `reaction`) carries `seq`,
its position in the conversation's stream: 1, 2, 3, ... with no gaps, in the order every
connection receives them and history lists them. Reconnecting with `since=<seq>` replays,
in order and as first broadcast, every event after it (at most the newest 1000, after a
`{{"type":"resync","from_seq"}}` when more were missed), then the `joined` event, then live
events: no gap and no duplicate at the seam. A bad `since` gets an `error` and the socket
joins live. Deleted means gone: a message deleted by the time it is replayed keeps its
place as a `message` with empty `content` and `"is_deleted":true`, its edits likewise
(empty `content`, `"is_deleted":true`); its reactions and the `delete` follow.

**Guarantees.** The sender's own `message` event is its acknowledgement: it is sent only
after the message is durably committed; a message that could not be committed gets an
`error` instead (with a `client_id`: `Message may not have been saved; resend with the
same client_id`). `active_users` lists each connected user once.

If the store cannot be reached while joining, the socket is closed with 1011; retry.

**Errors and limits.** Bad input (invalid JSON, unknown type, missing field, content too
long, binary frame, editing someone else's message) gets an `error` event and the
connection stays open. Flooding past the rate limit gets `error` with detail
`Rate limit exceeded`. A fragmented message must be finished within 10 s
(`--ws-fragment-timeout`) and in at most 64 frames (`--ws-max-fragments`), else close
1008 `Message not finished in time` or `Message in too many fragments`.

**Close codes**

| code | reason | then |
|---|---|---|
{close_codes}"#,
        close_codes = close_codes()
    )
}

/// The close-code table, from the one table in `protocol::Close`.
fn close_codes() -> String {
    Close::ALL
        .iter()
        .map(|c| {
            let reason = match c.reason() {
                "" => String::new(),
                reason => format!("`{reason}`"),
            };
            format!("| {} | {reason} | {} |\n", c.code(), c.then())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn spec() -> Value {
        serde_json::from_slice(&json()).expect("the served document is JSON")
    }

    /// The routes the document describes, with their methods as OpenAPI spells them.
    fn documented() -> Vec<(&'static str, Vec<String>)> {
        crate::http::routes::ROUTES
            .iter()
            .filter(|r| r.documented)
            .map(|r| {
                let methods = r
                    .methods
                    .iter()
                    .map(|m| m.as_str().to_lowercase())
                    .collect();
                (r.path, methods)
            })
            .collect()
    }

    #[test]
    fn is_openapi_3_with_title_and_version() {
        let spec = spec();
        let version = spec["openapi"].as_str().expect("openapi field");
        assert!(version.starts_with("3."), "{version}");
        assert_eq!(spec["info"]["title"], "Chat API");
        assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn documents_every_route_with_its_methods() {
        let spec = spec();
        let paths = spec["paths"].as_object().expect("paths");
        let routes = documented();
        for (path, methods) in &routes {
            let item = paths.get(*path).unwrap_or_else(|| panic!("{path} missing"));
            for method in methods {
                assert!(item.get(method).is_some(), "{method} {path} missing");
            }
        }
        assert_eq!(
            paths.len(),
            routes.len(),
            "unexpected paths: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn protected_routes_require_the_bearer_scheme() {
        let spec = spec();
        let scheme = &spec["components"]["securitySchemes"][BEARER];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        assert_eq!(scheme["bearerFormat"], "JWT");
        let public = [
            "/api/auth/register",
            "/api/auth/login",
            "/api/auth/refresh",
            "/health",
            "/ready",
            WS_PATH,
            STREAM_PATH,
        ];
        for (path, methods) in documented() {
            for method in methods {
                let op = &spec["paths"][path][&method];
                let secured = op["security"]
                    .as_array()
                    .is_some_and(|reqs| reqs.iter().any(|r| r.get(BEARER).is_some()));
                assert_eq!(secured, !public.contains(&path), "{method} {path} security");
                if secured {
                    assert_error(op, "401", path);
                }
            }
        }
    }

    fn assert_error(op: &Value, status: &str, path: &str) {
        let schema = &op["responses"][status]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(
            schema, "#/components/schemas/ErrorBody",
            "{status} of {path}"
        );
    }

    #[test]
    fn operations_have_bodies_statuses_and_errors() {
        let spec = spec();
        let paths = &spec["paths"];
        let schema_of = |op: &Value, status: &str| -> Value {
            op["responses"][status]["content"]["application/json"]["schema"].clone()
        };
        let register = &paths["/api/auth/register"]["post"];
        assert_eq!(
            register["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Credentials"
        );
        assert_eq!(
            schema_of(register, "201")["$ref"],
            "#/components/schemas/UserOut"
        );
        for status in ["409", "413", "422", "503"] {
            assert_error(register, status, "register");
        }
        let login = &paths["/api/auth/login"]["post"];
        assert_eq!(
            schema_of(login, "200")["$ref"],
            "#/components/schemas/Token"
        );
        assert_error(login, "401", "login");
        let create = &paths["/api/chat/conversations"]["post"];
        assert_eq!(
            schema_of(create, "201")["$ref"],
            "#/components/schemas/ConversationOut"
        );
        assert_error(create, "404", "create");
        let get = &paths["/api/chat/conversations/{id}"]["get"];
        for status in ["403", "404"] {
            assert_error(get, status, "get");
        }
        let remove = &paths["/api/chat/conversations/{id}/participants/{user_id}"]["delete"];
        assert!(remove["responses"]["204"].is_object());
        let history = &paths["/api/chat/conversations/{id}/messages"]["get"];
        assert_eq!(
            schema_of(history, "200")["items"]["$ref"],
            "#/components/schemas/MessageOut"
        );
        assert_error(history, "422", "history");
        let ready = &paths["/ready"]["get"];
        assert_eq!(
            schema_of(ready, "503")["$ref"],
            "#/components/schemas/Readiness"
        );
        let ws = &paths[WS_PATH]["get"];
        assert!(ws["responses"]["101"].is_object());
        assert_error(ws, "426", "websocket");
        let description = ws["description"].as_str().expect("ws description");
        for event in [
            "typing", "edit", "delete", "reaction", "presence", "ping", "pong", "system",
        ] {
            assert!(
                description.contains(&format!("`{event}`"))
                    || description.contains(&format!("\"{event}\""))
            );
        }
    }

    #[test]
    fn history_limit_is_bounded_with_a_default() {
        let spec = spec();
        let params = spec["paths"]["/api/chat/conversations/{id}/messages"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .clone();
        let limit = params
            .iter()
            .find(|p| p["name"] == "limit")
            .expect("limit parameter");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 100);
        assert_eq!(limit["schema"]["default"], 50);
        assert!(params
            .iter()
            .any(|p| p["name"] == "before" && p["in"] == "query"));
        assert!(params
            .iter()
            .any(|p| p["name"] == "id" && p["in"] == "path"));
    }

    #[test]
    fn every_reference_resolves() {
        let spec = spec();
        let text = spec.to_string();
        let prefix = "\"$ref\":\"#/components/schemas/";
        for chunk in text.split(prefix).skip(1) {
            let name = chunk.split('"').next().expect("ref name");
            assert!(
                spec["components"]["schemas"][name].is_object(),
                "dangling ref {name}"
            );
        }
    }
}
