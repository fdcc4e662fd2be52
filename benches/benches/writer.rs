//! Committed messages per second on the local PostgreSQL: the batched path (one
//! `insert_messages` per 1000 messages, as the writer does under load) against one
//! autocommitted insert per message, plus the whole `WriterHandle` path with its default
//! policy. Each run uses a fresh database, dropped at the end.
//!
//! The baseline beside them is the first schema's batch insert (no stream positions,
//! no idempotency index), on a database of that schema in the same run: what the
//! positions and the two unique indexes cost.
//!
//! Run: `cargo bench -p benches --bench writer` (needs PostgreSQL at 127.0.0.1:5432,
//! or `TEST_POSTGRES_URL`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::ScratchDatabase;
use chat_server::ids::{now_micros, ConversationId, MessageIdGen, UserId};
use chat_server::metrics::WriterMetrics;
use chat_server::store::writer::{self, BatchPolicy};
use chat_server::store::{ConversationRecord, NewMessage, PostgresStore, Store, UserRecord};
use chat_server::text::{ClientId, Content};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const BATCH: usize = 1000;
/// Smaller than `BATCH`: a commit per message is two to three orders of magnitude
/// slower, and the run must stay within a couple of minutes.
const SINGLES: usize = 100;
const WRITER_MESSAGES: usize = 10_000;
const CONVERSATIONS: usize = 64;

/// Users and conversations to write into, and a source of realistic messages.
struct Fixture {
    senders: Vec<UserId>,
    conversations: Vec<ConversationId>,
    ids: MessageIdGen,
    next: usize,
}

impl Fixture {
    async fn create(store: &dyn Store) -> Self {
        let mut senders = Vec::new();
        for name in ["bench_alice", "bench_bob"] {
            let user = UserRecord {
                id: UserId::random(),
                username: name.to_owned(),
                password_hash: "not-a-real-hash".to_owned(),
                created_at: now_micros(),
            };
            store.create_user(&user).await.expect("create bench user");
            senders.push(user.id);
        }
        let mut conversations = Vec::new();
        for i in 0..CONVERSATIONS {
            let at = now_micros();
            let conversation = ConversationRecord {
                id: ConversationId::random(),
                name: Some(format!("bench room {i}")),
                description: None,
                is_group: true,
                created_by: senders[0],
                created_at: at,
                updated_at: at,
                archived_at: None,
                direct: false,
            };
            store
                .create_conversation(&conversation, &senders)
                .await
                .expect("create bench conversation");
            conversations.push(conversation.id);
        }
        Self {
            senders,
            conversations,
            ids: MessageIdGen::default(),
            next: 0,
        }
    }

    fn messages(&mut self, count: usize) -> Vec<NewMessage> {
        (0..count)
            .map(|_| {
                let n = self.next;
                self.next += 1;
                let at = now_micros();
                NewMessage {
                    id: self.ids.next(at),
                    conversation_id: self.conversations[n % self.conversations.len()],
                    sender_id: self.senders[n % self.senders.len()],
                    content: Content::parse(&format!(
                        "message {n}: a typical chat line of about this length, give or take"
                    ))
                    .expect("valid content"),
                    created_at: at,
                    // Every send carries its idempotency key, as the harness's do.
                    client_id: Some(ClientId::parse(&format!("send-{n}")).expect("client id")),
                }
            })
            .collect()
    }
}

fn elements(count: usize) -> Throughput {
    Throughput::Elements(u64::try_from(count).expect("a small count"))
}

fn writer_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let db = runtime
        .block_on(ScratchDatabase::create("chat_bench"))
        .expect("a scratch database on the local PostgreSQL");
    let store: Arc<dyn Store> = Arc::new(
        runtime
            .block_on(PostgresStore::connect(&db.url(), 4))
            .expect("postgres store"),
    );
    let mut fixture = runtime.block_on(Fixture::create(&*store));

    let mut group = c.benchmark_group("writer");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));

    group.throughput(elements(BATCH));
    group.bench_function("insert_messages_batch_1000", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let batch = fixture.messages(BATCH);
                    let started = Instant::now();
                    store.insert_messages(&batch).await.expect("batch commits");
                    spent += started.elapsed();
                }
                spent
            })
        });
    });

    // The same without idempotency keys: what the positions alone cost.
    group.bench_function("insert_messages_batch_1000_without_client_ids", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let mut batch = fixture.messages(BATCH);
                    for m in &mut batch {
                        m.client_id = None;
                    }
                    let started = Instant::now();
                    store.insert_messages(&batch).await.expect("batch commits");
                    spent += started.elapsed();
                }
                spent
            })
        });
    });

    group.throughput(elements(SINGLES));
    group.bench_function("insert_messages_one_per_message", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let messages = fixture.messages(SINGLES);
                    let started = Instant::now();
                    for message in &messages {
                        store
                            .insert_messages(std::slice::from_ref(message))
                            .await
                            .expect("message commits");
                    }
                    spent += started.elapsed();
                }
                spent
            })
        });
    });

    group.throughput(elements(WRITER_MESSAGES));
    group.bench_function("writer_handle_default_policy", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let messages = fixture.messages(WRITER_MESSAGES);
                let (handle, task) = writer::spawn(
                    Arc::clone(&store),
                    BatchPolicy::default(),
                    WriterMetrics::default(),
                    runtime.handle(),
                );
                let (reported, mut reports) = tokio::sync::mpsc::unbounded_channel();
                let started = Instant::now();
                for message in messages {
                    let reported = reported.clone();
                    handle.submit(
                        message,
                        Box::new(move |_, result| {
                            let _ = reported.send(result);
                        }),
                    );
                }
                runtime.block_on(async {
                    for _ in 0..WRITER_MESSAGES {
                        reports
                            .recv()
                            .await
                            .expect("every message is reported")
                            .expect("message commits");
                    }
                });
                spent += started.elapsed();
                drop(handle);
                runtime.block_on(task).expect("writer exits");
            }
            spent
        });
    });
    group.throughput(elements(BATCH));
    let baseline = runtime.block_on(FirstSchema::create());
    let mut ids = MessageIdGen::default();
    group.bench_function("first_schema_batch_1000", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let rows = baseline.rows(&mut ids);
                    let started = Instant::now();
                    baseline.insert(&rows).await;
                    spent += started.elapsed();
                }
                spent
            })
        });
    });
    group.finish();

    drop(store);
    drop(db);
    runtime.block_on(baseline.drop());
}

/// The first schema's tables and its batch insert, verbatim, on a scratch database of
/// their own: users, conversations and messages keyed by `(conversation_id, id)`.
struct FirstSchema {
    db: ScratchDatabase,
    client: tokio_postgres::Client,
    sender: uuid::Uuid,
    conversations: Vec<uuid::Uuid>,
}

type Row = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    chrono::DateTime<chrono::Utc>,
);

impl FirstSchema {
    const TABLES: &'static str = "
        CREATE TABLE users (id uuid PRIMARY KEY, username text NOT NULL UNIQUE,
            password_hash text NOT NULL, created_at timestamptz NOT NULL);
        CREATE TABLE conversations (id uuid PRIMARY KEY, name text, description text,
            is_group boolean NOT NULL, created_by uuid NOT NULL REFERENCES users (id),
            created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
        CREATE INDEX conversations_updated_at_idx ON conversations (updated_at DESC, id DESC);
        CREATE TABLE messages (id uuid PRIMARY KEY,
            conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            sender_id uuid NOT NULL REFERENCES users (id), content text NOT NULL,
            is_edited boolean NOT NULL DEFAULT false, deleted_at timestamptz,
            created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
        CREATE INDEX messages_conversation_id_id_idx ON messages (conversation_id, id);";

    const INSERT: &'static str = "
        WITH inserted AS (
            INSERT INTO messages (id, conversation_id, sender_id, content, created_at, updated_at)
            SELECT id, conversation_id, sender_id, content, created_at, created_at
            FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[])
                 AS t (id, conversation_id, sender_id, content, created_at)
        )
        UPDATE conversations AS c SET updated_at = b.at
        FROM UNNEST($6::uuid[], $7::timestamptz[]) AS b (id, at)
        WHERE c.id = b.id AND c.updated_at < b.at";

    async fn create() -> Self {
        let db = ScratchDatabase::create("chat_bench_v1")
            .await
            .expect("a scratch database");
        let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(Self::TABLES)
            .await
            .expect("first schema");
        let sender = uuid::Uuid::new_v4();
        client
            .execute(
                "INSERT INTO users VALUES ($1, 'bench_alice', 'x', now())",
                &[&sender],
            )
            .await
            .expect("user");
        let mut conversations = Vec::new();
        for _ in 0..CONVERSATIONS {
            let id = uuid::Uuid::new_v4();
            client
                .execute(
                    "INSERT INTO conversations VALUES ($1, 'room', NULL, true, $2, now(), now())",
                    &[&id, &sender],
                )
                .await
                .expect("conversation");
            conversations.push(id);
        }
        Self {
            db,
            client,
            sender,
            conversations,
        }
    }

    fn rows(&self, ids: &mut MessageIdGen) -> Vec<Row> {
        (0..BATCH)
            .map(|n| {
                let at = now_micros();
                let content =
                    format!("message {n}: a typical chat line of about this length, give or take");
                (
                    ids.next(at).0,
                    self.conversations[n % CONVERSATIONS],
                    content,
                    at,
                )
            })
            .collect()
    }

    async fn insert(&self, rows: &[Row]) {
        let ids: Vec<_> = rows.iter().map(|r| r.0).collect();
        let conversations: Vec<_> = rows.iter().map(|r| r.1).collect();
        let senders = vec![self.sender; rows.len()];
        let contents: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        let times: Vec<_> = rows.iter().map(|r| r.3).collect();
        let at = times.iter().max().copied().unwrap_or_else(now_micros);
        let bumped = self.conversations.clone();
        let bumped_at = vec![at; bumped.len()];
        self.client
            .execute(
                Self::INSERT,
                &[
                    &ids,
                    &conversations,
                    &senders,
                    &contents,
                    &times,
                    &bumped,
                    &bumped_at,
                ],
            )
            .await
            .expect("first-schema batch commits");
    }

    async fn drop(self) {
        drop(self.client);
        drop(self.db);
    }
}

criterion_group!(benches, writer_throughput);
criterion_main!(benches);
