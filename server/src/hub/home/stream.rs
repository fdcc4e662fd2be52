//! A conversation's stream as its home delivers it: every persisted event goes out in
//! position order (`seq`), each position exactly once, whatever order the commits
//! report in. Edits, deletes and reactions commit on the store's pool beside the
//! writer's batches, and a commit that timed out may still have happened, so a position
//! can arrive late or not at all: later ones wait here, and once nothing is in flight
//! the gap is read back from the store (`Homes::fill`) rather than skipped.
//!
//! It never touches a socket or the store itself; the home drives both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::Seq;

/// How many events one read of a gap brings back; a longer gap takes several.
pub(super) const FILL_PAGE: u64 = 1000;
/// How long to wait before reading a gap again after the store failed to answer.
pub(super) const FILL_RETRY: Duration = Duration::from_secs(1);
/// In a cluster, how long a gap may stay open before it is read from the store: the
/// missing position was committed by another node, whose publication is normally a
/// fraction of a millisecond behind.
pub(super) const REMOTE_GRACE: Duration = Duration::from_millis(100);

/// What the home should do about a gap or a doubt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fill {
    /// Nothing to read, or not yet.
    No,
    /// Read the store after this position now.
    Now(Seq),
    /// Look again after this long: another node's event may close the gap first.
    Later(Duration),
}

/// The delivery state of one conversation at its home.
#[derive(Debug)]
pub(super) struct Stream {
    /// The last position delivered; everything up to it went out, in order.
    delivered: Seq,
    /// Committed events past a gap, waiting for it to close.
    pending: BTreeMap<Seq, Bytes>,
    /// Commits of this conversation submitted and not yet reported.
    in_flight: u32,
    /// A commit's outcome is unknown (it may have happened): look in the store once
    /// nothing is in flight.
    doubtful: bool,
    /// A read of the store for a gap is under way.
    filling: bool,
    /// Since when the gap after this position has been open.
    gap_since: Option<(Seq, Instant)>,
    /// A look at the gap is scheduled (`Fill::Later`).
    timer: bool,
    /// The highest position pending when the read under way started: every position
    /// below it was committed before the read, so the read must bring back those it
    /// does not skip.
    known_before_fill: Option<Seq>,
}

impl Stream {
    pub(super) fn new(position: Seq) -> Self {
        Self {
            delivered: position,
            pending: BTreeMap::new(),
            in_flight: 0,
            doubtful: false,
            filling: false,
            gap_since: None,
            timer: false,
            known_before_fill: None,
        }
    }

    /// The last position delivered: what a client joining now has seen once it has
    /// the events up to here.
    pub(super) fn position(&self) -> Seq {
        self.delivered
    }

    /// No commit or read of the conversation is under way: once nobody is connected
    /// either, the home may forget it (whatever is pending has no one to go to).
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight == 0 && !self.filling
    }

    pub(super) fn begin_commit(&mut self) {
        self.in_flight += 1;
    }

    /// A commit was reported; `maybe_committed` when its outcome is unknown.
    pub(super) fn end_commit(&mut self, maybe_committed: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.doubtful |= maybe_committed;
    }

    /// The store is known to be further along than what was delivered (a joining
    /// connection read a later position): look.
    pub(super) fn behind(&mut self, position: Seq) {
        if position > self.delivered {
            self.doubtful = true;
        }
    }

    /// Events may have been missed (another node's): look in the store.
    pub(super) fn doubt(&mut self) {
        self.doubtful = true;
    }

    /// Takes a committed event; positions already delivered are ignored.
    pub(super) fn accept(&mut self, seq: Seq, frame: Bytes) {
        if seq > self.delivered {
            self.pending.entry(seq).or_insert(frame);
        }
    }

    /// The next frame to deliver, if its position is the next one.
    pub(super) fn pop_ready(&mut self) -> Option<Bytes> {
        let next = self.delivered.next();
        let frame = self.pending.remove(&next)?;
        self.delivered = next;
        Some(frame)
    }

    /// Whether the store must be read now: a doubt, or a gap open for `grace`. On one
    /// node (no grace) only once no commit in flight could still close the gap; in a
    /// cluster the gap may be another node's event, which no local commit closes, and
    /// any position below a committed one is committed too, so the read is safe
    /// whatever is in flight. Starts the read when so: the caller runs it.
    pub(super) fn start_fill(&mut self, now: Instant, grace: Duration) -> Fill {
        let gap = !self.pending.is_empty();
        if self.filling || !(self.doubtful || gap) || (self.in_flight > 0 && grace.is_zero()) {
            return Fill::No;
        }
        if !self.doubtful {
            let since = match self.gap_since {
                Some((after, since)) if after == self.delivered => since,
                _ => self.gap_since.insert((self.delivered, now)).1,
            };
            let waited = now.saturating_duration_since(since);
            if waited < grace {
                if self.timer {
                    return Fill::No;
                }
                self.timer = true;
                return Fill::Later(grace - waited);
            }
        }
        self.filling = true;
        self.doubtful = false;
        self.gap_since = None;
        self.known_before_fill = self.pending.last_key_value().map(|(&seq, _)| seq);
        Fill::Now(self.delivered)
    }

    /// The look scheduled by `Fill::Later` is due.
    pub(super) fn timer_fired(&mut self) {
        self.timer = false;
    }

    /// The read ended; `complete` is false when more may follow (a full page, or the
    /// store failed). After a complete read, a gap still open below a position that
    /// was pending before the read began is one the store does not hold (rows removed
    /// by hand): its positions are skipped, not waited for. A gap below positions that
    /// arrived during the read (another node's, committed after the read looked) is
    /// waited for like any other. Returns the skipped positions.
    pub(super) fn end_fill(&mut self, complete: bool) -> u64 {
        self.filling = false;
        let known = self.known_before_fill.take();
        if !complete {
            self.doubtful = true;
            return 0;
        }
        match self.pending.first_key_value() {
            Some((&first, _)) if first > self.delivered.next() && known >= Some(first) => {
                let skipped = first.0 - self.delivered.0 - 1;
                self.delivered = Seq(first.0 - 1);
                skipped
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    /// One node: a gap is read as soon as nothing in flight can close it.
    fn now(s: &mut Stream) -> Option<Seq> {
        match s.start_fill(Instant::now(), Duration::ZERO) {
            Fill::Now(after) => Some(after),
            Fill::No => None,
            Fill::Later(_) => panic!("no grace was given"),
        }
    }

    fn drain(s: &mut Stream) -> Vec<Bytes> {
        std::iter::from_fn(|| s.pop_ready()).collect()
    }

    #[test]
    fn delivers_in_position_order_whatever_the_arrival_order() {
        let mut s = Stream::new(Seq(10));
        s.begin_commit();
        s.begin_commit();
        s.accept(Seq(12), f(12));
        s.end_commit(false);
        assert!(drain(&mut s).is_empty(), "12 waits for 11");
        assert_eq!(now(&mut s), None, "11 is still in flight");
        s.accept(Seq(11), f(11));
        s.end_commit(false);
        assert_eq!(drain(&mut s), vec![f(11), f(12)]);
        assert_eq!(s.position(), Seq(12));
        assert!(s.is_idle());
    }

    #[test]
    fn a_gap_nothing_in_flight_can_close_is_read_back() {
        let mut s = Stream::new(Seq(0));
        s.begin_commit();
        s.end_commit(true); // timed out: it may have committed at 1
        s.begin_commit();
        s.accept(Seq(2), f(2));
        s.end_commit(false);
        assert_eq!(now(&mut s), Some(Seq(0)));
        assert_eq!(now(&mut s), None, "one read at a time");
        s.accept(Seq(1), f(1));
        s.accept(Seq(2), f(22)); // the read's copy of 2 does not replace the live one
        s.end_fill(true);
        assert_eq!(drain(&mut s), vec![f(1), f(2)]);
        assert_eq!(now(&mut s), None);
    }

    #[test]
    fn doubts_and_late_joiners_look_in_the_store_once_idle() {
        let mut s = Stream::new(Seq(3));
        s.behind(Seq(3));
        assert_eq!(now(&mut s), None, "not behind");
        s.behind(Seq(5));
        assert_eq!(now(&mut s), Some(Seq(3)));
        s.end_fill(false);
        assert_eq!(now(&mut s), Some(Seq(3)), "an incomplete read is retried");
        s.end_fill(true);
        s.accept(Seq(2), f(2));
        assert!(drain(&mut s).is_empty(), "old positions are ignored");
        assert!(s.is_idle());
    }

    #[test]
    fn a_gap_the_store_does_not_hold_is_skipped_after_a_complete_read() {
        let mut s = Stream::new(Seq(4));
        s.accept(Seq(7), f(7));
        assert_eq!(now(&mut s), Some(Seq(4)));
        assert_eq!(s.end_fill(false), 0, "an incomplete read skips nothing");
        assert!(drain(&mut s).is_empty());
        assert_eq!(now(&mut s), Some(Seq(4)));
        assert_eq!(s.end_fill(true), 2, "5 and 6 are not in the store");
        assert_eq!(drain(&mut s), vec![f(7)]);
        assert_eq!(s.position(), Seq(7));
    }

    #[test]
    fn in_a_cluster_a_gap_waits_for_the_other_nodes_before_the_store() {
        let grace = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut s = Stream::new(Seq(1));
        s.accept(Seq(3), f(3));
        assert_eq!(s.start_fill(t0, grace), Fill::Later(grace));
        assert_eq!(
            s.start_fill(t0 + Duration::from_millis(10), grace),
            Fill::No,
            "one look scheduled at a time"
        );
        s.timer_fired();
        assert_eq!(
            s.start_fill(t0 + Duration::from_millis(40), grace),
            Fill::Later(Duration::from_millis(60)),
            "the wait counts from when the gap opened"
        );
        s.timer_fired();
        s.accept(Seq(2), f(2));
        assert_eq!(
            drain(&mut s),
            vec![f(2), f(3)],
            "the remote event closed it"
        );
        s.accept(Seq(5), f(5));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            s.start_fill(t1, grace),
            Fill::Later(grace),
            "a new gap waits anew"
        );
        s.timer_fired();
        assert_eq!(s.start_fill(t1 + grace, grace), Fill::Now(Seq(3)));
        s.accept(Seq(4), f(4));
        s.end_fill(true);
        assert_eq!(drain(&mut s), vec![f(4), f(5)]);
        s.doubt();
        assert_eq!(
            s.start_fill(t1 + grace, grace),
            Fill::Now(Seq(5)),
            "a doubt reads at once"
        );
    }

    #[test]
    fn a_gap_below_what_arrived_during_a_read_is_waited_for_not_skipped() {
        let grace = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut s = Stream::new(Seq(4));
        s.doubt();
        assert_eq!(s.start_fill(t0, grace), Fill::Now(Seq(4)));
        // Another node's 6 arrives while the read runs; its 5 committed after the read
        // looked, so the read did not bring it.
        s.accept(Seq(6), f(6));
        assert_eq!(s.end_fill(true), 0, "5 exists: it is not skipped");
        assert!(drain(&mut s).is_empty());
        assert_eq!(
            s.start_fill(t0, grace),
            Fill::Later(grace),
            "it is waited for"
        );
        s.accept(Seq(5), f(5));
        assert_eq!(drain(&mut s), vec![f(5), f(6)]);
    }

    #[test]
    fn in_a_cluster_commits_in_flight_do_not_hold_a_read_back() {
        let grace = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut s = Stream::new(Seq(1));
        s.begin_commit();
        s.accept(Seq(3), f(3));
        assert_eq!(s.start_fill(t0, grace), Fill::Later(grace));
        s.timer_fired();
        assert_eq!(s.start_fill(t0 + grace, grace), Fill::Now(Seq(1)));
    }
}
