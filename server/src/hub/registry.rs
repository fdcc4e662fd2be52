//! The registry of a shard's hub: this shard's WebSocket connections by conversation
//! and by user, the rate limit of the events they submit, and delivery into
//! their queues. It answers `ping` and `auth` itself and posts everything else to the
//! conversation's home; it never decides order or presence (the home does).
//!
//! A user stream carries many conversations: the registry subscribes it to each (a
//! join at that conversation's home, like a conversation socket's) when the client
//! starts it, and to those its user is added to later; a removal unsubscribes it
//! instead of closing it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::admit::{Admitted, Carried, Refused, Resume};
use super::conn::{Conn, Heartbeat, Scope};
use super::replay;
use crate::app::App;
use crate::bus::{Actor, Audience, ConnAddr, HomeMsg, ShardMsg};
use crate::ids::{format_timestamp, ConversationId, Seq, UserId};
use crate::metrics::ShardMetrics;
use crate::protocol::{
    conversation_event, ClientEvent, Close, ConversationAction, ServerEvent, Target,
};

/// Into how many phases of the ping interval consecutive connections are spread.
const PING_PHASES: u64 = 64;

/// A user with connections on this shard.
struct UserSlot {
    conns: u32,
    /// In a cluster: tokens of the user's shared budget leased to this shard.
    lease: u32,
}

#[derive(Default)]
struct Local {
    next_conn: u64,
    conns: HashMap<u64, Rc<Conn>>,
    by_conversation: HashMap<ConversationId, Vec<Rc<Conn>>>,
    users: HashMap<UserId, UserSlot>,
    /// The user streams of each user.
    streams: HashMap<UserId, Vec<Rc<Conn>>>,
}

/// This shard's connections.
pub struct Registry {
    shard: usize,
    app: Arc<App>,
    metrics: Rc<ShardMetrics>,
    local: RefCell<Local>,
}

impl Registry {
    pub(super) fn new(shard: usize, app: Arc<App>, metrics: Rc<ShardMetrics>) -> Self {
        Self {
            shard,
            app,
            metrics,
            local: RefCell::new(Local::default()),
        }
    }

    /// Registers a connection: a conversation socket is announced to its
    /// conversation's home; a user stream gets its `ready` event and carries nothing
    /// until the client starts it (`start`).
    pub fn register(&self, admitted: &Admitted) -> Rc<Conn> {
        let mut st = self.local.borrow_mut();
        st.next_conn += 1;
        let config = &self.app.config;
        let phase = config
            .ws_ping_interval
            .mul_f64((st.next_conn % PING_PHASES) as f64 / PING_PHASES as f64);
        let conn = Rc::new(Conn::new(
            st.next_conn,
            admitted,
            config.outbound_limits(),
            phase,
        ));
        st.conns.insert(conn.id, Rc::clone(&conn));
        self.metrics.websockets_open.inc();
        // The session may have ended while admission read the store: the revocation
        // was recorded before any shard was told, so this look cannot miss it.
        if !self.app.revocations.admits(&conn.token()) {
            conn.close(Close::SessionEnded);
        }
        st.users
            .entry(conn.user)
            .or_insert_with(|| UserSlot { conns: 0, lease: 0 })
            .conns += 1;
        match &admitted.carried {
            Carried::Conversation {
                conversation,
                position,
                ..
            } => {
                st.by_conversation
                    .entry(*conversation)
                    .or_default()
                    .push(Rc::clone(&conn));
                drop(st);
                let join = HomeMsg::Join {
                    checked_at: admitted.checked_at,
                    position: *position,
                };
                self.to_home(&conn, *conversation, None, join);
            }
            Carried::Stream(stream) => {
                st.streams
                    .entry(conn.user)
                    .or_default()
                    .push(Rc::clone(&conn));
                drop(st);
                conn.push(stream.ready.clone());
            }
        }
        conn
    }

    /// Starts a user stream: subscribes it to the conversations admission found (at
    /// most `--stream-max-conversations`), each replayed from the client's position
    /// for it when `positions` gives one, live from its join otherwise.
    pub fn start(
        &self,
        conn: &Conn,
        positions: &HashMap<ConversationId, Seq>,
        memberships: Vec<(ConversationId, Seq)>,
        checked_at: Instant,
    ) {
        for (conversation, position) in memberships {
            let resume = positions
                .get(&conversation)
                .map_or(Resume::Fresh, |&since| Resume::Since(since));
            self.subscribe(conn, conversation, resume, checked_at, position);
        }
    }

    /// A user stream starts carrying the conversation (where there is room):
    /// announced to its home like a conversation socket. False when it did not.
    fn subscribe(
        &self,
        conn: &Conn,
        conversation: ConversationId,
        resume: Resume,
        checked_at: Instant,
        position: Seq,
    ) -> bool {
        let room = conn.carried() < self.app.config.stream_max_conversations as usize;
        if !room || !conn.is_open() || !conn.subscribe(conversation, resume) {
            return false;
        }
        let Some(own) = self.local.borrow().conns.get(&conn.id).cloned() else {
            return false;
        };
        self.local
            .borrow_mut()
            .by_conversation
            .entry(conversation)
            .or_default()
            .push(own);
        let join = HomeMsg::Join {
            checked_at,
            position,
        };
        self.to_home(conn, conversation, None, join);
        true
    }

    /// Takes the connection out of the conversation's list here.
    fn forget(st: &mut Local, conversation: ConversationId, conn: u64) {
        if let Some(list) = st.by_conversation.get_mut(&conversation) {
            list.retain(|c| c.id != conn);
            if list.is_empty() {
                st.by_conversation.remove(&conversation);
            }
        }
    }

    pub fn unregister(&self, conn: &Conn) {
        let mut st = self.local.borrow_mut();
        if st.conns.remove(&conn.id).is_none() {
            return;
        }
        self.metrics.websockets_open.dec();
        let conversations = conn.conversations();
        for &conversation in &conversations {
            Self::forget(&mut st, conversation, conn.id);
        }
        if conn.scope() == Scope::User {
            if let Some(list) = st.streams.get_mut(&conn.user) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    st.streams.remove(&conn.user);
                }
            }
        }
        if let Some(slot) = st.users.get_mut(&conn.user) {
            slot.conns -= 1;
            if slot.conns == 0 {
                st.users.remove(&conn.user);
            }
        }
        drop(st);
        for conversation in conversations {
            self.to_home(conn, conversation, None, HomeMsg::Leave);
        }
    }

    /// Takes one event from a client, after its rate limit. Pings and token refreshes
    /// are answered here; everything else goes to the home of its conversation: the
    /// socket's own, or on a user stream the one it names (`conversation_id`), which
    /// the stream must carry.
    pub async fn submit(
        &self,
        conn: &Conn,
        event: ClientEvent,
        reference: Option<String>,
        target: Target,
    ) -> Result<(), Refused> {
        if !self.spend(conn.user).await {
            return Err(Refused::RateLimited);
        }
        match event {
            ClientEvent::Ping => conn.push(ServerEvent::Pong.frame()),
            ClientEvent::Auth { token } => {
                let token = self
                    .app
                    .authenticate(&token)
                    .map_err(|_| Refused::InvalidToken)?;
                if token.user != conn.user {
                    return Err(Refused::OtherUser);
                }
                conn.extend(&token);
                let expires_at = i64::try_from(token.expires_at)
                    .ok()
                    .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                    .map(|t| format_timestamp(&t))
                    .unwrap_or_default();
                conn.push(
                    ServerEvent::Auth {
                        status: "ok",
                        expires_at: &expires_at,
                    }
                    .frame(),
                );
            }
            // A user stream's first event is taken by its reader before it gets here.
            ClientEvent::Resume { .. } => return Err(Refused::LateResume),
            event => {
                let conversation = match (conn.scope(), target) {
                    (Scope::Conversation(own), _) => own,
                    (Scope::User, Target::Absent) => return Err(Refused::NoConversation),
                    (Scope::User, Target::Conversation(c)) if conn.carries(c) => c,
                    (Scope::User, _) => return Err(Refused::NotAMember),
                };
                self.to_home(conn, conversation, reference, HomeMsg::Event(event));
            }
        }
        Ok(())
    }

    /// Takes one token of `user`'s budget: from the process's budget of the user
    /// (`auth::Budgets`, shared by every shard) on one node; in a cluster from the
    /// budget all nodes share, leased a few tokens at a time (the process's again
    /// while Redis does not answer).
    async fn spend(&self, user: UserId) -> bool {
        let Some(cluster) = self.app.cluster.as_ref().filter(|c| c.is_healthy()) else {
            // One node, or Redis known to be away: waiting for it would stall the
            // sender's every event.
            return self.spend_locally(user);
        };
        if let Some(slot) = self.local.borrow_mut().users.get_mut(&user) {
            if slot.lease > 0 {
                slot.lease -= 1;
                return true;
            }
        }
        match cluster.lease(user).await {
            Some(0) => false,
            Some(granted) => {
                if let Some(slot) = self.local.borrow_mut().users.get_mut(&user) {
                    slot.lease += granted - 1;
                }
                true
            }
            None => self.spend_locally(user),
        }
    }

    fn spend_locally(&self, user: UserId) -> bool {
        self.app.budgets.take(user, Instant::now())
    }

    fn to_home(
        &self,
        conn: &Conn,
        conversation: ConversationId,
        reference: Option<String>,
        msg: HomeMsg,
    ) {
        let actor = Actor {
            user: conn.user,
            username: Arc::clone(&conn.username),
            conn: ConnAddr {
                shard: self.shard,
                conn: conn.id,
            },
            reference,
        };
        let home = self.app.bus.home_of(conversation);
        self.app.bus.post(
            home,
            ShardMsg::Home {
                conversation,
                actor,
                msg,
            },
        );
    }

    /// An event of the conversation for the connections of the audience in it here.
    pub(super) fn deliver(&self, conversation: ConversationId, frame: &Bytes, to: Audience) {
        let local = self.local.borrow();
        let mut delivered = 0;
        for conn in local
            .by_conversation
            .get(&conversation)
            .into_iter()
            .flatten()
        {
            if to.includes(conn.user) {
                conn.deliver(conversation, frame);
                delivered += 1;
            }
        }
        self.metrics.deliveries.inc_by(delivered);
    }

    /// A frame for one connection only (a reply, a repeat's ack).
    pub(super) fn direct(&self, conn: u64, frame: Bytes) {
        if let Some(conn) = self.local.borrow().conns.get(&conn) {
            conn.push(frame);
        }
    }

    /// A frame for one connection, in its place in the conversation's stream (held
    /// behind a replay).
    pub(super) fn own(&self, conn: u64, conversation: ConversationId, frame: &Bytes) {
        if let Some(conn) = self.local.borrow().conns.get(&conn) {
            conn.deliver(conversation, frame);
        }
    }

    /// `user` lost access to the conversation: their conversation sockets in it here
    /// are closed (only `conn` when given); their user streams stop carrying it and
    /// are told so.
    pub(super) fn revoked(&self, conversation: ConversationId, user: UserId, conn: Option<u64>) {
        let affected: Vec<Rc<Conn>> = self
            .local
            .borrow()
            .by_conversation
            .get(&conversation)
            .into_iter()
            .flatten()
            .filter(|c| c.user == user && conn.is_none_or(|id| id == c.id))
            .cloned()
            .collect();
        for c in affected {
            match c.scope() {
                Scope::Conversation(_) => c.close(Close::NotAMember),
                Scope::User => {
                    if c.unsubscribe(conversation) {
                        Self::forget(&mut self.local.borrow_mut(), conversation, c.id);
                        c.push(gone_frame(ConversationAction::Removed, conversation));
                    }
                }
            }
        }
    }

    /// Some of `user`'s tokens no longer count: the user's sockets here that live on
    /// one of them close.
    pub(super) fn tokens_revoked(&self, user: UserId) {
        let ended: Vec<Rc<Conn>> = self
            .local
            .borrow()
            .conns
            .values()
            .filter(|c| c.user == user && !self.app.revocations.admits(&c.token()))
            .cloned()
            .collect();
        for c in ended {
            c.close(Close::SessionEnded);
        }
    }

    /// The conversation was deleted: its sockets here close, user streams drop it and
    /// are told.
    pub(super) fn gone(&self, conversation: ConversationId) {
        let affected = self
            .local
            .borrow_mut()
            .by_conversation
            .remove(&conversation)
            .unwrap_or_default();
        for c in affected {
            match c.scope() {
                Scope::Conversation(_) => c.close(Close::ConversationDeleted),
                Scope::User => {
                    if c.unsubscribe(conversation) {
                        c.push(gone_frame(ConversationAction::Deleted, conversation));
                    }
                }
            }
        }
    }

    /// `users` were added to the conversation: each of their user streams here that
    /// has room announces it and carries it from the position read now (so nothing
    /// committed after the membership read is missed, and a removal racing the add
    /// is caught by the home as for any join).
    pub(super) fn added(
        self: &Rc<Self>,
        conversation: ConversationId,
        users: &[UserId],
        frame: Bytes,
    ) {
        let streams: Vec<Rc<Conn>> = {
            let st = self.local.borrow();
            users
                .iter()
                .filter_map(|u| st.streams.get(u))
                .flatten()
                .filter(|c| !c.carries(conversation))
                .cloned()
                .collect()
        };
        if streams.is_empty() {
            return;
        }
        let mut members: Vec<UserId> = streams.iter().map(|c| c.user).collect();
        members.sort_unstable();
        members.dedup();
        let registry = Rc::clone(self);
        monoio::spawn(async move {
            let checked_at = Instant::now();
            let read = registry
                .app
                .db
                .call(move |s| async move { s.member_positions(conversation, &members).await })
                .await;
            let positions: HashMap<UserId, Seq> = match read {
                Ok(positions) => positions.into_iter().collect(),
                Err(e) => {
                    // The stream does not carry it; the conversation list shows it.
                    return tracing::warn!(error = %e, %conversation, "added conversation not carried");
                }
            };
            for conn in streams {
                let Some(&position) = positions.get(&conn.user) else {
                    continue;
                };
                conn.push(frame.clone());
                registry.subscribe(
                    &conn,
                    conversation,
                    Resume::Since(position),
                    checked_at,
                    position,
                );
            }
        });
    }

    /// The home has the connection in the conversation, live from `position`: replay
    /// what it missed, if it asked, then let its live events through.
    pub(super) fn joined(&self, conn: u64, conversation: ConversationId, position: Seq) {
        let Some(conn) = self.local.borrow().conns.get(&conn).cloned() else {
            return;
        };
        let since = match conn.joined(conversation) {
            None => return,
            Some(Resume::Fresh) => return conn.go_live(conversation),
            Some(Resume::Invalid) => {
                conn.push(error_frame(
                    "Invalid since: expected a stream position (0 or more)",
                ));
                return conn.go_live(conversation);
            }
            Some(Resume::Since(since)) if since > position => {
                let detail = match conn.scope() {
                    Scope::Conversation(_) => {
                        format!("Invalid since: the conversation is at {position}")
                    }
                    Scope::User => {
                        format!("Invalid position: conversation {conversation} is at {position}")
                    }
                };
                conn.push(error_frame(&detail));
                return conn.go_live(conversation);
            }
            Some(Resume::Since(since)) => since,
        };
        replay::start(Arc::clone(&self.app), conn, conversation, since, position);
    }

    /// Closes every local connection (shutdown).
    pub fn close_all(&self, reason: Close) {
        let conns: Vec<Rc<Conn>> = self.local.borrow().conns.values().cloned().collect();
        for conn in conns {
            conn.close(reason);
        }
    }

    /// One beat of the heartbeat over every local connection: pings those due,
    /// closes the silent and the expired, and samples the bytes they have queued.
    pub fn beat(&self, heartbeat: &Heartbeat) {
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut queued = 0;
        for conn in self.local.borrow().conns.values() {
            conn.beat(heartbeat, now, unix_now);
            queued += conn.backlog();
        }
        self.metrics
            .outbound_queue_bytes
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// A user stream's news that it no longer carries the conversation.
/// The `conversation` event of a conversation a user stream no longer carries.
fn gone_frame(action: ConversationAction, conversation: ConversationId) -> Bytes {
    #[derive(serde::Serialize)]
    struct Gone {
        id: ConversationId,
    }
    conversation_event(action, &Gone { id: conversation })
}

fn error_frame(detail: &str) -> Bytes {
    ServerEvent::Error {
        detail,
        reference: None,
    }
    .frame()
}
