//! Direct conversations (docs/protocol.md "Roles, direct and archived
//! conversations"): one per pair even when both people ask at once, what they refuse
//! (new members, roles, removing the other), leaving and coming back, and the quota
//! they spend.

use tests::prelude::*;

fn unknown_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn direct_body(with: &[&Session]) -> Value {
    let ids: Vec<&str> = with.iter().map(|s| s.user_id.as_str()).collect();
    json!({"name": null, "is_group": false, "participant_ids": ids})
}

/// `is_group: false` with one other person is the pair's one conversation: created
/// once (201), then answered (200) to either of them, with whoever had left back in. It
/// gains no members, has no roles, and removes nobody; either may rename it or delete
/// it. With two others, or as a group, it is an ordinary conversation.
async fn direct_conversations(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol] = api.new_users(["dm_a", "dm_b", "dm_c"]).await?;
    let pair = {
        let mut ids = vec![alice.user_id.clone(), bob.user_id.clone()];
        ids.sort();
        ids
    };

    let created = api
        .create_conversation_raw(&alice, &direct_body(&[&bob]))
        .await?
        .expect(201)?;
    let id = str_field(&created, "id")?;
    ensure!(
        created["is_direct"] == true && created["is_group"] == false,
        "{created}"
    );
    ensure!(participant_ids(&created)? == pair, "{created}");
    for (who, other) in [(&alice, &bob), (&bob, &alice), (&alice, &bob)] {
        let again = api
            .create_conversation_raw(who, &direct_body(&[other]))
            .await?
            .expect(200)
            .with_context(|| format!("asked again by {}", who.username))?;
        ensure!(
            again["id"] == id.as_str() && again["is_direct"] == true,
            "{again}"
        );
        ensure!(participant_ids(&again)? == pair, "{again}");
    }
    for who in [&alice, &bob] {
        ensure!(
            api.conversation_ids(who).await? == [id.clone()],
            "{}'s list holds the pair's conversation once",
            who.username
        );
    }
    let got = api.get_conversation(&bob, &id).await?.expect(200)?;
    ensure!(got["is_direct"] == true, "{got}");
    api.check_roles(
        &bob,
        &id,
        &[(&alice, "member"), (&bob, "member")],
        "a direct conversation has no roles",
    )
    .await?;

    // No one joins, no roles, no one removed.
    api.add_participant(&alice, &id, &carol.user_id)
        .await?
        .expect_error(403)?;
    for role in ["admin", "owner", "member"] {
        api.set_role(&alice, &id, &bob.user_id, role)
            .await?
            .expect_error(403)?;
    }
    api.remove_participant(&alice, &id, &bob.user_id)
        .await?
        .expect_error(403)?;
    ensure!(api.participants(&alice, &id).await? == pair, "unchanged");

    // Either may rename it.
    let renamed = api
        .update_conversation(&bob, &id, &json!({"name": "us two"}))
        .await?
        .expect(200)?;
    ensure!(renamed["name"] == "us two", "{renamed}");

    // Leaving, and asking again.
    api.remove_participant(&bob, &id, &bob.user_id)
        .await?
        .expect_status(204)?;
    api.get_conversation(&bob, &id).await?.expect_error(403)?;
    ensure!(
        api.participants(&alice, &id).await? == [alice.user_id.clone()],
        "bob left"
    );
    ensure!(api.conversation_ids(&bob).await?.is_empty(), "bob left");
    let back = api
        .create_conversation_raw(&bob, &direct_body(&[&alice]))
        .await?
        .expect(200)?;
    ensure!(back["id"] == id.as_str(), "{back}");
    ensure!(
        api.participants(&alice, &id).await? == pair,
        "the leaver is back in"
    );
    ensure!(
        api.get_conversation(&bob, &id).await?.expect(200)?["name"] == "us two",
        "the same conversation"
    );
    // The one who stayed asks; the one who left is back in.
    api.remove_participant(&alice, &id, &alice.user_id)
        .await?
        .expect_status(204)?;
    let back = api
        .create_conversation_raw(&bob, &direct_body(&[&alice]))
        .await?
        .expect(200)?;
    ensure!(back["id"] == id.as_str(), "{back}");
    ensure!(participant_ids(&back)? == pair, "{back}");
    ensure!(
        api.participants(&bob, &id).await? == pair,
        "alice is back in"
    );
    ensure!(
        api.conversation_ids(&alice).await? == [id.clone()],
        "alice lists it again"
    );

    // Two others: not direct, a new one each time; a group of two is not direct either.
    let mut others = Vec::new();
    for body in [
        direct_body(&[&bob, &carol]),
        direct_body(&[&bob, &carol]),
        json!({"name": "pair group", "is_group": true, "participant_ids": [bob.user_id]}),
        json!({"name": "pair group", "is_group": true, "participant_ids": [bob.user_id]}),
    ] {
        let made = api
            .create_conversation_raw(&alice, &body)
            .await?
            .expect(201)
            .with_context(|| format!("body {body}"))?;
        ensure!(made["is_direct"] == false, "{made}");
        let made_id = str_field(&made, "id")?;
        ensure!(
            made_id != id && !others.contains(&made_id),
            "not a new conversation: {made}"
        );
        others.push(made_id);
    }

    // Either may delete it; then the pair starts afresh.
    api.delete_conversation(&alice, &id)
        .await?
        .expect_status(204)?;
    api.get_conversation(&bob, &id).await?.expect_error(404)?;
    let fresh = api
        .create_conversation_raw(&bob, &direct_body(&[&alice]))
        .await?
        .expect(201)?;
    ensure!(
        fresh["id"] != id.as_str() && fresh["is_direct"] == true,
        "after the deletion: {fresh}"
    );
    Ok(())
}

/// Both people of 20 pairs ask for their direct conversation at the same moment (all
/// pairs at once): each pair gets one conversation, created once.
async fn direct_conversation_race(srv: &TestServer) -> anyhow::Result<()> {
    const PAIRS: usize = 20;
    let users = tests::realtime::members(srv, 2 * PAIRS).await?;
    let api = srv.api();
    tests::client::race_direct_conversations(&users, [&api, &api]).await
}

/// Only what is created spends the quota of new conversations (2 here): a direct
/// conversation asked for again, or with an unknown person (404), spends none.
async fn direct_answers_spend_no_quota(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["dq_a", "dq_b"]).await?;
    let nobody = unknown_id();
    api.create_conversation_raw(
        &alice,
        &json!({"is_group": false, "participant_ids": [nobody]}),
    )
    .await?
    .expect_detail(404, &format!("User {nobody} not found"))?;
    api.create_conversation_raw(&alice, &direct_body(&[&bob]))
        .await?
        .expect(201)?;
    for _ in 0..5 {
        api.create_conversation_raw(&alice, &direct_body(&[&bob]))
            .await?
            .expect(200)?;
    }
    api.new_conversation(&alice, "second", &[]).await?;
    let refused = api
        .create_conversation_raw(&alice, &json!({"name": "third", "participant_ids": []}))
        .await?;
    refused.expect_detail(429, "Too many new conversations, retry later")?;
    ensure!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    // Bob created nothing: his request answers the pair's conversation.
    api.create_conversation_raw(&bob, &direct_body(&[&alice]))
        .await?
        .expect(200)?;
    Ok(())
}

tests::e2e!(direct_conversations);

tests::e2e!(
    options = |o| o.arg("--max-new-conversations").arg("2");
    direct_answers_spend_no_quota
);

tests::e2e!(
    options = |o| o.env("REGISTER_MAX_PER_ADDRESS", "0");
    direct_conversation_race
);
