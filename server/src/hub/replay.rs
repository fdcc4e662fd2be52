//! Resume: a connection that came with `since=<seq>` first gets, in order, every
//! persisted event after that position up to the one it joined at (read from the
//! store), then its live events, which waited behind the replay. The seam is exact
//! because the home says at which position the connection went live (`Joined`), on the
//! same road as the events that followed: events up to it come from the store, events
//! after it from the home, and nothing is both.
//!
//! A replay longer than `REPLAY_MAX` sends only the newest events, after a `resync`
//! naming the first one, so the client pages the rest of history over REST. A replay
//! the store cannot give closes the socket with 1011: the client comes back with the
//! same `since` and misses nothing. It never writes to the store.

use std::rc::Rc;
use std::time::Duration;

use super::stream::frame;
use super::{Hub, Resume};
use crate::ids::Seq;
use crate::protocol::{Close, ServerEvent};

/// The most events one resume replays.
pub const REPLAY_MAX: u64 = 1000;
/// Events read and queued at a time, so a long replay never holds more than the
/// connection's queue allows.
const REPLAY_PAGE: u64 = 200;
/// How often a replay waiting for the client to read its queue looks again.
const BACKLOG_POLL: Duration = Duration::from_millis(5);

impl Hub {
    /// The home has the connection, live from `position`: replay what it missed, if
    /// it asked, then let its live events through.
    pub(super) fn joined(self: &Rc<Self>, conn: u64, position: Seq) {
        let Some(conn) = self.state.borrow().conns.get(&conn).cloned() else {
            return;
        };
        let since = match conn.joined() {
            None => return,
            Some(Resume::Fresh) => return conn.go_live(),
            Some(Resume::Invalid) => {
                refuse(
                    &conn,
                    "Invalid since: expected a stream position (0 or more)",
                );
                return conn.go_live();
            }
            Some(Resume::Since(since)) if since > position => {
                let detail = format!("Invalid since: the conversation is at {position}");
                refuse(&conn, &detail);
                return conn.go_live();
            }
            Some(Resume::Since(since)) => since,
        };
        let from = since.max(Seq(position.0.saturating_sub(REPLAY_MAX)));
        if from > since {
            conn.push(
                ServerEvent::Resync {
                    from_seq: from.next(),
                }
                .frame(),
            );
        }
        let hub = Rc::clone(self);
        monoio::spawn(async move {
            let conversation = conn.conversation;
            let mut after = from;
            while after < position && conn.is_open() {
                // Wait for the client to take what is queued before reading more.
                while conn.backlog() > conn.limit() / 2 && conn.is_open() {
                    monoio::time::sleep(BACKLOG_POLL).await;
                }
                let upto = position.min(Seq(after.0 + REPLAY_PAGE));
                let page = hub
                    .app
                    .db
                    .call(move |s| async move { s.stream(conversation, after, upto).await })
                    .await;
                match page {
                    Ok(events) => {
                        for e in &events {
                            conn.push(frame(conversation, e));
                        }
                        after = upto;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %conversation, "replay not read");
                        return conn.close(Close::Unavailable);
                    }
                }
            }
            conn.go_live();
        });
    }
}

fn refuse(conn: &super::Outbox, detail: &str) {
    conn.push(
        ServerEvent::Error {
            detail,
            reference: None,
        }
        .frame(),
    );
}
