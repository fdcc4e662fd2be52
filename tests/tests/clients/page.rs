//! The browser client at `/`: how it is served (types, caching, the Content-Security-
//! Policy), and two users chatting through it end to end in headless Chromium, each in
//! a browser context of their own: register, create and open a conversation, live
//! messages, typing, reactions, edits, deletes, presence, history after a reload, a
//! dropped connection resumed from each conversation's position and idempotent
//! resends, and unread badges kept in step across a user's devices by the user stream.
//! Then what the page offers beyond chatting: an owner renaming, archiving and
//! deleting a group while a member watches it change live, roles and members from the
//! "Details" panel, direct messages started from the username search, "log out
//! everywhere else" sending another device back to the login screen, and the access
//! token renewed in the background (and handed to the open socket) before it expires.
//!
//! The second user reaches the server through a small TCP relay that the test can cut
//! and mute, so the page sees a real dropped connection, not a scripted one.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::browser::{Browser, Page};
use tests::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);

fn config() -> ServerOptions {
    ServerOptions::new(Store::Sqlite, IoDriver::Uring)
}

#[tokio::test]
async fn page_is_served_with_its_files() {
    tests::run_with(config(), |srv| Box::pin(served(srv))).await
}

#[tokio::test]
async fn two_users_chat_in_the_browser() {
    tests::run_with(config(), |srv| Box::pin(two_users(srv))).await
}

#[tokio::test]
async fn unread_badges_follow_every_device() {
    tests::run_with(config(), |srv| Box::pin(unread_badges(srv))).await
}

#[tokio::test]
async fn owners_manage_a_conversation_in_the_browser() {
    tests::run_with(config(), |srv| Box::pin(manage(srv))).await
}

#[tokio::test]
async fn direct_messages_start_from_the_search() {
    tests::run_with(config(), |srv| Box::pin(direct_message(srv))).await
}

#[tokio::test]
async fn logging_out_everywhere_else_ends_other_pages() {
    tests::run_with(config(), |srv| Box::pin(logout_everywhere(srv))).await
}

/// Access tokens of one minute: the page must renew its token to outlive the first.
#[tokio::test]
async fn the_page_renews_its_token_before_it_expires() {
    let opts = config().env("ACCESS_TOKEN_EXPIRE_MINUTES", "1");
    tests::run_with(opts, |srv| Box::pin(token_refresh(srv))).await
}

#[tokio::test]
async fn a_long_conversation_list_loads_in_pages() {
    let opts = config().env("MAX_NEW_CONVERSATIONS", "0");
    tests::run_with(opts, |srv| Box::pin(list_in_pages(srv))).await
}

fn header<'r>(reply: &'r Reply, name: &str) -> &'r str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The values of every `src="..."` and `href="..."` of a page.
fn references(page: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for chunk in page.split(attr).skip(1) {
            refs.push(chunk.split('"').next().unwrap_or_default().to_owned());
        }
    }
    refs
}

async fn served(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let page = api.get("/", None).await?;
    page.expect_status(200)?;
    ensure!(
        page.content_type() == "text/html; charset=utf-8",
        "{}",
        page.content_type()
    );
    ensure!(header(&page, "cache-control") == "no-cache");
    ensure!(header(&page, "x-content-type-options") == "nosniff");
    let csp = header(&page, "content-security-policy");
    let host = srv.base_url().trim_start_matches("http://");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        &format!("connect-src 'self' ws://{host} wss://{host}"),
        "frame-ancestors 'none'",
    ] {
        ensure!(csp.contains(directive), "CSP lacks {directive:?}: {csp}");
    }
    ensure!(!csp.contains("unsafe"), "{csp}");

    let html = page.text();
    let refs = references(&html);
    ensure!(refs.len() >= 3, "{refs:?}");
    let mut kinds = Vec::new();
    for url in &refs {
        ensure!(
            url.starts_with("/static/"),
            "not one of its own files: {url}"
        );
        let file = api.get(url, None).await?;
        file.expect_status(200)?;
        ensure!(!file.body.is_empty(), "{url} is empty");
        let path = url.split('?').next().unwrap_or_default();
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            _ => bail!("unexpected file {url}"),
        };
        ensure!(
            file.content_type() == expected,
            "{url}: {}",
            file.content_type()
        );
        ensure!(
            header(&file, "cache-control").contains("max-age"),
            "{url}: {}",
            header(&file, "cache-control")
        );
        ensure!(header(&file, "x-content-type-options") == "nosniff");
        kinds.push(expected);
    }
    ensure!(
        kinds.contains(&"text/javascript; charset=utf-8")
            && kinds.contains(&"text/css; charset=utf-8")
    );

    // HEAD wherever GET; other methods are a 405 naming them; unknown files a 404.
    let head = api.http().head(api.url("/")).send().await?;
    ensure!(head.status() == 200, "HEAD /: {}", head.status());
    ensure!(head.headers().contains_key("content-security-policy"));
    ensure!(head.bytes().await?.is_empty());
    let post = api.post("/", None, &json!({})).await?;
    post.expect_status(405)?;
    ensure!(
        header(&post, "allow") == "GET, HEAD",
        "{}",
        header(&post, "allow")
    );
    api.get("/static/nope.js", None).await?.expect_status(404)?;

    // Not part of the API: the OpenAPI document does not describe it.
    let spec = api.get("/openapi.json", None).await?.expect(200)?;
    ensure!(spec["paths"].get("/").is_none());
    ensure!(!spec["paths"]
        .as_object()
        .context("paths")?
        .keys()
        .any(|p| p.starts_with("/static")));
    Ok(())
}

// ---- driving the page ----------------------------------------------------------

/// Helpers every evaluated expression may use; `$` finds by `data-testid`.
const HELPERS: &str = r#"
const $ = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
const text = (id, root) => { const el = $(id, root); return el ? el.textContent : null; };
const messages = (content) => [...document.querySelectorAll('[data-testid="message"]')]
  .filter((li) => $("message-content", li).textContent === content);
const fill = (id, value, root) => {
  const el = $(id, root);
  el.value = value;
  el.dispatchEvent(new Event("input", { bubbles: true }));
  return true;
};
const click = (el) => { el.click(); return true; };
const online = () => [...document.querySelectorAll('[data-testid="online-user"]')].map((li) => li.textContent);
const reaction = (content, emoji) => messages(content)[0].querySelector(`[data-testid="reaction"][data-emoji="${emoji}"]`);
const picker = (content, emoji) => messages(content)[0].querySelector(`[data-testid="reaction-add"][data-emoji="${emoji}"]`);
const item = (title) => [...document.querySelectorAll('[data-testid="conversation-item"]')].find((b) => b.textContent === title);
const badge = (title) => {
  const b = item(title);
  if (!b) return null;
  const shown = b.parentElement.querySelector('[data-testid="unread-badge"]');
  return shown.hidden ? '' : shown.textContent;
};
const match = (results, name) => [...$(results).querySelectorAll('[data-testid="user-result"]')]
  .find((b) => b.dataset.username === name);
const member = (name) => [...document.querySelectorAll('[data-testid="member"]')]
  .find((li) => li.dataset.username === name);
const shown = (id) => { const el = $(id); return !!el && !el.hidden && el.offsetParent !== null; };
"#;

fn script(expression: &str) -> String {
    format!("(() => {{ {HELPERS}\n return ({expression}); }})()")
}

/// A string as a JavaScript literal.
fn lit(s: &str) -> String {
    json!(s).to_string()
}

async fn run(page: &mut Page, expression: &str) -> anyhow::Result<Value> {
    page.evaluate(&script(expression)).await
}

async fn until(page: &mut Page, what: &str, expression: &str) -> anyhow::Result<Value> {
    page.wait_for(what, &script(expression), WAIT).await
}

/// Fills the form with `name` and the test password, presses `button` (register or
/// log in) and waits to be logged in.
async fn enter(page: &mut Page, name: &str, button: &str) -> anyhow::Result<()> {
    let (n, p) = (lit(name), lit(PASSWORD));
    run(
        page,
        &format!(
            "fill('auth-username', {n}) && fill('auth-password', {p}) && click($({}))",
            lit(button)
        ),
    )
    .await?;
    until(page, "logged in", &format!("text('me') === {n}")).await?;
    Ok(())
}

async fn register(page: &mut Page, name: &str) -> anyhow::Result<()> {
    enter(page, name, "auth-register").await
}

async fn login(page: &mut Page, name: &str) -> anyhow::Result<()> {
    enter(page, name, "auth-login").await
}

async fn send(page: &mut Page, content: &str) -> anyhow::Result<()> {
    let c = lit(content);
    run(
        page,
        &format!("fill('composer-input', {c}) && click($('composer-send'))"),
    )
    .await?;
    Ok(())
}

/// Waits until `content` is shown exactly once, acknowledged (not pending).
async fn until_shown(page: &mut Page, who: &str, content: &str) -> anyhow::Result<()> {
    let c = lit(content);
    let expression =
        format!("messages({c}).length === 1 && messages({c})[0].dataset.pending === 'false'");
    until(page, &format!("{who} to show {content:?}"), &expression).await?;
    Ok(())
}

async fn count(page: &mut Page, content: &str) -> anyhow::Result<u64> {
    let n = run(page, &format!("messages({}).length", lit(content))).await?;
    n.as_u64().context("a count")
}

async fn connected(page: &mut Page, who: &str) -> anyhow::Result<()> {
    until(
        page,
        &format!("{who}'s socket to open"),
        "$('connection').dataset.state === 'open'",
    )
    .await?;
    Ok(())
}

/// A user in more conversations than one page of the list holds sees the first page,
/// and the rest after "More conversations"; the button goes once all are shown.
async fn list_in_pages(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let me = api.new_user("pages").await?;
    const CONVERSATIONS: usize = 105;
    for i in 0..CONVERSATIONS {
        api.new_conversation(&me, &format!("paged {i:03}"), &[])
            .await?;
    }
    let mut browser = Browser::open(&format!("{}/", srv.base_url())).await?;
    let page = browser.page();
    login(page, &me.username).await?;
    let items = "document.querySelectorAll('[data-testid=\"conversation-item\"]').length";
    until(
        page,
        "the first page of the list",
        &format!("{items} === 100"),
    )
    .await?;
    until(
        page,
        "the button for more",
        "!$('conversations-more').hidden",
    )
    .await?;
    run(page, "click($('conversations-more'))").await?;
    until(
        page,
        "every conversation listed",
        &format!("{items} === {CONVERSATIONS} && $('conversations-more').hidden"),
    )
    .await?;
    // Newest first, down to the oldest.
    let last = run(
        page,
        "[...document.querySelectorAll('[data-testid=\"conversation-item\"]')].pop().textContent",
    )
    .await?;
    ensure!(last == "paged 000", "last listed: {last}");
    Ok(())
}

/// Creates a conversation named `title` with `with` (a username) from the page's form.
async fn create(page: &mut Page, title: &str, with: &str) -> anyhow::Result<()> {
    run(
        page,
        &format!(
            "fill('new-name', {}) && fill('new-participants', {}) && click($('new-create'))",
            lit(title),
            lit(with)
        ),
    )
    .await?;
    Ok(())
}

/// Unread badges over the user stream, with no reload and no polling: a conversation
/// created with B appears in both of B's tabs (two devices), A's messages raise its
/// badge in both, and opening it in one tab clears the badge in the other.
async fn unread_badges(srv: &TestServer) -> anyhow::Result<()> {
    let mut browser = Browser::open(&format!("{}/", srv.base_url())).await?;
    let mut phone = browser
        .open_isolated(&format!("{}/", srv.base_url()))
        .await?;
    let mut laptop = browser
        .open_isolated(&format!("{}/", srv.base_url()))
        .await?;
    let (alice, bob) = (unique_name("badge_a"), unique_name("badge_b"));
    let a = browser.page();
    register(a, &alice).await?;
    register(&mut phone, &bob).await?;
    login(&mut laptop, &bob).await?;
    connected(&mut phone, "B's phone").await?;
    connected(&mut laptop, "B's laptop").await?;

    let title = "Badges";
    create(a, title, &bob).await?;
    connected(a, "A").await?;
    for (page, who) in [(&mut phone, "phone"), (&mut laptop, "laptop")] {
        until(
            page,
            &format!("the new conversation on B's {who}"),
            &format!("badge({}) === ''", lit(title)),
        )
        .await?;
    }
    for content in ["one", "two"] {
        send(a, content).await?;
        until_shown(a, "A", content).await?;
    }
    for (page, who) in [(&mut phone, "phone"), (&mut laptop, "laptop")] {
        until(
            page,
            &format!("two unread on B's {who}"),
            &format!("badge({}) === '2'", lit(title)),
        )
        .await?;
    }
    run(&mut phone, &format!("click(item({}))", lit(title))).await?;
    until_shown(&mut phone, "B's phone", "two").await?;
    until(
        &mut phone,
        "the phone's badge to clear",
        &format!("badge({}) === ''", lit(title)),
    )
    .await?;
    until(
        &mut laptop,
        "the laptop's badge to clear",
        &format!("badge({}) === ''", lit(title)),
    )
    .await?;
    // Read on the server too: a fresh list says so.
    let api = srv.api();
    let session = api.login(&bob, PASSWORD).await?.expect(200)?;
    let token = str_field(&session, "access_token")?;
    let list = api
        .get("/api/chat/conversations", Some(&token))
        .await?
        .expect(200)?;
    let listed = as_list(&list)?
        .iter()
        .find(|c| c["name"] == title)
        .cloned()
        .context("listed")?;
    ensure!(
        listed["unread_count"] == 0 && listed["last_read_seq"] == 2,
        "{listed}"
    );
    screenshot(&mut laptop, "page-badges.png").await?;
    Ok(())
}

/// A PNG of `page` under `target/test-artifacts/`.
async fn screenshot(page: &mut Page, name: &str) -> anyhow::Result<()> {
    let png = page.screenshot().await?;
    ensure!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG of a page: {} bytes",
        png.len()
    );
    let dir = testkit::binary::target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), &png)?;
    Ok(())
}

async fn two_users(srv: &TestServer) -> anyhow::Result<()> {
    let relay = Relay::start(srv.base_url()).await?;
    let mut browser = Browser::open(&format!("{}/", srv.base_url())).await?;
    let mut b = browser
        .open_isolated(&format!("http://{}/", relay.addr))
        .await?;
    let a = browser.page();
    let (alice, bob) = (unique_name("page_a"), unique_name("page_b"));

    // Register both; A creates a conversation with B by username and opens it.
    register(a, &alice).await?;
    register(&mut b, &bob).await?;
    let title = "Page test";
    create(a, title, &bob).await?;
    until(
        a,
        "A's room",
        &format!("text('room-title') === {}", lit(title)),
    )
    .await?;
    connected(a, "A").await?;
    let conversation = run(a, "sessionStorage.getItem('chat.conversation')").await?;
    let conversation = conversation
        .as_str()
        .context("open conversation id")?
        .to_owned();

    // B finds it in the list and opens it.
    run(&mut b, "click($('conversations-refresh'))").await?;
    let item = format!("item({})", lit(title));
    until(&mut b, "the conversation in B's list", &format!("!!{item}")).await?;
    run(&mut b, &format!("click({item})")).await?;
    connected(&mut b, "B").await?;

    // Presence: each sees both online, by name.
    let both = format!(
        "online().includes({}) && online().includes({})",
        lit(&alice),
        lit(&bob)
    );
    until(a, "A to see both online", &both).await?;
    until(&mut b, "B to see both online", &both).await?;

    // Typing, then a message (with markup in it, which must stay text).
    run(a, "fill('composer-input', 'Hel')").await?;
    until(
        &mut b,
        "B to see A typing",
        &format!("text('typing') === {}", lit(&format!("{alice} is typing…"))),
    )
    .await?;
    let hello = "Hello <b>Bob</b> & co";
    send(a, hello).await?;
    until_shown(a, "A", hello).await?;
    until_shown(&mut b, "B", hello).await?;
    ensure!(
        run(
            &mut b,
            "document.querySelector('[data-testid=\"message-list\"] b') === null"
        )
        .await?
            == true
    );
    until(
        &mut b,
        "A's typing notice to clear",
        "text('typing') === ''",
    )
    .await?;

    // B reacts; A sees the reaction.
    run(&mut b, &format!("click(picker({}, '👍'))", lit(hello))).await?;
    until(
        a,
        "A to see B's reaction",
        &format!("reaction({}, '👍').dataset.count === '1'", lit(hello)),
    )
    .await?;
    until(
        &mut b,
        "B's reaction to show as its own",
        &format!(
            "reaction({}, '👍').getAttribute('aria-pressed') === 'true'",
            lit(hello)
        ),
    )
    .await?;

    // A edits its message; B sees the new text, marked edited.
    let edited = "Hello Bob, edited";
    run(
        a,
        &format!(
            "(() => {{ const li = messages({}); click($('message-edit', li[0])); fill('edit-input', {}, li[0]); return click($('edit-save', li[0])); }})()",
            lit(hello),
            lit(edited)
        ),
    )
    .await?;
    until(
        &mut b,
        "B to see the edit",
        &format!(
            "messages({e}).length === 1 && !$('message-edited', messages({e})[0]).hidden && messages({h}).length === 0",
            e = lit(edited),
            h = lit(hello)
        ),
    )
    .await?;

    // A deletes another message of its own; it disappears for B.
    let doomed = "This one will be deleted";
    send(a, doomed).await?;
    until_shown(a, "A", doomed).await?;
    until_shown(&mut b, "B", doomed).await?;
    run(
        a,
        &format!("click($('message-delete', messages({})[0]))", lit(doomed)),
    )
    .await?;
    until(
        &mut b,
        "B to see the delete",
        &format!("messages({}).length === 0", lit(doomed)),
    )
    .await?;
    until(
        a,
        "A to see the delete",
        &format!("messages({}).length === 0", lit(doomed)),
    )
    .await?;

    // After a reload B is still logged in (sessionStorage), back in the conversation,
    // with its history: the edit, the delete and the reaction.
    b.reload().await?;
    until(
        &mut b,
        "B's room after reload",
        &format!("text('room-title') === {}", lit(title)),
    )
    .await?;
    connected(&mut b, "B after reload").await?;
    until(
        &mut b,
        "history after reload",
        &format!(
            "messages({e}).length === 1 && !$('message-edited', messages({e})[0]).hidden \
             && messages({d}).length === 0 && reaction({e}, '👍').dataset.count === '1'",
            e = lit(edited),
            d = lit(doomed)
        ),
    )
    .await?;
    until(a, "A to see B back", &both).await?;

    // A dropped connection. First the relay swallows what the server says to B, so a
    // message B sends is stored and broadcast but its acknowledgement never arrives.
    let seen = run(
        &mut b,
        "Math.max(...[...document.querySelectorAll('[data-testid=\"message\"]')].map((li) => Number(li.dataset.seq)))",
    )
    .await?
    .as_u64()
    .context("B's newest seq")?;
    relay.mute(true);
    let unacked = "Sent just before the drop";
    send(&mut b, unacked).await?;
    until_shown(a, "A", unacked).await?;
    ensure!(
        run(
            &mut b,
            &format!("messages({})[0].dataset.pending", lit(unacked))
        )
        .await?
            == "true"
    );
    // Then the connection drops, and stays unreachable for a while.
    relay.cut();
    until(
        &mut b,
        "B to notice the drop",
        "$('connection').dataset.state === 'offline'",
    )
    .await?;
    until(
        a,
        "A to see B leave",
        &format!(
            "online().includes({}) && !online().includes({})",
            lit(&alice),
            lit(&bob)
        ),
    )
    .await?;
    let away = "Sent while you were away";
    send(a, away).await?;
    until_shown(a, "A", away).await?;
    let away_seq = run(
        a,
        &format!("Number(messages({})[0].dataset.seq)", lit(away)),
    )
    .await?
    .as_u64()
    .context("seq")?;
    relay.restore();

    // B reconnects by itself, resuming after the last position it saw: it gets the
    // message it missed, and its resend (same client_id) is matched, not stored again.
    connected(&mut b, "B after the drop").await?;
    let since: u64 = run(&mut b, "$('connection').dataset.since")
        .await?
        .as_str()
        .context("since")?
        .parse()?;
    ensure!(
        since >= seen && since < away_seq,
        "B resumed from {since}, not from where it stood ({seen}..{away_seq})"
    );
    until_shown(&mut b, "B", away).await?;
    until_shown(&mut b, "B", unacked).await?;
    until(a, "A to see B back after the drop", &both).await?;
    // Anything duplicated would have arrived by now, behind the answers above.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (page, who) in [(&mut *a, "A"), (&mut b, "B")] {
        for content in [edited, unacked, away] {
            let n = count(page, content).await?;
            ensure!(n == 1, "{who} shows {content:?} {n} times");
        }
    }
    let api = srv.api();
    let login = api.login(&alice, PASSWORD).await?.expect(200)?;
    let session = Session {
        username: alice.clone(),
        user_id: str_field(&login, "user_id")?,
        token: str_field(&login, "access_token")?,
    };
    let history = api.history_list(&session, &conversation, "").await?;
    let contents: Vec<&str> = history
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    ensure!(contents == [edited, unacked, away], "history: {contents:?}");

    screenshot(a, "page-chat-a.png").await?;
    screenshot(&mut b, "page-chat-b.png").await?;
    Ok(())
}

// ---- managing conversations, direct messages, sessions ---------------------------

/// Types `prefix` into the username search `input` and clicks `name` among the
/// matches listed in `results`.
async fn pick(
    page: &mut Page,
    input: &str,
    results: &str,
    prefix: &str,
    name: &str,
) -> anyhow::Result<()> {
    run(page, &format!("fill({}, {})", lit(input), lit(prefix))).await?;
    let found = format!("match({}, {})", lit(results), lit(name));
    until(
        page,
        &format!("{name} among the matches for {prefix:?}"),
        &format!("!!{found}"),
    )
    .await?;
    run(page, &format!("click({found})")).await?;
    Ok(())
}

/// The start of a `unique_name`, short of its last few random characters: a prefix
/// only that user's name has.
fn prefix_of(name: &str) -> &str {
    &name[..name.len() - 6]
}

/// The access token a page keeps (in sessionStorage).
async fn page_token(page: &mut Page) -> anyhow::Result<String> {
    let token = run(
        page,
        "JSON.parse(sessionStorage.getItem('chat.session') || '{}').token || ''",
    )
    .await?;
    Ok(token.as_str().context("a token")?.to_owned())
}

async fn log_in_api(srv: &TestServer, name: &str) -> anyhow::Result<Session> {
    let login = srv.api().login(name, PASSWORD).await?.expect(200)?;
    Ok(Session {
        username: name.to_owned(),
        user_id: str_field(&login, "user_id")?,
        token: str_field(&login, "access_token")?,
    })
}

/// What the "Details" panel offers: rename, archive, delete, leave, how many member
/// controls (remove, make admin), and the caller's role as it says it.
const OFFERED: &str = "[shown('rename-form'), shown('archive-toggle'), \
    shown('conversation-delete'), shown('leave'), \
    document.querySelectorAll('[data-testid=\"member-remove\"], [data-testid=\"member-make-admin\"]').length, \
    text('my-role')]";

/// An owner manages a group from the page's "Details" panel while a member's page
/// follows every change live, offering only what the member's role allows: created
/// with a participant picked from the username search, renamed and described, the
/// member made an admin, a third person added from the search and removed, archived
/// (the member's composer is disabled) and unarchived, and deleted.
async fn manage(srv: &TestServer) -> anyhow::Result<()> {
    let url = format!("{}/", srv.base_url());
    let mut browser = Browser::open(&url).await?;
    let mut b = browser.open_isolated(&url).await?;
    let a = browser.page();
    let (alice, bob) = (unique_name("own_a"), unique_name("own_b"));
    let carol = srv.api().new_user("own_c").await?.username;
    register(a, &alice).await?;
    register(&mut b, &bob).await?;
    connected(&mut b, "B").await?;
    // Deleting and removing ask first; the test says yes.
    run(a, "!!(window.confirm = () => true)").await?;

    // A creates the group, picking B from the search by the start of B's name.
    let title = "Plans";
    run(
        a,
        &format!(
            "click($('group-start')) && fill('new-name', {})",
            lit(title)
        ),
    )
    .await?;
    pick(
        a,
        "new-participants",
        "new-suggestions",
        prefix_of(&bob),
        &bob,
    )
    .await?;
    until(
        a,
        "B picked",
        &format!(
            "[...document.querySelectorAll('[data-testid=\"picked\"]')].some((li) => li.textContent.startsWith({}))",
            lit(&bob)
        ),
    )
    .await?;
    run(a, "click($('new-create'))").await?;
    until(
        a,
        "A's room",
        &format!("text('room-title') === {}", lit(title)),
    )
    .await?;
    connected(a, "A").await?;
    let conversation = run(a, "sessionStorage.getItem('chat.conversation')").await?;
    let conversation = conversation
        .as_str()
        .context("open conversation")?
        .to_owned();

    // B is told of it and opens it: a member, offered leaving only.
    until(
        &mut b,
        "the group in B's list",
        &format!("!!item({})", lit(title)),
    )
    .await?;
    run(&mut b, &format!("click(item({}))", lit(title))).await?;
    until(
        &mut b,
        "B's room",
        &format!("text('room-title') === {}", lit(title)),
    )
    .await?;
    run(&mut b, "click($('manage-toggle'))").await?;
    until(
        &mut b,
        "B's members panel",
        &format!("!!member({}) && !!member({})", lit(&alice), lit(&bob)),
    )
    .await?;
    let offered = run(&mut b, OFFERED).await?;
    ensure!(
        offered == json!([false, false, false, true, 0, "member"]),
        "a member is offered {offered}"
    );

    // A, the owner, is offered everything; A renames and describes the group.
    run(a, "click($('manage-toggle'))").await?;
    until(
        a,
        "A's members panel",
        &format!("!!member({}) && text('my-role') === 'owner'", lit(&bob)),
    )
    .await?;
    let offered = run(a, OFFERED).await?;
    ensure!(
        offered == json!([true, true, true, true, 2, "owner"]),
        "the owner is offered {offered}"
    );
    let (renamed, about) = ("Plans for June", "Where we go, and when");
    run(
        a,
        &format!(
            "fill('rename-name', {}) && fill('rename-description', {}) && click($('rename-save'))",
            lit(renamed),
            lit(about)
        ),
    )
    .await?;
    until(
        &mut b,
        "B to see the new name and description without a reload",
        &format!(
            "!!item({r}) && !item({t}) && text('room-title') === {r} && text('room-description') === {d}",
            r = lit(renamed),
            t = lit(title),
            d = lit(about)
        ),
    )
    .await?;

    // A makes B an admin: B is offered renaming and archiving now, not deleting.
    run(
        a,
        &format!("click($('member-make-admin', member({})))", lit(&bob)),
    )
    .await?;
    until(
        &mut b,
        "B's panel to follow B's new role",
        "text('my-role') === 'admin' && shown('rename-form') && shown('archive-toggle') && !shown('conversation-delete')",
    )
    .await?;
    until(
        a,
        "A to list B as an admin",
        &format!("member({}).dataset.role === 'admin'", lit(&bob)),
    )
    .await?;

    // A adds a third person from the search, then removes them.
    pick(
        a,
        "add-member-search",
        "add-member-results",
        prefix_of(&carol),
        &carol,
    )
    .await?;
    until(
        a,
        "C among the members",
        &format!("!!member({})", lit(&carol)),
    )
    .await?;
    let session = log_in_api(srv, &alice).await?;
    let api = srv.api();
    ensure!(api.participants(&session, &conversation).await?.len() == 3);
    run(
        a,
        &format!("click($('member-remove', member({})))", lit(&carol)),
    )
    .await?;
    until(a, "C removed", &format!("!member({})", lit(&carol))).await?;
    ensure!(api.participants(&session, &conversation).await?.len() == 2);

    // A archives it: B's composer is disabled, under a notice. B, an admin, opens it
    // again, and the conversation is writable for both.
    run(a, "click($('archive-toggle'))").await?;
    until(
        &mut b,
        "B's composer to be disabled",
        &format!(
            "$('composer-input').disabled && $('composer-send').disabled && shown('archived-notice') \
             && text('archive-toggle') === 'Unarchive' && item({}).dataset.archived === 'true'",
            lit(renamed)
        ),
    )
    .await?;
    until(
        a,
        "A's composer to be disabled",
        "$('composer-input').disabled",
    )
    .await?;
    run(&mut b, "click($('archive-toggle'))").await?;
    until(
        a,
        "A's composer to be enabled again",
        "!$('composer-input').disabled && !shown('archived-notice')",
    )
    .await?;
    until(
        &mut b,
        "B's composer enabled",
        "!$('composer-input').disabled",
    )
    .await?;
    send(&mut b, "Open again").await?;
    until_shown(a, "A", "Open again").await?;
    screenshot(a, "page-manage.png").await?;

    // A deletes it (after the confirmation): gone from B's list and room at once.
    run(a, "click($('conversation-delete'))").await?;
    for (page, who) in [(&mut b, "B"), (&mut *a, "A")] {
        until(
            page,
            &format!("the group gone from {who}'s page"),
            &format!(
                "!item({}) && $('room-body').hidden && text('room-empty').includes('deleted')",
                lit(renamed)
            ),
        )
        .await?;
    }
    api.get_conversation(&session, &conversation)
        .await?
        .expect_status(404)?;
    Ok(())
}

/// A direct message started from the search box by typing the start of the other
/// person's name: it opens, the other person's page lists it under the sender's name,
/// and searching from the other side opens the same conversation, not a second one.
async fn direct_message(srv: &TestServer) -> anyhow::Result<()> {
    let url = format!("{}/", srv.base_url());
    let mut browser = Browser::open(&url).await?;
    let mut b = browser.open_isolated(&url).await?;
    let a = browser.page();
    let (alice, bob) = (unique_name("dm_a"), unique_name("dm_b"));
    register(a, &alice).await?;
    register(&mut b, &bob).await?;
    connected(&mut b, "B").await?;

    run(a, "click($('dm-start'))").await?;
    pick(a, "dm-search", "dm-results", prefix_of(&bob), &bob).await?;
    let (to_bob, to_alice) = (format!("@{bob}"), format!("@{alice}"));
    until(
        a,
        "A's direct room",
        &format!(
            "text('room-title') === {} && $('room-body').dataset.role === 'direct'",
            lit(&to_bob)
        ),
    )
    .await?;
    connected(a, "A").await?;
    // No roles: either may rename or delete it, and nobody is added to it.
    run(a, "click($('manage-toggle'))").await?;
    until(
        a,
        "both members listed",
        "document.querySelectorAll('[data-testid=\"member\"]').length === 2",
    )
    .await?;
    let offered = run(
        a,
        "[shown('rename-form'), shown('conversation-delete'), shown('add-member'), \
         document.querySelectorAll('[data-testid=\"member-role\"], [data-testid=\"member-remove\"]').length]",
    )
    .await?;
    ensure!(
        offered == json!([true, true, false, 0]),
        "a direct conversation offers {offered}"
    );
    let hello = "Hi, just you and me";
    send(a, hello).await?;
    until_shown(a, "A", hello).await?;

    // B's page lists it by A's name, live.
    until(
        &mut b,
        "the direct conversation in B's list",
        &format!("!!item({})", lit(&to_alice)),
    )
    .await?;
    run(&mut b, &format!("click(item({}))", lit(&to_alice))).await?;
    until_shown(&mut b, "B", hello).await?;
    let back = "Hi back";
    send(&mut b, back).await?;
    until_shown(a, "A", back).await?;

    // From B's side the search reopens the same conversation.
    run(&mut b, "click($('dm-start'))").await?;
    pick(&mut b, "dm-search", "dm-results", prefix_of(&alice), &alice).await?;
    until(
        &mut b,
        "the same conversation reopened",
        &format!(
            "text('room-title') === {} && messages({}).length === 1",
            lit(&to_alice),
            lit(back)
        ),
    )
    .await?;
    let listed = run(
        &mut b,
        &format!(
            "[...document.querySelectorAll('[data-testid=\"conversation-item\"]')].filter((b) => b.textContent === {}).length",
            lit(&to_alice)
        ),
    )
    .await?;
    ensure!(listed == 1, "B lists it {listed} times");
    let session = log_in_api(srv, &alice).await?;
    let list = srv.api().list_conversations(&session).await?.expect(200)?;
    let direct: Vec<&Value> = as_list(&list)?
        .iter()
        .filter(|c| c["is_direct"] == true)
        .collect();
    ensure!(direct.len() == 1, "direct conversations: {direct:?}");
    Ok(())
}

/// One user on three pages (three sessions). "Log out everywhere else" on one sends
/// the other two back to the login screen at once (their sockets are closed with
/// `Session ended`) and says how many sessions ended; that one stays logged in, also
/// across a reload. "Log out" then ends it too: its token is refused.
async fn logout_everywhere(srv: &TestServer) -> anyhow::Result<()> {
    let url = format!("{}/", srv.base_url());
    let mut browser = Browser::open(&url).await?;
    let mut laptop = browser.open_isolated(&url).await?;
    let mut phone = browser.open_isolated(&url).await?;
    let desk = browser.page();
    let name = unique_name("everywhere");
    register(desk, &name).await?;
    login(&mut laptop, &name).await?;
    login(&mut phone, &name).await?;
    connected(desk, "the desk").await?;
    connected(&mut laptop, "the laptop").await?;
    connected(&mut phone, "the phone").await?;
    let laptop_token = page_token(&mut laptop).await?;

    run(desk, "click($('logout-all'))").await?;
    until(
        desk,
        "how many sessions ended",
        "$('session-status').dataset.ended === '2' && text('session-status').includes('2 other sessions')",
    )
    .await?;
    for (page, who) in [(&mut laptop, "laptop"), (&mut phone, "phone")] {
        until(
            page,
            &format!("the {who} back at the login screen"),
            "!$('auth').hidden && $('chat').hidden && text('auth-error').includes('session has ended') \
             && sessionStorage.getItem('chat.session') === null",
        )
        .await?;
    }
    let api = srv.api();
    api.me(&laptop_token).await?.expect_status(401)?;

    // The desk goes on, across a reload too.
    ensure!(run(desk, "$('connection').dataset.state").await? == "open");
    desk.reload().await?;
    until(
        desk,
        "still logged in",
        &format!("text('me') === {}", lit(&name)),
    )
    .await?;
    connected(desk, "the desk after a reload").await?;
    let desk_token = page_token(desk).await?;
    api.me(&desk_token).await?.expect_status(200)?;

    // "Log out" ends this session on the server too.
    run(desk, "click($('logout'))").await?;
    until(
        desk,
        "the desk at the login screen",
        "!$('auth').hidden && text('auth-error') === '' && sessionStorage.getItem('chat.session') === null",
    )
    .await?;
    api.me(&desk_token).await?.expect_status(401)?;
    // And anyone logs in again as before.
    login(&mut laptop, &name).await?;
    connected(&mut laptop, "the laptop, logged in again").await?;
    Ok(())
}

/// Watches a page's WebSockets from now on: how many it opens (`__opened`) and every
/// frame it sends (`__sent`).
const SPY: &str = r#"(() => {
  window.__opened = 0;
  window.__sent = [];
  const Base = WebSocket;
  window.WebSocket = class extends Base {
    constructor(...args) { super(...args); window.__opened += 1; }
  };
  const send = Base.prototype.send;
  Base.prototype.send = function (data) { window.__sent.push(String(data)); return send.call(this, data); };
  return true;
})()"#;

/// With access tokens of one minute, the page renews its token in the background and
/// hands the new one to its open socket (in-band `auth`), so after the first token has
/// expired the same socket still sends and receives, REST still answers, and a reload
/// carries on with the renewed pair.
async fn token_refresh(srv: &TestServer) -> anyhow::Result<()> {
    let url = format!("{}/", srv.base_url());
    let mut browser = Browser::open(&url).await?;
    let mut b = browser.open_isolated(&url).await?;
    let a = browser.page();
    let (alice, bob) = (unique_name("renew_a"), unique_name("renew_b"));
    register(a, &alice).await?;
    let logged_in = tokio::time::Instant::now();
    let first = page_token(a).await?;
    register(&mut b, &bob).await?;
    connected(&mut b, "B").await?;
    let title = "Renewals";
    create(a, title, &bob).await?;
    until(
        a,
        "A's room",
        &format!("text('room-title') === {}", lit(title)),
    )
    .await?;
    connected(a, "A").await?;
    until(
        &mut b,
        "the room in B's list",
        &format!("!!item({})", lit(title)),
    )
    .await?;
    run(&mut b, &format!("click(item({}))", lit(title))).await?;
    connected(&mut b, "B").await?;
    run(a, SPY).await?;

    // Renewed at 80% of the minute (48 s), well before the first token expires.
    let renewed = "(JSON.parse(sessionStorage.getItem('chat.session') || '{}').token || '')";
    a.wait_for(
        "A to renew its token",
        &script(&format!(
            "{renewed} !== '' && {renewed} !== {}",
            lit(&first)
        )),
        Duration::from_secs(75),
    )
    .await?;
    let second = page_token(a).await?;
    ensure!(
        logged_in.elapsed() < Duration::from_secs(58),
        "renewed only {:?} after login",
        logged_in.elapsed()
    );
    until(
        a,
        "the renewed token handed to the socket",
        &format!(
            "window.__sent.map((f) => JSON.parse(f)).some((e) => e.type === 'auth' && e.token === {})",
            lit(&second)
        ),
    )
    .await?;

    // Past the first token's expiry (a minute, and the server's 5 s of leeway for
    // clocks): the server refuses it, and the page's socket (the same one: nothing was
    // reopened) still carries messages both ways.
    tokio::time::sleep_until(logged_in + Duration::from_secs(70)).await;
    let api = srv.api();
    api.me(&first).await?.expect_status(401)?;
    let socket = run(a, "[window.__opened, $('connection').dataset.state]").await?;
    ensure!(socket == json!([0, "open"]), "A's socket: {socket}");
    let after = "Sent after the first token expired";
    send(a, after).await?;
    until_shown(a, "A", after).await?;
    until_shown(&mut b, "B", after).await?;
    let answer = "Answered after it expired";
    send(&mut b, answer).await?;
    until_shown(a, "A", answer).await?;
    let socket = run(a, "[window.__opened, $('connection').dataset.state]").await?;
    ensure!(socket == json!([0, "open"]), "A's socket: {socket}");

    // A reload starts from the kept pair: logged in, the room and its history back.
    a.reload().await?;
    until(
        a,
        "A's room after a reload",
        &format!("text('room-title') === {}", lit(title)),
    )
    .await?;
    connected(a, "A after a reload").await?;
    until_shown(a, "A after a reload", answer).await?;
    Ok(())
}

// ---- the relay -----------------------------------------------------------------

/// A TCP relay to the server that can drop every connection through it, refuse new
/// ones until restored, and swallow what the server sends.
struct Relay {
    addr: SocketAddr,
    state: Arc<RelayState>,
    accept: tokio::task::JoinHandle<()>,
}

struct RelayState {
    refusing: AtomicBool,
    muted: AtomicBool,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(server: &str) -> anyhow::Result<Self> {
        let upstream = server
            .trim_start_matches("http://")
            .parse::<SocketAddr>()
            .context("server address")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(RelayState {
            refusing: AtomicBool::new(false),
            muted: AtomicBool::new(false),
            cut: tokio::sync::watch::channel(0).0,
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.refusing.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                tokio::spawn(relay(client, upstream, shared.clone()));
            }
        });
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    fn mute(&self, on: bool) {
        self.state.muted.store(on, Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones until [`Relay::restore`].
    fn cut(&self) {
        self.state.refusing.store(true, Ordering::SeqCst);
        self.state.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.mute(false);
        self.state.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, state: Arc<RelayState>) {
    let mut cut = state.cut.subscribe();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return std::io::Result::Ok(());
            }
            if !state.muted.load(Ordering::SeqCst) {
                client_write.write_all(&buf[..n]).await?;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
    // Both sockets close here.
}
