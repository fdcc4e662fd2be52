//! Read markers at a conversation's home: a socket's `read` is stored off the shard
//! (the marker only ever moves forward), then the user's own sockets in the
//! conversation hear the new marker (`read`: a badge cleared on the phone clears on
//! the laptop) and, while the conversation has at most `--presence-list-limit` users
//! connected here, the others get a receipt. Above it receipts would cost every member
//! a frame per member's read, so they stop, as the presence list does.
//!
//! Like the rest of the home it never touches a socket.

use std::rc::Rc;

use super::Homes;
use crate::bus::{Actor, Audience, ShardMsg};
use crate::ids::{ConversationId, Seq, UserId};
use crate::protocol::ServerEvent;
use crate::store::ReadOutcome;

impl Homes {
    /// A socket's `read`: moves the marker, then announces it; a marker that did not
    /// move is told to that socket only.
    pub(super) fn read(self: &Rc<Self>, conversation: ConversationId, actor: Actor, seq: Seq) {
        let homes = Rc::clone(self);
        monoio::spawn(async move {
            let user = actor.user;
            let outcome = homes
                .app
                .db
                .call(move |s| async move { s.mark_read(conversation, user, seq).await })
                .await;
            match outcome {
                Ok(ReadOutcome::Moved(seq)) => homes.marked(conversation, user, seq),
                Ok(ReadOutcome::Kept(marker)) => homes.app.bus.post(
                    actor.conn.shard,
                    ShardMsg::Direct {
                        conn: actor.conn.conn,
                        frame: ServerEvent::Read {
                            conversation_id: conversation,
                            seq: marker,
                        }
                        .frame(),
                    },
                ),
                // Removed meanwhile: the socket is being told.
                Ok(ReadOutcome::NotMember) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %conversation, "read marker not stored");
                    homes.reply_error(&actor, "Read marker could not be saved, please retry");
                }
            }
        });
    }

    /// `user`'s marker moved to `seq` (committed): their sockets in the conversation,
    /// on every node, get `read`; the others a `receipt` while the conversation is
    /// small enough here.
    pub(in crate::hub) fn marked(&self, conversation: ConversationId, user: UserId, seq: Seq) {
        let read = ServerEvent::Read {
            conversation_id: conversation,
            seq,
        }
        .frame();
        self.fanout(conversation, read, Audience::Only(user));
        let connected = self
            .state
            .borrow()
            .live
            .get(&conversation)
            .map_or(0, |home| home.presence.count());
        if connected <= self.app.config.presence_list_limit {
            let receipt = ServerEvent::Receipt {
                conversation_id: conversation,
                user_id: user,
                seq,
            }
            .frame();
            self.fanout(conversation, receipt, Audience::Except(user));
        }
    }
}
