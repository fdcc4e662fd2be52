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
use crate::store::{Store, StoreError};

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

/// The same checks with every batch, however small, committed through binary COPY.
#[tokio::test]
async fn postgres_store_conforms_through_copy() {
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url(), 4)
        .await
        .expect("postgres store connects")
        .with_copy_from(1);
    conformance::run(&store).await;
}

/// One COPY batch with a repeat, a gone conversation and new messages, then a batch
/// that fails: each leaves the only pooled connection clean (no transaction left open)
/// and takes no position it did not commit.
#[tokio::test]
async fn postgres_copy_batch_mixes_repeats_gone_and_new() {
    use crate::ids::{ConversationId, Seq};
    use crate::store::{Original, Stored};
    use crate::text::ClientId;

    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url(), 1)
        .await
        .expect("connect")
        .with_copy_from(1);
    let conformance::Pair {
        alice,
        bob,
        chat,
        start,
    } = conformance::pair(&store, "copy", Some("copy")).await;
    let key = |k: &str| Some(ClientId::parse(k).expect("client id"));

    let mut first = conformance::messages(chat.id, &[alice.id], start, 1);
    first[0].client_id = key("sent-once");
    assert_eq!(
        store.insert_messages(&first).await.expect("first"),
        vec![Stored::New(Seq(1))]
    );

    let later = start + chrono::Duration::seconds(1);
    let mut mixed = conformance::messages(chat.id, &[alice.id, bob.id], later, 4);
    mixed[0].client_id = key("sent-once");
    mixed[1].client_id = key("sent-once");
    mixed[2].conversation_id = ConversationId::random();
    mixed[3].client_id = key("new-one");
    let outcomes = store.insert_messages(&mixed).await.expect("mixed batch");
    assert_eq!(
        outcomes,
        vec![
            Stored::Duplicate(Original {
                id: first[0].id,
                seq: Seq(1),
                content: first[0].content.as_str().to_owned(),
                created_at: first[0].created_at,
            }),
            Stored::New(Seq(2)),
            Stored::Gone,
            Stored::New(Seq(3)),
        ],
        "bob's key is his own send; the repeat and the rolled-back COPY took no position"
    );

    let mut failing = conformance::messages(chat.id, &[bob.id], later, 2);
    failing[1].id = first[0].id;
    let failed = store.insert_messages(&failing).await;
    assert!(
        matches!(failed, Err(StoreError::Conflict(_))),
        "a taken message id: {failed:?}"
    );

    let last = conformance::messages(chat.id, &[bob.id], later, 1);
    assert_eq!(
        store.insert_messages(&last).await.expect("after a failure"),
        vec![Stored::New(Seq(4))]
    );
    assert_eq!(
        conformance::all_history(&store, chat.id).await,
        vec![first[0].id, mixed[1].id, mixed[3].id, last[0].id]
    );
}

/// A batch at the COPY threshold, over two conversations: every message at its place,
/// one conversation's positions unbroken by the other's.
#[tokio::test]
async fn postgres_copy_threshold_takes_large_batches() {
    use crate::ids::Seq;
    use crate::store::Stored;

    const LARGE: usize = 5000;
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url(), 1)
        .await
        .expect("connect")
        .with_copy_from(LARGE);
    let (one, mut batch) = conformance::seed(&store, "large_one", LARGE / 2).await;
    let (two, more) = conformance::seed(&store, "large_two", LARGE / 2).await;
    batch.extend(more);
    batch.sort_by_key(|m| m.created_at);
    assert!(batch.len() >= LARGE, "takes the COPY path");

    let outcomes = store.insert_messages(&batch).await.expect("large batch");
    let mut next = std::collections::HashMap::from([(one, 0), (two, 0)]);
    let expected: Vec<_> = batch
        .iter()
        .map(|m| {
            let seq = next.get_mut(&m.conversation_id).expect("seeded");
            *seq += 1;
            Stored::New(Seq(*seq))
        })
        .collect();
    assert_eq!(outcomes, expected);
    for chat in [one, two] {
        let stored = conformance::all_history(&store, chat).await;
        let sent: Vec<_> = batch
            .iter()
            .filter(|m| m.conversation_id == chat)
            .map(|m| m.id)
            .collect();
        assert_eq!(stored, sent);
    }
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
