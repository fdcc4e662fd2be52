//! Tests of the batched writer: the gathering rule on its own (no clock, no store),
//! then the whole writer against real stores.
//!
//! They must never assert on elapsed time: a writer that hangs fails through
//! `no_hang`, and throughput belongs to the writer benchmark.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{spawn, BatchPolicy, CommitResult, Gather, OnCommit, WriterHandle};
use crate::ids::{ConversationId, Seq, UserId};
use crate::metrics::WriterMetrics;
use crate::store::conformance::{self, no_hang, PgTestDb};
use crate::store::{
    NewMessage, Original, Page, PostgresStore, SqliteStore, Store, StoreError, Stored,
};
use crate::text::ClientId;

const MS: Duration = Duration::from_millis(1);

fn policy(max_batch: usize, max_delay: Duration) -> BatchPolicy {
    BatchPolicy {
        max_batch,
        max_bytes: 1 << 20,
        max_delay,
    }
}

#[test]
fn a_full_batch_flushes_at_once() {
    let t0 = Instant::now();
    let p = policy(4, 10 * MS);
    assert_eq!(p.gather((3, 0), t0, t0), Gather::WaitUntil(t0 + 10 * MS));
    assert_eq!(p.gather((4, 0), t0, t0), Gather::Flush);
    assert_eq!(p.gather((5, 0), t0, t0), Gather::Flush);
}

#[test]
fn a_partial_batch_waits_until_its_oldest_message_is_max_delay_old() {
    let t0 = Instant::now();
    let p = policy(1024, 2 * MS);
    assert_eq!(
        p.gather((1, 0), t0, t0 + MS),
        Gather::WaitUntil(t0 + 2 * MS)
    );
    assert_eq!(p.gather((1, 0), t0, t0 + 2 * MS), Gather::Flush);
    assert_eq!(p.gather((7, 0), t0, t0 + 3 * MS), Gather::Flush);
}

#[test]
fn zero_delay_takes_what_is_queued_and_goes() {
    let t0 = Instant::now();
    let p = policy(1024, Duration::ZERO);
    assert_eq!(p.gather((1, 0), t0, t0), Gather::Flush);
    assert_eq!(p.gather((300, 0), t0, t0), Gather::Flush);
}

#[test]
fn a_zero_batch_size_means_one() {
    let t0 = Instant::now();
    assert_eq!(policy(0, 10 * MS).gather((1, 0), t0, t0), Gather::Flush);
}

#[test]
fn a_batch_is_full_at_its_byte_bound() {
    let t0 = Instant::now();
    let p = policy(1024, 10 * MS);
    assert_eq!(
        p.gather((3, (1 << 20) - 1), t0, t0),
        Gather::WaitUntil(t0 + 10 * MS)
    );
    assert_eq!(p.gather((3, 1 << 20), t0, t0), Gather::Flush);
    // One message larger than the bound still makes a batch of its own.
    assert!(p.full(1, 2 << 20));
    assert!(!p.full(0, 2 << 20));
}

#[test]
fn the_default_is_1024_messages_or_4_mib_and_no_wait() {
    let d = BatchPolicy::default();
    assert_eq!(
        (d.max_batch, d.max_bytes, d.max_delay),
        (1024, 4 << 20, Duration::ZERO)
    );
}

/// A real SQLite store with one user and one conversation to write into, and 3000
/// messages for it.
async fn sqlite_fixture() -> (
    tempfile::TempDir,
    Arc<SqliteStore>,
    ConversationId,
    Vec<NewMessage>,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("chat.db"), 1)
            .await
            .expect("sqlite store"),
    );
    let (chat, batch) = conformance::seed(&*store, "writer_alice", 3000).await;
    (dir, store, chat, batch)
}

/// The writer on the test's own runtime.
fn start(store: Arc<dyn Store>, policy: BatchPolicy) -> (WriterHandle, JoinHandle<()>) {
    spawn(
        store,
        policy,
        WriterMetrics::default(),
        &tokio::runtime::Handle::current(),
    )
}

type Reports = Arc<Mutex<Vec<(usize, CommitResult)>>>;

fn recorder(reports: &Reports, index: usize) -> OnCommit {
    let reports = Arc::clone(reports);
    Box::new(move |_, result| {
        reports.lock().expect("reports lock").push((index, result));
    })
}

/// Every live message of the conversation, oldest first.
async fn history(store: &dyn Store, chat: ConversationId) -> Vec<crate::store::MessageRecord> {
    let page = Page {
        limit: 100,
        ..Page::default()
    };
    store
        .history(chat, page)
        .await
        .expect("history")
        .expect("known")
}

/// Submits every message of `batch`, lets the writer finish, and returns its reports
/// in the order they were made.
async fn submit_all(
    writer: WriterHandle,
    task: JoinHandle<()>,
    batch: &[NewMessage],
) -> Vec<(usize, CommitResult)> {
    let reports: Reports = Arc::default();
    for (i, message) in batch.iter().cloned().enumerate() {
        writer.submit(message, recorder(&reports, i));
    }
    drop(writer);
    no_hang(task).await.expect("writer exits");
    take(&reports)
}

/// The reports so far, in the order they were made.
fn take(reports: &Reports) -> Vec<(usize, CommitResult)> {
    std::mem::take(&mut *reports.lock().expect("reports lock"))
}

fn order(reports: &[(usize, CommitResult)]) -> Vec<usize> {
    reports.iter().map(|(i, _)| *i).collect()
}

fn is_unavailable(result: &CommitResult) -> bool {
    matches!(
        result.as_ref().map_err(|e| &**e),
        Err(StoreError::Unavailable(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_everything_and_reports_in_submission_order() {
    let (_dir, store, chat, batch) = sqlite_fixture().await;
    let (writer, task) = start(store.clone(), policy(100, 2 * MS));
    let reports: Reports = Arc::default();

    // Submitted from a plain thread, as a shard on its own runtime would.
    let submitter = {
        let writer = writer.clone();
        let reports = Arc::clone(&reports);
        let batch = batch.clone();
        std::thread::spawn(move || {
            for (i, message) in batch.into_iter().enumerate() {
                writer.submit(message, recorder(&reports, i));
            }
        })
    };
    submitter.join().expect("submitter thread");
    assert!(writer.queued() <= batch.len());
    drop(writer);
    no_hang(task)
        .await
        .expect("writer exits once its handles are gone");

    let reports = take(&reports);
    assert_eq!(order(&reports), (0..batch.len()).collect::<Vec<_>>());
    let positions: Vec<_> = reports
        .iter()
        .map(|(_, r)| match r {
            Ok(Stored::New(seq)) => *seq,
            other => panic!("not committed: {other:?}"),
        })
        .collect();
    assert_eq!(
        positions,
        (1..=batch.len() as u64).map(Seq).collect::<Vec<_>>(),
        "positions follow submission order, without gaps"
    );
    assert_eq!(
        conformance::all_history(&*store, chat).await,
        batch.iter().map(|m| m.id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn reports_after_commit_and_counts_the_queue() {
    let (_dir, store, chat, batch) = sqlite_fixture().await;
    let (writer, task) = start(store.clone(), policy(1024, 20 * MS));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for message in batch.iter().take(5).cloned() {
        let tx = tx.clone();
        writer.submit(
            message,
            Box::new(move |message, result| drop(tx.send((message.id, result)))),
        );
    }
    assert_eq!(writer.queued(), 5);
    for sent in batch.iter().take(5) {
        let (id, result) = no_hang(rx.recv()).await.expect("a report");
        assert_eq!(id, sent.id, "the message is handed back with its report");
        result.expect("committed");
    }
    assert_eq!(writer.queued(), 0);
    // Reported means committed: the messages are already in history.
    assert_eq!(history(&*store, chat).await.len(), 5);
    drop(writer);
    no_hang(task).await.expect("writer exits");
}

#[tokio::test]
async fn a_rejected_message_fails_alone_and_the_rest_commit() {
    let (_dir, store, chat, mut batch) = sqlite_fixture().await;
    batch.truncate(5);
    // A sender that does not exist: the foreign key refuses this one row.
    batch[2].sender_id = UserId::random();
    let (writer, task) = start(store.clone(), policy(1024, 50 * MS));
    let reports = submit_all(writer, task, &batch).await;
    assert_eq!(order(&reports), vec![0, 1, 2, 3, 4]);
    for (i, result) in reports.iter() {
        match (i, result) {
            (2, Err(e)) => assert!(matches!(**e, StoreError::Query(_)), "{e:?}"),
            (2, Ok(_)) => panic!("the orphan message was acknowledged"),
            (_, r) => assert!(r.is_ok(), "message {i}: {r:?}"),
        }
    }
    let page = history(&*store, chat).await;
    let expected: Vec<_> = [0, 1, 3, 4].iter().map(|&i| batch[i].id).collect();
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn an_unreachable_database_fails_every_message_of_the_batch() {
    let db = PgTestDb::create().await;
    let store = Arc::new(
        PostgresStore::connect(&db.url(), 1)
            .await
            .expect("postgres store"),
    );
    let (_chat, batch) = conformance::seed(&*store, "writer_pg_alice", 4).await;
    let (writer, task) = start(store, policy(1024, 20 * MS));
    // The database goes away under the store, connections and all.
    drop(db);

    let reports = submit_all(writer, task, &batch).await;
    assert_eq!(order(&reports), vec![0, 1, 2, 3]);
    for (i, result) in reports.iter() {
        assert!(is_unavailable(result), "message {i}: {result:?}");
    }
}

#[tokio::test]
async fn submitting_to_a_stopped_writer_fails_at_once() {
    let (_dir, store, _chat, batch) = sqlite_fixture().await;
    let (writer, task) = start(store, BatchPolicy::default());
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    writer.submit(
        batch[0].clone(),
        Box::new(move |_, result| drop(tx.send(result))),
    );
    let result = rx.try_recv().expect("reported during submit");
    assert!(is_unavailable(&result), "{result:?}");
    assert_eq!(writer.queued(), 0);
}

#[tokio::test]
async fn a_cancelled_writer_still_reports_what_it_held() {
    let (_dir, store, _chat, batch) = sqlite_fixture().await;
    // A long delay keeps the first messages gathering when the task is aborted.
    let (writer, task) = start(store, policy(1024, Duration::from_secs(30)));
    let reports: Reports = Arc::default();
    for (i, message) in batch[..3].iter().cloned().enumerate() {
        writer.submit(message, recorder(&reports, i));
    }
    tokio::time::sleep(20 * MS).await;
    writer.submit(batch[3].clone(), recorder(&reports, 3));
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    let reports = take(&reports);
    assert_eq!(order(&reports), vec![0, 1, 2, 3]);
    assert!(reports.iter().all(|(_, r)| r.is_err()));
    assert_eq!(writer.queued(), 0);
}

#[tokio::test]
async fn a_panicking_callback_does_not_stop_the_writer() {
    let (_dir, store, _chat, batch) = sqlite_fixture().await;
    let (writer, task) = start(store, policy(2, MS));
    let reports: Reports = Arc::default();
    writer.submit(batch[0].clone(), Box::new(|_, _| panic!("a callback bug")));
    for (i, message) in batch[1..4].iter().cloned().enumerate() {
        writer.submit(message, recorder(&reports, i + 1));
    }
    drop(writer);
    no_hang(task).await.expect("writer survives the panic");
    let reports = take(&reports);
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|(_, r)| r.is_ok()));
}

#[tokio::test]
async fn stop_commits_what_is_queued_then_ends_with_handles_alive() {
    let (_dir, store, chat, batch) = sqlite_fixture().await;
    // A long delay: only `stop` makes this batch go now.
    let (writer, task) = start(store.clone(), policy(1024, Duration::from_secs(30)));
    let reports: Reports = Arc::default();
    for (i, message) in batch[..5].iter().cloned().enumerate() {
        writer.submit(message, recorder(&reports, i));
    }
    writer.stop();
    no_hang(task)
        .await
        .expect("the writer ends although a handle is alive");
    let reports = take(&reports);
    assert_eq!(order(&reports), vec![0, 1, 2, 3, 4]);
    assert!(reports.iter().all(|(_, r)| r.is_ok()), "{reports:?}");
    assert_eq!(history(&*store, chat).await.len(), 5);
    // After the stop, a submission is refused at once, never silently dropped.
    let (tx, mut rx) = mpsc::unbounded_channel();
    writer.submit(batch[5].clone(), Box::new(move |_, r| drop(tx.send(r))));
    assert!(is_unavailable(&rx.try_recv().expect("reported at once")));
}

#[tokio::test]
async fn a_repeat_in_the_same_batch_is_answered_with_the_first() {
    let (_dir, store, chat, mut batch) = sqlite_fixture().await;
    batch.truncate(3);
    for m in &mut batch {
        m.client_id = Some(ClientId::parse("same-send").expect("client id"));
    }
    // One gathering window holds all three: the repeats wait for the next batch,
    // where the store finds the first.
    let (writer, task) = start(store.clone(), policy(1024, 50 * MS));
    let reports = submit_all(writer, task, &batch).await;
    assert_eq!(order(&reports), vec![0, 1, 2]);
    let original = Stored::Duplicate(Original {
        id: batch[0].id,
        seq: Seq(1),
        content: Some(batch[0].content.as_str().to_owned()),
        created_at: batch[0].created_at,
    });
    let outcomes: Vec<_> = reports.into_iter().map(|(_, r)| r.expect("ok")).collect();
    assert_eq!(
        outcomes,
        vec![Stored::New(Seq(1)), original.clone(), original]
    );
    assert_eq!(history(&*store, chat).await.len(), 1, "stored once");
}
