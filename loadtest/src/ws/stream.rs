//! The check of one seat's view of its conversation's stream: from its first `joined`
//! event on, across every reconnect, each position exactly once and in order. Pure
//! bookkeeping of positions: it never reads the run's state or counts anything itself;
//! the session turns what it says into counters.

/// How an event's position fits what the seat has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next position (for a `joined` event: nothing skipped up to it).
    Next,
    /// A position already seen.
    Duplicate,
    /// This many positions were skipped before this one.
    Gap(u64),
    /// An extra answer to a resent message: the server repeating the original to its
    /// sender, outside the stream, so its position says nothing about the stream.
    Echo,
    /// Before the seat's first `joined` event there is no position to compare with.
    Unplaced,
}

/// The highest position a seat has seen; its `since` when it reconnects.
#[derive(Debug, Default)]
pub struct StreamCheck {
    last: Option<u64>,
}

impl StreamCheck {
    /// Where a reconnect resumes from; `None` until the first `joined` event.
    pub fn position(&self) -> Option<u64> {
        self.last
    }

    /// The seat's own `joined` event at `seq`: the first one anchors the stream; on a
    /// resumed connection the replay must have reached it.
    pub fn joined(&mut self, seq: u64) -> Seen {
        match self.last {
            Some(last) if seq > last => {
                self.last = Some(seq);
                Seen::Gap(seq - last)
            }
            // At or behind what was seen: nothing skipped, and whatever the server sends
            // again after it shows up as duplicates.
            Some(_) => Seen::Next,
            None => {
                self.last = Some(seq);
                Seen::Next
            }
        }
    }

    /// A `resync`: the replay starts at `from_seq`, so the positions before it are
    /// skipped legitimately (history has them).
    pub fn resync(&mut self, from_seq: u64) {
        if let Some(last) = self.last {
            self.last = Some(last.max(from_seq.saturating_sub(1)));
        }
    }

    /// A stream event at `seq`. `may_echo`: the sender's own copy of a message it
    /// resent, which may come twice (once in the stream, once as the server's repeat
    /// of the original, in either order); one out of place is then the repeat.
    pub fn event(&mut self, seq: u64, may_echo: bool) -> Seen {
        let Some(last) = self.last else {
            return Seen::Unplaced;
        };
        if seq == last + 1 {
            self.last = Some(seq);
            Seen::Next
        } else if may_echo {
            Seen::Echo
        } else if seq <= last {
            Seen::Duplicate
        } else {
            self.last = Some(seq);
            Seen::Gap(seq - last - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchored(at: u64) -> StreamCheck {
        let mut check = StreamCheck::default();
        assert_eq!(check.joined(at), Seen::Next);
        check
    }

    #[test]
    fn nothing_is_placed_before_the_first_join() {
        let mut check = StreamCheck::default();
        assert_eq!(check.position(), None);
        assert_eq!(check.event(1, false), Seen::Unplaced);
        check.resync(5);
        assert_eq!(check.position(), None);
        assert_eq!(check.joined(7), Seen::Next);
        assert_eq!(check.position(), Some(7));
    }

    #[test]
    fn in_order_positions_advance() {
        let mut check = anchored(3);
        for seq in 4..10 {
            assert_eq!(check.event(seq, false), Seen::Next);
        }
        assert_eq!(check.position(), Some(9));
    }

    #[test]
    fn a_position_seen_again_is_a_duplicate() {
        let mut check = anchored(3);
        assert_eq!(check.event(4, false), Seen::Next);
        assert_eq!(check.event(4, false), Seen::Duplicate);
        assert_eq!(check.event(2, false), Seen::Duplicate);
        assert_eq!(check.position(), Some(4));
        assert_eq!(check.event(5, false), Seen::Next);
    }

    #[test]
    fn a_skip_is_a_gap_of_the_missing_positions() {
        let mut check = anchored(3);
        assert_eq!(check.event(7, false), Seen::Gap(3));
        assert_eq!(check.position(), Some(7));
        assert_eq!(check.event(8, false), Seen::Next);
        // A late arrival of a skipped position is also a duplicate of the stream's order.
        assert_eq!(check.event(5, false), Seen::Duplicate);
    }

    #[test]
    fn a_resync_skips_legitimately() {
        let mut check = anchored(10);
        check.resync(1500);
        assert_eq!(check.event(1500, false), Seen::Next);
        assert_eq!(check.joined(1500), Seen::Next);
        // A resync that does not reach past what was seen skips nothing.
        check.resync(1000);
        assert_eq!(check.event(1501, false), Seen::Next);
    }

    #[test]
    fn a_resumed_join_must_follow_the_replay() {
        let mut check = anchored(10);
        assert_eq!(check.event(11, false), Seen::Next);
        assert_eq!(check.joined(11), Seen::Next);
        // The replay stopped short of the join: positions 12 and 13 never came.
        assert_eq!(check.joined(13), Seen::Gap(2));
        assert_eq!(check.event(14, false), Seen::Next);
    }

    #[test]
    fn a_resent_message_may_be_answered_twice() {
        // The stream copy first, then the repeat of the original.
        let mut check = anchored(3);
        assert_eq!(check.event(4, true), Seen::Next);
        assert_eq!(check.event(4, true), Seen::Echo);
        assert_eq!(check.event(5, false), Seen::Next);
        // The repeat first, ahead of a stream copy still waiting behind position 6.
        assert_eq!(check.event(7, true), Seen::Echo);
        assert_eq!(check.position(), Some(5));
        assert_eq!(check.event(6, false), Seen::Next);
        assert_eq!(check.event(7, false), Seen::Next);
        // Past its allowance the same answer is a duplicate again.
        assert_eq!(check.event(7, false), Seen::Duplicate);
    }
}
