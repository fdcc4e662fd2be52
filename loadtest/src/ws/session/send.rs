//! What a session sends: Poisson scheduling of the next message (with a `typing`
//! event before some), writing each chat message with its measurement tag and
//! `client_id` after recording it, and writing unanswered ones again, byte for byte
//! the same message. A message is recorded and counted as outstanding before it is
//! written, and a resend counted before it is written, never after.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use rand::Rng;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{Next, Session};
use crate::state::{lock, Receivers, Record, Tag};
use crate::ws::TYPING_LEAD;

impl Session<'_> {
    /// Picks when the next message goes out (and whether a typing event precedes it).
    pub(super) fn schedule(&mut self) -> Instant {
        let layers = self.run.plan.layers() as f64;
        let rate = self.control.rate_per_user / layers;
        let uniform: f64 = self.seat.rng.random_range(f64::EPSILON..1.0);
        let gap = Duration::from_secs_f64((-uniform.ln() / rate).min(3600.0));
        let now = Instant::now();
        let message_at = now + gap;
        if self
            .seat
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
        let number = {
            let mut state = lock(&run.convs[self.spec.conv].state);
            let records = &mut state.records[self.spec.slot];
            records.push(Record {
                sent_us: now,
                ack_us: 0,
                delivered: Receivers::default(),
                phase: self.control.phase,
                failed: false,
                resends: 0,
                answers: 0,
            });
            records.len() - 1
        };
        self.seat.sent(run, number);
        run.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.write_message(number, now).await
    }

    /// Writes the messages the seat has queued to go out again.
    pub(super) async fn resend(&mut self) -> Result<(), String> {
        let run = self.run;
        while let Some(number) = self.seat.next_resend() {
            let sent_us = {
                let mut state = lock(&run.convs[self.spec.conv].state);
                let Some(rec) = state.records[self.spec.slot].get_mut(number) else {
                    continue;
                };
                rec.resends += 1;
                rec.sent_us
            };
            run.counters.retried.fetch_add(1, Ordering::Relaxed);
            self.write_message(number, sent_us).await?;
        }
        Ok(())
    }

    /// Message `number` of this seat as sent at `sent_us`: the same frame every time.
    async fn write_message(&mut self, number: usize, sent_us: u64) -> Result<(), String> {
        let run = self.run;
        let tag = Tag {
            run: &run.run_tag,
            conv: self.spec.conv,
            slot: self.spec.slot,
            seq: number,
            sent_us,
        };
        let content = tag.content(&run.message_filler, run.config.message_bytes);
        let frame = format!(
            r#"{{"type":"message","content":"{content}","client_id":"{}","ref":"{number}"}}"#,
            tag.client_id()
        );
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())
    }
}
