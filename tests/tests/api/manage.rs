//! Managing conversations (docs/protocol.md "Roles, direct and archived
//! conversations"): the member list with roles and its pages; renaming, describing and
//! archiving; role changes and hand-over; who may remove whom, and who inherits from an
//! owner who leaves; an owner's concurrent requests decided as if one after the other
//! (two hand-overs, a hand-over and a delete); deleting a conversation; what
//! archiving refuses. Direct conversations are `direct`'s.

use std::collections::BTreeMap;

use tests::prelude::*;

fn unknown_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn next_cursor(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The creator is the owner, everyone else a member; the list has exactly the fields
/// of the contract, in user id order; pages of one meet without gap or repeat, the
/// last without a cursor; a bad cursor or limit is a 422, an outsider a 403, an
/// unknown conversation a 404.
async fn participants_list(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave, eve] = api
        .new_users(["pl_a", "pl_b", "pl_c", "pl_d", "pl_e"])
        .await?;
    let conv = api
        .new_conversation(&alice, "members", &[&bob, &carol, &dave])
        .await?;

    let all = api.members(&bob, &conv).await?;
    let mut want_ids: Vec<String> = [&alice, &bob, &carol, &dave]
        .iter()
        .map(|s| s.user_id.clone())
        .collect();
    want_ids.sort();
    let got_ids: Vec<String> = all
        .iter()
        .map(|p| str_field(p, "user_id"))
        .collect::<anyhow::Result<_>>()?;
    ensure!(got_ids == want_ids, "not in user id order: {all:?}");
    for p in &all {
        let keys: Vec<&str> = p
            .as_object()
            .context("a participant is an object")?
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = keys;
        keys.sort_unstable();
        ensure!(
            keys == ["joined_at", "role", "user_id", "username"],
            "participant fields: {p}"
        );
        timestamp_field(p, "joined_at")?;
        let who = [&alice, &bob, &carol, &dave]
            .into_iter()
            .find(|s| p["user_id"] == s.user_id.as_str())
            .context("a listed participant is one of the four")?;
        ensure!(p["username"] == who.username.as_str(), "username: {p}");
    }
    api.check_roles(
        &carol,
        &conv,
        &[
            (&alice, "owner"),
            (&bob, "member"),
            (&carol, "member"),
            (&dave, "member"),
        ],
        "after creation",
    )
    .await?;

    // Pages of one, following X-Next-Cursor.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for page_no in 0.. {
        ensure!(page_no < 10, "paging did not end: {paged:?}");
        let query = match &cursor {
            Some(c) => format!("limit=1&cursor={c}"),
            None => "limit=1".to_string(),
        };
        let reply = api.participant_page(&alice, &conv, &query).await?;
        let page = reply.expect(200)?;
        let page = as_list(&page)?;
        ensure!(page.len() <= 1, "limit=1 gave {page:?}");
        paged.extend(page.iter().cloned());
        cursor = next_cursor(&reply);
        if cursor.is_none() {
            break;
        }
        ensure!(
            page.len() == 1,
            "an empty page with a cursor: {}",
            reply.text()
        );
    }
    ensure!(
        paged == all,
        "pages of one {paged:?} differ from the whole list {all:?}"
    );
    // A page that holds everything has no cursor.
    let reply = api.participant_page(&alice, &conv, "limit=4").await?;
    ensure!(as_list(&reply.expect(200)?)?.len() == 4, "{}", reply.text());
    ensure!(
        next_cursor(&reply).is_none(),
        "cursor on the last page: {:?}",
        reply.headers
    );
    // Two pages of two: the cursor is the last one shown.
    let first = api.participant_page(&alice, &conv, "limit=2").await?;
    let cursor = next_cursor(&first).context("a cursor after 2 of 4")?;
    let second = api
        .participant_page(&alice, &conv, &format!("limit=2&cursor={cursor}"))
        .await?
        .expect(200)?;
    let mut both = as_list(&first.expect(200)?)?.clone();
    both.extend(as_list(&second)?.iter().cloned());
    ensure!(both == all, "two pages of two: {both:?}");

    api.participant_page(&alice, &conv, "cursor=not-a-cursor")
        .await?
        .expect_validation(Some("cursor"))?;
    for limit in ["0", "501", "x"] {
        api.participant_page(&alice, &conv, &format!("limit={limit}"))
            .await?
            .expect_validation(Some("limit"))?;
    }
    api.participant_page(&eve, &conv, "")
        .await?
        .expect_error(403)?;
    api.participant_page(&alice, &unknown_id(), "")
        .await?
        .expect_error(404)?;
    api.get(
        &format!("/api/chat/conversations/{conv}/participants"),
        None,
    )
    .await?
    .expect_error(401)?;
    Ok(())
}

/// Owners and admins rename, describe, archive and unarchive; a field left out stays,
/// `null` clears; members and outsiders get 403, unknown conversations 404, unknown
/// fields and bad names 422, and a refused change changes nothing.
async fn patch_conversation(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, eve] = api.new_users(["pc_a", "pc_b", "pc_c", "pc_e"]).await?;
    let created = api
        .create_conversation(&alice, "Before", &[&bob, &carol])
        .await?;
    let conv = str_field(&created, "id")?;
    ensure!(
        created["archived_at"].is_null() && created["is_direct"] == false,
        "a new group: {created}"
    );
    api.set_role(&alice, &conv, &bob.user_id, "admin")
        .await?
        .expect(200)?;

    // The owner renames; the description, left out, stays.
    let renamed = api
        .update_conversation(&alice, &conv, &json!({"name": "After"}))
        .await?
        .expect(200)?;
    ensure!(
        renamed["id"] == conv.as_str()
            && renamed["name"] == "After"
            && renamed["description"] == "Before description"
            && renamed["archived_at"].is_null()
            && renamed["is_group"] == true
            && renamed["is_direct"] == false
            && renamed["created_at"] == created["created_at"],
        "{renamed}"
    );
    timestamp_field(&renamed, "updated_at")?;
    let got = api.get_conversation(&carol, &conv).await?.expect(200)?;
    ensure!(
        got["name"] == "After" && got["description"] == "Before description",
        "GET after the rename: {got}"
    );

    // The admin describes; the name stays. Tabs and line breaks are allowed.
    let described = api
        .update_conversation(&bob, &conv, &json!({"description": "line one\n\tline two"}))
        .await?
        .expect(200)?;
    ensure!(
        described["name"] == "After" && described["description"] == "line one\n\tline two",
        "{described}"
    );
    // `null` clears.
    let cleared = api
        .update_conversation(&bob, &conv, &json!({"description": null}))
        .await?
        .expect(200)?;
    ensure!(
        cleared["description"].is_null() && cleared["name"] == "After",
        "{cleared}"
    );
    let got = api.get_conversation(&alice, &conv).await?.expect(200)?;
    ensure!(got["description"].is_null(), "GET after clearing: {got}");

    // Archive (the admin), again (the owner: it stays archived since the first time),
    // unarchive.
    let archived = api
        .update_conversation(&bob, &conv, &json!({"archived": true}))
        .await?
        .expect(200)?;
    let at = timestamp_field(&archived, "archived_at")?;
    ensure!(archived["name"] == "After", "{archived}");
    let got = api.get_conversation(&carol, &conv).await?.expect(200)?;
    ensure!(
        got["archived_at"] == at.as_str(),
        "GET when archived: {got}"
    );
    let again = api
        .update_conversation(&alice, &conv, &json!({"archived": true}))
        .await?
        .expect(200)?;
    ensure!(
        again["archived_at"] == at.as_str(),
        "archiving twice moved archived_at: {again} (first {at})"
    );
    let unarchived = api
        .update_conversation(&alice, &conv, &json!({"archived": false}))
        .await?
        .expect(200)?;
    ensure!(unarchived["archived_at"].is_null(), "{unarchived}");
    let got = api.get_conversation(&carol, &conv).await?.expect(200)?;
    ensure!(got["archived_at"].is_null(), "GET after unarchiving: {got}");

    // Everything at once, and the name cleared.
    let all = api
        .update_conversation(
            &alice,
            &conv,
            &json!({"name": null, "description": "both", "archived": true}),
        )
        .await?
        .expect(200)?;
    ensure!(
        all["name"].is_null() && all["description"] == "both" && is_timestamp_value(&all),
        "{all}"
    );
    let all = api
        .update_conversation(&alice, &conv, &json!({"name": "Kept", "archived": false}))
        .await?
        .expect(200)?;
    ensure!(
        all["name"] == "Kept" && all["description"] == "both" && all["archived_at"].is_null(),
        "{all}"
    );
    // Nothing given: nothing changes.
    let same = api
        .update_conversation(&alice, &conv, &json!({}))
        .await?
        .expect(200)?;
    ensure!(
        same["name"] == "Kept" && same["description"] == "both",
        "{same}"
    );

    // Refusals.
    let detail = api
        .update_conversation(&carol, &conv, &json!({"name": "by a member"}))
        .await?
        .expect_error(403)?;
    ensure!(!detail.is_empty(), "a 403 says why");
    api.update_conversation(&carol, &conv, &json!({"archived": true}))
        .await?
        .expect_error(403)?;
    api.update_conversation(&eve, &conv, &json!({"name": "by an outsider"}))
        .await?
        .expect_error(403)?;
    api.update_conversation(&alice, &unknown_id(), &json!({"name": "nowhere"}))
        .await?
        .expect_error(404)?;
    api.update_conversation(&alice, &conv, &json!({"name": "x", "colour": "red"}))
        .await?
        .expect_validation(None)?;
    api.update_conversation(&alice, &conv, &json!({"name": "bell\u{7}name"}))
        .await?
        .expect_validation(Some("name"))?;
    api.update_conversation(&alice, &conv, &json!({"name": "two\nlines"}))
        .await?
        .expect_validation(Some("name"))?;
    api.update_conversation(&alice, &conv, &json!({"name": "x".repeat(201)}))
        .await?
        .expect_validation(Some("name"))?;
    api.update_conversation(&alice, &conv, &json!({"description": "nul\u{0}here"}))
        .await?
        .expect_validation(Some("description"))?;
    api.update_conversation(&alice, &conv, &json!({"archived": "yes"}))
        .await?
        .expect_validation(None)?;
    api.update_conversation(&alice, &conv, &json!(["name"]))
        .await?
        .expect_validation(None)?;
    api.patch(
        &format!("/api/chat/conversations/{conv}"),
        None,
        &json!({"name": "anonymous"}),
    )
    .await?
    .expect_error(401)?;
    let got = api.get_conversation(&alice, &conv).await?.expect(200)?;
    ensure!(
        got["name"] == "Kept" && got["description"] == "both" && got["archived_at"].is_null(),
        "refused changes changed it: {got}"
    );
    Ok(())
}

fn is_timestamp_value(conv: &Value) -> bool {
    conv["archived_at"].as_str().is_some_and(is_timestamp)
}

/// Only the owner changes roles; the target must be a participant and the role one of
/// three; making someone owner hands over (the owner becomes an admin); the owner
/// cannot step down otherwise.
async fn role_changes(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave, eve] = api
        .new_users(["rc_a", "rc_b", "rc_c", "rc_d", "rc_e"])
        .await?;
    let conv = api
        .new_conversation(&alice, "roles", &[&bob, &carol, &dave])
        .await?;

    // A member may not.
    api.set_role(&carol, &conv, &dave.user_id, "admin")
        .await?
        .expect_error(403)?;
    api.set_role(&carol, &conv, &carol.user_id, "admin")
        .await?
        .expect_error(403)?;
    let made = api
        .set_role(&alice, &conv, &bob.user_id, "admin")
        .await?
        .expect(200)?;
    ensure!(
        made == json!({"conversation_id": conv, "user_id": bob.user_id, "role": "admin"}),
        "{made}"
    );
    // Nor may an admin.
    api.set_role(&bob, &conv, &carol.user_id, "admin")
        .await?
        .expect_error(403)?;
    api.set_role(&bob, &conv, &bob.user_id, "owner")
        .await?
        .expect_error(403)?;
    // Nor an outsider; nor anyone in a conversation that does not exist.
    api.set_role(&eve, &conv, &eve.user_id, "owner")
        .await?
        .expect_error(403)?;
    api.set_role(&alice, &unknown_id(), &bob.user_id, "admin")
        .await?
        .expect_error(404)?;
    // The target must be a participant.
    api.set_role(&alice, &conv, &eve.user_id, "admin")
        .await?
        .expect_error(404)?;
    api.set_role(&alice, &conv, &unknown_id(), "admin")
        .await?
        .expect_error(404)?;
    // Three roles only.
    for bad in [
        json!({"role": "superuser"}),
        json!({"role": "Owner"}),
        json!({"role": 1}),
        json!({}),
    ] {
        api.patch(
            &format!(
                "/api/chat/conversations/{conv}/participants/{}",
                carol.user_id
            ),
            Some(&alice.token),
            &bad,
        )
        .await?
        .expect_validation(None)
        .with_context(|| format!("body {bad}"))?;
    }
    // The owner does not step down but by naming another owner.
    for role in ["admin", "member"] {
        api.set_role(&alice, &conv, &alice.user_id, role)
            .await?
            .expect_error(409)?;
    }
    api.check_roles(
        &alice,
        &conv,
        &[
            (&alice, "owner"),
            (&bob, "admin"),
            (&carol, "member"),
            (&dave, "member"),
        ],
        "after the refusals",
    )
    .await?;

    // Hand-over to a member: the old owner becomes an admin.
    let handed = api
        .set_role(&alice, &conv, &carol.user_id, "owner")
        .await?
        .expect(200)?;
    ensure!(
        handed == json!({"conversation_id": conv, "user_id": carol.user_id, "role": "owner"}),
        "{handed}"
    );
    api.check_roles(
        &dave,
        &conv,
        &[
            (&alice, "admin"),
            (&bob, "admin"),
            (&carol, "owner"),
            (&dave, "member"),
        ],
        "after the hand-over",
    )
    .await?;
    // The old owner may not any more; the new one may, the old one included.
    api.set_role(&alice, &conv, &dave.user_id, "admin")
        .await?
        .expect_error(403)?;
    api.set_role(&carol, &conv, &alice.user_id, "member")
        .await?
        .expect(200)?;
    api.set_role(&carol, &conv, &bob.user_id, "member")
        .await?
        .expect(200)?;
    // Hand-over to an admin.
    api.set_role(&carol, &conv, &dave.user_id, "admin")
        .await?
        .expect(200)?;
    api.set_role(&carol, &conv, &dave.user_id, "owner")
        .await?
        .expect(200)?;
    api.check_roles(
        &bob,
        &conv,
        &[
            (&alice, "member"),
            (&bob, "member"),
            (&carol, "admin"),
            (&dave, "owner"),
        ],
        "after the second hand-over",
    )
    .await?;
    Ok(())
}

/// The owner hands over to two people at the same moment (in 20 conversations at
/// once): one hand-over takes effect (200) and the other is refused, because by then
/// the caller is no longer the owner (403) or the other came first (409, as the
/// route's 409 says); either way the conversation ends with one owner, the one whose
/// hand-over succeeded, and the old owner an admin.
async fn concurrent_hand_overs(srv: &TestServer) -> anyhow::Result<()> {
    const ROUNDS: usize = 20;
    let api = srv.api();
    let [alice, bob, carol] = api.new_users(["ch_a", "ch_b", "ch_c"]).await?;
    let mut convs = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        convs.push(
            api.new_conversation(&alice, &format!("race {i}"), &[&bob, &carol])
                .await?,
        );
    }
    let races = convs.iter().map(|conv| {
        let (api, alice, bob, carol) = (&api, &alice, &bob, &carol);
        async move {
            let (to_bob, to_carol) = tokio::join!(
                api.set_role(alice, conv, &bob.user_id, "owner"),
                api.set_role(alice, conv, &carol.user_id, "owner"),
            );
            let (to_bob, to_carol) = (to_bob?, to_carol?);
            let statuses = [to_bob.status.as_u16(), to_carol.status.as_u16()];
            let roles = api.roles(bob, conv).await?;
            let outcome = format!(
                "to bob {} {}, to carol {} {}; roles then {roles:?}",
                to_bob.status,
                to_bob.text(),
                to_carol.status,
                to_carol.text()
            );
            let owners: Vec<&String> = roles
                .iter()
                .filter(|(_, role)| role.as_str() == "owner")
                .map(|(id, _)| id)
                .collect();
            ensure!(owners.len() == 1, "not one owner: {outcome}");
            ensure!(
                roles.get(&alice.user_id).map(String::as_str) == Some("admin"),
                "the old owner: {outcome}"
            );
            let winner = match statuses {
                [200, 403 | 409] => bob,
                [403 | 409, 200] => carol,
                _ => bail!("one hand-over succeeds, the other is refused: {outcome}"),
            };
            ensure!(
                owners[0] == &winner.user_id,
                "the owner is not the one whose hand-over succeeded: {outcome}"
            );
            anyhow::Ok(())
        }
    });
    let outcomes = futures_util::future::join_all(races).await;
    let failed: Vec<String> = outcomes
        .into_iter()
        .enumerate()
        .filter_map(|(i, o)| o.err().map(|e| format!("conversation {i}: {e:#}")))
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {ROUNDS} races went wrong; the first ones:\n{}",
        failed.len(),
        failed[..failed.len().min(3)].join("\n")
    );
    Ok(())
}

/// The owner hands over and deletes the conversation at the same moment (20 times):
/// either the hand-over comes first and the delete, no longer the owner's, is refused
/// (403), or the delete comes first and there is nothing left to hand over (404); never
/// both.
async fn hand_over_races_delete(srv: &TestServer) -> anyhow::Result<()> {
    const ROUNDS: usize = 20;
    let api = srv.api();
    let [alice, bob] = api.new_users(["hd_a", "hd_b"]).await?;
    let mut wrong = Vec::new();
    for i in 0..ROUNDS {
        let conv = api
            .new_conversation(&alice, &format!("race {i}"), &[&bob])
            .await?;
        let (handed, deleted) = tokio::join!(
            api.set_role(&alice, &conv, &bob.user_id, "owner"),
            api.delete_conversation(&alice, &conv),
        );
        let (handed, deleted) = (handed?, deleted?);
        match (handed.status.as_u16(), deleted.status.as_u16()) {
            (200, 403) | (404, 204) => {}
            _ => wrong.push(format!(
                "round {i}: hand-over {} {}, delete {} {}",
                handed.status,
                handed.text(),
                deleted.status,
                deleted.text()
            )),
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} of {ROUNDS} rounds had both or neither take effect; the first ones:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(3)].join("\n")
    );
    Ok(())
}

/// Members remove nobody else; admins remove members only; the owner removes admins;
/// anyone leaves; a user who is not there is a 404.
async fn removal_rules(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, dave, erin, eve] = api
        .new_users(["rr_a", "rr_b", "rr_c", "rr_d", "rr_e", "rr_x"])
        .await?;
    let conv = api
        .new_conversation(&alice, "removals", &[&bob, &carol, &dave, &erin])
        .await?;
    for admin in [&bob, &carol] {
        api.set_role(&alice, &conv, &admin.user_id, "admin")
            .await?
            .expect(200)?;
    }

    // A member removes no one else.
    for target in [&erin, &bob, &alice] {
        api.remove_participant(&dave, &conv, &target.user_id)
            .await?
            .expect_error(403)?;
    }
    // An admin removes a member...
    api.remove_participant(&bob, &conv, &erin.user_id)
        .await?
        .expect_status(204)?;
    api.get_conversation(&erin, &conv)
        .await?
        .expect_error(403)?;
    // ...but not an admin, nor the owner.
    api.remove_participant(&bob, &conv, &carol.user_id)
        .await?
        .expect_error(403)?;
    api.remove_participant(&bob, &conv, &alice.user_id)
        .await?
        .expect_error(403)?;
    // Someone who is not there.
    api.remove_participant(&alice, &conv, &eve.user_id)
        .await?
        .expect_error(404)?;
    api.remove_participant(&bob, &conv, &erin.user_id)
        .await?
        .expect_error(404)?;
    // An outsider removes no one.
    api.remove_participant(&eve, &conv, &dave.user_id)
        .await?
        .expect_error(403)?;
    // The owner removes an admin.
    api.remove_participant(&alice, &conv, &carol.user_id)
        .await?
        .expect_status(204)?;
    api.get_conversation(&carol, &conv)
        .await?
        .expect_error(403)?;
    // A member leaves.
    api.remove_participant(&dave, &conv, &dave.user_id)
        .await?
        .expect_status(204)?;
    api.check_roles(
        &bob,
        &conv,
        &[(&alice, "owner"), (&bob, "admin")],
        "after the removals",
    )
    .await?;
    // An admin leaves too.
    api.remove_participant(&bob, &conv, &bob.user_id)
        .await?
        .expect_status(204)?;
    api.check_roles(&alice, &conv, &[(&alice, "owner")], "alone")
        .await?;
    Ok(())
}

/// The two of `pair`, the one with the larger user id first.
fn larger_id_first(pair: [Session; 2]) -> [Session; 2] {
    let [x, y] = pair;
    if x.user_id > y.user_id {
        [x, y]
    } else {
        [y, x]
    }
}

/// An owner who leaves hands over to the longest-standing admin (not to a member who
/// came earlier, nor to the admin with the smaller user id), and with no admin left, to
/// the longest-standing member.
async fn owner_leaving_hands_over(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let alice = api.new_user("oh_a").await?;
    // Each pair joins larger user id first, so that the order of joining and the order
    // of ids disagree.
    let [admin_early, admin_late] = larger_id_first(api.new_users(["oh_ad1", "oh_ad2"]).await?);
    let [member_early, member_late] = larger_id_first(api.new_users(["oh_m1", "oh_m2"]).await?);
    let conv = api.new_conversation(&alice, "heirs", &[]).await?;
    for who in [&member_early, &admin_early, &admin_late, &member_late] {
        api.add_participant(&alice, &conv, &who.user_id)
            .await?
            .expect(200)?;
    }
    // The setup means something only if they joined in that order.
    let joined: BTreeMap<String, String> = api
        .members(&alice, &conv)
        .await?
        .iter()
        .map(|p| Ok((str_field(p, "user_id")?, timestamp_field(p, "joined_at")?)))
        .collect::<anyhow::Result<_>>()?;
    let order: Vec<&String> = [&member_early, &admin_early, &admin_late, &member_late]
        .iter()
        .map(|s| &joined[&s.user_id])
        .collect();
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]),
        "joined_at not increasing in the order of adding: {joined:?}"
    );
    // Promoted in the other order: promotion time does not count.
    for who in [&admin_late, &admin_early] {
        api.set_role(&alice, &conv, &who.user_id, "admin")
            .await?
            .expect(200)?;
    }

    api.remove_participant(&alice, &conv, &alice.user_id)
        .await?
        .expect_status(204)?;
    api.check_roles(
        &member_late,
        &conv,
        &[
            (&admin_early, "owner"),
            (&admin_late, "admin"),
            (&member_early, "member"),
            (&member_late, "member"),
        ],
        "the owner left: the longest-standing admin",
    )
    .await?;
    api.remove_participant(&admin_early, &conv, &admin_early.user_id)
        .await?
        .expect_status(204)?;
    api.check_roles(
        &member_late,
        &conv,
        &[
            (&admin_late, "owner"),
            (&member_early, "member"),
            (&member_late, "member"),
        ],
        "the second owner left: the other admin",
    )
    .await?;
    api.remove_participant(&admin_late, &conv, &admin_late.user_id)
        .await?
        .expect_status(204)?;
    api.check_roles(
        &member_late,
        &conv,
        &[(&member_early, "owner"), (&member_late, "member")],
        "no admin left: the longest-standing member",
    )
    .await?;
    // The new owner can do what owners do.
    api.set_role(&member_early, &conv, &member_late.user_id, "admin")
        .await?
        .expect(200)?;
    api.remove_participant(&member_early, &conv, &member_early.user_id)
        .await?
        .expect_status(204)?;
    api.check_roles(
        &member_late,
        &conv,
        &[(&member_late, "owner")],
        "the last one",
    )
    .await?;
    Ok(())
}

/// Only the owner deletes; then the conversation is gone for everyone: 404 wherever it
/// is asked for, and in nobody's list.
async fn delete_conversation(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol, eve] = api.new_users(["dc_a", "dc_b", "dc_c", "dc_e"]).await?;
    let conv = api
        .new_conversation(&alice, "doomed", &[&bob, &carol])
        .await?;
    let kept = api
        .new_conversation(&alice, "kept", &[&bob, &carol])
        .await?;
    api.set_role(&alice, &conv, &bob.user_id, "admin")
        .await?
        .expect(200)?;

    api.delete_conversation(&bob, &conv)
        .await?
        .expect_error(403)?;
    api.delete_conversation(&carol, &conv)
        .await?
        .expect_error(403)?;
    api.delete_conversation(&eve, &conv)
        .await?
        .expect_error(403)?;
    api.delete_conversation(&alice, &unknown_id())
        .await?
        .expect_error(404)?;
    api.delete(&format!("/api/chat/conversations/{conv}"), None)
        .await?
        .expect_error(401)?;
    api.get_conversation(&carol, &conv).await?.expect(200)?;

    api.delete_conversation(&alice, &conv)
        .await?
        .expect_status(204)?;
    for who in [&alice, &bob, &carol, &eve] {
        api.get_conversation(who, &conv)
            .await?
            .expect_error(404)
            .with_context(|| format!("GET by {}", who.username))?;
    }
    for who in [&alice, &bob, &carol] {
        ensure!(
            api.conversation_ids(who).await? == [kept.clone()],
            "{}'s list after the deletion",
            who.username
        );
        api.participant_page(who, &conv, "")
            .await?
            .expect_error(404)?;
        api.history(who, &conv, "").await?.expect_error(404)?;
    }
    api.delete_conversation(&alice, &conv)
        .await?
        .expect_error(404)?;
    api.update_conversation(&alice, &conv, &json!({"name": "back"}))
        .await?
        .expect_error(404)?;
    api.add_participant(&alice, &conv, &eve.user_id)
        .await?
        .expect_error(404)?;
    api.set_role(&alice, &conv, &bob.user_id, "owner")
        .await?
        .expect_error(404)?;
    api.remove_participant(&bob, &conv, &bob.user_id)
        .await?
        .expect_error(404)?;
    // The other conversation is untouched.
    api.check_roles(
        &carol,
        &kept,
        &[(&alice, "owner"), (&bob, "member"), (&carol, "member")],
        "the other conversation",
    )
    .await?;
    Ok(())
}

/// An archived conversation gains no members (409) until it is unarchived; reading it
/// still works. List items carry the caller's role and `archived_at`.
async fn archived_conversations(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob, carol] = api.new_users(["ar_a", "ar_b", "ar_c"]).await?;
    let conv = api.new_conversation(&alice, "archive", &[&bob]).await?;

    let item = |list: Value| -> anyhow::Result<Value> {
        as_list(&list)?
            .iter()
            .find(|c| c["id"] == conv.as_str())
            .cloned()
            .context("the conversation in the list")
    };
    let mine = item(api.list_conversations(&alice).await?.expect(200)?)?;
    ensure!(
        mine["role"] == "owner" && mine.get("archived_at") == Some(&Value::Null),
        "alice's item: {mine}"
    );
    let theirs = item(api.list_conversations(&bob).await?.expect(200)?)?;
    ensure!(
        theirs["role"] == "member" && theirs.get("archived_at") == Some(&Value::Null),
        "bob's item: {theirs}"
    );

    let archived = api
        .update_conversation(&alice, &conv, &json!({"archived": true}))
        .await?
        .expect(200)?;
    let at = timestamp_field(&archived, "archived_at")?;
    api.add_participant(&bob, &conv, &carol.user_id)
        .await?
        .expect_detail(409, "Conversation is archived")?;
    api.get_conversation(&carol, &conv)
        .await?
        .expect_error(403)?;
    for (who, role) in [(&alice, "owner"), (&bob, "member")] {
        let it = item(api.list_conversations(who).await?.expect(200)?)?;
        ensure!(
            it["role"] == role && it["archived_at"] == at.as_str(),
            "{}'s item when archived: {it}",
            who.username
        );
    }
    // Reading works.
    api.history(&bob, &conv, "").await?.expect(200)?;
    api.participant_page(&bob, &conv, "").await?.expect(200)?;
    api.presence(&bob, &conv, "").await?.expect(200)?;
    api.post(
        &format!("/api/chat/conversations/{conv}/read"),
        Some(&bob.token),
        &json!({"seq": 0}),
    )
    .await?
    .expect(200)?;

    api.update_conversation(&alice, &conv, &json!({"archived": false}))
        .await?
        .expect(200)?;
    api.add_participant(&bob, &conv, &carol.user_id)
        .await?
        .expect(200)?;
    let it = item(api.list_conversations(&carol).await?.expect(200)?)?;
    ensure!(
        it["role"] == "member" && it["archived_at"].is_null(),
        "carol's item: {it}"
    );
    Ok(())
}

tests::e2e!(
    participants_list,
    patch_conversation,
    role_changes,
    concurrent_hand_overs,
    hand_over_races_delete,
    removal_rules,
    owner_leaving_hands_over,
    delete_conversation,
    archived_conversations,
);
