//! How a conversation's presence is told, whatever its size. Below the list limit
//! (`--presence-list-limit`) every join and leave is announced at once with the full
//! `active_users` list, as the quick-start guide's clients expect. Above it a list would
//! cost every member O(members) bytes per join, O(members^2) per join storm, so joins
//! and leaves carry only the user and `active_count`, and they are announced at most
//! once per interval per conversation: changes in between are summed up into one
//! announcement (`Coalescer`). The joiner always hears of its own join at once.
//!
//! Pure policy and its one rendering into `system` frames: no I/O, no timers; the homes
//! (one node) and the cluster's presence task (several) drive it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::{ConversationId, Seq, UserId};
use crate::protocol::{Active, Membership, ServerEvent};

/// A change of one user's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub user: UserId,
    pub username: Arc<str>,
    /// `Some(position)` for a join (where the joiner is live from), `None` for a leave.
    pub joined_at: Option<Seq>,
}

impl Change {
    /// The `system` event of this change, with who is connected.
    pub fn frame(&self, conversation: ConversationId, active: Active<'_>) -> Bytes {
        let membership = match self.joined_at {
            Some(_) => Membership::Joined,
            None => Membership::Left,
        };
        ServerEvent::membership(
            conversation,
            membership,
            self.user,
            &self.username,
            active,
            self.joined_at,
        )
    }
}

/// What to announce once an interval has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Summary {
    /// One change came: announced as itself.
    One(Change),
    /// Several came: announced as counts.
    Many { joined: u32, left: u32 },
}

impl Summary {
    /// The `system` event saying it, with how many are connected, and whose
    /// connections skip it: a joiner heard of its own join already.
    pub fn frame(
        self,
        conversation: ConversationId,
        active_count: usize,
    ) -> (Bytes, Option<UserId>) {
        match self {
            Summary::One(change) => {
                let skip = change.joined_at.map(|_| change.user);
                (
                    change.frame(conversation, Active::Count(active_count)),
                    skip,
                )
            }
            Summary::Many { joined, left } => (
                ServerEvent::presence_summary(conversation, joined, left, active_count),
                None,
            ),
        }
    }
}

/// What to do with a change above the list limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Noted {
    /// Nothing was announced for an interval: announce this change now.
    Now,
    /// Held for the next announcement; flush after this long (`None`: one is already
    /// scheduled).
    Held(Option<Duration>),
}

/// The announcements of one conversation above the list limit.
#[derive(Debug, Default)]
pub struct Coalescer {
    held: Option<Summary>,
    /// When the last announcement went out.
    last: Option<Instant>,
    /// A flush is scheduled.
    scheduled: bool,
}

impl Coalescer {
    /// Takes a change: announced now if the conversation was quiet for `interval`,
    /// held otherwise.
    pub fn note(&mut self, change: Change, now: Instant, interval: Duration) -> Noted {
        let quiet = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= interval);
        if quiet && self.held.is_none() {
            self.last = Some(now);
            return Noted::Now;
        }
        let (joined, left) = match &change.joined_at {
            Some(_) => (1, 0),
            None => (0, 1),
        };
        self.held = Some(match self.held.take() {
            None => Summary::One(change),
            Some(Summary::One(first)) => {
                let (j, l) = if first.joined_at.is_some() {
                    (1, 0)
                } else {
                    (0, 1)
                };
                Summary::Many {
                    joined: j + joined,
                    left: l + left,
                }
            }
            Some(Summary::Many { joined: j, left: l }) => Summary::Many {
                joined: j.saturating_add(joined),
                left: l.saturating_add(left),
            },
        });
        if self.scheduled {
            return Noted::Held(None);
        }
        self.scheduled = true;
        let since = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        Noted::Held(Some(interval.saturating_sub(since)))
    }

    /// The scheduled flush is due: what was held, if anything.
    pub fn flush(&mut self, now: Instant) -> Option<Summary> {
        self.scheduled = false;
        let held = self.held.take()?;
        self.last = Some(now);
        Some(held)
    }

    /// Nothing is held or scheduled: the conversation's announcements can be forgotten.
    pub fn is_idle(&self) -> bool {
        self.held.is_none() && !self.scheduled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8, joined: bool) -> Change {
        Change {
            user: UserId::random(),
            username: format!("u{n}").into(),
            joined_at: joined.then_some(Seq(u64::from(n))),
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_quiet_room_hears_at_once_then_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.note(change(1, true), t0, SECOND), Noted::Now);
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(
            c.note(change(2, true), t1, SECOND),
            Noted::Held(Some(Duration::from_millis(700)))
        );
        assert_eq!(c.note(change(3, false), t1, SECOND), Noted::Held(None));
        assert_eq!(c.note(change(4, true), t1, SECOND), Noted::Held(None));
        assert!(!c.is_idle());
        assert_eq!(
            c.flush(t0 + SECOND),
            Some(Summary::Many { joined: 2, left: 1 })
        );
        assert!(c.is_idle());
        assert_eq!(c.flush(t0 + SECOND), None, "nothing twice");
    }

    #[test]
    fn a_single_held_change_is_announced_as_itself() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.note(change(1, true), t0, SECOND), Noted::Now);
        let left = change(2, false);
        assert!(matches!(
            c.note(left.clone(), t0, SECOND),
            Noted::Held(Some(_))
        ));
        assert_eq!(c.flush(t0 + SECOND), Some(Summary::One(left)));
        // The flush counts as an announcement: the next change within the interval
        // is held again.
        assert!(matches!(
            c.note(change(3, true), t0 + SECOND, SECOND),
            Noted::Held(Some(_))
        ));
        assert_eq!(
            c.note(change(4, true), t0 + 3 * SECOND, SECOND),
            Noted::Held(None),
            "what is held goes first, in the scheduled flush"
        );
    }
}
