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
use std::sync::Arc;
use std::time::Duration;

use super::conn::Conn;
use super::render;
use crate::app::App;
use crate::ids::{ConversationId, Seq};
use crate::protocol::{Close, ServerEvent};

/// The most events one resume replays.
pub const REPLAY_MAX: u64 = 1000;
/// Events read from the store at a time; they are queued as the connection's queue
/// has room.
const REPLAY_PAGE: u64 = 200;
/// How often a replay waiting for the client to read its queue looks again.
const BACKLOG_POLL: Duration = Duration::from_millis(5);

/// Replays to `conn`, which joined the conversation live at `position`, every event
/// after `since` (only the newest `REPLAY_MAX`, after a `resync`), then lets its live
/// events through. A user stream's replays run one after another, in the order they
/// started: each waits for the one before, so a client back after a day reads one
/// conversation's backlog at a time while the others' live events wait, bounded by
/// the connection's queue.
pub(super) fn start(
    app: Arc<App>,
    conn: Rc<Conn>,
    conversation: ConversationId,
    since: Seq,
    position: Seq,
) {
    let (turn, done) = conn.replay_turn();
    monoio::spawn(async move {
        turn.await;
        let _done = done;
        let from = since.max(Seq(position.0.saturating_sub(REPLAY_MAX)));
        if from > since && conn.carries(conversation) {
            conn.push(
                ServerEvent::Resync {
                    from_seq: from.next(),
                    conversation_id: conversation,
                }
                .frame(),
            );
        }
        // A user stream that stops carrying the conversation (its user was removed)
        // gets nothing more of it, replayed or not.
        let wanted = || conn.is_open() && conn.carries(conversation);
        let mut after = from;
        while after < position && wanted() {
            let upto = position.min(Seq(after.0 + REPLAY_PAGE));
            let page = app
                .db
                .call(move |s| async move { s.stream(conversation, after, upto).await })
                .await;
            match page {
                Ok(events) => {
                    for e in &events {
                        let frame = render::stream_frame(conversation, e);
                        // Queue only what fits under the soft bound: a client that
                        // reads takes any backlog, however large, a page at a time.
                        while !conn.has_room_for(&frame) && wanted() {
                            monoio::time::sleep(BACKLOG_POLL).await;
                        }
                        if !wanted() {
                            break;
                        }
                        conn.push(frame);
                    }
                    after = upto;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %conversation, "replay not read");
                    return conn.close(Close::Unavailable);
                }
            }
        }
        conn.go_live(conversation);
    });
}
