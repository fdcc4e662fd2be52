//! What a session receives: parsing the server's frames (borrowing from the frame
//! where it can) and accounting for them: acknowledgements, deliveries, duplicates,
//! reordering, refusals, the own `joined` event. It only reads and records; it never
//! writes to the socket.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use serde::Deserialize;

use super::Session;
use crate::state::{lock, parse_tag, Counters, Interval};
use crate::ws::ConnectOutcome;

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
            "message" => {
                if let Some(content) = event.content.as_ref().map(Text::as_str) {
                    self.on_message(content);
                }
            }
            "error" => {
                let detail = event.detail.as_ref().map_or("(no detail)", Text::as_str);
                Counters::bump(&run.counters.errors, detail);
                if let Some(seq) = event
                    .reference
                    .as_ref()
                    .and_then(|r| r.as_str().parse().ok())
                {
                    self.on_refused(seq);
                }
                if !self.joined
                    && (detail == "Invalid token" || detail == "Not a member of this conversation")
                {
                    return Some(format!("refused: {detail}"));
                }
            }
            "system" => {
                run.counters.system_received.fetch_add(1, Ordering::Relaxed);
                let own =
                    event.sender_id.as_ref().map(Text::as_str) == Some(self.spec.user_id.as_str());
                let joined = event
                    .content
                    .as_ref()
                    .is_some_and(|c| c.as_str().ends_with("joined the conversation"));
                if own && joined && !self.joined {
                    self.on_joined();
                }
            }
            "typing" => {
                run.counters.typing_received.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        None
    }

    fn on_joined(&mut self) {
        self.joined = true;
        let now = self.run.now_us();
        lock(&self.run.convs[self.spec.conv].state).live[self.spec.slot].push(Interval {
            from_us: now,
            to_us: u64::MAX,
        });
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ConnectOutcome {
                ok: true,
                elapsed: self.started.elapsed(),
                error: None,
            });
        }
    }

    fn on_message(&mut self, content: &str) {
        let run = self.run;
        let counters = &run.counters;
        let Some(tag) = parse_tag(content) else {
            counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if tag.run != run.run_tag {
            counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tag.conv != self.spec.conv {
            counters.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = run.now_us();
        let latency = now.saturating_sub(tag.sent_us);
        let key = self.spec.conv;
        if tag.slot == self.spec.slot {
            // Our own message: the acknowledgement.
            let phase = {
                let mut state = lock(&run.convs[self.spec.conv].state);
                match state.records[tag.slot].get_mut(tag.seq) {
                    Some(rec) if rec.ack_us == 0 => {
                        rec.ack_us = now.max(1);
                        let was_failed = rec.failed;
                        Some((rec.phase, was_failed))
                    }
                    Some(_) => None,
                    None => {
                        counters.misrouted.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            match phase {
                Some((phase, was_failed)) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    if !was_failed {
                        self.settle_one();
                    }
                    run.latencies.ack(key, phase, latency);
                }
                None => {
                    counters.duplicate_acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let bit = 1u128 << self.spec.slot;
        let phase = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            let Some(rec) = state
                .records
                .get_mut(tag.slot)
                .and_then(|r| r.get_mut(tag.seq))
            else {
                counters.misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if rec.delivered & bit != 0 {
                None
            } else {
                rec.delivered |= bit;
                Some(rec.phase)
            }
        };
        let Some(phase) = phase else {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        };
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        run.latencies.delivery(key, phase, latency);
        if let Some(last) = self.last_seq.get_mut(tag.slot) {
            if tag.seq < *last {
                counters.reordered.fetch_add(1, Ordering::Relaxed);
            } else {
                *last = tag.seq + 1;
            }
        }
    }

    /// The server refused message `seq` of this socket's user.
    fn on_refused(&mut self, seq: usize) {
        let run = self.run;
        let refused = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            match state.records[self.spec.slot].get_mut(seq) {
                Some(rec) if rec.ack_us == 0 && !rec.failed => {
                    rec.failed = true;
                    true
                }
                _ => false,
            }
        };
        if refused {
            run.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.settle_one();
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
        let text = r#"{"type":"message","content":"say \"hi\""}"#;
        let event: Incoming<'_> = serde_json::from_str(text).expect("parses");
        assert_eq!(event.content.as_ref().map(Text::as_str), Some("say \"hi\""));
    }
}
