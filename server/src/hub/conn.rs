//! One WebSocket connection as the hub sees it: who it is, which conversation, and
//! its outbound queue. The queue holds shared frames (`Bytes`), is bounded in bytes,
//! and is drained by the connection's single writer task, which coalesces everything
//! queued into one write. Two bounds, so that 1013 means "this client does not read",
//! not "this burst was big": a queue over the soft bound is falling behind and is
//! condemned once it has stayed there for a while (the heartbeat looks); a queue over
//! the hard bound is condemned at once. A condemned connection's queue is freed and its
//! writer closes it with 1013.
//!
//! A connection carries one conversation (a conversation socket) or several (a user
//! stream, `Scope::User`, which subscribes to each as the client starts it and as the
//! user is added). Deliveries (events of a conversation) pass through the connection's
//! place in that conversation's stream first: dropped before its join reached the home
//! (they predate it), held while its missed events are replayed, queued once live.
//!
//! It also keeps what the shard's heartbeat needs: when the client was last heard
//! from, when it was last pinged, and when its token expires. The heartbeat visits
//! every connection from one task per shard (`Conn::beat`), so an idle connection
//! costs no timer of its own.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

#[cfg(test)]
use super::admit::StreamAdmission;
use super::admit::{Admitted, Carried, Resume};
use crate::auth::Verified;
use crate::config::Outbound;
use crate::ids::{ConversationId, SessionId, UserId};
use crate::protocol::frame::PING_FRAME;
use crate::protocol::Close;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued; nothing may follow it.
    Closing,
    /// The connection is to be closed now, with what is queued dropped: the client
    /// fell too far behind, or stopped answering.
    Condemned(Close),
}

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A conversation socket (`/api/chat/ws/{id}`).
    Conversation(ConversationId),
    /// A user stream (`/api/chat/ws`): every conversation it subscribed to.
    User,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conversation(c) => c.fmt(f),
            Self::User => f.write_str("user stream"),
        }
    }
}

/// The conversations a connection carries, each with its place in the stream. What
/// only a user stream needs stays in its variant: every idle conversation socket pays
/// for the fields of `Conn`.
enum Subs {
    One(ConversationId, Phase),
    Many {
        subs: HashMap<ConversationId, Phase>,
        /// Resolves once the replay started last is done: a user stream replays its
        /// conversations one after another, not all at once.
        replay_turn: Option<futures_channel::oneshot::Receiver<()>>,
    },
}

/// Where a connection stands in a conversation's stream.
#[derive(Debug)]
enum Phase {
    /// Its join has not reached the home: what is delivered predates it.
    Joining(Resume),
    /// Its missed events are being replayed: deliveries wait behind them, in order.
    Holding {
        held: Vec<Bytes>,
        bytes: usize,
    },
    Live,
}

pub struct Conn {
    pub id: u64,
    pub user: UserId,
    pub username: Arc<str>,
    limits: Outbound,
    queue: RefCell<VecDeque<Bytes>>,
    /// Since when the queue has been over the soft bound, if it is.
    behind_since: Cell<Option<Instant>>,
    queued_bytes: Cell<usize>,
    state: Cell<State>,
    writer: Cell<Option<Waker>>,
    /// When the last frame of any kind arrived from the client.
    last_seen: Cell<Instant>,
    /// When the server last pinged the client.
    last_ping: Cell<Instant>,
    /// When the final close frame was queued.
    closing_since: Cell<Instant>,
    /// Unix time (seconds) at which the socket's token expires.
    expires_at: Cell<u64>,
    /// The token's session, and when it was issued (Unix seconds).
    session: Cell<Option<SessionId>>,
    issued_at: Cell<u64>,
    subs: RefCell<Subs>,
}

/// How long a queued close frame may wait for a client that does not read before the
/// connection is dropped without it.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write these frames; if `last`, the final one was a close frame: stop after.
    Write { last: bool },
    /// Send this close and stop, whatever else was queued.
    Condemned(Close),
}

/// The heartbeat's settings, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    pub ping_every: Duration,
    pub idle_timeout: Duration,
}

impl Conn {
    /// Connection `id` for what admission granted, with a queue within `limits`, first
    /// pinged `ping_phase` into the ping interval.
    pub fn new(id: u64, admitted: &Admitted, limits: Outbound, ping_phase: Duration) -> Self {
        let now = Instant::now();
        Self {
            id,
            user: admitted.user,
            username: Arc::clone(&admitted.username),
            limits,
            queue: RefCell::new(VecDeque::new()),
            behind_since: Cell::new(None),
            queued_bytes: Cell::new(0),
            state: Cell::new(State::Open),
            writer: Cell::new(None),
            last_seen: Cell::new(now),
            // Connections that arrived together (a reconnect storm after a restart)
            // are pinged spread over the interval, not all in one beat.
            last_ping: Cell::new(now.checked_sub(ping_phase).unwrap_or(now)),
            closing_since: Cell::new(now),
            expires_at: Cell::new(admitted.expires_at),
            session: Cell::new(admitted.session),
            issued_at: Cell::new(admitted.issued_at),
            subs: RefCell::new(match &admitted.carried {
                Carried::Conversation {
                    conversation,
                    resume,
                    ..
                } => Subs::One(*conversation, Phase::Joining(resume.clone())),
                Carried::Stream(_) => Subs::Many {
                    subs: HashMap::new(),
                    replay_turn: None,
                },
            }),
        }
    }

    /// What the connection carries.
    pub fn scope(&self) -> Scope {
        match &*self.subs.borrow() {
            Subs::One(c, _) => Scope::Conversation(*c),
            Subs::Many { .. } => Scope::User,
        }
    }

    /// Runs `f` on the connection's place in the conversation's stream, if it carries
    /// the conversation.
    fn in_stream<R>(
        &self,
        conversation: ConversationId,
        f: impl FnOnce(&mut Phase) -> R,
    ) -> Option<R> {
        match &mut *self.subs.borrow_mut() {
            Subs::One(c, phase) if *c == conversation => Some(f(phase)),
            Subs::One(..) => None,
            Subs::Many { subs, .. } => subs.get_mut(&conversation).map(f),
        }
    }

    /// Whether the connection carries the conversation (joined or on its way).
    pub fn carries(&self, conversation: ConversationId) -> bool {
        self.in_stream(conversation, |_| ()).is_some()
    }

    /// The conversations the connection carries.
    pub fn conversations(&self) -> Vec<ConversationId> {
        match &*self.subs.borrow() {
            Subs::One(c, _) => vec![*c],
            Subs::Many { subs, .. } => subs.keys().copied().collect(),
        }
    }

    /// How many conversations the connection carries.
    pub fn carried(&self) -> usize {
        match &*self.subs.borrow() {
            Subs::One(..) => 1,
            Subs::Many { subs, .. } => subs.len(),
        }
    }

    /// A user stream starts carrying the conversation, from where `resume` says once
    /// its join reaches the home. False when it carries it already (or is a
    /// conversation socket).
    pub fn subscribe(&self, conversation: ConversationId, resume: Resume) -> bool {
        match &mut *self.subs.borrow_mut() {
            Subs::Many { subs, .. } if !subs.contains_key(&conversation) => {
                subs.insert(conversation, Phase::Joining(resume));
                true
            }
            _ => false,
        }
    }

    /// A user stream stops carrying the conversation (what was held for it is
    /// dropped). False when it did not carry it.
    pub fn unsubscribe(&self, conversation: ConversationId) -> bool {
        match &mut *self.subs.borrow_mut() {
            Subs::Many { subs, .. } => subs.remove(&conversation).is_some(),
            Subs::One(..) => false,
        }
    }

    /// Takes an event of the conversation, as its place in the stream allows.
    pub fn deliver(&self, conversation: ConversationId, frame: &Bytes) {
        enum Take {
            Drop,
            Queue,
            Held,
            Overflow,
        }
        let (queued, hard) = (self.queued_bytes.get(), self.limits.hard);
        let take = self.in_stream(conversation, |phase| match phase {
            Phase::Joining(_) => Take::Drop,
            Phase::Live => Take::Queue,
            Phase::Holding { held, bytes } => {
                *bytes += frame.len();
                if *bytes + queued > hard {
                    *phase = Phase::Live;
                    Take::Overflow
                } else {
                    held.push(frame.clone());
                    Take::Held
                }
            }
        });
        match take {
            Some(Take::Queue) => self.push(frame.clone()),
            Some(Take::Overflow) => self.condemn(Close::TooFarBehind),
            Some(Take::Drop | Take::Held) | None => {}
        }
    }

    /// The home has the connection in the conversation: from now on deliveries are its
    /// own, held until `go_live`. Returns what the client asked for (once).
    pub fn joined(&self, conversation: ConversationId) -> Option<Resume> {
        self.in_stream(conversation, |phase| {
            let Phase::Joining(resume) = &*phase else {
                return None;
            };
            let resume = resume.clone();
            *phase = Phase::Holding {
                held: Vec::new(),
                bytes: 0,
            };
            Some(resume)
        })
        .flatten()
    }

    /// Queues what was held for the conversation (after whatever was pushed
    /// meanwhile: the replay), then takes its deliveries as they come.
    pub fn go_live(&self, conversation: ConversationId) {
        let previous = self.in_stream(conversation, |phase| std::mem::replace(phase, Phase::Live));
        if let Some(Phase::Holding { held, .. }) = previous {
            for frame in held {
                self.push(frame);
            }
        }
    }

    /// Waits for the replay started before this one to finish (on a user stream); the
    /// returned sender tells the next one, when dropped, that this one is done.
    pub fn replay_turn(
        &self,
    ) -> (
        impl std::future::Future<Output = ()> + use<>,
        futures_channel::oneshot::Sender<()>,
    ) {
        let (done, turn) = futures_channel::oneshot::channel();
        let previous = match &mut *self.subs.borrow_mut() {
            Subs::Many { replay_turn, .. } => replay_turn.replace(turn),
            // A conversation socket replays once: nothing to wait for.
            Subs::One(..) => None,
        };
        let wait = async move {
            if let Some(previous) = previous {
                // Resolves, sent or dropped, once the replay before is done.
                let _ = previous.await;
            }
        };
        (wait, done)
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn backlog(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Whether `frame` fits under the soft bound now (always, into an empty queue): a
    /// replay waits for this before queueing more, so it never makes a reading client
    /// look slow.
    pub fn has_room_for(&self, frame: &Bytes) -> bool {
        let queued = self.queued_bytes.get();
        queued == 0 || queued + frame.len() <= self.limits.soft
    }

    /// Queues a frame. Past the hard bound the connection is condemned instead; past
    /// the soft one it is noted as falling behind.
    pub fn push(&self, frame: Bytes) {
        if self.state.get() != State::Open {
            return;
        }
        let total = self.queued_bytes.get() + frame.len();
        if total > self.limits.hard {
            self.condemn(Close::TooFarBehind);
        } else {
            if total > self.limits.soft && self.behind_since.get().is_none() {
                self.behind_since.set(Some(Instant::now()));
            }
            self.queued_bytes.set(total);
            self.queue.borrow_mut().push_back(frame);
            self.wake();
        }
    }

    /// Queues a final frame (a close); the writer stops after writing it.
    pub fn close_with(&self, frame: Bytes) {
        if self.state.get() != State::Open {
            return;
        }
        self.queue.borrow_mut().push_back(frame);
        self.state.set(State::Closing);
        self.closing_since.set(Instant::now());
        self.wake();
    }

    /// Closes after what is queued: the reason's `error` event if it has one, then
    /// its close frame.
    pub fn close(&self, reason: Close) {
        if self.state.get() != State::Open {
            return;
        }
        let mut frames = reason.frames();
        let close = frames.pop();
        self.queue.borrow_mut().extend(frames);
        if let Some(close) = close {
            self.close_with(close);
        }
    }

    /// Closes now: what is queued is dropped and the writer sends only the close.
    pub fn condemn(&self, reason: Close) {
        if matches!(self.state.get(), State::Condemned(_)) {
            return;
        }
        self.state.set(State::Condemned(reason));
        self.queued_bytes.set(0);
        *self.queue.borrow_mut() = VecDeque::new();
        self.wake();
    }

    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    /// Notes that a frame arrived from the client.
    pub fn seen(&self) {
        self.last_seen.set(Instant::now());
    }

    /// The socket now lives on `token` (a refresh, in-band).
    pub fn extend(&self, token: &Verified) {
        self.expires_at.set(token.expires_at);
        self.session.set(token.session);
        self.issued_at.set(token.issued_at);
    }

    /// The token the socket lives on, as verified.
    pub fn token(&self) -> Verified {
        Verified {
            user: self.user,
            session: self.session.get(),
            issued_at: self.issued_at.get(),
            expires_at: self.expires_at.get(),
        }
    }

    /// One beat of the shard's heartbeat: closes a connection that has been silent
    /// past the idle timeout or whose token has expired, pings one that is due, and
    /// gives up on one whose close frame a client that stopped reading never took.
    pub fn beat(&self, beat: &Heartbeat, now: Instant, unix_now: u64) {
        match self.state.get() {
            State::Open => {}
            State::Closing => {
                if now.duration_since(self.closing_since.get()) >= CLOSING_GRACE {
                    self.condemn(Close::IdleTimeout);
                }
                return;
            }
            State::Condemned(_) => return,
        }
        let behind = self
            .behind_since
            .get()
            .is_some_and(|since| now.saturating_duration_since(since) >= self.limits.slow_for);
        if now.duration_since(self.last_seen.get()) >= beat.idle_timeout {
            // The peer is probably gone: do not wait behind a backlog it will not read.
            self.condemn(Close::IdleTimeout);
        } else if behind {
            // Over the soft bound for the whole grace: this client does not read.
            self.condemn(Close::TooFarBehind);
        } else if unix_now >= self.expires_at.get() {
            self.close(Close::TokenExpired);
        } else if now.duration_since(self.last_ping.get()) >= beat.ping_every {
            self.last_ping.set(now);
            self.push(PING_FRAME);
        }
    }

    fn wake(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Waits for work and moves every queued frame into `batch`.
    pub async fn next(&self, batch: &mut Vec<Bytes>) -> Next {
        poll_fn(|cx| {
            if let State::Condemned(reason) = self.state.get() {
                return Poll::Ready(Next::Condemned(reason));
            }
            let mut queue = self.queue.borrow_mut();
            if queue.is_empty() {
                self.writer.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            batch.extend(queue.drain(..));
            if queue.capacity() > 64 {
                // Idle connections keep no room a past burst needed.
                *queue = VecDeque::new();
            }
            self.queued_bytes.set(0);
            // Taken by the writer: the client is reading again.
            self.behind_since.set(None);
            Poll::Ready(Next::Write {
                last: self.state.get() == State::Closing,
            })
        })
        .await
    }

    /// Resolves once the connection is condemned; watched while a write is stuck.
    pub async fn condemned(&self) -> Close {
        poll_fn(|cx| {
            if let State::Condemned(reason) = self.state.get() {
                Poll::Ready(reason)
            } else {
                self.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Seq;

    /// The conversation of the test's conversation sockets.
    const CONV: ConversationId = ConversationId(uuid::Uuid::nil());

    fn conn(limit: usize) -> Conn {
        let admitted = Admitted {
            user: UserId::random(),
            username: "u".into(),
            expires_at: u64::MAX,
            session: None,
            issued_at: 0,
            checked_at: Instant::now(),
            carried: Carried::Conversation {
                conversation: CONV,
                position: Seq(0),
                resume: Resume::Fresh,
            },
        };
        let limits = Outbound {
            soft: limit,
            hard: limit,
            slow_for: Duration::from_secs(10),
        };
        Conn::new(1, &admitted, limits, Duration::ZERO)
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn coalesces_everything_queued() {
        let c = conn(1000);
        c.push(Bytes::from_static(b"a"));
        c.push(Bytes::from_static(b"bb"));
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: false });
        assert_eq!(batch.len(), 2);
        assert_eq!(c.backlog(), 0);
    }

    #[test]
    fn overflow_frees_the_queue_and_condemns() {
        let c = conn(10);
        c.push(Bytes::from(vec![0; 8]));
        c.push(Bytes::from(vec![0; 8]));
        assert_eq!(c.backlog(), 0);
        assert!(!c.is_open());
        let mut batch = Vec::new();
        assert_eq!(
            block_on(c.next(&mut batch)),
            Next::Condemned(Close::TooFarBehind)
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn nothing_after_close() {
        let c = conn(100);
        c.push(Bytes::from_static(b"x"));
        c.close(Close::IdleTimeout);
        c.push(Bytes::from_static(b"late"));
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: true });
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn refusals_of_access_are_announced_before_the_close() {
        let c = conn(100);
        c.close(Close::TokenExpired);
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: true });
        assert_eq!(batch, Close::TokenExpired.frames());
    }

    #[test]
    fn heartbeat_pings_then_gives_up_on_silence() {
        let c = conn(100);
        let beat = Heartbeat {
            ping_every: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
        };
        let start = Instant::now();
        c.beat(&beat, start + Duration::from_secs(1), 0);
        assert_eq!(c.backlog(), 0, "not due yet");
        c.beat(&beat, start + Duration::from_secs(26), 0);
        assert_eq!(c.backlog(), PING_FRAME.len());
        c.beat(&beat, start + Duration::from_secs(61), 0);
        let mut batch = Vec::new();
        assert_eq!(
            block_on(c.next(&mut batch)),
            Next::Condemned(Close::IdleTimeout)
        );
    }

    #[test]
    fn a_close_nobody_reads_is_given_up_on() {
        let beat = Heartbeat {
            ping_every: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
        };
        let c = conn(100);
        c.close(Close::TokenExpired);
        let now = Instant::now();
        c.beat(&beat, now, 0);
        assert_eq!(c.state.get(), State::Closing);
        c.beat(&beat, now + CLOSING_GRACE, 0);
        assert_eq!(c.state.get(), State::Condemned(Close::IdleTimeout));
    }

    #[test]
    fn expired_token_closes_unless_extended() {
        let beat = Heartbeat {
            ping_every: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
        };
        let now = Instant::now();
        let c = conn(1000);
        let until = |expires_at| Verified {
            user: c.user,
            session: None,
            issued_at: 0,
            expires_at,
        };
        c.extend(&until(100));
        c.beat(&beat, now, 99);
        assert!(c.is_open());
        c.extend(&until(200));
        c.beat(&beat, now, 150);
        assert!(c.is_open());
        c.beat(&beat, now, 200);
        assert!(!c.is_open());
    }

    #[test]
    fn deliveries_follow_the_place_in_the_stream() {
        let c = conn(1000);
        let f = |b: &'static [u8]| Bytes::from_static(b);
        c.deliver(CONV, &f(b"before the join"));
        assert_eq!(
            c.backlog(),
            0,
            "what predates the join is not this connection's"
        );
        assert_eq!(c.joined(CONV), Some(Resume::Fresh));
        assert_eq!(c.joined(CONV), None, "joined once");
        c.deliver(CONV, &f(b"live 1"));
        c.push(f(b"replayed"));
        c.go_live(CONV);
        c.deliver(CONV, &f(b"live 2"));
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: false });
        assert_eq!(batch, vec![f(b"replayed"), f(b"live 1"), f(b"live 2")]);
    }

    #[test]
    fn a_user_stream_keeps_each_conversation_in_its_own_place() {
        let (a, b) = (ConversationId::random(), ConversationId::random());
        let admitted = Admitted {
            user: UserId::random(),
            username: "u".into(),
            expires_at: u64::MAX,
            session: None,
            issued_at: 0,
            checked_at: Instant::now(),
            carried: Carried::Stream(Box::new(StreamAdmission {
                memberships: Vec::new(),
                ready: Bytes::new(),
            })),
        };
        let limits = Outbound {
            soft: 1000,
            hard: 1000,
            slow_for: Duration::from_secs(10),
        };
        let c = Conn::new(1, &admitted, limits, Duration::ZERO);
        let f = |b: &'static [u8]| Bytes::from_static(b);
        assert!(c.subscribe(a, Resume::Since(Seq(3))));
        assert!(c.subscribe(b, Resume::Fresh));
        assert!(!c.subscribe(a, Resume::Fresh), "carried once");
        assert_eq!(c.carried(), 2);
        assert_eq!(c.joined(a), Some(Resume::Since(Seq(3))));
        assert_eq!(c.joined(b), Some(Resume::Fresh));
        c.go_live(b);
        c.deliver(a, &f(b"a live"));
        c.deliver(b, &f(b"b live"));
        c.push(f(b"a replayed"));
        c.go_live(a);
        c.deliver(ConversationId::random(), &f(b"not carried"));
        assert!(c.unsubscribe(b));
        assert!(!c.carries(b));
        c.deliver(b, &f(b"b after removal"));
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: false });
        assert_eq!(
            batch,
            vec![f(b"b live"), f(b"a replayed"), f(b"a live")],
            "each conversation in its order; a replay holds only its own"
        );
    }

    #[test]
    fn a_client_that_reads_nothing_while_held_is_condemned() {
        let c = conn(10);
        c.joined(CONV);
        c.deliver(CONV, &Bytes::from_static(b"123456"));
        c.deliver(CONV, &Bytes::from_static(b"123456"));
        let mut batch = Vec::new();
        assert_eq!(
            block_on(c.next(&mut batch)),
            Next::Condemned(Close::TooFarBehind)
        );
    }

    #[test]
    fn a_burst_over_the_soft_bound_is_kept_for_a_client_that_reads() {
        let beat = Heartbeat {
            ping_every: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
        };
        let mut c = conn(10);
        c.limits = Outbound {
            soft: 10,
            hard: 40,
            slow_for: Duration::from_secs(10),
        };
        let now = Instant::now();
        c.push(Bytes::from(vec![0; 8]));
        assert!(c.has_room_for(&Bytes::from(vec![0; 2])));
        assert!(!c.has_room_for(&Bytes::from(vec![0; 3])));
        c.push(Bytes::from(vec![0; 8]));
        c.push(Bytes::from(vec![0; 8]));
        assert!(c.is_open(), "over the soft bound, under the hard one");
        c.beat(&beat, now + Duration::from_secs(5), 0);
        assert!(c.is_open(), "not behind for long yet");
        let mut batch = Vec::new();
        assert_eq!(block_on(c.next(&mut batch)), Next::Write { last: false });
        c.beat(&beat, now + Duration::from_secs(20), 0);
        assert!(c.is_open(), "it read: no longer behind");
        c.push(Bytes::from(vec![0; 11]));
        let behind = Instant::now();
        c.beat(&beat, behind + Duration::from_secs(5), 0);
        assert!(c.is_open());
        c.beat(&beat, behind + Duration::from_secs(11), 0);
        assert_eq!(
            block_on(c.next(&mut batch)),
            Next::Condemned(Close::TooFarBehind),
            "behind for longer than the grace"
        );
        let c = conn(10);
        c.push(Bytes::from(vec![0; 11]));
        assert!(!c.is_open(), "past the hard bound at once");
    }
}
