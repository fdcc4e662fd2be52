//! What a session sends: Poisson scheduling of the next message (with a `typing`
//! event before some), writing each chat message with its measurement tag and
//! `client_id` after recording it, and writing unanswered ones again, byte for byte
//! the same message. A message is recorded and counted as outstanding before it is
//! written, and a resend counted before it is written, never after.
//!
//! Each user sends `rate_per_user` messages per second over all its conversations: a
//! conversation socket its conversation's share, a user stream the whole rate, each
//! message (and its typing indicator) to one of its conversations chosen at random,
//! which is the same Poisson traffic per conversation. On a user stream every event
//! names its conversation, and a message's `ref` names its seat too (`seat:number`),
//! since the server's `error` about it does not name the conversation.

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
    /// Picks when the next message goes out, to which seat's conversation, and
    /// whether a typing event precedes it.
    pub(super) fn schedule(&mut self) -> Instant {
        let layers = self.run.plan.layers() as f64;
        let carried = self.seats.len();
        let rate = self.control.rate_per_user * carried as f64 / layers;
        let seat = self.rng.random_range(0..carried);
        let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let gap = Duration::from_secs_f64((-uniform.ln() / rate).min(3600.0));
        let now = Instant::now();
        let message_at = now + gap;
        if self
            .rng
            .random_bool(self.run.config.typing_ratio.clamp(0.0, 1.0))
        {
            let lead = (gap / 2).min(TYPING_LEAD);
            self.next = Some(Next::Typing { seat, message_at });
            message_at - lead
        } else {
            self.next = Some(Next::Message { seat });
            message_at
        }
    }

    /// Sends what the timer was set for; returns when the timer must fire next, if
    /// that is already decided (the message after its typing indicator).
    pub(super) async fn fire(&mut self) -> Result<Option<Instant>, String> {
        match self.next.take() {
            Some(Next::Typing { seat, message_at }) => {
                let frame = format!(r#"{{"type":"typing"{}}}"#, self.conversation_field(seat));
                self.ws
                    .send(Message::text(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                self.run
                    .counters
                    .typing_sent
                    .fetch_add(1, Ordering::Relaxed);
                self.next = Some(Next::Message { seat });
                Ok(Some(message_at))
            }
            Some(Next::Message { seat }) => self.send_message(seat).await.map(|()| None),
            None => Ok(None),
        }
    }

    async fn send_message(&mut self, seat: usize) -> Result<(), String> {
        let run = self.run;
        let now = run.now_us();
        let number = {
            let s = &self.seats[seat];
            let mut state = lock(&run.convs[s.conv].state);
            let records = &mut state.records[s.slot];
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
        self.seats[seat].sent(run, number);
        run.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.write_message(seat, number, now).await
    }

    /// Writes the messages seat `seat` has queued to go out again.
    pub(super) async fn resend(&mut self, seat: usize) -> Result<(), String> {
        let run = self.run;
        while let Some(number) = self.seats[seat].next_resend() {
            let sent_us = {
                let s = &self.seats[seat];
                let mut state = lock(&run.convs[s.conv].state);
                let Some(rec) = state.records[s.slot].get_mut(number) else {
                    continue;
                };
                rec.resends += 1;
                rec.sent_us
            };
            run.counters.retried.fetch_add(1, Ordering::Relaxed);
            self.write_message(seat, number, sent_us).await?;
        }
        Ok(())
    }

    /// Message `number` of seat `seat` as sent at `sent_us`: the same frame every time.
    async fn write_message(
        &mut self,
        seat: usize,
        number: usize,
        sent_us: u64,
    ) -> Result<(), String> {
        let run = self.run;
        let s = &self.seats[seat];
        let tag = Tag {
            run: &run.run_tag,
            conv: s.conv,
            slot: s.slot,
            seq: number,
            sent_us,
        };
        let content = tag.content(&run.message_filler, run.config.message_bytes);
        let frame = format!(
            r#"{{"type":"message"{},"content":"{content}","client_id":"{}","ref":"{}"}}"#,
            self.conversation_field(seat),
            tag.client_id(),
            self.reference(seat, number)
        );
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())
    }

    /// `,"conversation_id":"..."` on a user stream; nothing on a conversation socket,
    /// whose frames stay as they always were.
    fn conversation_field(&self, seat: usize) -> String {
        if self.spec.user_stream {
            format!(r#","conversation_id":"{}""#, self.seats[seat].conv_id)
        } else {
            String::new()
        }
    }

    /// The `ref` of message `number` of seat `seat`; see [`parse_reference`].
    fn reference(&self, seat: usize, number: usize) -> String {
        if self.spec.user_stream {
            format!("{seat}:{number}")
        } else {
            number.to_string()
        }
    }
}

/// The (seat, message number) an `error`'s `ref` names: `seat:number` on a user
/// stream, `number` (seat 0) on a conversation socket.
pub(super) fn parse_reference(reference: &str) -> Option<(usize, usize)> {
    match reference.split_once(':') {
        Some((seat, number)) => Some((seat.parse().ok()?, number.parse().ok()?)),
        None => Some((0, reference.parse().ok()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_the_seat_on_a_user_stream() {
        assert_eq!(parse_reference("17"), Some((0, 17)));
        assert_eq!(parse_reference("3:17"), Some((3, 17)));
        assert_eq!(parse_reference("x"), None);
        assert_eq!(parse_reference("3:"), None);
    }
}
