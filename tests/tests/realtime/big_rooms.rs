//! Conversations larger than the presence list limit (`--presence-list-limit`, 200 by
//! default): a join storm must not send every member the whole list on every join.
//! Above the limit, joined and left events carry `active_count` and no `active_users`,
//! the joiner still gets its own `joined` (with its position) at once, the others hear
//! of changes at most once per interval (summed up), and the list is paged over REST.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use tests::prelude::*;
use tests::realtime::*;
use tokio::task::JoinSet;

/// The server's default list limit.
const LIMIT: usize = 200;

/// 250 members connect at once (a reconnect storm) after one who watches: everyone
/// sees its own `joined` (with `seq`), those past the limit without the list; the
/// watcher's last announcement counts all 250; REST pages through every one of them.
async fn a_big_room_announces_counts_and_pages_the_list(srv: &TestServer) -> anyhow::Result<()> {
    let n = LIMIT + 50;
    let (users, conv) = room(srv, n).await?;
    let (mut watcher, first) = join(srv, &conv, &users[0]).await?;
    ensure!(
        active_users(&first)? == vec![users[0].user_id.clone()],
        "a small room keeps the guide's list: {first}"
    );
    ensure!(first["active_count"] == 1, "{first}");

    let mut storm = JoinSet::new();
    for who in users[1..].iter().cloned() {
        let (srv_ws, conv) = (srv.ws_base_url(), conv.clone());
        storm.spawn(async move {
            let mut ws = WsClient::connect(&srv_ws, &conv, &who.token).await?;
            let own = ws
                .wait_for("its own joined event", |v| is_joined(v, &who))
                .await?;
            anyhow::Ok((ws, own))
        });
    }
    let mut clients = Vec::new();
    let mut without_list = 0;
    while let Some(joined) = storm.join_next().await {
        let (ws, own) = joined??;
        ensure!(
            own["seq"].is_u64(),
            "a joiner's own event has its seq: {own}"
        );
        let count = own["active_count"].as_u64().context("active_count")? as usize;
        match own.get("active_users") {
            Some(list) => ensure!(
                count <= LIMIT && list.as_array().map(Vec::len) == Some(count),
                "a list past the limit, or one that disagrees with the count: {own}"
            ),
            None => {
                ensure!(count > LIMIT, "no list within the limit: {own}");
                without_list += 1;
            }
        }
        clients.push(ws);
    }
    ensure!(without_list > 0, "nobody joined past the limit");

    // The watcher hears every change, counted, the last with everyone in.
    let mut seen = 0;
    let last = loop {
        let ev = watcher
            .recv_json()
            .await
            .with_context(|| format!("after {seen} announcements"))?;
        if kind(&ev) != "system" {
            continue;
        }
        seen += 1;
        ensure!(
            ev.get("active_users").is_none() || ev["active_count"].as_u64() <= Some(LIMIT as u64),
            "a list past the limit: {ev}"
        );
        if ev["active_count"] == n as u64 {
            break ev;
        }
    };
    ensure!(
        seen < n - 1,
        "{seen} announcements for {} joins: nothing was summed up",
        n - 1
    );
    let _ = last;

    // The list, a page at a time, in arrival order: everyone once.
    let api = srv.api();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(cursor) => format!("limit=64&after={cursor}"),
            None => "limit=64".to_string(),
        };
        let page = api.presence(&users[0], &conv, &query).await?.expect(200)?;
        ensure!(page["active_count"] == n as u64, "{page}");
        for u in page["users"].as_array().context("users")? {
            listed.push(str_field(u, "id")?);
        }
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(cursor) => after = Some(cursor.to_string()),
            None => break,
        }
    }
    ensure!(listed.len() == n, "listed {} of {n}", listed.len());
    ensure!(
        listed[0] == users[0].user_id,
        "arrival order: the watcher first"
    );
    let unique: HashSet<&String> = listed.iter().collect();
    ensure!(unique.len() == n, "someone listed twice");

    // Not a member: refused like the conversation itself.
    let stranger = srv.api().new_user("stranger").await?;
    srv.api()
        .presence(&stranger, &conv, "")
        .await?
        .expect_status(403)?;

    // A storm of leaves is summed up too, down to the watcher alone.
    close_all(clients).await?;
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ev = watcher.recv_json().await?;
            if kind(&ev) == "system" && ev["active_count"] == 1 {
                return anyhow::Ok(ev);
            }
        }
    })
    .await
    .context("the watcher never heard it was alone again")??;
    ensure!(
        active_users(&last)? == vec![users[0].user_id.clone()],
        "back within the limit, the list again: {last}"
    );
    Ok(())
}

tests::e2e!(
    // Hundreds of members are registered from one address.
    options = |o| o.env("REGISTER_MAX_PER_ADDRESS", "0");
    a_big_room_announces_counts_and_pages_the_list
);
