//! The batched message writer: gathers the messages that home shards submit, commits
//! them many per transaction, and reports each one's fate through its callback.
//!
//! It owns the order of commits: one batch in flight at a time, callbacks in submission
//! order, so history order is the order in which shards handed messages over. It must
//! never acknowledge a message whose batch did not commit, never drop a callback (each
//! fires exactly once), and never block a submitting shard.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{NewMessage, Store, StoreError};

/// When a batch is committed: as soon as it holds `max_batch` messages, or `max_delay`
/// after its oldest message was submitted, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_delay: Duration::from_millis(1),
        }
    }
}

pub type CommitResult = Result<(), Arc<StoreError>>;
pub type OnCommit = Box<dyn FnOnce(CommitResult) + Send>;

/// Bounds one commit so a blackholed database yields errors, not a stuck writer. Above
/// the PostgreSQL store's own per-call deadline, which thus reports first and discards
/// the stuck connection; this catches whatever cannot bound itself, like a SQLite call.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

struct Submitted {
    message: NewMessage,
    done: OnCommit,
    at: Instant,
}

/// Where shards submit messages. Cheap to clone; the writer stops once every clone is
/// dropped and the queue is flushed.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<Submitted>,
    queued: Arc<AtomicUsize>,
}

impl WriterHandle {
    /// Queues a message; `done` is called exactly once, after its batch committed or failed.
    /// Callbacks fire in submission order. Never blocks (callable from any thread, from inside a non-tokio runtime).
    pub fn submit(&self, message: NewMessage, done: OnCommit) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let submitted = Submitted {
            message,
            done,
            at: Instant::now(),
        };
        if let Err(mpsc::error::SendError(rejected)) = self.queue.send(submitted) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            report(
                rejected.done,
                Err(Arc::new(StoreError::Unavailable(
                    "message writer stopped".into(),
                ))),
            );
        }
    }

    /// Messages submitted but not yet reported, for back-pressure.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Spawns the writer task on `runtime`; it exits after every WriterHandle is dropped and everything queued was flushed (the returned JoinHandle resolves then).
pub fn spawn(
    store: Arc<dyn Store>,
    policy: BatchPolicy,
    runtime: &tokio::runtime::Handle,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (queue, incoming) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = Writer {
        store,
        policy,
        incoming,
        queued: Arc::clone(&queued),
        messages: Vec::with_capacity(policy.capacity()),
        callbacks: VecDeque::with_capacity(policy.capacity()),
    };
    let task = runtime.spawn(writer.run());
    (WriterHandle { queue, queued }, task)
}

/// What the gatherer does next with the batch it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gather {
    /// Commit now.
    Flush,
    /// Keep taking messages until this instant, then commit.
    WaitUntil(Instant),
}

impl BatchPolicy {
    /// The gathering rule, free of clocks and queues: `len` messages held, the oldest
    /// submitted at `oldest`, and it is `now`.
    fn gather(&self, len: usize, oldest: Instant, now: Instant) -> Gather {
        if len >= self.capacity() {
            return Gather::Flush;
        }
        match oldest.checked_add(self.max_delay) {
            Some(deadline) if deadline > now => Gather::WaitUntil(deadline),
            Some(_) => Gather::Flush,
            // A delay too long to represent: wait for the batch to fill.
            None => Gather::WaitUntil(now + Duration::from_secs(3600)),
        }
    }

    fn capacity(&self) -> usize {
        self.max_batch.max(1)
    }
}

struct Writer {
    store: Arc<dyn Store>,
    policy: BatchPolicy,
    incoming: mpsc::UnboundedReceiver<Submitted>,
    queued: Arc<AtomicUsize>,
    /// The batch being gathered or committed. It lives here rather than on the task's
    /// stack so that a writer dropped mid-batch (runtime shutdown, abort) still
    /// reports every callback it holds.
    messages: Vec<NewMessage>,
    callbacks: VecDeque<OnCommit>,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.incoming.recv().await {
            let oldest = first.at;
            self.take(first);
            self.gather(oldest).await;
            self.commit().await;
        }
        tracing::debug!("message writer stopped: every handle dropped, queue flushed");
    }

    fn take(&mut self, submitted: Submitted) {
        self.messages.push(submitted.message);
        self.callbacks.push_back(submitted.done);
    }

    /// Adds queued messages to the batch until the policy says to commit it.
    async fn gather(&mut self, oldest: Instant) {
        let capacity = self.policy.capacity();
        loop {
            while self.messages.len() < capacity {
                match self.incoming.try_recv() {
                    Ok(next) => self.take(next),
                    Err(_) => break,
                }
            }
            match self
                .policy
                .gather(self.messages.len(), oldest, Instant::now())
            {
                Gather::Flush => return,
                Gather::WaitUntil(deadline) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                        Ok(Some(next)) => self.take(next),
                        // Deadline reached, or every handle is gone: commit what we have.
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        }
    }

    /// Commits the batch and reports every message of it, in order.
    async fn commit(&mut self) {
        match insert(&*self.store, &self.messages).await {
            Ok(()) => self.report_all(&Ok(())),
            Err(e) if matches!(e, StoreError::Unavailable(_)) || self.messages.len() == 1 => {
                tracing::warn!(error = %e, messages = self.messages.len(), "message batch not committed");
                self.report_all(&Err(Arc::new(e)));
            }
            Err(e) => {
                // The store refused the batch's content, not the batch: one bad message
                // (say, of a conversation that no longer exists) must not sink its
                // neighbours, so each is tried alone, in order.
                tracing::warn!(error = %e, messages = self.messages.len(), "message batch rejected; committing one by one");
                let mut unavailable: Option<Arc<StoreError>> = None;
                for i in 0..self.messages.len() {
                    let result = match &unavailable {
                        Some(e) => Err(Arc::clone(e)),
                        None => {
                            let message = std::slice::from_ref(&self.messages[i]);
                            insert(&*self.store, message).await.map_err(|e| {
                                tracing::warn!(error = %e, message = %message[0].id, "message not committed");
                                let e = Arc::new(e);
                                if matches!(*e, StoreError::Unavailable(_)) {
                                    unavailable = Some(Arc::clone(&e));
                                }
                                e
                            })
                        }
                    };
                    if let Some(done) = self.callbacks.pop_front() {
                        self.report(done, result);
                    }
                }
            }
        }
        self.messages.clear();
    }

    fn report_all(&mut self, result: &CommitResult) {
        while let Some(done) = self.callbacks.pop_front() {
            self.report(done, result.clone());
        }
    }

    fn report(&self, done: OnCommit, result: CommitResult) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        report(done, result);
    }
}

impl Drop for Writer {
    /// Only finds work left when the task was cancelled (runtime shutdown, abort):
    /// whatever it held or was still queued cannot be committed any more, and every
    /// callback must still fire exactly once.
    fn drop(&mut self) {
        self.incoming.close();
        if self.callbacks.is_empty() && self.incoming.is_empty() {
            return;
        }
        let stopped: CommitResult = Err(Arc::new(StoreError::Unavailable(
            "message writer stopped".into(),
        )));
        self.report_all(&stopped);
        while let Ok(next) = self.incoming.try_recv() {
            self.report(next.done, stopped.clone());
        }
    }
}

/// One commit, bounded so a blackholed database yields an error, not a stuck writer.
async fn insert(store: &dyn Store, batch: &[NewMessage]) -> Result<(), StoreError> {
    tokio::time::timeout(COMMIT_TIMEOUT, store.insert_messages(batch))
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "commit of {} messages timed out after {COMMIT_TIMEOUT:?}",
                batch.len()
            )))
        })
}

/// Runs a callback; one that panics is logged and must not take the writer down with
/// the callbacks still waiting behind it.
fn report(done: OnCommit, result: CommitResult) {
    if catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        tracing::error!("a message commit callback panicked");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ids::{now_micros, ConversationId};
    use crate::store::conformance;
    use crate::store::SqliteStore;

    const MS: Duration = Duration::from_millis(1);

    fn policy(max_batch: usize, max_delay: Duration) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            max_delay,
        }
    }

    #[test]
    fn a_full_batch_flushes_at_once() {
        let t0 = Instant::now();
        let p = policy(4, 10 * MS);
        assert_eq!(p.gather(3, t0, t0), Gather::WaitUntil(t0 + 10 * MS));
        assert_eq!(p.gather(4, t0, t0), Gather::Flush);
        assert_eq!(p.gather(5, t0, t0), Gather::Flush);
    }

    #[test]
    fn a_partial_batch_waits_until_its_oldest_message_is_max_delay_old() {
        let t0 = Instant::now();
        let p = policy(1024, 2 * MS);
        assert_eq!(p.gather(1, t0, t0 + MS), Gather::WaitUntil(t0 + 2 * MS));
        assert_eq!(p.gather(1, t0, t0 + 2 * MS), Gather::Flush);
        assert_eq!(p.gather(7, t0, t0 + 3 * MS), Gather::Flush);
    }

    #[test]
    fn zero_delay_takes_what_is_queued_and_goes() {
        let t0 = Instant::now();
        let p = policy(1024, Duration::ZERO);
        assert_eq!(p.gather(1, t0, t0), Gather::Flush);
        assert_eq!(p.gather(300, t0, t0), Gather::Flush);
    }

    #[test]
    fn a_zero_batch_size_means_one() {
        let t0 = Instant::now();
        assert_eq!(policy(0, 10 * MS).gather(1, t0, t0), Gather::Flush);
    }

    #[test]
    fn the_default_is_1024_messages_or_1_ms() {
        assert_eq!(BatchPolicy::default(), policy(1024, MS));
    }

    /// A real SQLite store with one user and one conversation to write into.
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
        let alice = conformance::user("writer_alice");
        store.create_user(&alice).await.expect("user");
        let start = now_micros();
        let chat = conformance::conversation(alice.id, None, start);
        store
            .create_conversation(&chat, &[alice.id])
            .await
            .expect("conversation");
        let batch = conformance::messages(chat.id, &[alice.id], start, 3000);
        (dir, store, chat.id, batch)
    }

    type Reports = Arc<Mutex<Vec<(usize, CommitResult)>>>;

    fn recorder(reports: &Reports, index: usize) -> OnCommit {
        let reports = Arc::clone(reports);
        Box::new(move |result| {
            reports.lock().expect("reports lock").push((index, result));
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_everything_and_reports_in_submission_order() {
        let (_dir, store, chat, batch) = sqlite_fixture().await;
        let (writer, task) = spawn(
            store.clone(),
            policy(100, 2 * MS),
            &tokio::runtime::Handle::current(),
        );
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
        task.await.expect("writer exits once its handles are gone");

        let reports = std::mem::take(&mut *reports.lock().expect("reports lock"));
        let order: Vec<usize> = reports.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (0..batch.len()).collect::<Vec<_>>());
        assert!(reports.iter().all(|(_, r)| r.is_ok()));

        let mut stored = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .history(chat, 100, before)
                .await
                .expect("history")
                .expect("known anchor");
            let Some(first) = page.first() else { break };
            before = Some(first.id);
            stored.splice(0..0, page.iter().map(|m| m.id));
        }
        assert_eq!(stored, batch.iter().map(|m| m.id).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reports_after_commit_and_counts_the_queue() {
        let (_dir, store, chat, batch) = sqlite_fixture().await;
        let (writer, task) = spawn(
            store.clone(),
            policy(1024, 20 * MS),
            &tokio::runtime::Handle::current(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        for message in batch.iter().take(5).cloned() {
            let tx = tx.clone();
            writer.submit(message, Box::new(move |result| drop(tx.send(result))));
        }
        assert_eq!(writer.queued(), 5);
        for _ in 0..5 {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("reported in time")
                .expect("a report")
                .expect("committed");
        }
        assert_eq!(writer.queued(), 0);
        // Reported means committed: the messages are already in history.
        let page = store
            .history(chat, 50, None)
            .await
            .expect("history")
            .expect("known");
        assert_eq!(page.len(), 5);
        drop(writer);
        task.await.expect("writer exits");
    }

    #[tokio::test]
    async fn a_rejected_message_fails_alone_and_the_rest_commit() {
        let (_dir, store, chat, mut batch) = sqlite_fixture().await;
        batch.truncate(5);
        // A conversation that does not exist: the foreign key refuses this one row.
        batch[2].conversation_id = ConversationId::random();
        let (writer, task) = spawn(
            store.clone(),
            policy(1024, 50 * MS),
            &tokio::runtime::Handle::current(),
        );
        let reports: Reports = Arc::default();
        for (i, message) in batch.iter().cloned().enumerate() {
            writer.submit(message, recorder(&reports, i));
        }
        drop(writer);
        task.await.expect("writer exits");

        let reports = std::mem::take(&mut *reports.lock().expect("reports lock"));
        assert_eq!(
            reports.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        for (i, result) in reports.iter() {
            match (i, result) {
                (2, Err(e)) => assert!(matches!(**e, StoreError::Query(_)), "{e:?}"),
                (2, Ok(())) => panic!("the orphan message was acknowledged"),
                (_, r) => assert!(r.is_ok(), "message {i}: {r:?}"),
            }
        }
        let page = store
            .history(chat, 50, None)
            .await
            .expect("history")
            .expect("known");
        let expected: Vec<_> = [0, 1, 3, 4].iter().map(|&i| batch[i].id).collect();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), expected);
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_every_message_of_the_batch() {
        let db = conformance::PgTestDb::create().await;
        let store = Arc::new(
            crate::store::PostgresStore::connect(&db.url, 1)
                .await
                .expect("postgres store"),
        );
        let alice = conformance::user("writer_pg_alice");
        store.create_user(&alice).await.expect("user");
        let start = now_micros();
        let chat = conformance::conversation(alice.id, None, start);
        store
            .create_conversation(&chat, &[alice.id])
            .await
            .expect("conversation");
        let batch = conformance::messages(chat.id, &[alice.id], start, 4);
        let (writer, task) = spawn(
            store.clone(),
            policy(1024, 20 * MS),
            &tokio::runtime::Handle::current(),
        );
        // The database goes away under the store, connections and all.
        drop(db);

        let reports: Reports = Arc::default();
        let started = Instant::now();
        for (i, message) in batch.iter().cloned().enumerate() {
            writer.submit(message, recorder(&reports, i));
        }
        drop(writer);
        task.await.expect("writer exits");
        assert!(started.elapsed() < COMMIT_TIMEOUT + Duration::from_secs(1));
        let reports = std::mem::take(&mut *reports.lock().expect("reports lock"));
        assert_eq!(
            reports.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        for (i, result) in reports.iter() {
            assert!(
                matches!(
                    result.as_ref().map_err(|e| &**e),
                    Err(StoreError::Unavailable(_))
                ),
                "message {i}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn submitting_to_a_stopped_writer_fails_at_once() {
        let (_dir, store, _chat, batch) = sqlite_fixture().await;
        let (writer, task) = spawn(
            store,
            BatchPolicy::default(),
            &tokio::runtime::Handle::current(),
        );
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        writer.submit(
            batch[0].clone(),
            Box::new(move |result| drop(tx.send(result))),
        );
        let result = rx.try_recv().expect("reported during submit");
        assert!(matches!(
            result.as_ref().map_err(|e| &**e),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(writer.queued(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_writer_still_reports_what_it_held() {
        let (_dir, store, _chat, batch) = sqlite_fixture().await;
        // A long delay keeps the first messages gathering when the task is aborted.
        let (writer, task) = spawn(
            store,
            policy(1024, Duration::from_secs(30)),
            &tokio::runtime::Handle::current(),
        );
        let reports: Reports = Arc::default();
        for (i, message) in batch[..3].iter().cloned().enumerate() {
            writer.submit(message, recorder(&reports, i));
        }
        tokio::time::sleep(20 * MS).await;
        writer.submit(batch[3].clone(), recorder(&reports, 3));
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        let reports = std::mem::take(&mut *reports.lock().expect("reports lock"));
        assert_eq!(
            reports.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(reports.iter().all(|(_, r)| r.is_err()));
        assert_eq!(writer.queued(), 0);
    }

    #[tokio::test]
    async fn a_panicking_callback_does_not_stop_the_writer() {
        let (_dir, store, _chat, batch) = sqlite_fixture().await;
        let (writer, task) = spawn(store, policy(2, MS), &tokio::runtime::Handle::current());
        let reports: Reports = Arc::default();
        writer.submit(batch[0].clone(), Box::new(|_| panic!("a callback bug")));
        for (i, message) in batch[1..4].iter().cloned().enumerate() {
            writer.submit(message, recorder(&reports, i + 1));
        }
        drop(writer);
        task.await.expect("writer survives the panic");
        let reports = std::mem::take(&mut *reports.lock().expect("reports lock"));
        assert_eq!(reports.len(), 3);
        assert!(reports.iter().all(|(_, r)| r.is_ok()));
    }
}
