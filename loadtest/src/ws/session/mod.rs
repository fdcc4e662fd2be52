//! One connection's life: the select loop over commands, control changes, frames,
//! the send timer, the resends and the deadlines; quiescing (no new sends, wait for
//! the acknowledgements in flight), closing, and how the session ends. A connection
//! carries one seat (a conversation socket) or several (a user stream), each with its
//! own replay and `joined` event; it is live, and sends, once every seat has joined.
//! The connected interval it records for each joined seat must be closed on every
//! non-final end, never left open. It never gives up on a send: what is unanswered
//! when it ends stays with the seat. It also answers the end-of-run marker check's
//! commands (each seat's view; a `read` and the server's echo of it).

mod receive;
mod send;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::seat::{self, Seat};
use super::{short, Command, ConnectOutcome, End, SocketSpec, Ws, CLOSE_TIMEOUT};
use crate::state::{lock, Control, Run};

enum Mode {
    /// Connected (maybe still waiting for the own `joined` events).
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

/// What the send timer fires next, and in which seat's conversation.
#[derive(Clone, Copy)]
enum Next {
    Typing { seat: usize, message_at: Instant },
    Message { seat: usize },
}

/// One seat on this connection.
#[derive(Clone, Copy, Default)]
struct Link {
    /// The connection resumed the seat's stream (from its position then): what comes
    /// before its own `joined` event is the replay.
    resumed: bool,
    /// The replay began with a `resync`: positions before it were skipped.
    resynced: bool,
    joined: bool,
}

pub(super) struct Session<'a> {
    run: &'a Run,
    spec: &'a SocketSpec,
    ws: Ws,
    seats: &'a mut [Seat],
    /// `links[i]`: seat `i` on this connection.
    links: Vec<Link>,
    reply: Option<oneshot::Sender<ConnectOutcome>>,
    started: Instant,
    control: Control,
    next: Option<Next>,
    rng: SmallRng,
    /// `read` events sent and not yet echoed: (seat, who waits for the echo).
    reads: Vec<(usize, oneshot::Sender<u64>)>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        run: &'a Run,
        spec: &'a SocketSpec,
        ws: Ws,
        reply: Option<oneshot::Sender<ConnectOutcome>>,
        started: Instant,
        seats: &'a mut [Seat],
    ) -> Self {
        let links = seats
            .iter()
            .map(|seat| Link {
                resumed: seat.since().is_some(),
                ..Link::default()
            })
            .collect();
        Session {
            run,
            spec,
            ws,
            seats,
            links,
            reply,
            started,
            control: *run.control.borrow(),
            next: None,
            rng: SmallRng::from_rng(&mut rand::rng()),
            reads: Vec::new(),
        }
    }

    /// Every seat has its own `joined` event: the connection may send.
    fn live(&self) -> bool {
        self.links.iter().all(|l| l.joined)
    }

    fn any_joined(&self) -> bool {
        self.links.iter().any(|l| l.joined)
    }

    /// Sends of joined seats still unanswered (those of a seat not joined on this
    /// connection cannot be answered on it).
    fn awaiting(&self) -> bool {
        self.seats
            .iter()
            .zip(&self.links)
            .any(|(seat, link)| link.joined && seat.awaiting())
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
            let may_send = self.live()
                && matches!(mode, Mode::Live)
                && self.control.sending
                && self.control.rate_per_user > 0.0;
            if !may_send {
                self.next = None;
            } else if self.next.is_none() {
                let at = self.schedule();
                send_timer.as_mut().reset(at);
            }
            // Resends go out as soon as their seat is live, and while quiescing: they
            // finish what was in flight.
            if !matches!(mode, Mode::Closing(_)) {
                for i in 0..self.seats.len() {
                    if self.links[i].joined && self.seats[i].resend_due() {
                        if let Err(e) = self.resend(i).await {
                            return self.dropped(format!("write: {}", short(&e)));
                        }
                    }
                }
            }
            // A quiescing socket with nothing in flight closes now.
            if let Mode::Quiescing(_) = mode {
                if !self.awaiting() {
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
                        Some(Command::View(reply)) => {
                            let _ = reply.send(seat::views(self.seats));
                            continue;
                        }
                        Some(Command::Read { seat, seq, echoed }) => {
                            if let Err(e) = self.read(seat, seq, echoed).await {
                                return self.dropped(format!("write: {}", short(&e)));
                            }
                            continue;
                        }
                    };
                    if self.any_joined() {
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
                            if self.live() && deadline_armed && matches!(mode, Mode::Live) {
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
                            // No own `joined` event in time (in some conversation).
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
        if !after.is_final() {
            self.end_intervals();
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

    /// Closes the connected interval of every seat joined on this connection.
    fn end_intervals(&mut self) {
        let now = self.run.now_us();
        for (seat, link) in self.seats.iter().zip(&self.links) {
            if !link.joined {
                continue;
            }
            let mut state = lock(&self.run.convs[seat.conv].state);
            if let Some(last) = state.live[seat.slot].last_mut() {
                if last.to_us == u64::MAX {
                    last.to_us = now;
                }
            }
        }
    }

    /// Sends `read` for seat `seat`'s conversation; `echoed` hears the marker the
    /// server names back.
    async fn read(
        &mut self,
        seat: usize,
        seq: u64,
        echoed: oneshot::Sender<u64>,
    ) -> Result<(), String> {
        let Some(conv_id) = self.seats.get(seat).map(|s| s.conv_id.as_str()) else {
            return Ok(());
        };
        let frame = if self.spec.user_stream {
            format!(r#"{{"type":"read","conversation_id":"{conv_id}","seq":{seq}}}"#)
        } else {
            format!(r#"{{"type":"read","seq":{seq}}}"#)
        };
        self.reads.push((seat, echoed));
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())
    }

    fn dropped(mut self, reason: String) -> End {
        self.end_intervals();
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
