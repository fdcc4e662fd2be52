//! A small HTTP client for the chat REST API, and helpers to check replies.

use anyhow::{bail, ensure, Context};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The password every helper-created user gets (the guide's).
pub const PASSWORD: &str = "password123";

/// A unique, valid username: `<prefix>_<12 hex>`, at most 25 characters.
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix.chars().take(12).collect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct Session {
    pub username: String,
    pub user_id: String,
    pub token: String,
}

/// One HTTP exchange, fully read.
#[derive(Debug)]
pub struct Reply {
    pub request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_type(&self) -> String {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// The body parsed as JSON (`Null` for an empty body).
    pub fn json(&self) -> anyhow::Result<Value> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body)
            .with_context(|| format!("{}: body is not JSON: {:?}", self.request, self.text()))
    }

    fn describe(&self) -> String {
        format!(
            "{} -> {} (content-type {:?}) body: {}",
            self.request,
            self.status,
            self.content_type(),
            self.text()
        )
    }

    /// Asserts the status code only.
    pub fn expect_status(&self, status: u16) -> anyhow::Result<()> {
        ensure!(
            self.status.as_u16() == status,
            "expected {status}, got {}",
            self.describe()
        );
        Ok(())
    }

    /// Asserts the status and, unless the body is empty, a JSON content type;
    /// returns the JSON body.
    pub fn expect(&self, status: u16) -> anyhow::Result<Value> {
        self.expect_status(status)?;
        if !self.body.is_empty() {
            ensure!(
                self.content_type().starts_with("application/json"),
                "expected application/json, got {}",
                self.describe()
            );
        }
        self.json()
    }

    /// Asserts an error status with a FastAPI `{"detail": "<string>"}` body; returns
    /// the detail.
    pub fn expect_error(&self, status: u16) -> anyhow::Result<String> {
        let body = self.expect(status)?;
        match body.get("detail") {
            Some(Value::String(detail)) => Ok(detail.clone()),
            _ => bail!("expected a string `detail`, got {}", self.describe()),
        }
    }

    /// Asserts an error status with exactly this detail string.
    pub fn expect_detail(&self, status: u16, detail: &str) -> anyhow::Result<()> {
        let got = self.expect_error(status)?;
        ensure!(
            got == detail,
            "expected detail {detail:?}, got {}",
            self.describe()
        );
        Ok(())
    }

    /// Asserts a 422 whose `detail` is FastAPI's list shape
    /// `[{"loc": ["body", ...], "msg": "...", "type": "..."}]` and, when `field` is
    /// given, that some entry's `loc` names it. Returns the detail list.
    pub fn expect_validation(&self, field: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let body = self.expect(422)?;
        let Some(Value::Array(items)) = body.get("detail") else {
            bail!("expected a list `detail`, got {}", self.describe());
        };
        ensure!(
            !items.is_empty(),
            "empty 422 detail list: {}",
            self.describe()
        );
        for item in items {
            let loc = item.get("loc").and_then(Value::as_array);
            ensure!(
                loc.is_some_and(|l| !l.is_empty()),
                "422 item without `loc` list: {}",
                self.describe()
            );
            ensure!(
                item.get("msg").is_some_and(Value::is_string),
                "422 item without string `msg`: {}",
                self.describe()
            );
            ensure!(
                item.get("type").is_some_and(Value::is_string),
                "422 item without string `type`: {}",
                self.describe()
            );
        }
        if let Some(field) = field {
            let named = items.iter().any(|item| {
                item.get("loc")
                    .and_then(Value::as_array)
                    .is_some_and(|loc| loc.iter().any(|p| p.as_str() == Some(field)))
            });
            ensure!(
                named,
                "expected a 422 item whose loc names {field:?}, got {}",
                self.describe()
            );
        }
        Ok(items.clone())
    }
}

/// The chat REST API of one server.
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self::with_client(base, reqwest::Client::builder())
    }

    /// An API client built from `builder` (trusting a test certificate, say).
    pub fn with_client(base: &str, builder: reqwest::ClientBuilder) -> Self {
        let http = builder
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request built from `builder` and reads the whole reply.
    pub async fn send(
        &self,
        label: String,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<Reply> {
        let resp = builder
            .send()
            .await
            .with_context(|| format!("{label}: request failed"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{label}: reading body"))?
            .to_vec();
        Ok(Reply {
            request: label,
            status,
            headers,
            body,
        })
    }

    /// A request with an optional bearer token.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut builder = self.http.request(method.clone(), self.url(path));
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        if let Some(body) = body {
            builder = builder.json(body);
        }
        self.send(format!("{method} {path}"), builder).await
    }

    /// A request with a raw body and content type.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let mut builder = self
            .http
            .request(method.clone(), self.url(path))
            .header(CONTENT_TYPE, content_type)
            .body(body);
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        self.send(format!("{method} {path} (raw)"), builder).await
    }

    /// A POST of raw bytes labelled `application/json` (for malformed JSON bodies).
    pub async fn post_json_bytes(
        &self,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        self.request_raw(Method::POST, path, token, "application/json", body.to_vec())
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> anyhow::Result<Reply> {
        self.request(Method::DELETE, path, token, None).await
    }

    /// A PATCH with a JSON body.
    pub async fn patch(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        self.request(Method::PATCH, path, token, Some(body)).await
    }

    // ---- auth ----

    pub async fn register(&self, username: &str, password: &str) -> anyhow::Result<Reply> {
        self.post(
            "/api/auth/register",
            None,
            &json!({"username": username, "password": password}),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<Reply> {
        self.post(
            "/api/auth/login",
            None,
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Registers and logs in a fresh user named `<prefix>_<hex>` with [`PASSWORD`].
    pub async fn new_user(&self, prefix: &str) -> anyhow::Result<Session> {
        let username = unique_name(prefix);
        let registered = self.register(&username, PASSWORD).await?.expect(201)?;
        let login = self.login(&username, PASSWORD).await?.expect(200)?;
        let token = str_field(&login, "access_token")?;
        let user_id = str_field(&login, "user_id")?;
        ensure!(
            registered.get("id").and_then(Value::as_str) == Some(user_id.as_str()),
            "register id {registered} differs from login user_id {login}"
        );
        Ok(Session {
            username,
            user_id,
            token,
        })
    }

    /// [`Api::new_user`] for each prefix, in order.
    pub async fn new_users<const N: usize>(
        &self,
        prefixes: [&str; N],
    ) -> anyhow::Result<[Session; N]> {
        let mut users = Vec::with_capacity(N);
        for prefix in prefixes {
            users.push(self.new_user(prefix).await?);
        }
        users
            .try_into()
            .map_err(|_| anyhow::anyhow!("expected {N} users"))
    }

    pub async fn me(&self, token: &str) -> anyhow::Result<Reply> {
        self.get("/api/auth/me", Some(token)).await
    }

    pub async fn lookup_user(&self, token: Option<&str>, username: &str) -> anyhow::Result<Reply> {
        let path = format!("/api/users?username={}", encode_query(username));
        self.get(&path, token).await
    }

    // ---- conversations ----

    pub async fn create_conversation_raw(
        &self,
        who: &Session,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        self.post("/api/chat/conversations", Some(&who.token), body)
            .await
    }

    /// Creates a group conversation (expects 201) and returns it.
    pub async fn create_conversation(
        &self,
        who: &Session,
        name: &str,
        participants: &[&Session],
    ) -> anyhow::Result<Value> {
        let ids: Vec<&str> = participants.iter().map(|s| s.user_id.as_str()).collect();
        let body = json!({
            "name": name,
            "description": format!("{name} description"),
            "is_group": true,
            "participant_ids": ids,
        });
        self.create_conversation_raw(who, &body).await?.expect(201)
    }

    /// [`Api::create_conversation`], returning just the new conversation's id.
    pub async fn new_conversation(
        &self,
        who: &Session,
        name: &str,
        participants: &[&Session],
    ) -> anyhow::Result<String> {
        let conv = self.create_conversation(who, name, participants).await?;
        str_field(&conv, "id")
    }

    pub async fn list_conversations(&self, who: &Session) -> anyhow::Result<Reply> {
        self.get("/api/chat/conversations", Some(&who.token)).await
    }

    /// The ids of `who`'s conversations, in the listed order (expects 200; every entry
    /// must have a string `id`).
    pub async fn conversation_ids(&self, who: &Session) -> anyhow::Result<Vec<String>> {
        let list = self.list_conversations(who).await?.expect(200)?;
        as_list(&list)?
            .iter()
            .map(|conv| str_field(conv, "id"))
            .collect()
    }

    pub async fn get_conversation(&self, who: &Session, id: &str) -> anyhow::Result<Reply> {
        self.get(&format!("/api/chat/conversations/{id}"), Some(&who.token))
            .await
    }

    /// The sorted participant ids of a conversation as `who` gets it (expects 200).
    pub async fn participants(&self, who: &Session, id: &str) -> anyhow::Result<Vec<String>> {
        participant_ids(&self.get_conversation(who, id).await?.expect(200)?)
    }

    pub async fn add_participant(
        &self,
        who: &Session,
        id: &str,
        user_id: &str,
    ) -> anyhow::Result<Reply> {
        self.post(
            &format!("/api/chat/conversations/{id}/participants"),
            Some(&who.token),
            &json!({"user_id": user_id}),
        )
        .await
    }

    pub async fn remove_participant(
        &self,
        who: &Session,
        id: &str,
        user_id: &str,
    ) -> anyhow::Result<Reply> {
        self.delete(
            &format!("/api/chat/conversations/{id}/participants/{user_id}"),
            Some(&who.token),
        )
        .await
    }

    /// `PATCH /api/chat/conversations/{id}` with `body` (`name`, `description`,
    /// `archived`) as `who`.
    pub async fn update_conversation(
        &self,
        who: &Session,
        id: &str,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        self.patch(
            &format!("/api/chat/conversations/{id}"),
            Some(&who.token),
            body,
        )
        .await
    }

    /// `DELETE /api/chat/conversations/{id}` as `who`.
    pub async fn delete_conversation(&self, who: &Session, id: &str) -> anyhow::Result<Reply> {
        self.delete(&format!("/api/chat/conversations/{id}"), Some(&who.token))
            .await
    }

    /// `GET .../participants` (the member list with roles) with a raw query string
    /// (without `?`, may be empty), as `who`.
    pub async fn participant_page(
        &self,
        who: &Session,
        id: &str,
        query: &str,
    ) -> anyhow::Result<Reply> {
        let path = if query.is_empty() {
            format!("/api/chat/conversations/{id}/participants")
        } else {
            format!("/api/chat/conversations/{id}/participants?{query}")
        };
        self.get(&path, Some(&who.token)).await
    }

    /// The whole member list of a conversation (up to 500) as `who` gets it, in the
    /// order served.
    pub async fn members(&self, who: &Session, id: &str) -> anyhow::Result<Vec<Value>> {
        let page = self
            .participant_page(who, id, "limit=500")
            .await?
            .expect(200)?;
        Ok(as_list(&page)?.clone())
    }

    /// Each participant's role, by user id, as `who` reads them.
    pub async fn roles(
        &self,
        who: &Session,
        id: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        self.members(who, id)
            .await?
            .iter()
            .map(|p| Ok((str_field(p, "user_id")?, str_field(p, "role")?)))
            .collect()
    }

    /// Asserts each participant's role, by user id, as `who` reads them; `what` names
    /// the step.
    pub async fn check_roles(
        &self,
        who: &Session,
        id: &str,
        want: &[(&Session, &str)],
        what: &str,
    ) -> anyhow::Result<()> {
        let got = self.roles(who, id).await?;
        let want: std::collections::BTreeMap<String, String> = want
            .iter()
            .map(|(s, role)| (s.user_id.clone(), (*role).to_string()))
            .collect();
        ensure!(got == want, "{what}: roles {got:?}, expected {want:?}");
        Ok(())
    }

    /// `PATCH .../participants/{user_id}` with `{"role": role}` as `who`.
    pub async fn set_role(
        &self,
        who: &Session,
        id: &str,
        user_id: &str,
        role: &str,
    ) -> anyhow::Result<Reply> {
        self.patch(
            &format!("/api/chat/conversations/{id}/participants/{user_id}"),
            Some(&who.token),
            &json!({"role": role}),
        )
        .await
    }

    /// `GET .../messages` with a raw query string (without `?`, may be empty).
    /// A page of who is connected to conversation `id`; `query` as for
    /// [`Api::history`] (`limit=..&after=..`, or empty).
    pub async fn presence(&self, who: &Session, id: &str, query: &str) -> anyhow::Result<Reply> {
        let path = if query.is_empty() {
            format!("/api/chat/conversations/{id}/presence")
        } else {
            format!("/api/chat/conversations/{id}/presence?{query}")
        };
        self.get(&path, Some(&who.token)).await
    }

    pub async fn history(&self, who: &Session, id: &str, query: &str) -> anyhow::Result<Reply> {
        let path = if query.is_empty() {
            format!("/api/chat/conversations/{id}/messages")
        } else {
            format!("/api/chat/conversations/{id}/messages?{query}")
        };
        self.get(&path, Some(&who.token)).await
    }

    /// The history as a list (expects 200).
    pub async fn history_list(
        &self,
        who: &Session,
        id: &str,
        query: &str,
    ) -> anyhow::Result<Vec<Value>> {
        match self.history(who, id, query).await?.expect(200)? {
            Value::Array(items) => Ok(items),
            other => bail!("history is not a list: {other}"),
        }
    }
}

/// A string field of a JSON object.
pub fn str_field(v: &Value, field: &str) -> anyhow::Result<String> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("missing string field {field:?} in {v}"))
}

/// Checks `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
pub fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 27 {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z'
}

/// Asserts that `v[field]` is a timestamp in the contract's format; returns it.
pub fn timestamp_field(v: &Value, field: &str) -> anyhow::Result<String> {
    let s = str_field(v, field)?;
    ensure!(
        is_timestamp(&s),
        "{field} {s:?} is not YYYY-MM-DDTHH:MM:SS.ffffffZ in {v}"
    );
    Ok(s)
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The list in a JSON value, or an error naming what it was.
pub fn as_list(v: &Value) -> anyhow::Result<&Vec<Value>> {
    v.as_array()
        .with_context(|| format!("expected a JSON list, got {v}"))
}

/// The `id` strings of a list of objects.
pub fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The participant ids of a conversation, sorted.
pub fn participant_ids(conversation: &Value) -> anyhow::Result<Vec<String>> {
    let list = conversation
        .get("participant_ids")
        .and_then(Value::as_array)
        .with_context(|| format!("no participant_ids list in {conversation}"))?;
    let mut ids = list
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .context("participant id is not a string")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ids.sort();
    Ok(ids)
}

/// Both people of each pair of `users` (taken two by two) ask for their direct
/// conversation at the same moment, the first through `via[0]` and the second through
/// `via[1]` (which may be one server or two nodes), all pairs at once. Asserts that
/// each pair gets one conversation, created once (one 201, one 200), direct, holding
/// the two of them and the only one in either list (each read through the other's
/// node).
pub async fn race_direct_conversations(users: &[Session], via: [&Api; 2]) -> anyhow::Result<()> {
    let races = users.chunks(2).map(|pair| async move {
        let [a, b] = pair else {
            bail!("users come in pairs");
        };
        let body = |other: &Session| json!({"is_group": false, "participant_ids": [other.user_id]});
        let (to_b, to_a) = (body(b), body(a));
        let (from_a, from_b) = tokio::join!(
            via[0].create_conversation_raw(a, &to_b),
            via[1].create_conversation_raw(b, &to_a),
        );
        let (from_a, from_b) = (from_a?, from_b?);
        let mut statuses = [from_a.status.as_u16(), from_b.status.as_u16()];
        statuses.sort_unstable();
        ensure!(
            statuses == [200, 201],
            "one creates (201), the other gets it (200): {} {} / {} {}",
            from_a.status,
            from_a.text(),
            from_b.status,
            from_b.text()
        );
        let (ca, cb) = (from_a.json()?, from_b.json()?);
        ensure!(
            ca["id"] == cb["id"] && ca["is_direct"] == true && cb["is_direct"] == true,
            "two conversations for one pair: {ca} / {cb}"
        );
        let id = str_field(&ca, "id")?;
        for (who, api) in [(a, via[1]), (b, via[0])] {
            ensure!(
                api.conversation_ids(who).await? == [id.clone()],
                "{}'s list after the race",
                who.username
            );
        }
        let mut pair_ids = vec![a.user_id.clone(), b.user_id.clone()];
        pair_ids.sort();
        ensure!(via[0].participants(a, &id).await? == pair_ids, "{id}");
        anyhow::Ok(())
    });
    for (i, outcome) in futures_util::future::join_all(races)
        .await
        .into_iter()
        .enumerate()
    {
        outcome.with_context(|| format!("pair {i}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert!(is_timestamp("2026-02-04T10:30:00.123456Z"));
        assert!(!is_timestamp("2026-02-04T10:30:00.123456"));
        assert!(!is_timestamp("2026-02-04T10:30:00Z"));
        assert!(!is_timestamp("2026-02-04T10:30:00.123Z"));
        assert!(!is_timestamp("2026-02-04 10:30:00.123456Z"));
    }

    #[test]
    fn names() {
        let n = unique_name("averyveryverylongprefix");
        assert!(n.len() <= 32 && n.len() >= 3);
    }
}
