//! What a session receives: parsing the server's frames (borrowing from the frame
//! where it can), routing each conversation event to its seat (on a user stream by
//! its `conversation_id`; a conversation socket has one seat) and accounting for
//! them: acknowledgements (matched by `client_id`), deliveries, duplicates,
//! reordering, refusals, the answer that asks for a resend, each seat's own `joined`
//! event, the position of every stream event (replayed or live) against its seat's
//! stream, the messages of others each seat saw (for the unread counts), and the
//! server's `read` echoes the marker check waits for. It only reads and records; it
//! never writes to the socket (resends are queued on the seat).
//!
//! Replayed events count for exactly-once and ordering like live ones, but their
//! latency (and that of any answer to a resent message) is not recorded: it measures
//! the time the seat was away, not the server's delivery.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use serde::Deserialize;

use super::send::parse_reference;
use super::Session;
use crate::state::{client_number, lock, parse_tag, Counters, Interval, Tag};
use crate::ws::stream::Seen;
use crate::ws::ConnectOutcome;

/// The server's answer when the commit of a message with a `client_id` failed: it may
/// have happened, and the same `client_id` makes a resend safe.
const MAY_NOT_BE_SAVED: &str = "Message may not have been saved; resend with the same client_id";

/// A string field borrowed from the frame when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// The frames the harness reads; everything else in them is ignored.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    sender_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    detail: Option<Text<'a>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Text<'a>>,
    #[serde(default, borrow)]
    client_id: Option<Text<'a>>,
    /// Which conversation the event is of: how a user stream's events find their seat.
    #[serde(default, borrow)]
    conversation_id: Option<Text<'a>>,
    /// The stream position of a persisted event, where the stream stood at a join, or
    /// a `read` event's marker.
    #[serde(default)]
    seq: Option<u64>,
    /// A `resync`'s first replayed position.
    #[serde(default)]
    from_seq: Option<u64>,
    /// A message replayed after it was deleted (empty, and not unread).
    #[serde(default)]
    is_deleted: bool,
}

impl Session<'_> {
    /// Handles one text frame; `Some(reason)` when the connection must be dropped.
    pub(super) fn on_text(&mut self, text: &str) -> Option<String> {
        let run = self.run;
        let Ok(event) = serde_json::from_str::<Incoming<'_>>(text) else {
            Counters::bump(&run.counters.errors, "unparsable frame from the server");
            return None;
        };
        let kind = event.kind.as_str();
        if kind == "error" {
            return self.on_error(&event);
        }
        let Some(seat) = self.route(&event) else {
            // Not of a conversation this socket carries (a user stream's `pong` or
            // inbox news, or an event naming no conversation of its seats).
            if kind == "message" {
                run.counters.misrouted.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        };
        match kind {
            "message" => self.on_message(seat, &event),
            "edit" | "delete" | "reaction" => {
                self.observe(seat, event.seq, false);
            }
            "resync" => {
                run.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                self.links[seat].resynced = true;
                let s = &mut self.seats[seat];
                match event.from_seq {
                    Some(from) => {
                        // Positions before `from` are history's, not this stream's.
                        if s.since().is_none_or(|at| from > at + 1) {
                            s.skipped = true;
                        }
                        s.stream.resync(from);
                    }
                    None => {
                        run.counters.unplaced.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            "system" => self.on_system(seat, &event, text),
            "typing" => {
                run.counters.typing_received.fetch_add(1, Ordering::Relaxed);
            }
            "read" => self.on_read(seat, event.seq),
            _ => {}
        }
        None
    }

    /// The seat an event belongs to: a conversation socket's only one, or on a user
    /// stream the one of the conversation it names.
    fn route(&self, event: &Incoming<'_>) -> Option<usize> {
        if !self.spec.user_stream {
            return Some(0);
        }
        let conv_id = event.conversation_id.as_ref()?.as_str();
        self.seats.iter().position(|s| s.conv_id == conv_id)
    }

    fn on_error(&mut self, event: &Incoming<'_>) -> Option<String> {
        let detail = event.detail.as_ref().map_or("(no detail)", Text::as_str);
        Counters::bump(&self.run.counters.errors, detail);
        let named = event
            .reference
            .as_ref()
            .and_then(|r| parse_reference(r.as_str()))
            .filter(|&(seat, _)| seat < self.seats.len());
        if let Some((seat, number)) = named {
            if detail == MAY_NOT_BE_SAVED {
                self.seats[seat].resend_one(number);
            } else {
                self.on_refused(seat, number);
            }
        }
        // A user stream answers a send to a conversation it does not carry with this
        // too, and stays open: only a conversation socket is refused by it.
        let refused = detail == "Invalid token"
            || (!self.spec.user_stream && detail == "Not a member of this conversation");
        if !self.live() && refused {
            return Some(format!("refused: {detail}"));
        }
        None
    }

    fn on_system(&mut self, seat: usize, event: &Incoming<'_>, text: &str) {
        let c = &self.run.counters;
        c.system_received.fetch_add(1, Ordering::Relaxed);
        // What a storm's bytes are made of (a look at the text is enough).
        if text.contains(r#""active_users""#) {
            c.listed_frames.fetch_add(1, Ordering::Relaxed);
            c.listed_bytes
                .fetch_add(text.len() as u64, Ordering::Relaxed);
        } else if text.contains(r#""joined_count""#) {
            c.summary_frames.fetch_add(1, Ordering::Relaxed);
        }
        let own = event.sender_id.as_ref().map(Text::as_str) == Some(self.spec.user_id.as_str());
        let joined = event
            .content
            .as_ref()
            .is_some_and(|c| c.as_str().ends_with("joined the conversation"));
        if own && joined && !self.links[seat].joined {
            self.on_joined(seat, event.seq);
        }
    }

    /// The server's `read`: the user's marker in the seat's conversation is now `seq`.
    fn on_read(&mut self, seat: usize, seq: Option<u64>) {
        let Some(seq) = seq else {
            return;
        };
        let (echoed, waiting) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(s, _)| *s == seat);
        self.reads = waiting;
        for (_, reply) in echoed {
            let _ = reply.send(seq);
        }
    }

    /// Whether what arrives now in the seat's conversation is the replay of a resumed
    /// connection.
    fn replaying(&self, seat: usize) -> bool {
        let link = &self.links[seat];
        link.resumed && !link.joined
    }

    /// Places a stream event's position in the seat's stream and counts what that
    /// says (an echo, see [`Seen::Echo`], is not part of the stream).
    fn observe(&mut self, seat: usize, seq: Option<u64>, may_echo: bool) -> Seen {
        if self.replaying(seat) {
            self.run.counters.resumed.fetch_add(1, Ordering::Relaxed);
        }
        let seen = seq.map_or(Seen::Unplaced, |seq| {
            self.seats[seat].stream.event(seq, may_echo)
        });
        self.count(seat, seen);
        seen
    }

    /// Counts what the stream check found.
    fn count(&mut self, seat: usize, seen: Seen) {
        let counters = &self.run.counters;
        match seen {
            Seen::Next | Seen::Echo => {}
            Seen::Duplicate => {
                counters.stream_duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Gap(missing) => {
                counters.stream_gaps.fetch_add(missing, Ordering::Relaxed);
                self.seats[seat].skipped = true;
            }
            Seen::Unplaced => {
                counters.unplaced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_joined(&mut self, seat: usize, seq: Option<u64>) {
        self.links[seat].joined = true;
        let s = &mut self.seats[seat];
        if s.since().is_none() {
            self.run
                .counters
                .first_joins
                .fetch_add(1, Ordering::Relaxed);
            // Joined after the stream began: what came before was never seen here.
            if seq != Some(0) {
                s.skipped = true;
            }
        }
        let seen = seq.map_or(Seen::Unplaced, |seq| s.stream.joined(seq));
        self.count(seat, seen);
        let now = self.run.now_us();
        {
            let s = &self.seats[seat];
            let link = self.links[seat];
            let mut state = lock(&self.run.convs[s.conv].state);
            let live = &mut state.live[s.slot];
            match live.last_mut() {
                // The replay brought everything since the seat's last close: it never
                // left, and had to receive what was said meanwhile.
                Some(last) if link.resumed && !link.resynced => last.to_us = u64::MAX,
                _ => live.push(Interval {
                    from_us: now,
                    to_us: u64::MAX,
                }),
            }
        }
        self.seats[seat].resend_unanswered();
        if self.live() {
            if let Some(reply) = self.reply.take() {
                let _ = reply.send(ConnectOutcome {
                    ok: true,
                    elapsed: self.started.elapsed(),
                    error: None,
                });
            }
        }
    }

    fn on_message(&mut self, seat: usize, event: &Incoming<'_>) {
        let seen = self.place_message(seat, event);
        // What the server counts as unread while the marker is at 0.
        let other = event.sender_id.as_ref().map(Text::as_str) != Some(self.spec.user_id.as_str());
        if other && !event.is_deleted && matches!(seen, Seen::Next | Seen::Gap(_)) {
            self.seats[seat].others_seen += 1;
        }
    }

    /// Accounts for a message in the seat's conversation; returns where it fell in
    /// the stream.
    fn place_message(&mut self, seat: usize, event: &Incoming<'_>) -> Seen {
        let run = self.run;
        let counters = &run.counters;
        let tag = event
            .content
            .as_ref()
            .and_then(|c| parse_tag(c.as_str()))
            .filter(|tag| tag.run == run.run_tag);
        let Some(tag) = tag else {
            counters.foreign.fetch_add(1, Ordering::Relaxed);
            return self.observe(seat, event.seq, false);
        };
        let (conv, slot) = (self.seats[seat].conv, self.seats[seat].slot);
        if tag.conv != conv {
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return self.observe(seat, event.seq, false);
        }
        if tag.slot == slot {
            let client_id = event.client_id.as_ref().map(Text::as_str);
            self.on_own(seat, &tag, client_id, event.seq)
        } else {
            let seen = self.observe(seat, event.seq, false);
            self.on_delivery(seat, &tag);
            seen
        }
    }

    /// The seat's own message came back: the acknowledgement, or for a resent one
    /// maybe the server's repeat of the original.
    fn on_own(
        &mut self,
        seat: usize,
        tag: &Tag<'_>,
        client_id: Option<&str>,
        seq: Option<u64>,
    ) -> Seen {
        let run = self.run;
        let counters = &run.counters;
        if client_id.and_then(|id| client_number(id, &run.run_tag)) != Some(tag.seq) {
            Counters::bump(&counters.errors, "own message without its client_id");
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return self.observe(seat, seq, false);
        }
        let conv = self.seats[seat].conv;
        let mut state = lock(&run.convs[conv].state);
        let Some(rec) = state.records[tag.slot].get_mut(tag.seq) else {
            drop(state);
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return self.observe(seat, seq, false);
        };
        rec.answers += 1;
        // Each resend may add one answer: the original repeated, if it was stored.
        let allowed = rec.resends + 1;
        let seen = self.observe(seat, seq, rec.resends > 0 && rec.answers <= allowed);
        if seen == Seen::Echo {
            counters.repeats.fetch_add(1, Ordering::Relaxed);
        }
        if rec.ack_us != 0 {
            if rec.answers > allowed {
                counters.duplicate_acks.fetch_add(1, Ordering::Relaxed);
            }
            return seen;
        }
        let now = run.now_us();
        rec.ack_us = now.max(1);
        let timed = rec.resends == 0 && !self.replaying(seat);
        let phase = rec.phase;
        drop(state);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        self.seats[seat].settle(run, tag.seq);
        if timed {
            run.latencies
                .ack(conv, phase, now.saturating_sub(tag.sent_us));
        }
        seen
    }

    /// Another member's message arrived.
    fn on_delivery(&mut self, seat: usize, tag: &Tag<'_>) {
        let run = self.run;
        let counters = &run.counters;
        let (conv, slot) = (self.seats[seat].conv, self.seats[seat].slot);
        let first = {
            let mut state = lock(&run.convs[conv].state);
            let Some(rec) = state
                .records
                .get_mut(tag.slot)
                .and_then(|r| r.get_mut(tag.seq))
            else {
                counters.misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            };
            rec.delivered
                .mark(slot)
                .then_some((rec.phase, rec.resends > 0))
        };
        let Some((phase, resent)) = first else {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        };
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        // A resent message lands where its resend was committed, after its sender's
        // later ones maybe, and its send time is the first attempt's.
        if resent {
            return;
        }
        if !self.replaying(seat) {
            let latency = run.now_us().saturating_sub(tag.sent_us);
            // Keyed by the receiver: one big room must not funnel every delivery
            // through one histogram's lock.
            run.latencies.delivery(self.spec.user, phase, latency);
        }
        let last = self.seats[seat].order.entry(tag.slot).or_insert(0);
        if tag.seq < *last {
            counters.reordered.fetch_add(1, Ordering::Relaxed);
        } else {
            *last = tag.seq + 1;
        }
    }

    /// The server refused message `number` of seat `seat`.
    fn on_refused(&mut self, seat: usize, number: usize) {
        let run = self.run;
        let (conv, slot) = (self.seats[seat].conv, self.seats[seat].slot);
        let refused = {
            let mut state = lock(&run.convs[conv].state);
            match state.records[slot].get_mut(number) {
                Some(rec) if rec.ack_us == 0 && !rec.failed => {
                    rec.failed = true;
                    true
                }
                _ => false,
            }
        };
        if refused {
            run.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.seats[seat].settle(run, number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_frames_parse() {
        let text = r#"{"type":"message","message_id":"m","conversation_id":"c","content":"[lt ab c=1 s=2 q=3 t=4] x","sender_id":"u","sender_username":"n","timestamp":"t","is_edited":false}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.kind.as_str(), "message");
        assert!(matches!(event.content, Some(Text(Cow::Borrowed(_)))));
        let text = r#"{"type":"error","detail":"Rate limit exceeded","ref":"17"}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.reference.as_ref().map(Text::as_str), Some("17"));
        let text = r#"{"type":"system","content":"User a joined the conversation","sender_id":"u","active_users":["u"]}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.sender_id.as_ref().map(Text::as_str), Some("u"));
        let text = r#"{"type":"message","content":"x","seq":42,"client_id":"ab-3"}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.seq, Some(42));
        assert_eq!(event.client_id.as_ref().map(Text::as_str), Some("ab-3"));
        let text = r#"{"type":"resync","from_seq":1001}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!((event.seq, event.from_seq), (None, Some(1001)));
        let text = r#"{"type":"read","conversation_id":"c","seq":7}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.conversation_id.as_ref().map(Text::as_str), Some("c"));
        assert_eq!(event.seq, Some(7));
        let text = r#"{"type":"message","content":"","seq":3,"is_deleted":true}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert!(event.is_deleted);
        let text = r#"{"type":"message","content":"say \"hi\""}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.content.as_ref().map(Text::as_str), Some("say \"hi\""));
    }
}
