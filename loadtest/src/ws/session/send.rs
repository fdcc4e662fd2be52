//! What a session sends: Poisson scheduling of the next message (with a `typing`
//! event before some), and writing each chat message with its measurement tag after
//! recording it. A message is recorded and counted as outstanding before it is
//! written, never after.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use rand::Rng;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{Next, Session};
use crate::state::{lock, Record, Tag};
use crate::ws::TYPING_LEAD;

impl Session<'_> {
    /// Picks when the next message goes out (and whether a typing event precedes it).
    pub(super) fn schedule(&mut self) -> Instant {
        let layers = self.run.plan.layers() as f64;
        let rate = self.control.rate_per_user / layers;
        let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let gap = Duration::from_secs_f64((-uniform.ln() / rate).min(3600.0));
        let now = Instant::now();
        let message_at = now + gap;
        if self
            .rng
            .random_bool(self.run.config.typing_ratio.clamp(0.0, 1.0))
        {
            let lead = (gap / 2).min(TYPING_LEAD);
            self.next = Some(Next::Typing { message_at });
            message_at - lead
        } else {
            self.next = Some(Next::Message);
            message_at
        }
    }

    /// Sends what the timer was set for; returns when the timer must fire next, if
    /// that is already decided (the message after its typing indicator).
    pub(super) async fn fire(&mut self) -> Result<Option<Instant>, String> {
        match self.next.take() {
            Some(Next::Typing { message_at }) => {
                self.ws
                    .send(Message::text(r#"{"type":"typing"}"#))
                    .await
                    .map_err(|e| e.to_string())?;
                self.run
                    .counters
                    .typing_sent
                    .fetch_add(1, Ordering::Relaxed);
                self.next = Some(Next::Message);
                Ok(Some(message_at))
            }
            Some(Next::Message) => self.send_message().await.map(|()| None),
            None => Ok(None),
        }
    }

    async fn send_message(&mut self) -> Result<(), String> {
        let run = self.run;
        let now = run.now_us();
        let seq = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            let records = &mut state.records[self.spec.slot];
            records.push(Record {
                sent_us: now,
                ack_us: 0,
                delivered: 0,
                phase: self.control.phase,
                failed: false,
            });
            records.len() - 1
        };
        let content = Tag {
            run: &run.run_tag,
            conv: self.spec.conv,
            slot: self.spec.slot,
            seq,
            sent_us: now,
        }
        .content(&run.message_filler, run.config.message_bytes);
        let frame = format!(r#"{{"type":"message","content":"{content}","ref":"{seq}"}}"#);
        self.outstanding += 1;
        run.counters.outstanding.fetch_add(1, Ordering::Relaxed);
        run.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())
    }
}
