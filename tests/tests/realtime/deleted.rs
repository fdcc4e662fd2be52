//! Deleted means gone: once a message is deleted, a client that resumes from before it
//! (or a member added afterwards) receives no trace of its content, first or edited,
//! in anything the socket sends; the message keeps its place in the stream as a
//! `message` event with empty content and `is_deleted`, its edits likewise, followed
//! by its reactions and the delete. History leaves it out.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;
use tests::realtime::*;
use tests::ws::ws_url;

/// What a deleted message said, and what its edit said: neither may come back.
const SECRET: &str = "launch code 0451";
const SECRET_EDIT: &str = "launch code 0452";

/// Every frame `who` receives on connecting with `since`, up to and including its own
/// joined event, as the text that arrived (so a secret anywhere in a frame is found).
async fn resume_frames(
    srv: &TestServer,
    conv: &str,
    who: &Session,
    since: u64,
) -> anyhow::Result<(Vec<Value>, String)> {
    let url = format!(
        "{}&since={since}",
        ws_url(&srv.ws_base_url(), conv, &who.token)
    );
    let mut ws = WsClient::connect_url(&url).await?;
    let mut events = Vec::new();
    let mut text = String::new();
    loop {
        match ws.recv().await? {
            WsEvent::Json(v) => {
                text.push_str(&v.to_string());
                text.push('\n');
                let done = is_joined(&v, who);
                events.push(v);
                if done {
                    break;
                }
            }
            other => bail!("{}: unexpected {other:?} while resuming", who.username),
        }
    }
    ws.close().await?;
    Ok((events, text))
}

/// The stream events (those with a position) among `events`.
fn stream_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|v| matches!(kind(v), "message" | "edit" | "delete" | "reaction"))
        .collect()
}

/// Nothing of the secret in what was received or in history, and the deleted message
/// and its edit in their places without content.
async fn check_gone(
    api: &Api,
    who: &Session,
    conv: &str,
    (events, text): (Vec<Value>, String),
    deleted_id: &str,
) -> anyhow::Result<()> {
    ensure!(
        !text.contains(SECRET) && !text.contains(SECRET_EDIT),
        "{} received deleted content:\n{text}",
        who.username
    );
    let stream = stream_events(&events);
    let kinds: Vec<&str> = stream.iter().map(|v| kind(v)).collect();
    ensure!(
        kinds == ["message", "edit", "reaction", "delete", "message"],
        "the deleted message, its edit, reaction and delete, then the kept one: {kinds:?}"
    );
    let positions: Vec<u64> = stream.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    ensure!(
        positions == [1, 2, 3, 4, 5],
        "every place kept: {positions:?}"
    );
    let (message, edit) = (stream[0], stream[1]);
    ensure!(
        message["message_id"] == deleted_id
            && message["content"] == ""
            && message["is_deleted"] == true
            && message["client_id"] == "secret-send",
        "the deleted message in its place: {message}"
    );
    ensure!(
        edit["message_id"] == deleted_id && edit["content"] == "" && edit["is_deleted"] == true,
        "its edit in its place: {edit}"
    );
    ensure!(
        stream[4]["content"] == "still here" && stream[4].get("is_deleted").is_none(),
        "a live message is replayed as it was sent: {}",
        stream[4]
    );
    let history = full_history(api, who, conv).await?;
    let shown = serde_json::to_string(&history)?;
    ensure!(
        history.len() == 1 && !shown.contains(SECRET) && !shown.contains(SECRET_EDIT),
        "history shows only the kept message: {shown}"
    );
    Ok(())
}

/// Alice posts (with a `client_id`) and edits, bob reacts, alice deletes, then bob
/// posts; carol, a member, is away the whole time. Returns the users, the
/// conversation and the deleted message's id.
async fn post_and_delete(
    srv: &TestServer,
    api: &Api,
) -> anyhow::Result<([Session; 3], String, String)> {
    let (users, conv) = group(api, &["da", "db", "dc"]).await?;
    let [mut a, mut b] = join_settled(srv, &conv, [&users[0], &users[1]]).await?;
    a.send_json(&json!({"type": "message", "content": SECRET, "client_id": "secret-send"}))
        .await?;
    let sent = a.recv_type("message").await?;
    let id = field(&sent, "message_id").to_string();
    a.send_json(&json!({"type": "edit", "message_id": id, "content": SECRET_EDIT}))
        .await?;
    // The edit and the reaction come from two sockets: the reaction waits for the
    // edit, so their positions are in the order the test checks.
    b.wait_for("the edit", |v| kind(v) == "edit").await?;
    b.send_json(&json!({"type": "reaction", "message_id": id, "emoji": "👀"}))
        .await?;
    b.wait_for("the reaction", |v| kind(v) == "reaction")
        .await?;
    a.send_json(&json!({"type": "delete", "message_id": id}))
        .await?;
    b.wait_for("the delete", |v| kind(v) == "delete").await?;
    b.send_message("still here").await?;
    close_all([a, b]).await?;
    Ok((users, conv, id))
}

/// Carol comes back with `since=0`: the deleted message's content is nowhere.
async fn a_resuming_member_gets_no_deleted_content(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([_, _, carol], conv, id) = post_and_delete(srv, &api).await?;
    let replay = resume_frames(srv, &conv, &carol, 0).await?;
    check_gone(&api, &carol, &conv, replay, &id).await
}

/// Dave is added to the conversation after the delete and connects with `since=0`:
/// he never learns what the deleted message said.
async fn a_member_added_after_the_delete_gets_none(srv: &mut TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, _, _], conv, id) = post_and_delete(srv, &api).await?;
    let dave = api.new_user("dd").await?;
    api.add_participant(&alice, &conv, &dave.user_id)
        .await?
        .expect(200)?;
    let replay = resume_frames(srv, &conv, &dave, 0).await?;
    check_gone(&api, &dave, &conv, replay, &id).await
}

tests::e2e_on!(
    a_resuming_member_gets_no_deleted_content,
    |o| o.shards(2),
    [sqlite_uring => (Sqlite, Uring), postgres_epoll => (Postgres, Epoll)]
);

tests::e2e_on!(
    a_member_added_after_the_delete_gets_none,
    |o| o.shards(2),
    [sqlite_epoll => (Sqlite, Epoll), postgres_uring => (Postgres, Uring)]
);
