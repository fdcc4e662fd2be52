//! One connection's life: the select loop over commands, control changes, frames,
//! the send timer, the resends and the deadlines; quiescing (no new sends, wait for
//! the acknowledgements in flight), closing, and how the session ends. The connected
//! interval it records must be closed on every non-final end, never left open. It
//! never gives up on a send: what is unanswered when it ends stays with the seat.

mod receive;
mod send;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::seat::Seat;
use super::{short, Command, ConnectOutcome, End, SocketSpec, Ws, CLOSE_TIMEOUT};
use crate::state::{lock, Control, Run};

enum Mode {
    /// Connected (maybe still waiting for the own `joined` event).
    Live,
    /// Not sending; waiting for the acknowledgements in flight.
    Quiescing(After),
    /// Close sent; reading until the server's close.
    Closing(After),
}

enum After {
    Reconnect(oneshot::Sender<ConnectOutcome>),
    Close {
        done: Option<oneshot::Sender<()>>,
        final_close: bool,
    },
}

impl After {
    fn into_end(self) -> End {
        match self {
            After::Reconnect(reply) => End::Reconnect(reply),
            After::Close { done, .. } => End::Closed(done),
        }
    }

    fn is_final(&self) -> bool {
        matches!(
            self,
            After::Close {
                final_close: true,
                ..
            }
        )
    }
}

/// What the send timer fires next.
#[derive(Clone, Copy)]
enum Next {
    Typing { message_at: Instant },
    Message,
}

pub(super) struct Session<'a> {
    run: &'a Run,
    spec: &'a SocketSpec,
    ws: Ws,
    seat: &'a mut Seat,
    reply: Option<oneshot::Sender<ConnectOutcome>>,
    started: Instant,
    /// The connection was opened with `since` (the seat's position then): what comes
    /// before its own `joined` event is the replay.
    resumed: bool,
    /// The replay began with a `resync`: positions before it were skipped.
    resynced: bool,
    joined: bool,
    control: Control,
    next: Option<Next>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        run: &'a Run,
        spec: &'a SocketSpec,
        ws: Ws,
        reply: Option<oneshot::Sender<ConnectOutcome>>,
        started: Instant,
        seat: &'a mut Seat,
    ) -> Self {
        Session {
            run,
            spec,
            ws,
            resumed: seat.since().is_some(),
            seat,
            reply,
            started,
            resynced: false,
            joined: false,
            control: *run.control.borrow(),
            next: None,
        }
    }

    pub(super) async fn run(mut self, commands: &mut mpsc::Receiver<Command>) -> End {
        let mut control_rx = self.run.control.subscribe();
        self.control = *control_rx.borrow_and_update();
        let mut mode = Mode::Live;
        let send_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(send_timer);
        let deadline = tokio::time::sleep(self.run.config.scenario.join_timeout());
        tokio::pin!(deadline);
        let mut deadline_armed = true;

        loop {
            // (Re)arm the send timer when sending is possible and nothing is scheduled.
            let may_send = self.joined
                && matches!(mode, Mode::Live)
                && self.control.sending
                && self.control.rate_per_user > 0.0;
            if !may_send {
                self.next = None;
            } else if self.next.is_none() {
                let at = self.schedule();
                send_timer.as_mut().reset(at);
            }
            // Resends go out as soon as the connection is live, and while quiescing:
            // they finish what was in flight.
            if self.joined && !matches!(mode, Mode::Closing(_)) && self.seat.resend_due() {
                if let Err(e) = self.resend().await {
                    return self.dropped(format!("write: {}", short(&e)));
                }
            }
            // A quiescing socket with nothing in flight closes now.
            if let Mode::Quiescing(_) = mode {
                if !self.seat.awaiting() {
                    mode = self.begin_close(mode).await;
                    deadline.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                    deadline_armed = true;
                }
            }

            tokio::select! {
                biased;
                command = commands.recv(), if matches!(mode, Mode::Live) => {
                    let after = match command {
                        Some(Command::Reconnect(reply)) => After::Reconnect(reply),
                        Some(Command::Close { done, final_close }) => After::Close { done, final_close },
                        None => After::Close { done: None, final_close: true },
                    };
                    if self.joined {
                        mode = Mode::Quiescing(after);
                        deadline.as_mut().reset(Instant::now() + self.run.config.drain_timeout());
                    } else {
                        mode = self.begin_close(Mode::Quiescing(after)).await;
                        deadline.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                    }
                    deadline_armed = true;
                }
                changed = control_rx.changed() => {
                    if changed.is_ok() {
                        self.control = *control_rx.borrow_and_update();
                        self.next = None;
                    }
                }
                frame = self.ws.next() => {
                    let closing = matches!(mode, Mode::Closing(_));
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            let counters = &self.run.counters;
                            counters.frames_received.fetch_add(1, Ordering::Relaxed);
                            counters.bytes_received.fetch_add(text.len() as u64, Ordering::Relaxed);
                            if let Some(ended) = self.on_text(text.as_str()) {
                                if !closing {
                                    return self.dropped(ended);
                                }
                            }
                            if self.joined && deadline_armed && matches!(mode, Mode::Live) {
                                deadline_armed = false;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            if let Mode::Closing(after) = mode {
                                return after.into_end();
                            }
                            let reason = match frame {
                                Some(f) => format!("server closed with {}", u16::from(f.code)),
                                None => "server closed without a code".to_string(),
                            };
                            return self.dropped(reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            if let Mode::Closing(after) = mode {
                                return after.into_end();
                            }
                            return self.dropped(format!("read: {}", short(&e.to_string())));
                        }
                        None => {
                            if let Mode::Closing(after) = mode {
                                return after.into_end();
                            }
                            return self.dropped("connection ended without a close".to_string());
                        }
                    }
                }
                () = &mut send_timer, if self.next.is_some() => {
                    match self.fire().await {
                        Ok(Some(at)) => send_timer.as_mut().reset(at),
                        Ok(None) => {}
                        Err(e) => return self.dropped(format!("write: {}", short(&e))),
                    }
                }
                () = &mut deadline, if deadline_armed => {
                    match mode {
                        Mode::Live => {
                            // No own `joined` event in time.
                            self.run.counters.join_timeouts.fetch_add(1, Ordering::Relaxed);
                            return self.dropped("no joined event".to_string());
                        }
                        Mode::Quiescing(after) => {
                            // Close without the acknowledgements still missing: the
                            // seat sends them again on its next connection.
                            mode = self.begin_close(Mode::Quiescing(after)).await;
                            deadline.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                        }
                        Mode::Closing(after) => return after.into_end(),
                    }
                }
            }
        }
    }

    /// Ends the connected interval and sends the close frame.
    async fn begin_close(&mut self, mode: Mode) -> Mode {
        let after = match mode {
            Mode::Quiescing(after) | Mode::Closing(after) => after,
            Mode::Live => After::Close {
                done: None,
                final_close: false,
            },
        };
        if self.joined && !after.is_final() {
            self.end_interval();
        }
        // A failure to send shows up as the end of the stream, which ends the close.
        let _ = timeout(
            CLOSE_TIMEOUT,
            self.ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))),
        )
        .await;
        Mode::Closing(after)
    }

    fn end_interval(&mut self) {
        let now = self.run.now_us();
        let mut state = lock(&self.run.convs[self.spec.conv].state);
        if let Some(last) = state.live[self.spec.slot].last_mut() {
            if last.to_us == u64::MAX {
                last.to_us = now;
            }
        }
    }

    fn dropped(mut self, reason: String) -> End {
        if self.joined {
            self.end_interval();
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ConnectOutcome {
                ok: false,
                elapsed: self.started.elapsed(),
                error: Some(reason.clone()),
            });
        }
        End::Dropped(reason)
    }
}
