//! Who talks to whom: a fixed assignment of simulated users to group conversations.
//!
//! Users are numbered `0..users`. Each user belongs to `layers` conversations (one per
//! layer). In layer `j` the users are cut into consecutive blocks of `group_size`,
//! starting `j * group_size / layers` places further along (wrapping around), so the
//! groups of different layers overlap rather than repeat. The last block of a layer
//! takes the remainder, so no conversation is left with a single member.

/// Where one user sits in one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat {
    /// Global conversation index.
    pub conversation: usize,
    /// The user's slot (0-based) among the conversation's members.
    pub slot: usize,
}

#[derive(Clone, Debug)]
pub struct Plan {
    users: usize,
    group_size: usize,
    layers: usize,
    groups_per_layer: usize,
}

impl Plan {
    pub fn new(users: usize, group_size: usize, layers: usize) -> Self {
        let users = users.max(1);
        let group_size = group_size.max(2);
        let layers = layers.max(1);
        Plan {
            users,
            group_size,
            layers,
            groups_per_layer: (users / group_size).max(1),
        }
    }

    pub fn users(&self) -> usize {
        self.users
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    pub fn conversations(&self) -> usize {
        self.groups_per_layer * self.layers
    }

    fn shift(&self, layer: usize) -> usize {
        (layer * self.group_size / self.layers) % self.users
    }

    /// The seat of `user` in its conversation of `layer`.
    pub fn seat(&self, user: usize, layer: usize) -> Seat {
        let position = (user + self.users - self.shift(layer)) % self.users;
        let group = (position / self.group_size).min(self.groups_per_layer - 1);
        Seat {
            conversation: layer * self.groups_per_layer + group,
            slot: position - group * self.group_size,
        }
    }

    /// Every seat of `user`, one per layer.
    pub fn seats(&self, user: usize) -> Vec<Seat> {
        (0..self.layers)
            .map(|layer| self.seat(user, layer))
            .collect()
    }

    /// The members of a conversation, indexed by slot.
    pub fn members(&self, conversation: usize) -> Vec<usize> {
        let layer = conversation / self.groups_per_layer;
        let group = conversation % self.groups_per_layer;
        let start = group * self.group_size;
        let end = if group + 1 == self.groups_per_layer {
            self.users
        } else {
            start + self.group_size
        };
        (start..end)
            .map(|position| (position + self.shift(layer)) % self.users)
            .collect()
    }

    /// The largest conversation's size.
    pub fn largest_group(&self) -> usize {
        (0..self.conversations())
            .map(|c| self.members(c).len())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(users: usize, group: usize, layers: usize) {
        let plan = Plan::new(users, group, layers);
        let mut seen = vec![0usize; users];
        for c in 0..plan.conversations() {
            let members = plan.members(c);
            assert!(
                members.len() >= group.min(users),
                "{users}/{group}/{layers}: {c}"
            );
            for (slot, &user) in members.iter().enumerate() {
                assert_eq!(
                    plan.seat(user, c / (plan.conversations() / layers)),
                    Seat {
                        conversation: c,
                        slot
                    }
                );
                seen[user] += 1;
            }
        }
        assert!(
            seen.iter().all(|&n| n == layers),
            "{users}/{group}/{layers}"
        );
    }

    #[test]
    fn every_user_sits_once_per_layer() {
        for (users, group, layers) in [
            (1, 2, 1),
            (2, 2, 1),
            (3, 2, 2),
            (10, 10, 1),
            (50, 10, 2),
            (1000, 10, 3),
            (1003, 10, 2),
            (17, 5, 4),
        ] {
            check(users, group, layers);
        }
    }

    #[test]
    fn layers_differ() {
        let plan = Plan::new(100, 10, 2);
        assert_ne!(plan.members(0), plan.members(10));
        assert_eq!(plan.largest_group(), 10);
        assert_eq!(Plan::new(25, 10, 1).largest_group(), 15);
    }
}
