//! Sessions, their renewal and ending, and tokens that no longer count, as every store
//! must keep them.

use chrono::Duration;

use super::fixtures::user;
use crate::ids::{now_micros, SessionId};
use crate::store::account::{Ending, NewSession, Renewal};
use crate::store::model::Store;

pub(super) async fn run(store: &dyn Store) {
    renewal_rotates_and_reuse_ends(store).await;
    endings_and_limits(store).await;
}

fn session(user: crate::ids::UserId, days: i64) -> NewSession {
    let now = now_micros();
    NewSession {
        id: SessionId::random(),
        user,
        created_at: now,
        expires_at: now + Duration::days(days),
        user_agent: Some("conformance".into()),
    }
}

async fn renewal_rotates_and_reuse_ends(store: &dyn Store) {
    let alice = user("se_alice");
    store.create_user(&alice).await.expect("user");
    let long_ago = now_micros() - Duration::days(2);
    let s = session(alice.id, 30);
    let evicted = store
        .create_session(&s, 100, long_ago)
        .await
        .expect("create");
    assert!(evicted.is_empty());
    let (now, later) = (now_micros(), now_micros() + Duration::days(30));
    assert_eq!(
        store
            .renew_session(s.id, 0, now, later)
            .await
            .expect("renew"),
        Renewal::Renewed {
            user: alice.id,
            generation: 1
        }
    );
    assert_eq!(
        store
            .renew_session(s.id, 1, now, later)
            .await
            .expect("renew"),
        Renewal::Renewed {
            user: alice.id,
            generation: 2
        }
    );
    // Generation 1 again: someone kept a copy. The session ends.
    assert_eq!(
        store
            .renew_session(s.id, 1, now, later)
            .await
            .expect("reuse"),
        Renewal::Reused { user: alice.id }
    );
    assert_eq!(
        store
            .renew_session(s.id, 2, now, later)
            .await
            .expect("after"),
        Renewal::Ended,
        "the current generation no longer works either"
    );
    assert_eq!(
        store
            .renew_session(SessionId::random(), 0, now, later)
            .await
            .expect("unknown"),
        Renewal::Ended
    );
    // An expired session does not renew.
    let old = NewSession {
        expires_at: now_micros() - Duration::seconds(1),
        ..session(alice.id, 0)
    };
    store
        .create_session(&old, 100, long_ago)
        .await
        .expect("create");
    assert_eq!(
        store
            .renew_session(old.id, 0, now_micros(), later)
            .await
            .expect("renew"),
        Renewal::Ended
    );
    let ended = store
        .ended_tokens(now - Duration::minutes(1))
        .await
        .expect("ended");
    assert!(ended
        .sessions
        .iter()
        .any(|(id, u, _)| *id == s.id && *u == alice.id));
}

async fn endings_and_limits(store: &dyn Store) {
    let bob = user("se_bob");
    store.create_user(&bob).await.expect("user");
    let long_ago = now_micros() - Duration::days(2);
    let mut made = Vec::new();
    for _ in 0..3 {
        let s = session(bob.id, 30);
        made.push(s.id);
        // Created a moment apart: the oldest is the first.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        store
            .create_session(&s, 100, long_ago)
            .await
            .expect("create");
    }
    // A fourth past a limit of 3 ends the oldest.
    let fourth = session(bob.id, 30);
    let evicted = store
        .create_session(&fourth, 3, long_ago)
        .await
        .expect("create");
    assert_eq!(evicted, vec![made[0]]);
    let now = now_micros();
    assert_eq!(
        store
            .end_sessions(bob.id, Ending::One(made[1]), now)
            .await
            .expect("end one"),
        vec![made[1]]
    );
    assert!(store
        .end_sessions(bob.id, Ending::One(made[1]), now)
        .await
        .expect("again")
        .is_empty());
    let mut rest = store
        .end_sessions(bob.id, Ending::AllBut(Some(fourth.id)), now)
        .await
        .expect("all but");
    rest.sort();
    assert_eq!(rest, vec![made[2]]);
    assert_eq!(
        store
            .end_sessions(bob.id, Ending::AllBut(None), now)
            .await
            .expect("all"),
        vec![fourth.id]
    );

    // Tokens without a session: the time only moves forward.
    let before = now_micros();
    store
        .set_tokens_not_before(bob.id, before)
        .await
        .expect("set");
    store
        .set_tokens_not_before(bob.id, before - Duration::hours(1))
        .await
        .expect("set earlier");
    let ended = store.ended_tokens(now).await.expect("ended");
    assert_eq!(
        ended
            .users
            .iter()
            .find(|(u, _)| *u == bob.id)
            .map(|(_, t)| *t),
        Some(before)
    );

    store
        .set_password(bob.id, "$argon2id$new")
        .await
        .expect("password");
    let stored = store.user_by_id(bob.id).await.expect("read").expect("bob");
    assert_eq!(stored.password_hash, "$argon2id$new");
}
