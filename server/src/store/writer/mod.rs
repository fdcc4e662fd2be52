//! The batched message writer: gathers the messages that home shards submit, commits
//! them many per transaction, and reports each one's fate through its callback.
//!
//! It owns the order of commits: one batch in flight at a time, callbacks in submission
//! order, so stream positions (taken inside each commit) follow the order in which
//! shards handed messages over. It must never acknowledge a message whose batch did not
//! commit, never drop a callback (each fires exactly once, with its message handed
//! back), and never block a submitting shard. Two sends with the same idempotency key
//! never share a batch: the second waits for the next one, where the store finds the
//! first.

#[cfg(test)]
mod tests;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use super::model::{NewMessage, Store, StoreError, Stored};
use crate::metrics::WriterMetrics;

/// When a batch is committed: as soon as it holds `max_batch` messages or
/// `max_bytes` of content, or `max_delay` after its oldest message was submitted,
/// whichever comes first. With no delay (the default) a message that finds the
/// writer idle is committed at once, and those that arrive during a commit form the
/// next batch: batches grow with the load, not with a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_bytes: 4 << 20,
            max_delay: Duration::ZERO,
        }
    }
}

pub type CommitResult = Result<Stored, Arc<StoreError>>;
/// Called once with the message handed back and what became of it.
pub type OnCommit = Box<dyn FnOnce(NewMessage, CommitResult) + Send>;

/// Bounds one commit so a blackholed database yields errors, not a stuck writer. Above
/// the PostgreSQL store's own per-call deadline, which thus reports first and discards
/// the stuck connection; this catches whatever cannot bound itself, like a SQLite call.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

struct Submitted {
    message: NewMessage,
    done: OnCommit,
    at: Instant,
}

/// Where shards submit messages. Cheap to clone; the writer stops, with the queue
/// flushed, when asked to (`stop`) or once every clone is dropped.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<Submitted>,
    queued: Arc<Backlog>,
    stop: Arc<Notify>,
}

/// Messages submitted and not yet reported, counted and weighed, for back-pressure.
#[derive(Default)]
struct Backlog {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl Backlog {
    /// What a queued message holds in memory, roughly: its content and key.
    fn weight(message: &NewMessage) -> usize {
        message.content.as_str().len() + message.client_id.as_ref().map_or(0, |c| c.as_str().len())
    }

    fn add(&self, message: &NewMessage) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(Self::weight(message), Ordering::Relaxed);
    }

    fn remove(&self, message: &NewMessage) {
        self.messages.fetch_sub(1, Ordering::Relaxed);
        self.bytes
            .fetch_sub(Self::weight(message), Ordering::Relaxed);
    }
}

impl WriterHandle {
    /// Queues a message; `done` is called exactly once, with the message, after its
    /// batch committed or failed. Callbacks fire in submission order. Never blocks: callable from any
    /// thread, from inside a non-tokio runtime too.
    pub fn submit(&self, message: NewMessage, done: OnCommit) {
        self.queued.add(&message);
        let submitted = Submitted {
            message,
            done,
            at: Instant::now(),
        };
        if let Err(mpsc::error::SendError(rejected)) = self.queue.send(submitted) {
            self.queued.remove(&rejected.message);
            fire(rejected.done, rejected.message, Err(stopped()));
        }
    }

    /// Asks the writer to commit what is queued and end; later submissions are
    /// reported as failed. Its `JoinHandle` resolves once everything is reported.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Messages submitted but not yet reported, for back-pressure.
    pub fn queued(&self) -> usize {
        self.queued.messages.load(Ordering::Relaxed)
    }

    /// The content bytes of those messages.
    pub fn queued_bytes(&self) -> usize {
        self.queued.bytes.load(Ordering::Relaxed)
    }
}

/// Spawns the writer task on `runtime`. It exits, and the returned `JoinHandle`
/// resolves, once it is asked to `stop` (or every `WriterHandle` is dropped) and
/// everything queued was flushed.
pub fn spawn(
    store: Arc<dyn Store>,
    policy: BatchPolicy,
    metrics: WriterMetrics,
    runtime: &tokio::runtime::Handle,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (queue, incoming) = mpsc::unbounded_channel();
    let queued = Arc::new(Backlog::default());
    let stop = Arc::new(Notify::new());
    let writer = Writer {
        store,
        policy,
        incoming,
        stop: Arc::clone(&stop),
        stopping: false,
        queued: Arc::clone(&queued),
        messages: VecDeque::with_capacity(policy.capacity()),
        callbacks: VecDeque::with_capacity(policy.capacity()),
        keys: HashSet::new(),
        bytes: 0,
        carried: None,
        metrics,
    };
    let task = runtime.spawn(writer.run());
    (
        WriterHandle {
            queue,
            queued,
            stop,
        },
        task,
    )
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
    /// The gathering rule, free of clocks and queues: `len` messages of `bytes` held,
    /// the oldest submitted at `oldest`, and it is `now`.
    fn gather(&self, (len, bytes): (usize, usize), oldest: Instant, now: Instant) -> Gather {
        if self.full(len, bytes) {
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

    /// A batch of `len` messages of `bytes` takes no more.
    fn full(&self, len: usize, bytes: usize) -> bool {
        len >= self.capacity() || (len > 0 && bytes >= self.max_bytes)
    }
}

struct Writer {
    store: Arc<dyn Store>,
    policy: BatchPolicy,
    incoming: mpsc::UnboundedReceiver<Submitted>,
    stop: Arc<Notify>,
    /// Asked to stop: the queue is closed and being drained.
    stopping: bool,
    queued: Arc<Backlog>,
    /// The batch being gathered or committed. It lives here rather than on the task's
    /// stack so that a writer dropped mid-batch (runtime shutdown, abort) still
    /// reports every callback it holds.
    messages: VecDeque<NewMessage>,
    callbacks: VecDeque<OnCommit>,
    /// Hashes of the idempotency keys in the batch. A collision only splits a batch.
    keys: HashSet<u64>,
    /// The batch's weight (`Backlog::weight`), bounded by the policy's `max_bytes`.
    bytes: usize,
    /// A send whose key the batch already holds: the first of the next batch.
    carried: Option<Submitted>,
    metrics: WriterMetrics,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let next = if let Some(carried) = self.carried.take() {
                Some(carried)
            } else {
                tokio::select! {
                next = self.incoming.recv() => next,
                () = self.stop.notified(), if !self.stopping => {
                    self.begin_stopping();
                    continue;
                }
                }
            };
            let Some(first) = next else { break };
            let oldest = first.at;
            self.take(first);
            self.gather(oldest).await;
            self.commit().await;
        }
        tracing::debug!("message writer stopped, queue flushed");
    }

    /// Closed, the queue still yields what it holds, then `None`: the loops drain it
    /// and end.
    fn begin_stopping(&mut self) {
        self.incoming.close();
        self.stopping = true;
    }

    /// Adds a message to the batch; false (and the message kept for the next batch)
    /// when the batch already holds its idempotency key.
    fn take(&mut self, submitted: Submitted) -> bool {
        if let Some(key) = submitted.message.idempotency_key() {
            let mut hasher = DefaultHasher::new();
            key.hash(&mut hasher);
            if !self.keys.insert(hasher.finish()) {
                self.carried = Some(submitted);
                return false;
            }
        }
        self.bytes += Backlog::weight(&submitted.message);
        self.messages.push_back(submitted.message);
        self.callbacks.push_back(submitted.done);
        true
    }

    /// Adds queued messages to the batch until the policy says to commit it.
    async fn gather(&mut self, oldest: Instant) {
        loop {
            while !self.policy.full(self.messages.len(), self.bytes) {
                match self.incoming.try_recv() {
                    Ok(next) => {
                        if !self.take(next) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            match self
                .policy
                .gather((self.messages.len(), self.bytes), oldest, Instant::now())
            {
                Gather::Flush => return,
                Gather::WaitUntil(deadline) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    let next = tokio::select! {
                        next = tokio::time::timeout_at(deadline, self.incoming.recv()) => next,
                        // Stopping: no point waiting for the batch to fill.
                        () = self.stop.notified(), if !self.stopping => {
                            self.begin_stopping();
                            continue;
                        }
                    };
                    match next {
                        Ok(Some(next)) => {
                            if !self.take(next) {
                                return;
                            }
                        }
                        // Deadline reached, or the queue is closed and empty: commit.
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        }
    }

    /// Commits the batch and reports every message of it, in order. The batch stays
    /// in `self` until each message is reported, so a cancelled commit still reports.
    async fn commit(&mut self) {
        self.keys.clear();
        self.bytes = 0;
        let batch = self.messages.make_contiguous();
        let started = std::time::Instant::now();
        let committed = insert(&*self.store, batch).await;
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if committed.is_err() {
            self.metrics.store_errors.inc();
        }
        match committed {
            Ok(outcomes) if outcomes.len() == self.messages.len() => {
                for outcome in outcomes {
                    self.report_next(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                let e = StoreError::Query(format!(
                    "{} outcomes for a batch of {}",
                    outcomes.len(),
                    self.messages.len()
                ));
                self.report_all(&Err(Arc::new(e)));
            }
            Err(e) if matches!(e, StoreError::Unavailable(_)) || self.messages.len() == 1 => {
                tracing::warn!(error = %e, messages = self.messages.len(), "message batch not committed");
                self.report_all(&Err(Arc::new(e)));
            }
            Err(e) => {
                // The store refused the batch's content, not the batch: one bad message
                // (say, of a sender that no longer exists) must not sink its neighbours,
                // so each is tried alone, in order.
                tracing::warn!(error = %e, messages = self.messages.len(), "message batch rejected; committing one by one");
                let mut unavailable: Option<Arc<StoreError>> = None;
                while let Some(message) = self.messages.front() {
                    let result = match &unavailable {
                        Some(e) => Err(Arc::clone(e)),
                        None => match insert(&*self.store, std::slice::from_ref(message)).await {
                            Ok(mut one) if one.len() == 1 => Ok(one.remove(0)),
                            Ok(_) => Err(Arc::new(StoreError::Query("no outcome".into()))),
                            Err(e) => {
                                tracing::warn!(error = %e, message = %message.id, "message not committed");
                                let e = Arc::new(e);
                                if matches!(*e, StoreError::Unavailable(_)) {
                                    unavailable = Some(Arc::clone(&e));
                                }
                                Err(e)
                            }
                        },
                    };
                    self.report_next(result);
                }
            }
        }
    }

    fn report_all(&mut self, result: &CommitResult) {
        while !self.messages.is_empty() {
            self.report_next(result.clone());
        }
    }

    /// Reports the oldest unreported message of the batch.
    fn report_next(&mut self, result: CommitResult) {
        if let (Some(message), Some(done)) = (self.messages.pop_front(), self.callbacks.pop_front())
        {
            self.queued.remove(&message);
            fire(done, message, result);
        }
    }
}

impl Drop for Writer {
    /// Only finds work left when the task was cancelled (runtime shutdown, abort):
    /// whatever it held or was still queued cannot be committed any more, and every
    /// callback must still fire exactly once.
    fn drop(&mut self) {
        self.incoming.close();
        self.report_all(&Err(stopped()));
        let rest = self.carried.take().into_iter();
        let queued = std::iter::from_fn(|| self.incoming.try_recv().ok());
        for next in rest.chain(queued).collect::<Vec<_>>() {
            self.queued.remove(&next.message);
            fire(next.done, next.message, Err(stopped()));
        }
    }
}

fn stopped() -> Arc<StoreError> {
    Arc::new(StoreError::Unavailable("message writer stopped".into()))
}

/// One commit, bounded so a blackholed database yields an error, not a stuck writer.
async fn insert(store: &dyn Store, batch: &[NewMessage]) -> Result<Vec<Stored>, StoreError> {
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
fn fire(done: OnCommit, message: NewMessage, result: CommitResult) {
    if catch_unwind(AssertUnwindSafe(move || done(message, result))).is_err() {
        tracing::error!("a message commit callback panicked");
    }
}
