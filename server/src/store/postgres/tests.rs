//! Tests of the PostgreSQL store against the local test server: the shared conformance
//! checks, plus what only this store has (migrations on a second connect, a server that
//! is down, blackholed or kills its connections).
//!
//! They must never touch a database they did not create (each gets its own `PgTestDb`)
//! and never assert on elapsed time: a hung call fails through `no_hang`, and speed
//! belongs to the benchmarks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::{PostgresStore, Timeouts};
use crate::store::conformance::{self, no_hang, PgTestDb};
use crate::store::model::{Store, StoreError};

#[tokio::test]
async fn postgres_store_conforms() {
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url(), 4)
        .await
        .expect("postgres store connects");
    conformance::run(&store).await;
    // Connecting again finds the schema in place and applies nothing twice.
    let again = PostgresStore::connect(&db.url(), 1)
        .await
        .expect("second connect");
    again.ping().await.expect("ping");
    drop(store);
}

#[tokio::test]
async fn postgres_down_is_unavailable() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    };
    let result = no_hang(PostgresStore::connect(
        &format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
        2,
    ))
    .await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "connect to a closed port"
    );
}

/// A TCP relay to the local PostgreSQL that can be switched into a blackhole:
/// connections stay open but no byte goes through, as with a dropped route.
struct Relay {
    port: u16,
    blackhole: watch::Sender<bool>,
}

impl Relay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let (blackhole, gate) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let mut open = gate.clone();
                    if open.wait_for(|holed| !*holed).await.is_err() {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, gate.clone()),
                        pump(out_read, in_write, gate)
                    );
                });
            }
        });
        Self { port, blackhole }
    }

    fn url(&self, db: &PgTestDb) -> String {
        db.url().replace(":5432/", &format!(":{}/", self.port))
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 || gate.wait_for(|holed| !*holed).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn postgres_blackhole_is_unavailable_and_recovers() {
    let db = PgTestDb::create().await;
    let relay = Relay::start().await;
    let timeouts = Timeouts {
        connect: Duration::from_millis(700),
        operation: Duration::from_secs(1),
    };
    let store = PostgresStore::connect_with(&relay.url(&db), 2, timeouts)
        .await
        .expect("connect through the relay");
    let alice = conformance::user("blackhole_alice");
    store.create_user(&alice).await.expect("create user");

    relay.blackhole.send_replace(true);
    for _ in 0..3 {
        let result = no_hang(store.user_by_id(alice.id)).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "blackholed call: {result:?}"
        );
    }
    let result = no_hang(store.ping()).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "blackholed ping: {result:?}"
    );

    relay.blackhole.send_replace(false);
    let found = store
        .user_by_id(alice.id)
        .await
        .expect("works again once the database is reachable")
        .expect("alice is there");
    assert_eq!(found.username, "blackhole_alice");
    store.ping().await.expect("ping after recovery");
}

#[tokio::test]
async fn postgres_recovers_after_connections_are_killed() {
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url(), 2).await.expect("connect");
    store.ping().await.expect("ping");
    let (admin, connection) = tokio_postgres::connect(&testkit::postgres::admin_url(), NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    let db_name = db.name().to_owned();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db_name],
        )
        .await
        .expect("terminate the store's connections");
    // The pooled connections are dead now; the first calls may fail with
    // Unavailable, and the pool must replace them rather than keep failing.
    let mut recovered = false;
    for _ in 0..4 {
        match store.ping().await {
            Ok(()) => {
                recovered = true;
                break;
            }
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the pool reconnected");
}

#[tokio::test]
async fn postgres_upgrade_gives_existing_messages_their_positions() {
    use crate::ids::{ConversationId, MessageIdGen, UserId};
    let db = PgTestDb::create().await;
    let (user, c1, c2) = (
        UserId::random(),
        ConversationId::random(),
        ConversationId::random(),
    );
    let mut gen = MessageIdGen::default();
    let old: Vec<_> = (0..3).map(|_| gen.next(crate::ids::now_micros())).collect();
    let last = gen.next(crate::ids::now_micros());
    {
        // A database written by the first schema, before streams existed.
        let (mut client, connection) = tokio_postgres::connect(&db.url(), NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        super::embedded::migrations::runner()
            .set_target(refinery::Target::Version(1))
            .run_async(&mut client)
            .await
            .expect("first schema");
        client
            .execute(
                "INSERT INTO users VALUES ($1, 'old_alice', 'x', now())",
                &[&user.0],
            )
            .await
            .expect("user");
        for c in [c1, c2] {
            client
                .execute(
                    "INSERT INTO conversations VALUES ($1, 'old', NULL, true, $2, now(), now())",
                    &[&c.0, &user.0],
                )
                .await
                .expect("conversation");
            client
                .execute(
                    "INSERT INTO participants VALUES ($1, $2, now())",
                    &[&c.0, &user.0],
                )
                .await
                .expect("participant");
        }
        for (id, c) in old.iter().map(|m| (m, c1)).chain([(&last, c2)]) {
            client
                .execute(
                    "INSERT INTO messages (id, conversation_id, sender_id, content, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'from before', now(), now())",
                    &[&id.0, &c.0, &user.0],
                )
                .await
                .expect("message");
        }
        drop(client);
        driver.abort();
    }
    let store = PostgresStore::connect(&db.url(), 1).await.expect("upgrade");
    conformance::upgraded_from_first_schema(&store, user, (c1, &old), c2).await;
}

/// A deleted message's content, and its edits', is erased from the rows, not only
/// hidden from reads.
#[tokio::test]
async fn postgres_delete_erases_content() {
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url(), 2)
        .await
        .expect("postgres store connects");
    conformance::edited_then_deleted(&store, "erased").await;
    let (client, connection) = tokio_postgres::connect(&db.url(), NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(connection);
    let pattern = format!("%{}%", conformance::ERASED);
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM messages
                     WHERE content LIKE $1 OR original_content LIKE $1)
                  + (SELECT count(*) FROM message_changes WHERE content LIKE $1)",
            &[&pattern],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "rows still holding the deleted content");
    driver.abort();
}
