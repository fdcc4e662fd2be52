//! The one route table: every path the server answers, with its methods. The router
//! dispatches on it, a 405's `Allow` header is read from it, and the OpenAPI tests hold
//! the served document against it, so the three cannot disagree.

use http::Method;

/// What a route is, for the router to dispatch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Register,
    Login,
    Refresh,
    Logout,
    LogoutAll,
    Me,
    Export,
    Users,
    Conversations,
    Conversation,
    Participants,
    Participant,
    Presence,
    Messages,
    ReadMarker,
    WebSocket,
    UserStream,
    Health,
    Ready,
    /// Prometheus metrics (404 when `--metrics-listen` serves them elsewhere).
    Metrics,
    OpenApi,
    SwaggerUi,
    Redoc,
    /// The browser client's page, and its files.
    Page,
    PageAsset,
}

pub struct Route {
    pub endpoint: Endpoint,
    /// The path template as OpenAPI spells it; `{name}` is one segment, a trailing
    /// `*` any rest (static assets).
    pub path: &'static str,
    /// HEAD is answered wherever GET is.
    pub methods: &'static [Method],
    /// Whether the OpenAPI document describes it (not the documentation pages).
    pub documented: bool,
}

const fn route(
    endpoint: Endpoint,
    path: &'static str,
    methods: &'static [Method],
    documented: bool,
) -> Route {
    Route {
        endpoint,
        path,
        methods,
        documented,
    }
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];

pub static ROUTES: &[Route] = &[
    route(Endpoint::Register, "/api/auth/register", POST, true),
    route(Endpoint::Login, "/api/auth/login", POST, true),
    route(Endpoint::Refresh, "/api/auth/refresh", POST, true),
    route(Endpoint::Logout, "/api/auth/logout", POST, true),
    route(Endpoint::LogoutAll, "/api/auth/logout-all", POST, true),
    route(
        Endpoint::Me,
        "/api/auth/me",
        &[Method::GET, Method::PATCH, Method::DELETE],
        true,
    ),
    route(Endpoint::Export, "/api/auth/me/export", GET, true),
    route(Endpoint::Users, "/api/users", GET, true),
    route(
        Endpoint::Conversations,
        "/api/chat/conversations",
        &[Method::GET, Method::POST],
        true,
    ),
    route(
        Endpoint::Conversation,
        "/api/chat/conversations/{id}",
        &[Method::GET, Method::PATCH, Method::DELETE],
        true,
    ),
    route(
        Endpoint::Participants,
        "/api/chat/conversations/{id}/participants",
        &[Method::GET, Method::POST],
        true,
    ),
    route(
        Endpoint::Participant,
        "/api/chat/conversations/{id}/participants/{user_id}",
        &[Method::PATCH, Method::DELETE],
        true,
    ),
    route(
        Endpoint::Messages,
        "/api/chat/conversations/{id}/messages",
        GET,
        true,
    ),
    route(
        Endpoint::Presence,
        "/api/chat/conversations/{id}/presence",
        GET,
        true,
    ),
    route(
        Endpoint::ReadMarker,
        "/api/chat/conversations/{id}/read",
        POST,
        true,
    ),
    route(
        Endpoint::WebSocket,
        "/api/chat/ws/{conversation_id}",
        GET,
        true,
    ),
    route(Endpoint::UserStream, "/api/chat/ws", GET, true),
    route(Endpoint::Health, "/health", GET, true),
    route(Endpoint::Ready, "/ready", GET, true),
    route(Endpoint::Metrics, "/metrics", GET, false),
    route(Endpoint::OpenApi, "/openapi.json", GET, false),
    route(Endpoint::SwaggerUi, "/docs/*", GET, false),
    route(Endpoint::Redoc, "/redoc/*", GET, false),
    route(Endpoint::Page, "/", GET, false),
    route(Endpoint::PageAsset, "/static/*", GET, false),
];

impl Route {
    /// The `Allow` header value: the methods, HEAD beside GET.
    pub fn allow(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for m in self.methods {
            names.push(m.as_str());
            if m == Method::GET {
                names.push("HEAD");
            }
        }
        names.join(", ")
    }
}

/// The route whose template matches `path`, with the values of its `{...}` segments
/// in order (for a `*` route, the rest of the path as one value).
pub fn find(path: &str) -> Option<(&'static Route, Vec<&str>)> {
    let path = path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    ROUTES
        .iter()
        .find_map(|route| matches(route, path, &segments).map(|values| (route, values)))
}

fn matches<'p>(route: &Route, path: &'p str, segments: &[&'p str]) -> Option<Vec<&'p str>> {
    let mut values = Vec::new();
    let mut parts = 0;
    // The template is walked in place: this runs for every request, against every route.
    // `/` has no segments at all, like the (trimmed) request path `/`.
    let template = route
        .path
        .split('/')
        .skip(1)
        .filter(|part| !part.is_empty());
    for (i, part) in template.enumerate() {
        if part == "*" {
            // Everything after the first `i` segments, slashes included.
            values.push(path.splitn(i + 2, '/').nth(i + 1).unwrap_or(""));
            return Some(values);
        }
        let segment = *segments.get(i)?;
        if part.starts_with('{') {
            values.push(segment);
        } else if part != segment {
            return None;
        }
        parts += 1;
    }
    (parts == segments.len()).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_routes_and_their_values() {
        let (r, v) = find("/api/chat/conversations/c1/participants/u2").expect("route");
        assert_eq!(r.endpoint, Endpoint::Participant);
        assert_eq!(v, ["c1", "u2"]);
        let (r, v) = find("/api/chat/conversations/").expect("trailing slash");
        assert_eq!((r.endpoint, v.len()), (Endpoint::Conversations, 0));
        let (r, v) = find("/docs/swagger-ui.css").expect("asset");
        assert_eq!(
            (r.endpoint, v),
            (Endpoint::SwaggerUi, vec!["swagger-ui.css"])
        );
        let (r, v) = find("/docs").expect("docs page");
        assert_eq!((r.endpoint, v), (Endpoint::SwaggerUi, vec![""]));
        let (r, v) = find("/redoc/a/b.js").expect("nested asset");
        assert_eq!((r.endpoint, v), (Endpoint::Redoc, vec!["a/b.js"]));
        assert!(find("/api/chat/conversations/c1/x").is_none());
        assert!(find("/api/chat/conversations/c1/messages/extra").is_none());
        assert!(find("/nope").is_none());
        let (r, v) = find("/").expect("the browser client");
        assert_eq!((r.endpoint, v.len()), (Endpoint::Page, 0));
        let (r, v) = find("/static/app.js").expect("its files");
        assert_eq!((r.endpoint, v), (Endpoint::PageAsset, vec!["app.js"]));
        assert!(
            find("/static").is_some_and(|(r, v)| r.endpoint == Endpoint::PageAsset && v == [""])
        );
    }

    #[test]
    fn allow_lists_head_beside_get() {
        let (r, _) = find("/api/chat/conversations").expect("route");
        assert_eq!(r.allow(), "GET, HEAD, POST");
        let (r, _) = find("/api/auth/login").expect("route");
        assert_eq!(r.allow(), "POST");
    }
}
