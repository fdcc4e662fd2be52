//! Sessions across nodes: a session ended through one node (a logout, a deleted
//! account) stops its tokens and closes its sockets on the other at once.

use reqwest::Method;
use tests::cluster::ClusterOptions;
use tests::prelude::*;
use tests::realtime::{close_frame, group, join};

use super::with_cluster;

/// Bob logs in twice: one session holds a socket on node 1 and is logged out through
/// node 0; its socket closes with 1008 `Session ended` and its token is refused on
/// node 1, while his other session's socket on node 1 stays. Then he deletes his
/// account through node 0, and the other session goes the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_end_on_every_node() {
    with_cluster(ClusterOptions::new(2), |c| {
        Box::pin(async move {
            let api = c.api(0);
            let ([alice, bob], conv) = group(&api, &["csa", "csb"]).await?;
            let other = api.login(&bob.username, PASSWORD).await?.expect(200)?;
            let other = str_field(&other, "access_token")?;
            let (mut first, _) = join(c.node(1), &conv, &bob).await?;
            let other_session = Session {
                token: other.clone(),
                ..bob.clone()
            };
            let (mut second, _) = join(c.node(1), &conv, &other_session).await?;
            let (_alice_socket, _) = join(c.node(0), &conv, &alice).await?;

            api.post("/api/auth/logout", Some(&bob.token), &json!({}))
                .await?
                .expect_status(204)?;
            let (closed, _) = close_frame(&mut first, "the logged-out socket on node 1").await?;
            ensure!(
                closed == Some((1008, "Session ended".to_owned())),
                "{closed:?}"
            );
            c.api(1).me(&bob.token).await?.expect_error(401)?;
            c.api(1).me(&other).await?.expect(200)?;
            second.send_json(&json!({"type": "ping"})).await?;
            second
                .wait_for("the other session's pong", |v| v["type"] == "pong")
                .await?;

            api.request(
                Method::DELETE,
                "/api/auth/me",
                Some(&other),
                Some(&json!({"password": PASSWORD})),
            )
            .await?
            .expect_status(204)?;
            let (closed, _) =
                close_frame(&mut second, "the deleted account's socket on node 1").await?;
            ensure!(
                closed == Some((1008, "Session ended".to_owned())),
                "{closed:?}"
            );
            c.api(1).me(&other).await?.expect_error(401)?;
            let forged = tests::jwt::hs256(c.node(1).secret_key(), &bob.user_id, 3600)?;
            c.api(1).me(&forged).await?.expect_error(401)?;
            Ok(())
        })
    })
    .await;
}
