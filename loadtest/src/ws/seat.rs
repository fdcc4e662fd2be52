//! What one seat (a user in one conversation its socket carries) keeps from
//! connection to connection: which conversation it is, its view of the stream (where
//! to resume from, and the check of it), the order in which it has seen each sender's
//! messages, the messages of others it has seen (what the server's unread count must
//! say while the marker is at 0), and its sends not yet answered, which are written
//! again with their `client_id` on the next live connection instead of being given up.
//! It never touches a socket; each session borrows the socket's seats.
//!
//! Every send it holds is counted in the run's `outstanding` gauge until it is
//! answered, refused, or abandoned when the seat closes for good.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use super::stream::StreamCheck;
use super::SeatSpec;
use crate::state::Run;

pub(super) struct Seat {
    /// Global conversation index.
    pub(super) conv: usize,
    /// The user's slot among the conversation's members.
    pub(super) slot: usize,
    pub(super) conv_id: String,
    pub(super) stream: StreamCheck,
    /// Per sender slot that has sent: 1 + the highest message number delivered to
    /// this seat (a map: in a room of thousands, few of them speak to each seat).
    pub(super) order: HashMap<usize, usize>,
    /// Messages of other users (any client's, deleted ones aside) placed in the
    /// seat's stream: the conversation's unread count for the user while its marker
    /// is at 0, if nothing was skipped.
    pub(super) others_seen: u64,
    /// Positions the seat never saw: its first `joined` event came after the stream
    /// began, or a gap or a `resync` skipped some. `others_seen` then says nothing
    /// certain about the unread count.
    pub(super) skipped: bool,
    /// This seat's messages neither acknowledged nor refused yet, by number.
    unanswered: BTreeSet<usize>,
    /// Those of them to write again on the current connection, in the order first sent.
    resend: BTreeSet<usize>,
}

/// What one seat has seen of its conversation, for the end-of-run check of read
/// markers and unread counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeatView {
    /// Global conversation index.
    pub conv: usize,
    pub conv_id: String,
    /// The highest position seen; none before the first `joined` event.
    pub position: Option<u64>,
    /// Messages of others seen in the stream, deleted ones aside.
    pub others_seen: u64,
    /// Whether those are all of the stream's up to `position` (nothing skipped).
    pub whole: bool,
}

impl Seat {
    pub(super) fn new(spec: &SeatSpec) -> Self {
        Seat {
            conv: spec.conv,
            slot: spec.slot,
            conv_id: spec.conv_id.clone(),
            stream: StreamCheck::default(),
            order: HashMap::new(),
            others_seen: 0,
            skipped: false,
            unanswered: BTreeSet::new(),
            resend: BTreeSet::new(),
        }
    }

    /// Where the next connection resumes: the highest position seen, once there is one.
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

    /// A new connection is live in this seat's conversation, its replay read:
    /// whatever is still unanswered was lost with an earlier connection or is still
    /// being committed, and goes again (the server stores a repeated `client_id` once).
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

    fn view(&self) -> SeatView {
        SeatView {
            conv: self.conv,
            conv_id: self.conv_id.clone(),
            position: self.since(),
            others_seen: self.others_seen,
            whole: !self.skipped,
        }
    }
}

/// Every seat's view, in the socket's seat order.
pub(super) fn views(seats: &[Seat]) -> Vec<SeatView> {
    seats.iter().map(Seat::view).collect()
}
