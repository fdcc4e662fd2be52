//! Presence across nodes, kept in Redis by scripts that run atomically there.
//!
//! - `{prefix}:nodes`: a sorted set of live nodes, scored by their last heartbeat
//!   (milliseconds of Redis's own clock, so nodes' clocks never matter).
//! - `{prefix}:presence:{conversation}:*`: per conversation, a hash `fields` with one
//!   field `user/node` per user connected on a node (valued with the username); `users`,
//!   each connected user's number of fields; `order`, a sorted set of the users by
//!   arrival (scored from the counter `arrivals`); `names`, their usernames; `nodes`,
//!   each node's number of fields.
//! - `{prefix}:node:{node}:convs`: the conversations a node has presence in, so the
//!   node that finds it dead knows where to sweep.
//!
//! A join or leave costs O(log users) however large the conversation: the scripts keep
//! the counts as they go and never walk the whole hash (only the sweep of a dead node
//! does, once). The list of users is read only while the conversation is within the
//! presence list limit. A killed node's users are counted until a live node's
//! heartbeat finds it dead (the node TTL, plus one beat) and sweeps them.
//!
//! This module owns the scripts and the key names; it never renders or delivers.

use redis::Script;

use crate::bus::Roster;
use crate::ids::{ConversationId, UserId};

/// Redis's own clock, in milliseconds.
const NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// The tail of every presence script: how many users are connected, then the list of
/// them in arrival order when there are at most ARGV[limit] (`limit_arg`).
fn roster_tail(order_key: &str, limit_arg: &str) -> String {
    format!(
        r#"
local count = redis.call('ZCARD', {order_key})
table.insert(out, count)
if count <= tonumber({limit_arg}) then
  for _, u in ipairs(redis.call('ZRANGE', {order_key}, 0, -1)) do table.insert(out, u) end
end
return out
"#
    )
}

/// KEYS: fields, users, order, names, arrivals, node counts, node's conversations.
/// ARGV: user, node, conversation, username, list limit. Records one connection of a
/// user on a node; returns the roster (`roster_tail`). O(log users).
const JOIN: &str = r#"
local out = {}
local field = ARGV[1] .. '/' .. ARGV[2]
if redis.call('HSETNX', KEYS[1], field, ARGV[4]) == 1 then
  redis.call('HINCRBY', KEYS[6], ARGV[2], 1)
  if redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1 then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), ARGV[1])
    redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
  end
end
redis.call('SADD', KEYS[7], ARGV[3])
"#;

/// KEYS: as `JOIN`. ARGV: user, node, conversation, list limit. Forgets a user's
/// presence on a node; returns 1 when the user is now connected on no node, 0 when
/// they still are, then the roster. O(log users).
const LEAVE: &str = r#"
local field = ARGV[1] .. '/' .. ARGV[2]
if redis.call('HDEL', KEYS[1], field) == 1 then
  if redis.call('HINCRBY', KEYS[6], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[6], ARGV[2])
    redis.call('SREM', KEYS[7], ARGV[3])
  end
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('HDEL', KEYS[4], ARGV[1])
    -- Nobody left: the arrival counter goes too, so an idle conversation keeps no key.
    if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[5]) end
  end
end
local out = {redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 and 1 or 0}
"#;

/// KEYS: fields, users, order, names, arrivals, node counts. ARGV: the dead node,
/// list limit.
/// Removes the dead node's fields (a walk over the conversation's fields, once per
/// dead node). Returns how many users left, pairs of (user, username) for each, then
/// the roster.
const SWEEP: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local gone, suffix = {}, '/' .. ARGV[1]
for i = 1, #all, 2 do
  if string.sub(all[i], -#suffix) == suffix then
    redis.call('HDEL', KEYS[1], all[i])
    local user = string.match(all[i], '^([^/]+)/')
    if user and redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('ZREM', KEYS[3], user)
      redis.call('HDEL', KEYS[4], user)
      table.insert(gone, user)
      table.insert(gone, all[i + 1])
    end
  end
end
redis.call('HDEL', KEYS[6], ARGV[1])
if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[5]) end
local out = {#gone / 2}
for _, v in ipairs(gone) do table.insert(out, v) end
"#;

/// KEYS: nodes. ARGV: node, ttl ms. Records the heartbeat; returns 1 when the node
/// was not in the set (first beat, presumed dead, or Redis lost its data), then the
/// nodes whose heartbeat is older than the TTL.
const HEARTBEAT: &str = r#"
local now = now_ms()
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local out = {added}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))) do
  table.insert(out, n)
end
return out
"#;

/// The scripts (loaded by hash, sent whole once per Redis that lacks them) and the
/// key names of one cluster.
pub struct Presence {
    prefix: String,
    pub join: Script,
    pub leave: Script,
    pub sweep: Script,
    pub heartbeat: Script,
}

impl Presence {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            join: Script::new(&format!("{JOIN}{}", roster_tail("KEYS[3]", "ARGV[5]"))),
            leave: Script::new(&format!("{LEAVE}{}", roster_tail("KEYS[3]", "ARGV[4]"))),
            sweep: Script::new(&format!("{SWEEP}{}", roster_tail("KEYS[3]", "ARGV[2]"))),
            heartbeat: Script::new(&format!("{NOW}{HEARTBEAT}")),
        }
    }

    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// A conversation's presence keys, in the order the scripts take them: one field
    /// per (user, node), connections per user, users by arrival, their names, the
    /// arrival counter, and fields per node.
    pub fn conversation_keys(&self, conversation: ConversationId) -> [String; 6] {
        let key = |what: &str| format!("{}:presence:{conversation}:{what}", self.prefix);
        [
            key("fields"),
            key("users"),
            key("order"),
            key("names"),
            key("arrivals"),
            key("nodes"),
        ]
    }

    pub fn node_conversations(&self, node: &str) -> String {
        format!("{}:node:{node}:convs", self.prefix)
    }

    /// A page of the conversation's connected users, by arrival after the cursor
    /// `after`, with the count: O(log users + limit).
    pub async fn roster(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        conversation: ConversationId,
        after: Option<u64>,
        limit: usize,
    ) -> redis::RedisResult<Roster> {
        let [_, _, order, names, _, _] = self.conversation_keys(conversation);
        let min = after.map_or_else(|| "-inf".to_string(), |a| format!("({a}"));
        let (page, count): (Vec<(String, f64)>, usize) = redis::pipe()
            .cmd("ZRANGE")
            .arg(&order)
            .arg(min)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES")
            .cmd("ZCARD")
            .arg(&order)
            .query_async(conn)
            .await?;
        let usernames: Vec<Option<String>> = if page.is_empty() {
            Vec::new()
        } else {
            let mut get = redis::cmd("HMGET");
            get.arg(&names);
            for (user, _) in &page {
                get.arg(user);
            }
            get.query_async(conn).await?
        };
        let users = page
            .into_iter()
            .zip(usernames)
            .filter_map(|((user, arrival), name)| {
                Some((arrival as u64, user.parse().ok()?, name?.into()))
            })
            .collect();
        Ok(Roster { users, count })
    }

    /// The channel a conversation's live events travel on.
    pub fn channel(&self, conversation: ConversationId) -> String {
        format!("{}:conv:{conversation}", self.prefix)
    }

    /// The channel every node hears: users added to conversations, for their user
    /// streams wherever those are.
    pub fn inbox(&self) -> String {
        format!("{}:inbox", self.prefix)
    }

    /// The conversation of a channel name, if it is one of this cluster's.
    pub fn conversation_of(&self, channel: &[u8]) -> Option<ConversationId> {
        let rest = channel
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":conv:")?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    }
}

/// The users a script listed, in its order; ids this server did not write are skipped.
pub fn users(ids: &[String]) -> Vec<UserId> {
    ids.iter().filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_conversation_and_nothing_else() {
        let p = Presence::new("t1");
        let c = ConversationId::random();
        assert_eq!(p.conversation_of(p.channel(c).as_bytes()), Some(c));
        assert_eq!(
            Presence::new("t2").conversation_of(p.channel(c).as_bytes()),
            None
        );
        assert_eq!(p.conversation_of(b"t1:conv:nope"), None);
    }
}
