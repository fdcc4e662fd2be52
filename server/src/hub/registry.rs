//! The registry of a shard's hub: this shard's WebSocket connections by conversation
//! and by user, the rate limit of the events they submit, and delivery into
//! their queues. It answers `ping` and `auth` itself and posts everything else to the
//! conversation's home; it never decides order or presence (the home does).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::admit::{Admitted, Refused, Resume};
use super::conn::{Conn, Heartbeat};
use super::replay;
use crate::app::App;
use crate::bus::{Actor, ConnAddr, HomeMsg, ShardMsg};
use crate::ids::{format_timestamp, ConversationId, Seq, UserId};
use crate::metrics::ShardMetrics;
use crate::protocol::{ClientEvent, Close, ServerEvent};

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

    /// Registers a connection and announces it to the conversation's home.
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
        st.by_conversation
            .entry(conn.conversation)
            .or_default()
            .push(Rc::clone(&conn));
        st.users
            .entry(conn.user)
            .or_insert_with(|| UserSlot { conns: 0, lease: 0 })
            .conns += 1;
        drop(st);
        self.to_home(
            &conn,
            None,
            HomeMsg::Join {
                checked_at: admitted.checked_at,
                position: admitted.position,
            },
        );
        conn
    }

    pub fn unregister(&self, conn: &Conn) {
        let mut st = self.local.borrow_mut();
        if st.conns.remove(&conn.id).is_none() {
            return;
        }
        self.metrics.websockets_open.dec();
        if let Some(list) = st.by_conversation.get_mut(&conn.conversation) {
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                st.by_conversation.remove(&conn.conversation);
            }
        }
        if let Some(slot) = st.users.get_mut(&conn.user) {
            slot.conns -= 1;
            if slot.conns == 0 {
                st.users.remove(&conn.user);
            }
        }
        drop(st);
        self.to_home(conn, None, HomeMsg::Leave);
    }

    /// Takes one event from a client, after its rate limit. Pings and token refreshes
    /// are answered here; everything else goes to the conversation's home.
    pub async fn submit(
        &self,
        conn: &Conn,
        event: ClientEvent,
        reference: Option<String>,
    ) -> Result<(), Refused> {
        if !self.spend(conn.user).await {
            return Err(Refused::RateLimited);
        }
        match event {
            ClientEvent::Ping => conn.push(ServerEvent::Pong.frame()),
            ClientEvent::Auth { token } => {
                let token = self
                    .app
                    .jwt
                    .verify(&token)
                    .map_err(|_| Refused::InvalidToken)?;
                if token.user != conn.user {
                    return Err(Refused::OtherUser);
                }
                conn.extend(token.expires_at);
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
            event => self.to_home(conn, reference, HomeMsg::Event(event)),
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

    fn to_home(&self, conn: &Conn, reference: Option<String>, msg: HomeMsg) {
        let actor = Actor {
            user: conn.user,
            username: Arc::clone(&conn.username),
            conn: ConnAddr {
                shard: self.shard,
                conn: conn.id,
            },
            reference,
        };
        let home = self.app.bus.home_of(conn.conversation);
        self.app.bus.post(
            home,
            ShardMsg::Home {
                conversation: conn.conversation,
                actor,
                msg,
            },
        );
    }

    /// An event of the conversation for every connection in it here, except those of
    /// `skip`.
    pub(super) fn deliver(
        &self,
        conversation: ConversationId,
        frame: &Bytes,
        skip: Option<UserId>,
    ) {
        let local = self.local.borrow();
        let mut delivered = 0;
        for conn in local
            .by_conversation
            .get(&conversation)
            .into_iter()
            .flatten()
        {
            if skip != Some(conn.user) {
                conn.deliver(frame);
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

    /// A frame for one connection, in its place in the stream (held behind a replay).
    pub(super) fn own(&self, conn: u64, frame: &Bytes) {
        if let Some(conn) = self.local.borrow().conns.get(&conn) {
            conn.deliver(frame);
        }
    }

    /// `user` lost access to the conversation: closes their connections in it here
    /// (only `conn` when given).
    pub(super) fn revoked(&self, conversation: ConversationId, user: UserId, conn: Option<u64>) {
        let local = self.local.borrow();
        for c in local
            .by_conversation
            .get(&conversation)
            .into_iter()
            .flatten()
        {
            if c.user == user && conn.is_none_or(|id| id == c.id) {
                c.close(Close::NotAMember);
            }
        }
    }

    /// The home has the connection, live from `position`: replay what it missed, if it
    /// asked, then let its live events through.
    pub(super) fn joined(&self, conn: u64, position: Seq) {
        let Some(conn) = self.local.borrow().conns.get(&conn).cloned() else {
            return;
        };
        let since = match conn.joined() {
            None => return,
            Some(Resume::Fresh) => return conn.go_live(),
            Some(Resume::Invalid) => {
                conn.push(error_frame(
                    "Invalid since: expected a stream position (0 or more)",
                ));
                return conn.go_live();
            }
            Some(Resume::Since(since)) if since > position => {
                let detail = format!("Invalid since: the conversation is at {position}");
                conn.push(error_frame(&detail));
                return conn.go_live();
            }
            Some(Resume::Since(since)) => since,
        };
        replay::start(Arc::clone(&self.app), conn, since, position);
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

fn error_frame(detail: &str) -> Bytes {
    ServerEvent::Error {
        detail,
        reference: None,
    }
    .frame()
}
