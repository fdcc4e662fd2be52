//! One WebSocket connection as the hub sees it: who it is, which conversation, and
//! its outbound queue. The queue holds shared frames (`Bytes`), is bounded in bytes,
//! and is drained by the connection's single writer task, which coalesces everything
//! queued into one write. A connection that overflows is marked, its queue freed,
//! and its writer closes it with 1013.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;

use crate::ids::{ConversationId, UserId};
use crate::protocol::close_frame;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued; nothing may follow it.
    Closing,
    /// The client fell too far behind.
    Overflowed,
}

pub struct Conn {
    pub id: u64,
    pub user: UserId,
    pub username: Arc<str>,
    pub conversation: ConversationId,
    limit: usize,
    queue: RefCell<VecDeque<Bytes>>,
    queued_bytes: Cell<usize>,
    state: Cell<State>,
    writer: Cell<Option<Waker>>,
}

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write these frames; if `last`, the final one was a close frame: stop after.
    Write { last: bool },
    /// Overflowed: send the 1013 close and stop.
    Overflowed,
}

impl Conn {
    pub fn new(
        id: u64,
        user: UserId,
        username: Arc<str>,
        conversation: ConversationId,
        limit: usize,
    ) -> Self {
        Self {
            id,
            user,
            username,
            conversation,
            limit,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            state: Cell::new(State::Open),
            writer: Cell::new(None),
        }
    }

    /// Queues a frame. Past the byte budget the connection is condemned instead.
    pub fn push(&self, frame: Bytes) {
        if self.state.get() != State::Open {
            return;
        }
        let total = self.queued_bytes.get() + frame.len();
        if total > self.limit {
            self.state.set(State::Overflowed);
            self.queued_bytes.set(0);
            *self.queue.borrow_mut() = VecDeque::new();
        } else {
            self.queued_bytes.set(total);
            self.queue.borrow_mut().push_back(frame);
        }
        self.wake();
    }

    /// Queues a final frame (a close); the writer stops after writing it.
    pub fn close_with(&self, frame: Bytes) {
        if self.state.get() != State::Open {
            return;
        }
        self.queue.borrow_mut().push_back(frame);
        self.state.set(State::Closing);
        self.wake();
    }

    pub fn close(&self, code: u16, reason: &str) {
        self.close_with(close_frame(code, reason));
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    fn wake(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Waits for work and moves every queued frame into `batch`.
    pub async fn next(&self, batch: &mut Vec<Bytes>) -> Next {
        poll_fn(|cx| {
            if self.state.get() == State::Overflowed {
                return Poll::Ready(Next::Overflowed);
            }
            let mut queue = self.queue.borrow_mut();
            if queue.is_empty() {
                self.writer.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            batch.extend(queue.drain(..));
            self.queued_bytes.set(0);
            Poll::Ready(Next::Write {
                last: self.state.get() == State::Closing,
            })
        })
        .await
    }

    /// Resolves once the connection overflowed; watched while a write is stuck.
    pub async fn overflowed(&self) {
        poll_fn(|cx| {
            if self.state.get() == State::Overflowed {
                Poll::Ready(())
            } else {
                self.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }

    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: usize) -> Conn {
        Conn::new(
            1,
            UserId::random(),
            "u".into(),
            ConversationId::random(),
            limit,
        )
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn coalesces_everything_queued() {
        let c = conn(1000);
        c.push(Bytes::from_static(b"a"));
        c.push(Bytes::from_static(b"bb"));
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: false });
        assert_eq!(batch.len(), 2);
        assert_eq!(c.queued_bytes(), 0);
    }

    #[test]
    fn overflow_frees_the_queue_and_condemns() {
        let c = conn(10);
        c.push(Bytes::from(vec![0; 8]));
        c.push(Bytes::from(vec![0; 8]));
        assert_eq!(c.queued_bytes(), 0);
        assert!(!c.is_open());
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Overflowed);
        assert!(batch.is_empty());
    }

    #[test]
    fn nothing_after_close() {
        let c = conn(100);
        c.push(Bytes::from_static(b"x"));
        c.close(1000, "bye");
        c.push(Bytes::from_static(b"late"));
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: true });
        assert_eq!(batch.len(), 2);
    }
}
