//! Conversations: create, list, get, add and remove participants.
#![allow(clippy::unwrap_used)]

use tests::prelude::*;

fn check_conversation_shape(conv: &Value) -> anyhow::Result<()> {
    ensure!(
        conv.get("id")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        "conversation without id: {conv}"
    );
    ensure!(
        conv.get("name").is_some(),
        "conversation without name: {conv}"
    );
    ensure!(
        conv.get("description").is_some(),
        "conversation without description: {conv}"
    );
    ensure!(
        conv.get("is_group").is_some_and(Value::is_boolean),
        "is_group: {conv}"
    );
    timestamp_field(conv, "created_at")?;
    timestamp_field(conv, "updated_at")?;
    Ok(())
}

/// Asserts that `who` is in no conversation at all, after `what`.
async fn ensure_no_conversations(api: &Api, who: &Session, what: &str) -> anyhow::Result<()> {
    let list = api.conversation_ids(who).await?;
    ensure!(
        list.is_empty(),
        "{what} left {} a conversation: {list:?}",
        who.username
    );
    Ok(())
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// 201 with an echo of the fields; the creator is a participant even when not listed.
async fn create_conversation(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["alice", "bob"]).await?;
    let body = json!({
        "name": "Team Chat",
        "description": "Our team discussion",
        "is_group": true,
        "participant_ids": [bob.user_id],
    });
    let created = api
        .create_conversation_raw(&alice, &body)
        .await?
        .expect(201)?;
    check_conversation_shape(&created)?;
    ensure!(created["name"] == "Team Chat", "{created}");
    ensure!(created["description"] == "Our team discussion", "{created}");
    ensure!(created["is_group"] == true, "{created}");
    let id = str_field(&created, "id")?;
    let expected = sorted(vec![alice.user_id.clone(), bob.user_id.clone()]);
    if created.get("participant_ids").is_some() {
        ensure!(
            participant_ids(&created)? == expected,
            "participants in 201: {created}"
        );
    }

    let got = api.get_conversation(&alice, &id).await?.expect(200)?;
    check_conversation_shape(&got)?;
    ensure!(got["id"] == id.as_str(), "{got}");
    ensure!(
        got["name"] == "Team Chat" && got["description"] == "Our team discussion",
        "{got}"
    );
    ensure!(participant_ids(&got)? == expected, "participant_ids: {got}");
    ensure!(
        got["created_at"] == created["created_at"],
        "created_at: {got} vs {created}"
    );
    // The listed participant sees it too.
    let by_bob = api.participants(&bob, &id).await?;
    ensure!(by_bob == expected, "{by_bob:?}");

    // Listing the creator explicitly (and twice) does not duplicate anyone.
    let body = json!({
        "name": "Direct",
        "description": "one to one",
        "is_group": false,
        "participant_ids": [alice.user_id, bob.user_id, bob.user_id],
    });
    let direct = api
        .create_conversation_raw(&alice, &body)
        .await?
        .expect(201)?;
    ensure!(direct["is_group"] == false, "{direct}");
    let got = api.participants(&alice, &str_field(&direct, "id")?).await?;
    ensure!(got == expected, "duplicate participants: {got:?}");

    // No participants at all: the creator alone.
    let body =
        json!({"name": "Notes", "description": "mine", "is_group": false, "participant_ids": []});
    let solo = api
        .create_conversation_raw(&alice, &body)
        .await?
        .expect(201)?;
    let got = api.participants(&alice, &str_field(&solo, "id")?).await?;
    ensure!(got == vec![alice.user_id.clone()], "{got:?}");
    Ok(())
}

/// Optional fields may be left out or null, as in a FastAPI model with defaults.
async fn create_with_defaults(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let created = api
        .create_conversation_raw(&alice, &json!({"name": "Just a name"}))
        .await?
        .expect(201)?;
    check_conversation_shape(&created)?;
    ensure!(created["name"] == "Just a name", "{created}");
    let got = api
        .participants(&alice, &str_field(&created, "id")?)
        .await?;
    ensure!(got == vec![alice.user_id.clone()], "{got:?}");

    let created = api
        .create_conversation_raw(
            &alice,
            &json!({"name": "No description", "description": null, "is_group": true, "participant_ids": []}),
        )
        .await?
        .expect(201)?;
    ensure!(
        created["description"].is_null(),
        "description should stay null: {created}"
    );
    Ok(())
}

/// Unknown participant: 404 `User <id> not found`, and nothing is created.
async fn create_unknown_participant(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["alice", "bob"]).await?;
    for ghost in [uuid::Uuid::new_v4().to_string(), "user-id-2".to_string()] {
        let body = json!({
            "name": "Ghost Chat",
            "description": "with a ghost",
            "is_group": true,
            "participant_ids": [bob.user_id, ghost],
        });
        api.create_conversation_raw(&alice, &body)
            .await?
            .expect_detail(404, &format!("User {ghost} not found"))?;
    }
    for who in [&alice, &bob] {
        ensure_no_conversations(&api, who, "a failed create").await?;
    }
    Ok(())
}

/// 401 without token, 422 for bad bodies.
async fn create_invalid(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("alice").await?;
    let body = json!({"name": "x", "description": "y", "is_group": true, "participant_ids": []});
    for token in [None, Some("garbage")] {
        api.post("/api/chat/conversations", token, &body)
            .await?
            .expect_error(401)?;
    }

    for (bad, field) in [
        (
            json!({"name": "x", "description": "y", "is_group": true, "participant_ids": "not-a-list"}),
            "participant_ids",
        ),
        (
            json!({"name": "x", "description": "y", "is_group": true, "participant_ids": [5]}),
            "participant_ids",
        ),
        (
            json!({"name": ["x"], "description": "y", "is_group": true, "participant_ids": []}),
            "name",
        ),
        (
            json!({"name": "x", "description": "y", "is_group": {"a": 1}, "participant_ids": []}),
            "is_group",
        ),
    ] {
        api.create_conversation_raw(&alice, &bad)
            .await?
            .expect_validation(Some(field))
            .with_context(|| format!("body {bad}"))?;
    }
    api.post_json_bytes(
        "/api/chat/conversations",
        Some(&alice.token),
        b"{\"name\": ",
    )
    .await?
    .expect_validation(None)?;

    ensure_no_conversations(&api, &alice, "an invalid create").await?;
    Ok(())
}

/// Only the caller's conversations, the most recently created first.
async fn list_conversations(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave] = api.new_users(["alice", "bob", "carol", "dave"]).await?;

    let empty = api.list_conversations(&alice).await?.expect(200)?;
    ensure!(as_list(&empty)?.is_empty(), "{empty}");

    let first = api.new_conversation(&alice, "first", &[]).await?;
    let second = api.new_conversation(&alice, "second", &[&bob]).await?;
    let third = api
        .new_conversation(&bob, "third", &[&alice, &carol])
        .await?;
    // Someone else's conversation never shows up.
    api.new_conversation(&dave, "dave's", &[]).await?;

    let list = api.list_conversations(&alice).await?.expect(200)?;
    let list = as_list(&list)?;
    for conv in list {
        check_conversation_shape(conv)?;
    }
    ensure!(
        ids(list) == [&*third, &*second, &*first],
        "alice's list should be [third, second, first]: {list:?}"
    );
    let list = api.conversation_ids(&bob).await?;
    ensure!(
        list == [&*third, &*second],
        "bob's list should be [third, second]: {list:?}"
    );
    let list = api.conversation_ids(&carol).await?;
    ensure!(
        list == [&*third],
        "carol's list should be [third]: {list:?}"
    );

    // Being added makes it appear for the new member.
    api.add_participant(&alice, &first, &carol.user_id)
        .await?
        .expect(200)?;
    let list = api.conversation_ids(&carol).await?;
    ensure!(
        sorted(list.clone()) == sorted(vec![third.clone(), first.clone()]),
        "carol's list after being added: {list:?}"
    );

    api.get("/api/chat/conversations", None)
        .await?
        .expect_error(401)?;
    Ok(())
}

/// 200 for members with participant_ids, 403 for others, 404 for unknown ids.
async fn get_conversation(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, eve] = api.new_users(["alice", "bob", "eve"]).await?;
    let id = api.new_conversation(&alice, "private", &[&bob]).await?;

    let got = api.get_conversation(&bob, &id).await?.expect(200)?;
    check_conversation_shape(&got)?;
    ensure!(
        participant_ids(&got)? == sorted(vec![alice.user_id.clone(), bob.user_id.clone()]),
        "{got}"
    );

    for (who, conv, status) in [
        (&eve, id.clone(), 403),
        (&eve, uuid::Uuid::new_v4().to_string(), 404),
        (&alice, uuid::Uuid::new_v4().to_string(), 404),
        (&alice, "conv-123".to_string(), 404),
    ] {
        api.get_conversation(who, &conv)
            .await?
            .expect_error(status)
            .with_context(|| format!("{} getting {conv}", who.username))?;
    }
    api.get(&format!("/api/chat/conversations/{id}"), None)
        .await?
        .expect_error(401)?;
    Ok(())
}

/// Members may add users (200, the conversation); 403 for non-members, 404 for unknown
/// users or conversations; re-adding is 200 and changes nothing.
async fn add_participant(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave] = api.new_users(["alice", "bob", "carol", "dave"]).await?;
    let id = api.new_conversation(&alice, "growing", &[&bob]).await?;

    // Carol cannot see it yet.
    api.get_conversation(&carol, &id).await?.expect_error(403)?;

    // Bob is a member but not the creator: adding is allowed.
    let added = api
        .add_participant(&bob, &id, &carol.user_id)
        .await?
        .expect(200)?;
    check_conversation_shape(&added)?;
    ensure!(
        added["id"] == id.as_str(),
        "add returns the conversation: {added}"
    );
    let three = sorted(vec![
        alice.user_id.clone(),
        bob.user_id.clone(),
        carol.user_id.clone(),
    ]);
    let got = api.participants(&carol, &id).await?;
    ensure!(got == three, "{got:?}");

    // Re-adding: 200, unchanged.
    let again = api
        .add_participant(&alice, &id, &carol.user_id)
        .await?
        .expect(200)?;
    ensure!(again["id"] == id.as_str(), "{again}");
    let got = api.participants(&alice, &id).await?;
    ensure!(got == three, "re-add changed participants: {got:?}");
    api.add_participant(&alice, &id, &alice.user_id)
        .await?
        .expect(200)?;
    let got = api.participants(&alice, &id).await?;
    ensure!(
        got == three,
        "re-adding the creator changed participants: {got:?}"
    );

    // Non-members may not add anyone, themselves included.
    api.add_participant(&dave, &id, &dave.user_id)
        .await?
        .expect_error(403)?;
    api.add_participant(&dave, &id, &carol.user_id)
        .await?
        .expect_error(403)?;
    api.get_conversation(&dave, &id).await?.expect_error(403)?;

    // Unknown user, unknown conversation.
    let ghost = uuid::Uuid::new_v4().to_string();
    api.add_participant(&alice, &id, &ghost)
        .await?
        .expect_detail(404, &format!("User {ghost} not found"))?;
    api.add_participant(&alice, &uuid::Uuid::new_v4().to_string(), &dave.user_id)
        .await?
        .expect_error(404)?;
    api.add_participant(&alice, "conv-123", &dave.user_id)
        .await?
        .expect_error(404)?;

    // Bad body, no token.
    api.post(
        &format!("/api/chat/conversations/{id}/participants"),
        Some(&alice.token),
        &json!({}),
    )
    .await?
    .expect_validation(Some("user_id"))?;
    api.post(
        &format!("/api/chat/conversations/{id}/participants"),
        None,
        &json!({"user_id": dave.user_id}),
    )
    .await?
    .expect_error(401)?;

    let got = api.participants(&alice, &id).await?;
    ensure!(got == three, "failed adds changed participants: {got:?}");
    Ok(())
}

/// 204; members may remove themselves; removing others is the creator's right only;
/// a removed user loses access.
async fn remove_participant(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave] = api.new_users(["alice", "bob", "carol", "dave"]).await?;
    let id = api
        .new_conversation(&alice, "shrinking", &[&bob, &carol, &dave])
        .await?;

    // Bob is not the creator: may not remove Carol.
    api.remove_participant(&bob, &id, &carol.user_id)
        .await?
        .expect_error(403)?;

    // Carol removes herself.
    let reply = api.remove_participant(&carol, &id, &carol.user_id).await?;
    reply.expect_status(204)?;
    ensure!(reply.body.is_empty(), "204 with a body: {:?}", reply.text());
    api.get_conversation(&carol, &id).await?.expect_error(403)?;
    api.history(&carol, &id, "").await?.expect_error(403)?;
    let list = api.conversation_ids(&carol).await?;
    ensure!(!list.contains(&id), "removed user still lists it: {list:?}");
    // And, no longer a member, cannot add herself back.
    api.add_participant(&carol, &id, &carol.user_id)
        .await?
        .expect_error(403)?;

    // The creator removes Bob.
    api.remove_participant(&alice, &id, &bob.user_id)
        .await?
        .expect_status(204)?;
    api.get_conversation(&bob, &id).await?.expect_error(403)?;

    let got = api.participants(&alice, &id).await?;
    ensure!(
        got == sorted(vec![alice.user_id.clone(), dave.user_id.clone()]),
        "{got:?}"
    );

    // Non-members cannot remove anyone; unknown conversation is 404; no token is 401.
    let eve = api.new_user("eve").await?;
    api.remove_participant(&eve, &id, &dave.user_id)
        .await?
        .expect_error(403)?;
    api.remove_participant(&alice, &uuid::Uuid::new_v4().to_string(), &dave.user_id)
        .await?
        .expect_error(404)?;
    api.delete(
        &format!("/api/chat/conversations/{id}/participants/{}", dave.user_id),
        None,
    )
    .await?
    .expect_error(401)?;

    // Dave is still there after all the refused attempts, and may leave on his own.
    api.get_conversation(&dave, &id).await?.expect(200)?;
    api.remove_participant(&dave, &id, &dave.user_id)
        .await?
        .expect_status(204)?;
    api.get_conversation(&dave, &id).await?.expect_error(403)?;
    Ok(())
}

tests::e2e!(
    create_conversation,
    create_with_defaults,
    create_unknown_participant,
    create_invalid,
    list_conversations,
    get_conversation,
    add_participant,
    remove_participant,
);
