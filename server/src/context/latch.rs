//! A one-way, shard-local signal: set once, awaited by any number of tasks.
//!
//! A waiter that is dropped before the signal (an HTTP connection that ended, one
//! turn of a `select!`) takes its waker with it, so waiting costs nothing that
//! outlives the wait.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    next_key: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Latch {
    pub fn set(&self) {
        self.set.set(true);
        for (_, waker) in self.waiters.borrow_mut().drain() {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait {
            latch: self,
            key: None,
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`Latch::wait`].
pub struct Wait<'a> {
    latch: &'a Latch,
    key: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let latch = self.latch;
        if latch.set.get() {
            return Poll::Ready(());
        }
        let key = *self.key.get_or_insert_with(|| {
            let key = latch.next_key.get();
            latch.next_key.set(key + 1);
            key
        });
        latch.waiters.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.latch.waiters.borrow_mut().remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_waiters_leave_nothing_behind() {
        let latch = Latch::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut wait = std::pin::pin!(latch.wait());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(latch.waiting(), 0);
        let mut kept = Box::pin(latch.wait());
        assert!(kept.as_mut().poll(&mut cx).is_pending());
        latch.set();
        assert!(kept.as_mut().poll(&mut cx).is_ready());
    }
}
