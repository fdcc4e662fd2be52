//! Who is connected to one conversation, as its home counts them: every connection
//! and whose it is, each user once with their name in the order they arrived, and how
//! many connections each shard holds (where the home fans out).
//!
//! Pure book-keeping: it never posts, spawns or reads the store.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::{Actor, ConnAddr};
use crate::ids::UserId;

/// One connected user of a conversation.
struct Present {
    user: UserId,
    username: Arc<str>,
    conns: u32,
}

#[derive(Default)]
pub(super) struct Presence {
    /// Connections per shard, indexed by shard.
    shards: Vec<u32>,
    /// Connected users in the order they arrived.
    users: Vec<Present>,
    /// Every connection in the conversation, and whose it is.
    conns: HashMap<ConnAddr, UserId>,
}

impl Presence {
    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub(super) fn contains(&self, conn: ConnAddr) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The shards with a connection in the conversation.
    pub(super) fn shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(shard, _)| shard)
    }

    pub(super) fn active_users(&self) -> Vec<UserId> {
        self.users.iter().map(|p| p.user).collect()
    }

    /// Each connected user once, with their name.
    pub(super) fn present(&self) -> impl Iterator<Item = (UserId, &Arc<str>)> {
        self.users.iter().map(|p| (p.user, &p.username))
    }

    /// Counts the actor's connection in; `shards` is how many the node has.
    pub(super) fn add(&mut self, actor: &Actor, shards: usize) {
        if self.conns.insert(actor.conn, actor.user).is_some() {
            return;
        }
        self.shards.resize(shards.max(self.shards.len()), 0);
        self.shards[actor.conn.shard] += 1;
        match self.users.iter_mut().find(|p| p.user == actor.user) {
            Some(p) => p.conns += 1,
            None => self.users.push(Present {
                user: actor.user,
                username: Arc::clone(&actor.username),
                conns: 1,
            }),
        }
    }

    /// Forgets one connection; true when it was its user's last.
    pub(super) fn remove(&mut self, addr: ConnAddr) -> bool {
        let Some(user) = self.conns.remove(&addr) else {
            return false;
        };
        if let Some(n) = self.shards.get_mut(addr.shard) {
            *n = n.saturating_sub(1);
        }
        let Some(i) = self.users.iter().position(|p| p.user == user) else {
            return false;
        };
        self.users[i].conns -= 1;
        if self.users[i].conns > 0 {
            return false;
        }
        self.users.remove(i);
        true
    }

    /// Forgets every connection of `user`: their name and the shards they were on,
    /// or `None` when they had none.
    pub(super) fn remove_user(&mut self, user: UserId) -> Option<(Arc<str>, Vec<usize>)> {
        let addrs: Vec<ConnAddr> = self
            .conns
            .iter()
            .filter(|(_, u)| **u == user)
            .map(|(a, _)| *a)
            .collect();
        let username = self.users.iter().find(|p| p.user == user)?.username.clone();
        let mut shards: Vec<usize> = addrs.iter().map(|a| a.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for addr in addrs {
            self.remove(addr);
        }
        Some((username, shards))
    }
}
