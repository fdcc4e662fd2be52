//! What a session receives: parsing the server's frames (borrowing from the frame
//! where it can) and accounting for them: acknowledgements (matched by `client_id`),
//! deliveries, duplicates, reordering, refusals, the answer that asks for a resend,
//! the own `joined` event, and the position of every stream event (replayed or live)
//! against the seat's stream. It only reads and records; it never writes to the
//! socket (resends are queued on the seat).
//!
//! Replayed events count for exactly-once and ordering like live ones, but their
//! latency (and that of any answer to a resent message) is not recorded: it measures
//! the time the seat was away, not the server's delivery.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use serde::Deserialize;

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
    /// The stream position of a persisted event, or where the stream stood at a join.
    #[serde(default)]
    seq: Option<u64>,
    /// A `resync`'s first replayed position.
    #[serde(default)]
    from_seq: Option<u64>,
}

impl Session<'_> {
    /// Handles one text frame; `Some(reason)` when the connection must be dropped.
    pub(super) fn on_text(&mut self, text: &str) -> Option<String> {
        let run = self.run;
        let Ok(event) = serde_json::from_str::<Incoming<'_>>(text) else {
            Counters::bump(&run.counters.errors, "unparsable frame from the server");
            return None;
        };
        match event.kind.as_str() {
            "message" => self.on_message(&event),
            "edit" | "delete" | "reaction" => {
                self.observe(event.seq, false);
            }
            "resync" => {
                run.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                self.resynced = true;
                match event.from_seq {
                    Some(from) => self.seat.stream.resync(from),
                    None => {
                        run.counters.unplaced.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            "error" => {
                let detail = event.detail.as_ref().map_or("(no detail)", Text::as_str);
                Counters::bump(&run.counters.errors, detail);
                if let Some(number) = event
                    .reference
                    .as_ref()
                    .and_then(|r| r.as_str().parse().ok())
                {
                    if detail == MAY_NOT_BE_SAVED {
                        self.seat.resend_one(number);
                    } else {
                        self.on_refused(number);
                    }
                }
                if !self.joined
                    && (detail == "Invalid token" || detail == "Not a member of this conversation")
                {
                    return Some(format!("refused: {detail}"));
                }
            }
            "system" => {
                let c = &run.counters;
                c.system_received.fetch_add(1, Ordering::Relaxed);
                // What a storm's bytes are made of (a look at the text is enough).
                if text.contains(r#""active_users""#) {
                    c.listed_frames.fetch_add(1, Ordering::Relaxed);
                    c.listed_bytes
                        .fetch_add(text.len() as u64, Ordering::Relaxed);
                } else if text.contains(r#""joined_count""#) {
                    c.summary_frames.fetch_add(1, Ordering::Relaxed);
                }
                let own =
                    event.sender_id.as_ref().map(Text::as_str) == Some(self.spec.user_id.as_str());
                let joined = event
                    .content
                    .as_ref()
                    .is_some_and(|c| c.as_str().ends_with("joined the conversation"));
                if own && joined && !self.joined {
                    self.on_joined(event.seq);
                }
            }
            "typing" => {
                run.counters.typing_received.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        None
    }

    /// Whether what arrives now is the replay of a resumed connection.
    fn replaying(&self) -> bool {
        self.resumed && !self.joined
    }

    /// Places a stream event's position; `true` when it is an echo (see [`Seen::Echo`]),
    /// which is not part of the stream.
    fn observe(&mut self, seq: Option<u64>, may_echo: bool) -> bool {
        if self.replaying() {
            self.run.counters.resumed.fetch_add(1, Ordering::Relaxed);
        }
        let seen = seq.map_or(Seen::Unplaced, |seq| self.seat.stream.event(seq, may_echo));
        self.count(seen)
    }

    /// Counts what the stream check found; `true` for an echo.
    fn count(&self, seen: Seen) -> bool {
        let counters = &self.run.counters;
        match seen {
            Seen::Next => {}
            Seen::Echo => return true,
            Seen::Duplicate => {
                counters.stream_duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Gap(missing) => {
                counters.stream_gaps.fetch_add(missing, Ordering::Relaxed);
            }
            Seen::Unplaced => {
                counters.unplaced.fetch_add(1, Ordering::Relaxed);
            }
        }
        false
    }

    fn on_joined(&mut self, seq: Option<u64>) {
        self.joined = true;
        if self.seat.since().is_none() {
            self.run
                .counters
                .first_joins
                .fetch_add(1, Ordering::Relaxed);
        }
        let seen = seq.map_or(Seen::Unplaced, |seq| self.seat.stream.joined(seq));
        self.count(seen);
        let now = self.run.now_us();
        {
            let mut state = lock(&self.run.convs[self.spec.conv].state);
            let live = &mut state.live[self.spec.slot];
            match live.last_mut() {
                // The replay brought everything since the seat's last close: it never
                // left, and had to receive what was said meanwhile.
                Some(last) if self.resumed && !self.resynced => last.to_us = u64::MAX,
                _ => live.push(Interval {
                    from_us: now,
                    to_us: u64::MAX,
                }),
            }
        }
        self.seat.resend_unanswered();
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ConnectOutcome {
                ok: true,
                elapsed: self.started.elapsed(),
                error: None,
            });
        }
    }

    fn on_message(&mut self, event: &Incoming<'_>) {
        let run = self.run;
        let counters = &run.counters;
        let tag = event
            .content
            .as_ref()
            .and_then(|c| parse_tag(c.as_str()))
            .filter(|tag| tag.run == run.run_tag);
        let Some(tag) = tag else {
            self.observe(event.seq, false);
            counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if tag.conv != self.spec.conv {
            self.observe(event.seq, false);
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tag.slot == self.spec.slot {
            let client_id = event.client_id.as_ref().map(Text::as_str);
            self.on_own(&tag, client_id, event.seq);
        } else {
            self.observe(event.seq, false);
            self.on_delivery(&tag);
        }
    }

    /// This seat's own message came back: the acknowledgement, or for a resent one
    /// maybe the server's repeat of the original.
    fn on_own(&mut self, tag: &Tag<'_>, client_id: Option<&str>, seq: Option<u64>) {
        let run = self.run;
        let counters = &run.counters;
        if client_id.and_then(|id| client_number(id, &run.run_tag)) != Some(tag.seq) {
            self.observe(seq, false);
            Counters::bump(&counters.errors, "own message without its client_id");
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut state = lock(&run.convs[self.spec.conv].state);
        let Some(rec) = state.records[tag.slot].get_mut(tag.seq) else {
            drop(state);
            self.observe(seq, false);
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        rec.answers += 1;
        // Each resend may add one answer: the original repeated, if it was stored.
        let allowed = rec.resends + 1;
        if self.observe(seq, rec.resends > 0 && rec.answers <= allowed) {
            counters.repeats.fetch_add(1, Ordering::Relaxed);
        }
        if rec.ack_us != 0 {
            if rec.answers > allowed {
                counters.duplicate_acks.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let now = run.now_us();
        rec.ack_us = now.max(1);
        let timed = rec.resends == 0 && !self.replaying();
        let phase = rec.phase;
        drop(state);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        self.seat.settle(run, tag.seq);
        if timed {
            run.latencies
                .ack(self.spec.conv, phase, now.saturating_sub(tag.sent_us));
        }
    }

    /// Another member's message arrived.
    fn on_delivery(&mut self, tag: &Tag<'_>) {
        let run = self.run;
        let counters = &run.counters;
        let first = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            let Some(rec) = state
                .records
                .get_mut(tag.slot)
                .and_then(|r| r.get_mut(tag.seq))
            else {
                counters.misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            };
            rec.delivered
                .mark(self.spec.slot)
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
        if !self.replaying() {
            let latency = run.now_us().saturating_sub(tag.sent_us);
            // Keyed by the receiver: one big room must not funnel every delivery
            // through one histogram's lock.
            run.latencies.delivery(self.spec.user, phase, latency);
        }
        let last = self.seat.order.entry(tag.slot).or_insert(0);
        if tag.seq < *last {
            counters.reordered.fetch_add(1, Ordering::Relaxed);
        } else {
            *last = tag.seq + 1;
        }
    }

    /// The server refused message `number` of this seat.
    fn on_refused(&mut self, number: usize) {
        let run = self.run;
        let refused = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            match state.records[self.spec.slot].get_mut(number) {
                Some(rec) if rec.ack_us == 0 && !rec.failed => {
                    rec.failed = true;
                    true
                }
                _ => false,
            }
        };
        if refused {
            run.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.seat.settle(run, number);
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
        let text = r#"{"type":"message","content":"say \"hi\""}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.content.as_ref().map(Text::as_str), Some("say \"hi\""));
    }
}
