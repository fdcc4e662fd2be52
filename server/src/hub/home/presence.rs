//! Who is connected to one conversation, as its home counts them: every connection
//! and whose it is, each user once with their name in the order they arrived, and how
//! many connections each shard holds (where the home fans out).
//!
//! Every change costs O(log users) whatever the room's size: users are found by id,
//! listed in arrival order from an ordered index, and a user's own connections are
//! kept with the user, so removing one touches nobody else. Only `active_users` walks
//! the whole list, and the home calls it only within the presence list limit.
//!
//! Pure book-keeping: it never posts, spawns or reads the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::bus::{Actor, ConnAddr};
use crate::ids::UserId;

/// One connected user of a conversation.
struct Present {
    username: Arc<str>,
    /// Their place in the arrival order.
    arrival: u64,
    /// Their connections (a few tabs at most).
    conns: Vec<ConnAddr>,
}

/// One user of a presence page: their place in the arrival order (the cursor), id and
/// name.
pub type Listed = (u64, UserId, Arc<str>);

#[derive(Default)]
pub(super) struct Presence {
    /// Connections per shard, indexed by shard.
    shards: Vec<u32>,
    /// Every connection in the conversation, and whose it is.
    conns: HashMap<ConnAddr, UserId>,
    users: HashMap<UserId, Present>,
    /// Connected users by arrival.
    order: BTreeMap<u64, UserId>,
    next_arrival: u64,
}

impl Presence {
    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub(super) fn contains(&self, conn: ConnAddr) -> bool {
        self.conns.contains_key(&conn)
    }

    /// How many users are connected (each once).
    pub(super) fn count(&self) -> usize {
        self.users.len()
    }

    /// The shards with a connection in the conversation.
    pub(super) fn shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(shard, _)| shard)
    }

    /// Every connected user once, in arrival order: O(users).
    pub(super) fn active_users(&self) -> Vec<UserId> {
        self.order.values().copied().collect()
    }

    /// Each connected user once, with their name.
    pub(super) fn present(&self) -> impl Iterator<Item = (UserId, &Arc<str>)> {
        self.users.iter().map(|(user, p)| (*user, &p.username))
    }

    /// Up to `limit` users who arrived after the cursor `after`, in arrival order.
    pub(super) fn page(&self, after: Option<u64>, limit: usize) -> Vec<Listed> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        self.order
            .range(from..)
            .take(limit)
            .filter_map(|(arrival, user)| {
                let p = self.users.get(user)?;
                Some((*arrival, *user, Arc::clone(&p.username)))
            })
            .collect()
    }

    /// Counts the actor's connection in; `shards` is how many the node has. True when
    /// it is the user's first.
    pub(super) fn add(&mut self, actor: &Actor, shards: usize) -> bool {
        if self.conns.insert(actor.conn, actor.user).is_some() {
            return false;
        }
        self.shards.resize(shards.max(self.shards.len()), 0);
        self.shards[actor.conn.shard] += 1;
        if let Some(p) = self.users.get_mut(&actor.user) {
            p.conns.push(actor.conn);
            return false;
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.order.insert(arrival, actor.user);
        self.users.insert(
            actor.user,
            Present {
                username: Arc::clone(&actor.username),
                arrival,
                conns: vec![actor.conn],
            },
        );
        true
    }

    /// Forgets one connection; true when it was its user's last.
    pub(super) fn remove(&mut self, addr: ConnAddr) -> bool {
        let Some(user) = self.conns.remove(&addr) else {
            return false;
        };
        if let Some(n) = self.shards.get_mut(addr.shard) {
            *n = n.saturating_sub(1);
        }
        let Some(p) = self.users.get_mut(&user) else {
            return false;
        };
        p.conns.retain(|c| *c != addr);
        if !p.conns.is_empty() {
            return false;
        }
        if let Some(p) = self.users.remove(&user) {
            self.order.remove(&p.arrival);
        }
        true
    }

    /// Forgets every connection of `user`: their name and the shards they were on,
    /// or `None` when they had none.
    pub(super) fn remove_user(&mut self, user: UserId) -> Option<(Arc<str>, Vec<usize>)> {
        let p = self.users.get(&user)?;
        let username = Arc::clone(&p.username);
        let addrs = p.conns.clone();
        let mut shards: Vec<usize> = addrs.iter().map(|a| a.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for addr in addrs {
            self.remove(addr);
        }
        Some((username, shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(user: UserId, shard: usize, conn: u64) -> Actor {
        Actor {
            user,
            username: format!("{user}").into(),
            conn: ConnAddr { shard, conn },
            reference: None,
        }
    }

    #[test]
    fn users_are_counted_once_in_arrival_order_and_leave_with_their_last_tab() {
        let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
        let mut p = Presence::default();
        assert!(p.add(&actor(a, 0, 1), 2));
        assert!(p.add(&actor(b, 1, 2), 2));
        assert!(!p.add(&actor(a, 1, 3), 2), "a second tab");
        assert!(p.add(&actor(c, 0, 4), 2));
        assert_eq!(p.active_users(), vec![a, b, c]);
        assert_eq!(p.count(), 3);
        assert!(
            !p.remove(ConnAddr { shard: 0, conn: 1 }),
            "a still has a tab"
        );
        assert!(p.remove(ConnAddr { shard: 1, conn: 2 }));
        assert_eq!(p.active_users(), vec![a, c]);
        assert_eq!(p.shards().collect::<Vec<_>>(), vec![0, 1]);
        let (_, shards) = p.remove_user(a).expect("a was present");
        assert_eq!(shards, vec![1]);
        assert_eq!(p.active_users(), vec![c]);
        assert_eq!(p.shards().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn pages_follow_the_arrival_order_from_a_cursor() {
        let mut p = Presence::default();
        let users: Vec<UserId> = (0..5).map(|_| UserId::random()).collect();
        for (i, u) in users.iter().enumerate() {
            p.add(&actor(*u, 0, i as u64), 1);
        }
        p.remove(ConnAddr { shard: 0, conn: 1 });
        let first = p.page(None, 2);
        assert_eq!(
            first.iter().map(|l| l.1).collect::<Vec<_>>(),
            vec![users[0], users[2]]
        );
        let rest = p.page(Some(first[1].0), 10);
        assert_eq!(
            rest.iter().map(|l| l.1).collect::<Vec<_>>(),
            vec![users[3], users[4]]
        );
        assert!(p.page(Some(rest[1].0), 10).is_empty());
    }
}
