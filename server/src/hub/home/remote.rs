//! The home's side of the cluster: what other nodes say about its conversations
//! (events at their positions, frames, removals, resync hints) and the cluster's
//! request to record this node's presence again. Without `--redis-url` nothing
//! arrives here.
//!
//! Like the rest of the home it never touches a socket.

use std::rc::Rc;
use std::time::Instant;

use super::Homes;
use crate::bus::Remote;
use crate::cluster::{Announcement, Change};
use crate::ids::ConversationId;

impl Homes {
    pub(in crate::hub) fn remote(self: &Rc<Self>, conversation: ConversationId, msg: Remote) {
        match msg {
            Remote::Event { seq, frame } => {
                if let Some(home) = self.state.borrow_mut().live.get_mut(&conversation) {
                    home.stream.accept(seq, frame);
                }
                self.settle(conversation);
            }
            Remote::Frame { to, frame } => self.deliver_local(conversation, frame, to),
            Remote::Revoke { user } => self.revoke(conversation, user, Instant::now()),
            Remote::Deleted => self.deleted(conversation, Instant::now()),
            Remote::Resync => {
                if let Some(home) = self.state.borrow_mut().live.get_mut(&conversation) {
                    home.stream.doubt();
                }
                self.settle(conversation);
            }
        }
    }

    /// This node was cut off from the cluster (Redis was away, or it was presumed
    /// dead): records every connected user of this shard's homes again, and reads
    /// every stream back from the store, since a subscription that survived the cut
    /// may have missed events.
    pub(in crate::hub) fn rejoin(self: &Rc<Self>) {
        let Some(cluster) = &self.app.cluster else {
            return;
        };
        let mut st = self.state.borrow_mut();
        for home in st.live.values_mut() {
            home.stream.doubt();
        }
        let conversations: Vec<ConversationId> = st.live.keys().copied().collect();
        for (&conversation, home) in &st.live {
            for (user, username) in home.presence.present() {
                cluster.announce(Announcement {
                    conversation,
                    user,
                    username: std::sync::Arc::clone(username),
                    change: Change::Rejoined,
                    local_active: None,
                    local_count: 0,
                });
            }
        }
        drop(st);
        for conversation in conversations {
            self.settle(conversation);
        }
    }
}
