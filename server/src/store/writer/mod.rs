//! The batched message writer: gathers the messages that home shards submit, commits
//! them many per transaction, and reports each one's fate through its callback.
//!
//! It owns the order of commits: one batch in flight at a time, callbacks in submission
//! order, so history order is the order in which shards handed messages over. It must
//! never acknowledge a message whose batch did not commit, never drop a callback (each
//! fires exactly once), and never block a submitting shard.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

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

/// Where shards submit messages. Cheap to clone; the writer stops, with the queue
/// flushed, when asked to (`stop`) or once every clone is dropped.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<Submitted>,
    queued: Arc<AtomicUsize>,
    stop: Arc<Notify>,
}

impl WriterHandle {
    /// Queues a message; `done` is called exactly once, after its batch committed or
    /// failed. Callbacks fire in submission order. Never blocks: callable from any
    /// thread, from inside a non-tokio runtime too.
    pub fn submit(&self, message: NewMessage, done: OnCommit) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let submitted = Submitted {
            message,
            done,
            at: Instant::now(),
        };
        if let Err(mpsc::error::SendError(rejected)) = self.queue.send(submitted) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            fire(
                rejected.done,
                Err(Arc::new(StoreError::Unavailable(
                    "message writer stopped".into(),
                ))),
            );
        }
    }

    /// Asks the writer to commit what is queued and end; later submissions are
    /// reported as failed. Its `JoinHandle` resolves once everything is reported.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Messages submitted but not yet reported, for back-pressure.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Spawns the writer task on `runtime`. It exits, and the returned `JoinHandle`
/// resolves, once it is asked to `stop` (or every `WriterHandle` is dropped) and
/// everything queued was flushed.
pub fn spawn(
    store: Arc<dyn Store>,
    policy: BatchPolicy,
    runtime: &tokio::runtime::Handle,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (queue, incoming) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(Notify::new());
    let writer = Writer {
        store,
        policy,
        incoming,
        stop: Arc::clone(&stop),
        stopping: false,
        queued: Arc::clone(&queued),
        messages: Vec::with_capacity(policy.capacity()),
        callbacks: VecDeque::with_capacity(policy.capacity()),
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
    stop: Arc<Notify>,
    /// Asked to stop: the queue is closed and being drained.
    stopping: bool,
    queued: Arc<AtomicUsize>,
    /// The batch being gathered or committed. It lives here rather than on the task's
    /// stack so that a writer dropped mid-batch (runtime shutdown, abort) still
    /// reports every callback it holds.
    messages: Vec<NewMessage>,
    callbacks: VecDeque<OnCommit>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let next = tokio::select! {
                next = self.incoming.recv() => next,
                () = self.stop.notified(), if !self.stopping => {
                    self.begin_stopping();
                    continue;
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
                    let next = tokio::select! {
                        next = tokio::time::timeout_at(deadline, self.incoming.recv()) => next,
                        // Stopping: no point waiting for the batch to fill.
                        () = self.stop.notified(), if !self.stopping => {
                            self.begin_stopping();
                            continue;
                        }
                    };
                    match next {
                        Ok(Some(next)) => self.take(next),
                        // Deadline reached, or the queue is closed and empty: commit.
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
        fire(done, result);
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
fn fire(done: OnCommit, result: CommitResult) {
    if catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        tracing::error!("a message commit callback panicked");
    }
}
