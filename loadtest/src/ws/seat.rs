//! What one seat (a user's socket in one conversation) carries from connection to
//! connection: its view of the stream (where to resume from, and the check of it), the
//! order in which it has seen each sender's messages, and its sends not yet answered,
//! which are written again with their `client_id` on the next live connection instead
//! of being given up. It never touches a socket; each session borrows it.
//!
//! Every send it holds is counted in the run's `outstanding` gauge until it is
//! answered, refused, or abandoned when the seat closes for good.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::stream::StreamCheck;
use crate::state::Run;

pub(super) struct Seat {
    pub(super) stream: StreamCheck,
    /// Per sender slot that has sent: 1 + the highest message number delivered to
    /// this seat (a map: in a room of thousands, few of them speak to each seat).
    pub(super) order: HashMap<usize, usize>,
    pub(super) rng: SmallRng,
    /// This seat's messages neither acknowledged nor refused yet, by number.
    unanswered: BTreeSet<usize>,
    /// Those of them to write again on the current connection, in the order first sent.
    resend: BTreeSet<usize>,
}

impl Seat {
    pub(super) fn new() -> Self {
        Seat {
            stream: StreamCheck::default(),
            order: HashMap::new(),
            rng: SmallRng::from_rng(&mut rand::rng()),
            unanswered: BTreeSet::new(),
            resend: BTreeSet::new(),
        }
    }

    /// The `since` of the next connection: the highest position seen, once there is one.
    pub(super) fn since(&self) -> Option<u64> {
        self.stream.position()
    }

    /// Message `number` is about to be written for the first time.
    pub(super) fn sent(&mut self, run: &Run, number: usize) {
        self.unanswered.insert(number);
        run.counters.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// Message `number` was acknowledged or refused (maybe again: only the first counts).
    pub(super) fn settle(&mut self, run: &Run, number: usize) {
        self.resend.remove(&number);
        if self.unanswered.remove(&number) {
            run.counters.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn awaiting(&self) -> bool {
        !self.unanswered.is_empty()
    }

    /// A new connection is live, its replay read: whatever is still unanswered was
    /// lost with an earlier connection or is still being committed, and goes again
    /// (the server stores a repeated `client_id` once).
    pub(super) fn resend_unanswered(&mut self) {
        self.resend.clone_from(&self.unanswered);
    }

    /// The server could not say whether message `number` was saved: send it again.
    pub(super) fn resend_one(&mut self, number: usize) {
        if self.unanswered.contains(&number) {
            self.resend.insert(number);
        }
    }

    pub(super) fn resend_due(&self) -> bool {
        !self.resend.is_empty()
    }

    /// The next message to write again; it stays unanswered until its answer comes.
    pub(super) fn next_resend(&mut self) -> Option<usize> {
        self.resend.pop_first()
    }

    /// The seat closed for good: what it never heard back about stays unacknowledged.
    pub(super) fn abandon(&mut self, run: &Run) {
        let left = self.unanswered.len() as u64;
        run.counters.outstanding.fetch_sub(left, Ordering::Relaxed);
        self.unanswered.clear();
        self.resend.clear();
    }
}
