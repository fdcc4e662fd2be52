//! The local registry of a shard's hub: this shard's WebSocket connections by
//! conversation and by user, their rate-limit buckets, and the events they submit.
//! It answers `ping` and `auth` itself and posts everything else to the
//! conversation's home; it never decides order or presence (the home does).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::outbox::{Heartbeat, Outbox};
use super::ratelimit::Bucket;
use super::{Admitted, Hub, Refused, UserSlot};
use crate::bus::{Actor, ConnAddr, HomeMsg, Remote, ShardMsg};
use crate::ids::{format_timestamp, ConversationId, UserId};
use crate::protocol::{ClientEvent, Close, ServerEvent};

/// Into how many phases of the ping interval consecutive connections are spread.
const PING_PHASES: u64 = 64;

impl Hub {
    /// Registers a connection and announces it to the conversation's home.
    pub fn register(&self, admitted: &Admitted) -> Rc<Outbox> {
        let mut st = self.state.borrow_mut();
        st.next_conn += 1;
        let config = &self.app.config;
        let phase = config
            .ws_ping_interval
            .mul_f64((st.next_conn % PING_PHASES) as f64 / PING_PHASES as f64);
        let conn = Rc::new(Outbox::new(
            st.next_conn,
            admitted,
            config.ws_outbound_limit_bytes,
            phase,
        ));
        st.conns.insert(conn.id, Rc::clone(&conn));
        self.metrics.websockets_open.inc();
        st.by_conversation
            .entry(conn.conversation)
            .or_default()
            .push(Rc::clone(&conn));
        let burst = config.ws_rate_burst;
        st.users
            .entry(conn.user)
            .or_insert_with(|| UserSlot {
                bucket: Bucket::full(burst, Instant::now()),
                conns: 0,
                lease: 0,
            })
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

    pub fn unregister(&self, conn: &Outbox) {
        let mut st = self.state.borrow_mut();
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
        conn: &Outbox,
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

    /// Takes one token of `user`'s budget: from this shard's bucket on one node; in a
    /// cluster from the budget all nodes share, leased a few tokens at a time (this
    /// shard's bucket again while Redis does not answer).
    async fn spend(&self, user: UserId) -> bool {
        let Some(cluster) = self.app.cluster.as_ref().filter(|c| c.is_healthy()) else {
            // One node, or Redis known to be away: waiting for it would stall the
            // sender's every event.
            return self.spend_locally(user);
        };
        if let Some(slot) = self.state.borrow_mut().users.get_mut(&user) {
            if slot.lease > 0 {
                slot.lease -= 1;
                return true;
            }
        }
        match cluster.lease(user).await {
            Some(0) => false,
            Some(granted) => {
                if let Some(slot) = self.state.borrow_mut().users.get_mut(&user) {
                    slot.lease += granted - 1;
                }
                true
            }
            None => self.spend_locally(user),
        }
    }

    fn spend_locally(&self, user: UserId) -> bool {
        let config = &self.app.config;
        let mut st = self.state.borrow_mut();
        st.users.get_mut(&user).is_some_and(|slot| {
            slot.bucket.take(
                config.ws_rate_per_second,
                config.ws_rate_burst,
                Instant::now(),
            )
        })
    }

    /// Tells the conversation's home that `user` was removed from it: their open
    /// sockets there are closed and nothing more reaches them or is taken from them.
    /// Call after the removal is committed.
    pub fn revoke(&self, conversation: ConversationId, user: UserId) {
        if let Some(cluster) = &self.app.cluster {
            cluster.publish(conversation, &Remote::Revoke { user });
        }
        let home = self.app.bus.home_of(conversation);
        self.app.bus.post(
            home,
            ShardMsg::Revoke {
                conversation,
                user,
                at: Instant::now(),
            },
        );
    }

    fn to_home(&self, conn: &Outbox, reference: Option<String>, msg: HomeMsg) {
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

    /// Closes every local connection (shutdown).
    pub fn close_all(&self, reason: Close) {
        let conns: Vec<Rc<Outbox>> = self.state.borrow().conns.values().cloned().collect();
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
        for conn in self.state.borrow().conns.values() {
            conn.beat(heartbeat, now, unix_now);
            queued += conn.backlog();
        }
        self.metrics
            .outbound_queue_bytes
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}
